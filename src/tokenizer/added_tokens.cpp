// AddedVocabulary: tokenizers' find_matches (added_vocabulary.rs) over a first-byte index.
#include "added_tokens.h"

#include <algorithm>
#include <cstring>

#include "components.h"
#include "unicode.h"

namespace llmtune::tokenizer {

void AddedVocabulary::add(AddedToken token) {
  if (auto it = by_content_.find(token.content); it != by_content_.end()) {
    by_id_.erase(tokens_[it->second].id);
    tokens_[it->second] = token;
    by_id_[token.id] = it->second;
  } else {
    by_content_[token.content] = tokens_.size();
    by_id_[token.id] = tokens_.size();
    tokens_.push_back(std::move(token));
  }
  rebuild();
}

const AddedToken* AddedVocabulary::by_id(int32_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

const AddedToken* AddedVocabulary::by_content(std::string_view content) const {
  auto it = by_content_.find(std::string(content));
  return it == by_content_.end() ? nullptr : &tokens_[it->second];
}

void AddedVocabulary::set_normalizer(const Normalizer* normalizer) {
  built_for_ = normalizer;
  rebuild();
}

void AddedVocabulary::rebuild() {
  raw_ = Matcher();
  normalized_ = Matcher();
  normalized_content_.assign(tokens_.size(), std::string());
  for (size_t i = 0; i < tokens_.size(); ++i) {
    const AddedToken& t = tokens_[i];
    normalized_content_[i] = t.content;
    if (t.normalized && built_for_) built_for_->normalize(normalized_content_[i]);
    const std::string& key = normalized_content_[i];
    if (key.empty()) continue;
    Matcher& m = t.normalized ? normalized_ : raw_;
    m.by_first_byte[static_cast<unsigned char>(key[0])].push_back(i);
    m.empty = false;
  }
  for (Matcher* m : {&raw_, &normalized_})
    for (auto& bucket : m->by_first_byte)
      std::stable_sort(bucket.begin(), bucket.end(), [&](size_t a, size_t b) {
        return normalized_content_[a].size() > normalized_content_[b].size();
      });
}

namespace {

size_t whitespace_run_before(std::string_view s, size_t end) {  // start of trailing whitespace in s[0, end)
  size_t i = end;
  while (i > 0) {
    size_t j = i - 1;
    while (j > 0 && (static_cast<unsigned char>(s[j]) & 0xC0) == 0x80) --j;
    if (!unicode::is_whitespace(unicode::decode_at(s, j))) break;
    i = j;
  }
  return i;
}

size_t whitespace_run_after(std::string_view s, size_t begin) {  // end of leading whitespace in s[begin, ...)
  size_t i = begin;
  while (i < s.size() && unicode::is_whitespace(unicode::decode_at(s, i)))
    i += unicode::char_length(static_cast<unsigned char>(s[i]));
  return i;
}

bool word_char_before(std::string_view s, size_t pos) {
  if (pos == 0) return false;
  size_t j = pos - 1;
  while (j > 0 && (static_cast<unsigned char>(s[j]) & 0xC0) == 0x80) --j;
  return unicode::is_word_character(unicode::decode_at(s, j));
}

bool word_char_after(std::string_view s, size_t pos) {
  return pos < s.size() && unicode::is_word_character(unicode::decode_at(s, pos));
}

}  // namespace

void AddedVocabulary::split_with(const Matcher& m, const Segment& in, std::vector<Segment>& out) const {
  std::string_view s = in.text;
  if (m.empty) {
    if (!s.empty()) out.push_back(in);
    return;
  }
  size_t done = 0;  // end of what has been emitted
  const bool tracked = !in.src.empty();
  auto orig = [&](size_t i) -> size_t {  // original offset of byte i of the segment (i may be the end)
    if (i < in.src.size()) return in.src[i];
    return in.src.empty() ? 0 : in.src.back() + 1;
  };
  auto emit_text = [&](size_t b, size_t e) {
    if (b >= e) return;
    Segment seg{-1, std::string(s.substr(b, e - b)), in.at_start && b == 0, {}, 0, 0};
    if (tracked) seg.src.assign(in.src.begin() + b, in.src.begin() + e);
    out.push_back(std::move(seg));
  };
  for (size_t pos = 0; pos < s.size();) {
    const auto& bucket = m.by_first_byte[static_cast<unsigned char>(s[pos])];
    const AddedToken* hit = nullptr;
    size_t len = 0;
    for (size_t idx : bucket) {
      const std::string& key = normalized_content_[idx];
      if (key.size() <= s.size() - pos && std::memcmp(s.data() + pos, key.data(), key.size()) == 0) {
        hit = &tokens_[idx];
        len = key.size();
        break;
      }
    }
    if (!hit) {
      ++pos;
      continue;
    }
    size_t start = pos, stop = pos + len;
    const size_t match_end = stop;  // HF's offsets include lstrip'ed spaces, not rstrip'ed ones
    if (hit->single_word && (word_char_before(s, start) || word_char_after(s, stop))) {
      pos = stop;  // the rejected match is still consumed, as with tokenizers' non-overlapping find_iter
      continue;
    }
    if (hit->lstrip) start = std::max(whitespace_run_before(s, start), done);
    if (hit->rstrip) stop = whitespace_run_after(s, stop);
    emit_text(done, start);
    out.push_back({hit->id, std::string(), false, {}, tracked ? orig(start) : 0, tracked ? orig(match_end - 1) + 1 : 0});
    done = stop;
    pos = stop;
  }
  emit_text(done, s.size());
}

std::vector<Segment> AddedVocabulary::split(std::string_view text, const Normalizer* normalizer,
                                           bool track_offsets) const {
  std::vector<Segment> first, result;
  Segment whole{-1, std::string(text), true, {}, 0, 0};
  if (track_offsets) {
    whole.src.resize(text.size());
    for (size_t i = 0; i < text.size(); ++i) whole.src[i] = static_cast<uint32_t>(i);
  }
  split_with(raw_, whole, first);
  for (auto& seg : first) {
    if (seg.id >= 0) {
      result.push_back(std::move(seg));
      continue;
    }
    if (normalizer) {
      if (track_offsets) normalizer->normalize_aligned(seg.text, seg.src);
      else normalizer->normalize(seg.text);
    }
    split_with(normalized_, seg, result);
  }
  return result;
}

}  // namespace llmtune::tokenizer
