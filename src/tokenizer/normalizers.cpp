// tokenizer.json normalizers: NFC/NFD/NFKC/NFKD (utf8proc), Sequence, Prepend, Replace.
#include <memory>
#include <string>

#include "components.h"
#include "llmtune/util/error.h"
#include "regex.h"
#include "unicode.h"

namespace llmtune::tokenizer {

void Normalizer::normalize_aligned(std::string& text, std::vector<uint32_t>& src) const {
  std::string out;
  std::vector<uint32_t> out_src;
  out.reserve(text.size());
  out_src.reserve(text.size());
  for (size_t b = 0; b < text.size();) {
    size_t e = b + 1;
    while (e < text.size() && static_cast<unsigned char>(text[e]) >= 0x80) ++e;
    std::string chunk = text.substr(b, e - b);
    normalize(chunk);
    if (chunk.compare(0, std::string::npos, text, b, e - b) == 0) {
      out_src.insert(out_src.end(), src.begin() + b, src.begin() + e);
    } else {
      out_src.insert(out_src.end(), chunk.size(), src[b]);
    }
    out += chunk;
    b = e;
  }
  text = std::move(out);
  src = std::move(out_src);
}

namespace {

using nlohmann::json;

class UnicodeNormalizer : public Normalizer {
 public:
  explicit UnicodeNormalizer(std::string form) : form_(std::move(form)) {}
  void normalize(std::string& text) const override { text = unicode::normalize(text, form_); }

 private:
  std::string form_;
};

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> parts) : parts_(std::move(parts)) {}
  void normalize(std::string& text) const override {
    for (const auto& p : parts_) p->normalize(text);
  }
  void normalize_aligned(std::string& text, std::vector<uint32_t>& src) const override {
    for (const auto& p : parts_) p->normalize_aligned(text, src);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

// Prepend: adds the string in front of any non-empty text (tokenizers' Prepend normalizer).
class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  void normalize(std::string& text) const override {
    if (!text.empty()) text.insert(0, prefix_);
  }
  void normalize_aligned(std::string& text, std::vector<uint32_t>& src) const override {
    if (text.empty()) return;
    text.insert(0, prefix_);
    src.insert(src.begin(), prefix_.size(), src[0]);
  }

 private:
  std::string prefix_;
};

}  // namespace

// Replace with a String or Regex pattern; shared with the Replace decoder.
// With `src` (offsets per byte of text, or null), keeps it aligned: a replacement takes the offset
// of the first byte it replaces (or, for an empty match, of the byte after it).
std::string replace_all(const std::string& text, const std::string& literal, const Regex* regex,
                        const std::string& content, std::vector<uint32_t>* src) {
  std::vector<std::pair<size_t, size_t>> matches;
  if (regex) {
    matches = regex->find_all(text);
  } else {
    if (literal.empty()) return text;
    for (size_t pos = text.find(literal); pos != std::string::npos; pos = text.find(literal, pos + literal.size()))
      matches.emplace_back(pos, pos + literal.size());
  }
  std::string out;
  std::vector<uint32_t> out_src;
  size_t last = 0;
  auto offset_at = [&](size_t i) -> uint32_t {
    if (i < src->size()) return (*src)[i];
    return src->empty() ? 0 : src->back() + 1;
  };
  for (auto [b, e] : matches) {
    out.append(text, last, b - last);
    out += content;
    if (src) {
      out_src.insert(out_src.end(), src->begin() + last, src->begin() + b);
      out_src.insert(out_src.end(), content.size(), offset_at(b));
    }
    last = e;
  }
  out.append(text, last, std::string::npos);
  if (src) {
    out_src.insert(out_src.end(), src->begin() + last, src->end());
    *src = std::move(out_src);
  }
  return out;
}

// {"String": s} or {"Regex": r}: the pattern of Replace and Split.
std::pair<std::string, std::unique_ptr<Regex>> parse_pattern(const json& p, const std::string& where) {
  if (p.is_object() && p.contains("String") && p["String"].is_string()) return {p["String"].get<std::string>(), nullptr};
  if (p.is_object() && p.contains("Regex") && p["Regex"].is_string())
    return {"", std::make_unique<Regex>(p["Regex"].get<std::string>(), where)};
  throw TokenizerError(where + ": pattern must be {\"String\": ...} or {\"Regex\": ...}, got " + p.dump());
}

namespace {

class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(std::pair<std::string, std::unique_ptr<Regex>> pattern, std::string content)
      : literal_(std::move(pattern.first)), regex_(std::move(pattern.second)), content_(std::move(content)) {}
  void normalize(std::string& text) const override { text = replace_all(text, literal_, regex_.get(), content_); }
  void normalize_aligned(std::string& text, std::vector<uint32_t>& src) const override {
    text = replace_all(text, literal_, regex_.get(), content_, &src);
  }

 private:
  std::string literal_;
  std::unique_ptr<Regex> regex_;
  std::string content_;
};

std::string str_field(const json& j, const char* key, const std::string& where) {
  if (!j.contains(key) || !j[key].is_string()) throw TokenizerError(where + ": missing string field \"" + key + "\"");
  return j[key].get<std::string>();
}

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const json& j, const std::string& file) {
  if (j.is_null()) return nullptr;
  std::string where = file + ": normalizer";
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    throw TokenizerError(where + " has no \"type\"");
  std::string type = j["type"];
  if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") return std::make_unique<UnicodeNormalizer>(type);
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Normalizer>> parts;
    for (const auto& p : j.value("normalizers", json::array())) {
      auto n = make_normalizer(p, file);
      if (n) parts.push_back(std::move(n));
    }
    return std::make_unique<SequenceNormalizer>(std::move(parts));
  }
  if (type == "Prepend") return std::make_unique<PrependNormalizer>(str_field(j, "prepend", where));
  if (type == "Replace")
    return std::make_unique<ReplaceNormalizer>(parse_pattern(j.value("pattern", json()), where + " Replace"),
                                               str_field(j, "content", where));
  throw TokenizerError(file + ": unsupported normalizer type \"" + type +
                       "\" (supported: NFC, NFD, NFKC, NFKD, Sequence, Prepend, Replace)");
}

}  // namespace llmtune::tokenizer
