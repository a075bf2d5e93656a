// Test helper: the smallest LLaVA config the model tests build by hand (8 px images of 4 px patches: 4 image tokens,
// 2 + 2 layers of width 16, grouped-query attention, a 40-token vocabulary with the image token last).
#pragma once

#include "model/llava.h"

namespace mole::test {

inline LlavaConfig tiny_llava_config() {
  LlavaConfig c;
  c.vision.hidden_size = 16;
  c.vision.intermediate_size = 32;
  c.vision.n_layers = 2;
  c.vision.n_heads = 2;
  c.vision.image_size = 8;
  c.vision.patch_size = 4;
  c.text.hidden_size = 16;
  c.text.intermediate_size = 32;
  c.text.n_layers = 2;
  c.text.n_heads = 4;
  c.text.n_kv_heads = 2;
  c.text.head_dim = 4;
  c.text.vocab_size = 40;
  c.image_token_index = 39;
  return c;
}

}  // namespace mole::test
