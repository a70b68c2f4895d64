// The tokenizer.* GGUF metadata keys (FORMATS.md §6.5): names, value types and order as gguf-py's
// GGUFWriter emits them from convert_hf_to_gguf.py (tokens, scores, token_type, then SpecialVocab's
// merges, special ids, add_* flags and chat template; add_space_prefix last).
#include "llmtune/tokenizer/gguf_vocab.h"
#include "llmtune/util/error.h"

namespace llmtune::tokenizer {
namespace {

constexpr const char* kIdKeys[][2] = {{"bos", "tokenizer.ggml.bos_token_id"},
                                      {"eos", "tokenizer.ggml.eos_token_id"},
                                      {"unk", "tokenizer.ggml.unknown_token_id"},
                                      {"pad", "tokenizer.ggml.padding_token_id"},
                                      {"eot", "tokenizer.ggml.eot_token_id"}};

std::optional<int32_t>* id_field(GgufVocab& v, const std::string& name) {
  if (name == "bos") return &v.bos_id;
  if (name == "eos") return &v.eos_id;
  if (name == "unk") return &v.unk_id;
  if (name == "pad") return &v.pad_id;
  return &v.eot_id;
}

}  // namespace

void write_gguf_vocab(io::GgufWriter& writer, const GgufVocab& vocab) {
  GgufVocab v = vocab;  // id_field() wants a mutable vocabulary; a copy keeps the interface const
  writer.add_string("tokenizer.ggml.model", v.model);
  writer.add_string("tokenizer.ggml.pre", v.pre);
  writer.add_string_array("tokenizer.ggml.tokens", v.tokens);
  if (!v.scores.empty()) writer.add_f32_array("tokenizer.ggml.scores", v.scores);
  if (!v.token_types.empty()) writer.add_i32_array("tokenizer.ggml.token_type", v.token_types);
  if (!v.merges.empty()) writer.add_string_array("tokenizer.ggml.merges", v.merges);
  for (const auto& [name, key] : kIdKeys)
    if (auto id = *id_field(v, name)) {
      if (*id < 0) throw TokenizerError(std::string(key) + ": negative token id " + std::to_string(*id));
      writer.add_u32(key, static_cast<uint32_t>(*id));
    }
  if (v.add_bos) writer.add_bool("tokenizer.ggml.add_bos_token", *v.add_bos);
  if (v.add_eos) writer.add_bool("tokenizer.ggml.add_eos_token", *v.add_eos);
  if (!v.chat_template.empty()) writer.add_string("tokenizer.chat_template", v.chat_template);
  if (v.add_space_prefix) writer.add_bool("tokenizer.ggml.add_space_prefix", *v.add_space_prefix);
}

GgufVocab read_gguf_vocab(const io::GgufFile& file) {
  const std::string where = file.path().string();
  GgufVocab v;
  v.model = file.get_string("tokenizer.ggml.model");
  v.pre = file.get_string_opt("tokenizer.ggml.pre").value_or("default");  // llama.cpp's default when absent
  v.tokens = file.get_string_array("tokenizer.ggml.tokens");
  const size_t n = v.tokens.size();
  auto check_size = [&](size_t size, const char* key) {
    if (size != 0 && size != n)
      throw TokenizerError(where + ": metadata key " + key + " has " + std::to_string(size) + " entries for " +
                           std::to_string(n) + " tokens");
  };
  if (file.find("tokenizer.ggml.scores"))
    for (double s : file.get_float_array("tokenizer.ggml.scores")) v.scores.push_back(static_cast<float>(s));
  check_size(v.scores.size(), "tokenizer.ggml.scores");
  if (file.find("tokenizer.ggml.token_type"))
    for (int64_t t : file.get_int_array("tokenizer.ggml.token_type")) {
      if (t < 1 || t > 6)
        throw TokenizerError(where + ": metadata key tokenizer.ggml.token_type holds " + std::to_string(t) +
                             ", not a token type (1..6)");
      v.token_types.push_back(static_cast<int32_t>(t));
    }
  check_size(v.token_types.size(), "tokenizer.ggml.token_type");
  if (file.find("tokenizer.ggml.merges")) v.merges = file.get_string_array("tokenizer.ggml.merges");
  for (const auto& [name, key] : kIdKeys)
    if (auto id = file.get_int_opt(key)) {
      if (*id < 0 || static_cast<uint64_t>(*id) >= n)
        throw TokenizerError(where + ": metadata key " + key + " = " + std::to_string(*id) + " is outside the " +
                             std::to_string(n) + " tokens");
      *id_field(v, name) = static_cast<int32_t>(*id);
    }
  v.add_bos = file.get_bool_opt("tokenizer.ggml.add_bos_token");
  v.add_eos = file.get_bool_opt("tokenizer.ggml.add_eos_token");
  v.add_space_prefix = file.get_bool_opt("tokenizer.ggml.add_space_prefix");
  v.chat_template = file.get_string_opt("tokenizer.chat_template").value_or("");
  return v;
}

}  // namespace llmtune::tokenizer
