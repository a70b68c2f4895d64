// Added tokens (special tokens, chat markers) split out of the text before normalization and
// pre-tokenization, as tokenizers' AddedVocabulary does: leftmost-longest match, lstrip / rstrip /
// single_word, and a second pass on the normalized text for tokens with normalized=true.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace llmtune::tokenizer {

class Normalizer;

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false, lstrip = false, rstrip = false, single_word = false, normalized = false;
};

// One piece of the input after splitting: an added token's id, or text (id < 0).
struct Segment {
  int32_t id = -1;
  std::string text;
  bool at_start = false;  // text that begins at offset 0 of the input
  // With offsets tracked: the original byte offset of each byte of `text`, and for an added token
  // the original range [begin, end) it was matched in (stripped whitespace included).
  std::vector<uint32_t> src;
  size_t begin = 0, end = 0;
};

class AddedVocabulary {
 public:
  void add(AddedToken token);  // a token with the same content replaces the earlier one
  const AddedToken* by_id(int32_t id) const;
  const AddedToken* by_content(std::string_view content) const;
  const std::vector<AddedToken>& tokens() const { return tokens_; }

  // Splits `text`; text segments are normalized with `normalizer` (may be null) on the way.
  // track_offsets: fill Segment::src / begin / end.
  std::vector<Segment> split(std::string_view text, const Normalizer* normalizer, bool track_offsets = false) const;

 private:
  struct Matcher {
    std::array<std::vector<size_t>, 256> by_first_byte;  // token indices, longest content first
    bool empty = true;
  };
  void rebuild();
  void split_with(const Matcher& m, const Segment& in, std::vector<Segment>& out) const;

  std::vector<AddedToken> tokens_;
  std::unordered_map<int32_t, size_t> by_id_;
  std::unordered_map<std::string, size_t> by_content_;
  Matcher raw_, normalized_;
  const Normalizer* built_for_ = nullptr;
  std::vector<std::string> normalized_content_;  // content after the normalizer, per token
 public:
  // Normalized tokens are matched against their normalized content; call once the normalizer is known.
  void set_normalizer(const Normalizer* normalizer);
};

}  // namespace llmtune::tokenizer
