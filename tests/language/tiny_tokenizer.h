// Test helper: a small LLaMA-style tokenizer trained by mole itself on a corpus generated here (simple
// English about colours, shapes and numbers, plus the template words), cached in the build folder.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <fstream>
#include <string>
#include <system_error>
#include <unistd.h>
#include <vector>

#include "language/tokenizer.h"
#include "tests/test_util.h"

namespace mole::test {

// Big enough for every character of the corpus (about 300 with the 256 byte pieces) plus ~100 merges.
constexpr int64_t kTinyVocab = 400;

// The same lines on every run: index arithmetic instead of a random generator.
inline std::vector<std::string> tiny_corpus_lines() {
  const std::vector<std::string> colours = {"red", "green", "blue", "yellow", "white", "black", "orange", "purple"};
  const std::vector<std::string> shapes = {"circle", "square", "triangle", "star", "cube", "ring", "cone"};
  const std::vector<std::string> places = {"next to", "above", "below", "inside", "behind"};
  std::vector<std::string> lines;
  for (int i = 0; i < 300; ++i) {
    const std::string& c1 = colours[i % colours.size()];
    const std::string& c2 = colours[(i * 3 + 1) % colours.size()];
    const std::string& s1 = shapes[(i * 5) % shapes.size()];
    const std::string& s2 = shapes[(i * 2 + 3) % shapes.size()];
    int n = (i * 37) % 100;
    switch (i % 4) {
      case 0: lines.push_back("The " + c1 + " " + s1 + " is " + places[i % places.size()] + " the " + c2 + " " + s2 + "."); break;
      case 1: lines.push_back("There are " + std::to_string(n) + " " + c1 + " " + s1 + "s and " + std::to_string(i) + " " + s2 + "s."); break;
      case 2: lines.push_back("USER: What colour is the " + s1 + "? ASSISTANT: The " + s1 + " is " + c1 + "."); break;
      case 3: lines.push_back("[INST] How many " + s2 + "s are there? [/INST] I see " + std::to_string(n) + " of them."); break;
    }
  }
  lines.push_back("A chat between a curious user and an artificial intelligence assistant.");
  lines.push_back("The assistant gives helpful, detailed, and polite answers to the user's questions.");
  lines.push_back("You are a helpful language and vision assistant.");
  return lines;
}

inline void write_tiny_corpus(const std::string& path) {
  std::ofstream out(path, std::ios::binary);
  for (const auto& line : tiny_corpus_lines()) out << line << "\n";
}

// The folder Tokenizer::train wrote for the tiny corpus. Trained once per build folder: into a private
// folder, then renamed into place, so test processes that ctest runs side by side never see half a folder.
inline std::string tiny_tokenizer_dir() {
  namespace fs = std::filesystem;
  fs::path dir = fs::path(binary_dir()) / "test_scratch" / ("tiny_tokenizer_v" + std::to_string(kTinyVocab));
  if (fs::exists(dir / "tokenizer_config.json")) return dir.string();
  fs::path tmp = dir.string() + ".tmp" + std::to_string(getpid());
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  write_tiny_corpus((tmp / "corpus.txt").string());
  Tokenizer::train((tmp / "corpus.txt").string(), kTinyVocab, tmp.string());
  std::error_code ec;
  fs::rename(tmp, dir, ec);  // fails when another process got there first: use theirs
  if (ec) fs::remove_all(tmp);
  return dir.string();
}

// The chat templates' special tokens, added after <image> and <pad> (ids 402-407).
inline const std::vector<std::string>& chat_tokens() {
  static const std::vector<std::string> tokens = {"<|im_start|>",        "<|im_end|>",        "<|begin_of_text|>",
                                                  "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"};
  return tokens;
}

// The tiny tokenizer with chat_tokens() added (added_tokens.json), for the chatml and llama3 templates.
inline std::string tiny_chat_tokenizer_dir() {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(binary_dir()) / "test_scratch" / ("tiny_chat_tokenizer_v" + std::to_string(kTinyVocab));
  if (fs::exists(dir / "added_tokens.json")) return dir.string();
  const fs::path tmp = dir.string() + ".tmp" + std::to_string(getpid());
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  const fs::path base = tiny_tokenizer_dir();
  for (const char* f : {"tokenizer.model", "special_tokens_map.json"}) fs::copy_file(base / f, tmp / f);
  // transformers reads added tokens from tokenizer_config.json's added_tokens_decoder: the chat tokens go there
  // too, as special tokens (what the models' own tokenizer_config.json files declare).
  nlohmann::json config = nlohmann::json::parse(std::ifstream(base / "tokenizer_config.json"));
  for (size_t i = 0; i < chat_tokens().size(); ++i)
    config["added_tokens_decoder"][std::to_string(kTinyVocab + 2 + int64_t(i))] = {
        {"content", chat_tokens()[i]}, {"lstrip", false}, {"normalized", false}, {"rstrip", false},
        {"single_word", false}, {"special", true}};
  std::ofstream(tmp / "tokenizer_config.json") << config.dump(2);
  std::ofstream added(tmp / "added_tokens.json");
  added << "{\"<image>\": " << kTinyVocab << ", \"<pad>\": " << kTinyVocab + 1;
  for (size_t i = 0; i < chat_tokens().size(); ++i)
    added << ", \"" << chat_tokens()[i] << "\": " << kTinyVocab + 2 + int64_t(i);
  added << "}\n";
  added.close();
  std::error_code ec;
  fs::rename(tmp, dir, ec);
  if (ec) fs::remove_all(tmp);
  return dir.string();
}

inline const Tokenizer& tiny_chat_tokenizer() {
  static const Tokenizer tokenizer = Tokenizer::load(tiny_chat_tokenizer_dir());
  return tokenizer;
}

inline const Tokenizer& tiny_tokenizer() {
  static const Tokenizer tokenizer = Tokenizer::load(tiny_tokenizer_dir());
  return tokenizer;
}

}  // namespace mole::test
