// No wasted work in a training step: the frozen parts (vision tower, a frozen projector, the layers before the
// first adapter) carry no autograd graph, and freezing them leaves the trainable gradients as they were; the
// vision tower runs once per step on all of the batch's images, and never backward when it is frozen.
#include <catch2/catch.hpp>

#include <map>
#include <mutex>
#include <string>
#include <vector>

#include <ATen/record_function.h>
#include <torch/torch.h>

#include "language/conversation.h"
#include "model/adapters.h"
#include "model/llava.h"
#include "tests/model/tiny_llava.h"
#include "tests/test_util.h"

using namespace mole;
using mole::test::max_abs_diff;

namespace {

// Two rows, each with one image (4 placeholders at positions 1..4), text supervised after the image.
struct Inputs {
  torch::Tensor ids, mask, labels, pixels;
};

Inputs make_inputs() {
  torch::manual_seed(5);
  Inputs in;
  in.ids = torch::randint(1, 39, {2, 12}, torch::kInt64);
  in.ids.narrow(1, 1, 4).fill_(39);
  in.mask = torch::ones_like(in.ids);
  in.labels = in.ids.clone();
  in.labels.narrow(1, 0, 6).fill_(kIgnoreIndex);
  in.pixels = torch::randn({2, 3, 8, 8});
  return in;
}

// A tiny LLaVA with adapters on language layer 1 only (layer 0 stays frozen), B random so every adapter matters.
Llava adapted_llava(AdapterKind kind) {
  torch::manual_seed(11);
  Llava model(mole::test::tiny_llava_config());
  AdapterConfig config;
  config.kind = kind;
  config.layers = {1};
  config.mole.n_experts(4).rank(2).alpha(4.0).dropout(0.0);
  attach_adapters(model, config);
  torch::NoGradGuard no_grad;
  for (auto& p : model->parameters())
    if (p.requires_grad()) p.normal_(0.0, 0.3);
  model->train();
  return model;
}

torch::Tensor loss_of(Llava& model, const Inputs& in, LlavaTrace* trace = nullptr) {
  auto hidden = model->hidden(in.ids, in.mask, in.pixels, {}, nullptr, trace);
  return model->language_model->next_token_loss(hidden, in.labels);
}

std::vector<torch::Tensor> grads_of(const torch::Tensor& loss, const std::vector<torch::Tensor>& params) {
  return torch::autograd::grad({loss}, params, {}, true);
}

// Counts the calls of every operator (on every thread) while it lives, and the batch size of each op's last call.
// RecordFunction takes a plain function pointer, hence the static state; one counter at a time.
class OpCounter {
 public:
  OpCounter() {
    std::lock_guard<std::mutex> lock(mutex_);
    calls_.clear();
    batch_.clear();
    handle_ = at::addGlobalCallback(at::RecordFunctionCallback(&OpCounter::on_start)
                                        .needsInputs(true)
                                        .scopes({at::RecordScope::FUNCTION, at::RecordScope::BACKWARD_FUNCTION}));
  }
  ~OpCounter() { at::removeCallback(handle_); }
  OpCounter(const OpCounter&) = delete;
  OpCounter& operator=(const OpCounter&) = delete;
  int calls(const std::string& op) const {
    std::lock_guard<std::mutex> lock(mutex_);
    return calls_.count(op) ? calls_.at(op) : 0;
  }
  int64_t batch(const std::string& op) const {
    std::lock_guard<std::mutex> lock(mutex_);
    return batch_.count(op) ? batch_.at(op) : -1;
  }

 private:
  static std::unique_ptr<at::ObserverContext> on_start(const at::RecordFunction& fn) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::string name = fn.name();
    ++calls_[name];
    auto inputs = fn.inputs();
    if (!inputs.empty() && inputs[0].isTensor() && inputs[0].toTensor().dim() > 0)
      batch_[name] = inputs[0].toTensor().size(0);
    return nullptr;
  }
  static inline std::mutex mutex_;
  static inline std::map<std::string, int> calls_;
  static inline std::map<std::string, int64_t> batch_;
  at::CallbackHandle handle_;
};

}  // namespace

TEST_CASE("frozen parts build no autograd graph, and freezing them leaves the trainable gradients as they were",
          "[unit][model]") {
  for (AdapterKind kind : {AdapterKind::kLora, AdapterKind::kMole}) {
    DYNAMIC_SECTION("adapters " << enum_name(kind)) {
      Llava model = adapted_llava(kind);
      Inputs in = make_inputs();
      std::vector<torch::Tensor> trainable;
      for (auto& p : model->parameters())
        if (p.requires_grad()) trainable.push_back(p);

      LlavaTrace trace;
      auto loss = loss_of(model, in, &trace);
      for (const auto& s : trace.vision_hidden_states) CHECK_FALSE(s.requires_grad());
      CHECK_FALSE(trace.image_features.requires_grad());  // the projector is frozen too
      REQUIRE(trace.hidden_states.size() == 3);            // embeddings, after layer 0, after layer 1
      CHECK_FALSE(trace.hidden_states[0].requires_grad());
      CHECK_FALSE(trace.hidden_states[1].requires_grad());  // layer 0 has no adapter
      CHECK(trace.hidden_states[2].requires_grad());
      auto want = grads_of(loss, trainable);

      // the same model with every base parameter trainable: the full graph, the same loss and adapter gradients
      for (auto& p : model->parameters()) p.set_requires_grad(true);
      auto full = loss_of(model, in);
      CHECK(full.item<double>() == loss.item<double>());
      auto got = grads_of(full, trainable);
      for (size_t i = 0; i < want.size(); ++i) CHECK(max_abs_diff(got[i], want[i]) < 1e-6);
    }
  }
}

TEST_CASE("a step runs the vision tower once on all of its images, and not backward when it is frozen",
          "[unit][model]") {
  Llava model = adapted_llava(AdapterKind::kMole);
  Inputs in = make_inputs();
  for (auto& p : model->multi_modal_projector->parameters()) p.set_requires_grad(true);  // the pretrain stage's
  OpCounter ops;
  auto loss = loss_of(model, in);
  loss.backward();
  CHECK(ops.calls("aten::conv2d") == 1);  // the patch embedding: once per step, on every image of the batch
  CHECK(ops.batch("aten::conv2d") == in.pixels.size(0));
  CHECK(ops.calls("aten::convolution_backward") == 0);
  CHECK(ops.calls("aten::mm") > 0);  // the counter does see the step's operators
  CHECK(model->multi_modal_projector->parameters()[0].grad().defined());
}
