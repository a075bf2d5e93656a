// mole info DIR: what a checkpoint folder holds and what this build can do with it. The checkpoint is
// matched against its config.json (every tensor name and shape) without reading any weights.
#include <cstdio>
#include <map>
#include <string>
#include <thread>

#include <torch/torch.h>
#include <torch/version.h>

#include "core/json_config.h"
#include "core/linear.h"
#include "core/safetensors.h"
#include "model/llava_loader.h"
#include "pipelines/args.h"
#include "pipelines/commands.h"

namespace mole {

int configure_threads() {
  int threads = static_cast<int>(std::thread::hardware_concurrency());
  if (const char* env = std::getenv("MOLE_THREADS")) threads = std::atoi(env);
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

int cmd_info(int argc, char** argv) {
  Args args("info", "Describe a llava-hf checkpoint folder (config.json + safetensors) and this build.");
  args.positional("DIR", "checkpoint folder").flag("json", "print one JSON object instead of text");
  if (!args.parse(argc, argv)) return 0;
  std::string dir = args.get("DIR");

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
