// LLaMA-family decoder (LLaMA-2, Vicuna, Mistral shapes): token embedding, pre-norm blocks of grouped-query
// attention with rotary position embeddings and a SwiGLU MLP, final RMSNorm, tied or untied lm_head.
// Source: transformers/models/llama/modeling_llama.py (LlamaRMSNorm, LlamaRotaryEmbedding, apply_rotary_pos_emb,
// LlamaAttention, LlamaMLP, LlamaDecoderLayer, LlamaModel, LlamaForCausalLM). Registered names match the
// checkpoint keys under "language_model." (model.layers.N.self_attn.q_proj.weight, lm_head.weight).
//
// B=batch T=new tokens S=cached+new tokens D=hidden H=heads G=kv heads Dh=head dim F=mlp hidden V=vocab
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>

#include "core/activation_checkpoint.h"
#include "core/linear.h"
#include "language/kv_cache.h"
#include "language/packing.h"
#include "language/text_config.h"

namespace mole {

class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);  // (..., D) -> (..., D)
  double eps;
  torch::Tensor weight;  // (D)
};
TORCH_MODULE(RMSNorm);

// cos and sin of the rotary angles for each position, computed in float32 and cast to `dtype` as transformers
// does. position_ids (B, T) -> two (B, T, Dh).
std::pair<torch::Tensor, torch::Tensor> rotary_cos_sin(const torch::Tensor& position_ids, int64_t head_dim,
                                                       double theta, torch::ScalarType dtype);

// Additive attention mask (B, 1, T, S): 0 where query t (absolute index past + t) may see key s, the lowest
// value of `dtype` elsewhere (causal, padding from attention_mask (B, S), optional sliding window). A finite
// lowest value, not -inf, so fully masked rows (left padding) give a uniform softmax instead of NaN.
torch::Tensor causal_attention_mask(const torch::Tensor& attention_mask, int64_t past, int64_t n_new,
                                    int64_t sliding_window, torch::ScalarType dtype);

// position ids as transformers 5 generate() makes them: cumsum(mask) - 1, 0 on padding. (B, S) -> (B, S)
torch::Tensor positions_from_mask(const torch::Tensor& attention_mask);

// How the tokens of one forward may attend to each other: an additive mask, or packed rows.
struct AttentionLayout {
  torch::Tensor mask;                 // (B, 1, T, S); undefined when packed
  const PackedRows* packed = nullptr;
};

class LlamaAttentionImpl : public torch::nn::Module {
 public:
  explicit LlamaAttentionImpl(const TextConfig& config);
  // x (B, T, D); cos, sin (B, T, Dh). With a cache, this layer's keys/values are appended (padded layout only).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const AttentionLayout& layout, KVCache* cache, int64_t layer_index);

  TextConfig config;
  Linear q_proj = nullptr, k_proj = nullptr, v_proj = nullptr, o_proj = nullptr;
};
TORCH_MODULE(LlamaAttention);

class LlamaMlpImpl : public torch::nn::Module {
 public:
  explicit LlamaMlpImpl(const TextConfig& config);
  torch::Tensor forward(const torch::Tensor& x);  // (B, T, D) -> (B, T, D)
  void attach(std::shared_ptr<FfnAdapter> adapter);  // e.g. FFN-level MoLE (moe/mole_ffn.h)
  void detach();

  TextConfig config;
  Linear gate_proj = nullptr, up_proj = nullptr, down_proj = nullptr;
  std::shared_ptr<FfnAdapter> adapter;
};
TORCH_MODULE(LlamaMlp);

class LlamaDecoderLayerImpl : public torch::nn::Module {
 public:
  explicit LlamaDecoderLayerImpl(const TextConfig& config);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const AttentionLayout& layout, KVCache* cache, int64_t layer_index);

  LlamaAttention self_attn = nullptr;
  LlamaMlp mlp = nullptr;
  RMSNorm input_layernorm = nullptr, post_attention_layernorm = nullptr;
};
TORCH_MODULE(LlamaDecoderLayer);

// LlamaModel: embeddings, blocks, final norm.
class LlamaModelImpl : public torch::nn::Module {
 public:
  explicit LlamaModelImpl(const TextConfig& config);

  // inputs_embeds (B, T, D); position_ids (B, T); attention_mask (B, S) over cached + new tokens (1 = real,
  // 0 = padding). With a cache, T new tokens are appended after cache->length() cached ones and the cache
  // advances. Returns the final normed hidden state (B, T, D). hidden_states, when given, receives
  // transformers' output_hidden_states: the input embeddings, each block's output but the last, and the final
  // normed state (n_layers + 1 tensors). With `packed`, the rows hold whole samples back to back (no cache).
  torch::Tensor forward(const torch::Tensor& inputs_embeds, const torch::Tensor& position_ids,
                        const torch::Tensor& attention_mask, KVCache* cache = nullptr,
                        std::vector<torch::Tensor>* hidden_states = nullptr, const PackedRows* packed = nullptr);

  TextConfig config;
  torch::nn::Embedding embed_tokens = nullptr;
  torch::nn::ModuleList layers = nullptr;
  RMSNorm norm = nullptr;
  // How each block runs when there is no cache (training): set by the model above for activation
  // checkpointing; the block's closure owns what it needs, as backward may rerun it after forward() returned.
  LayerRunner layer_runner;
};
TORCH_MODULE(LlamaModel);

class LlamaForCausalLMImpl : public torch::nn::Module {
 public:
  explicit LlamaForCausalLMImpl(const TextConfig& config);
  torch::Tensor embed(const torch::Tensor& input_ids);  // (B, T) -> (B, T, D)
  torch::Tensor logits(const torch::Tensor& hidden);    // (B, T, D) -> (B, T, V); tied: embed_tokens.weight
  // Mean next-token cross-entropy (float32) over the supervised positions: the state at t predicts labels at
  // t + 1, kIgnoreIndex ignored. lm_head runs on the states of those positions alone, never on (B, T, V).
  // hidden (B, T, D), labels (B, T) -> scalar
  torch::Tensor next_token_loss(const torch::Tensor& hidden, const torch::Tensor& labels);
  KVCache make_cache(int64_t batch, int64_t capacity) const;

  TextConfig config;
  LlamaModel model = nullptr;
  Linear lm_head = nullptr;  // nullptr when tie_word_embeddings
};
TORCH_MODULE(LlamaForCausalLM);

}  // namespace mole
