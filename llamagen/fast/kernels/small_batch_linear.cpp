// y = x @ weight^T for a few rows of x (1 to 16) and float32 or bf16 weights, on CPUs with AVX-512.
//
// A decoding step multiplies one or two rows (guidance doubles the batch) by every weight matrix of the model:
// a matrix-vector product whose cost is reading the weights once. ATen's kernels for so few rows (MKL in
// float32, oneDNN in bf16) read the weights well below the memory bandwidth on this project's 2-core machine;
// this loop reads each weight row once for all the rows of x, four chunks at a time into four independent sums
// per row of x, so that the loads, not the latency of the multiply-adds, set the pace (two sums read 10-20%
// slower with two threads here; `benchmarks/small_batch_linear.py` measures it). On CPUs with AMX, bf16 products
// of 4 rows or more go to the tiles instead (tile_linear.cpp), whose multiply-adds do not grow with the rows.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include "decoding.h"

namespace {

using llamagen::kMaxRows;

// How far ahead of the loads the weights are prefetched (see one_weight_row).
constexpr int64_t kPrefetchBytes = 2048;

// One 512-bit register of each type: its element count, how to load it, and the multiply-add into
// float32 sums (bf16: pairs of products summed in float32, AVX512-BF16's dot product).
struct Float32 {
  using Scalar = float;
  static constexpr int64_t kLanes = 16;
  static __m512 load(const float* p) { return _mm512_loadu_ps(p); }
  static __m512 multiply_add(__m512 sum, __m512 w, __m512 x) { return _mm512_fmadd_ps(w, x, sum); }
};

struct BFloat16 {
  using Scalar = at::BFloat16;
  static constexpr int64_t kLanes = 32;
  static __m512bh load(const at::BFloat16* p) { return (__m512bh)_mm512_loadu_si512(p); }
  static __m512 multiply_add(__m512 sum, __m512bh w, __m512bh x) { return _mm512_dpbf16_ps(sum, w, x); }
};

// y[m, n] for the M rows of x and the one weight row n.
template <typename T, int M>
void one_weight_row(const typename T::Scalar* x, const typename T::Scalar* w, typename T::Scalar* y, int64_t n,
                    int64_t n_out, int64_t k_in) {
  constexpr int64_t lanes = T::kLanes;
  // Chunks of a weight row read per iteration, each summed in its own register for every row of x: fewer
  // past 4 rows, where the rows' sums already run side by side (and more would not fit the 32 registers).
  constexpr int kChains = M <= 4 ? 4 : 2;
  // From 4 rows of x, the core spends long enough on each chunk of weights that the hardware prefetcher falls
  // behind, and reading and multiplying take turns: the weights are prefetched 2 KB ahead (GPT-B's matrices
  // at 8 rows, bf16: 15.6 ms without, 11.2 with). At 1-3 rows the memory bus sets the pace, and the prefetches
  // only slowed the loop (2 rows: 7.7 ms, 9.5 with).
  constexpr bool kPrefetch = M >= 4;
  const typename T::Scalar* row = w + n * k_in;
  __m512 sums[kChains][M];
  for (int c = 0; c < kChains; ++c)
    for (int m = 0; m < M; ++m) sums[c][m] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + kChains * lanes <= k_in; k += kChains * lanes) {
    for (int c = 0; c < kChains; ++c) {
      if constexpr (kPrefetch) {
        _mm_prefetch(reinterpret_cast<const char*>(row + k + c * lanes) + kPrefetchBytes, _MM_HINT_T0);
      }
      const auto weights = T::load(row + k + c * lanes);
      for (int m = 0; m < M; ++m) {
        sums[c][m] = T::multiply_add(sums[c][m], weights, T::load(x + m * k_in + k + c * lanes));
      }
    }
  }
  for (; k < k_in; k += lanes) {  // the chunks left over
    const auto weights = T::load(row + k);
    for (int m = 0; m < M; ++m) sums[0][m] = T::multiply_add(sums[0][m], weights, T::load(x + m * k_in + k));
  }
  for (int m = 0; m < M; ++m) {
    __m512 total = sums[0][m];
    for (int c = 1; c < kChains; ++c) total = _mm512_add_ps(total, sums[c][m]);
    y[m * n_out + n] = typename T::Scalar(_mm512_reduce_add_ps(total));
  }
}

// y[m, n .. n + R - 1] for the M rows of x (M up to 8) and the R weight rows from n: each chunk of a row of x is
// loaded once for all R weight rows, R x M sums in one chain each.
template <typename T, int R, int M>
void weight_rows(const typename T::Scalar* x, const typename T::Scalar* w, typename T::Scalar* y, int64_t n,
                 int64_t n_out, int64_t k_in) {
  constexpr int64_t lanes = T::kLanes;
  const typename T::Scalar* first = w + n * k_in;
  __m512 sums[R][M];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) sums[r][m] = _mm512_setzero_ps();
  for (int64_t k = 0; k < k_in; k += lanes) {
    decltype(T::load(first)) weights[R];
    for (int r = 0; r < R; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(first + r * k_in + k) + kPrefetchBytes, _MM_HINT_T0);
      weights[r] = T::load(first + r * k_in + k);
    }
    for (int m = 0; m < M; ++m) {
      const auto xm = T::load(x + m * k_in + k);
      for (int r = 0; r < R; ++r) sums[r][m] = T::multiply_add(sums[r][m], weights[r], xm);
    }
  }
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) y[m * n_out + n + r] = typename T::Scalar(_mm512_reduce_add_ps(sums[r][m]));
}

// Up to 8 rows of x, each weight row is read once for all of them (one_weight_row). Past 8, one weight row's sums
// no longer fit the registers in two chains: two weight rows are read at a time instead (weight_rows), over the
// rows of x in a group of 8 and a group of the rest, the second group reading those weight rows again from the
// core's first-level cache: 16 sums, and 10 loads for 16 multiply-adds. GPT-B's 61 matrices at 16 rows in bf16:
// 19.5 ms, against 24.5 for 8 rows twice (the weights read from memory twice) and 22 with three weight rows at
// a time (`small_batch_linear` on 16 rows against two calls of 8, in turns, best of 7).
constexpr int kWeightRows = 2;

// Weight rows `first` to n_out - 1.
template <typename T, int M>
void rows_times_weights(const typename T::Scalar* x, const typename T::Scalar* w, typename T::Scalar* y,
                        int64_t first, int64_t n_out, int64_t k_in) {
  if constexpr (M <= 8) {
    at::parallel_for(first, n_out, 16, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) one_weight_row<T, M>(x, w, y, n, n_out, k_in);
    });
  } else {
    const typename T::Scalar* rest = x + 8 * k_in;
    typename T::Scalar* rest_out = y + 8 * n_out;
    const int64_t blocks = (n_out - first) / kWeightRows;
    at::parallel_for(0, blocks, 4, [&](int64_t begin, int64_t end) {
      for (int64_t n = first + kWeightRows * begin; n < first + kWeightRows * end; n += kWeightRows) {
        weight_rows<T, kWeightRows, 8>(x, w, y, n, n_out, k_in);
        weight_rows<T, kWeightRows, M - 8>(rest, w, rest_out, n, n_out, k_in);
      }
    });
    for (int64_t n = first + blocks * kWeightRows; n < n_out; ++n) {  // the weight rows left over
      one_weight_row<T, 8>(x, w, y, n, n_out, k_in);
      one_weight_row<T, M - 8>(rest, w, rest_out, n, n_out, k_in);
    }
  }
}

// rows_times_weights for the number of rows x has, M to kMaxRows.
template <typename T, int M>
void dispatch_rows_from(int64_t count, const typename T::Scalar* x, const typename T::Scalar* w, typename T::Scalar* y,
                        int64_t first, int64_t n_out, int64_t k_in) {
  if constexpr (M < kMaxRows) {
    if (count > M) return dispatch_rows_from<T, M + 1>(count, x, w, y, first, n_out, k_in);
  }
  rows_times_weights<T, M>(x, w, y, first, n_out, k_in);
}

at::Tensor small_batch_linear(const at::Tensor& x, const at::Tensor& weight) {
  const auto dtype = weight.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "float32 or bf16 weights, got ", dtype);
  TORCH_CHECK(x.scalar_type() == dtype, "x and weight must have one dtype");
  TORCH_CHECK(weight.dim() == 2 && weight.is_contiguous(), "weight must be a contiguous (out, in) matrix");
  const int64_t n_out = weight.size(0), k_in = weight.size(1);
  const int64_t lanes = dtype == at::kFloat ? Float32::kLanes : BFloat16::kLanes;
  TORCH_CHECK(x.size(-1) == k_in && k_in % lanes == 0, "x's last dimension must be weight's, a multiple of ", lanes);
  const at::Tensor rows = x.reshape({-1, k_in}).contiguous();
  TORCH_CHECK(rows.size(0) >= 1 && rows.size(0) <= kMaxRows, "1 to ", kMaxRows, " rows, got ", rows.size(0));
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = n_out;
  at::Tensor y = at::empty(shape, x.options());
  llamagen::small_batch_linear_rows(dtype, rows.data_ptr(), weight.data_ptr(), y.data_ptr(), rows.size(0), n_out, k_in);
  return y;
}

}  // namespace

namespace llamagen {

void small_batch_linear_rows(at::ScalarType dtype, const void* x, const void* w, void* y, int64_t rows,
                             int64_t n_out, int64_t k_in) {
  if (dtype == at::kFloat) {
    dispatch_rows_from<Float32, 1>(rows, static_cast<const float*>(x), static_cast<const float*>(w),
                                   static_cast<float*>(y), 0, n_out, k_in);
  } else {
    using Scalar = BFloat16::Scalar;
    const auto* xs = static_cast<const Scalar*>(x);
    const auto* ws = static_cast<const Scalar*>(w);
    auto* ys = static_cast<Scalar*>(y);
    // The weight rows the tiles leave (n_out past a multiple of 16) are summed in registers.
    const int64_t done = rows >= kTilesFromRows && tiles_ready() ? tile_linear_rows(xs, ws, ys, rows, n_out, k_in) : 0;
    if (done < n_out) dispatch_rows_from<BFloat16, 1>(rows, xs, ws, ys, done, n_out, k_in);
  }
}

}  // namespace llamagen

TORCH_LIBRARY_FRAGMENT(llamagen, m) { m.def("small_batch_linear(Tensor x, Tensor weight) -> Tensor"); }
TORCH_LIBRARY_IMPL(llamagen, CPU, m) { m.impl("small_batch_linear", &small_batch_linear); }
