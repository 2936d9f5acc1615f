// GroupNorm of a channels-last map, followed by SiLU or not, in two passes over memory: one for the statistics,
// one that writes the output. torch's ops take five (group_norm reads the map twice and writes it; silu reads it
// and writes it again) and round the norm's output to the map's dtype before the SiLU.
//
// The tokenizers' maps at full resolution have 32-64 channels and hundreds of thousands of positions, and every
// GroupNorm but the attention layers' is followed by SiLU: there, moving the map through memory, not arithmetic,
// sets the time. Statistics: each channel's values less its first value (so that a mean far from zero does not
// swamp the spread) are summed in float32 over blocks of positions, the blocks' sums added in double, and the
// channels of a group combined exactly (each channel's mean and sum of squared deviations, Chan et al.'s pairwise
// update). Output: each channel's scale and offset, then the SiLU, in float32, rounded once to the map's dtype.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "registers.h"

namespace {

using llamagen::BFloat16;
using llamagen::chunk_mask;
using llamagen::exponential;
using llamagen::Float32;

// Positions whose sums are taken in float32 before they are added to the map's in double.
constexpr int64_t kBlock = 256;

// Per channel: the value subtracted before summing, and the sums of the shifted values and of their squares.
struct ChannelSums {
  std::vector<float> shift;
  std::vector<double> sum, squares;
};

template <typename T>
ChannelSums channel_sums(const typename T::Scalar* x, int64_t positions, int64_t channels) {
  const int64_t blocks = (positions + kBlock - 1) / kBlock;
  ChannelSums sums{std::vector<float>(channels), std::vector<double>(channels), std::vector<double>(channels)};
  for (int64_t c = 0; c < channels; ++c) sums.shift[c] = static_cast<float>(x[c]);
  std::vector<double> per_block(blocks * 2 * channels);
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    std::vector<float> block(2 * channels);
    for (int64_t b = first; b < last; ++b) {
      std::fill(block.begin(), block.end(), 0.0f);
      float* sum = block.data();
      float* squares = sum + channels;
      for (int64_t p = b * kBlock; p < std::min(positions, (b + 1) * kBlock); ++p) {
        const typename T::Scalar* row = x + p * channels;
        for (int64_t c = 0; c < channels; c += 16) {
          const __mmask16 mask = chunk_mask(c, channels);
          const __m512 value =
              _mm512_sub_ps(T::load(row + c, mask), _mm512_maskz_loadu_ps(mask, sums.shift.data() + c));
          _mm512_mask_storeu_ps(sum + c, mask, _mm512_add_ps(_mm512_maskz_loadu_ps(mask, sum + c), value));
          _mm512_mask_storeu_ps(squares + c, mask,
                                _mm512_fmadd_ps(value, value, _mm512_maskz_loadu_ps(mask, squares + c)));
        }
      }
      std::copy(block.begin(), block.end(), per_block.begin() + b * 2 * channels);
    }
  });
  for (int64_t b = 0; b < blocks; ++b) {
    for (int64_t c = 0; c < channels; ++c) {
      sums.sum[c] += per_block[b * 2 * channels + c];
      sums.squares[c] += per_block[b * 2 * channels + channels + c];
    }
  }
  return sums;
}

// Each group's mean and 1 / sqrt(variance + eps), from its channels' sums.
struct GroupMoments {
  double mean, inverse_std;
};

std::vector<GroupMoments> group_moments(const ChannelSums& sums, int64_t positions, int64_t groups, double eps) {
  const int64_t channels = static_cast<int64_t>(sums.sum.size());
  const int64_t per_group = channels / groups;
  const double n = static_cast<double>(positions);
  std::vector<GroupMoments> moments(groups);
  for (int64_t g = 0; g < groups; ++g) {
    double mean = 0.0;
    for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) mean += sums.shift[c] + sums.sum[c] / n;
    mean /= per_group;
    double deviations = 0.0;  // sum over the group of (x - mean)^2
    for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) {
      const double channel_mean = sums.shift[c] + sums.sum[c] / n;
      const double own = std::max(0.0, sums.squares[c] - sums.sum[c] * sums.sum[c] / n);
      deviations += own + n * (channel_mean - mean) * (channel_mean - mean);
    }
    moments[g] = {mean, 1.0 / std::sqrt(deviations / (n * per_group) + eps)};
  }
  return moments;
}

// Each channel's scale and offset: y = x * scale + offset is the group's normalised x times weight plus bias.
void scales_and_offsets(const std::vector<GroupMoments>& moments, const float* weight, const float* bias,
                        int64_t channels, float* scale, float* offset) {
  const int64_t per_group = channels / static_cast<int64_t>(moments.size());
  for (int64_t c = 0; c < channels; ++c) {
    const GroupMoments& group = moments[c / per_group];
    scale[c] = static_cast<float>(weight[c] * group.inverse_std);
    offset[c] = static_cast<float>(bias[c] - group.mean * weight[c] * group.inverse_std);
  }
}

template <typename T>
void write_output(const typename T::Scalar* x, typename T::Scalar* y, int64_t positions, int64_t channels,
                  const float* scale, const float* offset, bool silu) {
  at::parallel_for(0, positions, kBlock, [&](int64_t first, int64_t last) {
    for (int64_t p = first; p < last; ++p) {
      for (int64_t c = 0; c < channels; c += 16) {
        const __mmask16 mask = chunk_mask(c, channels);
        __m512 value = _mm512_fmadd_ps(T::load(x + p * channels + c, mask), _mm512_maskz_loadu_ps(mask, scale + c),
                                       _mm512_maskz_loadu_ps(mask, offset + c));
        if (silu) {  // x / (1 + e^-x)
          const __m512 one = _mm512_set1_ps(1.0f);
          value = _mm512_div_ps(value, _mm512_add_ps(one, exponential(_mm512_sub_ps(_mm512_setzero_ps(), value))));
        }
        T::store(y + p * channels + c, value, mask);
      }
    }
  });
}

template <typename T>
void group_norm_map(const at::Tensor& x, at::Tensor& y, int64_t groups, const float* weight, const float* bias,
                    double eps, bool silu) {
  using Scalar = typename T::Scalar;
  const int64_t batch = x.size(0), channels = x.size(1), positions = x.size(2) * x.size(3);
  std::vector<float> scale(channels), offset(channels);
  for (int64_t i = 0; i < batch; ++i) {
    const Scalar* in = x.const_data_ptr<Scalar>() + i * positions * channels;
    Scalar* out = y.mutable_data_ptr<Scalar>() + i * positions * channels;
    const auto moments = group_moments(channel_sums<T>(in, positions, channels), positions, groups, eps);
    scales_and_offsets(moments, weight, bias, channels, scale.data(), offset.data());
    write_output<T>(in, out, positions, channels, scale.data(), offset.data(), silu);
  }
}

template <typename T>
void statistics_of_map(const at::Tensor& x, int64_t groups, double eps, float* mean, float* inverse_std) {
  const int64_t batch = x.size(0), channels = x.size(1), positions = x.size(2) * x.size(3);
  for (int64_t i = 0; i < batch; ++i) {
    const auto* in = x.const_data_ptr<typename T::Scalar>() + i * positions * channels;
    const auto moments = group_moments(channel_sums<T>(in, positions, channels), positions, groups, eps);
    for (int64_t g = 0; g < groups; ++g) {
      mean[i * groups + g] = static_cast<float>(moments[g].mean);
      inverse_std[i * groups + g] = static_cast<float>(moments[g].inverse_std);
    }
  }
}

void check_map(const at::Tensor& x, int64_t groups) {
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "group_norm: x must be a channels-last (N, C, H, W) map");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "group_norm: x must be float32 or bf16, got ", x.scalar_type());
  TORCH_CHECK(groups > 0 && x.size(1) % groups == 0, "group_norm: ", groups, " groups do not divide ", x.size(1),
              " channels");
  TORCH_CHECK(x.size(2) * x.size(3) > 0, "group_norm: the map has no positions");
}

// x (N, C, H, W) channels-last, float32 or bf16; weight and bias (C,) float32 -> y of x's shape, dtype and
// layout: group_norm(x), then silu if `silu`.
at::Tensor group_norm(const at::Tensor& x, int64_t groups, const at::Tensor& weight, const at::Tensor& bias,
                      double eps, bool silu) {
  check_map(x, groups);
  const int64_t channels = x.size(1);
  for (const at::Tensor* parameter : {&weight, &bias}) {
    TORCH_CHECK(parameter->scalar_type() == at::kFloat && parameter->is_contiguous() && parameter->dim() == 1 &&
                    parameter->size(0) == channels,
                "group_norm: weight and bias must be contiguous float32 (", channels, ",)");
  }
  at::Tensor y = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  if (x.scalar_type() == at::kFloat) {
    group_norm_map<Float32>(x, y, groups, weight.const_data_ptr<float>(), bias.const_data_ptr<float>(), eps, silu);
  } else {
    group_norm_map<BFloat16>(x, y, groups, weight.const_data_ptr<float>(), bias.const_data_ptr<float>(), eps, silu);
  }
  return y;
}

// x as above -> (mean, inverse_std), each (N, groups) float32: the statistics group_norm normalises x with.
std::tuple<at::Tensor, at::Tensor> group_statistics(const at::Tensor& x, int64_t groups, double eps) {
  check_map(x, groups);
  at::Tensor mean = at::empty({x.size(0), groups}, x.options().dtype(at::kFloat));
  at::Tensor inverse_std = at::empty_like(mean);
  if (x.scalar_type() == at::kFloat) {
    statistics_of_map<Float32>(x, groups, eps, mean.mutable_data_ptr<float>(), inverse_std.mutable_data_ptr<float>());
  } else {
    statistics_of_map<BFloat16>(x, groups, eps, mean.mutable_data_ptr<float>(),
                                inverse_std.mutable_data_ptr<float>());
  }
  return {mean, inverse_std};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llamagen, m) {
  m.def("group_norm(Tensor x, int groups, Tensor weight, Tensor bias, float eps, bool silu) -> Tensor");
  m.def("group_statistics(Tensor x, int groups, float eps) -> (Tensor, Tensor)");
}
TORCH_LIBRARY_IMPL(llamagen, CPU, m) {
  m.impl("group_norm", &group_norm);
  m.impl("group_statistics", &group_statistics);
}
