// One decoding step's attention: one query per row and head over the keys and values cached so far, read
// where they lie in the cache (float32 or bf16) and computed in float32.
//
// Written in torch, the step converts the cached keys and values to float32 first (torch.compile fuses that
// into a copy): at the end of a 16x16 grid that writes and reads again four times the bytes of the cache, in
// every layer, for a product of one query. Here each cached key and value is read once, in its own dtype.
// Grouped-query attention: the query heads of a group read the same cached head.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

// Per dtype: the dot product of a query with one cached key, the sum of weighted values, and its storing.
struct Float32 {
  using Scalar = float;

  static float dot(const float* query, const float* key, int64_t dim) {
    __m512 sum = _mm512_setzero_ps();
    int64_t d = 0;
    for (; d + 16 <= dim; d += 16) sum = _mm512_fmadd_ps(_mm512_loadu_ps(query + d), _mm512_loadu_ps(key + d), sum);
    float total = _mm512_reduce_add_ps(sum);
    for (; d < dim; ++d) total += query[d] * key[d];
    return total;
  }

  static void add_scaled(float* sum, float weight, const float* value, int64_t dim) {
    const __m512 w = _mm512_set1_ps(weight);
    int64_t d = 0;
    for (; d + 16 <= dim; d += 16) {
      _mm512_storeu_ps(sum + d, _mm512_fmadd_ps(w, _mm512_loadu_ps(value + d), _mm512_loadu_ps(sum + d)));
    }
    for (; d < dim; ++d) sum[d] += weight * value[d];
  }

  static void store(const float* sum, float* out, int64_t dim) { std::copy(sum, sum + dim, out); }
};

struct BFloat16 {
  using Scalar = at::BFloat16;

  // Products of bf16 pairs are exact in float32, and AVX512-BF16 sums them there: the float32 dot product
  // of the same values, in another order.
  static float dot(const at::BFloat16* query, const at::BFloat16* key, int64_t dim) {
    __m512 sum = _mm512_setzero_ps();
    int64_t d = 0;
    for (; d + 32 <= dim; d += 32) {
      sum = _mm512_dpbf16_ps(sum, (__m512bh)_mm512_loadu_si512(query + d), (__m512bh)_mm512_loadu_si512(key + d));
    }
    float total = _mm512_reduce_add_ps(sum);
    for (; d < dim; ++d) total += static_cast<float>(query[d]) * static_cast<float>(key[d]);
    return total;
  }

  // A bf16 value is the upper half of a float32: in 32 values read as 16 pairs, shifting each pair left by 16
  // bits gives the even-indexed values as float32, masking off the low half the odd-indexed ones. `sum` holds
  // the even then the odd sums of each chunk of 32 (see `store`), so no shuffle is needed per value.
  static void add_scaled(float* sum, float weight, const at::BFloat16* value, int64_t dim) {
    const __m512 w = _mm512_set1_ps(weight);
    const __m512i high_halves = _mm512_set1_epi32(static_cast<int32_t>(0xFFFF0000u));
    int64_t d = 0;
    for (; d + 32 <= dim; d += 32) {
      const __m512i pairs = _mm512_loadu_si512(value + d);
      const __m512 even = _mm512_castsi512_ps(_mm512_slli_epi32(pairs, 16));
      const __m512 odd = _mm512_castsi512_ps(_mm512_and_si512(pairs, high_halves));
      _mm512_storeu_ps(sum + d, _mm512_fmadd_ps(w, even, _mm512_loadu_ps(sum + d)));
      _mm512_storeu_ps(sum + d + 16, _mm512_fmadd_ps(w, odd, _mm512_loadu_ps(sum + d + 16)));
    }
    for (; d < dim; ++d) sum[d] += weight * static_cast<float>(value[d]);
  }

  // `sum` as `add_scaled` lays it out -> out in order, rounded to bf16.
  static void store(const float* sum, at::BFloat16* out, int64_t dim) {
    int64_t d = 0;
    for (; d + 32 <= dim; d += 32) {
      for (int64_t i = 0; i < 16; ++i) {
        out[d + 2 * i] = static_cast<at::BFloat16>(sum[d + i]);
        out[d + 2 * i + 1] = static_cast<at::BFloat16>(sum[d + 16 + i]);
      }
    }
    for (; d < dim; ++d) out[d] = static_cast<at::BFloat16>(sum[d]);
  }
};

// q (B, H, D) contiguous; k, v (B, H_kv, L, D) with unit stride along D; visible (B, L) or undefined.
template <typename T>
at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& visible) {
  using Scalar = typename T::Scalar;
  const int64_t batch = q.size(0), heads = q.size(1), dim = q.size(2);
  const int64_t group = heads / k.size(1), length = k.size(2);
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  const Scalar* q_data = q.data_ptr<Scalar>();
  const Scalar* k_data = k.data_ptr<Scalar>();
  const Scalar* v_data = v.data_ptr<Scalar>();
  const bool* visible_data = visible.defined() ? visible.data_ptr<bool>() : nullptr;

  // Scores of every (row, head) against every cached position, then their softmax by ATen's vectorised one.
  at::Tensor scores = at::empty({batch, heads, length}, q.options().dtype(at::kFloat));
  float* score_data = scores.data_ptr<float>();
  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row_head = begin; row_head < end; ++row_head) {
      const int64_t b = row_head / heads, kv_head = row_head % heads / group;
      const Scalar* query = q_data + row_head * dim;
      const Scalar* keys = k_data + b * k.stride(0) + kv_head * k.stride(1);
      float* row_scores = score_data + row_head * length;
      for (int64_t l = 0; l < length; ++l) {
        const bool hidden = visible_data != nullptr && !visible_data[b * length + l];
        row_scores[l] = hidden ? -INFINITY : T::dot(query, keys + l * k.stride(2), dim) * scale;
      }
    }
  });
  at::Tensor weights = at::_softmax(scores, -1, false);
  const float* weight_data = weights.data_ptr<float>();

  at::Tensor out = at::empty({batch, heads, 1, dim}, q.options());
  Scalar* out_data = out.data_ptr<Scalar>();
  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> sum(dim);
    for (int64_t row_head = begin; row_head < end; ++row_head) {
      const int64_t b = row_head / heads, kv_head = row_head % heads / group;
      const Scalar* values = v_data + b * v.stride(0) + kv_head * v.stride(1);
      const float* row_weights = weight_data + row_head * length;
      std::fill(sum.begin(), sum.end(), 0.0f);
      for (int64_t l = 0; l < length; ++l) {
        if (row_weights[l] != 0.0f) T::add_scaled(sum.data(), row_weights[l], values + l * v.stride(2), dim);
      }
      T::store(sum.data(), out_data + row_head * dim, dim);
    }
  });
  return out;
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
  at::Tensor visible;
  if (mask.has_value()) {
    TORCH_CHECK(mask->scalar_type() == at::kBool && mask->numel() == k.size(0) * k.size(2),
                "mask must be boolean, one value per row and cached position");
    visible = mask->reshape({k.size(0), k.size(2)}).contiguous();
  }
  const at::Tensor queries = q.reshape({q.size(0), q.size(1), q.size(3)}).contiguous();
  return dtype == at::kFloat ? attend<Float32>(queries, k, v, visible) : attend<BFloat16>(queries, k, v, visible);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llamagen, m) {
  m.def("single_query_attention(Tensor q, Tensor k, Tensor v, Tensor? mask) -> Tensor");
}
TORCH_LIBRARY_IMPL(llamagen, CPU, m) { m.impl("single_query_attention", &single_query_attention); }
