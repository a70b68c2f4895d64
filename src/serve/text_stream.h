// Generated token ids → the text a client may be shown so far, as it grows: cut before the first
// stop string, never ending inside a character or on the first bytes of a possible stop string.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "llmtune/tokenizer/tokenizer.h"

namespace llmtune::serve {

// Generated ids → text as it may be shown so far: cut before the first stop string, holding back
// the characters that could still begin one and an incomplete UTF-8 sequence (decoded as U+FFFD).
class TextStream {
 public:
  TextStream(const tokenizer::Tokenizer& tok, const std::vector<std::string>& stop) : tok_(tok), stop_(stop) {
    for (const auto& s : stop_)
      if (!s.empty()) hold_ = std::max(hold_, s.size() - 1);
  }
  // Adds one id; returns the text that became final.
  std::string push(int64_t id) {
    ids_.push_back(static_cast<int32_t>(id));
    text_ = tok_.decode(ids_, /*skip_special_tokens=*/true);
    for (const auto& s : stop_) {
      if (auto pos = text_.find(s); pos != std::string::npos) {
        text_.resize(pos);
        stopped_ = true;
      }
    }
    const bool incomplete = text_.size() >= 3 && text_.compare(text_.size() - 3, 3, "\xEF\xBF\xBD") == 0;
    size_t limit = stopped_ ? text_.size() : (text_.size() > hold_ ? text_.size() - hold_ : 0);
    if (incomplete && !stopped_) limit = std::min(limit, text_.size() - 3);
    // Never split a character between two pieces (each piece goes out as JSON, which must be UTF-8).
    while (limit > shown_ && limit < text_.size() && (static_cast<unsigned char>(text_[limit]) & 0xC0) == 0x80) --limit;
    return take(limit);
  }
  // The rest, at the end.
  std::string rest() { return take(text_.size()); }
  bool stopped() const { return stopped_; }

 private:
  std::string take(size_t limit) {
    if (limit <= shown_) return "";
    std::string out = text_.substr(shown_, limit - shown_);
    shown_ = limit;
    return out;
  }
  const tokenizer::Tokenizer& tok_;
  const std::vector<std::string>& stop_;
  std::vector<int32_t> ids_;
  std::string text_;
  size_t hold_ = 0, shown_ = 0;
  bool stopped_ = false;
};

}  // namespace llmtune::serve
