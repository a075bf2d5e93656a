#include "language/llama_decoder.h"

#include <limits>

#include <ATen/Dispatch.h>
#include <torch/torch.h>

#include "core/fused_ops.h"
#include "language/conversation.h"

namespace mole {

RMSNormImpl::RMSNormImpl(int64_t dim, double eps_) : eps(eps_) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) { return rms_norm(x, weight, eps); }

std::pair<torch::Tensor, torch::Tensor> rotary_cos_sin(const torch::Tensor& position_ids, int64_t head_dim,
                                                       double theta, torch::ScalarType dtype) {
  auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(position_ids.device());
  // inv_freq = 1 / (base ** (arange(0, dim, 2, int64).float() / dim))
  auto exponent = torch::arange(0, head_dim, 2, f32.dtype(torch::kInt64)).to(torch::kFloat32) / head_dim;
  auto inv_freq = 1.0 / torch::pow(theta, exponent);                                // (Dh/2)
  auto freqs = position_ids.to(torch::kFloat32).unsqueeze(-1) * inv_freq;           // (B, T, Dh/2)
  auto emb = torch::cat({freqs, freqs}, -1);                                        // (B, T, Dh)
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

torch::Tensor causal_attention_mask(const torch::Tensor& attention_mask, int64_t past, int64_t n_new,
                                    int64_t sliding_window, torch::ScalarType dtype) {
  int64_t total = attention_mask.size(1);
  TORCH_CHECK(total == past + n_new, "attention_mask covers ", total, " tokens, expected ", past, " cached + ",
              n_new, " new");
  auto opts = torch::TensorOptions().dtype(torch::kInt64).device(attention_mask.device());
  auto query = torch::arange(past, past + n_new, opts).unsqueeze(1);  // (T, 1) absolute index
  auto key = torch::arange(0, total, opts).unsqueeze(0);              // (1, S)
  auto allowed = key <= query;                                        // (T, S) causal
  if (sliding_window > 0) allowed = allowed & (query - key < sliding_window);
  allowed = allowed.unsqueeze(0) & attention_mask.to(torch::kBool).unsqueeze(1);  // (B, T, S)
  double low = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(torch::kHalf, torch::kBFloat16, dtype, "causal_attention_mask", [&] {
    low = static_cast<double>(std::numeric_limits<scalar_t>::lowest());
  });
  auto zero = torch::zeros({}, opts.dtype(dtype));
  auto masked = torch::full({}, low, opts.dtype(dtype));
  return torch::where(allowed, zero, masked).unsqueeze(1);  // (B, 1, T, S)
}

torch::Tensor positions_from_mask(const torch::Tensor& attention_mask) {
  auto mask = attention_mask.to(torch::kInt64);
  return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0);  // (B, S)
}

LlamaAttentionImpl::LlamaAttentionImpl(const TextConfig& config_) : config(config_) {
  int64_t d = config.hidden_size, q_out = config.n_heads * config.head_dim, kv_out = config.n_kv_heads * config.head_dim;
  bool bias = config.attention_bias;
  q_proj = register_module("q_proj", Linear(LinearOptions(d, q_out).bias(bias)));
  k_proj = register_module("k_proj", Linear(LinearOptions(d, kv_out).bias(bias)));
  v_proj = register_module("v_proj", Linear(LinearOptions(d, kv_out).bias(bias)));
  o_proj = register_module("o_proj", Linear(LinearOptions(q_out, d).bias(bias)));
}

namespace {
// Attention of packed rows: each sample (and each row's padding) a causal sequence of its own, so no token sees
// another sample. q (B, H, T, Dh), k, v (B, G, T, Dh) -> (B, H, T, Dh)
torch::Tensor packed_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const PackedRows& rows, const TextConfig& config) {
  // Splits, not slices: a split's backward is one cat, where each slice's backward would allocate the whole row.
  const int64_t width = q.size(2);
  const bool gqa = config.n_kv_heads != config.n_heads;
  auto q_rows = q.split(1, 0), k_rows = k.split(1, 0), v_rows = v.split(1, 0);
  std::vector<torch::Tensor> out_rows;
  for (size_t b = 0; b < rows.size(); ++b) {
    std::vector<int64_t> lengths = rows[b];
    int64_t used = 0;
    for (int64_t len : lengths) used += len;
    if (used < width) lengths.push_back(width - used);
    auto qs = q_rows[b].split_with_sizes(lengths, 2), ks = k_rows[b].split_with_sizes(lengths, 2),
         vs = v_rows[b].split_with_sizes(lengths, 2);  // (1, H|G, len, Dh) each
    std::vector<torch::Tensor> parts;
    for (size_t i = 0; i < lengths.size(); ++i) {
      const int64_t len = lengths[i];
      if (config.sliding_window > 0 && len > config.sliding_window) {
        auto mask = causal_attention_mask(torch::ones({1, len}, torch::kInt64), 0, len, config.sliding_window,
                                          q.scalar_type()).to(q.device());
        parts.push_back(torch::scaled_dot_product_attention(qs[i], ks[i], vs[i], mask, 0.0, false, std::nullopt, gqa));
      } else {
        parts.push_back(
            torch::scaled_dot_product_attention(qs[i], ks[i], vs[i], {}, 0.0, /*is_causal=*/true, std::nullopt, gqa));
      }
    }
    out_rows.push_back(parts.size() == 1 ? parts[0] : torch::cat(parts, 2));
  }
  return out_rows.size() == 1 ? out_rows[0] : torch::cat(out_rows, 0);
}
}  // namespace

torch::Tensor LlamaAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                                          const AttentionLayout& layout, KVCache* cache, int64_t layer_index) {
  int64_t b = x.size(0), t = x.size(1), dh = config.head_dim;
  // RoPE on (B, T, heads, Dh), where the projections' rows are contiguous, then heads first
  auto q = rotary_embedding(q_proj(x).view({b, t, config.n_heads, dh}), cos, sin).transpose(1, 2);     // (B, H, T, Dh)
  auto k = rotary_embedding(k_proj(x).view({b, t, config.n_kv_heads, dh}), cos, sin).transpose(1, 2);  // (B, G, T, Dh)
  auto v = v_proj(x).view({b, t, config.n_kv_heads, dh}).transpose(1, 2);                              // (B, G, T, Dh)
  if (cache) std::tie(k, v) = cache->append(layer_index, k, v);  // (B, G, S, Dh)
  // softmax(q k^T / sqrt(Dh) + mask) v; each kv head serves H/G query heads (repeat_kv)
  auto out = layout.packed ? packed_attention(q, k, v, *layout.packed, config)
                           : torch::scaled_dot_product_attention(q, k, v, layout.mask, /*dropout_p=*/0.0,
                                                                 /*is_causal=*/false, /*scale=*/std::nullopt,
                                                                 /*enable_gqa=*/config.n_kv_heads != config.n_heads);
  // (B, H, T, Dh)
  return o_proj(out.transpose(1, 2).reshape({b, t, config.n_heads * dh}));                            // (B, T, D)
}

LlamaMlpImpl::LlamaMlpImpl(const TextConfig& config_) : config(config_) {
  int64_t d = config.hidden_size, f = config.intermediate_size;
  gate_proj = register_module("gate_proj", Linear(LinearOptions(d, f).bias(config.mlp_bias)));
  up_proj = register_module("up_proj", Linear(LinearOptions(d, f).bias(config.mlp_bias)));
  down_proj = register_module("down_proj", Linear(LinearOptions(f, d).bias(config.mlp_bias)));
}

torch::Tensor LlamaMlpImpl::forward(const torch::Tensor& x) {
  if (adapter) return adapter->forward(x, GatedFfnBase{*gate_proj, *up_proj, *down_proj, config.hidden_act});
  // down_proj(act_fn(gate_proj(x)) * up_proj(x))
  return down_proj(gated_activation(config.hidden_act, gate_proj(x), up_proj(x)));
}

void LlamaMlpImpl::attach(std::shared_ptr<FfnAdapter> new_adapter) {
  attach_adapter(*this, adapter, std::move(new_adapter));
}

void LlamaMlpImpl::detach() { detach_adapter(*this, adapter); }

LlamaDecoderLayerImpl::LlamaDecoderLayerImpl(const TextConfig& config) {
  self_attn = register_module("self_attn", LlamaAttention(config));
  mlp = register_module("mlp", LlamaMlp(config));
  input_layernorm = register_module("input_layernorm", RMSNorm(config.hidden_size, config.rms_norm_eps));
  post_attention_layernorm =
      register_module("post_attention_layernorm", RMSNorm(config.hidden_size, config.rms_norm_eps));
}

torch::Tensor LlamaDecoderLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                             const torch::Tensor& sin, const AttentionLayout& layout,
                                             KVCache* cache, int64_t layer_index) {
  auto h = x + self_attn(input_layernorm(x), cos, sin, layout, cache, layer_index);  // h = x + attn(norm(x))
  return h + mlp(post_attention_layernorm(h));                                     // h = h + mlp(norm(h))
}

LlamaModelImpl::LlamaModelImpl(const TextConfig& config_) : config(config_) {
  embed_tokens = register_module("embed_tokens", torch::nn::Embedding(config.vocab_size, config.hidden_size));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.n_layers; ++i) layers->push_back(LlamaDecoderLayer(config));
  norm = register_module("norm", RMSNorm(config.hidden_size, config.rms_norm_eps));
}

torch::Tensor LlamaModelImpl::forward(const torch::Tensor& inputs_embeds, const torch::Tensor& position_ids,
                                      const torch::Tensor& attention_mask, KVCache* cache,
                                      std::vector<torch::Tensor>* hidden_states, const PackedRows* packed) {
  TORCH_CHECK(inputs_embeds.dim() == 3 && inputs_embeds.size(2) == config.hidden_size,
              "llama: inputs_embeds must be (batch, tokens, ", config.hidden_size, "), got ", inputs_embeds.sizes());
  int64_t b = inputs_embeds.size(0), t = inputs_embeds.size(1), past = cache ? cache->length() : 0;
  TORCH_CHECK(position_ids.sizes() == torch::IntArrayRef({b, t}), "llama: position_ids must be (", b, ", ", t,
              "), got ", position_ids.sizes());
  TORCH_CHECK(attention_mask.dim() == 2 && attention_mask.size(0) == b, "llama: attention_mask must be (", b,
              ", cached + new tokens), got ", attention_mask.sizes());
  auto dtype = inputs_embeds.scalar_type();
  AttentionLayout layout;
  if (packed) {
    TORCH_CHECK(!cache && int64_t(packed->size()) == b, "llama: packed rows need one entry per row (", b,
                ") and no cache");
    layout.packed = packed;
  } else {
    layout.mask = causal_attention_mask(attention_mask, past, t, config.sliding_window, dtype);  // (B, 1, T, S)
  }
  auto [cos, sin] = rotary_cos_sin(position_ids, config.head_dim, config.rope_theta, dtype);  // (B, T, Dh)

  auto h = inputs_embeds;
  // a runner may rerun a block in backward: it gets the rows by value, not the caller's pointer
  std::shared_ptr<const PackedRows> rows = layer_runner && !cache && packed ? std::make_shared<PackedRows>(*packed)
                                                                            : nullptr;
  for (size_t i = 0; i < layers->size(); ++i) {
    if (hidden_states) hidden_states->push_back(h);
    std::shared_ptr<LlamaDecoderLayerImpl> layer = layers->ptr<LlamaDecoderLayerImpl>(i);
    if (layer_runner && !cache) {
      const int64_t index = static_cast<int64_t>(i);
      LayerRun run = [layer, cos, sin, mask = layout.mask, rows, index](const torch::Tensor& x) {
        AttentionLayout l;
        l.mask = mask;
        l.packed = rows.get();
        return layer->forward(x, cos, sin, l, nullptr, index);
      };
      h = layer_runner(index, *layer, run, h);
    } else {
      h = layer->forward(h, cos, sin, layout, cache, static_cast<int64_t>(i));
    }
  }
  if (cache) cache->advance(t);
  h = norm(h);
  if (hidden_states) hidden_states->push_back(h);
  return h;  // (B, T, D)
}

LlamaForCausalLMImpl::LlamaForCausalLMImpl(const TextConfig& config_) : config(config_) {
  model = register_module("model", LlamaModel(config));
  if (!config.tie_word_embeddings)
    lm_head = register_module("lm_head", Linear(LinearOptions(config.hidden_size, config.vocab_size).bias(false)));
}

torch::Tensor LlamaForCausalLMImpl::embed(const torch::Tensor& input_ids) { return model->embed_tokens(input_ids); }

torch::Tensor LlamaForCausalLMImpl::logits(const torch::Tensor& hidden) {
  if (lm_head) return lm_head(hidden);
  return torch::linear(hidden, model->embed_tokens->weight);  // tied: lm_head.weight is embed_tokens.weight
}

torch::Tensor LlamaForCausalLMImpl::next_token_loss(const torch::Tensor& hidden, const torch::Tensor& labels) {
  TORCH_CHECK(hidden.dim() == 3 && labels.sizes() == hidden.sizes().slice(0, 2), "next_token_loss: hidden (B, T, D) ",
              hidden.sizes(), " and labels (B, T) ", labels.sizes(), " disagree");
  auto targets = labels.slice(1, 1).reshape({-1});                     // (B*(T-1)) labels at t + 1
  auto supervised = (targets != kIgnoreIndex).nonzero().squeeze(1);   // (M)
  auto states = hidden.slice(1, 0, -1).reshape({-1, hidden.size(2)}).index_select(0, supervised);  // (M, D)
  return torch::nn::functional::cross_entropy(logits(states).to(torch::kFloat32), targets.index_select(0, supervised));
}

KVCache LlamaForCausalLMImpl::make_cache(int64_t batch, int64_t capacity) const {
  auto weight = model->embed_tokens->weight;
  return KVCache(config.n_layers, batch, config.n_kv_heads, config.head_dim, capacity,
                 torch::TensorOptions().dtype(weight.dtype()).device(weight.device()));
}

}  // namespace mole
