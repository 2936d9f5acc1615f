// What the decoding kernels share between their files: the raw entry points of the product and the attention,
// called by their own ops and by the whole decoding step (decode_step.cpp), which calls them on its buffers
// without going through torch's dispatcher.
#pragma once

#include <ATen/ATen.h>

namespace llamagen {

constexpr int64_t kMaxRows = 16;  // the product's limit: batch 1 to 8 with guidance

// y (rows, n_out) = x (rows, k_in) @ w (n_out, k_in)^T, all contiguous, of `dtype` (float32 or bf16); rows 1 to
// kMaxRows, k_in a whole number of 512-bit registers.
void small_batch_linear_rows(at::ScalarType dtype, const void* x, const void* w, void* y, int64_t rows,
                             int64_t n_out, int64_t k_in);

// Whether this CPU has AMX's bf16 tiles and Linux lets this process use them (tile_linear.cpp).
bool tiles_ready();

// From this many rows of x, bf16 products run on the tiles where they are ready: below it, summing in 512-bit
// registers reads the weights as fast and its multiply-adds keep up.
constexpr int64_t kTilesFromRows = 4;

// The first n_out / 16 * 16 columns of the product above on the tiles, bf16; returns how many it computed.
int64_t tile_linear_rows(const at::BFloat16* x, const at::BFloat16* w, at::BFloat16* y, int64_t rows, int64_t n_out,
                         int64_t k_in);

// Keys or values cached per row, head and position, contiguous along head_dim.
struct CachedHeads {
  const void* data;
  int64_t row_stride, head_stride, position_stride;
};

// A (batch, kv_heads, length, head_dim) cache tensor's.
inline CachedHeads cached_heads(const at::Tensor& cache) {
  return {cache.data_ptr(), cache.stride(0), cache.stride(1), cache.stride(2)};
}

// out (batch, heads, dim) = one query per row and head, q (batch, heads, dim) contiguous, over the first `length`
// cached positions, all of `dtype`. visible: nullptr, or (batch, length) booleans with rows visible_stride apart,
// false for a position hidden from the query. scores: a float32 buffer of batch * heads * length values. out may
// be q itself: every query is read before any output is written.
void single_query_attention_rows(at::ScalarType dtype, const void* q, CachedHeads k, CachedHeads v,
                                 const bool* visible, int64_t visible_stride, int64_t batch, int64_t heads,
                                 int64_t kv_heads, int64_t length, int64_t dim, float* scores, void* out);

}  // namespace llamagen
