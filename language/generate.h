// Greedy decoding with the KV cache, as transformers' generate(do_sample=False, num_beams=1) does it:
// prefill the prompt once, then one token per step; a sequence that produced an end token gets pad tokens
// after it; stop when every sequence ended or max_new_tokens were made.
// Batched prompts must be left-padded (the last column is every row's last prompt token).
//
// B=batch T=prompt tokens D=hidden N=new tokens
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include <torch/types.h>

#include "language/llama_decoder.h"

namespace mole {

struct GenerateOptions {
  int64_t max_new_tokens = 128;      // LLaVA's eval default
  std::vector<int64_t> eos_token_ids;  // empty: never stop early
  int64_t pad_token_id = 0;          // written after a sequence has ended
  // Called before each forward with the new tokens' mask (B, T_new; 1 = real token) and whether it is the
  // prompt (prefill) or a generated token; lets a caller label the tokens (e.g. for routing statistics).
  std::function<void(const torch::Tensor& new_tokens_mask, bool prefill)> before_forward;
};

// inputs_embeds (B, T, D) (image features already merged), attention_mask (B, T) -> new token ids (B, N),
// N <= max_new_tokens.
torch::Tensor generate_greedy(LlamaForCausalLM& lm, const torch::Tensor& inputs_embeds,
                              const torch::Tensor& attention_mask, const GenerateOptions& options);

}  // namespace mole
