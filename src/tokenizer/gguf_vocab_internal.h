// What the two halves of gguf_vocab share: the byte-level pre-tokenizers llama.cpp names in
// tokenizer.ggml.pre, each with the tokenizer.json pipeline it stands for.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace llmtune::tokenizer::gguf_detail {

// One llama.cpp pre-tokenizer (src/llama-vocab.cpp, llm_tokenizer_bpe): `split_regex` is the
// tokenizer.json Split pattern before ByteLevel{use_regex: false}; empty means a bare
// ByteLevel{use_regex: true} (GPT-2's own pattern). nfc: HF normalizes with NFC first (Qwen2).
struct BytePre {
  const char* name;
  const char* split_regex;
  bool nfc;
  bool ignore_merges;  // llama.cpp sets it for this pre-tokenizer (Llama 3's tokenizer.json has it)
};

const std::vector<BytePre>& byte_level_pres();
const BytePre* find_byte_pre(const std::string& name);

// The tokenizer.json normalizer / pre_tokenizer / decoder sections of `pre`.
nlohmann::json pre_tokenizer_json(const BytePre& pre);

// Token types as gguf-py's TokenType (and SentencePiece's ModelProto.SentencePiece.Type).
enum TokenType : int32_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

}  // namespace llmtune::tokenizer::gguf_detail
