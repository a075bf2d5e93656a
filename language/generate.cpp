#include "language/generate.h"

#include <torch/torch.h>

namespace mole {

torch::Tensor generate_greedy(LlamaForCausalLM& lm, const torch::Tensor& inputs_embeds,
                              const torch::Tensor& attention_mask, const GenerateOptions& options) {
  torch::NoGradGuard no_grad;
  int64_t b = inputs_embeds.size(0), t = inputs_embeds.size(1);
  TORCH_CHECK(attention_mask.sizes() == torch::IntArrayRef({b, t}), "generate: attention_mask must be (", b, ", ",
              t, "), got ", attention_mask.sizes());
  TORCH_CHECK((attention_mask.select(1, t - 1) != 0).all().item<bool>(),
              "generate: batched prompts must be left-padded (a row ends with padding)");
  auto device = inputs_embeds.device();
  auto mask = attention_mask.to(torch::kInt64).to(device);
  KVCache cache = lm->make_cache(b, t + options.max_new_tokens);
  auto eos = torch::tensor(options.eos_token_ids, torch::TensorOptions().dtype(torch::kInt64)).to(device);
  auto unfinished = torch::ones({b}, mask.options());  // 1 while a sequence still runs

  auto positions = positions_from_mask(mask);                     // (B, T)
  if (options.before_forward) options.before_forward(mask, /*prefill=*/true);
  auto hidden = lm->model->forward(inputs_embeds, positions, mask, &cache);
  auto next_position = positions.select(1, t - 1) + 1;            // (B)
  std::vector<torch::Tensor> generated;
  for (int64_t step = 0; step < options.max_new_tokens; ++step) {
    auto logits = lm->logits(hidden.select(1, hidden.size(1) - 1));  // (B, V)
    auto next = logits.argmax(-1);                                   // first maximum on ties, as torch.argmax
    // next_tokens = next_tokens * unfinished + pad_token_id * (1 - unfinished)
    next = next * unfinished + options.pad_token_id * (1 - unfinished);
    generated.push_back(next);
    if (eos.numel() > 0) unfinished = unfinished * (1 - torch::isin(next, eos).to(torch::kInt64));
    if (step + 1 == options.max_new_tokens || unfinished.max().item<int64_t>() == 0) break;
    mask = torch::cat({mask, torch::ones({b, 1}, mask.options())}, 1);
    if (options.before_forward) options.before_forward(unfinished.unsqueeze(1), /*prefill=*/false);
    hidden = lm->model->forward(lm->embed(next.unsqueeze(1)), next_position.unsqueeze(1), mask, &cache);
    next_position = next_position + 1;
  }
  return torch::stack(generated, 1);  // (B, N)
}

}  // namespace mole
