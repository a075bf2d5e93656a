// mole forward --model DIR --inputs IN.safetensors --out OUT.safetensors [--hidden-states]
// Runs a checkpoint on input tensors and writes its logits, so that users (and our tests) can check parity with
// another implementation without a tokenizer. Inputs are as transformers' LlavaForConditionalGeneration takes
// them: input_ids (int64, B x T) with each image's placeholder repeated once per feature, attention_mask
// (int64, B x T, optional), pixel_values (float32, I x 3 x H x W, optional), position_ids (int64, optional;
// default cumsum(attention_mask) - 1, as generate() uses).
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "core/dtype.h"
#include "core/json_config.h"
#include "core/safetensors.h"
#include "model/llava_loader.h"
#include "pipelines/args.h"
#include "pipelines/commands.h"

namespace mole {

int cmd_forward(int argc, char** argv) {
  Args args("forward", "Run a llava-hf checkpoint on input tensors and write logits (float32).");
  args.option("model", "checkpoint folder (config.json + safetensors)", "", true)
      .option("inputs", "safetensors with input_ids, attention_mask, pixel_values, position_ids", "", true)
      .option("out", "safetensors to write: logits, and with --hidden-states the intermediates", "", true)
      .option("dtype", "weights and compute dtype: float32, bfloat16, float16", "float32")
      .option("device", "cpu, cuda or cuda:N", "cpu")
      .flag("hidden-states",
            "also write vision_hidden_states.N, vision_features, image_features and hidden_states.N");
  if (!args.parse(argc, argv)) return 0;

  auto dtype = parse_float_dtype(args.get("dtype"), "--dtype");
  torch::Device device(args.get("device"));
  auto loaded = load_llava(args.get("model"), dtype, device);
  SafetensorsFile inputs(args.get("inputs"));
  auto get = [&](const std::string& name, torch::ScalarType type) {
    return inputs.contains(name) ? inputs.tensor(name, type).to(device) : torch::Tensor();
  };
  auto input_ids = get("input_ids", torch::kInt64);
  if (!input_ids.defined()) throw FormatError(args.get("inputs") + ": no tensor 'input_ids'");
  auto attention_mask = get("attention_mask", torch::kInt64);
  auto pixel_values = get("pixel_values", dtype);
  auto position_ids = get("position_ids", torch::kInt64);

  torch::NoGradGuard no_grad;
  bool want_hidden = args.has("hidden-states");
  LlavaTrace trace;
  auto logits = loaded.model->forward(input_ids, attention_mask, pixel_values, position_ids,
                                      want_hidden ? &trace : nullptr);

  std::vector<std::pair<std::string, torch::Tensor>> out = {{"logits", logits.to(torch::kFloat32).cpu()}};
  if (want_hidden) {
    auto f32 = [](const torch::Tensor& t) { return t.to(torch::kFloat32).cpu(); };
    for (size_t i = 0; i < trace.vision_hidden_states.size(); ++i)
      out.emplace_back("vision_hidden_states." + std::to_string(i), f32(trace.vision_hidden_states[i]));
    if (trace.vision_features.defined()) out.emplace_back("vision_features", f32(trace.vision_features));
    if (trace.image_features.defined()) out.emplace_back("image_features", f32(trace.image_features));
    for (size_t i = 0; i < trace.hidden_states.size(); ++i)
      out.emplace_back("hidden_states." + std::to_string(i), f32(trace.hidden_states[i]));
  }
  save_safetensors(args.get("out"), out, {{"format", "pt"}, {"producer", "mole forward"}});
  std::printf("mole forward: logits %s (%s, layout %s) -> %s\n", json(logits.sizes().vec()).dump().c_str(),
              dtype_name(dtype).c_str(), loaded.layout.c_str(), args.get("out").c_str());
  return 0;
}

}  // namespace mole
