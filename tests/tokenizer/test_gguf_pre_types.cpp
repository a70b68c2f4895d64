// llama.cpp's byte-level pre-tokenizers (tokenizer.ggml.pre) against gguf_pre_reference.py, an
// independent Python re-implementation of llama.cpp's regex sequences with the `regex` package
// (which also checks that huggingface tokenizers splits its tokenizer.json files alike): every name
// llama.cpp knows encodes the corpus and hard cases as the oracle does over a small byte-level BPE,
// survives a GGUF file, and a tokenizer.json with each type's splits exports as the converter's name.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "llmtune/io/gguf.h"
#include "llmtune/tokenizer/gguf_vocab.h"
#include "llmtune/util/error.h"
#include "support/interop.h"
#include "tokenizer/tokenizer_reference.h"

namespace {

namespace fs = std::filesystem;
using llmtune::tokenizer::gguf_vocab_from_model_dir;
using llmtune::tokenizer::GgufVocab;
using llmtune::tokenizer::read_gguf_vocab;
using llmtune::tokenizer::tokenizer_from_gguf_vocab;
using llmtune::tokenizer::write_gguf_vocab;
using nlohmann::json;

// Where the pre-tokenizers part ways: Unicode classes and scripts, digit runs, contractions,
// whitespace runs (tabs, \r\n, trailing), code.
std::vector<std::string> hard_cases() {
  return {"", " ", "\n", "x<|endoftext|>y", "<|endoftext|> start",
          "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n", "  leading and trailing   ", "tabs\tand\t\ttabs",
          "line\nnext\n\nthird\n", "crlf\r\nline\r\n\r\nend\r\n", "a     b         c          ", "x       y",
          "x.\n\ny;\r\n", "end.\n", "a\n\nb\n\n\nc",
          "1 12 123 1234 12345 123456 1234567 12345678 123456789 1234567890123", "3.3 3..3 3...3 10,000,000",
          "v2.14.7-rc1 2e-4 0x1F 2026\ub144 3\uc6d4", "\u0663\u0664\u0665 \u0661\u0662 digits",
          "\u2460\u2461 \u216b \u00b2\u00b3",
          "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like tea? We'Ve a'lL",
          "don'tcha 'verb it'sam x'sam y'tcha O'Brien's", "IT'S WE'RE THEY'LL",
          "\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e", "\u4e2d\u6587English\u6df7\u5408text",
          "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3001\u30ab\u30bf\u30ab\u30ca\u3002",
          "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8\uc785\ub2c8\ub2e4. \u3131\u3134\u3137",
          "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645\u060c \u0643\u064a\u0641\u061f",
          "e\u0301 cafe\u0301 A\u030angstro\u0308m \u00c5ngstr\u00f6m",
          "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e\u0964",
          "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac \u039a\u0395\u03a6\u0391\u039b\u0391\u0399\u0391 \u1f7d\u1fbe",
          "\u01c4emal \u01c5 \u01c6 \u2126mega \u212a \u00b5s",
          "\u0e44\u0e17\u0e22 \u0ea5\u0eb2\u0ea7 \u1781\u17d2\u1798\u17c2\u179a",
          "\U0001f680 (normal) \U0001f636\u200d\U0001f32b\ufe0f \u2705 \U0001f999\U0001f999",
          "\U0001f468\u200d\U0001f469\u200d\U0001f467 \U0001f44d\U0001f3fd",
          "\ufb01ne \uff21\uff22\uff23\u3000full width\u00a0nbsp", "camelCase getUserName iPhone HTTPServer",
          "def f(x):\n    return x**2  # ok\n\tif a==b: pass\r\n}", "''''''```````\"\"\"\"......!!!!!!??????",
          "------======= ->=> <$+^~|> `tick`", "<sentinel:12> IMGIMGABCZ text", "a/b/c\n//\npath/to/file.py\n"};
}

std::vector<std::string> texts() {
  std::vector<std::string> t = llmtune::testing::corpus_lines();
  for (auto& h : hard_cases()) t.push_back(h);
  return t;
}

const json& oracle() {
  static const json ref = [] {
    nlohmann::ordered_json request{{"texts", texts()}, {"merges", 500}};
    return json(llmtune::testing::run_json_script("tests/tokenizer/gguf_pre_reference.py", request));
  }();
  return ref;
}

// The oracle's vocabulary as a GGUF one with tokenizer.ggml.pre `pre`; <|endoftext|> last, CONTROL.
GgufVocab vocab(const std::string& pre) {
  GgufVocab v;
  v.model = "gpt2";
  v.pre = pre;
  v.tokens = oracle()["tokens"].get<std::vector<std::string>>();
  v.merges = oracle()["merges"].get<std::vector<std::string>>();
  v.token_types.assign(v.tokens.size(), 1);
  v.token_types.back() = 3;
  v.eos_id = static_cast<int32_t>(v.tokens.size()) - 1;
  v.add_bos = false;
  return v;
}

// Enough for errors and BOS: "h", "i" and <|endoftext|> (CONTROL).
GgufVocab tiny_vocab(const std::string& pre) {
  GgufVocab v;
  v.model = "gpt2";
  v.pre = pre;
  v.tokens = {"h", "i", "<|endoftext|>"};
  v.token_types = {1, 1, 3};
  v.eos_id = 2;
  v.add_bos = false;
  return v;
}

// A tokenizer.json for the oracle's vocabulary with a type's normalizer, pre_tokenizer, ignore_merges.
json tokenizer_json(const json& sections) {
  const json& o = oracle();
  json vocab = json::object();
  for (size_t i = 0; i < o["tokens"].size(); ++i) vocab[o["tokens"][i].get<std::string>()] = i;
  const json added = {{"id", o["tokens"].size() - 1}, {"content", o["special"]}, {"single_word", false},
                      {"lstrip", false}, {"rstrip", false}, {"normalized", false}, {"special", true}};
  return {{"version", "1.0"},
          {"added_tokens", json::array({added})},
          {"normalizer", sections["normalizer"]},
          {"pre_tokenizer", sections["pre_tokenizer"]},
          {"post_processor", nullptr},
          {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
          {"model",
           {{"type", "BPE"}, {"vocab", std::move(vocab)}, {"merges", o["merges"]},
            {"ignore_merges", sections["ignore_merges"]}, {"byte_fallback", false}, {"fuse_unk", false}}}};
}

std::string show(const std::vector<int32_t>& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? ", " : "") + std::to_string(ids[i]);
  return s + "]";
}

// Compares `tok` with the oracle's ids for `type` on every `step`-th text; the number of mismatches.
int compare(const llmtune::tokenizer::Tokenizer& tok, const json& type, const std::string& label, size_t step = 1) {
  static const std::vector<std::string> t = texts();
  int bad = 0;
  for (size_t i = 0; i < t.size(); i += step) {
    auto ids = tok.encode(t[i], false);
    auto want = type["ids"][i].get<std::vector<int32_t>>();
    if (ids != want && ++bad <= 3)
      ADD_FAILURE() << label << " differs for " << json(t[i]).dump() << "\n  ours:   " << show(ids)
                    << "\n  oracle: " << show(want);
  }
  return bad;
}

std::string unknown_pre_error(const std::string& pre) {
  try {
    tokenizer_from_gguf_vocab(tiny_vocab(pre), "m.gguf");
  } catch (const llmtune::TokenizerError& e) {
    return e.what();
  }
  return "";
}

fs::path temp_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("llmtune_gguf_pre_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// The names tokenizer_from_gguf_vocab knows and the oracle's, which are llama.cpp's.
void expect_llama_cpps_names() {
  std::set<std::string> ours, theirs;
  const std::string msg = unknown_pre_error("made-up");
  const std::string head = "(supported: ";
  ASSERT_NE(msg.find(head), std::string::npos) << msg;
  std::string list = msg.substr(msg.find(head) + head.size());
  list = list.substr(0, list.find("; over raw UTF-8: "));  // those: test_gguf_raw_bpe.cpp
  for (size_t b = 0, e; b < list.size(); b = e + 2) {
    e = list.find(", ", b);
    if (e == std::string::npos) e = list.size();
    ours.insert(list.substr(b, e - b));
  }
  for (const auto& type : oracle()["types"])
    for (const auto& name : type["names"]) theirs.insert(name.get<std::string>());
  EXPECT_EQ(ours, theirs);
  EXPECT_EQ(theirs.size(), 86u);  // llama.cpp's byte-level BPE names, aliases included
}

TEST(GgufPreTypes, UnknownPreIsAOneLineErrorNamingTheSupportedOnes) {
  const std::string msg = unknown_pre_error("made-up");
  EXPECT_NE(msg.find("m.gguf"), std::string::npos) << msg;
  EXPECT_NE(msg.find("tokenizer.ggml.pre \"made-up\" is not supported"), std::string::npos) << msg;
  for (const char* name : {"smollm", "llama-bpe", "tekken", "deepseek-v3", "qwen2", "gpt-2", "default"})
    EXPECT_NE(msg.find(name), std::string::npos) << name;
  EXPECT_EQ(msg.find('\n'), std::string::npos);
  // llama.cpp's BPE vocabularies without the byte map are listed apart.
  EXPECT_NE(msg.find("over raw UTF-8: gemma4"), std::string::npos) << msg;
}

TEST(GgufPreTypes, EncodesLikeLlamaCppRegexes) {
  expect_llama_cpps_names();
  for (const auto& type : oracle()["types"]) {
    const std::string name = type["type"];
    // huggingface tokenizers on the type's tokenizer.json splits as the oracle does.
    EXPECT_TRUE(type["hf_mismatches"].empty()) << name << ": tokenizers differs on texts " << type["hf_mismatches"];
    for (const auto& pre : type["names"]) {
      auto tok = tokenizer_from_gguf_vocab(vocab(pre), pre);
      EXPECT_EQ(compare(*tok, type, pre), 0) << name << " / " << pre;
    }
  }
}

TEST(GgufPreTypes, RoundTripThroughGgufFiles) {
  fs::path dir = temp_dir("files");
  for (const auto& type : oracle()["types"]) {
    const std::string pre = type["names"][0];
    SCOPED_TRACE(pre);
    GgufVocab v = vocab(pre);
    const fs::path path = dir / (pre + ".gguf");
    {
      llmtune::io::GgufWriter w(path);
      write_gguf_vocab(w, v);
      w.commit();
    }
    GgufVocab back = read_gguf_vocab(*llmtune::io::GgufFile::open(path));
    EXPECT_EQ(back.model, "gpt2");
    EXPECT_EQ(back.pre, pre);
    EXPECT_EQ(back.tokens, v.tokens);
    EXPECT_EQ(back.merges, v.merges);
    EXPECT_EQ(back.token_types, v.token_types);
    EXPECT_EQ(compare(*tokenizer_from_gguf_vocab(back, path.string()), type, pre, 3), 0);
  }
  fs::remove_all(dir);
}

// The converter's name for each llama.cpp type's tokenizer.json (several types split alike: one
// name each, chosen as gguf_pre_types.cpp documents; NFC and ignore_merges choose among them).
std::string expected_export(const std::string& type, const std::string& first_name) {
  static const std::map<std::string, std::string> shared = {
      {"DEFAULT", "falcon"},  // llama.cpp's default regexes are falcon-7b's published splits
      {"DBRX", "glm4"}, {"SMAUG", "glm4"}, {"CHATGLM4", "glm4"},
      {"STABLELM2", "stablelm2"}, {"HUNYUAN", "stablelm2"}, {"GROK_2", "stablelm2"}, {"SOLAR_OPEN", "stablelm2"},
      {"BAILINGMOE", "bailingmoe"}, {"MPT", "gpt-2"}, {"OLMO", "gpt-2"}, {"JAIS", "gpt-2"}, {"TRILLION", "gpt-2"},
      {"GRANITE_DOCLING", "gpt-2"}, {"STARCODER", "smollm"}, {"REFACT", "smollm"}, {"COMMAND_R", "smollm"},
      {"CODESHELL", "smollm"}, {"EXAONE", "smollm"}, {"MINERVA", "smollm"}, {"MELLUM2", "smollm"},
      {"GPT4O", "llama4"}, {"MINIMAX_M2", "llama4"}, {"PORO", "bloom"}, {"GPT3_FINNISH", "bloom"},
      {"HUNYUAN_DENSE", "deepseek-v3"}, {"HY_V4", "deepseek-v3"}, {"JOYAI_LLM", "deepseek-v3"},
      {"LLAMA3", "llama-bpe"}};
  auto it = shared.find(type);
  return it == shared.end() ? first_name : it->second;
}

std::string export_name(const fs::path& dir, const json& tj) {
  std::ofstream(dir / "tokenizer.json") << tj.dump();
  return gguf_vocab_from_model_dir(dir, 0).pre;
}

TEST(GgufPreTypes, ExportNamesTheConvertersPreTokenizer) {
  fs::path dir = temp_dir("export");
  std::map<std::string, json> by_type;
  for (const auto& type : oracle()["types"]) {
    const std::string name = type["type"];
    by_type[name] = tokenizer_json(type["sections"]);
    const std::string want = expected_export(name, type["names"][0]);
    SCOPED_TRACE(name);
    EXPECT_EQ(export_name(dir, by_type[name]), want);
    // What export writes reads back into the same encoding.
    if (name != "DEFAULT")
      EXPECT_EQ(compare(*tokenizer_from_gguf_vocab(gguf_vocab_from_model_dir(dir, 0), want), type, want, 7), 0);
  }
  // The published spellings of some: ByteLevel's own regex, Digits, Punctuation, a nested class.
  auto with_pre = [&](const std::string& type, json pre) {
    json tj = by_type.at(type);
    tj["pre_tokenizer"] = std::move(pre);
    return tj;
  };
  auto seq = [](json parts) { return json{{"type", "Sequence"}, {"pretokenizers", std::move(parts)}}; };
  const json byte_level = {
      {"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  json byte_map = byte_level;
  byte_map["use_regex"] = false;
  auto split = [](const std::string& r) {
    return json{{"type", "Split"}, {"pattern", {{"Regex", r}}}, {"behavior", "Isolated"}, {"invert", false}};
  };
  const json digits1 = {{"type", "Digits"}, {"individual_digits", true}};
  EXPECT_EQ(export_name(dir, with_pre("GPT2", byte_level)), "gpt-2");
  EXPECT_EQ(export_name(dir, with_pre("SMOLLM", seq({digits1, byte_level}))), "smollm");
  EXPECT_EQ(export_name(dir, with_pre("FALCON", seq({{{"type", "Punctuation"}, {"behavior", "Contiguous"}}, byte_level,
                                                     {{"type", "Digits"}, {"individual_digits", false}},
                                                     split("[0-9][0-9][0-9]")}))),
            "falcon");
  for (const char* type : {"DEEPSEEK_LLM", "DEEPSEEK_CODER"}) {
    json parts = by_type.at(type)["pre_tokenizer"]["pretokenizers"];
    parts[parts.size() - 2] = digits1;
    EXPECT_EQ(export_name(dir, with_pre(type, seq(parts))),
              type == std::string("DEEPSEEK_LLM") ? "deepseek-llm" : "deepseek-coder");
  }
  const std::string bloom = " ?[^(\\s|[.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c])]+";  // as published
  EXPECT_EQ(export_name(dir, with_pre("BLOOM", seq({split(bloom), byte_map}))), "bloom");
  // Not a split llama.cpp knows: the named error, with the regex.
  for (const json& pre : {seq({split("\\p{L}+|\\p{N}{1,4}"), byte_map}),
                          json{{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", true}}}) {
    try {
      export_name(dir, with_pre("GPT2", pre));
      ADD_FAILURE() << "expected a TokenizerError for " << pre.dump();
    } catch (const llmtune::TokenizerError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("tokenizer.json: pre-tokenizer"), std::string::npos) << msg;
      EXPECT_NE(msg.find("not"), std::string::npos) << msg;
      if (pre["type"] == "Sequence") EXPECT_NE(msg.find("\\\\p{N}{1,4}"), std::string::npos) << msg;
    }
  }
  fs::remove_all(dir);
}

TEST(GgufPreTypes, BosDefaultsAsLlamaCpp) {
  // Without tokenizer.ggml.add_bos_token llama.cpp adds BOS for llama3-style, tekken and chameleon.
  for (auto [pre, adds] : std::vector<std::pair<std::string, bool>>{
           {"llama-bpe", true}, {"tekken", true}, {"chameleon", true}, {"gpt-2", false}, {"smollm", false}}) {
    GgufVocab v = tiny_vocab(pre);
    v.add_bos.reset();
    v.bos_id = v.eos_id;
    auto ids = tokenizer_from_gguf_vocab(v, pre)->encode("hi", true);
    EXPECT_EQ(!ids.empty() && ids.front() == *v.bos_id, adds) << pre;
    v.add_bos = false;
    EXPECT_NE(tokenizer_from_gguf_vocab(v, pre)->encode("hi", true).front(), *v.bos_id) << pre;
  }
}

}  // namespace
