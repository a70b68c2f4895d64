// One tokenizer interface over two implementations: SentencePiece (`tokenizer.model`) and
// byte-level BPE (`tokenizer.json`). Results equal transformers' AutoTokenizer on the same files.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace llmtune::tokenizer {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Token ids of `text`. Added/special tokens written in the text (e.g. "<|eot_id|>") are matched
  // first, as HF does. add_special_tokens: BOS/EOS as the post-processor or add_bos_token /
  // add_eos_token say (HF's add_special_tokens=True).
  virtual std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const = 0;
  // encode() plus, for each token, the byte range [begin, end) of `text` it comes from (HF's
  // return_offsets_mapping in bytes, without ByteLevel's trim_offsets): a token that starts or ends
  // inside a multi-byte character covers that whole character; a SentencePiece dummy-prefix "▁"
  // belongs to the character after it; BOS/EOS added by add_special_tokens get an empty range
  // ([0, 0) before the text, [size, size) after it). Same ids as encode().
  struct Encoding {
    std::vector<int32_t> ids;
    std::vector<std::pair<size_t, size_t>> offsets;
  };
  virtual Encoding encode_with_offsets(std::string_view text, bool add_special_tokens = true) const = 0;
  // Text of `ids`; skip_special_tokens drops tokens marked special (HF's skip_special_tokens).
  virtual std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const = 0;

  virtual int32_t vocab_size() const = 0;  // including added tokens
  virtual std::string id_to_piece(int32_t id) const = 0;  // the vocabulary string ("Ġthe", "▁the", "<0x0A>")
  virtual std::optional<int32_t> piece_to_id(std::string_view piece) const = 0;
  virtual bool is_special(int32_t id) const = 0;

  // Special tokens as tokenizer_config.json names them; nullopt when absent.
  std::optional<int32_t> bos_id, eos_id, pad_id, unk_id;
  std::string bos_token, eos_token, pad_token, unk_token;  // "" when absent
  // Stop ids for generation: generation_config.json's eos_token_id (single or list), else eos_id.
  std::vector<int32_t> stop_ids;
  // The chat template: chat_template.jinja if present, else tokenizer_config.json's chat_template
  // (the "default" one when it is a list); "" when the tokenizer has none.
  std::string chat_template;
};

// Loads the tokenizer of a model directory: tokenizer.json when present, else tokenizer.model,
// with tokenizer_config.json, special_tokens_map.json, chat_template.jinja and
// generation_config.json. Errors (missing files, malformed JSON) are TokenizerErrors naming the file.
std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& model_dir);

}  // namespace llmtune::tokenizer
