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
