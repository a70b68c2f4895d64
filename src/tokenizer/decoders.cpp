// tokenizer.json decoders (tokenizers' decode_chain): ByteLevel, Replace, ByteFallback, Fuse,
// Strip, Metaspace, Sequence. Invalid UTF-8 becomes U+FFFD exactly as in tokenizers.
#include <string>
#include <unordered_map>

#include "components.h"
#include "llmtune/util/error.h"
#include "regex.h"
#include "unicode.h"

namespace llmtune::tokenizer {
namespace {

using nlohmann::json;

class SequenceDecoder : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> parts) : parts_(std::move(parts)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& p : parts_) p->decode_chain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> parts_;
};

// Inverts the GPT-2 byte map; a token holding any character outside the map keeps its own UTF-8
// bytes (added tokens such as "<|eot_id|>" are plain text). One lossy UTF-8 decode at the end.
class ByteLevelDecoder : public Decoder {
 public:
  ByteLevelDecoder() {
    const auto& table = gpt2_byte_to_unicode();
    for (int b = 0; b < 256; ++b) char_to_byte_[unicode::decode_at(table[b], 0)] = static_cast<unsigned char>(b);
  }
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const auto& t : tokens) {
      size_t start = bytes.size();
      bool mapped = true;
      for (size_t i = 0; i < t.size();) {
        size_t n = unicode::valid_sequence_length(t, i);
        auto it = n ? char_to_byte_.find(unicode::decode_at(t, i)) : char_to_byte_.end();
        if (it == char_to_byte_.end()) {
          mapped = false;
          break;
        }
        bytes += static_cast<char>(it->second);
        i += n;
      }
      if (!mapped) bytes.replace(start, std::string::npos, t);
    }
    tokens.assign(1, unicode::to_valid_utf8(bytes));
  }

 private:
  std::unordered_map<uint32_t, unsigned char> char_to_byte_;
};

class ReplaceDecoder : public Decoder {
 public:
  ReplaceDecoder(std::pair<std::string, std::unique_ptr<Regex>> pattern, std::string content)
      : literal_(std::move(pattern.first)), regex_(std::move(pattern.second)), content_(std::move(content)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (auto& t : tokens) t = replace_all(t, literal_, regex_.get(), content_);
  }

 private:
  std::string literal_;
  std::unique_ptr<Regex> regex_;
  std::string content_;
};

// Runs of "<0xXX>" tokens become their bytes when the run is valid UTF-8, else one U+FFFD per byte.
class ByteFallbackDecoder : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens.size());
    std::string run;
    size_t run_len = 0;
    auto flush = [&] {
      if (run_len == 0) return;
      if (unicode::is_valid_utf8(run)) out.push_back(run);
      else for (size_t i = 0; i < run_len; ++i) out.emplace_back("\xEF\xBF\xBD");
      run.clear();
      run_len = 0;
    };
    for (auto& t : tokens) {
      int byte = parse_byte(t);
      if (byte >= 0) {
        run += static_cast<char>(byte);
        ++run_len;
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens = std::move(out);
  }

 private:
  static int parse_byte(const std::string& t) {
    if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
    auto hex = [](char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                                                     : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1; };
    int hi = hex(t[3]), lo = hex(t[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
  }
};

class FuseDecoder : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const auto& t : tokens) all += t;
    tokens.assign(1, std::move(all));
  }
};

// Strips up to `start` leading and `stop` trailing `content` characters from every token.
class StripDecoder : public Decoder {
 public:
  StripDecoder(uint32_t content, size_t start, size_t stop) : content_(content), start_(start), stop_(stop) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (auto& t : tokens) {
      std::vector<std::pair<size_t, uint32_t>> chars;  // (byte offset, code point)
      for (size_t i = 0; i < t.size(); i += unicode::char_length(static_cast<unsigned char>(t[i])))
        chars.emplace_back(i, unicode::decode_at(t, i));
      size_t begin = 0, end = chars.size();
      while (begin < start_ && begin < end && chars[begin].second == content_) ++begin;
      for (size_t k = 0; k < stop_ && end > begin && chars[end - 1].second == content_; ++k) --end;
      size_t b = begin < chars.size() ? chars[begin].first : t.size();
      size_t e = end < chars.size() ? chars[end].first : t.size();
      t = t.substr(b, e - b);
    }
  }

 private:
  uint32_t content_;
  size_t start_, stop_;
};

// Metaspace: the replacement becomes a space; in the first token every replacement is dropped
// unless the prepend scheme is "never" (tokenizers' decoders/metaspace.rs, observed in 0.23).
class MetaspaceDecoder : public Decoder {
 public:
  MetaspaceDecoder(std::string replacement, bool strip_first) : replacement_(std::move(replacement)), strip_first_(strip_first) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i)
      tokens[i] = replace_all(tokens[i], replacement_, nullptr, i == 0 && strip_first_ ? "" : " ");
  }

 private:
  std::string replacement_;
  bool strip_first_;
};

}  // namespace

std::unique_ptr<Decoder> make_llama_decoder(bool strip_leading_space) {
  std::vector<std::unique_ptr<Decoder>> parts;
  parts.push_back(std::make_unique<ReplaceDecoder>(std::make_pair(std::string("\u2581"), nullptr), " "));
  parts.push_back(std::make_unique<ByteFallbackDecoder>());
  parts.push_back(std::make_unique<FuseDecoder>());
  if (strip_leading_space) parts.push_back(std::make_unique<StripDecoder>(' ', 1, 0));
  return std::make_unique<SequenceDecoder>(std::move(parts));
}

std::unique_ptr<Decoder> make_decoder(const json& j, const std::string& file) {
  if (j.is_null()) return nullptr;
  std::string where = file + ": decoder";
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string()) throw TokenizerError(where + " has no \"type\"");
  std::string type = j["type"];
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Decoder>> parts;
    for (const auto& p : j.value("decoders", json::array())) {
      auto d = make_decoder(p, file);
      if (d) parts.push_back(std::move(d));
    }
    return std::make_unique<SequenceDecoder>(std::move(parts));
  }
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Replace") {
    if (!j.contains("content") || !j["content"].is_string()) throw TokenizerError(where + ": Replace has no content");
    return std::make_unique<ReplaceDecoder>(parse_pattern(j.value("pattern", json()), where + " Replace"),
                                            j["content"].get<std::string>());
  }
  if (type == "Strip") {
    std::string content = j.value("content", std::string(" "));
    if (content.empty() || !unicode::is_valid_utf8(content) ||
        unicode::char_length(static_cast<unsigned char>(content[0])) != content.size())
      throw TokenizerError(where + ": Strip content must be one character");
    return std::make_unique<StripDecoder>(unicode::decode_at(content, 0), j.value("start", size_t{0}),
                                          j.value("stop", size_t{0}));
  }
  if (type == "Metaspace") {
    std::string scheme = j.value("prepend_scheme", std::string());
    if (scheme.empty()) scheme = j.value("add_prefix_space", true) ? "always" : "never";
    return std::make_unique<MetaspaceDecoder>(j.value("replacement", std::string("\u2581")), scheme != "never");
  }
  throw TokenizerError(file + ": unsupported decoder type \"" + type +
                       "\" (supported: Sequence, ByteLevel, ByteFallback, Fuse, Replace, Strip, Metaspace)");
}

}  // namespace llmtune::tokenizer
