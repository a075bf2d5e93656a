// Taking a trained model out of mole in the forms the Python stack runs (`mole export`):
//   - a llava-hf folder transformers loads as it is: config.json + model.safetensors (LoRA merged into the
//     weights, the trained projector in), the tokenizer files, preprocessor_config.json (LlavaImageProcessor with
//     do_pad, LLaVA-1.5's expand2square), processor_config.json (patch_size, vision_feature_select_strategy,
//     num_additional_image_tokens, image_token) and chat_template.jinja, a Jinja rendering of mole's conversation
//     template, so LlavaProcessor.apply_chat_template gives the prompt mole trains and answers with;
//   - for plain LoRA without merging, a PEFT adapter folder (the projector as modules_to_save) plus the processor
//     files, to load on the base with PeftModel.from_pretrained;
//   - for MoLE, which no transformers module runs (routing is per token), the llava-hf folder of the base with
//     the trained projector, plus mole_adapter/ (mole's adapter format) that `mole generate|eval-vqa|routes
//     --adapter` put on it.
// Reference: transformers models/llava/processing_llava.py (LlavaProcessor) and image_processing_llava.py;
// peft utils/save_and_load.py (get_peft_model_state_dict: how modules_to_save keys are written).
#pragma once

#include <string>
#include <vector>

#include "language/conversation.h"
#include "model/trained_model.h"

namespace mole {

// A Jinja chat template whose render of a conversation (messages with string contents, or lists of
// {"type": "image"} / {"type": "text"} parts, images first) is the prompt string prompt_text() makes; with a
// final user message it ends where generation starts.
std::string chat_template_jinja(Template t);

// Writes the processor's files into `dir`: preprocessor_config.json, processor_config.json, chat_template.jinja,
// and the tokenizer's files: those of its folder (tokenizer.model, tokenizer_config.json, special_tokens_map.json,
// added_tokens.json, tokenizer.json where they exist), with the tokens build_model added to a stock tokenizer, and
// a tokenizer.json made from tokenizer.model when there is none.
void write_processor_files(const std::string& dir, const LlavaConfig& config, const ImageProcessorConfig& images,
                           Template t, const Tokenizer& tokenizer);

struct ExportResult {
  std::string form;    // "llava-hf" | "peft" | "llava-hf + mole_adapter"
  std::string out;
};

// Exports the model at `path` (a run, checkpoint or final folder) into `out`, which must not exist (it is written
// as out.tmp and renamed). merge: plain LoRA folded into the weights (a llava-hf folder); without it a LoRA run
// gives a PEFT folder. Runs without adapters always give a llava-hf folder; MoLE runs refuse --merge.
ExportResult export_model(const std::string& path, const std::string& out, bool merge);

}  // namespace mole
