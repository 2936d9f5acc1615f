// One decoding step's attention: one query per row and head over the keys and values cached so far, read
// where they lie in the cache (float32 or bf16) and computed in float32.
//
// Written in torch, the step converts the cached keys and values to float32 first (torch.compile fuses that
// into a copy): at the end of a 16x16 grid that writes and reads again four times the bytes of the cache, in
// every layer, for a product of one query. Here each cached key and value is read once, in its own dtype:
// the scores four keys at a time (their four sums reduced together), the weighted values into sums held in
// registers. (GPT-B's heads, 2 rows, 128 positions, bf16: 20 us a call; 32 with one key at a time into sums in
// memory, as this kernel first did.)
// Grouped-query attention: the query heads of a group read the same cached head.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include "decoding.h"

#include <algorithm>
#include <cmath>

namespace {

// Per dtype, on 512-bit chunks of a head (the last chunk of a head_dim that is not a whole number of chunks is
// read through a mask, its missing values as zeros): the multiply-add of a query chunk with a key chunk into
// float32 sums, and the weighted sum of value chunks.
struct Float32 {
  using Scalar = float;
  using Chunk = __m512;
  using Mask = __mmask16;
  static constexpr int64_t kLanes = 16;
  static constexpr int kSumsPerChunk = 1;

  static Chunk load(const float* p, Mask mask) { return _mm512_maskz_loadu_ps(mask, p); }
  static __m512 multiply_add(__m512 sum, Chunk a, Chunk b) { return _mm512_fmadd_ps(a, b, sum); }
  static void add_weighted(__m512* sums, __m512 weight, Chunk value) {
    sums[0] = _mm512_fmadd_ps(weight, value, sums[0]);
  }
  static void store(const __m512* sums, float* out, Mask mask) { _mm512_mask_storeu_ps(out, mask, sums[0]); }
};

struct BFloat16 {
  using Scalar = at::BFloat16;
  using Chunk = __m512i;
  using Mask = __mmask32;
  static constexpr int64_t kLanes = 32;
  static constexpr int kSumsPerChunk = 2;  // the even- and the odd-indexed values of a chunk

  static Chunk load(const at::BFloat16* p, Mask mask) { return _mm512_maskz_loadu_epi16(mask, p); }
  // Products of bf16 pairs are exact in float32, and AVX512-BF16 sums them there: the float32 dot product of the
  // same values, in another order.
  static __m512 multiply_add(__m512 sum, Chunk a, Chunk b) { return _mm512_dpbf16_ps(sum, (__m512bh)a, (__m512bh)b); }
  // A bf16 value is the upper half of a float32: in 32 values read as 16 pairs, shifting each pair left by 16
  // bits gives the even-indexed values as float32, masking off the low half the odd-indexed ones; no shuffles.
  static void add_weighted(__m512* sums, __m512 weight, Chunk pairs) {
    const __m512 even = _mm512_castsi512_ps(_mm512_slli_epi32(pairs, 16));
    const __m512i high_halves = _mm512_set1_epi32(static_cast<int32_t>(0xFFFF0000u));
    const __m512 odd = _mm512_castsi512_ps(_mm512_and_si512(pairs, high_halves));
    sums[0] = _mm512_fmadd_ps(weight, even, sums[0]);
    sums[1] = _mm512_fmadd_ps(weight, odd, sums[1]);
  }
  // The even and odd sums back in order, rounded to bf16.
  static void store(const __m512* sums, at::BFloat16* out, Mask mask) {
    alignas(64) float even[16], odd[16];
    _mm512_store_ps(even, sums[0]);
    _mm512_store_ps(odd, sums[1]);
    for (int i = 0; i < 32; ++i) {
      if (mask >> i & 1) out[i] = static_cast<at::BFloat16>(i % 2 == 0 ? even[i / 2] : odd[i / 2]);
    }
  }
};

// The chunks of a head, the last one maybe partial.
template <typename T>
int64_t chunks_in(int64_t dim) {
  return (dim + T::kLanes - 1) / T::kLanes;
}

// The mask of chunk c of a head: all lanes but in a last, partial chunk.
template <typename T>
typename T::Mask chunk_mask(int64_t c, int64_t dim) {
  const int64_t left = dim - c * T::kLanes;
  return left >= T::kLanes ? static_cast<typename T::Mask>(~0ull) : static_cast<typename T::Mask>((1ull << left) - 1);
}

// The cache comes from memory (a step's weights have pushed it out of the caches), in runs too short for the
// hardware prefetcher to get going: one per row and head, a few KB. So the positions 8 ahead of the one being
// read are fetched into L1 and those 32 ahead into L2 (GPT-B's 12 layers, 128 positions, bf16, from memory:
// 2 rows 0.82 -> 0.66 ms, 16 rows 6.4 -> 5.1).
constexpr int64_t kNearPositions = 8, kFarPositions = 32;

template <int Locality>  // 3: into L1, 2: into L2 (and the caches beyond)
void prefetch(const void* start, int64_t bytes) {
  for (int64_t offset = 0; offset < bytes; offset += 64) {
    __builtin_prefetch(static_cast<const char*>(start) + offset, 0, Locality);
  }
}

template <typename Scalar>
void prefetch_ahead(const Scalar* position, int64_t stride, int64_t bytes) {
  prefetch<3>(position + kNearPositions * stride, bytes);
  prefetch<2>(position + kFarPositions * stride, bytes);
}

// The totals of four float32 sums: halves added, then pairs of neighbours twice, then the two 128-bit halves;
// a quarter of the instructions of reducing each on its own.
__m128 totals_of_four(__m512 a, __m512 b, __m512 c, __m512 d) {
  auto halves = [](__m512 x) {
    return _mm256_add_ps(_mm512_castps512_ps256(x), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
  };
  const __m256 four = _mm256_hadd_ps(_mm256_hadd_ps(halves(a), halves(b)), _mm256_hadd_ps(halves(c), halves(d)));
  return _mm_add_ps(_mm256_castps256_ps128(four), _mm256_extractf128_ps(four, 1));
}

// scores[l] = query . keys[l] * scale for one row and head, four keys at a time.
template <typename T>
void key_scores(const typename T::Scalar* query, const typename T::Scalar* keys, int64_t key_stride, int64_t length,
                int64_t dim, float scale, float* scores) {
  const int64_t chunks = chunks_in<T>(dim);
  int64_t l = 0;
  for (; l + 4 <= length; l += 4) {
    prefetch_ahead(keys + l * key_stride, key_stride, 4 * key_stride * sizeof(typename T::Scalar));
    __m512 sums[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t c = 0; c < chunks; ++c) {
      const auto mask = chunk_mask<T>(c, dim);
      const auto q = T::load(query + c * T::kLanes, mask);
      for (int j = 0; j < 4; ++j) {
        sums[j] = T::multiply_add(sums[j], q, T::load(keys + (l + j) * key_stride + c * T::kLanes, mask));
      }
    }
    _mm_storeu_ps(scores + l, _mm_mul_ps(totals_of_four(sums[0], sums[1], sums[2], sums[3]), _mm_set1_ps(scale)));
  }
  for (; l < length; ++l) {
    __m512 sum = _mm512_setzero_ps();
    for (int64_t c = 0; c < chunks; ++c) {
      const auto mask = chunk_mask<T>(c, dim);
      const auto key = T::load(keys + l * key_stride + c * T::kLanes, mask);
      sum = T::multiply_add(sum, T::load(query + c * T::kLanes, mask), key);
    }
    scores[l] = _mm512_reduce_add_ps(sum) * scale;
  }
}

// Chunks first .. first + Chunks of out = the sum over l of weights[l] * values[l], its sums held in registers.
template <typename T, int Chunks>
void weighted_values(const float* weights, const typename T::Scalar* values, int64_t value_stride, int64_t length,
                     int64_t first, int64_t dim, typename T::Scalar* out) {
  __m512 sums[Chunks * T::kSumsPerChunk];
  for (auto& sum : sums) sum = _mm512_setzero_ps();
  typename T::Mask masks[Chunks];
  for (int c = 0; c < Chunks; ++c) masks[c] = chunk_mask<T>(first + c, dim);
  for (int64_t l = 0; l < length; ++l) {
    if (weights[l] == 0.0f) continue;  // a hidden position
    const typename T::Scalar* value = values + l * value_stride + first * T::kLanes;
    prefetch_ahead(value, value_stride, Chunks * T::kLanes * sizeof(typename T::Scalar));
    const __m512 weight = _mm512_set1_ps(weights[l]);
    for (int c = 0; c < Chunks; ++c) {
      T::add_weighted(sums + c * T::kSumsPerChunk, weight, T::load(value + c * T::kLanes, masks[c]));
    }
  }
  for (int c = 0; c < Chunks; ++c) T::store(sums + c * T::kSumsPerChunk, out + (first + c) * T::kLanes, masks[c]);
}

// The weighted values of a whole head, up to four chunks (128 values) at a time in registers.
template <typename T>
void weighted_values(const float* weights, const typename T::Scalar* values, int64_t value_stride, int64_t length,
                     int64_t dim, typename T::Scalar* out) {
  const int64_t chunks = chunks_in<T>(dim);
  for (int64_t first = 0; first < chunks; first += 4) {
    switch (std::min<int64_t>(chunks - first, 4)) {
      case 1: weighted_values<T, 1>(weights, values, value_stride, length, first, dim, out); break;
      case 2: weighted_values<T, 2>(weights, values, value_stride, length, first, dim, out); break;
      case 3: weighted_values<T, 3>(weights, values, value_stride, length, first, dim, out); break;
      default: weighted_values<T, 4>(weights, values, value_stride, length, first, dim, out); break;
    }
  }
}

// The scores of every (row, head) against every cached position, their softmax by ATen's vectorised one (a
// position hidden from a row scores -inf), then the weighted values: see decoding.h.
template <typename T>
void attend(const typename T::Scalar* q, llamagen::CachedHeads k, llamagen::CachedHeads v, const bool* visible,
            int64_t visible_stride, int64_t batch, int64_t heads, int64_t kv_heads, int64_t length, int64_t dim,
            float* scores, typename T::Scalar* out) {
  using Scalar = typename T::Scalar;
  const int64_t group = heads / kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  const auto* k_data = static_cast<const Scalar*>(k.data);
  const auto* v_data = static_cast<const Scalar*>(v.data);

  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row_head = begin; row_head < end; ++row_head) {
      const int64_t b = row_head / heads, kv_head = row_head % heads / group;
      float* row_scores = scores + row_head * length;
      key_scores<T>(q + row_head * dim, k_data + b * k.row_stride + kv_head * k.head_stride, k.position_stride,
                    length, dim, scale, row_scores);
      if (visible != nullptr) {
        for (int64_t l = 0; l < length; ++l) {
          if (!visible[b * visible_stride + l]) row_scores[l] = -INFINITY;
        }
      }
    }
  });
  at::Tensor score_table = at::from_blob(scores, {batch * heads, length}, at::TensorOptions().dtype(at::kFloat));
  at::_softmax_out(score_table, score_table, -1, false);  // in place: ATen's kernel reads each row before writing it

  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row_head = begin; row_head < end; ++row_head) {
      const int64_t b = row_head / heads, kv_head = row_head % heads / group;
      weighted_values<T>(scores + row_head * length, v_data + b * v.row_stride + kv_head * v.head_stride,
                         v.position_stride, length, dim, out + row_head * dim);
    }
  });
}

at::Tensor single_query_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const std::optional<at::Tensor>& mask) {
  const auto dtype = q.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "float32 or bf16 queries, got ", dtype);
  TORCH_CHECK(k.scalar_type() == dtype && v.scalar_type() == dtype, "q, k and v must have one dtype");
  TORCH_CHECK(q.dim() == 4 && q.size(2) == 1, "q must be (batch, heads, 1, head_dim), got ", q.sizes());
  TORCH_CHECK(k.dim() == 4 && k.sizes() == v.sizes(), "k and v must be (batch, kv_heads, length, head_dim)");
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(3) == q.size(3) && q.size(1) % k.size(1) == 0,
              "k and v must match q's batch and head_dim, with heads a multiple of theirs");
  TORCH_CHECK(k.stride(3) == 1 && v.stride(3) == 1, "k and v must be contiguous along head_dim");
  const int64_t batch = q.size(0), heads = q.size(1), length = k.size(2), dim = q.size(3);
  at::Tensor visible;
  if (mask.has_value()) {
    TORCH_CHECK(mask->scalar_type() == at::kBool && mask->numel() == batch * length,
                "mask must be boolean, one value per row and cached position");
    visible = mask->reshape({batch, length}).contiguous();
  }
  const at::Tensor queries = q.reshape({batch, heads, dim}).contiguous();
  at::Tensor scores = at::empty({batch, heads, length}, q.options().dtype(at::kFloat));
  at::Tensor out = at::empty({batch, heads, 1, dim}, q.options());
  const bool* visible_data = visible.defined() ? visible.data_ptr<bool>() : nullptr;
  llamagen::single_query_attention_rows(dtype, queries.data_ptr(), llamagen::cached_heads(k), llamagen::cached_heads(v),
                                        visible_data, length, batch, heads, k.size(1), length, dim,
                                        scores.data_ptr<float>(), out.data_ptr());
  return out;
}

}  // namespace

namespace llamagen {

void single_query_attention_rows(at::ScalarType dtype, const void* q, CachedHeads k, CachedHeads v,
                                 const bool* visible, int64_t visible_stride, int64_t batch, int64_t heads,
                                 int64_t kv_heads, int64_t length, int64_t dim, float* scores, void* out) {
  if (dtype == at::kFloat) {
    attend<Float32>(static_cast<const float*>(q), k, v, visible, visible_stride, batch, heads, kv_heads, length, dim,
                    scores, static_cast<float*>(out));
  } else {
    using Scalar = BFloat16::Scalar;
    attend<BFloat16>(static_cast<const Scalar*>(q), k, v, visible, visible_stride, batch, heads, kv_heads, length,
                     dim, scores, static_cast<Scalar*>(out));
  }
}

}  // namespace llamagen

TORCH_LIBRARY_FRAGMENT(llamagen, m) {
  m.def("single_query_attention(Tensor q, Tensor k, Tensor v, Tensor? mask) -> Tensor");
}
TORCH_LIBRARY_IMPL(llamagen, CPU, m) { m.impl("single_query_attention", &single_query_attention); }
