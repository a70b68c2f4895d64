// Encode and decode over the pipeline stages (tokenizers' TokenizerImpl semantics).
#include "pipeline.h"

#include <algorithm>

#include "llmtune/util/error.h"
#include "llmtune/util/log.h"
#include "unicode.h"

namespace llmtune::tokenizer {

PipelineTokenizer::PipelineTokenizer(Pipeline p) : p_(std::move(p)) {}

std::vector<int32_t> PipelineTokenizer::encode(std::string_view text, bool add_special_tokens) const {
  std::string repaired;
  if (!unicode::is_valid_utf8(text)) {
    // Python text is always valid Unicode; bytes that are not become U+FFFD, said once.
    if (log::first_time("tokenizer-invalid-utf8"))
      spdlog::warn("tokenizer: input text is not valid UTF-8; invalid bytes are encoded as U+FFFD");
    repaired = unicode::to_valid_utf8(text);
    text = repaired;
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (add_special_tokens) ids.insert(ids.end(), p_.prefix_ids.begin(), p_.prefix_ids.end());
  std::vector<Split> splits;
  for (auto& seg : p_.added.split(text, p_.normalizer.get())) {
    if (seg.id >= 0) {
      ids.push_back(seg.id);
      continue;
    }
    splits.clear();
    splits.push_back({std::move(seg.text), seg.at_start});
    if (p_.pre_tokenizer) p_.pre_tokenizer->pre_tokenize(splits);
    for (const auto& s : splits) p_.model->tokenize(s.text, ids);
  }
  if (add_special_tokens) ids.insert(ids.end(), p_.suffix_ids.begin(), p_.suffix_ids.end());
  return ids;
}

Tokenizer::Encoding PipelineTokenizer::encode_with_offsets(std::string_view text, bool add_special_tokens) const {
  if (!unicode::is_valid_utf8(text))
    throw TokenizerError("encode_with_offsets: the text is not valid UTF-8; offsets would not refer to it");
  Encoding enc;
  auto add_fixed = [&](const std::vector<int32_t>& ids, size_t at) {
    for (int32_t id : ids) enc.ids.push_back(id), enc.offsets.emplace_back(at, at);
  };
  // Widen [b, e) to whole characters of `text`. Bytes a normalizer inserted at the very end (an
  // empty Replace match there) carry the offset text.size(), so a range is clamped to the text first.
  auto widen = [&](size_t b, size_t e) {
    e = std::min(e, text.size());
    b = std::min(b, e);
    while (b > 0 && b < text.size() && (static_cast<unsigned char>(text[b]) & 0xC0) == 0x80) --b;
    while (e < text.size() && (static_cast<unsigned char>(text[e]) & 0xC0) == 0x80) ++e;
    return std::make_pair(b, e);
  };
  if (add_special_tokens) add_fixed(p_.prefix_ids, 0);
  std::vector<Split> splits;
  std::vector<int32_t> word_ids;
  for (auto& seg : p_.added.split(text, p_.normalizer.get(), /*track_offsets=*/true)) {
    if (seg.id >= 0) {
      enc.ids.push_back(seg.id);
      enc.offsets.push_back(widen(seg.begin, seg.end));
      continue;
    }
    splits.clear();
    splits.push_back({std::move(seg.text), seg.at_start, std::move(seg.src)});
    if (p_.pre_tokenizer) p_.pre_tokenizer->pre_tokenize(splits);
    for (const auto& s : splits) {
      word_ids.clear();
      p_.model->tokenize(s.text, word_ids);
      std::vector<size_t> lengths = p_.model->token_lengths(s.text, word_ids);
      size_t pos = 0;
      for (size_t i = 0; i < word_ids.size(); ++i) {
        size_t b = pos, e = std::min(pos + lengths[i], s.text.size());
        pos = e;
        std::pair<size_t, size_t> range{text.size(), text.size()};
        if (b < e && !s.src.empty()) range = widen(s.src[b], s.src[e - 1] + 1);
        else if (b < s.src.size()) range = {std::min<size_t>(s.src[b], text.size()), std::min<size_t>(s.src[b], text.size())};
        enc.ids.push_back(word_ids[i]);
        enc.offsets.push_back(range);
      }
    }
  }
  if (add_special_tokens) add_fixed(p_.suffix_ids, text.size());
  return enc;
}

std::vector<size_t> Model::token_lengths(std::string_view word, std::span<const int32_t> ids) const {
  std::vector<size_t> lengths(ids.size(), 0);
  auto matches_at = [&](size_t i, size_t pos) -> size_t {  // bytes token i covers at pos, 0 if it does not fit
    auto token = id_to_token(ids[i]);
    if (!token || token->empty()) return 0;
    if (word.compare(pos, token->size(), *token) == 0) return token->size();
    // Byte fallback: "<0xXX>" stands for one byte.
    if (token->size() == 6 && token->compare(0, 3, "<0x") == 0 && token->back() == '>' && pos < word.size()) {
      unsigned value = std::stoul(token->substr(3, 2), nullptr, 16);
      if (static_cast<unsigned char>(word[pos]) == value) return 1;
    }
    return 0;
  };
  size_t pos = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (size_t n = matches_at(i, pos)) {
      lengths[i] = n;
      pos += n;
      continue;
    }
    // An unknown token: whole characters until the next token fits (or the word ends).
    size_t end = pos;
    do {
      end += end < word.size() ? unicode::char_length(static_cast<unsigned char>(word[end])) : 1;
    } while (end < word.size() && (i + 1 == ids.size() || matches_at(i + 1, end) == 0));
    end = std::min(end, word.size());
    if (i + 1 == ids.size()) end = word.size();
    lengths[i] = end - pos;
    pos = end;
  }
  return lengths;
}

std::string PipelineTokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (const AddedToken* t = p_.added.by_id(id)) {
      if (!(skip_special_tokens && t->special)) tokens.push_back(t->content);
      continue;
    }
    auto token = p_.model->id_to_token(id);
    if (!token) {
      // Models often pad their vocabulary past the tokenizer's (Qwen2, the fixtures); a generated
      // id there has no text. transformers drops it; so do we, and say so once.
      if (log::first_time("tokenizer.decode.out_of_range"))
        spdlog::warn("decode: token id {} is outside the tokenizer's vocabulary (size {}); such ids decode to nothing",
                     id, vocab_size());
      continue;
    }
    tokens.push_back(std::move(*token));
  }
  if (!p_.decoder) {  // tokenizers joins with spaces when there is no decoder
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
    return out;
  }
  p_.decoder->decode_chain(tokens);
  std::string out;
  for (const auto& t : tokens) out += t;
  return out;
}

int32_t PipelineTokenizer::vocab_size() const {
  int32_t n = p_.model->size();
  for (const auto& t : p_.added.tokens()) n = std::max(n, t.id + 1);
  return n;
}

std::string PipelineTokenizer::id_to_piece(int32_t id) const {
  if (const AddedToken* t = p_.added.by_id(id)) return t->content;
  auto token = p_.model->id_to_token(id);
  if (!token) throw TokenizerError("token id " + std::to_string(id) + " is outside the vocabulary");
  return *token;
}

std::optional<int32_t> PipelineTokenizer::piece_to_id(std::string_view piece) const {
  if (const AddedToken* t = p_.added.by_content(piece)) return t->id;
  return p_.model->token_to_id(piece);
}

bool PipelineTokenizer::is_special(int32_t id) const {
  const AddedToken* t = p_.added.by_id(id);
  return t && t->special;
}

}  // namespace llmtune::tokenizer
