// What load_tokenizer() reads besides the vocabulary: special tokens and their ids, stop ids,
// chat templates, BOS/EOS flags; and behaviours that the interop test does not isolate.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "llmtune/tokenizer/tokenizer.h"
#include "llmtune/util/error.h"
#include "tokenizer/tokenizer_reference.h"

namespace {

namespace fs = std::filesystem;
using llmtune::testing::fixture_tokenizer_dir;
using llmtune::tokenizer::load_tokenizer;
using ids_t = std::vector<int32_t>;

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(TokenizerConfig, Llama3SpecialTokensAndStopIds) {
  auto tok = load_tokenizer(fixture_tokenizer_dir("bpe-llama3"));
  EXPECT_EQ(tok->bos_token, "<|begin_of_text|>");
  EXPECT_EQ(tok->bos_id, 2000);
  EXPECT_EQ(tok->eos_token, "<|eot_id|>");
  EXPECT_EQ(tok->eos_id, 2009);
  EXPECT_FALSE(tok->pad_id.has_value());
  EXPECT_EQ(tok->stop_ids, (ids_t{2001, 2008, 2009}));
  EXPECT_EQ(tok->vocab_size(), 2048);
  EXPECT_TRUE(tok->is_special(2009));
  EXPECT_FALSE(tok->is_special(100));
  EXPECT_EQ(tok->piece_to_id("<|start_header_id|>"), 2006);
  EXPECT_EQ(tok->id_to_piece(2007), "<|end_header_id|>");
  EXPECT_EQ(tok->encode("", true), (ids_t{2000}));
  EXPECT_NE(tok->chat_template.find("<|start_header_id|>"), std::string::npos);
  EXPECT_EQ(tok->decode(tok->encode("hi<|eot_id|>there"), true), "hithere");
}

TEST(TokenizerConfig, SentencePieceSpecialTokens) {
  auto tok = load_tokenizer(fixture_tokenizer_dir("spm-llama"));
  EXPECT_EQ(tok->bos_id, 1);  // tokenizer_config.json's {"content": "<s>", ...} dict
  EXPECT_EQ(tok->eos_id, 2);
  EXPECT_EQ(tok->unk_id, 0);
  EXPECT_EQ(tok->stop_ids, (ids_t{2}));
  EXPECT_EQ(tok->id_to_piece(3 + 0x0A), "<0x0A>");
  EXPECT_EQ(tok->encode("").size(), 1u);
  EXPECT_TRUE(tok->encode("", false).empty());
  EXPECT_NE(tok->chat_template.find("[INST]"), std::string::npos);
}

TEST(TokenizerConfig, ChatTemplateJinjaWinsAndQwenHasNoBos) {
  std::string dir = fixture_tokenizer_dir("bpe-qwen2");
  auto tok = load_tokenizer(dir);
  EXPECT_EQ(tok->chat_template, slurp(fs::path(dir) / "chat_template.jinja"));
  EXPECT_FALSE(tok->bos_id.has_value());
  EXPECT_EQ(tok->eos_id, 2002);
  EXPECT_EQ(tok->pad_id, 2000);
  EXPECT_EQ(tok->stop_ids, (ids_t{2002, 2000}));
  EXPECT_EQ(tok->encode("<|im_start|>", true), (ids_t{2001}));
  // NFC happens before added tokens with normalized=true are matched.
  EXPECT_EQ(tok->encode("A\u030angstro\u0308m", false), (ids_t{2005}));
}

TEST(TokenizerConfig, SmolLMSpecialTokensAsShipped) {
  // SmolLM2-Instruct: specials at ids 0..16 of the vocabulary, ChatML markers as BOS/EOS, no BOS added.
  auto tok = load_tokenizer(fixture_tokenizer_dir("bpe-smollm"));
  EXPECT_EQ(tok->bos_token, "<|im_start|>");
  EXPECT_EQ(tok->bos_id, 1);
  EXPECT_EQ(tok->eos_id, 2);
  EXPECT_EQ(tok->pad_id, 2);
  EXPECT_EQ(tok->unk_id, 0);
  EXPECT_EQ(tok->stop_ids, (ids_t{2}));
  EXPECT_EQ(tok->vocab_size(), 2000);
  const char* specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>", "<file_sep>",
                            "<filename>", "<gh_stars>", "<issue_start>", "<issue_comment>", "<issue_closed>",
                            "<jupyter_start>", "<jupyter_text>", "<jupyter_code>", "<jupyter_output>",
                            "<jupyter_script>", "<empty_output>"};
  for (int32_t id = 0; id < 17; ++id) {
    EXPECT_EQ(tok->id_to_piece(id), specials[id]);
    EXPECT_TRUE(tok->is_special(id)) << specials[id];
  }
  EXPECT_FALSE(tok->is_special(17));
  EXPECT_EQ(tok->encode("", true), ids_t{});
  // Digits are split one by one before the GPT-2 regex: " 2024" is "Ġ", "2", "0", "2", "4".
  auto ids = tok->encode(" 2024", false);
  ASSERT_EQ(ids.size(), 5u);
  EXPECT_EQ(tok->id_to_piece(ids[0]), "\u0120");
  EXPECT_EQ(tok->id_to_piece(ids[1]), "2");
  EXPECT_EQ(tok->decode(ids), " 2024");
  // The split comes first, so "a  1" keeps its two spaces as one "ĠĠ" piece; transformers 5's
  // GPT2Tokenizer, which drops the Digits stage, would cut them into "Ġ" and "Ġ1".
  std::vector<std::string> pieces;
  for (int32_t id : tok->encode("a  1", false)) pieces.push_back(tok->id_to_piece(id));
  EXPECT_EQ(pieces, (std::vector<std::string>{"a", "\u0120\u0120", "1"}));
  EXPECT_NE(tok->chat_template.find("You are a helpful AI assistant named SmolLM"), std::string::npos);
}

TEST(TokenizerConfig, ChatTemplateListAndFlags) {
  fs::path dir = fs::temp_directory_path() / ("llmtune-tokcfg-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  fs::copy_file(fs::path(fixture_tokenizer_dir("bpe-gpt2")) / "tokenizer.json", dir / "tokenizer.json",
                fs::copy_options::overwrite_existing);
  nlohmann::json cfg = nlohmann::json::parse(slurp(fs::path(fixture_tokenizer_dir("bpe-gpt2")) / "tokenizer_config.json"));
  cfg["chat_template"] = nlohmann::json::array({{{"name", "tool_use"}, {"template", "T"}}, {{"name", "default"}, {"template", "D"}}});
  cfg["add_bos_token"] = true;  // transformers 5 rebuilds the post-processor from these flags
  cfg["add_eos_token"] = true;
  std::ofstream(dir / "tokenizer_config.json") << cfg.dump();
  std::ofstream(dir / "generation_config.json") << R"({"eos_token_id": 2000})";
  auto tok = load_tokenizer(dir);
  EXPECT_EQ(tok->chat_template, "D");
  EXPECT_EQ(tok->stop_ids, (ids_t{2000}));
  auto ids = tok->encode("hi");
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids.front(), 2000);
  EXPECT_EQ(ids.back(), 2000);
  fs::remove_all(dir);
}

TEST(TokenizerConfig, LegacyPrependsAfterSpecialTokens) {
  // legacy: true (Metaspace "always") puts "▁" before text that follows a special token;
  // the default "first" does not. AutoTokenizer agrees (interop test); here the difference itself.
  auto legacy = load_tokenizer(fixture_tokenizer_dir("spm-llama-json"));
  auto first = load_tokenizer(fixture_tokenizer_dir("spm-llama"));
  EXPECT_NE(legacy->encode("<s>x", false), first->encode("<s>x", false));
  EXPECT_EQ(legacy->encode("x", false), first->encode("x", false));
}

TEST(TokenizerConfig, InvalidUtf8BecomesReplacementCharacter) {
  auto tok = load_tokenizer(fixture_tokenizer_dir("bpe-llama3"));
  EXPECT_EQ(tok->encode("a\xff" "b", false), tok->encode("a\xef\xbf\xbd" "b", false));
}

TEST(TokenizerConfig, IdsPastTheVocabularyDecodeToNothing) {
  // Models pad their vocabulary past the tokenizer's; transformers decodes such ids to "".
  auto tok = load_tokenizer(fixture_tokenizer_dir("bpe-llama3"));
  auto ids = tok->encode("hello", false);
  EXPECT_EQ(tok->decode(ids_t{999999}), "");
  ids_t with_pad = ids;
  with_pad.insert(with_pad.begin() + 1, 999999);
  EXPECT_EQ(tok->decode(with_pad), tok->decode(ids));
}

TEST(TokenizerConfig, DecodeRepairsPartialUtf8) {
  auto tok = load_tokenizer(fixture_tokenizer_dir("bpe-gpt2"));
  auto ids = tok->encode("\U0001D11E", false);  // 𝄞, not in the corpus
  ASSERT_GT(ids.size(), 1u);  // not a single token in this small vocabulary
  EXPECT_EQ(tok->decode(ids_t{ids.front()}), "\xef\xbf\xbd");
  EXPECT_EQ(tok->decode(ids), "\U0001D11E");
}

}  // namespace
