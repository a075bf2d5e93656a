#include "model/llava_export.h"

#include <filesystem>
#include <fstream>

#include "core/json_config.h"
#include "model/adapters.h"
#include "model/llava_loader.h"

namespace mole {
namespace fs = std::filesystem;

namespace {

// Jinja string literal for `s` (single quotes; the templates' texts hold no quote or backslash but newlines).
std::string lit(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\n') out += "\\n";
    else if (c == '\'' || c == '\\') out += std::string("\\") + c;
    else out += c;
  }
  return out + "'";
}

// A message's text as mole's records normalise it: a list of parts gives its images first, each "<image>\n"
// (one image: move_image_to_front's "<image>\n" + text), then its texts; a string is used as it is.
const char* kRenderMacro =
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- else -%}"
    "{%- for part in content if part['type'] == 'image' -%}{{- '<image>\\n' -}}{%- endfor -%}"
    "{%- for part in content if part['type'] == 'text' -%}{{- part['text'] -}}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}";

}  // namespace

std::string chat_template_jinja(Template t) {
  // ns.system: a first system message replaces the template's default, as build_segments does
  std::string j = kRenderMacro;
  j += "{%- set ns = namespace(system=" + lit(template_system_prompt(t)) + ", round=0) -%}";
  j += "{%- if messages and messages[0]['role'] == 'system' -%}{%- set ns.system = render(messages[0]['content']) -%}"
       "{%- endif -%}";
  const std::string user_loop = "{%- for m in messages if m['role'] != 'system' -%}";
  switch (t) {
    case Template::kVicunaV1:
      j += "{{- ns.system -}}" + user_loop +
           "{%- if m['role'] == 'user' -%}{{- (' USER: ' if loop.first else 'USER: ') + render(m['content']) + "
           "' ASSISTANT:' -}}"
           "{%- else -%}{{- ' ' + render(m['content']) + '</s>' -}}{%- endif -%}{%- endfor -%}";
      break;
    case Template::kLlavaLlama2:
      j += user_loop +
           "{%- if m['role'] == 'user' -%}{{- ('' if loop.first else '<s>') + '[INST] ' -}}"
           "{%- if loop.first and ns.system -%}{{- '<<SYS>>\\n' + ns.system + '\\n<</SYS>>\\n\\n' -}}{%- endif -%}"
           "{{- render(m['content']) + ' [/INST]' -}}"
           "{%- else -%}{{- ' ' + render(m['content']) + ' </s>' -}}{%- endif -%}{%- endfor -%}";
      break;
    case Template::kPlain:
      // "<image>" per image of the human turn, then the caption and "\n"
      j += user_loop +
           "{%- if m['role'] == 'user' -%}"
           "{%- if m['content'] is string -%}{{- '<image>' * (m['content'].count('<image>')) -}}"
           "{%- else -%}{%- for part in m['content'] if part['type'] == 'image' -%}{{- '<image>' -}}{%- endfor -%}"
           "{%- endif -%}"
           "{%- else -%}{{- render(m['content']) + '\\n' -}}{%- endif -%}{%- endfor -%}";
      break;
    case Template::kMistralInstruct:
      j += user_loop +
           "{%- if m['role'] == 'user' -%}{{- '[INST] ' + (ns.system + '\\n\\n' if loop.first and ns.system else '') + "
           "render(m['content']) + ' [/INST]' -}}"
           "{%- else -%}{{- render(m['content']) + '</s>' -}}{%- endif -%}{%- endfor -%}";
      break;
    case Template::kChatml:
      j += "{{- '<|im_start|>system\\n' + ns.system + '<|im_end|>\\n' -}}" + user_loop +
           "{%- if m['role'] == 'user' -%}{{- '<|im_start|>user\\n' + render(m['content']) + "
           "'<|im_end|>\\n<|im_start|>assistant\\n' -}}"
           "{%- else -%}{{- render(m['content']) + '<|im_end|>\\n' -}}{%- endif -%}{%- endfor -%}";
      break;
    case Template::kLlama3:
      j += "{{- '<|begin_of_text|>' -}}"
           "{%- if ns.system -%}{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + ns.system | trim + "
           "'<|eot_id|>' -}}{%- endif -%}" +
           user_loop +
           "{%- if m['role'] == 'user' -%}{{- '<|start_header_id|>user<|end_header_id|>\\n\\n' + "
           "render(m['content']) | trim + '<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}"
           "{%- else -%}{{- render(m['content']) | trim + '<|eot_id|>' -}}{%- endif -%}{%- endfor -%}";
      break;
  }
  return j;
}

void write_processor_files(const std::string& dir, const LlavaConfig& config, const ImageProcessorConfig& images,
                           Template t, const Tokenizer& tokenizer) {
  const std::string tokenizer_dir = fs::path(tokenizer.source()).parent_path().string();
  json pre = images.to_json();
  // LlavaImageProcessor pads to a square with the mean colour (LLaVA-1.5's expand2square) when do_pad
  pre["image_processor_type"] = "LlavaImageProcessor";
  pre["do_pad"] = images.pad_to_square;
  pre.erase("pad_to_square");
  pre["processor_class"] = "LlavaProcessor";
  write_json_file(dir + "/preprocessor_config.json", pre);
  // LlavaProcessor: image tokens = (size / patch)^2 + num_additional_image_tokens, minus 1 with "default"
  write_json_file(dir + "/processor_config.json",
                  {{"processor_class", "LlavaProcessor"},
                   {"image_token", "<image>"},
                   {"patch_size", config.vision.patch_size},
                   {"vision_feature_select_strategy", config.vision_feature_select_strategy},
                   {"num_additional_image_tokens", 1}});  // CLIP's class embedding
  {
    std::ofstream out(dir + "/chat_template.jinja", std::ios::binary);
    out << chat_template_jinja(t);
    if (!out) throw std::runtime_error(dir + "/chat_template.jinja: cannot write");
  }
  for (const char* f : {"tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                        "tokenizer.json"})
    if (fs::exists(tokenizer_dir + "/" + f)) fs::copy_file(tokenizer_dir + "/" + f, dir + "/" + f);
  const Tokenizer source = Tokenizer::load(tokenizer_dir);
  if (tokenizer.vocab_size() > source.vocab_size()) tokenizer.write_added_tokens(dir);  // grown by build_model
  // transformers 5 reads a llava folder's tokenizer through tokenizer.json (TokenizersBackend): write the one
  // LlamaTokenizer would convert to when the tokenizer folder has none (mole's own tokenizers)
  if (!fs::exists(dir + "/tokenizer.json") && fs::exists(dir + "/tokenizer.model"))
    write_json_file(dir + "/tokenizer.json", tokenizer.hf_tokenizer_json());
}

ExportResult export_model(const std::string& path, const std::string& out, bool merge) {
  if (fs::exists(out)) throw ConfigError(out + ": exists already; export into a new folder");
  TrainedModel m = load_trained(path);
  const bool has_adapter = m.spec.adapter.is_object();
  const AdapterConfig adapter = has_adapter ? AdapterConfig::from_json(m.spec.adapter, m.source + "/model.json")
                                            : AdapterConfig();
  if (has_adapter && adapter.kind == AdapterKind::kMole && merge)
    throw ConfigError(path + ": a MoLE adapter routes every token to its own experts and cannot be merged into the "
                             "weights; export without --merge (llava-hf base + mole_adapter/)");
  const std::string tmp = out + ".tmp";
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  ExportResult result;
  result.out = out;
  if (has_adapter && adapter.kind == AdapterKind::kLora && !merge) {
    result.form = "peft";
    AdapterConfig peft = adapter;
    if (peft.base_model.empty()) peft.base_model = fs::absolute(m.spec.base).string();
    save_peft_adapter(tmp, m.model, peft, /*with_projector=*/true);
  } else {
    if (has_adapter && adapter.kind == AdapterKind::kLora) {
      // W <- W + s B A in every adapted Linear, then the adapters go: a plain llava-hf model
      for (auto& item : m.model->named_modules()) {
        auto* linear = item.value()->as<LinearImpl>();
        if (linear && linear->adapter) linear->fold_adapter();
      }
    }
    save_llava(tmp, m.model);  // adapters (MoLE) are not part of it
    result.form = "llava-hf";
    if (has_adapter && adapter.kind == AdapterKind::kMole) {
      save_adapter(tmp + "/mole_adapter", m.model, adapter);
      result.form = "llava-hf + mole_adapter";
    }
  }
  write_processor_files(tmp, m.model->config, m.image_config, m.conversation_template, *m.tokenizer);
  fs::rename(tmp, out);
  return result;
}

}  // namespace mole
