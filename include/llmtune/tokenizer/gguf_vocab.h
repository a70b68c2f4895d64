// Tokenizers as GGUF stores them (FORMATS.md §6.5, tokenizer.* keys): taken from a model
// directory as llama.cpp's convert_hf_to_gguf.py takes them, written to and read from GGUF
// metadata, and turned back into a Tokenizer that encodes as the original did.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "llmtune/io/gguf.h"
#include "llmtune/tokenizer/tokenizer.h"

namespace llmtune::tokenizer {

struct GgufVocab {
  std::string model;  // "llama" (SentencePiece) | "gpt2" (byte-level BPE)
  std::string pre;    // "default" for llama; for gpt2 a llama.cpp pre-tokenizer name ("llama-bpe", "smollm", ...)
  std::vector<std::string> tokens;
  std::vector<float> scores;         // llama only (empty for gpt2)
  std::vector<int32_t> token_types;  // 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
  std::vector<std::string> merges;   // gpt2 only: "a b"
  std::optional<int32_t> bos_id, eos_id, unk_id, pad_id, eot_id;
  std::optional<bool> add_bos, add_eos;
  std::optional<bool> add_space_prefix;  // llama only
  std::string chat_template;             // "" when none
};

// What convert_hf_to_gguf.py writes for the tokenizer of model directory `dir` (tokenizer.model
// through SentencePiece, else tokenizer.json), padded to `vocab_size` with "[PAD{i}]" (UNUSED).
// An unsupported tokenizer (a pre-tokenizer llama.cpp does not know, WordPiece, Unigram) is a
// TokenizerError naming the file and what is unsupported.
GgufVocab gguf_vocab_from_model_dir(const std::filesystem::path& dir, int64_t vocab_size);

// The tokenizer.* keys, in the order the converter writes them.
void write_gguf_vocab(io::GgufWriter& writer, const GgufVocab& vocab);
// Reads them back; a missing or malformed key is an IoError/TokenizerError naming the file and key.
GgufVocab read_gguf_vocab(const io::GgufFile& file);

// A Tokenizer rebuilt from a GGUF vocabulary: the same ids, decode, special tokens, stop ids and
// chat template as the HF tokenizer the vocabulary came from. `source` names the file in errors.
std::unique_ptr<Tokenizer> tokenizer_from_gguf_vocab(const GgufVocab& vocab, const std::string& source);

}  // namespace llmtune::tokenizer
