// tokenizer.json pre-tokenizers: Sequence, Split (Regex or String), ByteLevel (GPT-2 byte map and
// regex), Metaspace, Digits. Semantics follow huggingface/tokenizers' pre_tokenizers/*.rs.
#include <array>
#include <memory>
#include <string>

#include "components.h"
#include "llmtune/util/error.h"
#include "regex.h"
#include "unicode.h"

namespace llmtune::tokenizer {
namespace {

using nlohmann::json;

// GPT-2's pattern, used by ByteLevel when use_regex is true.
const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

enum class Behavior { Isolated, Removed, MergedWithPrevious, MergedWithNext, Contiguous };

Behavior parse_behavior(const std::string& s, const std::string& where) {
  if (s == "Isolated") return Behavior::Isolated;
  if (s == "Removed") return Behavior::Removed;
  if (s == "MergedWithPrevious") return Behavior::MergedWithPrevious;
  if (s == "MergedWithNext") return Behavior::MergedWithNext;
  if (s == "Contiguous") return Behavior::Contiguous;
  throw TokenizerError(where + ": unsupported Split behavior \"" + s + "\"");
}

// Splits `piece` at the given matches (sorted, non-overlapping) with tokenizers' delimiter behaviours.
void split_at(const Split& piece, const std::vector<std::pair<size_t, size_t>>& matches, Behavior behavior, bool invert,
              std::vector<Split>& out) {
  const std::string& t = piece.text;
  // (begin, end, is_match) covering the text.
  std::vector<std::tuple<size_t, size_t, bool>> parts;
  size_t last = 0;
  for (auto [b, e] : matches) {
    if (last < b) parts.emplace_back(last, b, invert);
    parts.emplace_back(b, e, !invert);
    last = e;
  }
  if (last < t.size()) parts.emplace_back(last, t.size(), invert);

  std::vector<std::pair<size_t, size_t>> pieces;
  for (size_t i = 0; i < parts.size(); ++i) {
    auto [b, e, is_match] = parts[i];
    switch (behavior) {
      case Behavior::Isolated: pieces.emplace_back(b, e); break;
      case Behavior::Removed: if (!is_match) pieces.emplace_back(b, e); break;
      case Behavior::MergedWithPrevious:
        if (is_match && !pieces.empty() && !std::get<2>(parts[i - 1])) pieces.back().second = e;
        else pieces.emplace_back(b, e);
        break;
      case Behavior::MergedWithNext:
        if (!is_match && i > 0 && std::get<2>(parts[i - 1]) && !pieces.empty()) pieces.back().second = e;
        else pieces.emplace_back(b, e);
        break;
      case Behavior::Contiguous:
        if (is_match && i > 0 && std::get<2>(parts[i - 1]) && !pieces.empty()) pieces.back().second = e;
        else pieces.emplace_back(b, e);
        break;
    }
  }
  for (auto [b, e] : pieces) {
    if (b == e) continue;
    Split part{t.substr(b, e - b), piece.at_start && b == 0, {}};
    if (!piece.src.empty()) part.src.assign(piece.src.begin() + b, piece.src.begin() + e);
    out.push_back(std::move(part));
  }
}

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> parts) : parts_(std::move(parts)) {}
  void pre_tokenize(std::vector<Split>& splits) const override {
    for (const auto& p : parts_) p->pre_tokenize(splits);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

class SplitPreTokenizer : public PreTokenizer {
 public:
  SplitPreTokenizer(std::pair<std::string, std::unique_ptr<Regex>> pattern, Behavior behavior, bool invert)
      : literal_(std::move(pattern.first)), regex_(std::move(pattern.second)), behavior_(behavior), invert_(invert) {}
  void pre_tokenize(std::vector<Split>& splits) const override {
    std::vector<Split> out;
    out.reserve(splits.size() * 4);
    for (const auto& s : splits) {
      std::vector<std::pair<size_t, size_t>> matches;
      if (regex_) {
        matches = regex_->find_all(s.text);
      } else if (!literal_.empty()) {
        for (size_t p = s.text.find(literal_); p != std::string::npos; p = s.text.find(literal_, p + literal_.size()))
          matches.emplace_back(p, p + literal_.size());
      }
      split_at(s, matches, behavior_, invert_, out);
    }
    splits = std::move(out);
  }

 private:
  std::string literal_;
  std::unique_ptr<Regex> regex_;
  Behavior behavior_;
  bool invert_;
};

// The GPT-2 byte -> printable character map (FORMATS.md §3.2), as UTF-8 strings.
const std::array<std::string, 256>& byte_to_unicode() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      unicode::append_utf8(t[b], printable ? static_cast<uint32_t>(b) : next++);
    }
    return t;
  }();
  return table;
}

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space), regex_(use_regex ? std::make_unique<Regex>(kGpt2Pattern, "ByteLevel") : nullptr) {}
  void pre_tokenize(std::vector<Split>& splits) const override {
    std::vector<Split> out;
    out.reserve(splits.size() * 2);
    for (auto& s : splits) {
      if (add_prefix_space_ && (s.text.empty() || s.text[0] != ' ')) {
        s.text.insert(0, " ");
        if (!s.src.empty()) s.src.insert(s.src.begin(), s.src[0]);
      }
      if (regex_) split_at(s, regex_->find_all(s.text), Behavior::Isolated, false, out);
      else out.push_back(std::move(s));
    }
    const auto& table = byte_to_unicode();
    for (auto& s : out) {
      std::string mapped;
      mapped.reserve(s.text.size() * 2);
      std::vector<uint32_t> mapped_src;
      for (size_t i = 0; i < s.text.size(); ++i) {
        const std::string& m = table[static_cast<unsigned char>(s.text[i])];
        mapped += m;
        if (!s.src.empty()) mapped_src.insert(mapped_src.end(), m.size(), s.src[i]);
      }
      s.text = std::move(mapped);
      s.src = std::move(mapped_src);
    }
    splits = std::move(out);
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;
};

class MetaspacePreTokenizer : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, std::string scheme, bool split)
      : replacement_(std::move(replacement)), scheme_(std::move(scheme)), split_(split) {}
  void pre_tokenize(std::vector<Split>& splits) const override {
    std::vector<Split> out;
    out.reserve(splits.size());
    for (auto& s : splits) {
      std::vector<uint32_t> src = s.src;
      std::string text = replace_all(s.text, " ", nullptr, replacement_, src.empty() ? nullptr : &src);
      bool starts = text.compare(0, replacement_.size(), replacement_) == 0;
      if (!starts && (scheme_ == "always" || (scheme_ == "first" && s.at_start))) {
        text.insert(0, replacement_);
        if (!src.empty()) src.insert(src.begin(), replacement_.size(), src[0]);
      }
      Split piece{std::move(text), s.at_start, std::move(src)};
      if (!split_) {
        out.push_back(std::move(piece));
        continue;
      }
      std::vector<std::pair<size_t, size_t>> matches;
      for (size_t p = piece.text.find(replacement_); p != std::string::npos;
           p = piece.text.find(replacement_, p + replacement_.size()))
        matches.emplace_back(p, p + replacement_.size());
      split_at(piece, matches, Behavior::MergedWithNext, false, out);
    }
    splits = std::move(out);
  }

 private:
  std::string replacement_, scheme_;
  bool split_;
};

// Digits: numeric characters (general category N, Rust's char::is_numeric) become pieces of their
// own, one per character with individual_digits, else one per run (StarCoder, SmolLM, Falcon).
class DigitsPreTokenizer : public PreTokenizer {
 public:
  explicit DigitsPreTokenizer(bool individual) : individual_(individual) {}
  void pre_tokenize(std::vector<Split>& splits) const override {
    std::vector<Split> out;
    out.reserve(splits.size() * 2);
    for (const auto& s : splits) {
      std::vector<std::pair<size_t, size_t>> matches;
      for (size_t i = 0; i < s.text.size();) {
        size_t n = unicode::char_length(static_cast<unsigned char>(s.text[i]));
        if (unicode::is_numeric(unicode::decode_at(s.text, i))) {
          if (!individual_ && !matches.empty() && matches.back().second == i) matches.back().second = i + n;
          else matches.emplace_back(i, i + n);
        }
        i += n;
      }
      split_at(s, matches, Behavior::Isolated, false, out);
    }
    splits = std::move(out);
  }

 private:
  bool individual_;
};

bool bool_field(const json& j, const char* key, bool fallback) {
  return j.contains(key) && j[key].is_boolean() ? j[key].get<bool>() : fallback;
}

}  // namespace

const std::array<std::string, 256>& gpt2_byte_to_unicode() { return byte_to_unicode(); }

std::unique_ptr<PreTokenizer> make_metaspace(const std::string& replacement, const std::string& prepend_scheme,
                                             bool split) {
  return std::make_unique<MetaspacePreTokenizer>(replacement, prepend_scheme, split);
}

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& j, const std::string& file) {
  if (j.is_null()) return nullptr;
  std::string where = file + ": pre_tokenizer";
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    throw TokenizerError(where + " has no \"type\"");
  std::string type = j["type"];
  if (type == "Sequence") {
    std::vector<std::unique_ptr<PreTokenizer>> parts;
    for (const auto& p : j.value("pretokenizers", json::array())) {
      auto pt = make_pre_tokenizer(p, file);
      if (pt) parts.push_back(std::move(pt));
    }
    return std::make_unique<SequencePreTokenizer>(std::move(parts));
  }
  if (type == "Split") {
    return std::make_unique<SplitPreTokenizer>(parse_pattern(j.value("pattern", json()), where + " Split"),
                                               parse_behavior(j.value("behavior", std::string("Isolated")), where),
                                               bool_field(j, "invert", false));
  }
  if (type == "ByteLevel")
    return std::make_unique<ByteLevelPreTokenizer>(bool_field(j, "add_prefix_space", true), bool_field(j, "use_regex", true));
  if (type == "Metaspace") {
    std::string scheme = j.value("prepend_scheme", std::string());
    // Files from tokenizers < 0.14 carry add_prefix_space instead of prepend_scheme.
    if (scheme.empty()) scheme = bool_field(j, "add_prefix_space", true) ? "always" : "never";
    if (scheme != "first" && scheme != "always" && scheme != "never")
      throw TokenizerError(where + ": Metaspace prepend_scheme \"" + scheme + "\" is not first, always or never");
    return std::make_unique<MetaspacePreTokenizer>(j.value("replacement", std::string("\u2581")), scheme,
                                                   bool_field(j, "split", true));
  }
  if (type == "Digits") {
    // tokenizers' deserializer requires the field; so do we.
    if (!j.contains("individual_digits") || !j["individual_digits"].is_boolean())
      throw TokenizerError(where + ": Digits needs a boolean \"individual_digits\"");
    return std::make_unique<DigitsPreTokenizer>(j["individual_digits"].get<bool>());
  }
  throw TokenizerError(file + ": unsupported pre_tokenizer type \"" + type +
                       "\" (supported: Sequence, Split, ByteLevel, Metaspace, Digits)");
}

}  // namespace llmtune::tokenizer
