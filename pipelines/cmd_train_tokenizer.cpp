// mole train-tokenizer --corpus FILE --vocab-size N --out DIR
// Trains a LLaMA-style sentencepiece tokenizer (BPE, byte fallback, split digits) on a text corpus, one sentence
// per line, and writes a Hugging Face tokenizer folder (tokenizer.model, added_tokens.json with <image> and
// <pad> after the vocabulary, tokenizer_config.json for LlamaTokenizer legacy=True) that mole and transformers
// both load. The same corpus and options give byte-identical files.
#include <cstdio>
#include <string>

#include "core/limits.h"
#include "language/tokenizer.h"
#include "pipelines/args.h"
#include "pipelines/commands.h"

namespace mole {

int cmd_train_tokenizer(int argc, char** argv) {
  Args args("train-tokenizer", "Train a LLaMA-style sentencepiece tokenizer and write a Hugging Face tokenizer folder.");
  args.option("corpus", "text file, one sentence per line", "", true)
      .integer("vocab-size", "sentencepiece pieces (LLaMA: 32000); <image> and <pad> are added after them",
               std::nullopt, 8, 1000000)
      .option("out", "folder to write tokenizer.model, added_tokens.json, tokenizer_config.json into", "", true)
      .option("model-type", "bpe (as LLaMA) or unigram", "bpe")
      .number("character-coverage", "share of corpus characters given their own piece (LLaMA: 0.99995)", 1.0,
              0.5, 1.0)
      .integer("input-sentence-size", "corpus lines to sample (seeded); 0 = all", 0, 0, kMaxCount)
      .integer("seed", "sentencepiece's random seed", 1234, 0, 4294967295)
      .integer("model-max-length", "model_max_length written to tokenizer_config.json", 2048, 1, kMaxSequence)
      .flag("verbose", "print sentencepiece's training log");
  if (!args.parse(argc, argv)) return 0;

  TrainOptions options;
  options.model_type = args.get("model-type");
  options.character_coverage = args.get_number("character-coverage");
  options.input_sentence_size = args.get_int("input-sentence-size");
  options.seed = static_cast<uint32_t>(args.get_int("seed"));
  options.model_max_length = args.get_int("model-max-length");
  options.verbose = args.has("verbose");
  Tokenizer::train(args.get("corpus"), args.get_int("vocab-size"), args.get("out"), options);

  Tokenizer tokenizer = Tokenizer::load(args.get("out"));
  std::printf("mole train-tokenizer: %lld pieces + %lld added tokens (<image> = %lld, <pad> = %lld) -> %s\n",
              static_cast<long long>(tokenizer.sp_vocab_size()),
              static_cast<long long>(tokenizer.vocab_size() - tokenizer.sp_vocab_size()),
              static_cast<long long>(tokenizer.image_token_id()), static_cast<long long>(tokenizer.pad_id()),
              args.get("out").c_str());
  return 0;
}

}  // namespace mole
