// y = x @ weight^T in bf16 for a few rows of x on Intel's matrix tiles (AMX), where the CPU has them.
//
// With guidance, batch 4 to 8 multiplies 8 to 16 rows by every weight. Summed in 512-bit registers
// (small_batch_linear.cpp) that work grows with the rows, and past about 8 of them the multiply-adds, not the
// reading of the weights, set the pace. One AMX instruction multiplies a 16 x 32 block of the weights by 32
// values of up to 16 rows of x, so the product costs about what reading the weights costs, whatever the rows.
//
// The weights are read as they lie, (n_out, k_in) row-major: a tile of 16 weight rows x 32 values is 16 rows of
// 64 bytes, `k_in` values apart. What the instruction wants in pairs along the inner dimension (the layout Intel
// calls VNNI) is x's side, a few rows, re-laid once per call: pairs[k / 2][m][k % 2] = x[m][k]. A tile product
// then gives 16 weight rows x the rows of x, y's transpose for that block, summed in float32 and rounded to bf16
// once, as the other kernels do.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <torch/library.h>

#include <cstdint>
#include <vector>

#include "decoding.h"

namespace {

constexpr int64_t kTileRows = 16;    // weight rows per tile, and the most rows of x
constexpr int64_t kTileValues = 32;  // bf16 values per 64-byte tile row

// The tiles' shapes, loaded into each thread that runs tile instructions (the configuration is per thread).
// 0, 1: float32 sums, 16 weight rows x the rows of x, over even and odd chunks of the inner dimension (two
// chains, so one product need not wait for the last); 2, 3: weights; 4, 5: x's pairs.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

__attribute__((target("amx-tile"))) void load_tile_config(int64_t x_rows) {
  TileConfig config;
  const auto x_bytes = static_cast<uint16_t>(x_rows * 4);  // a float32 sum, or a pair of bf16, per row of x
  for (int t = 0; t < 6; ++t) {
    config.rows[t] = kTileRows;
    config.bytes_per_row[t] = (t == 2 || t == 3) ? 64 : x_bytes;
  }
  // GCC takes ldtilecfg to read only the first bytes of its operand and drops the stores of the tiles' shapes
  // without this barrier, which leaves every tile unconfigured (SIGILL at the first tile instruction).
  asm volatile("" : : "r"(&config) : "memory");
  _tile_loadconfig(&config);
}

// y[:, n .. n + 15] for the block of 16 weight rows from n; sums: 2 x 16 x x_rows float32 of scratch.
__attribute__((target("amx-tile,amx-bf16"))) void weight_block(const at::BFloat16* pairs, const at::BFloat16* w,
                                                               at::BFloat16* y, float* sums, int64_t n,
                                                               int64_t x_rows, int64_t n_out, int64_t k_in) {
  const at::BFloat16* block = w + n * k_in;
  const int64_t weight_stride = k_in * 2, pair_stride = x_rows * 4;  // bytes between a tile's rows
  const int64_t chunks = k_in / kTileValues;
  // The next block, 16 x k_in contiguous values, is prefetched while this one is multiplied: 16 of its lines per
  // chunk, its k_in / 2 lines over this block's k_in / 32 chunks. Without it each chunk waits for 16 rows that
  // lie a weight row apart, more streams than the hardware prefetcher follows.
  const char* next = reinterpret_cast<const char*>(block + kTileRows * k_in);
  const bool prefetch = n + 2 * kTileRows <= n_out;
  _tile_zero(0);
  _tile_zero(1);
  int64_t c = 0;
  for (; c + 1 < chunks; c += 2) {
    if (prefetch) {
      for (int line = 0; line < 32; ++line) _mm_prefetch(next + (c * 16 + line) * 64, _MM_HINT_T0);
    }
    _tile_loadd(2, block + c * kTileValues, weight_stride);
    _tile_loadd(4, pairs + c * kTileValues * x_rows, pair_stride);
    _tile_dpbf16ps(0, 2, 4);
    _tile_loadd(3, block + (c + 1) * kTileValues, weight_stride);
    _tile_loadd(5, pairs + (c + 1) * kTileValues * x_rows, pair_stride);
    _tile_dpbf16ps(1, 3, 5);
  }
  if (c < chunks) {  // an odd chunk left
    _tile_loadd(2, block + c * kTileValues, weight_stride);
    _tile_loadd(4, pairs + c * kTileValues * x_rows, pair_stride);
    _tile_dpbf16ps(0, 2, 4);
  }
  _tile_stored(0, sums, pair_stride);
  _tile_stored(1, sums + kTileRows * x_rows, pair_stride);
  for (int64_t r = 0; r < kTileRows; ++r) {
    for (int64_t m = 0; m < x_rows; ++m) {
      y[m * n_out + n + r] = at::BFloat16(sums[r * x_rows + m] + sums[(kTileRows + r) * x_rows + m]);
    }
  }
}

__attribute__((target("amx-tile"))) void release_tiles() { _tile_release(); }

bool check_tiles_ready() {
  if (!__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-bf16")) return false;
  // Linux hands a process the tiles' 8 KB of register state only when asked (arch_prctl ARCH_REQ_XCOMP_PERM
  // for XTILEDATA, state component 18); a tile instruction without it ends the process with SIGILL.
  constexpr int kRequestPermission = 0x1023, kTileData = 18;
  return syscall(SYS_arch_prctl, kRequestPermission, kTileData) == 0;
}

}  // namespace

namespace llamagen {

bool tiles_ready() {
  static const bool ready = check_tiles_ready();
  return ready;
}

int64_t tile_linear_rows(const at::BFloat16* x, const at::BFloat16* w, at::BFloat16* y, int64_t rows, int64_t n_out,
                         int64_t k_in) {
  std::vector<at::BFloat16> pairs(rows * k_in);
  for (int64_t m = 0; m < rows; ++m) {
    for (int64_t k = 0; k < k_in; ++k) pairs[(k / 2) * 2 * rows + m * 2 + k % 2] = x[m * k_in + k];
  }
  const int64_t blocks = n_out / kTileRows;
  at::parallel_for(0, blocks, 8, [&](int64_t begin, int64_t end) {
    load_tile_config(rows);
    std::vector<float> sums(2 * kTileRows * rows);
    for (int64_t b = begin; b < end; ++b) {
      weight_block(pairs.data(), w, y, sums.data(), b * kTileRows, rows, n_out, k_in);
    }
    release_tiles();
  });
  return blocks * kTileRows;
}

}  // namespace llamagen

TORCH_LIBRARY_FRAGMENT(llamagen, m) { m.def("tiles_ready() -> bool", &llamagen::tiles_ready); }
