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

#include "core/fields.h"
#include "core/limits.h"
#include "model/llava.h"
#include "moe/mole_options.h"

namespace mole {

enum class AdapterKind { kLora, kMole };
enum class Granularity { kFfn, kLinear };           // MoLE: a router per SwiGLU block, or per adapted Linear
enum class ModelPart { kLanguage, kVision, kProjector };
template <>
const EnumTable<AdapterKind>& enum_table<AdapterKind>();
template <>
const EnumTable<Granularity>& enum_table<Granularity>();
template <>
const EnumTable<ModelPart>& enum_table<ModelPart>();

// adapter_config.json: where adapters go, and the MoLE options (embedded, one flat JSON object).
struct AdapterConfig {
  AdapterConfig() { mole.dropout(0.05); }  // LLaVA's LoRA recipe (lora_dropout 0.05)

  std::string format = "mole";
  AdapterKind kind = AdapterKind::kMole;
  Granularity granularity = Granularity::kFfn;
  std::vector<std::string> targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  std::string target_regex;                       // when set: Linears whose full name matches (replaces the rest)
  std::vector<ModelPart> parts = {ModelPart::kLanguage};
  std::vector<int64_t> layers;                    // layer indices that get adapters (empty: all)
  std::vector<int64_t> mole_layers;               // of those, the layers that get MoLE (empty: all)
  bool lora_elsewhere = true;                     // plain LoRA on selected targets outside mole_layers
  MoleOptions mole;                               // rank, alpha, dropout, rslora (plain LoRA's too), experts, ...
  std::string base_model;                         // path or name of the base checkpoint
  std::string base_config_hash;                   // of the base config (base_config_hash())

  template <class Self, class V>
  static void fields(Self& self, V& v) {
    v("format", self.format, "file marker: mole");
    v("kind", self.kind, "plain LoRA, or MoLE (routed LoRA experts)");
    v("granularity", self.granularity, "MoLE: one router per SwiGLU block (ffn) or per adapted Linear (linear)");
    v("targets", self.targets, "Linear names to adapt (the module's last name)");
    v("target_regex", self.target_regex, "when set: adapt the Linears whose full name matches (replaces "
                                         "targets, parts and layers)");
    v("parts", self.parts, "parts of the model that get adapters");
    v("layers", self.layers, "layer indices that get adapters (empty: all)", between(0, kMaxLayers - 1));
    v("mole_layers", self.mole_layers, "of those, the layers that get MoLE (empty: all); the rest get LoRA", between(0, kMaxLayers - 1));
    v("lora_elsewhere", self.lora_elsewhere, "plain LoRA on selected targets outside mole_layers (else none)");
    MoleOptions::fields(self.mole, v);
    v("base_model", self.base_model, "path or name of the base checkpoint (filled in by mole)");
    v("base_config_hash", self.base_config_hash, "hash of the base's config.json (filled in by mole)");
  }
  void validate(const FieldPath& at) const;  // the MoLE options' rules, target_regex compiles

  nlohmann::json to_json() const { return write_fields(*this); }
  // Unknown keys, wrong types and bad values are ConfigErrors naming `file` and the key.
  static AdapterConfig from_json(const nlohmann::json& j, const std::string& file) {
    return read_fields<AdapterConfig>(j, file);
  }
};

// FNV-1a 64-bit of the canonical dump of the base model's config, hex: detects an adapter put on another base.
std::string base_config_hash(const LlavaConfig& config);

struct AttachedAdapter {
  std::string module;  // full module name, e.g. language_model.model.layers.3.mlp or ...self_attn.q_proj
  std::string kind;    // what was attached there: lora | mole_linear | mole_ffn
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
// with_projector: the projector's weights go in too, as PEFT's modules_to_save ["multi_modal_projector"] (saved
// under their module path, base_model.model.model.multi_modal_projector.linear_1.weight), so that loading the
// adapter the PEFT way puts the finetuned projector on the base as well.
void save_peft_adapter(const std::string& dir, Llava& model, const AdapterConfig& config, bool with_projector = false);
// Reads such a folder onto `model`, the projector of modules_to_save ["multi_modal_projector"] included.
AdapterConfig load_peft_adapter(const std::string& dir, Llava& model);

}  // namespace mole
