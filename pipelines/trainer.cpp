#include "pipelines/trainer.h"

#include <unistd.h>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/autocast_mode.h>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <thread>

#include <torch/torch.h>

#include "core/json_config.h"
#include "core/safetensors.h"
#include "data/loader.h"
#include "model/adapters.h"
#include "model/llava_loader.h"
#include "moe/balance.h"
#include "moe/routing_stats.h"
#include "pipelines/checkpoint.h"
#include "pipelines/commands.h"
#include "pipelines/optim.h"
#include "pipelines/run_model.h"

namespace mole {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// ---- Ctrl-C: finish the step, write a checkpoint, stop -----------------------------------------------------------

std::atomic<bool> g_interrupted{false};
extern "C" void on_sigint(int) {
  g_interrupted = true;
  std::signal(SIGINT, SIG_DFL);  // a second Ctrl-C ends the process at once
}

std::string absolute(const std::string& path) { return path.empty() ? path : fs::absolute(path).string(); }

// ---- data ----------------------------------------------------------------------------------------------------

// The training records of every file, in order, plus the corpus lines as text-only samples.
std::shared_ptr<const LlavaDataset> read_training_data(const TrainConfig& c) {
  auto merged = std::make_shared<LlavaDataset>();
  for (const std::string& file : c.train_files) {
    LlavaDataset d = read_llava_dataset(file, c.strict);
    merged->path += (merged->path.empty() ? "" : " + ") + file;
    merged->n_read += d.n_read;
    merged->skipped.merge(d.skipped);
    for (LlavaRecord& r : d.records) merged->records.push_back(std::move(r));
  }
  if (!c.text_corpus.empty()) {
    std::ifstream in(c.text_corpus);
    if (!in) throw DataError(c.text_corpus + ": cannot open the text corpus");
    std::string line;
    for (int64_t i = 0; std::getline(in, line); ++i) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      LlavaRecord r;
      r.index = i;
      r.id = "corpus-" + std::to_string(i);
      r.turns = {{"human", ""}, {"gpt", line}};
      merged->records.push_back(std::move(r));
      ++merged->n_read;
    }
    merged->path += (merged->path.empty() ? "" : " + ") + c.text_corpus;
  }
  return merged;
}

// ---- model ---------------------------------------------------------------------------------------------------

ModelSpec spec_for(const TrainConfig& c) {
  ModelSpec spec;
  spec.stage = c.stage;
  spec.base = absolute(resolve_model_dir(c.base.empty() ? "" : c.base));
  if (c.base.empty()) spec.base.clear();
  spec.projector = absolute(c.projector);
  spec.tokenizer = absolute(c.tokenizer.empty() ? spec.base : c.tokenizer);
  spec.conversation_template = c.conversation_template;
  spec.image_processor = c.image_processor;
  if (spec.base.empty()) {
    // The tokenizer decides the vocabulary and the special ids of a model trained from scratch.
    Tokenizer tok = Tokenizer::load(spec.tokenizer);
    if (tok.image_token_id() < 0) throw ConfigError(spec.tokenizer + ": the tokenizer has no <image> token");
    spec.init = c.init;
    spec.init["text_config"]["vocab_size"] = tok.vocab_size();
    spec.init["image_token_index"] = tok.image_token_id();
    spec.init["pad_token_id"] = tok.pad_id();
    spec.init["text_config"]["pad_token_id"] = tok.pad_id();
    spec.init["text_config"]["bos_token_id"] = tok.bos_id();
    spec.init["text_config"]["eos_token_id"] = tok.eos_id();
  }
  if (c.stage == "finetune") {
    AdapterConfig adapter = AdapterConfig::from_json(c.adapter, "model.adapter");
    adapter.base_model = spec.base;
    adapter.base_config_hash = base_config_hash(read_llava_config(spec.base));
    spec.adapter = adapter.to_json();
  }
  return spec;
}

// What this stage trains, by full name, with requires_grad set accordingly.
std::vector<std::pair<std::string, torch::Tensor>> select_trainable(Llava& model, const TrainConfig& c) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (auto& item : model->named_parameters()) {
    const std::string& name = item.key();
    torch::Tensor& p = item.value();
    bool train = false;
    if (c.stage == "pretrain") train = true;
    else if (name.rfind("multi_modal_projector.", 0) == 0) train = c.stage == "align" || c.train_projector;
    else train = c.stage == "finetune" && name.find(".adapter.") != std::string::npos;
    p.set_requires_grad(train);
    if (train) out.emplace_back(name, p);
  }
  if (out.empty()) throw ConfigError("stage " + c.stage + ": nothing to train");
  return out;
}

int64_t count(const std::vector<std::pair<std::string, torch::Tensor>>& params) {
  int64_t n = 0;
  for (const auto& [name, p] : params) n += p.numel();
  return n;
}

// ---- logging -------------------------------------------------------------------------------------------------

// Each expert's top-k share per layer and modality over the window (what `mole routes` plots over training).
json expert_load(const RoutingStats& stats) {
  json full = stats.to_json();
  json out = {{"layers", json::array()}, {"text", json::array()}, {"image", json::array()}};
  for (const auto& layer : full["layer_order"]) {
    const json& entry = full["layers"][layer.get<std::string>()];
    out["layers"].push_back(layer);
    for (const char* modality : {"text", "image"}) {
      const json cell = entry.contains("prefill") && entry["prefill"].contains(modality)
                            ? entry["prefill"][modality]["topk_share"]
                            : json::array();
      out[modality].push_back(cell);
    }
  }
  return out;
}

std::string clock_text(double seconds) {
  char buf[32];
  const int64_t s = int64_t(seconds + 0.5);
  std::snprintf(buf, sizeof(buf), "%lld:%02lld", (long long)(s / 60), (long long)(s % 60));
  return buf;
}

}  // namespace

TrainResult run_training(const TrainConfig& config, bool resume) {
  const TrainConfig& c = config;
  if (c.threads > 0) torch::set_num_threads(int(c.threads));
  torch::Device device(c.device);
  fs::create_directories(c.out_dir);
  const std::string checkpoints = c.out_dir + "/checkpoints";
  std::optional<std::string> resume_from;
  if (resume) {
    resume_from = latest_checkpoint(checkpoints);
    if (!resume_from) throw ConfigError(c.out_dir + ": --resume, but there is no checkpoint in " + checkpoints);
  }
  write_json_file(c.out_dir + "/run.json", c.to_json());

  // model
  torch::manual_seed(c.seed);
  const ModelSpec spec = spec_for(c);
  TrainedModel built = build_model(spec, device);
  Llava model = built.model;
  const auto trainable = select_trainable(model, c);
  int64_t total_params = 0;
  for (const auto& p : model->parameters()) total_params += p.numel();
  std::fprintf(stderr, "mole train %s: %s parameters trainable of %lld (%.2f%%)\n", c.stage.c_str(),
               std::to_string(count(trainable)).c_str(), (long long)total_params,
               100.0 * double(count(trainable)) / double(total_params));

  // data
  auto dataset = read_training_data(c);
  LoaderOptions lo;
  lo.batch_size = c.batch_size;
  lo.n_workers = c.workers;
  lo.seed = c.seed;
  lo.group_by_length = c.group_by_length;
  lo.n_epochs = 0;  // the step count decides the end
  lo.conversation_template = parse_template(c.conversation_template);
  lo.max_len = c.max_len;
  lo.n_image_tokens = model->config.n_image_features();
  lo.image_dir = c.images;
  lo.strict = c.strict;
  auto images = std::make_shared<const ImageProcessor>(built.image_config);

  // resume: the trained weights, optimizer, loader position and RNG of the checkpoint
  json state;
  if (resume_from) {
    state = read_json_file(*resume_from + "/trainer_state.json");
    TensorStore weights(*resume_from + "/trainable.safetensors");
    torch::NoGradGuard no_grad;
    for (auto& [name, p] : trainable) {
      if (!weights.contains(name)) throw FormatError(weights.path() + ": no tensor " + name);
      p.copy_(weights.tensor(name, p.scalar_type()));
    }
  }
  DataLoader loader(dataset, built.tokenizer, images, lo,
                    resume_from ? std::optional<LoaderState>(LoaderState::from_json(state.at("loader")))
                                : std::nullopt);
  const int64_t total_steps =
      c.steps > 0 ? c.steps
                  : std::max<int64_t>(1, int64_t(std::ceil(c.epochs * double(loader.batches_per_epoch()) /
                                                           double(c.grad_accum))));
  const int64_t warmup = int64_t(std::ceil(c.warmup_ratio * double(total_steps)));

  AdamW optimizer(make_param_groups(trainable, c.lr, c.projector_lr > 0 ? c.projector_lr : c.lr,
                                    c.router_lr > 0 ? c.router_lr : c.lr, c.weight_decay),
                  c.beta1, c.beta2, c.eps);
  int64_t step = 0, bad_streak = 0;
  if (resume_from) {
    optimizer.load_state(TensorStore(*resume_from + "/optimizer.safetensors"));
    step = state.at("step").get<int64_t>();
    bad_streak = state.value("bad_streak", int64_t(0));
    TensorStore rng(*resume_from + "/rng.safetensors");
    at::Generator generator = at::detail::getDefaultCPUGenerator();  // a handle on the shared generator
    generator.set_state(rng.tensor("cpu"));
    std::fprintf(stderr, "resumed from %s at step %lld\n", resume_from->c_str(), (long long)step);
  }

  const bool bf16 = c.bf16 == "true" || (c.bf16 == "auto" && device.is_cuda());
  if (bf16) {
    at::autocast::set_autocast_enabled(device.type(), true);
    at::autocast::set_autocast_dtype(device.type(), at::kBFloat16);
  }

  // checkpoints: model.json + trainable weights (what load_trained reads), optimizer, state, RNG
  auto fill_checkpoint = [&](const std::string& dir, bool with_optimizer) {
    write_json_file(dir + "/model.json", spec.to_json());
    save_safetensors(dir + "/trainable.safetensors", trainable);
    if (!with_optimizer) return;
    save_safetensors(dir + "/optimizer.safetensors", optimizer.state_tensors());
    save_safetensors(dir + "/rng.safetensors", {{"cpu", at::detail::getDefaultCPUGenerator().get_state()}});
    write_json_file(dir + "/trainer_state.json", {{"step", step}, {"total_steps", total_steps},
                                                  {"loader", loader.state().to_json()},
                                                  {"bad_streak", bad_streak},
                                                  {"skipped_records", loader.skip_report().to_json()}});
    if (const char* delay = std::getenv("MOLE_TEST_CHECKPOINT_DELAY_MS"))  // widens the window tests kill in
      std::this_thread::sleep_for(std::chrono::milliseconds(std::atoi(delay)));
  };
  auto save_checkpoint = [&] {
    return write_checkpoint(checkpoints, step, c.keep_last, [&](const std::string& dir) { fill_checkpoint(dir, true); });
  };

  // logging
  std::ofstream metrics(c.out_dir + "/metrics.jsonl", resume_from ? std::ios::app : std::ios::trunc);
  const bool tty = ::isatty(STDERR_FILENO);
  const bool bar = c.progress == "bar" || (c.progress == "auto" && tty);
  const bool lines = c.progress == "lines" || (c.progress == "auto" && !tty);
  RoutingStats stats;
  std::vector<std::pair<std::string, BalanceLosses>> routing_losses;
  model->routing_stats = &stats;
  model->routing_losses = &routing_losses;
  double window_loss = 0, window_lm = 0, window_norm = 0, window_wait = 0;
  std::map<std::string, double> window_aux;
  int64_t window_steps = 0, window_tokens = 0, window_samples = 0, window_bad = 0;
  auto window_start = Clock::now();
  const auto run_start = Clock::now();
  const int64_t first_step = step;
  double last_loss = 0;

  g_interrupted = false;
  auto previous_handler = std::signal(SIGINT, on_sigint);
  model->train();
  TrainResult result;
  while (step < total_steps) {
    if (g_interrupted || (c.stop_after > 0 && step >= c.stop_after)) {
      result.interrupted = g_interrupted;
      result.stopped = true;
      break;
    }
    // forward + backward over grad_accum batches; each batch's mean loss weighs 1/grad_accum (HF Trainer)
    double step_loss = 0, step_lm = 0;
    std::map<std::string, double> step_aux;
    for (int64_t micro = 0; micro < c.grad_accum; ++micro) {
      const double wait_before = loader.wait_seconds();
      std::optional<Batch> batch = loader.next();
      window_wait += loader.wait_seconds() - wait_before;
      const torch::Tensor ids = batch->input_ids.to(device), mask = batch->attention_mask.to(device);
      const torch::Tensor labels = batch->labels.to(device);
      const torch::Tensor pixels = batch->pixel_values.defined() ? batch->pixel_values.to(device) : torch::Tensor();
      routing_losses.clear();
      torch::Tensor logits = model->forward(ids, mask, pixels);  // (B, T, V)
      const int64_t vocab = logits.size(-1);
      // next-token loss: logits at t predict labels at t + 1; -100 ignored
      torch::Tensor lm = torch::nn::functional::cross_entropy(
          logits.slice(1, 0, -1).reshape({-1, vocab}).to(torch::kFloat32), labels.slice(1, 1).reshape({-1}),
          torch::nn::functional::CrossEntropyFuncOptions().ignore_index(kIgnoreIndex));
      torch::Tensor loss = lm;
      if (!routing_losses.empty()) {
        BalanceLosses aux = sum_over_layers(routing_losses);
        if (aux.total.defined()) loss = loss + aux.total;
        for (const auto& [name, term] : aux.terms) step_aux[name] += term.item<double>() / double(c.grad_accum);
      }
      (loss / double(c.grad_accum)).backward();
      step_loss += loss.item<double>() / double(c.grad_accum);
      step_lm += lm.item<double>() / double(c.grad_accum);
      window_tokens += batch->n_tokens;
      window_samples += batch->size();
    }
    const double norm = grad_norm(optimizer.groups());
    const double lr_multiplier = cosine_with_warmup(step, warmup, total_steps, c.min_lr_ratio);
    if (!std::isfinite(step_loss) || !std::isfinite(norm)) {
      ++bad_streak;
      ++window_bad;
      metrics << json{{"step", step + 1}, {"event", "non_finite"}, {"loss", std::isfinite(step_loss) ? step_loss : -1.0},
                      {"grad_norm", std::isfinite(norm) ? norm : -1.0}, {"streak", bad_streak}}.dump()
              << "\n" << std::flush;
      std::fprintf(stderr, "\nstep %lld: non-finite %s; step skipped (%lld in a row)\n", (long long)(step + 1),
                   std::isfinite(step_loss) ? "gradient" : "loss", (long long)bad_streak);
      optimizer.zero_grad();
      ++step;  // the batches are consumed: the schedule and the data stay in step with an uninterrupted run
      if (bad_streak >= c.max_bad_steps)
        throw TrainingError("stopping: " + std::to_string(bad_streak) +
                            " steps in a row had a non-finite loss or gradient (lower optim.lr, check the data, "
                            "or resume from the last checkpoint in " + checkpoints + ")");
      continue;
    }
    bad_streak = 0;
    clip_grads(optimizer.groups(), norm, c.clip);
    optimizer.step(lr_multiplier);
    optimizer.zero_grad();
    ++step;

    window_loss += step_loss;
    window_lm += step_lm;
    window_norm += norm;
    for (const auto& [name, v] : step_aux) window_aux[name] += v;
    ++window_steps;
    last_loss = step_loss;

    const double elapsed = std::chrono::duration<double>(Clock::now() - run_start).count();
    const double eta = elapsed / double(step - first_step) * double(total_steps - step);
    if (bar) {
      std::fprintf(stderr, "\r[%s] step %lld/%lld loss %.4f lr %.2e %s ETA %s   ", c.stage.c_str(), (long long)step,
                   (long long)total_steps, step_loss, c.lr * lr_multiplier,
                   step_aux.empty() ? "" : ("aux " + std::to_string(step_aux.begin()->second)).c_str(),
                   clock_text(eta).c_str());
      std::fflush(stderr);
    }
    if (step % c.log_every == 0 || step == total_steps) {
      const double seconds = std::chrono::duration<double>(Clock::now() - window_start).count();
      const double n = double(std::max<int64_t>(1, window_steps));
      json aux = json::object();
      for (const auto& [name, v] : window_aux) aux[name] = v / n;
      json line = {{"step", step},
                   {"epoch", double(loader.state().epoch) +
                                 double(loader.state().batch) / double(loader.batches_per_epoch())},
                   {"lr", c.lr * lr_multiplier},
                   {"loss", window_loss / n},
                   {"lm_loss", window_lm / n},
                   {"aux", aux},
                   {"grad_norm", window_norm / n},
                   {"tokens_per_s", double(window_tokens) / seconds},
                   {"samples_per_s", double(window_samples) / seconds},
                   {"data_wait_s", window_wait},
                   {"skipped_steps", window_bad},
                   {"skipped_records", loader.skip_report().total()},
                   {"seconds", elapsed}};
      if (!stats.layers().empty()) {
        line["routing"] = stats.summary_json();
        line["expert_load"] = expert_load(stats);
      }
      metrics << line.dump() << "\n" << std::flush;
      if (lines)
        std::fprintf(stderr, "[%s] step %lld/%lld loss %.4f lr %.2e grad %.3f %.0f tok/s wait %.2fs %s ETA %s\n",
                     c.stage.c_str(), (long long)step, (long long)total_steps, window_loss / n,
                     c.lr * lr_multiplier, window_norm / n, double(window_tokens) / seconds, window_wait,
                     stats.layers().empty() ? "" : stats.summary().c_str(), clock_text(eta).c_str());
      window_loss = window_lm = window_norm = window_wait = 0;
      window_aux.clear();
      window_steps = window_tokens = window_samples = window_bad = 0;
      window_start = Clock::now();
      stats.reset();
    }
    if (c.save_every > 0 && step % c.save_every == 0 && step < total_steps) save_checkpoint();
  }
  std::signal(SIGINT, previous_handler);
  if (bar) std::fprintf(stderr, "\n");
  model->routing_stats = nullptr;
  model->routing_losses = nullptr;
  if (bf16) at::autocast::set_autocast_enabled(device.type(), false);

  result.steps = step;
  result.last_loss = last_loss;
  const SkipReport skipped = loader.skip_report();
  if (skipped.total() > 0)
    std::fprintf(stderr, "skipped records: %lld\n%s", (long long)skipped.total(), skipped.to_text().c_str());
  metrics << json{{"event", result.interrupted ? "interrupted" : result.stopped ? "stopped" : "end"}, {"step", step},
                  {"skipped_records", skipped.to_json()}, {"data_wait_s_total", loader.wait_seconds()}}
                 .dump()
          << "\n" << std::flush;
  if (result.stopped) {
    result.final_dir = save_checkpoint();
    std::fprintf(stderr, "%s at step %lld: checkpoint written to %s (continue with --resume)\n",
                 g_interrupted ? "interrupted" : "stopped (run.stop_after)", (long long)step,
                 result.final_dir.c_str());
    return result;
  }
  save_checkpoint();

  // final/: the model (load_trained reads it) and its user-facing forms
  const std::string final_dir = c.out_dir + "/final";
  const std::string tmp = c.out_dir + "/.final.tmp";
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  fill_checkpoint(tmp, false);
  write_json_file(tmp + "/preprocessor_config.json", built.image_config.to_json());
  if (c.stage == "pretrain") {
    // a whole llava-hf folder: transformers and `mole train` (as a base) read it as it is
    save_llava(tmp, model);
    for (const char* f : {"tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"})
      if (fs::exists(spec.tokenizer + "/" + f)) fs::copy_file(spec.tokenizer + "/" + f, tmp + "/" + f);
  }
  if (c.stage == "align" || (c.stage == "finetune" && c.train_projector)) {
    std::vector<std::pair<std::string, torch::Tensor>> projector;
    for (const auto& [name, p] : trainable)
      if (name.rfind("multi_modal_projector.", 0) == 0) projector.emplace_back(name, p);
    save_safetensors(tmp + "/projector.safetensors", projector);
  }
  if (c.stage == "finetune") {
    AdapterConfig adapter = AdapterConfig::from_json(spec.adapter, "model.json adapter");
    save_adapter(tmp + "/adapter", model, adapter);
    if (adapter.kind == "lora") save_peft_adapter(tmp + "/adapter_peft", model, adapter);
  }
  fs::remove_all(final_dir);
  fs::rename(tmp, final_dir);
  result.final_dir = final_dir;
  std::fprintf(stderr, "done: %lld steps, final loss %.4f, model in %s\n", (long long)step, last_loss,
               final_dir.c_str());
  return result;
}

}  // namespace mole
