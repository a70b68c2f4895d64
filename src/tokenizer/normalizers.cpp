// tokenizer.json normalizers: NFC/NFD/NFKC/NFKD (utf8proc), Sequence, Prepend, Replace.
#include <memory>
#include <string>

#include "components.h"
#include "llmtune/util/error.h"
#include "regex.h"
#include "unicode.h"

namespace llmtune::tokenizer {
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

 private:
  std::string prefix_;
};

}  // namespace

// Replace with a String or Regex pattern; shared with the Replace decoder.
std::string replace_all(const std::string& text, const std::string& literal, const Regex* regex,
                        const std::string& content) {
  std::string out;
  size_t last = 0;
  if (regex) {
    for (auto [b, e] : regex->find_all(text)) {
      out.append(text, last, b - last);
      out += content;
      last = e;
    }
  } else {
    if (literal.empty()) return text;
    for (size_t pos = text.find(literal); pos != std::string::npos; pos = text.find(literal, last)) {
      out.append(text, last, pos - last);
      out += content;
      last = pos + literal.size();
    }
  }
  out.append(text, last, std::string::npos);
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
