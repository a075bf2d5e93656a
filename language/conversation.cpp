#include "language/conversation.h"

#include <algorithm>

#include "core/json_config.h"

namespace mole {
namespace {

const std::string kImageTag = "<image>";

// LLaVA conversation.py: conv_vicuna_v1.system and conv_llava_llama_2.system.
const std::string kVicunaSystem =
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions.";
// Qwen2's chat template: the system turn it adds when a conversation has none.
const std::string kChatmlSystem = "You are a helpful assistant.";
const std::string kLlavaLlama2System =
    "You are a helpful language and vision assistant. You are able to understand the visual content that the "
    "user provides, and assist the user with a variety of tasks using natural language.";

// One piece of the prompt, encoded on its own. kText: Tokenizer::encode (dummy prefix: it starts the string
// or follows a special token); kContinuation: Tokenizer::encode_no_prefix (it continues the text before
// it, starting with the space that separates them); kBos / kEos: that single id.
struct Segment {
  enum Kind { kText, kContinuation, kBos, kEos };
  Kind kind;
  std::string text;  // as it appears in the prompt string ("<s>" / "</s>" for kBos / kEos)
  bool supervised;
};

// Python's str.strip() for ASCII whitespace.
std::string strip(const std::string& s) {
  const char* ws = " \t\n\r\v\f";
  size_t begin = s.find_first_not_of(ws);
  if (begin == std::string::npos) return "";
  size_t end = s.find_last_not_of(ws);
  return s.substr(begin, end - begin + 1);
}

// Checks the roles and lays the conversation out as segments; returns the problem, "" when fine.
std::string build_segments(const std::vector<Turn>& all_turns, Template t, std::vector<Segment>* segments) {
  // A first "system" turn replaces the template's system text (LLaVA: conv.system = ...).
  std::string system = template_system_prompt(t);
  const size_t first = !all_turns.empty() && all_turns[0].role == "system" ? 1 : 0;
  if (first) system = all_turns[0].text;
  const std::vector<Turn> turns(all_turns.begin() + std::ptrdiff_t(first), all_turns.end());
  for (size_t i = 0; i < turns.size(); ++i) {
    const std::string& role = turns[i].role;
    if (role == "system") return "a system turn after the first (turn " + std::to_string(i + first) + ")";
    if (role != "human" && role != "gpt") return "unknown role '" + role + "'";
    if (role != (i % 2 == 0 ? "human" : "gpt"))
      return "roles do not alternate human/gpt (turn " + std::to_string(i + first) + " is '" + role + "')";
  }
  size_t n_rounds = turns.size() / 2;  // a trailing human turn without an answer is dropped
  if (n_rounds == 0) return "no assistant turn";
  std::vector<std::string> texts;
  for (size_t i = 0; i < 2 * n_rounds; ++i) texts.push_back(move_image_to_front(turns[i].text));

  auto add = [&](Segment::Kind kind, std::string text, bool supervised) {
    segments->push_back({kind, std::move(text), supervised});
  };
  switch (t) {
    case Template::kPlain:
      // preprocess_plain: source[0]['value'] = DEFAULT_IMAGE_TOKEN; conversation = image + caption + sep.
      // Without an image the prompt is empty (text-only captioning).
      if (turns.size() != 2) return "plain template takes one human and one gpt turn";
      for (int64_t k = count_image_tags({turns[0]}); k > 0; --k) add(Segment::kText, kImageTag, false);
      add(Segment::kText, texts[1] + "\n", true);
      break;
    case Template::kVicunaV1:
      // get_prompt (SeparatorStyle.TWO): system + " " + "USER: " + q + " " + "ASSISTANT: " + a + "</s>" ...
      for (size_t r = 0; r < n_rounds; ++r) {
        std::string user = r == 0 ? system + " " : "";
        add(Segment::kText, user + "USER: " + texts[2 * r] + " ASSISTANT:", false);
        add(Segment::kContinuation, " " + texts[2 * r + 1], true);
        add(Segment::kEos, "</s>", true);
      }
      break;
    case Template::kMistralInstruct:
      // Mistral-7B-Instruct's chat template: "[INST] " + q + " [/INST]" then a + eos; later rounds follow the
      // </s> directly. Its template has no system role: a system text goes before the first question (+ "\n\n").
      for (size_t r = 0; r < n_rounds; ++r) {
        std::string sys = r == 0 && !system.empty() ? system + "\n\n" : "";
        add(Segment::kText, "[INST] " + sys + texts[2 * r] + " [/INST]", false);
        add(Segment::kContinuation, texts[2 * r + 1], true);
        add(Segment::kEos, "</s>", true);
      }
      break;
    case Template::kChatml: {
      // Qwen2's chat template: "<|im_start|>" + role + "\n" + content + "<|im_end|>\n" per message, the system
      // one first. Supervised: the answer and its <|im_end|> (the "\n" after it opens the next message).
      std::string text = "<|im_start|>system\n" + system + "<|im_end|>\n";
      for (size_t r = 0; r < n_rounds; ++r) {
        text += "<|im_start|>user\n" + texts[2 * r] + "<|im_end|>\n<|im_start|>assistant\n";
        add(Segment::kText, text, false);
        add(Segment::kContinuation, texts[2 * r + 1], true);
        add(Segment::kText, "<|im_end|>", true);
        text = "\n";
      }
      add(Segment::kText, text, false);
      break;
    }
    case Template::kLlama3: {
      // Meta-Llama-3-Instruct's chat template: bos, then per message "<|start_header_id|>" + role +
      // "<|end_header_id|>\n\n" + content | trim + "<|eot_id|>". Supervised: the answer and its <|eot_id|>.
      auto header = [](const std::string& role) { return "<|start_header_id|>" + role + "<|end_header_id|>\n\n"; };
      std::string text = "<|begin_of_text|>";
      if (!system.empty()) text += header("system") + strip(system) + "<|eot_id|>";
      for (size_t r = 0; r < n_rounds; ++r) {
        text += header("user") + strip(texts[2 * r]) + "<|eot_id|>" + header("assistant");
        add(Segment::kText, text, false);
        add(Segment::kContinuation, strip(texts[2 * r + 1]), true);
        add(Segment::kText, "<|eot_id|>", true);
        text.clear();
      }
      break;
    }
    case Template::kLlavaLlama2:
      // get_prompt (SeparatorStyle.LLAMA_2): "[INST] " + wrap_sys(system) + q + " [/INST]" then
      // " " + a + " " + "</s>"; later rounds open with sep "<s>".
      for (size_t r = 0; r < n_rounds; ++r) {
        if (r > 0) add(Segment::kBos, "<s>", false);
        // wrap_sys: an empty system text leaves no <<SYS>> block
        std::string sys = r == 0 && !system.empty() ? "<<SYS>>\n" + system + "\n<</SYS>>\n\n" : "";
        add(Segment::kText, "[INST] " + sys + texts[2 * r] + " [/INST]", false);
        add(Segment::kContinuation, " " + texts[2 * r + 1] + " ", true);
        add(Segment::kEos, "</s>", true);
      }
      break;
  }
  return "";
}

}  // namespace

// llava_v1 and v1 are LLaVA's own names for vicuna_v1 (conversation.py's conv_templates); the first name is the
// one mole writes.
MOLE_ENUM_NAMES(Template, "conversation template", {Template::kVicunaV1, "vicuna_v1"},
                {Template::kVicunaV1, "llava_v1"}, {Template::kVicunaV1, "v1"},
                {Template::kLlavaLlama2, "llava_llama_2"}, {Template::kPlain, "plain"},
                {Template::kMistralInstruct, "mistral_instruct"}, {Template::kChatml, "chatml"},
                {Template::kLlama3, "llama3"})

Template parse_template(const std::string& name) { return parse_enum<Template>(name); }
std::string template_name(Template t) { return enum_name(t); }

std::string template_system_prompt(Template t) {
  switch (t) {
    case Template::kVicunaV1: return kVicunaSystem;
    case Template::kLlavaLlama2: return kLlavaLlama2System;
    case Template::kChatml: return kChatmlSystem;
    case Template::kPlain:
    case Template::kMistralInstruct:
    case Template::kLlama3: return "";
  }
  return "";
}

bool template_adds_bos(Template t) { return t != Template::kChatml && t != Template::kLlama3; }

std::vector<std::string> template_special_tokens(Template t) {
  switch (t) {
    case Template::kChatml: return {"<|im_start|>", "<|im_end|>"};
    case Template::kLlama3: return {"<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"};
    default: return {};
  }
}

std::vector<int64_t> template_stop_ids(Template t, const Tokenizer& tokenizer) {
  std::vector<int64_t> ids = {tokenizer.eos_id()};
  const std::string end_of_turn = t == Template::kChatml ? "<|im_end|>" : t == Template::kLlama3 ? "<|eot_id|>" : "";
  if (!end_of_turn.empty() && tokenizer.token_to_id(end_of_turn) >= 0) ids.push_back(tokenizer.token_to_id(end_of_turn));
  ids.erase(std::remove(ids.begin(), ids.end(), int64_t(-1)), ids.end());
  return ids;
}

int64_t count_image_tags(const std::vector<Turn>& turns) {
  int64_t n = 0;
  for (const auto& turn : turns)
    for (size_t at = turn.text.find(kImageTag); at != std::string::npos;
         at = turn.text.find(kImageTag, at + kImageTag.size()))
      ++n;
  return n;
}

std::string move_image_to_front(const std::string& text) {
  // LLaVA-OneVision's preprocess_multimodal moves a tag only when the turn has exactly one: the tags of a turn
  // with several images (interleaved records) stay where they are, in order.
  if (count_image_tags({{"", text}}) != 1) return text;
  // sentence['value'].replace(DEFAULT_IMAGE_TOKEN, '').strip(); DEFAULT_IMAGE_TOKEN + '\n' + ...; .strip()
  std::string rest;
  size_t from = 0;
  for (size_t at = text.find(kImageTag); at != std::string::npos; at = text.find(kImageTag, from)) {
    rest += text.substr(from, at - from);
    from = at + kImageTag.size();
  }
  rest += text.substr(from);
  return strip(kImageTag + "\n" + strip(rest));
}

std::string prompt_text(const std::vector<Turn>& turns, Template t) {
  std::vector<Segment> segments;
  std::string problem = build_segments(turns, t, &segments);
  if (!problem.empty()) throw ConfigError("conversation: " + problem);
  std::string text;
  for (const auto& s : segments) text += s.text;
  return text;
}

TokenizedSample tokenize_conversation(const std::vector<Turn>& turns, const Tokenizer& tokenizer, Template t,
                                      int64_t n_image_tokens, int64_t max_len) {
  TokenizedSample sample;
  std::vector<Segment> segments;
  sample.problem = build_segments(turns, t, &segments);
  if (!sample.problem.empty()) return sample;

  const int64_t image_id = tokenizer.image_token_id();
  for (const std::string& token : template_special_tokens(t))
    if (!tokenizer.is_added_token(token))
      throw TokenizerError(tokenizer.source() + ": template " + template_name(t) + " needs the special token " +
                           token + ", which the tokenizer does not have as an added token");
  std::vector<int64_t> ids, labels;
  if (template_adds_bos(t)) {
    ids.push_back(tokenizer.bos_id());
    labels.push_back(kIgnoreIndex);
  }
  for (const auto& s : segments) {
    std::vector<int64_t> piece;
    switch (s.kind) {
      case Segment::kText: piece = tokenizer.encode(s.text, false); break;
      case Segment::kContinuation: piece = tokenizer.encode_no_prefix(s.text); break;
      case Segment::kBos: piece = {tokenizer.bos_id()}; break;
      case Segment::kEos: piece = {tokenizer.eos_id()}; break;
    }
    for (int64_t id : piece) {
      ids.push_back(id);
      labels.push_back(s.supervised && id != image_id ? id : kIgnoreIndex);
    }
  }

  // Image expansion: one image id per image feature, never supervised.
  bool has_image_tag = false;
  for (const auto& s : segments) has_image_tag = has_image_tag || s.text.find(kImageTag) != std::string::npos;
  if (has_image_tag && image_id < 0)
    throw TokenizerError(tokenizer.source() + ": the conversation has an <image> but the tokenizer has no "
                                              "<image> token (added_tokens.json / tokenizer_config.json)");
  if (has_image_tag && n_image_tokens < 1)
    throw TokenizerError("tokenize_conversation: n_image_tokens must be >= 1 (got " +
                         std::to_string(n_image_tokens) + ")");
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] == image_id) {
      for (int64_t k = 0; k < n_image_tokens; ++k) {
        sample.input_ids.push_back(image_id);
        sample.labels.push_back(kIgnoreIndex);
      }
    } else {
      sample.input_ids.push_back(ids[i]);
      sample.labels.push_back(labels[i]);
    }
  }

  // Truncation after the expansion; an image is never cut or left out.
  if (max_len > 0 && static_cast<int64_t>(sample.input_ids.size()) > max_len) {
    sample.truncated = true;
    bool image_cut = std::find(sample.input_ids.begin() + max_len, sample.input_ids.end(), image_id) !=
                     sample.input_ids.end();
    sample.input_ids.resize(max_len);
    sample.labels.resize(max_len);
    if (image_cut && image_id >= 0) {
      sample.problem = "image does not fit in max_len";
      return sample;
    }
  }
  sample.n_supervised = std::count_if(sample.labels.begin(), sample.labels.end(),
                                      [](int64_t label) { return label != kIgnoreIndex; });
  if (sample.n_supervised == 0)
    sample.problem = sample.truncated ? "no supervised tokens after truncation" : "no supervised tokens";
  return sample;
}

}  // namespace mole
