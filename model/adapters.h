// Putting LoRA / MoLE adapters on a LLaVA model, and their checkpoints.
// Targets are chosen by module name (the Linear's last name: q_proj, ..., down_proj, fc1, linear_1; or a regex
// over full names), by part (language model, vision tower, projector) and by layer index. With MoLE, the
// chosen layers get experts at FFN level (one router per SwiGLU block; attention targets get plain LoRA) or at
// Linear level (a router per adapted Linear); the other selected layers get plain LoRA or nothing.
//
// Files: mole's own adapter_model.safetensors + adapter_config.json (kind "mole" or "lora", everything needed
// to rebuild the adapters, and a hash of the base config.json), and for plain LoRA also PEFT's layout
// (base_model.model.<module path>.lora_A.weight, adapter_config.json with peft_type LORA).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/llava.h"
#include "moe/mole_options.h"

namespace mole {

struct AdapterConfig {
  std::string kind = "mole";          // lora | mole
  std::string granularity = "ffn";    // mole only: ffn | linear
  std::vector<std::string> targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  std::string target_regex;           // when set: Linear modules whose full name matches (replaces targets/parts)
  std::vector<std::string> parts = {"language"};  // language | vision | projector
  std::vector<int64_t> layers;        // layer indices that get adapters (empty: all)
  std::vector<int64_t> mole_layers;   // of those, the layers that get MoLE (empty: all); the rest get LoRA
  bool lora_elsewhere = true;         // plain LoRA on selected targets outside mole_layers (else nothing)
  int64_t rank = 16;
  double alpha = 32.0;
  double dropout = 0.05;
  bool rslora = false;
  int64_t n_experts = 8;
  int64_t top_k = 2;
  std::string gating = "topk_softmax";
  bool renormalize = false;
  double jitter = 0.0;
  std::string routing_mode = "learned";
  std::vector<int64_t> expert_modality;  // modality_grouped: per expert, -1 = shared
  bool shared_expert = false;
  std::string dispatch = "auto";
  BalanceLossOptions losses;
  std::string base_model;        // path or name of the base checkpoint
  std::string base_config_hash;  // of the base config (base_config_hash())

  MoleOptions mole_options() const;
  nlohmann::json to_json() const;
  static AdapterConfig from_json(const nlohmann::json& j, const std::string& where);
};

// FNV-1a 64-bit of the canonical dump of the base model's config, hex: detects an adapter put on another base.
std::string base_config_hash(const LlavaConfig& config);

struct AttachedAdapter {
  std::string module;  // full module name, e.g. language_model.model.layers.3.mlp or ...self_attn.q_proj
  std::string kind;    // lora | mole_linear | mole_ffn
};

// Attaches adapters as the config says; freezes every base parameter and leaves the adapters trainable.
// Returns what was attached, in module order. Throws when nothing matches.
std::vector<AttachedAdapter> attach_adapters(Llava& model, const AdapterConfig& config);

// Parameters of the attached adapters, with their full names (…q_proj.adapter.lora_A.weight, …mlp.adapter.gate_A).
std::vector<std::pair<std::string, torch::Tensor>> adapter_parameters(Llava& model);

// mole's adapter folder: adapter_model.safetensors + adapter_config.json (atomic writes).
void save_adapter(const std::string& dir, Llava& model, const AdapterConfig& config);
// Reads DIR/adapter_config.json, attaches those adapters to `model` and loads their weights; refuses an adapter
// whose tensors are missing, unexpected or of another shape than the base implies (naming them). A PEFT adapter
// folder (peft_type LORA) is recognised and read with load_peft_adapter.
AdapterConfig load_adapter(const std::string& dir, Llava& model);

// PEFT layout for plain LoRA: tensor names use transformers' module paths (model.language_model.layers...).
void save_peft_adapter(const std::string& dir, Llava& model, const AdapterConfig& config);
AdapterConfig load_peft_adapter(const std::string& dir, Llava& model);

}  // namespace mole
