// The Tokenizer both loaders produce: added tokens -> normalizer -> pre-tokenizer -> model ->
// post-processor on the way in, and token strings -> decoder on the way out (tokenizers'
// TokenizerImpl::encode / decode). The model is BPE from tokenizer.json or SentencePiece.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "added_tokens.h"
#include "components.h"
#include "llmtune/tokenizer/tokenizer.h"

namespace llmtune::tokenizer {

struct Pipeline {
  AddedVocabulary added;
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<Model> model;
  std::unique_ptr<Decoder> decoder;
  // The post-processor for a single sequence: ids around the text when add_special_tokens.
  std::vector<int32_t> prefix_ids, suffix_ids;
};

class PipelineTokenizer : public Tokenizer {
 public:
  explicit PipelineTokenizer(Pipeline p);

  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const override;
  Encoding encode_with_offsets(std::string_view text, bool add_special_tokens = true) const override;
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const override;
  int32_t vocab_size() const override;
  std::string id_to_piece(int32_t id) const override;
  std::optional<int32_t> piece_to_id(std::string_view piece) const override;
  bool is_special(int32_t id) const override;

  Pipeline& pipeline() { return p_; }  // for the loader, before first use

 private:
  Pipeline p_;
};

}  // namespace llmtune::tokenizer
