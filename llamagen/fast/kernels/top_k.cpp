// The k largest logits of each row, largest first and equal values by ascending token id: the first k of a
// stable descending sort, which the sampler draws among.
//
// torch.topk finds them by nth_element and a sort of the k, both driven by comparisons whose outcome a random row
// leaves unpredictable: about 250 us a row for k = 2000 of 16,384 here, every decoding step. Radix digits need
// no comparisons: the k-th largest is found by three histograms (11, 11 and 10 bits of an integer key that
// orders the floats), the k selected in token order sixteen at a time, and sorted stably in at most three
// counting passes: about 30 us a row (60 through torch's dispatch, the logits coming from memory).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <utility>
#include <vector>

namespace {

// Unsigned keys that rank the floats largest first: the smaller the key, the larger the value. -0 ranks as +0
// (they are equal) and every NaN above +inf, as torch.sort orders them.
inline uint32_t descending_key(float value) {
  if (std::isnan(value)) return 0;
  value += 0.0f;  // -0 + 0 is +0
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  // Ascending order of floats as unsigned integers: a negative's bits flipped (larger magnitude, smaller
  // value), a positive's sign bit set. Flipped once more for descending.
  const uint32_t ascending = (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
  return ~ascending;
}

struct Digit {
  int shift, bits;
};
constexpr Digit kDigits[] = {{21, 11}, {10, 11}, {0, 10}};  // most significant first

// Spare slots at the end of a buffer that select_range writes to: it stores whole registers.
constexpr int64_t kLanes = 16;

// One thread's buffers, kept from row to row and call to call: allocated and freed every row, they came back
// from the system as fresh pages to fault in (a third of the time of a row).
struct Buffers {
  std::vector<uint32_t> keys, candidates, narrowed, selected_keys, sorted_keys;
  std::vector<int32_t> ids, selected_ids, sorted_ids, counts;

  void fit(int64_t vocab) {
    const size_t n = vocab + kLanes;
    for (auto* buffer : {&keys, &candidates, &narrowed, &selected_keys, &sorted_keys}) buffer->resize(n);
    for (auto* buffer : {&ids, &selected_ids, &sorted_ids}) buffer->resize(n);
  }
};

// Counts of a digit's values among n keys, into counts[0 .. 2^bits]. Logits crowd into a few buckets, and an
// increment waits for the previous one of the same count: four interleaved histograms keep four in flight.
void histogram(const uint32_t* keys, int64_t n, const Digit& digit, std::vector<int32_t>& counts) {
  const int64_t buckets = int64_t{1} << digit.bits;
  const uint32_t mask = buckets - 1;
  counts.assign(4 * buckets, 0);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (int64_t j = 0; j < 4; ++j) ++counts[j * buckets + (keys[i + j] >> digit.shift & mask)];
  }
  for (; i < n; ++i) ++counts[keys[i] >> digit.shift & mask];
  for (int64_t b = 0; b < buckets; ++b) {
    counts[b] += counts[buckets + b] + counts[2 * buckets + b] + counts[3 * buckets + b];
  }
}

// Writes the keys in [low, low + width) to out_keys and their positions to out_ids, in order; returns how many.
// Sixteen keys at a time, each register compressed to the selected lanes and stored whole: whether a key is
// selected is a coin toss to a branch predictor.
int64_t select_range(const uint32_t* keys, int64_t n, uint32_t low, uint32_t width, uint32_t* out_keys,
                     int32_t* out_ids) {
  const __m512i lows = _mm512_set1_epi32(static_cast<int32_t>(low));
  const __m512i widths = _mm512_set1_epi32(static_cast<int32_t>(width));
  __m512i ids = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  int64_t count = 0, i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const __m512i key = _mm512_loadu_si512(keys + i);
    const __mmask16 selected = _mm512_cmplt_epu32_mask(_mm512_sub_epi32(key, lows), widths);
    _mm512_storeu_si512(out_keys + count, _mm512_maskz_compress_epi32(selected, key));
    _mm512_storeu_si512(out_ids + count, _mm512_maskz_compress_epi32(selected, ids));
    count += _mm_popcnt_u32(selected);
    ids = _mm512_add_epi32(ids, _mm512_set1_epi32(kLanes));
  }
  for (; i < n; ++i) {
    out_keys[count] = keys[i];
    out_ids[count] = static_cast<int32_t>(i);
    count += keys[i] - low < width;
  }
  return count;
}

// The k-th smallest of the vocab keys (1 <= k <= vocab), one digit at a time: a histogram of the digit among the
// keys that share the digits found so far, the bucket the k-th falls in, and that bucket's keys kept. Also
// returns how many of the keys equal to it the k smallest take (1 or more).
std::pair<uint32_t, int64_t> kth_smallest(Buffers& buffers, int64_t vocab, int64_t k) {
  const uint32_t* keys = buffers.keys.data();
  int64_t n = vocab;
  uint32_t prefix = 0;
  for (const Digit& digit : kDigits) {
    histogram(keys, n, digit, buffers.counts);
    uint32_t bucket = 0;
    while (k > buffers.counts[bucket]) k -= buffers.counts[bucket++];
    prefix |= bucket << digit.shift;
    uint32_t* kept = keys == buffers.candidates.data() ? buffers.narrowed.data() : buffers.candidates.data();
    n = select_range(keys, n, prefix, 1u << digit.shift, kept, buffers.ids.data());
    keys = kept;
  }
  return {prefix, k};
}

// Stable sort of the first n (key, id) pairs by key, least significant digit first; a digit shared by all is
// skipped.
void sort_by_key(Buffers& buffers, int64_t n) {
  for (int d = 2; d >= 0; --d) {
    const Digit& digit = kDigits[d];
    const uint32_t mask = (1u << digit.bits) - 1;
    std::vector<int32_t>& starts = buffers.counts;
    starts.assign((size_t{1} << digit.bits) + 1, 0);
    const uint32_t* keys = buffers.selected_keys.data();
    const int32_t* ids = buffers.selected_ids.data();
    for (int64_t i = 0; i < n; ++i) ++starts[(keys[i] >> digit.shift & mask) + 1];
    if (starts[(keys[0] >> digit.shift & mask) + 1] == n) continue;
    for (size_t b = 1; b < starts.size(); ++b) starts[b] += starts[b - 1];
    for (int64_t i = 0; i < n; ++i) {
      const int32_t to = starts[keys[i] >> digit.shift & mask]++;
      buffers.sorted_keys[to] = keys[i];
      buffers.sorted_ids[to] = ids[i];
    }
    buffers.selected_keys.swap(buffers.sorted_keys);
    buffers.selected_ids.swap(buffers.sorted_ids);
  }
}

void top_k_of_row(Buffers& buffers, const float* logits, int64_t vocab, int64_t k, float* values, int64_t* ids) {
  for (int64_t i = 0; i < vocab; ++i) buffers.keys[i] = descending_key(logits[i]);
  const auto [threshold, equal_taken] = kth_smallest(buffers, vocab, k);
  // The keys below the threshold in token order, then those equal to it: the first k are the k smallest, the
  // equal ones lowest ids first. Sorted stably by key, the equal ones stay last and in token order.
  uint32_t* selected_keys = buffers.selected_keys.data();
  int32_t* selected_ids = buffers.selected_ids.data();
  const int64_t below = select_range(buffers.keys.data(), vocab, 0, threshold, selected_keys, selected_ids);
  select_range(buffers.keys.data(), vocab, threshold, 1, selected_keys + below, selected_ids + below);
  TORCH_INTERNAL_ASSERT(below + equal_taken == k);
  sort_by_key(buffers, k);
  for (int64_t j = 0; j < k; ++j) {
    ids[j] = buffers.selected_ids[j];
    values[j] = logits[ids[j]];
  }
}

std::tuple<at::Tensor, at::Tensor> top_k(const at::Tensor& logits, int64_t k) {
  TORCH_CHECK(logits.dim() == 2 && logits.scalar_type() == at::kFloat, "logits must be (rows, vocab) float32");
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  TORCH_CHECK(1 <= k && k <= vocab, "k must be in [1, ", vocab, "], got ", k);
  TORCH_CHECK(vocab < (int64_t{1} << 31) - kLanes, "a vocabulary of ", vocab, " ids does not fit int32");
  const at::Tensor input = logits.contiguous();
  at::Tensor values = at::empty({rows, k}, logits.options());
  at::Tensor ids = at::empty({rows, k}, logits.options().dtype(at::kLong));
  const float* input_data = input.data_ptr<float>();
  float* value_data = values.data_ptr<float>();
  int64_t* id_data = ids.data_ptr<int64_t>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    thread_local Buffers buffers;
    buffers.fit(vocab);
    for (int64_t row = begin; row < end; ++row) {
      top_k_of_row(buffers, input_data + row * vocab, vocab, k, value_data + row * k, id_data + row * k);
    }
  });
  return {values, ids};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llamagen, m) { m.def("top_k(Tensor logits, int k) -> (Tensor, Tensor)"); }
TORCH_LIBRARY_IMPL(llamagen, CPU, m) { m.impl("top_k", &top_k); }
