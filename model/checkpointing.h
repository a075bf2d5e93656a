// Activation checkpointing on a LLaVA (optim.activation_checkpointing): which layers run through
// core/activation_checkpoint.h's checkpointed(), keeping only their inputs for backward.
//   none     every activation kept (fastest)
//   decoder  each LLaMA decoder layer recomputed in backward
//   all      the decoder layers and the CLIP vision layers (these matter only when the vision tower trains)
// A layer with nothing to train and an input without gradient runs as usual: frozen layers below the first
// adapter build no graph either way.
//
// The recomputed forward sees what the first one saw: the tokens' modality (the routing scope), the generator
// and autocast state (restored by checkpointed()). Routing statistics are recorded by the first run only; the
// balance losses a MoLE layer reports become outputs of the checkpoint node, so the trainer's loss sum and their
// gradients are those of the plain run.
#pragma once

#include "core/fields.h"
#include "model/llava.h"

namespace mole {

enum class ActivationCheckpointing { kNone, kDecoder, kAll };
template <>
const EnumTable<ActivationCheckpointing>& enum_table<ActivationCheckpointing>();  // none | decoder | all

void set_activation_checkpointing(Llava& model, ActivationCheckpointing mode);

}  // namespace mole
