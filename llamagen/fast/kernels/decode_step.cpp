// A whole decoding step of the Llama generator in one call: the token embeddings of its rows (each row a
// sequence; guidance doubles them) through every layer into the KV cache, to the logits of the next token. A
// window of w tokens per sequence (parallel decoding verifies w drafts at once, llamagen/gpt/jacobi.py) runs as
// w times the rows through the products, which read the weights once for up to 16 rows: while reading them sets
// the step's time, a window costs little more than a token; each token attends to the cache up to itself.
//
// Op by op, a step of GPT-B is some 200 calls through torch's dispatcher (and, eager, through Python's modules):
// about 2 ms of a 7 ms bf16 step at batch 1 went to the graph's own small kernels, their calls, the attention's
// set-up and the step's Python, whatever the memory's speed. Here the products and the attention are the same
// kernels (small_batch_linear.cpp, single_query_attention.cpp) called on buffers allocated once per step, and
// the small work between them (norms, rotary embeddings, SwiGLU, residuals) runs in 16-value registers on one
// thread: a few thousand values a layer, for which waking the other thread would cost more than it saves.
//
// Every value is rounded to the model's dtype where the modules round it (llamagen/gpt/layers.py): the norm's
// scaled input and its product with the weight, the rotated queries and keys, the SwiGLU's two factors and
// product, each residual sum; statistics and rotations are computed in float32.

#include <ATen/ATen.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <iterator>

#include "decoding.h"
#include "registers.h"

namespace {

using llamagen::BFloat16;
using llamagen::chunk_mask;
using llamagen::exponential;
using llamagen::Float32;

// The sizes of a step, read from its weights and caches: `rows` token rows, `window` consecutive tokens of each
// of `sequences` sequences, stored window position by window position (row j * sequences + s is token j of
// sequence s), so that the tokens at one position are consecutive rows for the attention.
struct Shape {
  int64_t sequences, window, rows, dim, heads, kv_heads, head_dim, hidden, vocab, layers;
  int64_t q_size() const { return heads * head_dim; }
  int64_t kv_size() const { return kv_heads * head_dim; }
};

// One layer's weights, in the order of the op's weight list.
struct LayerWeights {
  const at::Tensor &attention_norm, &wqkv, &wo, &ffn_norm, &w1, &w3, &w2;
};
constexpr int64_t kWeightsPerLayer = 7;

template <typename T>
class Step {
  using Scalar = typename T::Scalar;

 public:
  Step(const Shape& shape, float eps, int64_t position, const float* rope, const bool* visible,
       int64_t visible_stride)
      : s_(shape),
        eps_(eps),
        position_(position),
        rope_(rope),
        visible_(visible),
        visible_stride_(visible_stride) {
    // Per row: the residual stream, a norm's output (and a branch's), the projected queries, keys and values,
    // the rotated queries (then the attention's output in their place), SwiGLU's two halves, the logits.
    Scalar** buffers[] = {&h_, &normed_, &qkv_, &attended_, &gate_, &up_, &logits_};
    const int64_t widths[] = {s_.dim,    s_.dim,    s_.q_size() + 2 * s_.kv_size(), s_.q_size(),
                              s_.hidden, s_.hidden, s_.vocab};
    int64_t values = 0;
    for (const int64_t width : widths) values += round_up(s_.rows * width);
    workspace_ = at::empty({values}, at::TensorOptions().dtype(dtype()));
    scores_ = at::empty({s_.sequences * s_.heads * (position + s_.window)}, at::TensorOptions().dtype(at::kFloat));
    Scalar* next = workspace_.data_ptr<Scalar>();
    for (size_t b = 0; b < std::size(buffers); ++b) {
      *buffers[b] = next;
      next += round_up(s_.rows * widths[b]);
    }
  }

  // tokens: (sequences, window), row-major.
  void embed(const at::Tensor& table, const int64_t* tokens) {
    const Scalar* rows = table.data_ptr<Scalar>();
    for (int64_t r = 0; r < s_.rows; ++r) {
      const int64_t id = tokens[sequence_of(r) * s_.window + window_position_of(r)];
      std::copy_n(rows + id * s_.dim, s_.dim, h_ + r * s_.dim);
    }
  }

  void layer(const LayerWeights& w, const at::Tensor& k_cache, const at::Tensor& v_cache) {
    rms_norm(h_, w.attention_norm.data_ptr<Scalar>(), normed_);
    linear(normed_, w.wqkv, qkv_);
    store_queries_keys_values(k_cache, v_cache);
    // The queries at window position j see the cache up to position_ + j: the window's earlier tokens, just
    // stored, and none after.
    for (int64_t j = 0; j < s_.window; ++j) {
      Scalar* queries = attended_ + j * s_.sequences * s_.q_size();
      llamagen::single_query_attention_rows(dtype(), queries, llamagen::cached_heads(k_cache),
                                            llamagen::cached_heads(v_cache), visible_, visible_stride_, s_.sequences,
                                            s_.heads, s_.kv_heads, position_ + j + 1, s_.head_dim,
                                            scores_.data_ptr<float>(), queries);
    }
    linear(attended_, w.wo, normed_);
    add_to_residual(normed_);
    rms_norm(h_, w.ffn_norm.data_ptr<Scalar>(), normed_);
    linear(normed_, w.w1, gate_);
    linear(normed_, w.w3, up_);
    swiglu();
    linear(gate_, w.w2, normed_);
    add_to_residual(normed_);
  }

  // (sequences, window, vocab) float32.
  at::Tensor logits(const at::Tensor& norm, const at::Tensor& output) {
    rms_norm(h_, norm.data_ptr<Scalar>(), normed_);
    linear(normed_, output, logits_);
    at::Tensor result = at::empty({s_.sequences, s_.window, s_.vocab}, at::TensorOptions().dtype(at::kFloat));
    for (int64_t r = 0; r < s_.rows; ++r) {
      float* out = result.data_ptr<float>() + (sequence_of(r) * s_.window + window_position_of(r)) * s_.vocab;
      const Scalar* row = logits_ + r * s_.vocab;
      for (int64_t i = 0; i < s_.vocab; i += 16) {
        const __mmask16 mask = chunk_mask(i, s_.vocab);
        _mm512_mask_storeu_ps(out + i, mask, T::load(row + i, mask));
      }
    }
    return result;
  }

 private:
  static int64_t round_up(int64_t values) { return (values + 31) / 32 * 32; }  // buffers 64-byte aligned
  static at::ScalarType dtype() { return c10::CppTypeToScalarType<Scalar>::value; }
  int64_t sequence_of(int64_t row) const { return row % s_.sequences; }
  int64_t window_position_of(int64_t row) const { return row / s_.sequences; }

  // The product takes up to kMaxRows rows at a time: more rows read the weights once per group of them.
  void linear(const Scalar* x, const at::Tensor& weight, Scalar* y) const {
    const int64_t n_out = weight.size(0), k_in = weight.size(1);
    for (int64_t first = 0; first < s_.rows; first += llamagen::kMaxRows) {
      const int64_t rows = std::min(llamagen::kMaxRows, s_.rows - first);
      llamagen::small_batch_linear_rows(dtype(), x + first * k_in, weight.data_ptr(), y + first * n_out, rows, n_out,
                                        k_in);
    }
  }

  // RMSNorm (layers.py): x scaled by the inverse root of its mean square in float32, rounded, times the weight.
  void rms_norm(const Scalar* x, const Scalar* weight, Scalar* out) const {
    for (int64_t r = 0; r < s_.rows; ++r) {
      const Scalar* row = x + r * s_.dim;
      __m512 squares = _mm512_setzero_ps();
      for (int64_t i = 0; i < s_.dim; i += 16) {
        const __m512 values = T::load(row + i, chunk_mask(i, s_.dim));
        squares = _mm512_fmadd_ps(values, values, squares);
      }
      const float mean = _mm512_reduce_add_ps(squares) / static_cast<float>(s_.dim);
      const __m512 scale = _mm512_set1_ps(1.0f / std::sqrt(mean + eps_));
      for (int64_t i = 0; i < s_.dim; i += 16) {
        const __mmask16 mask = chunk_mask(i, s_.dim);
        const __m512 scaled = T::round(_mm512_mul_ps(T::load(row + i, mask), scale));
        T::store(out + r * s_.dim + i, _mm512_mul_ps(scaled, T::load(weight + i, mask)), mask);
      }
    }
  }

  // The 2-D rotary embedding of one head (layers.py's apply_rope): pairs (a, b) -> (a cos - b sin, b cos + a sin),
  // the angles of its position from the table (head_dim/2 pairs of cos, sin).
  void rotate(const Scalar* head, int64_t position, Scalar* out) const {
    const float* table = rope_ + position * s_.head_dim;  // head_dim/2 (cos, sin) pairs a position
    for (int64_t i = 0; i < s_.head_dim; i += 16) {
      const __mmask16 mask = chunk_mask(i, s_.head_dim);
      const __m512 values = T::load(head + i, mask);
      const __m512 angles = _mm512_maskz_loadu_ps(mask, table + i);              // cos, sin, cos, sin, ...
      const __m512 cos = _mm512_moveldup_ps(angles);                             // each pair's cos twice
      const __m512 sin = _mm512_movehdup_ps(angles);                             // each pair's sin twice
      const __m512 swapped = _mm512_permute_ps(values, 0xB1);                    // b, a of each pair
      const __m512 signed_sin = _mm512_mask_sub_ps(sin, 0x5555, _mm512_setzero_ps(), sin);  // -sin, +sin
      T::store(out + i, _mm512_fmadd_ps(swapped, signed_sin, _mm512_mul_ps(values, cos)), mask);
    }
  }

  // The queries rotated into their buffer; the keys rotated, and the values as they are, into the cache of
  // their sequence at their position.
  void store_queries_keys_values(const at::Tensor& k_cache, const at::Tensor& v_cache) {
    Scalar* keys = k_cache.data_ptr<Scalar>();
    Scalar* values = v_cache.data_ptr<Scalar>();
    const int64_t width = s_.q_size() + 2 * s_.kv_size();
    for (int64_t r = 0; r < s_.rows; ++r) {
      const Scalar* projected = qkv_ + r * width;
      const int64_t sequence = sequence_of(r), position = position_ + window_position_of(r);
      for (int64_t h = 0; h < s_.heads; ++h) {
        rotate(projected + h * s_.head_dim, position, attended_ + (r * s_.heads + h) * s_.head_dim);
      }
      for (int64_t h = 0; h < s_.kv_heads; ++h) {
        const int64_t cached = sequence * k_cache.stride(0) + h * k_cache.stride(1) + position * k_cache.stride(2);
        rotate(projected + s_.q_size() + h * s_.head_dim, position, keys + cached);
        const int64_t value_at = sequence * v_cache.stride(0) + h * v_cache.stride(1) + position * v_cache.stride(2);
        std::copy_n(projected + s_.q_size() + s_.kv_size() + h * s_.head_dim, s_.head_dim, values + value_at);
      }
    }
  }

  void add_to_residual(const Scalar* branch) {
    const int64_t n = s_.rows * s_.dim;
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 mask = chunk_mask(i, n);
      T::store(h_ + i, _mm512_add_ps(T::load(h_ + i, mask), T::load(branch + i, mask)), mask);
    }
  }

  // SwiGLU's middle (layers.py's FeedForward): gate = silu(gate) * up, silu(x) = x / (1 + e^-x), each rounded.
  void swiglu() {
    const int64_t n = s_.rows * s_.hidden;
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 mask = chunk_mask(i, n);
      const __m512 x = T::load(gate_ + i, mask);
      const __m512 e_minus_x = exponential(_mm512_sub_ps(_mm512_setzero_ps(), x));
      const __m512 silu = T::round(_mm512_div_ps(x, _mm512_add_ps(one, e_minus_x)));
      T::store(gate_ + i, _mm512_mul_ps(silu, T::load(up_ + i, mask)), mask);
    }
  }

  const Shape s_;
  const float eps_;
  const int64_t position_;
  const float* rope_;
  const bool* visible_;
  const int64_t visible_stride_;
  at::Tensor workspace_, scores_;
  Scalar *h_, *normed_, *qkv_, *attended_, *gate_, *up_, *logits_;
};

void check_weight(const at::Tensor& weight, at::ScalarType dtype, std::initializer_list<int64_t> shape,
                  const char* name) {
  TORCH_CHECK(weight.scalar_type() == dtype && weight.device().is_cpu() && weight.is_contiguous(), name,
              " must be a contiguous CPU tensor of the embeddings' dtype");
  TORCH_CHECK(weight.sizes() == at::IntArrayRef(shape), name, " must be ", at::IntArrayRef(shape), ", got ",
              weight.sizes());
}

// Everything the step reads, checked before it writes anything: the weights' shapes against the embeddings',
// the caches', the rows, the position and the token ids.
Shape check(const at::Tensor& tokens, bool window, at::TensorList weights, at::TensorList caches,
            const at::Tensor& rope, const std::optional<at::Tensor>& visible, int64_t position, int64_t heads) {
  TORCH_CHECK(weights.size() >= 3 + kWeightsPerLayer && (weights.size() - 3) % kWeightsPerLayer == 0,
              "weights: the embeddings, 7 per layer (one layer at least), the norm and the output, got ",
              weights.size());
  const int64_t layers = (weights.size() - 3) / kWeightsPerLayer;
  TORCH_CHECK(static_cast<int64_t>(caches.size()) == 2 * layers, "caches: a key and a value cache per layer");
  const at::Tensor& embeddings = weights[0];
  const auto dtype = embeddings.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "float32 or bf16 weights, got ", dtype);
  TORCH_CHECK(embeddings.dim() == 2, "the token embeddings must be (vocab, dim)");
  check_weight(embeddings, dtype, {embeddings.size(0), embeddings.size(1)}, "tok_embeddings");
  const at::Tensor& cache = caches[0];
  TORCH_CHECK(cache.dim() == 4 && cache.size(1) > 0 && heads > 0,
              "caches must be (batch, kv_heads, length, head_dim), with heads and kv_heads at least 1");
  TORCH_CHECK(tokens.dim() == 2 && tokens.size(1) >= 1 && (window || tokens.size(1) == 1), "tokens must be ",
              window ? "(rows, window)" : "(rows, 1)", ", got ", tokens.sizes());
  Shape s{tokens.size(0), tokens.size(1), tokens.numel(), embeddings.size(1), heads, cache.size(1), cache.size(3),
          weights[5].size(0), weights.back().size(0), layers};
  TORCH_CHECK(s.sequences >= 1 && s.sequences <= cache.size(0), "1 to ", cache.size(0),
              " rows (the cache's batch), got ", s.sequences);
  TORCH_CHECK(heads % s.kv_heads == 0 && s.q_size() == s.dim, "heads must be a multiple of the caches' ",
              s.kv_heads, " with heads * head_dim the model's width");
  const int64_t lanes = dtype == at::kFloat ? 16 : 32;
  TORCH_CHECK(s.dim % lanes == 0 && s.hidden % lanes == 0 && s.head_dim % 2 == 0,
              "the width and the hidden width must be whole 512-bit registers, and head_dim even");
  TORCH_CHECK(position >= 0 && position + s.window <= cache.size(2), "position ", position,
              s.window > 1 ? " and the window after it" : "", " is outside the cache");
  for (int64_t l = 0; l < layers; ++l) {
    const at::TensorList w = weights.slice(1 + l * kWeightsPerLayer, kWeightsPerLayer);
    check_weight(w[0], dtype, {s.dim}, "attention_norm");
    check_weight(w[1], dtype, {s.q_size() + 2 * s.kv_size(), s.dim}, "wqkv");
    check_weight(w[2], dtype, {s.dim, s.q_size()}, "wo");
    check_weight(w[3], dtype, {s.dim}, "ffn_norm");
    check_weight(w[4], dtype, {s.hidden, s.dim}, "w1");
    check_weight(w[5], dtype, {s.hidden, s.dim}, "w3");
    check_weight(w[6], dtype, {s.dim, s.hidden}, "w2");
    for (const at::Tensor& c : {caches[2 * l], caches[2 * l + 1]}) {
      TORCH_CHECK(c.scalar_type() == dtype && c.sizes() == cache.sizes() && c.stride(3) == 1,
                  "every cache must be ", cache.sizes(), " of the weights' dtype, contiguous along head_dim");
    }
  }
  check_weight(weights[weights.size() - 2], dtype, {s.dim}, "norm");
  check_weight(weights.back(), dtype, {s.vocab, s.dim}, "output");
  TORCH_CHECK(rope.scalar_type() == at::kFloat && rope.is_contiguous() && rope.dim() == 3 &&
                  rope.size(0) == cache.size(2) && rope.size(1) * 2 == s.head_dim && rope.size(2) == 2,
              "rope must be the (length, head_dim/2, 2) float32 table");
  if (visible.has_value()) {
    TORCH_CHECK(visible->scalar_type() == at::kBool && visible->dim() == 2 && visible->size(0) >= s.sequences &&
                    visible->size(1) == cache.size(2) && visible->stride(1) == 1,
                "visible must be (batch, length) booleans, one per cached position");
  }
  TORCH_CHECK(tokens.scalar_type() == at::kLong, "tokens must be int64");
  const int64_t* ids = tokens.data_ptr<int64_t>();
  for (int64_t r = 0; r < s.rows; ++r) {
    TORCH_CHECK(ids[r] >= 0 && ids[r] < embeddings.size(0), "token id ", ids[r], " is outside the vocabulary");
  }
  return s;
}

template <typename T>
at::Tensor run(const at::Tensor& tokens, at::TensorList weights, at::TensorList caches, const at::Tensor& rope,
               const std::optional<at::Tensor>& visible, int64_t position, const Shape& shape, float eps) {
  Step<T> step(shape, eps, position, rope.data_ptr<float>(), visible ? visible->data_ptr<bool>() : nullptr,
               visible ? visible->stride(0) : 0);
  step.embed(weights[0], tokens.data_ptr<int64_t>());
  for (int64_t l = 0; l < shape.layers; ++l) {
    const at::Tensor* w = &weights[1 + l * kWeightsPerLayer];
    step.layer({w[0], w[1], w[2], w[3], w[4], w[5], w[6]}, caches[2 * l], caches[2 * l + 1]);
  }
  return step.logits(weights[weights.size() - 2], weights.back());
}

at::Tensor decode(const at::Tensor& tokens, bool window, at::TensorList weights, at::TensorList caches,
                  const at::Tensor& rope, const std::optional<at::Tensor>& visible, int64_t position, int64_t heads,
                  double eps) {
  const at::Tensor ids = tokens.contiguous();  // columns of the generation's tokens
  const Shape shape = check(ids, window, weights, caches, rope, visible, position, heads);
  if (weights[0].scalar_type() == at::kFloat) {
    return run<Float32>(ids, weights, caches, rope, visible, position, shape, static_cast<float>(eps));
  }
  return run<BFloat16>(ids, weights, caches, rope, visible, position, shape, static_cast<float>(eps));
}

// tokens (rows, 1) at `position` -> (rows, vocab) logits of the next token.
at::Tensor decode_step(const at::Tensor& tokens, at::TensorList weights, at::TensorList caches,
                       const at::Tensor& rope, const std::optional<at::Tensor>& visible, int64_t position,
                       int64_t heads, double eps) {
  return decode(tokens, false, weights, caches, rope, visible, position, heads, eps).select(1, 0);
}

// tokens (rows, w) at positions position .. position + w - 1 -> (rows, w, vocab), each the logits of the token
// after its own (GPT.decode_window).
at::Tensor decode_window(const at::Tensor& tokens, at::TensorList weights, at::TensorList caches,
                         const at::Tensor& rope, const std::optional<at::Tensor>& visible, int64_t position,
                         int64_t heads, double eps) {
  return decode(tokens, true, weights, caches, rope, visible, position, heads, eps);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llamagen, m) {
  m.def(
      "decode_step(Tensor tokens, Tensor[] weights, Tensor(a!)[] caches, Tensor rope, Tensor? visible, "
      "int position, int heads, float eps) -> Tensor");
  m.def(
      "decode_window(Tensor tokens, Tensor[] weights, Tensor(a!)[] caches, Tensor rope, Tensor? visible, "
      "int position, int heads, float eps) -> Tensor");
}
TORCH_LIBRARY_IMPL(llamagen, CPU, m) {
  m.impl("decode_step", &decode_step);
  m.impl("decode_window", &decode_window);
}
