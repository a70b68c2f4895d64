// What the two halves of gguf_vocab share: the byte-level pre-tokenizers llama.cpp names in
// tokenizer.ggml.pre (gguf_pre_types.cpp), each with the tokenizer.json pipeline it stands for.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace llmtune::tokenizer::gguf_detail {

// One llama.cpp byte-level BPE pre-tokenizer (src/llama-vocab.cpp: the tokenizer.ggml.pre names
// that select a LLAMA_VOCAB_PRE_TYPE_*, and llm_tokenizer_bpe's regex list for it). Types that
// split alike share an entry. As a tokenizer.json pipeline: [NFC], Sequence[Split(r, Isolated)
// for r in regexes, ByteLevel(use_regex=false)], BPE.
struct BytePre {
  std::string name;                  // written on export: the converter's name for the best-known model
  std::vector<std::string> aliases;  // the other names llama.cpp reads the same way
  std::vector<std::string> regexes;  // PCRE2 patterns with the tokenizer.json files' semantics
  bool nfc = false;                  // the tokenizer.json normalizes with NFC first (Qwen; llama.cpp does not)
  bool ignore_merges = false;        // a piece that is a token is that token (llama.cpp's ignore_merges)
  bool add_bos = false;              // llama.cpp adds BOS when the file has no add_bos_token
  bool exported = true;              // false for "default": the converter never writes it
  // Published tokenizer.json splits that differ from `regexes` in form only (Digits, Punctuation).
  std::vector<std::vector<std::string>> published = {};
};

const std::vector<BytePre>& byte_level_pres();
// By name or alias; null when llama.cpp does not know `name`.
const BytePre* find_byte_pre(const std::string& name);
// Every name and alias, comma-separated, for errors.
std::string supported_pre_names();

// The tokenizer.json normalizer (null unless nfc) and pre_tokenizer sections of `pre`.
nlohmann::json normalizer_json(const BytePre& pre);
nlohmann::json pre_tokenizer_json(const BytePre& pre);

// The tokenizer.ggml.pre llama.cpp's converter writes for the byte-level tokenizer.json `tj`,
// found from its pre_tokenizer (and NFC normalizer, ignore_merges) rather than the converter's
// hash of a probe encoding. Unknown: a TokenizerError naming `file` and the regexes.
std::string export_pre_name(const nlohmann::json& tj, const std::string& file);

// Token types as gguf-py's TokenType (and SentencePiece's ModelProto.SentencePiece.Type).
enum TokenType : int32_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

}  // namespace llmtune::tokenizer::gguf_detail
