// Field list of a LLaMA-family text config (LlamaConfig, MistralConfig), with transformers' defaults.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/activation.h"

namespace mole {

struct TextConfig {
  std::string model_type = "llama";  // llama | mistral (same blocks; mistral may use a sliding window)
  int64_t vocab_size = 32000;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 11008;
  int64_t n_layers = 32;
  int64_t n_heads = 32;
  int64_t n_kv_heads = 32;  // < n_heads: grouped-query attention
  int64_t head_dim = 128;   // hidden_size / n_heads unless the config says otherwise
  int64_t max_position_embeddings = 2048;
  int64_t sliding_window = 0;  // 0: none
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  bool mlp_bias = false;
  Activation hidden_act = Activation::kSilu;
  int64_t bos_token_id = 1;
  std::vector<int64_t> eos_token_ids = {2};
  int64_t pad_token_id = -1;  // -1: none

  // Reads text_config (or a plain LlamaConfig). Rope scaling other than the default is refused by name
  // rather than silently computed wrong. `where` names the file/field for errors.
  static TextConfig from_json(const nlohmann::json& j, const std::string& where);
  nlohmann::json to_json() const;
};

}  // namespace mole
