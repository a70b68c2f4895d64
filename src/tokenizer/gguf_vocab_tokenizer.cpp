// tokenizer_from_gguf_vocab(): a GGUF vocabulary back into a Tokenizer. "llama" becomes a
// SentencePiece BPE ModelProto built in memory behind transformers 5's LlamaTokenizer pipeline;
// "gpt2" becomes a tokenizer.json-style BPE model behind the pre-tokenizer `pre` names
// (gguf_pre_types.cpp), or, for llama.cpp's BPE types over raw UTF-8, the pipeline below.
#include <cstring>
#include <unordered_set>

#include "gguf_vocab_internal.h"
#include "llmtune/tokenizer/gguf_vocab.h"
#include "llmtune/util/error.h"
#include "llmtune/util/log.h"
#include "pipeline.h"

namespace llmtune::tokenizer {
namespace {

using nlohmann::json;
using namespace gguf_detail;

// ---- a SentencePiece ModelProto, written field by field (FORMATS.md §3.1) ----------------------

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out += static_cast<char>((v & 0x7F) | 0x80);
    v >>= 7;
  }
  out += static_cast<char>(v);
}
void put_tag(std::string& out, uint32_t field, uint32_t wire_type) { put_varint(out, (uint64_t{field} << 3) | wire_type); }
void put_bytes(std::string& out, uint32_t field, const std::string& bytes) {
  put_tag(out, field, 2);
  put_varint(out, bytes.size());
  out += bytes;
}
void put_int(std::string& out, uint32_t field, int64_t v) {  // int32 fields: negatives sign-extended to 64 bits
  put_tag(out, field, 0);
  put_varint(out, static_cast<uint64_t>(v));
}
void put_float(std::string& out, uint32_t field, float v) {
  put_tag(out, field, 5);
  char b[4];
  std::memcpy(b, &v, 4);  // little-endian hosts only, as the rest of llmtune's file formats
  out.append(b, 4);
}

std::string sentencepiece_proto(const GgufVocab& v, const std::vector<int32_t>& types, int32_t unk_index) {
  std::string model;
  bool has_bytes = false;
  for (size_t i = 0; i < v.tokens.size(); ++i) {
    std::string piece;
    put_bytes(piece, 1, v.tokens[i]);
    put_float(piece, 2, i < v.scores.size() ? v.scores[i] : 0.0f);
    put_int(piece, 3, types[i]);
    put_bytes(model, 1, piece);
    has_bytes = has_bytes || types[i] == kByte;
  }
  std::string trainer;
  put_int(trainer, 3, 2);  // model_type BPE
  put_int(trainer, 4, static_cast<int64_t>(v.tokens.size()));
  put_int(trainer, 35, has_bytes ? 1 : 0);  // byte_fallback
  put_int(trainer, 40, unk_index);
  put_int(trainer, 41, -1);  // bos/eos/pad: added by the pipeline, not by SentencePiece
  put_int(trainer, 42, -1);
  put_int(trainer, 43, -1);
  put_bytes(model, 2, trainer);
  return model;
}

// ---- the two tokenizer models --------------------------------------------------------------

void build_llama(Pipeline& p, GgufVocab& v, const std::string& source) {
  // SentencePiece wants exactly one UNKNOWN piece; LlamaHfVocab writes <unk> as CONTROL.
  std::vector<int32_t> types = v.token_types;
  int32_t unk_index = -1;
  for (size_t i = 0; i < types.size() && unk_index < 0; ++i)
    if (types[i] == kUnknown) unk_index = static_cast<int32_t>(i);
  if (unk_index < 0 && v.unk_id && *v.unk_id < static_cast<int32_t>(types.size())) unk_index = *v.unk_id;
  for (size_t i = 0; i < types.size() && unk_index < 0; ++i)
    if (v.tokens[i] == "<unk>") unk_index = static_cast<int32_t>(i);
  if (unk_index < 0)
    throw TokenizerError(source + ": a SentencePiece (\"llama\") vocabulary needs an unknown token; none is marked "
                         "UNKNOWN, tokenizer.ggml.unknown_token_id is absent and there is no \"<unk>\"");
  types[unk_index] = kUnknown;
  p.model = make_sentencepiece_model(sentencepiece_proto(v, types, unk_index), source);
  // transformers 5's LlamaTokenizer: Metaspace "▁" prepended to the first piece (add_space_prefix).
  bool prefix = v.add_space_prefix.value_or(true);
  p.pre_tokenizer = make_metaspace("\u2581", prefix ? "first" : "never", /*split=*/false);
  p.decoder = make_llama_decoder(prefix);
}

void build_gpt2(Pipeline& p, const GgufVocab& v, const BytePre& pre, const std::string& source) {
  json vocab = json::object();
  for (size_t i = 0; i < v.tokens.size(); ++i) {
    int32_t t = v.token_types[i];
    if (t == kNormal || t == kUnknown || t == kByte) vocab[v.tokens[i]] = static_cast<int32_t>(i);
  }
  json model = {{"type", "BPE"}, {"vocab", std::move(vocab)}, {"merges", v.merges}, {"ignore_merges", pre.ignore_merges},
                {"byte_fallback", false}, {"fuse_unk", false}};
  p.model = make_bpe_model(model, source);
  if (pre.nfc) p.normalizer = make_normalizer(normalizer_json(pre), source);
  p.pre_tokenizer = make_pre_tokenizer(pre_tokenizer_json(pre), source);
  p.decoder = make_decoder(json{{"type", "ByteLevel"}}, source);
}

// ---- llama.cpp's BPE over raw UTF-8 (src/llama-vocab.cpp at 00ad355e) ----------------------------
// The types with byte_encode off: pieces are raw UTF-8, BPE starts from characters, a final piece
// outside the vocabulary becomes its <0xXX> byte tokens (those that exist). gemma4 (its alias
// granite-embed-multi-311m) and sarvam-moe replace spaces by U+2581 (escape_whitespaces) and split
// only between lines and runs of '\n'; gemma4 takes a run of newlines that is a token whole and
// always adds BOS. "whitespace" splits at White_Space characters: tokenizer.ggml.model "whitespace"
// (llm_tokenizer_whitespace_session) drops them, "gpt2" keeps each run as a piece of its own.
const char* kRawPreNames = "gemma4, granite-embed-multi-311m, sarvam-moe, whitespace";
// Unicode White_Space (llama.cpp's unicode_cpt_flags is_whitespace).
#define LT_WHITE_SPACE R"([\t-\r \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}])"

bool is_raw_pre(const std::string& pre) {
  return pre == "gemma4" || pre == "granite-embed-multi-311m" || pre == "sarvam-moe" || pre == "whitespace";
}
bool is_gemma4(const std::string& pre) { return pre == "gemma4" || pre == "granite-embed-multi-311m"; }

// gemma4's rule (llm_tokenizer_bpe_session): a piece of only '\n' that is a token is that token.
class NewlineRunModel : public Model {
 public:
  explicit NewlineRunModel(std::unique_ptr<Model> bpe) : bpe_(std::move(bpe)) {}
  void tokenize(std::string_view word, std::vector<int32_t>& ids) const override {
    if (!word.empty() && word.find_first_not_of('\n') == std::string_view::npos) {
      if (auto id = bpe_->token_to_id(word)) {
        ids.push_back(*id);
        return;
      }
    }
    bpe_->tokenize(word, ids);
  }
  int32_t size() const override { return bpe_->size(); }
  std::optional<std::string> id_to_token(int32_t id) const override { return bpe_->id_to_token(id); }
  std::optional<int32_t> token_to_id(std::string_view token) const override { return bpe_->token_to_id(token); }

 private:
  std::unique_ptr<Model> bpe_;
};

void build_raw(Pipeline& p, const GgufVocab& v, const std::string& source) {
  json vocab = json::object();
  for (size_t i = 0; i < v.tokens.size(); ++i) {
    int32_t t = v.token_types[i];
    if (t == kNormal || t == kUnknown || t == kByte) vocab[v.tokens[i]] = static_cast<int32_t>(i);
  }
  json model = {{"type", "BPE"}, {"vocab", std::move(vocab)}, {"merges", v.merges}, {"ignore_merges", false},
                {"byte_fallback", true}, {"fuse_unk", false}};
  p.model = make_bpe_model(model, source);
  auto split = [](const std::string& regex, const char* behavior) {
    return json{{"type", "Split"}, {"pattern", {{"Regex", regex}}}, {"behavior", behavior}, {"invert", false}};
  };
  json parts = json::array();
  if (v.pre == "whitespace") {
    parts.push_back(split(LT_WHITE_SPACE "+", v.model == "whitespace" ? "Removed" : "Isolated"));
    // Normal tokens print raw (llama.cpp maps them back through GPT-2's byte table, which garbles
    // all but printable ASCII); byte tokens become their bytes.
    const json decoders = json::array({json{{"type", "ByteFallback"}}, json{{"type", "Fuse"}}});
    p.decoder = make_decoder(json{{"type", "Sequence"}, {"decoders", decoders}}, source);
  } else {
    parts.push_back({{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", "never"}, {"split", false}});
    parts.push_back(split("[^\\n]+|[\\n]+", "Isolated"));
    if (is_gemma4(v.pre)) p.model = std::make_unique<NewlineRunModel>(std::move(p.model));
    p.decoder = make_llama_decoder(/*strip_leading_space=*/false);
  }
  p.pre_tokenizer = make_pre_tokenizer(json{{"type", "Sequence"}, {"pretokenizers", std::move(parts)}}, source);
}

}  // namespace

std::unique_ptr<Tokenizer> tokenizer_from_gguf_vocab(const GgufVocab& vocab, const std::string& source) {
  GgufVocab v = vocab;
  const size_t n = v.tokens.size();
  if (n == 0) throw TokenizerError(source + ": the GGUF vocabulary has no tokens");
  if (v.token_types.empty()) v.token_types.assign(n, kNormal);
  if (v.token_types.size() != n)
    throw TokenizerError(source + ": tokenizer.ggml.token_type has " + std::to_string(v.token_types.size()) +
                         " entries for " + std::to_string(n) + " tokens");
  if (!v.scores.empty() && v.scores.size() != n)
    throw TokenizerError(source + ": tokenizer.ggml.scores has " + std::to_string(v.scores.size()) + " entries for " +
                         std::to_string(n) + " tokens");
  auto in_range = [&](const std::optional<int32_t>& id, const char* key) {
    if (id && (*id < 0 || static_cast<size_t>(*id) >= n))
      throw TokenizerError(source + ": tokenizer.ggml." + key + " " + std::to_string(*id) + " is outside the " +
                           std::to_string(n) + " tokens");
  };
  in_range(v.bos_id, "bos_token_id");
  in_range(v.eos_id, "eos_token_id");
  in_range(v.unk_id, "unknown_token_id");
  in_range(v.pad_id, "padding_token_id");
  in_range(v.eot_id, "eot_token_id");

  Pipeline p;
  bool add_bos_default = v.model == "llama";
  if (v.model == "llama") {
    // llama.cpp's defaults for a SentencePiece vocabulary that names no special ids.
    auto fallback = [&](std::optional<int32_t>& id, int32_t def, std::initializer_list<int32_t> ok_types) {
      if (id || static_cast<size_t>(def) >= n) return;
      for (int32_t t : ok_types)
        if (v.token_types[def] == t) id = def;
    };
    fallback(v.bos_id, 1, {kControl});
    fallback(v.eos_id, 2, {kControl});
    fallback(v.unk_id, 0, {kUnknown, kControl});
    build_llama(p, v, source);
  } else if (v.model == "gpt2" && is_raw_pre(v.pre)) {
    build_raw(p, v, source);
  } else if (v.model == "gemma4" || (v.model == "whitespace" && v.pre == "whitespace")) {
    v.pre = v.model;  // llama.cpp reads a "gemma4" model as pre-tokenizer gemma4, whatever the file says
    build_raw(p, v, source);
  } else if (v.model == "gpt2") {
    const BytePre* pre = find_byte_pre(v.pre);
    if (!pre)
      throw TokenizerError(source + ": tokenizer.ggml.pre \"" + v.pre + "\" is not supported (supported: " +
                           supported_pre_names() + "; over raw UTF-8: " + kRawPreNames + ")");
    add_bos_default = pre->add_bos;
    build_gpt2(p, v, *pre, source);
  } else if (v.model == "whitespace") {
    throw TokenizerError(source + ": tokenizer.ggml.model \"whitespace\" needs tokenizer.ggml.pre \"whitespace\", got \"" +
                         v.pre + "\"");
  } else {
    throw TokenizerError(source + ": tokenizer.ggml.model \"" + v.model +
                         "\" is not supported (supported: llama, gpt2, gemma4, whitespace)");
  }

  // Control (and unknown) tokens are HF's special added tokens; user-defined ones plain added tokens.
  for (size_t i = 0; i < n; ++i) {
    int32_t t = v.token_types[i];
    if (t != kControl && t != kUserDefined && !(t == kUnknown && v.model == "llama")) continue;
    AddedToken a;
    a.content = v.tokens[i];
    a.id = static_cast<int32_t>(i);
    a.special = t != kUserDefined;
    p.added.add(std::move(a));
  }
  // Without tokenizer.ggml.add_bos_token, llama.cpp's default: SentencePiece and some pre-tokenizers add BOS.
  // gemma4 adds it even when the file says not to (llama.cpp's override for Gemma 4).
  const bool gemma4 = v.model != "llama" && is_gemma4(v.pre);
  const bool add_bos = v.add_bos.value_or(add_bos_default) || gemma4;
  if (add_bos && v.bos_id) p.prefix_ids.push_back(*v.bos_id);
  if (v.add_eos.value_or(false) && v.eos_id) p.suffix_ids.push_back(*v.eos_id);
  if ((v.add_bos.value_or(false) || gemma4) && !v.bos_id)
    spdlog::warn("tokenizer: {}: {} but no BOS id is known; no BOS is added", source,
                 gemma4 ? "llama.cpp adds BOS for gemma4" : "add_bos_token is set");

  auto tok = std::make_unique<PipelineTokenizer>(std::move(p));
  tok->pipeline().added.set_normalizer(tok->pipeline().normalizer.get());
  auto name = [&](const std::optional<int32_t>& id) { return id ? v.tokens[*id] : std::string(); };
  tok->bos_id = v.bos_id;
  tok->eos_id = v.eos_id;
  tok->unk_id = v.unk_id;
  tok->pad_id = v.pad_id;
  tok->bos_token = name(v.bos_id);
  tok->eos_token = name(v.eos_id);
  tok->unk_token = name(v.unk_id);
  tok->pad_token = name(v.pad_id);
  if (v.eos_id) tok->stop_ids.push_back(*v.eos_id);
  if (v.eot_id && v.eot_id != v.eos_id) tok->stop_ids.push_back(*v.eot_id);
  tok->chat_template = v.chat_template;
  return tok;
}

}  // namespace llmtune::tokenizer
