// mole info DIR: what a checkpoint folder holds and what this build can do with it. The checkpoint is
// matched against its config.json (every tensor name and shape) without reading any weights.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>

#include <torch/torch.h>
#include <torch/version.h>

#include "core/json_config.h"
#include "core/limits.h"
#include "core/linear.h"
#include "core/safetensors.h"
#include "model/llava_loader.h"
#include "model/trained_model.h"
#include "pipelines/args.h"
#include "pipelines/commands.h"

namespace mole {

int configure_threads() {
  int threads = static_cast<int>(std::thread::hardware_concurrency());
  if (const char* env = std::getenv("MOLE_THREADS")) {
    const std::string text = env;
    char* end = nullptr;
    const long long n = std::strtoll(text.c_str(), &end, 10);
    if (text.empty() || end != text.c_str() + text.size() || n < 1 || n > kMaxThreads)
      throw std::runtime_error("MOLE_THREADS must be an integer from 1 to " + std::to_string(kMaxThreads) +
                               ", got '" + text + "'");
    threads = int(n);
  }
  if (threads > 0) torch::set_num_threads(threads);
  return torch::get_num_threads();
}

namespace {

int64_t count_params(torch::nn::Module& module) {
  int64_t n = 0;
  for (const auto& p : module.parameters()) n += p.numel();
  return n;
}

std::string with_commas(int64_t n) {
  std::string s = std::to_string(n);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<size_t>(i), ",");
  return s;
}

}  // namespace

// A mole run, checkpoint or final folder (model.json): what it was trained from and how, what it trained, and
// for a run its checkpoints and the end of its log.
static json trained_info(const std::string& path) {
  namespace fs = std::filesystem;
  const std::string dir = resolve_model_dir(path);
  const ModelSpec spec = ModelSpec::from_json(read_json_file(dir + "/model.json"), dir + "/model.json");
  json info = {{"path", path}, {"model_folder", dir}, {"spec", spec.to_json()}};
  if (fs::exists(dir + "/trainable.safetensors")) {
    TensorStore trained(dir + "/trainable.safetensors");
    int64_t n = 0;
    std::map<std::string, int64_t> by_part;  // vision_tower, multi_modal_projector, language_model (adapters count there)
    for (const auto& name : trained.names()) {
      int64_t count = 1;
      for (int64_t d : trained.info(name).shape) count *= d;
      n += count;
      by_part[name.substr(0, name.find('.'))] += count;
    }
    info["trained"] = {{"tensors", trained.names().size()}, {"parameters", n}, {"by_part", by_part}};
  }
  if (fs::exists(dir + "/trainer_state.json")) info["trainer_state"] = read_json_file(dir + "/trainer_state.json");
  const std::string run = fs::exists(path + "/run.json") ? path : "";
  if (!run.empty()) {
    json checkpoints = json::array();
    if (fs::exists(run + "/checkpoints"))
      for (const auto& e : fs::directory_iterator(run + "/checkpoints"))
        if (e.is_directory() && e.path().filename().string().rfind("step-", 0) == 0)
          checkpoints.push_back(e.path().filename().string());
    std::sort(checkpoints.begin(), checkpoints.end());
    info["run"] = {{"checkpoints", checkpoints}, {"finished", fs::exists(run + "/final")}};
    std::ifstream log(run + "/metrics.jsonl");
    json last_window, last_event;
    for (std::string line; std::getline(log, line);) {
      json j = json::parse(line, nullptr, false);
      if (j.is_discarded() || !j.is_object()) continue;
      if (j.contains("event")) last_event = j;
      else if (j.contains("loss")) last_window = j;
    }
    if (!last_window.is_null()) info["run"]["last_window"] = {{"step", last_window["step"]}, {"loss", last_window["loss"]}};
    if (!last_event.is_null()) info["run"]["last_event"] = last_event;
  }
  return info;
}

int cmd_info(int argc, char** argv) {
  Args args("info", "Describe a llava-hf checkpoint folder (config.json + safetensors), or a mole run, checkpoint or "
                    "final folder (model.json: what it was trained from, what it trained, its checkpoints), and this "
                    "build.");
  args.positional("DIR", "checkpoint, run or final folder").flag("json", "print one JSON object instead of text");
  if (!args.parse(argc, argv)) return 0;
  std::string dir = args.get("DIR");
  namespace fs = std::filesystem;
  if (fs::exists(resolve_model_dir(dir) + "/model.json") && !fs::exists(dir + "/config.json")) {
    const json info = trained_info(dir);
    if (args.has("json")) {
      std::printf("%s\n", info.dump(2).c_str());
      return 0;
    }
    const json& spec = info["spec"];
    std::printf("mole info: %s (a mole %s)\n", dir.c_str(), info.contains("run") ? "run" : "model folder");
    std::printf("  stage         %s\n", spec.value("stage", "").c_str());
    for (const char* key : {"base", "vision_tower", "language_model", "projector", "tokenizer"})
      if (spec.contains(key) && spec[key].is_string() && !spec[key].get<std::string>().empty())
        std::printf("  %-13s %s\n", key, spec[key].get<std::string>().c_str());
    std::printf("  template      %s\n", spec.value("template", "").c_str());
    if (spec.contains("adapter") && spec["adapter"].is_object()) {
      const json& a = spec["adapter"];
      std::printf("  adapter       %s, rank %s, alpha %s, targets %s", a.value("kind", "").c_str(),
                  a.value("rank", json()).dump().c_str(), a.value("alpha", json()).dump().c_str(),
                  a.value("targets", json()).dump().c_str());
      if (a.value("kind", "") == "mole")
        std::printf(", %s experts top-%s (%s)", a.value("n_experts", json()).dump().c_str(),
                    a.value("top_k", json()).dump().c_str(), a.value("granularity", "").c_str());
      std::printf("\n");
    }
    if (info.contains("trained"))
      std::printf("  trained       %s parameters in %s tensors %s\n",
                  with_commas(info["trained"]["parameters"].get<int64_t>()).c_str(),
                  info["trained"]["tensors"].dump().c_str(), info["trained"]["by_part"].dump().c_str());
    if (info.contains("trainer_state"))
      std::printf("  at step       %s of %s\n", info["trainer_state"].value("step", json()).dump().c_str(),
                  info["trainer_state"].value("total_steps", json()).dump().c_str());
    if (info.contains("run")) {
      const json& r = info["run"];
      std::printf("  checkpoints   %s\n", r["checkpoints"].dump().c_str());
      std::printf("  finished      %s\n", r["finished"].get<bool>() ? "yes (final/)" : "no");
      if (r.contains("last_window"))
        std::printf("  last window   step %s, loss %s\n", r["last_window"]["step"].dump().c_str(),
                    r["last_window"]["loss"].dump().c_str());
    }
    return 0;
  }

  LlavaConfig config = read_llava_config(dir);
  TensorStore store(dir);
  Llava model = nullptr;
  {
    NoInitGuard no_init;  // shapes only: nothing is computed
    model = Llava(config);
  }
  auto table = llava_weight_table(model);
  match_checkpoint(table, store, dir, config.text.tie_word_embeddings);  // throws on any disagreement
  std::map<std::string, int64_t> dtypes;                                 // file dtype -> tensors
  for (const auto& name : store.names()) dtypes[store.info(name).dtype] += 1;
  std::string layout = checkpoint_layout(store);

  int64_t n_vision = count_params(*model->vision_tower), n_projector = count_params(*model->multi_modal_projector),
          n_language = count_params(*model->language_model);
  json info = {{"path", dir},
               {"architecture", "LlavaForConditionalGeneration"},
               {"config", config.to_json()},
               {"parameters",
                {{"vision", n_vision},
                 {"projector", n_projector},
                 {"language", n_language},
                 {"total", n_vision + n_projector + n_language}}},
               {"checkpoint", {{"files", store.n_files()}, {"tensors", store.names().size()}, {"dtypes", dtypes},
                               {"layout", layout}}},
               {"runtime",
                {{"libtorch", TORCH_VERSION},
                 {"cuda_available", torch::cuda::is_available()},
                 {"cuda_devices", torch::cuda::device_count()},
                 {"threads", torch::get_num_threads()}}}};
  if (args.has("json")) {
    std::printf("%s\n", info.dump(2).c_str());
    return 0;
  }
  const auto& v = config.vision;
  const auto& t = config.text;
  std::printf("mole info: %s\n", dir.c_str());
  std::printf("  architecture  LlavaForConditionalGeneration: CLIP vision tower + %s projector + %s decoder\n",
              config.projector_type.c_str(), t.model_type.c_str());
  std::printf("  vision        %lld layers, hidden %lld, mlp %lld, heads %lld, image %lld px / patch %lld = %lld "
              "patches, act %s\n",
              (long long)v.n_layers, (long long)v.hidden_size, (long long)v.intermediate_size, (long long)v.n_heads,
              (long long)v.image_size, (long long)v.patch_size, (long long)v.n_patches(),
              activation_name(v.hidden_act).c_str());
  std::printf("  projector     %s, features from vision layer %s, strategy %s -> %lld tokens per image, bias %s\n",
              activation_name(config.projector_hidden_act).c_str(), json(config.vision_feature_layers).dump().c_str(),
              config.vision_feature_select_strategy.c_str(), (long long)config.n_image_features(),
              config.multimodal_projector_bias ? "yes" : "no");
  std::printf("  language      %lld layers, hidden %lld, mlp %lld, heads %lld (kv %lld), head_dim %lld, vocab %lld, "
              "rope_theta %g, tied lm_head %s\n",
              (long long)t.n_layers, (long long)t.hidden_size, (long long)t.intermediate_size, (long long)t.n_heads,
              (long long)t.n_kv_heads, (long long)t.head_dim, (long long)t.vocab_size, t.rope_theta,
              t.tie_word_embeddings ? "yes" : "no");
  std::printf("  image token   %lld\n", (long long)config.image_token_index);
  std::printf("  parameters    vision %s, projector %s, language %s, total %s\n", with_commas(n_vision).c_str(),
              with_commas(n_projector).c_str(), with_commas(n_language).c_str(),
              with_commas(n_vision + n_projector + n_language).c_str());
  std::printf("  checkpoint    %zu tensors in %zu file(s), layout %s, dtypes %s\n", store.names().size(),
              store.n_files(), layout.c_str(), json(dtypes).dump().c_str());
  std::printf("  runtime       LibTorch %s, CUDA %s, %d threads\n", TORCH_VERSION,
              torch::cuda::is_available() ? "available" : "not available", torch::get_num_threads());
  return 0;
}

}  // namespace mole
