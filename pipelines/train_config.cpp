#include "pipelines/train_config.h"

#include <set>

#include "core/json_config.h"

namespace mole {

namespace {

void check_keys(const json& obj, const std::set<std::string>& known, const std::string& where) {
  if (!obj.is_object()) throw ConfigError(where + ": expected an object");
  for (const auto& [key, value] : obj.items())
    if (!known.count(key)) {
      std::string list;
      for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
      throw ConfigError(where + ": unknown key '" + key + "' (known: " + list + ")");
    }
}

json section(const json& j, const std::string& name) {
  return j.contains(name) && !j[name].is_null() ? j[name] : json::object();
}

}  // namespace

TrainConfig TrainConfig::from_json(const json& j, const std::string& where) {
  check_keys(j, {"stage", "out", "model", "data", "optim", "run"}, where);
  TrainConfig c;
  c.stage = field_or<std::string>(j, "stage", c.stage, where);
  if (c.stage != "pretrain" && c.stage != "align" && c.stage != "finetune")
    throw ConfigError(where + ": stage must be pretrain, align or finetune, not '" + c.stage + "'");
  c.out_dir = field<std::string>(j, "out", where);

  const json m = section(j, "model");
  const std::string wm = where + " model";
  check_keys(m, {"base", "init", "projector", "tokenizer", "train_projector", "adapter", "image_processor"}, wm);
  c.base = field_or<std::string>(m, "base", "", wm);
  c.init = m.value("init", json());
  c.projector = field_or<std::string>(m, "projector", "", wm);
  c.tokenizer = field_or<std::string>(m, "tokenizer", "", wm);
  c.train_projector = field_or<bool>(m, "train_projector", c.train_projector, wm);
  c.adapter = m.value("adapter", json());
  c.image_processor = m.value("image_processor", json());
  if (c.stage == "pretrain" && c.base.empty() && !c.init.is_object())
    throw ConfigError(wm + ": pretrain needs model.init (a llava config.json object) or model.base");
  if (c.stage != "pretrain" && c.base.empty()) throw ConfigError(wm + ": " + c.stage + " needs model.base");
  if (c.stage == "finetune" && !c.adapter.is_object())
    throw ConfigError(wm + ": finetune needs model.adapter (e.g. {\"kind\": \"lora\"} or {\"kind\": \"mole\"})");
  if (c.tokenizer.empty() && c.base.empty()) throw ConfigError(wm + ": model.tokenizer is needed without a base");

  const json d = section(j, "data");
  const std::string wd = where + " data";
  check_keys(d, {"train", "text_corpus", "images", "template", "max_len", "batch_size", "workers",
                 "group_by_length", "strict"}, wd);
  if (d.contains("train")) {
    if (d["train"].is_string()) c.train_files = {d["train"].get<std::string>()};
    else c.train_files = field<std::vector<std::string>>(d, "train", wd);
  }
  c.text_corpus = field_or<std::string>(d, "text_corpus", "", wd);
  if (c.train_files.empty() && c.text_corpus.empty()) throw ConfigError(wd + ": data.train is required");
  c.images = field_or<std::string>(d, "images", "", wd);
  c.conversation_template = field_or<std::string>(d, "template", c.stage == "finetune" ? "vicuna_v1" : "plain", wd);
  c.max_len = field_or<int64_t>(d, "max_len", c.max_len, wd);
  c.batch_size = field_or<int64_t>(d, "batch_size", c.batch_size, wd);
  c.workers = field_or<int64_t>(d, "workers", c.workers, wd);
  c.group_by_length = field_or<bool>(d, "group_by_length", c.group_by_length, wd);
  c.strict = field_or<bool>(d, "strict", c.strict, wd);

  const json o = section(j, "optim");
  const std::string wo = where + " optim";
  check_keys(o, {"steps", "epochs", "lr", "projector_lr", "router_lr", "weight_decay", "warmup_ratio",
                 "min_lr_ratio", "grad_accum", "clip", "bf16", "beta1", "beta2", "eps"}, wo);
  c.steps = field_or<int64_t>(o, "steps", c.steps, wo);
  c.epochs = field_or<double>(o, "epochs", c.epochs, wo);
  c.lr = field_or<double>(o, "lr", c.lr, wo);
  c.projector_lr = field_or<double>(o, "projector_lr", c.projector_lr, wo);
  c.router_lr = field_or<double>(o, "router_lr", c.router_lr, wo);
  c.weight_decay = field_or<double>(o, "weight_decay", c.weight_decay, wo);
  c.warmup_ratio = field_or<double>(o, "warmup_ratio", c.warmup_ratio, wo);
  c.min_lr_ratio = field_or<double>(o, "min_lr_ratio", c.min_lr_ratio, wo);
  c.grad_accum = field_or<int64_t>(o, "grad_accum", c.grad_accum, wo);
  c.clip = field_or<double>(o, "clip", c.clip, wo);
  if (o.contains("bf16")) c.bf16 = o["bf16"].is_boolean() ? (o["bf16"].get<bool>() ? "true" : "false")
                                                          : field<std::string>(o, "bf16", wo);
  if (c.bf16 != "auto" && c.bf16 != "true" && c.bf16 != "false")
    throw ConfigError(wo + ": bf16 must be auto, true or false");
  c.beta1 = field_or<double>(o, "beta1", c.beta1, wo);
  c.beta2 = field_or<double>(o, "beta2", c.beta2, wo);
  c.eps = field_or<double>(o, "eps", c.eps, wo);
  if (c.steps < 0 || c.epochs <= 0 || c.lr <= 0 || c.grad_accum < 1 || c.batch_size < 1)
    throw ConfigError(wo + ": steps >= 0, epochs > 0, lr > 0, grad_accum >= 1 and data.batch_size >= 1 required");

  const json r = section(j, "run");
  const std::string wr = where + " run";
  check_keys(r, {"seed", "log_every", "save_every", "keep_last", "max_bad_steps", "stop_after", "threads",
                 "device", "progress"}, wr);
  c.seed = field_or<uint64_t>(r, "seed", c.seed, wr);
  c.log_every = std::max<int64_t>(1, field_or<int64_t>(r, "log_every", c.log_every, wr));
  c.save_every = field_or<int64_t>(r, "save_every", c.save_every, wr);
  c.keep_last = std::max<int64_t>(1, field_or<int64_t>(r, "keep_last", c.keep_last, wr));
  c.max_bad_steps = std::max<int64_t>(1, field_or<int64_t>(r, "max_bad_steps", c.max_bad_steps, wr));
  c.stop_after = field_or<int64_t>(r, "stop_after", c.stop_after, wr);
  c.threads = field_or<int64_t>(r, "threads", c.threads, wr);
  c.device = field_or<std::string>(r, "device", c.device, wr);
  c.progress = field_or<std::string>(r, "progress", c.progress, wr);
  return c;
}

json TrainConfig::to_json() const {
  json model = {{"base", base}, {"projector", projector}, {"tokenizer", tokenizer},
                {"train_projector", train_projector}};
  if (!init.is_null()) model["init"] = init;
  if (!adapter.is_null()) model["adapter"] = adapter;
  if (!image_processor.is_null()) model["image_processor"] = image_processor;
  return {{"stage", stage},
          {"out", out_dir},
          {"model", model},
          {"data", {{"train", train_files}, {"text_corpus", text_corpus}, {"images", images},
                    {"template", conversation_template}, {"max_len", max_len}, {"batch_size", batch_size},
                    {"workers", workers}, {"group_by_length", group_by_length}, {"strict", strict}}},
          {"optim", {{"steps", steps}, {"epochs", epochs}, {"lr", lr}, {"projector_lr", projector_lr},
                     {"router_lr", router_lr}, {"weight_decay", weight_decay}, {"warmup_ratio", warmup_ratio},
                     {"min_lr_ratio", min_lr_ratio}, {"grad_accum", grad_accum}, {"clip", clip}, {"bf16", bf16},
                     {"beta1", beta1}, {"beta2", beta2}, {"eps", eps}}},
          {"run", {{"seed", seed}, {"log_every", log_every}, {"save_every", save_every}, {"keep_last", keep_last},
                   {"max_bad_steps", max_bad_steps}, {"stop_after", stop_after}, {"threads", threads}, {"device", device},
                   {"progress", progress}}}};
}

void apply_override(json& config, const std::string& assignment) {
  const size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw ConfigError("--set " + assignment + ": expected KEY=VALUE, e.g. optim.lr=1e-3");
  const std::string key = assignment.substr(0, eq), text = assignment.substr(eq + 1);
  json value = json::parse(text, nullptr, false);
  if (value.is_discarded()) value = text;
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
