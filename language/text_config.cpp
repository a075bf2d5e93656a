#include "language/text_config.h"

#include "core/json_config.h"

namespace mole {

TextConfig TextConfig::from_json(const json& j, const std::string& where) {
  TextConfig c;
  c.model_type = field_or<std::string>(j, "model_type", c.model_type, where);
  if (c.model_type != "llama" && c.model_type != "mistral")
    throw ConfigError(where + ": model_type '" + c.model_type + "' is not supported (llama, mistral)");
  c.vocab_size = field_or<int64_t>(j, "vocab_size", c.vocab_size, where);
  c.hidden_size = field_or<int64_t>(j, "hidden_size", c.hidden_size, where);
  c.intermediate_size = field_or<int64_t>(j, "intermediate_size", c.intermediate_size, where);
  c.n_layers = field_or<int64_t>(j, "num_hidden_layers", c.n_layers, where);
  c.n_heads = field_or<int64_t>(j, "num_attention_heads", c.n_heads, where);
  c.n_kv_heads = field_or<int64_t>(j, "num_key_value_heads", c.n_heads, where);
  if (c.n_heads <= 0 || c.hidden_size <= 0 || c.n_kv_heads <= 0 || c.n_heads % c.n_kv_heads != 0)
    throw ConfigError(where + ": num_attention_heads must be a positive multiple of num_key_value_heads");
  c.head_dim = field_or<int64_t>(j, "head_dim", c.hidden_size / c.n_heads, where);
  if (c.head_dim <= 0 || c.head_dim % 2 != 0) throw ConfigError(where + ": head_dim must be even and > 0");
  c.max_position_embeddings = field_or<int64_t>(j, "max_position_embeddings", c.max_position_embeddings, where);
  c.sliding_window = field_or<int64_t>(j, "sliding_window", 0, where);
  c.rms_norm_eps = field_or<double>(j, "rms_norm_eps", c.rms_norm_eps, where);
  c.tie_word_embeddings = field_or<bool>(j, "tie_word_embeddings", c.tie_word_embeddings, where);
  c.attention_bias = field_or<bool>(j, "attention_bias", c.attention_bias, where);
  c.mlp_bias = field_or<bool>(j, "mlp_bias", c.mlp_bias, where);
  c.hidden_act = parse_activation(field_or<std::string>(j, "hidden_act", "silu", where), where + ".hidden_act");
  c.bos_token_id = field_or<int64_t>(j, "bos_token_id", c.bos_token_id, where);
  c.pad_token_id = field_or<int64_t>(j, "pad_token_id", c.pad_token_id, where);
  if (j.contains("eos_token_id") && j["eos_token_id"].is_array())
    c.eos_token_ids = field<std::vector<int64_t>>(j, "eos_token_id", where);
  else if (j.contains("eos_token_id") && !j["eos_token_id"].is_null())
    c.eos_token_ids = {field<int64_t>(j, "eos_token_id", where)};

  // Rope: transformers <5 writes rope_theta and rope_scaling; transformers 5 writes rope_parameters
  // {"rope_type": "default", "rope_theta": ...}.
  c.rope_theta = field_or<double>(j, "rope_theta", c.rope_theta, where);
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    if (!j.contains(key) || j[key].is_null()) continue;
    const json& rope = j[key];
    if (!rope.is_object()) throw ConfigError(where + ": " + key + " must be an object");
    c.rope_theta = field_or<double>(rope, "rope_theta", c.rope_theta, where + "." + key);
    std::string type = field_or<std::string>(rope, "rope_type", field_or<std::string>(rope, "type", "default", where),
                                              where + "." + key);
    if (type != "default")
      throw ConfigError(where + "." + key + ": rope_type '" + type + "' is not supported yet (only default)");
  }
  return c;
}

json TextConfig::to_json() const {
  return {{"model_type", model_type},
          {"vocab_size", vocab_size},
          {"hidden_size", hidden_size},
          {"intermediate_size", intermediate_size},
          {"num_hidden_layers", n_layers},
          {"num_attention_heads", n_heads},
          {"num_key_value_heads", n_kv_heads},
          {"head_dim", head_dim},
          {"max_position_embeddings", max_position_embeddings},
          {"sliding_window", sliding_window ? json(sliding_window) : json(nullptr)},
          {"rms_norm_eps", rms_norm_eps},
          {"rope_theta", rope_theta},
          {"tie_word_embeddings", tie_word_embeddings},
          {"attention_bias", attention_bias},
          {"mlp_bias", mlp_bias},
          {"hidden_act", activation_name(hidden_act)},
          {"bos_token_id", bos_token_id},
          {"eos_token_id", eos_token_ids},
          {"pad_token_id", pad_token_id}};
}

}  // namespace mole
