// tokenizer.json pre-tokenizers on their own, against huggingface/tokenizers' pre_tokenize_str
// (pretokenizer_reference.py): the pieces and their byte offsets in the input. Digits in both
// modes, alone and in SmolLM's Sequence[Digits, ByteLevel], on digit runs of every numeric category.
#include <gtest/gtest.h>

#include "../src/tokenizer/components.h"
#include "llmtune/util/error.h"
#include "support/interop.h"

namespace llmtune::tokenizer {
namespace {

using nlohmann::json;

std::vector<std::string> digit_texts() {
  return {
      "1234567", "a1b22c333d", "abc123def456", " 12 345 6789.01", "x  1", "a   12", "3.14159", "2e-4 and 1e-5",
      "phone +49 (0)30 1234-5678", "\n1\n\n22\n", "\t7\t", "v2.14.7", "0", "  ", "", "no digits here",
      "\u0661\u0662\u0663 Arabic-Indic", "\u0966\u0967\u0968 Devanagari", "\u216b roman numeral (Nl)",
      "\u00bd \u00be fractions (No)", "x\u00b2 y\u00b3", "\u2460\u2461\u2462 circled", "\uff11\uff12\uff13 fullwidth",
      "\U0001d7d9\U0001d7da math digits", "1\ufe0f\u20e3 keycap", "caf\u00e9 42 \u65e5\u672c 7\u6708",
      "<|im_start|>user 12<|im_end|>", "99 bottles\r\n98 bottles",
  };
}

struct Case {
  const char* name;
  json spec;
};

std::vector<Case> cases() {
  json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  return {
      {"individual", {{"type", "Digits"}, {"individual_digits", true}}},
      {"grouped", {{"type", "Digits"}, {"individual_digits", false}}},
      {"smollm", {{"type", "Sequence"}, {"pretokenizers", {{{"type", "Digits"}, {"individual_digits", true}}, byte_level}}}},
      {"grouped+bytelevel",
       {{"type", "Sequence"}, {"pretokenizers", {{{"type", "Digits"}, {"individual_digits", false}}, byte_level}}}},
  };
}

TEST(PreTokenizers, DigitsMatchHuggingFaceTokenizers) {
  std::vector<std::string> texts = digit_texts();
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    nlohmann::ordered_json request = {{"pre_tokenizer", c.spec}, {"texts", texts}};
    json ref = json(testing::run_json_script("tests/tokenizer/pretokenizer_reference.py", request));
    auto pre = make_pre_tokenizer(c.spec, "test");
    ASSERT_NE(pre, nullptr);
    for (size_t i = 0; i < texts.size(); ++i) {
      std::vector<uint32_t> src(texts[i].size());
      for (size_t k = 0; k < src.size(); ++k) src[k] = static_cast<uint32_t>(k);
      std::vector<Split> splits = {Split{texts[i], true, src}};
      pre->pre_tokenize(splits);
      json ours = json::array();
      for (const Split& s : splits) {
        ASSERT_FALSE(s.src.empty()) << "offsets lost for " << json(s.text).dump();
        ours.push_back({s.text, s.src.front(), s.src.back() + 1});
      }
      EXPECT_EQ(ours, ref["pieces"][i]) << "text " << json(texts[i]).dump();
    }
  }
}

// individual_digits is the only difference between the two modes: runs stay whole without it.
TEST(PreTokenizers, DigitsModesDifferOnRuns) {
  auto pieces = [](const json& spec, const std::string& text) {
    std::vector<Split> splits = {Split{text, true, {}}};
    make_pre_tokenizer(spec, "test")->pre_tokenize(splits);
    std::vector<std::string> out;
    for (const Split& s : splits) out.push_back(s.text);
    return out;
  };
  json individual = {{"type", "Digits"}, {"individual_digits", true}};
  json grouped = {{"type", "Digits"}, {"individual_digits", false}};
  EXPECT_EQ(pieces(individual, "ab123c"), (std::vector<std::string>{"ab", "1", "2", "3", "c"}));
  EXPECT_EQ(pieces(grouped, "ab123c"), (std::vector<std::string>{"ab", "123", "c"}));
  EXPECT_EQ(pieces(grouped, "x"), (std::vector<std::string>{"x"}));
  EXPECT_TRUE(pieces(grouped, "").empty());
}

// tokenizers refuses a Digits without individual_digits ("missing field"); so do we, naming it.
TEST(PreTokenizers, DigitsNeedsIndividualDigits) {
  try {
    make_pre_tokenizer(json{{"type", "Digits"}}, "tokenizer.json");
    FAIL() << "expected a TokenizerError";
  } catch (const TokenizerError& e) {
    EXPECT_NE(std::string(e.what()).find("individual_digits"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace llmtune::tokenizer
