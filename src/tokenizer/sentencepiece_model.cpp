// tokenizer.model through libsentencepiece, as the model stage behind transformers 5's
// LlamaTokenizer pipeline (Metaspace pre-tokenizer, no normalizer). SentencePiece's own text
// handling is switched off by rewriting the NormalizerSpec (identity, no dummy prefix, no
// whitespace collapsing): the Metaspace stage has already put "▁" where HF puts it.
#include <sentencepiece_processor.h>

#include <cstdint>
#include <string>

#include "components.h"
#include "llmtune/util/error.h"

namespace llmtune::tokenizer {
namespace {

// Minimal protobuf wire-format reader for the top level of ModelProto (FORMATS.md §3.1).
struct Field {
  uint32_t number;
  uint32_t wire_type;
  size_t begin, end;          // the whole field, tag included
  size_t value_begin, value_end;  // the payload of a length-delimited field
  uint64_t varint = 0;
};

bool read_varint(const std::string& s, size_t& pos, uint64_t& out) {
  out = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (pos >= s.size()) return false;
    auto b = static_cast<unsigned char>(s[pos++]);
    out |= static_cast<uint64_t>(b & 0x7F) << shift;
    if (!(b & 0x80)) return true;
  }
  return false;
}

// Splits a message into fields; false when the bytes are not a well-formed message.
bool parse_fields(const std::string& s, size_t begin, size_t end, std::vector<Field>& fields) {
  size_t pos = begin;
  while (pos < end) {
    Field f{};
    f.begin = pos;
    uint64_t key;
    if (!read_varint(s, pos, key)) return false;
    f.number = static_cast<uint32_t>(key >> 3);
    f.wire_type = static_cast<uint32_t>(key & 7);
    if (f.number == 0) return false;
    switch (f.wire_type) {
      case 0: if (!read_varint(s, pos, f.varint)) return false; break;
      case 1: pos += 8; break;
      case 5: pos += 4; break;
      case 2: {
        uint64_t len;
        if (!read_varint(s, pos, len) || len > end - std::min(pos, end)) return false;
        f.value_begin = pos;
        f.value_end = pos + len;
        pos += len;
        break;
      }
      default: return false;
    }
    if (pos > end) return false;
    f.end = pos;
    fields.push_back(f);
  }
  return true;
}

class SentencePieceModel : public Model {
 public:
  SentencePieceModel(const std::string& serialized, const std::string& file) {
    std::vector<Field> fields;
    if (serialized.empty() || !parse_fields(serialized, 0, serialized.size(), fields))
      throw TokenizerError(file + ": not a SentencePiece model (the protobuf is malformed); "
                           "re-download tokenizer.model");
    std::string patched;
    int model_type = 1;  // TrainerSpec.model_type defaults to UNIGRAM
    size_t n_pieces = 0;
    for (const Field& f : fields) {
      if (f.number == 1 && f.wire_type == 2) ++n_pieces;
      if (f.number == 2 && f.wire_type == 2) {
        std::vector<Field> trainer;
        if (!parse_fields(serialized, f.value_begin, f.value_end, trainer))
          throw TokenizerError(file + ": not a SentencePiece model (malformed TrainerSpec)");
        for (const Field& t : trainer)
          if (t.number == 3 && t.wire_type == 0) model_type = static_cast<int>(t.varint);
      }
      if (f.number == 3) continue;  // NormalizerSpec: replaced below
      patched.append(serialized, f.begin, f.end - f.begin);
    }
    if (n_pieces == 0) throw TokenizerError(file + ": not a SentencePiece model (no pieces)");
    if (model_type != 2)
      throw TokenizerError(file + ": SentencePiece model_type " + std::to_string(model_type) +
                           " is not BPE (2); only BPE tokenizer.model files (Llama 2, Mistral, TinyLlama) "
                           "are supported — use the model's tokenizer.json instead");
    // NormalizerSpec{name: "identity", add_dummy_prefix: false, remove_extra_whitespaces: false,
    // escape_whitespaces: true}.
    const std::string spec = std::string("\x0A\x08identity", 10) + std::string("\x18\x00\x20\x00\x28\x01", 6);
    patched += '\x1A';
    patched += static_cast<char>(spec.size());
    patched += spec;
    auto status = sp_.LoadFromSerializedProto(patched);
    if (!status.ok()) throw TokenizerError(file + ": SentencePiece cannot load it: " + status.ToString());
  }

  void tokenize(std::string_view word, std::vector<int32_t>& ids) const override {
    std::vector<int> out;
    auto status = sp_.Encode(word, &out);
    if (!status.ok()) throw TokenizerError("SentencePiece encode failed: " + status.ToString());
    ids.insert(ids.end(), out.begin(), out.end());
  }
  int32_t size() const override { return sp_.GetPieceSize(); }
  std::optional<std::string> id_to_token(int32_t id) const override {
    if (id < 0 || id >= sp_.GetPieceSize()) return std::nullopt;
    return sp_.IdToPiece(id);
  }
  std::optional<int32_t> token_to_id(std::string_view token) const override {
    int id = sp_.PieceToId(token);
    if (id < 0 || sp_.IdToPiece(id) != token) return std::nullopt;  // PieceToId answers unk for unknown pieces
    return id;
  }

 private:
  sentencepiece::SentencePieceProcessor sp_;
};

}  // namespace

std::unique_ptr<Model> make_sentencepiece_model(const std::string& serialized, const std::string& file) {
  return std::make_unique<SentencePieceModel>(serialized, file);
}

}  // namespace llmtune::tokenizer
