// LLaVA conversation templates: a conversation (LLaVA JSON turns) -> input_ids and labels, with the image
// placeholder expanded to one id per image feature, only the assistant's tokens supervised.
//
// Reference: LLaVA llava/conversation.py (conv_vicuna_v1, conv_llava_llama_2, conv_llava_plain and
// Conversation.get_prompt) and llava/train/train.py (preprocess_multimodal, preprocess_v1,
// preprocess_llama_2, preprocess_plain, tokenizer_image_token).
//
// Prompts (BOS first; <image> is one tag, expanded to n_image_tokens ids):
//   vicuna_v1:     "{system} USER: <image>\n{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>"
//   llava_llama_2: "[INST] <<SYS>>\n{system}\n<</SYS>>\n\n<image>\n{q1} [/INST] {a1} </s><s>[INST] {q2} [/INST] {a2} </s>"
//   plain:         "<image>{caption}\n"   (the human text is dropped, one <image> per tag it had; stage-1
//                  projector alignment)
//   mistral_instruct: "[INST] <image>\n{q1} [/INST]{a1}</s>[INST] {q2} [/INST]{a2}</s>"
//   chatml (no BOS): "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n<image>\n{q1}<|im_end|>\n
//                    <|im_start|>assistant\n{a1}<|im_end|>\n..."
//   llama3 (no BOS of its own): "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{q1}<|eot_id|>
//                    <|start_header_id|>assistant<|end_header_id|>\n\n{a1}<|eot_id|>..." (contents stripped)
// The last three follow the models' own chat templates (tokenizer_config.json "chat_template" of
// Mistral-7B-Instruct-v0.2, Qwen2-Instruct, Meta-Llama-3-Instruct; tests/reference/check_chat_templates.py
// renders them with transformers and compares the strings).
// Supervised (label = id): each answer, its end-of-turn "</s>" (and for llava_llama_2 the " " before it;
// <|im_end|> for chatml, <|eot_id|> for llama3), and for plain the caption with its "\n". Everything else is -100: BOS, system prompt, role tags, user turns,
// the image block, llava_llama_2's "<s>" that opens a later round.
//
// How segments are encoded so that the concatenation equals encoding the whole prompt string: the ids are
// built segment by segment (the labels then follow the segments exactly), each cut placed where
// sentencepiece cannot join pieces across it:
//   - special tokens (<s>, </s>, <image>) cut the string anyway: the text after one is encoded on its own
//     with the dummy prefix, exactly as the legacy tokenizer does with the whole string;
//   - the cut between a user segment and its answer is put before the space that separates them
//     ("...ASSISTANT:" | " A cat."), and the answer is encoded with Tokenizer::encode_no_prefix: LLaMA-style
//     models are trained with split_by_whitespace, so no piece starts before a space and continues after it.
// So for every template encode(prompt_text(...), true) == tokenize_conversation(..., n_image_tokens=1, 0)
// .input_ids, with no exception; the tests check it. (Cutting after the space instead, "...ASSISTANT: " |
// "A cat.", could not match: the space would end the first segment as a lone "▁" while the whole string has
// "▁A".)
//
// LLaVA's own masking differs: preprocess_v1 re-tokenizes each round and the text before the answer and
// subtracts constants (-2 for the BOS and the trailing "▁" of "ASSISTANT: "). That is right only for legacy
// tokenizers, which add the dummy prefix after "</s>"; with legacy=False (tokenizers >= 0.14) every round
// after the first is one token off, which LLaVA patched with `if i != 0 and not tokenizer.legacy and
// IS_TOKENIZER_GREATER_THAN_0_14: round_len -= 1; instruction_len -= 1`, and any leftover mismatch masks the
// whole sample ("WARNING: tokenization mismatch", trained with zero loss). Here labels come from the segments
// themselves, so there is nothing to line up; the tokenizer is the legacy one.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/fields.h"
#include "language/tokenizer.h"

namespace mole {

constexpr int64_t kIgnoreIndex = -100;  // label of an unsupervised position (PyTorch's cross-entropy default)

enum class Template { kVicunaV1, kLlavaLlama2, kPlain, kMistralInstruct, kChatml, kLlama3 };
template <>
// vicuna_v1 (also llava_v1, v1) | llava_llama_2 | plain | mistral_instruct | chatml | llama3
const EnumTable<Template>& enum_table<Template>();

Template parse_template(const std::string& name);  // through the table; an unknown name is a ConfigError
std::string template_name(Template t);
std::string template_system_prompt(Template t);  // the default system text ("" for plain, mistral_instruct, llama3)
// Whether the ids start with the tokenizer's BOS; chatml has none, llama3 writes <|begin_of_text|> itself.
bool template_adds_bos(Template t);
// The added tokens the template's text uses (chatml: <|im_start|> <|im_end|>; llama3: <|begin_of_text|>
// <|start_header_id|> <|end_header_id|> <|eot_id|>); tokenize_conversation refuses a tokenizer without them.
std::vector<std::string> template_special_tokens(Template t);
// Ids generation stops at: eos, and the template's end of turn (<|im_end|>, <|eot_id|>) when the tokenizer has it.
std::vector<int64_t> template_stop_ids(Template t, const Tokenizer& tokenizer);

// One turn of a LLaVA record: role "human", "gpt" or "system" (the JSON's "from"), text its "value". A "system"
// turn may only come first; its text replaces the template's system prompt (vicuna_v1's opening sentence,
// llava_llama_2's <<SYS>> block, which an empty text leaves out; plain has none).
struct Turn {
  std::string role;
  std::string text;
};

struct TokenizedSample {
  std::vector<int64_t> input_ids;  // BOS first; each <image> expanded to n_image_tokens image ids
  std::vector<int64_t> labels;     // same length; kIgnoreIndex where not supervised
  int64_t n_supervised = 0;        // labels != kIgnoreIndex
  bool truncated = false;          // cut to max_len
  // Empty when the sample can be trained on. Otherwise the caller skips the sample and counts it:
  // "unknown role 'x'", "roles do not alternate human/gpt (turn N is 'x')", "no assistant turn",
  // "plain template takes one human and one gpt turn", "image does not fit in max_len",
  // "no supervised tokens after truncation".
  std::string problem;
};

// "<image>" occurrences over all turns, before any normalisation; the caller checks it against the record's
// images (LLaVA-1.5 records have at most one).
int64_t count_image_tags(const std::vector<Turn>& turns);

// LLaVA's preprocess_multimodal on one turn's text: a text containing one "<image>" has it removed, is
// stripped, and becomes "<image>\n" + text, stripped again (so a turn that was only "<image>" stays
// "<image>"). Other texts, a turn with several tags among them (interleaved images, as LLaVA-OneVision keeps
// them), are returned unchanged.
std::string move_image_to_front(const std::string& text);

// The prompt string of the template (with one "<image>" tag where the image goes): what LLaVA's
// Conversation.get_prompt() returns for these turns. Throws ConfigError on turns tokenize_conversation
// would report (for tests and logs; training uses tokenize_conversation).
std::string prompt_text(const std::vector<Turn>& turns, Template t);

// The conversation -> ids and labels. Turns are normalised with move_image_to_front (every turn, as LLaVA
// does); a trailing human turn without an answer is dropped (it could carry no supervised token). Each image
// becomes n_image_tokens copies of tokenizer.image_token_id(). Truncation happens after the expansion: the
// sequence is cut to max_len tokens (max_len <= 0: no limit); an image block is never cut or dropped: a
// sample whose image would not fit entirely is reported instead. Throws TokenizerError when the turns carry
// an image and the tokenizer has no <image> token.
TokenizedSample tokenize_conversation(const std::vector<Turn>& turns, const Tokenizer& tokenizer, Template t,
                                      int64_t n_image_tokens, int64_t max_len);

}  // namespace mole
