#include "model/adapters.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <regex>
#include <set>

#include <torch/torch.h>

#include "core/json_config.h"
#include "core/safetensors.h"
#include "model/llava_loader.h"
#include "moe/lora.h"
#include "moe/mole_ffn.h"
#include "moe/mole_linear.h"

namespace mole {

namespace {

template <class T>
bool contains(const std::vector<T>& v, const T& x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

// The part a module belongs to; nullopt for modules outside the three (none in a LLaVA).
std::optional<ModelPart> part_of(const std::string& module) {
  if (module.rfind("language_model.", 0) == 0) return ModelPart::kLanguage;
  if (module.rfind("vision_tower.", 0) == 0) return ModelPart::kVision;
  if (module.rfind("multi_modal_projector.", 0) == 0) return ModelPart::kProjector;
  return std::nullopt;
}

int64_t layer_of(const std::string& module) {  // -1 for modules outside the layer stacks (the projector)
  static const std::regex layer_re(R"(\.layers\.(\d+)\.)");
  std::smatch m;
  return std::regex_search(module, m, layer_re) ? std::stoll(m[1].str()) : -1;
}

std::string last_name(const std::string& module) { return module.substr(module.rfind('.') + 1); }

}  // namespace

MOLE_ENUM_NAMES(AdapterKind, "adapter kind", {AdapterKind::kLora, "lora"}, {AdapterKind::kMole, "mole"})

MOLE_ENUM_NAMES(Granularity, "granularity", {Granularity::kFfn, "ffn"}, {Granularity::kLinear, "linear"})

MOLE_ENUM_NAMES(ModelPart, "part", {ModelPart::kLanguage, "language"}, {ModelPart::kVision, "vision"},
                {ModelPart::kProjector, "projector"})

void AdapterConfig::validate(const FieldPath& at) const {
  if (format != "mole") at.fail("format", "is '" + format + "', expected 'mole' (a PEFT adapter has peft_type)");
  mole.validate(at);
  if (kind == AdapterKind::kMole && granularity == Granularity::kLinear && mole.dispatch() == Dispatch::kFused)
    at.fail("dispatch", "'fused' is for granularity 'ffn'; a linear-level MoLE takes auto, dense, sparse or naive");
  try {
    std::regex check(target_regex);
  } catch (const std::regex_error& e) {
    at.fail("target_regex", "is not a valid regular expression: " + std::string(e.what()));
  }
}

std::string base_config_hash(const LlavaConfig& config) {
  json j = config.to_json();
  j.erase("dtype");  // the same weights in another dtype are the same base
  std::string text = j.dump();
  uint64_t h = 1469598103934665603ull;  // FNV-1a 64
  for (unsigned char c : text) h = (h ^ c) * 1099511628211ull;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016" PRIx64, h);
  return buf;
}

std::vector<AttachedAdapter> attach_adapters(Llava& model, const AdapterConfig& config) {
  for (auto& p : model->parameters()) p.set_requires_grad(false);  // the base stays frozen
  const MoleOptions& mole = config.mole;
  auto weight = model->language_model->model->embed_tokens->weight;
  auto device = weight.device();
  std::regex target_re(config.target_regex.empty() ? std::string("^$") : config.target_regex);

  auto selected = [&](const std::string& name) {
    if (!config.target_regex.empty()) return std::regex_match(name, target_re);
    std::optional<ModelPart> part = part_of(name);
    int64_t layer = layer_of(name);
    return contains(config.targets, last_name(name)) && part && contains(config.parts, *part) &&
           (config.layers.empty() || layer < 0 || contains(config.layers, layer));
  };
  auto mole_here = [&](const std::string& name) {
    return config.kind == AdapterKind::kMole &&
           (config.mole_layers.empty() || contains(config.mole_layers, layer_of(name)));
  };

  // Collect first: attaching adds modules (the adapters' own Linears) that must not be adapted in turn.
  std::vector<std::pair<std::string, std::shared_ptr<LinearImpl>>> linears;
  std::vector<std::pair<std::string, std::shared_ptr<LlamaMlpImpl>>> mlps;  // SwiGLU blocks
  for (const auto& item : model->named_modules()) {
    if (item.key().find(".adapter") != std::string::npos) continue;
    if (auto lin = std::dynamic_pointer_cast<LinearImpl>(item.value())) linears.emplace_back(item.key(), lin);
    if (auto mlp = std::dynamic_pointer_cast<LlamaMlpImpl>(item.value())) mlps.emplace_back(item.key(), mlp);
  }

  std::vector<AttachedAdapter> attached;
  std::set<std::string> handled;
  if (config.kind == AdapterKind::kMole && config.granularity == Granularity::kFfn) {
    for (auto& [name, mlp] : mlps) {
      bool any = false;
      for (const char* proj : {".gate_proj", ".up_proj", ".down_proj"}) any = any || selected(name + proj);
      if (!any || !mole_here(name)) continue;
      // the activation comes with the block's frozen projections (GatedFfnBase) at every forward
      auto adapter = std::make_shared<MoleFfnImpl>(
          MoleFfnOptions(mlp->config.hidden_size, mlp->config.intermediate_size, mole).layer_name(name));
      adapter->to(device);
      mlp->attach(adapter);
      attached.push_back({name, "mole_ffn"});
      for (const char* proj : {".gate_proj", ".up_proj", ".down_proj"}) handled.insert(name + proj);
    }
  }
  for (auto& [name, linear] : linears) {
    if (handled.count(name) || !selected(name)) continue;
    int64_t in = linear->options.in_features(), out = linear->options.out_features();
    if (config.kind == AdapterKind::kMole && config.granularity == Granularity::kLinear && mole_here(name)) {
      auto adapter = std::make_shared<MoleLinearImpl>(MoleLinearOptions(in, out, mole).layer_name(name));
      adapter->to(device);
      linear->attach(adapter);
      attached.push_back({name, "mole_linear"});
    } else if (config.kind == AdapterKind::kLora || config.lora_elsewhere) {
      auto adapter = std::make_shared<LoraImpl>(lora_options(in, out, mole));
      adapter->to(device);
      linear->attach(adapter);
      attached.push_back({name, "lora"});
    }
  }
  std::sort(attached.begin(), attached.end(), [](const auto& a, const auto& b) { return a.module < b.module; });
  TORCH_CHECK(!attached.empty(), "adapters: no module matches the targets (", json(config.targets).dump(),
              config.target_regex.empty() ? "" : ", regex " + config.target_regex, ") in parts ",
              field_to_json(config.parts).dump());
  return attached;
}

std::vector<std::pair<std::string, torch::Tensor>> adapter_parameters(Llava& model) {
  std::vector<std::pair<std::string, torch::Tensor>> params;
  for (const auto& p : model->named_parameters())
    if (p.key().find(".adapter.") != std::string::npos) params.emplace_back(p.key(), p.value());
  return params;
}

void save_adapter(const std::string& dir, Llava& model, const AdapterConfig& config) {
  std::filesystem::create_directories(dir);
  AdapterConfig c = config;
  c.base_config_hash = base_config_hash(model->config);
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (auto& [name, t] : adapter_parameters(model)) tensors.emplace_back(name, t.detach());
  TORCH_CHECK(!tensors.empty(), "save_adapter: the model carries no adapters");
  save_safetensors(dir + "/adapter_model.safetensors", tensors, {{"format", "mole"}});
  write_json_file(dir + "/adapter_config.json", c.to_json());
}

AdapterConfig load_adapter(const std::string& dir, Llava& model) {
  std::string config_path = dir + "/adapter_config.json";
  json j = read_json_file(config_path);
  if (j.contains("peft_type")) return load_peft_adapter(dir, model);
  AdapterConfig config = AdapterConfig::from_json(j, config_path);
  std::string here = base_config_hash(model->config);
  if (!config.base_config_hash.empty() && config.base_config_hash != here)
    throw ConfigError(config_path + ": adapter was made for a base whose config hash is " + config.base_config_hash +
                      " (" + config.base_model + "); this base's is " + here + ": shapes or settings differ");
  attach_adapters(model, config);
  std::vector<WeightEntry> table;
  for (auto& [name, t] : adapter_parameters(model)) table.push_back({name, {name}, t.sizes().vec(), t});
  TensorStore store(dir + "/adapter_model.safetensors");
  match_checkpoint(table, store, dir, false, "adapter does not match the adapters its config describes on this base");
  torch::NoGradGuard no_grad;
  for (auto& entry : table) entry.target.copy_(store.tensor(entry.name, entry.target.scalar_type()));
  return config;
}

}  // namespace mole

// ---- PEFT layout -------------------------------------------------------------------------------------------
namespace mole {

namespace {

// Our module name -> the module path transformers >= 4.52 (and 5.x) gives the same module, which is what
// PEFT's tensor names use: base_model.model.<path>.lora_A.weight.
std::string peft_module_path(const std::string& module) {
  const std::pair<const char*, const char*> renames[] = {
      {"language_model.model.", "model.language_model."},
      {"language_model.lm_head", "lm_head"},
      {"vision_tower.vision_model.", "model.vision_tower."},  // transformers 5: flat vision tower
      {"multi_modal_projector.", "model.multi_modal_projector."}};
  for (const auto& [from, to] : renames)
    if (module.rfind(from, 0) == 0) return to + module.substr(std::string(from).size());
  return module;
}

// A module path as PEFT wrote it (any transformers version) -> our module name; "" when unknown.
std::string module_from_peft_path(std::string path) {
  const std::pair<const char*, const char*> renames[] = {
      {"model.language_model.", "language_model.model."},
      {"model.vision_tower.vision_model.", "vision_tower.vision_model."},
      {"model.vision_tower.", "vision_tower.vision_model."},
      {"vision_tower.vision_model.", "vision_tower.vision_model."},
      {"vision_tower.", "vision_tower.vision_model."},
      {"model.multi_modal_projector.", "multi_modal_projector."},
      {"multi_modal_projector.", "multi_modal_projector."},
      {"language_model.model.", "language_model.model."}};
  for (const auto& [from, to] : renames)
    if (path.rfind(from, 0) == 0) return to + path.substr(std::string(from).size());
  return "";
}

std::string regex_escape(const std::string& s) {
  static const std::regex special(R"([.^$|()\[\]{}*+?\\])");
  return std::regex_replace(s, special, R"(\$&)");
}

}  // namespace

void save_peft_adapter(const std::string& dir, Llava& model, const AdapterConfig& config, bool with_projector) {
  TORCH_CHECK(config.kind == AdapterKind::kLora, "save_peft_adapter: PEFT's LoRA layout holds plain LoRA only, not '",
              enum_name(config.kind), "'");
  std::filesystem::create_directories(dir);
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  std::vector<std::string> modules;
  for (auto& [name, t] : adapter_parameters(model)) {
    auto at = name.find(".adapter.");  // <module>.adapter.lora_A.weight
    std::string module = name.substr(0, at), rest = name.substr(at + 9);
    tensors.emplace_back("base_model.model." + peft_module_path(module) + "." + rest, t.detach());
    if (modules.empty() || modules.back() != module) modules.push_back(module);
  }
  TORCH_CHECK(!tensors.empty(), "save_peft_adapter: the model carries no adapters");
  // target_modules: the exact module paths (a list entry matches a module whose name equals it), so PEFT wraps
  // precisely the modules mole adapted, whatever the parts and layers were.
  std::vector<std::string> targets;
  for (const auto& m : modules) targets.push_back(peft_module_path(m));
  json j = {{"peft_type", "LORA"},
            {"task_type", nullptr},
            {"r", config.mole.rank()},
            {"lora_alpha", config.mole.alpha()},
            {"lora_dropout", config.mole.dropout()},
            {"use_rslora", config.mole.rslora()},
            {"target_modules", targets},
            {"bias", "none"},
            {"fan_in_fan_out", false},
            {"base_model_name_or_path", config.base_model},
            {"inference_mode", true}};
  if (with_projector) {
    // peft's get_peft_model_state_dict drops "modules_to_save.default." from these keys: the module path it is
    for (auto& item : model->multi_modal_projector->named_parameters())
      tensors.emplace_back("base_model.model." + peft_module_path("multi_modal_projector." + item.key()),
                           item.value().detach());
    j["modules_to_save"] = {"multi_modal_projector"};
  }
  save_safetensors(dir + "/adapter_model.safetensors", tensors, {{"format", "pt"}});
  write_json_file(dir + "/adapter_config.json", j);
}

AdapterConfig load_peft_adapter(const std::string& dir, Llava& model) {
  std::string config_path = dir + "/adapter_config.json";
  json j = read_json_file(config_path);
  std::string type = field_or<std::string>(j, "peft_type", "", config_path);
  if (type != "LORA") throw ConfigError(config_path + ": peft_type '" + type + "' is not supported (LORA)");
  if (field_or<std::string>(j, "bias", "none", config_path) != "none")
    throw ConfigError(config_path + ": bias other than 'none' is not supported");
  if (field_or<bool>(j, "use_dora", false, config_path)) throw ConfigError(config_path + ": DoRA is not supported");
  if (field_or<bool>(j, "fan_in_fan_out", false, config_path))
    throw ConfigError(config_path + ": fan_in_fan_out is not supported");
  for (const char* key : {"rank_pattern", "alpha_pattern"})
    if (j.contains(key) && j[key].is_object() && !j[key].empty())
      throw ConfigError(config_path + std::string(": per-module ") + key + " is not supported");
  bool projector_saved = false;
  if (j.contains("modules_to_save") && !j["modules_to_save"].is_null() && !j["modules_to_save"].empty()) {
    if (j["modules_to_save"] != json::array({"multi_modal_projector"}))
      throw ConfigError(config_path + ": modules_to_save " + json_excerpt(j["modules_to_save"]) +
                        " is not supported (only [\"multi_modal_projector\"])");
    projector_saved = true;
  }

  AdapterConfig config;
  config.kind = AdapterKind::kLora;
  config.mole.rank(field<int64_t>(j, "r", config_path))
      .alpha(field_or<double>(j, "lora_alpha", 8.0, config_path))  // PEFT's default
      .dropout(field_or<double>(j, "lora_dropout", 0.0, config_path))
      .rslora(field_or<bool>(j, "use_rslora", false, config_path));
  config.base_model = field_or<std::string>(j, "base_model_name_or_path", "", config_path);

  // Attach exactly where the file has weights: base_model.model.<path>.lora_{A,B}[.default].weight
  TensorStore store(dir + "/adapter_model.safetensors");
  static const std::regex key_re(R"(^(?:base_model\.model\.)?(.+)\.(lora_[AB])(?:\.default)?\.weight$)");
  std::map<std::string, std::string> source_of;  // our parameter name -> file key
  std::set<std::string> modules;
  std::vector<std::string> unknown;
  std::map<std::string, std::string> projector_source;  // projector parameter -> file key
  if (projector_saved)
    for (auto& item : model->multi_modal_projector->named_parameters())
      projector_source["multi_modal_projector." + item.key()] = "";
  for (const auto& key : store.names()) {
    // modules_to_save: the projector under its module path, any transformers version's prefix
    static const std::regex projector_re(R"(^(?:base_model\.model\.)?(?:model\.)?(multi_modal_projector\..+)$)");
    std::smatch pm;
    if (projector_saved && std::regex_match(key, pm, projector_re) && projector_source.count(pm[1].str())) {
      projector_source[pm[1].str()] = key;
      continue;
    }
    std::smatch m;
    std::string module;
    if (std::regex_match(key, m, key_re)) module = module_from_peft_path(m[1].str());
    if (module.empty()) {
      unknown.push_back(key);
      continue;
    }
    modules.insert(module);
    source_of[module + ".adapter." + m[2].str() + ".weight"] = key;
  }
  if (!unknown.empty())
    throw FormatError(dir + "/adapter_model.safetensors: tensors that are not LoRA weights of a LLaVA module: " +
                      json(unknown).dump());
  std::string alternatives;
  for (const auto& m : modules) alternatives += (alternatives.empty() ? "" : "|") + regex_escape(m);
  config.target_regex = "^(" + alternatives + ")$";
  config.parts = {ModelPart::kLanguage, ModelPart::kVision, ModelPart::kProjector};
  attach_adapters(model, config);

  std::vector<WeightEntry> table;
  for (auto& [name, t] : adapter_parameters(model)) {
    auto it = source_of.find(name);
    table.push_back({name, {it == source_of.end() ? name : it->second}, t.sizes().vec(), t});
  }
  for (auto& item : model->multi_modal_projector->named_parameters()) {
    const std::string name = "multi_modal_projector." + item.key();
    auto it = projector_source.find(name);
    if (it == projector_source.end()) continue;
    table.push_back({name, {it->second.empty() ? "base_model.model.model." + name : it->second}, item.value().sizes().vec(),
                     item.value()});
  }
  match_checkpoint(table, store, dir, false, "PEFT adapter does not fit this base");
  torch::NoGradGuard no_grad;
  for (auto& entry : table) entry.target.copy_(store.tensor(entry.sources[0], entry.target.scalar_type()));
  return config;
}

}  // namespace mole
