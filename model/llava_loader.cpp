#include "model/llava_loader.h"

#include <cmath>
#include <filesystem>
#include <set>
#include <sstream>

#include <torch/torch.h>

#include "core/json_config.h"
#include "core/dtype.h"
#include "core/linear.h"

namespace mole {

namespace {

bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Older layout name -> newer layout name (transformers >= 4.52 writes the newer one).
std::string newer_layout_name(const std::string& name) {
  if (starts_with(name, "language_model.model.")) return "model.language_model." + name.substr(21);
  if (name == "language_model.lm_head.weight") return "lm_head.weight";
  if (starts_with(name, "vision_tower.") || starts_with(name, "multi_modal_projector.")) return "model." + name;
  return name;
}

// transformers 5 flattened CLIPVisionModel (no "vision_model." level) and its save_pretrained writes
// vision_tower.embeddings... instead of vision_tower.vision_model.embeddings...
std::string flat_vision_name(const std::string& name) {
  const std::string nested = "vision_tower.vision_model.";
  if (starts_with(name, nested)) return "vision_tower." + name.substr(nested.size());
  return name;
}

// Keys that checkpoints may carry and that hold no weights of ours: buffers older versions saved.
bool ignorable_key(const std::string& key) {
  return ends_with(key, ".position_ids") || ends_with(key, "rotary_emb.inv_freq");
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << "]";
  return out.str();
}

void list_names(std::ostringstream& out, const std::string& title, const std::vector<std::string>& names) {
  if (names.empty()) return;
  out << "\n  " << title << " (" << names.size() << "):";
  size_t shown = std::min<size_t>(names.size(), 20);
  for (size_t i = 0; i < shown; ++i) out << "\n    " << names[i];
  if (shown < names.size()) out << "\n    ... and " << names.size() - shown << " more";
}

}  // namespace

std::string checkpoint_layout(const TensorStore& store) {
  bool newer = false, nested_vision = false;
  for (const auto& key : store.names()) {
    newer = newer || starts_with(key, "model.language_model.");
    nested_vision = nested_vision || key.find("vision_tower.vision_model.") != std::string::npos;
  }
  return std::string(newer ? "newer (model.language_model...)" : "older (language_model.model...)") +
         (nested_vision ? "" : ", flat vision tower (transformers 5)");
}

LlavaConfig read_llava_config(const std::string& dir) {
  std::string path = dir + "/config.json";
  return LlavaConfig::from_json(read_json_file(path), path);
}

std::vector<WeightEntry> llava_weight_table(Llava& model) {
  std::vector<WeightEntry> table;
  for (const auto& item : model->named_parameters(/*recurse=*/true)) {
    WeightEntry entry;
    entry.name = item.key();
    entry.sources = {entry.name, newer_layout_name(entry.name)};
    std::string flat = flat_vision_name(entry.name);
    if (flat != entry.name) {
      entry.sources.push_back(flat);
      entry.sources.push_back(newer_layout_name(flat));
    }
    entry.shape = item.value().sizes().vec();
    entry.target = item.value();
    table.push_back(std::move(entry));
  }
  return table;
}

std::map<std::string, std::string> match_checkpoint(const std::vector<WeightEntry>& table, const TensorStore& store,
                                                    const std::string& dir, bool tied_embeddings,
                                                    const std::string& what,
                                                    const std::function<bool(const std::string&)>& also_unused) {
  std::map<std::string, std::string> matched;
  std::set<std::string> used;
  std::vector<std::string> missing, mismatched, unexpected;
  for (const auto& entry : table) {
    const std::string* found = nullptr;
    for (const auto& source : entry.sources)
      if (store.contains(source)) {
        found = &source;
        break;
      }
    if (!found) {
      // our name, then the checkpoint names it was looked for under (a part's folder never uses ours)
      std::string looked;
      bool ours = false;
      for (const auto& source : entry.sources) {
        if (source == entry.name) ours = true;
        else looked += (looked.empty() ? "" : ", ") + source;
      }
      missing.push_back(entry.name + (looked.empty() ? "" : (ours ? " (also looked for " : " (looked for ") + looked + ")"));
      continue;
    }
    used.insert(*found);
    const auto& shape = store.info(*found).shape;
    if (shape != entry.shape) {
      mismatched.push_back(*found + ": checkpoint has " + shape_str(shape) + ", config.json implies " +
                           shape_str(entry.shape));
      continue;
    }
    matched[entry.name] = *found;
  }
  for (const auto& key : store.names()) {
    if (used.count(key) || ignorable_key(key) || (also_unused && also_unused(key))) continue;
    // A tied model may still carry a copy of the embedding as lm_head; transformers ignores it too.
    if (tied_embeddings && (key == "lm_head.weight" || key == "language_model.lm_head.weight")) continue;
    unexpected.push_back(key);
  }
  if (!missing.empty() || !mismatched.empty() || !unexpected.empty()) {
    std::ostringstream out;
    out << dir << ": " << what;
    list_names(out, "missing tensors", missing);
    list_names(out, "shapes that disagree with config.json", mismatched);
    list_names(out, "unexpected tensors", unexpected);
    throw FormatError(out.str());
  }
  return matched;
}

LoadedLlava load_llava(const std::string& dir, torch::ScalarType dtype, torch::Device device) {
  LoadedLlava loaded;
  loaded.config = read_llava_config(dir);
  TensorStore store(dir);
  {
    NoInitGuard no_init;  // every parameter is about to be overwritten
    loaded.model = Llava(loaded.config);
  }
  auto table = llava_weight_table(loaded.model);
  auto matched = match_checkpoint(table, store, dir, loaded.config.text.tie_word_embeddings);
  loaded.layout = checkpoint_layout(store);
  torch::NoGradGuard no_grad;
  for (auto& entry : table) {
    entry.target.set_data(store.tensor(matched.at(entry.name), dtype).to(device));
    entry.target.set_requires_grad(false);
  }
  loaded.model->eval();
  return loaded;
}

void save_llava(const std::string& dir, Llava& model) {
  std::filesystem::create_directories(dir);
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& entry : llava_weight_table(model))
    if (entry.name.find(".adapter.") == std::string::npos)  // adapters are saved apart (model/adapters.h)
      tensors.emplace_back(entry.name, entry.target.detach());
  json config = model->config.to_json();
  config["dtype"] = dtype_name(tensors.front().second.scalar_type());
  save_safetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}});
  write_json_file(dir + "/config.json", config);
}

void init_llava_for_pretraining(Llava& model, double std) {
  torch::NoGradGuard no_grad;
  const double residual_scale_text = 1.0 / std::sqrt(2.0 * double(model->config.text.n_layers));
  const double residual_scale_vision = 1.0 / std::sqrt(2.0 * double(model->config.vision.n_layers));
  for (auto& item : model->named_parameters()) {
    const std::string& name = item.key();
    torch::Tensor& p = item.value();
    auto ends_with = [&](const std::string& suffix) {
      return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    const bool norm = name.find("norm") != std::string::npos;  // RMSNorm / LayerNorm: weight 1, bias 0
    if (ends_with(".bias")) {
      p.zero_();
    } else if (norm) {
      p.fill_(1.0);
    } else if (ends_with("o_proj.weight") || ends_with("down_proj.weight")) {
      p.normal_(0.0, std * residual_scale_text);
    } else if (ends_with("out_proj.weight") || ends_with("fc2.weight")) {
      p.normal_(0.0, std * residual_scale_vision);
    } else {
      p.normal_(0.0, std);  // Linear and embedding weights, class embedding, position embeddings
    }
  }
}

}  // namespace mole
