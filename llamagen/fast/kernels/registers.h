// What the CPU kernels share to compute in 512-bit registers: 16 values of a map's or a model's dtype loaded as
// float32 and stored back rounded, and e^x.
#pragma once

#include <ATen/ATen.h>
#include <immintrin.h>

#include <cstdint>

namespace llamagen {

// 16 values of the dtype as float32 in a register, and back with rounding to nearest even (float32:
// as they are). `mask` selects the values of a last, partial chunk.
struct Float32 {
  using Scalar = float;
  static __m512 load(const float* p, __mmask16 mask) { return _mm512_maskz_loadu_ps(mask, p); }
  static void store(float* p, __m512 values, __mmask16 mask) { _mm512_mask_storeu_ps(p, mask, values); }
  static __m512 round(__m512 values) { return values; }
};

struct BFloat16 {
  using Scalar = at::BFloat16;
  // A bf16 value is the upper half of a float32.
  static __m512 load(const at::BFloat16* p, __mmask16 mask) {
    const __m256i halves = _mm256_maskz_loadu_epi16(mask, p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(halves), 16));
  }
  static void store(at::BFloat16* p, __m512 values, __mmask16 mask) {
    _mm256_mask_storeu_epi16(p, mask, (__m256i)_mm512_cvtneps_pbh(values));
  }
  static __m512 round(__m512 values) {
    const __m256i halves = (__m256i)_mm512_cvtneps_pbh(values);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(halves), 16));
  }
};

// The mask of the chunk of 16 values starting at i of n.
inline __mmask16 chunk_mask(int64_t i, int64_t n) {
  return n - i >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (n - i)) - 1);
}

// e^x to about a float32 ulp: x = k ln2 + r with |r| <= ln2/2 (ln2 in two parts, so that k ln2 is exact), e^r by
// its Taylor series to r^7 (the first term left out is below 5e-9), scaled by 2^k.
inline __m512 exponential(__m512 x) {
  x = _mm512_min_ps(_mm512_set1_ps(100.0f), _mm512_max_ps(_mm512_set1_ps(-100.0f), x));  // keeps NaN a NaN
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 sum = _mm512_set1_ps(1.0f / 5040);
  for (const float coefficient : {1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f}) {
    sum = _mm512_fmadd_ps(sum, r, _mm512_set1_ps(coefficient));
  }
  return _mm512_scalef_ps(sum, k);
}

}  // namespace llamagen
