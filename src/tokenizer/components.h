// The stages of the HF tokenizer pipeline (huggingface/tokenizers semantics): normalizer,
// pre-tokenizer, model, decoder. tokenizer.json builds them from JSON; the SentencePiece path
// builds the same stages around libsentencepiece, as transformers 5 does for LlamaTokenizer.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace llmtune::tokenizer {

// A piece of text on its way through the pipeline. at_start: the piece begins at offset 0 of the
// input (Metaspace's prepend_scheme "first" prepends only there).
// src: when tracked (encode_with_offsets), the byte offset in the original input of each byte of
// `text` (inserted bytes take the offset of the byte they were inserted before); empty otherwise.
struct Split {
  std::string text;
  bool at_start = false;
  std::vector<uint32_t> src;
};

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(std::string& text) const = 0;
  // normalize() that keeps `src` (one original offset per byte of `text`) aligned with the result.
  // The default normalizes chunk by chunk (chunks end before each ASCII byte, which no
  // normalization composes with what precedes it); a changed chunk maps to its first offset.
  virtual void normalize_aligned(std::string& text, std::vector<uint32_t>& src) const;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces `splits` by their pre-tokens, in order.
  virtual void pre_tokenize(std::vector<Split>& splits) const = 0;
};

// How far past its number of entries a vocabulary's ids may reach. tokenizers writes ids 0..n-1
// (added tokens right after); an id far beyond would make every id-indexed table (id -> token,
// the loops over all ids in distill and serve) as large as the id, so such a file is refused.
constexpr int64_t kMaxVocabIdGap = int64_t{1} << 20;

class Model {
 public:
  virtual ~Model() = default;
  // Appends the ids of one pre-token.
  virtual void tokenize(std::string_view word, std::vector<int32_t>& ids) const = 0;
  // Byte length in `word` of each of `ids` (the result of tokenize(word)), from the token strings:
  // a token covers its own string, a byte-fallback token <0xXX> one byte, an unknown token the
  // characters up to where the next token matches.
  std::vector<size_t> token_lengths(std::string_view word, std::span<const int32_t> ids) const;
  virtual int32_t size() const = 0;  // base vocabulary, without added tokens
  virtual std::optional<std::string> id_to_token(int32_t id) const = 0;
  virtual std::optional<int32_t> token_to_id(std::string_view token) const = 0;
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  // tokenizers' decode_chain: maps the token strings, possibly fusing them.
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};

// GPT-2's byte -> character map (FORMATS.md §3.2), each entry UTF-8 encoded.
const std::array<std::string, 256>& gpt2_byte_to_unicode();

// Factories from tokenizer.json sections; `file` names the file in errors. An unsupported type
// is a TokenizerError naming it: nothing is silently skipped.
std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& j, const std::string& file);
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& j, const std::string& file);
std::unique_ptr<Decoder> make_decoder(const nlohmann::json& j, const std::string& file);
std::unique_ptr<Model> make_bpe_model(const nlohmann::json& j, const std::string& file);

// The pieces transformers' LlamaTokenizer assembles (Metaspace "▁" with a prepend scheme of
// "first", "always" or "never"; Replace/ByteFallback/Fuse/Strip decoder).
std::unique_ptr<PreTokenizer> make_metaspace(const std::string& replacement, const std::string& prepend_scheme,
                                             bool split);
std::unique_ptr<Decoder> make_llama_decoder(bool strip_leading_space);
// A BPE model whose vocabulary and merges come from another model's JSON, with LlamaTokenizer's
// settings (byte_fallback, fuse_unk, no unk token, no ignore_merges).
std::unique_ptr<Model> make_llama_bpe_model(const nlohmann::json& model_json, const std::string& file);

// The SentencePiece model of a tokenizer.model file, encoding text that Metaspace has prepared.
std::unique_ptr<Model> make_sentencepiece_model(const std::string& serialized, const std::string& file);

}  // namespace llmtune::tokenizer
