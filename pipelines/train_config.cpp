#include "pipelines/train_config.h"

#include <algorithm>
#include <cmath>

#include "core/json_config.h"
#include "language/conversation.h"

namespace mole {

MOLE_ENUM_NAMES(Stage, "stage", {Stage::kPretrain, "pretrain"}, {Stage::kAlign, "align"},
                {Stage::kFinetune, "finetune"})

MOLE_ENUM_NAMES(Bf16Mode, "bf16 mode", {Bf16Mode::kAuto, "auto"}, {Bf16Mode::kOn, "true"}, {Bf16Mode::kOff, "false"})

MOLE_ENUM_NAMES(ProgressMode, "progress mode", {ProgressMode::kAuto, "auto"}, {ProgressMode::kBar, "bar"},
                {ProgressMode::kLines, "lines"}, {ProgressMode::kOff, "off"})

void TrainConfig::validate(const FieldPath& at) const {
  if (out_dir.empty()) at.fail("out", "is required (the run folder)");
  const FieldPath m = at.child("model"), d = at.child("data"), o = at.child("optim"), r = at.child("run");
  // A model starts from one of: model.base, model.init, or parts (model.language_model + model.vision_tower).
  const bool parts = !model.language_model.empty();
  if (parts && !model.base.empty())
    m.fail("language_model", "and model.base are both given: a model starts from one of them (model.base: a "
                             "llava-hf or original LLaVA folder; model.language_model + model.vision_tower: parts)");
  if (parts && model.init.is_object())
    m.fail("language_model", "and model.init are both given: a model starts from one of them");
  if (parts && model.vision_tower.empty())
    m.fail("vision_tower", "is needed with model.language_model (a CLIP folder: CLIPVisionModel or CLIPModel)");
  if (!parts && !model.vision_tower.empty() && model.base.empty())
    m.fail("vision_tower", "needs model.language_model (a LLaVA built from parts) or an original LLaVA model.base");
  if (!model.projector_config.is_null() && !model.projector_config.is_object())
    m.fail("projector_config", "must be an object of llava config.json keys (mm_projector_type, ...)");
  if (!parts && !model.projector_config.is_null())
    m.fail("projector_config", "only shapes the new projector of a model built from parts (model.language_model); "
                               "a model.base brings its own projector");
  // Nothing would hold a frozen random projector: model.json redraws it when the model is loaded back.
  if (parts && stage == Stage::kFinetune && !model.train_projector && model.projector.empty())
    m.fail("train_projector", "false keeps the new projector of a model built from parts at its random "
                              "initialisation: train it (align first) or give model.projector");
  if (stage == Stage::kPretrain && model.base.empty() && !model.init.is_object() && !parts)
    m.fail("init", "pretrain needs model.init (a llava config.json object), model.base or model.language_model");
  if (stage != Stage::kPretrain && model.base.empty() && !parts)
    m.fail("base", enum_name(stage) + " needs model.base, or model.language_model + model.vision_tower");
  if (stage == Stage::kFinetune && !model.adapter)
    m.fail("adapter", "finetune needs model.adapter (e.g. {\"kind\": \"lora\"} or {\"kind\": \"mole\"})");
  if (model.tokenizer.empty() && model.base.empty() && !parts)
    m.fail("tokenizer", "is needed without a base or a language model");
  if (model.dtype != "float32" && model.dtype != "bfloat16")
    m.fail("dtype", "must be float32 or bfloat16, not '" + model.dtype + "'");
  const bool autocast =
      optim.bf16 == Bf16Mode::kOn || (optim.bf16 == Bf16Mode::kAuto && run.device.rfind("cuda", 0) == 0);
  if (model.dtype == "bfloat16" && !autocast)
    m.fail("dtype", "bfloat16 needs bfloat16 autocast: set optim.bf16 to true");
  if (data.train.empty() && data.text_corpus.empty()) d.fail("train", "is required");
  if (!data.weights.empty() && data.weights.size() != data.train.size())
    d.fail("weights", "has " + std::to_string(data.weights.size()) + " entries for " +
                          std::to_string(data.train.size()) + " train files (one weight per file, in order)");
  for (size_t i = 0; i < data.weights.size(); ++i)
    if (!(data.weights[i] >= 0.0) || !std::isfinite(data.weights[i]))
      d.fail("weights[" + std::to_string(i) + "]", "must be a finite number >= 0");
  if (!data.weights.empty() && std::all_of(data.weights.begin(), data.weights.end(), [](double w) { return w == 0.0; }))
    d.fail("weights", "are all 0: nothing to train on");
  if (run.eval_every < 0) r.fail("eval_every", "must be >= 0");
  if (run.eval_every > 0 && data.eval.empty()) r.fail("eval_every", "needs data.eval (the held-out file)");
  if (data.max_len < 1) d.fail("max_len", "must be >= 1");
  if (data.batch_size < 1) d.fail("batch_size", "must be >= 1");
  if (data.workers < 0) d.fail("workers", "must be >= 0");
  if (optim.steps < 0) o.fail("steps", "must be >= 0");
  if (!(optim.epochs > 0)) o.fail("epochs", "must be > 0");
  if (!(optim.lr > 0)) o.fail("lr", "must be > 0");
  if (optim.grad_accum < 1) o.fail("grad_accum", "must be >= 1");
  if (run.log_every < 1) r.fail("log_every", "must be >= 1");
  if (run.save_every < 0) r.fail("save_every", "must be >= 0");
  if (run.keep_last < 1) r.fail("keep_last", "must be >= 1");
  if (run.max_bad_steps < 1) r.fail("max_bad_steps", "must be >= 1");
  if (run.stop_after < 0) r.fail("stop_after", "must be >= 0");
  if (run.threads < 0) r.fail("threads", "must be >= 0");
  const bool cuda_index = run.device.size() > 5 && run.device.rfind("cuda:", 0) == 0 &&
                          run.device.find_first_not_of("0123456789", 5) == std::string::npos;
  if (run.device != "cpu" && run.device != "cuda" && !cuda_index)
    r.fail("device", "must be cpu, cuda or cuda:N, not '" + run.device + "'");
}

TrainConfig TrainConfig::from_json(const json& j, const std::string& file) {
  json resolved = j;
  // The template's default depends on the stage: filled in before reading, so --print-config shows it.
  if (j.is_object()) {
    const bool finetune = !j.contains("stage") || j["stage"] == "finetune";
    json& data = resolved["data"];
    if (data.is_null()) data = json::object();
    if (data.is_object() && (!data.contains("template") || data["template"].is_null()))
      data["template"] = finetune ? "vicuna_v1" : "plain";
  }
  return read_fields<TrainConfig>(resolved, file);
}

std::string train_config_help() { return fields_help(describe_fields<TrainConfig>()); }

void apply_override(json& config, const std::string& assignment) {
  const size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw ConfigError("--set " + assignment + ": expected KEY=VALUE, e.g. optim.lr=1e-3");
  const std::string key = assignment.substr(0, eq), text = assignment.substr(eq + 1);
  json value;
  try {
    value = parse_json_text(text);
  } catch (const json::exception&) {
    value = text;  // not JSON: the text itself (--set model.base=/path)
  }
  json* node = &config;
  size_t start = 0;
  for (;;) {
    const size_t dot = key.find('.', start);
    const std::string part = key.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (part.empty()) throw ConfigError("--set " + assignment + ": empty key part");
    if (!node->is_object()) {
      if (!node->is_null()) throw ConfigError("--set " + assignment + ": '" + part + "' is inside a non-object");
      *node = json::object();
    }
    if (dot == std::string::npos) {
      (*node)[part] = value;
      return;
    }
    node = &(*node)[part];
    start = dot + 1;
  }
}

}  // namespace mole
