// Malformed tokenizer directories: each is one TokenizerError line naming the file and the problem.
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
using llmtune::TokenizerError;
using llmtune::tokenizer::load_tokenizer;
using nlohmann::json;

class TokenizerErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("llmtune-tokerr-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  static std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  void write(const std::string& name, const std::string& bytes) { std::ofstream(dir_ / name, std::ios::binary) << bytes; }
  json fixture_json(const std::string& fixture) {
    return json::parse(slurp(fs::path(llmtune::testing::fixture_tokenizer_dir(fixture)) / "tokenizer.json"));
  }
  // The message of the TokenizerError that loading dir_ throws ("" when none).
  std::string load_error() {
    try {
      load_tokenizer(dir_);
    } catch (const TokenizerError& e) {
      std::string m = e.what();
      EXPECT_EQ(m.find('\n'), std::string::npos) << "not one line: " << m;
      return m;
    }
    ADD_FAILURE() << "no TokenizerError";
    return "";
  }
  fs::path dir_;
};

TEST_F(TokenizerErrors, MissingFiles) {
  std::string m = load_error();
  EXPECT_NE(m.find("no tokenizer.json or tokenizer.model"), std::string::npos) << m;
  EXPECT_NE(m.find(dir_.string()), std::string::npos) << m;
  fs::remove_all(dir_);
  m = load_error();
  EXPECT_NE(m.find("not a directory"), std::string::npos) << m;
}

TEST_F(TokenizerErrors, TruncatedTokenizerJson) {
  std::string text = slurp(fs::path(llmtune::testing::fixture_tokenizer_dir("bpe-llama3")) / "tokenizer.json");
  write("tokenizer.json", text.substr(0, text.size() / 2));
  std::string m = load_error();
  EXPECT_NE(m.find("tokenizer.json"), std::string::npos) << m;
  EXPECT_NE(m.find("malformed JSON"), std::string::npos) << m;
  write("tokenizer.json", "[1, 2]");
  EXPECT_NE(load_error().find("JSON object"), std::string::npos);
}

TEST_F(TokenizerErrors, UnsupportedTypesAreNamed) {
  struct Case {
    const char* section;
    json value;
    const char* type;
  };
  for (const Case& c : {Case{"pre_tokenizer", json{{"type", "Whitespace"}}, "Whitespace"},
                        Case{"normalizer", json{{"type", "Lowercase"}}, "Lowercase"},
                        Case{"decoder", json{{"type", "WordPiece"}}, "WordPiece"},
                        Case{"post_processor", json{{"type", "Frobnicate"}}, "Frobnicate"}}) {
    json j = fixture_json("bpe-gpt2");
    j[c.section] = c.value;
    write("tokenizer.json", j.dump());
    std::string m = load_error();
    EXPECT_NE(m.find(std::string("unsupported ") + c.section + " type \"" + c.type + "\""), std::string::npos) << m;
    EXPECT_NE(m.find((dir_ / "tokenizer.json").string()), std::string::npos) << m;
  }
  json j = fixture_json("bpe-gpt2");
  j["pre_tokenizer"] = json{{"type", "Sequence"}, {"pretokenizers", json::array({json{{"type", "Punctuation"}}})}};
  write("tokenizer.json", j.dump());
  EXPECT_NE(load_error().find("\"Punctuation\""), std::string::npos);
  j = fixture_json("bpe-gpt2");
  j["model"]["type"] = "Unigram";
  write("tokenizer.json", j.dump());
  EXPECT_NE(load_error().find("unsupported model type \"Unigram\""), std::string::npos);
}

TEST_F(TokenizerErrors, BadMergesAndRegex) {
  json j = fixture_json("bpe-gpt2");
  j["model"]["merges"][0] = "a b c";
  write("tokenizer.json", j.dump());
  EXPECT_NE(load_error().find("merge \"a b c\""), std::string::npos);
  j = fixture_json("bpe-llama3");
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
  write("tokenizer.json", j.dump());
  EXPECT_NE(load_error().find("does not compile"), std::string::npos);
}

TEST_F(TokenizerErrors, GarbageTokenizerModel) {
  std::string garbage;
  for (int i = 0; i < 4096; ++i) garbage += static_cast<char>((i * 2654435761u) >> 13);
  write("tokenizer.model", garbage);
  std::string m = load_error();
  EXPECT_NE(m.find((dir_ / "tokenizer.model").string()), std::string::npos) << m;
  write("tokenizer.model", "");
  EXPECT_NE(load_error().find("tokenizer.model"), std::string::npos);
}

TEST_F(TokenizerErrors, MalformedConfigFiles) {
  write("tokenizer.json", slurp(fs::path(llmtune::testing::fixture_tokenizer_dir("bpe-gpt2")) / "tokenizer.json"));
  write("tokenizer_config.json", "{\"bos_token\": ");
  std::string m = load_error();
  EXPECT_NE(m.find("tokenizer_config.json"), std::string::npos) << m;
  write("tokenizer_config.json", "{\"bos_token\": 5}");
  EXPECT_NE(load_error().find("bos_token"), std::string::npos);
  write("tokenizer_config.json", R"({"added_tokens_decoder": {"5": {"content": "x", "special": "yes"}}})");
  EXPECT_NE(load_error().find("wrong type"), std::string::npos);
  write("tokenizer_config.json", "{}");
  write("generation_config.json", "{\"eos_token_id\": \"two\"}");
  EXPECT_NE(load_error().find("generation_config.json"), std::string::npos);
}

}  // namespace
