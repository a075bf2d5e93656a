#include "model/adapters.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <filesystem>
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

bool contains(const std::vector<int64_t>& v, int64_t x) { return std::find(v.begin(), v.end(), x) != v.end(); }
bool contains(const std::vector<std::string>& v, const std::string& x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

std::string part_of(const std::string& module) {
  if (module.rfind("language_model.", 0) == 0) return "language";
  if (module.rfind("vision_tower.", 0) == 0) return "vision";
  if (module.rfind("multi_modal_projector.", 0) == 0) return "projector";
  return "";
}

int64_t layer_of(const std::string& module) {  // -1 for modules outside the layer stacks (the projector)
  static const std::regex layer_re(R"(\.layers\.(\d+)\.)");
  std::smatch m;
  return std::regex_search(module, m, layer_re) ? std::stoll(m[1].str()) : -1;
}

std::string last_name(const std::string& module) { return module.substr(module.rfind('.') + 1); }

}  // namespace

MoleOptions AdapterConfig::mole_options() const {
  return MoleOptions()
      .n_experts(n_experts)
      .top_k(top_k)
      .rank(rank)
      .alpha(alpha)
      .dropout(dropout)
      .rslora(rslora)
      .shared_expert(shared_expert)
      .gating(parse_gating(gating))
      .renormalize(renormalize)
      .jitter(jitter)
      .mode(parse_routing_mode(routing_mode))
      .expert_modality(expert_modality)
      .dispatch(parse_dispatch(dispatch))
      .losses(losses);
}

json AdapterConfig::to_json() const {
  json j = {{"format", "mole"},
            {"kind", kind},
            {"targets", targets},
            {"target_regex", target_regex},
            {"parts", parts},
            {"layers", layers},
            {"rank", rank},
            {"alpha", alpha},
            {"dropout", dropout},
            {"rslora", rslora},
            {"base_model", base_model},
            {"base_config_hash", base_config_hash}};
  if (kind == "mole") {
    j["granularity"] = granularity;
    j["mole_layers"] = mole_layers;
    j["lora_elsewhere"] = lora_elsewhere;
    j["n_experts"] = n_experts;
    j["top_k"] = top_k;
    j["gating"] = gating;
    j["renormalize"] = renormalize;
    j["jitter"] = jitter;
    j["routing_mode"] = routing_mode;
    j["expert_modality"] = expert_modality;
    j["shared_expert"] = shared_expert;
    j["dispatch"] = dispatch;
    j["losses"] = losses.to_json();
  }
  return j;
}

AdapterConfig AdapterConfig::from_json(const json& j, const std::string& where) {
  AdapterConfig c;
  c.kind = field_or<std::string>(j, "kind", c.kind, where);
  if (c.kind != "lora" && c.kind != "mole") throw ConfigError(where + ": kind must be 'lora' or 'mole', got '" + c.kind + "'");
  c.granularity = field_or<std::string>(j, "granularity", c.granularity, where);
  if (c.granularity != "ffn" && c.granularity != "linear")
    throw ConfigError(where + ": granularity must be 'ffn' or 'linear', got '" + c.granularity + "'");
  c.targets = field_or<std::vector<std::string>>(j, "targets", c.targets, where);
  c.target_regex = field_or<std::string>(j, "target_regex", c.target_regex, where);
  c.parts = field_or<std::vector<std::string>>(j, "parts", c.parts, where);
  for (const auto& p : c.parts)
    if (p != "language" && p != "vision" && p != "projector")
      throw ConfigError(where + ": parts may hold language, vision, projector; got '" + p + "'");
  c.layers = field_or<std::vector<int64_t>>(j, "layers", c.layers, where);
  c.mole_layers = field_or<std::vector<int64_t>>(j, "mole_layers", c.mole_layers, where);
  c.lora_elsewhere = field_or<bool>(j, "lora_elsewhere", c.lora_elsewhere, where);
  c.rank = field_or<int64_t>(j, "rank", c.rank, where);
  c.alpha = field_or<double>(j, "alpha", c.alpha, where);
  c.dropout = field_or<double>(j, "dropout", c.dropout, where);
  c.rslora = field_or<bool>(j, "rslora", c.rslora, where);
  c.n_experts = field_or<int64_t>(j, "n_experts", c.n_experts, where);
  c.top_k = field_or<int64_t>(j, "top_k", c.top_k, where);
  c.gating = field_or<std::string>(j, "gating", c.gating, where);
  c.renormalize = field_or<bool>(j, "renormalize", c.renormalize, where);
  c.jitter = field_or<double>(j, "jitter", c.jitter, where);
  c.routing_mode = field_or<std::string>(j, "routing_mode", c.routing_mode, where);
  c.expert_modality = field_or<std::vector<int64_t>>(j, "expert_modality", c.expert_modality, where);
  c.shared_expert = field_or<bool>(j, "shared_expert", c.shared_expert, where);
  c.dispatch = field_or<std::string>(j, "dispatch", c.dispatch, where);
  if (j.contains("losses") && !j["losses"].is_null()) c.losses = BalanceLossOptions::from_json(j["losses"], where + ".losses");
  c.base_model = field_or<std::string>(j, "base_model", c.base_model, where);
  c.base_config_hash = field_or<std::string>(j, "base_config_hash", c.base_config_hash, where);
  if (c.rank < 1) throw ConfigError(where + ": rank must be >= 1");
  try {  // names of enums are checked here, so a bad file fails on load and not mid-run
    c.mole_options();
  } catch (const std::invalid_argument& e) {
    throw ConfigError(where + ": " + e.what());
  }
  return c;
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
  auto mole = config.mole_options();
  auto weight = model->language_model->model->embed_tokens->weight;
  auto device = weight.device();
  std::regex target_re(config.target_regex.empty() ? std::string("^$") : config.target_regex);

  auto selected = [&](const std::string& name) {
    if (!config.target_regex.empty()) return std::regex_match(name, target_re);
    std::string part = part_of(name);
    int64_t layer = layer_of(name);
    return contains(config.targets, last_name(name)) && contains(config.parts, part) &&
           (config.layers.empty() || layer < 0 || contains(config.layers, layer));
  };
  auto mole_here = [&](const std::string& name) {
    return config.kind == "mole" && (config.mole_layers.empty() || contains(config.mole_layers, layer_of(name)));
  };

  // Collect first: attaching adds modules (the adapters' own Linears) that must not be adapted in turn.
  std::vector<std::pair<std::string, std::shared_ptr<LinearImpl>>> linears;
  std::vector<std::pair<std::string, std::shared_ptr<LlamaMlpImpl>>> mlps;
  for (const auto& item : model->named_modules()) {
    if (item.key().find(".adapter") != std::string::npos) continue;
    if (auto lin = std::dynamic_pointer_cast<LinearImpl>(item.value())) linears.emplace_back(item.key(), lin);
    if (auto mlp = std::dynamic_pointer_cast<LlamaMlpImpl>(item.value())) mlps.emplace_back(item.key(), mlp);
  }

  std::vector<AttachedAdapter> attached;
  std::set<std::string> handled;
  if (config.kind == "mole" && config.granularity == "ffn") {
    for (auto& [name, mlp] : mlps) {
      bool any = false;
      for (const char* proj : {".gate_proj", ".up_proj", ".down_proj"}) any = any || selected(name + proj);
      if (!any || !mole_here(name)) continue;
      auto adapter = std::make_shared<MoleFfnImpl>(mlp->config.hidden_size, mlp->config.intermediate_size,
                                                   mlp->config.hidden_act, mole, name);
      adapter->to(device);
      mlp->attach(adapter);
      attached.push_back({name, "mole_ffn"});
      for (const char* proj : {".gate_proj", ".up_proj", ".down_proj"}) handled.insert(name + proj);
    }
  }
  for (auto& [name, linear] : linears) {
    if (handled.count(name) || !selected(name)) continue;
    int64_t in = linear->options.in_features(), out = linear->options.out_features();
    if (config.kind == "mole" && config.granularity == "linear" && mole_here(name)) {
      auto adapter = std::make_shared<MoleLinearImpl>(in, out, mole, name);
      adapter->to(device);
      linear->attach(adapter);
      attached.push_back({name, "mole_linear"});
    } else if (config.kind == "lora" || config.lora_elsewhere) {
      auto adapter = std::make_shared<LoraImpl>(
          LoraOptions(in, out).rank(config.rank).alpha(config.alpha).dropout(config.dropout).rslora(config.rslora));
      adapter->to(device);
      linear->attach(adapter);
      attached.push_back({name, "lora"});
    }
  }
  std::sort(attached.begin(), attached.end(), [](const auto& a, const auto& b) { return a.module < b.module; });
  TORCH_CHECK(!attached.empty(), "adapters: no module matches the targets (", json(config.targets).dump(),
              config.target_regex.empty() ? "" : ", regex " + config.target_regex, ") in parts ",
              json(config.parts).dump());
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

void save_peft_adapter(const std::string& dir, Llava& model, const AdapterConfig& config) {
  TORCH_CHECK(config.kind == "lora", "save_peft_adapter: PEFT's LoRA layout holds plain LoRA only, not '",
              config.kind, "'");
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
            {"r", config.rank},
            {"lora_alpha", config.alpha},
            {"lora_dropout", config.dropout},
            {"use_rslora", config.rslora},
            {"target_modules", targets},
            {"bias", "none"},
            {"fan_in_fan_out", false},
            {"base_model_name_or_path", config.base_model},
            {"inference_mode", true}};
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
  if (j.contains("modules_to_save") && !j["modules_to_save"].is_null() && !j["modules_to_save"].empty())
    throw ConfigError(config_path + ": modules_to_save is not supported");

  AdapterConfig config;
  config.kind = "lora";
  config.rank = field<int64_t>(j, "r", config_path);
  config.alpha = field_or<double>(j, "lora_alpha", 8.0, config_path);  // PEFT's default
  config.dropout = field_or<double>(j, "lora_dropout", 0.0, config_path);
  config.rslora = field_or<bool>(j, "use_rslora", false, config_path);
  config.base_model = field_or<std::string>(j, "base_model_name_or_path", "", config_path);

  // Attach exactly where the file has weights: base_model.model.<path>.lora_{A,B}[.default].weight
  TensorStore store(dir + "/adapter_model.safetensors");
  static const std::regex key_re(R"(^(?:base_model\.model\.)?(.+)\.(lora_[AB])(?:\.default)?\.weight$)");
  std::map<std::string, std::string> source_of;  // our parameter name -> file key
  std::set<std::string> modules;
  std::vector<std::string> unknown;
  for (const auto& key : store.names()) {
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
  config.parts = {"language", "vision", "projector"};
  attach_adapters(model, config);

  std::vector<WeightEntry> table;
  for (auto& [name, t] : adapter_parameters(model)) {
    auto it = source_of.find(name);
    table.push_back({name, {it == source_of.end() ? name : it->second}, t.sizes().vec(), t});
  }
  match_checkpoint(table, store, dir, false, "PEFT adapter does not fit this base");
  torch::NoGradGuard no_grad;
  for (auto& entry : table) entry.target.copy_(store.tensor(entry.sources[0], entry.target.scalar_type()));
  return config;
}

}  // namespace mole
