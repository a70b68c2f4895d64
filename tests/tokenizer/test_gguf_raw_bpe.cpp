// GGUF BPE vocabularies over raw UTF-8 (tokenizer.ggml.pre gemma4, granite-embed-multi-311m,
// sarvam-moe, whitespace; tokenizer.ggml.model gemma4 and whitespace) against
// gguf_raw_bpe_reference.py, an independent Python re-implementation of llama.cpp's tokenizer and
// detokenizer for them: the corpus and hard cases encode to its ids, survive a GGUF file, and decode
// back to the text wherever llama.cpp's detokenizer gives the text back.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "llmtune/io/gguf.h"
#include "llmtune/tokenizer/gguf_vocab.h"
#include "llmtune/util/error.h"
#include "support/interop.h"
#include "tokenizer/tokenizer_reference.h"

namespace {

namespace fs = std::filesystem;
using llmtune::tokenizer::GgufVocab;
using llmtune::tokenizer::read_gguf_vocab;
using llmtune::tokenizer::tokenizer_from_gguf_vocab;
using llmtune::tokenizer::write_gguf_vocab;
using nlohmann::json;

// Newline runs (gemma4 takes "\n\n\n" whole), space runs, White_Space beyond ASCII, characters
// left out of the alphabet (byte fallback), the spacing llama.cpp's clean_spaces rewrites.
std::vector<std::string> hard_cases() {
  return {"", " ", "\n", "\n\n", "\n\n\n", "\n\n\n\n", "\n\n\n\n\n\n", "a\n\n\nb", "x<|endoftext|>y",
          "<|endoftext|> start", "<|endoftext|>\n\n\n<|endoftext|>", "  leading and trailing   ",
          "x    y", "    quick", "tabs\tand\t\ttabs", "crlf\r\nline\r\n\r\nend\r\n", "line\nnext\n\nthird\n",
          "\n \n\n \n\n\n \t \t\t \t\n  \n", "M\u00fcnchen quick M\u00fcnchen", "\u00c5ngstr\u00f6m sch\u00f6n",
          "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8", "\U0001f680 rocket \U0001f468\u200d\U0001f469",
          "full\u3000width\u00a0nbsp\u2003em\u0085nel\u2028ls", "a , b . c ! d ? e", "it 's I 'm we 're x 'll",
          "a ' b ' ' c", "no_spaces_here", "ASCII!only?text.", "don't,stop", "\u0645\u0631\u062d\u0628\u0627",
          "def f(x):\n    return x**2  # ok\n\tif a==b: pass\r\n}"};
}

std::vector<std::string> texts() {
  std::vector<std::string> t = llmtune::testing::corpus_lines();
  for (auto& h : hard_cases()) t.push_back(h);
  return t;
}

const json& oracle() {
  static const json ref = [] {
    nlohmann::ordered_json request{{"texts", texts()}, {"merges", 500}};
    return json(llmtune::testing::run_json_script("tests/tokenizer/gguf_raw_bpe_reference.py", request));
  }();
  return ref;
}

GgufVocab vocab(const std::string& model, const std::string& pre) {
  GgufVocab v;
  v.model = model;
  v.pre = pre;
  v.tokens = oracle()["tokens"].get<std::vector<std::string>>();
  v.token_types = oracle()["token_types"].get<std::vector<int32_t>>();
  v.merges = oracle()["merges"].get<std::vector<std::string>>();
  v.eos_id = static_cast<int32_t>(v.tokens.size()) - 1;
  v.add_bos = false;
  return v;
}

std::string show(const std::vector<int32_t>& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? ", " : "") + std::to_string(ids[i]);
  return s + "]";
}

// Mismatches of `tok` with the oracle's ids for `variant` on every `step`-th text.
int compare(const llmtune::tokenizer::Tokenizer& tok, const json& variant, const std::string& label, size_t step = 1) {
  static const std::vector<std::string> t = texts();
  int bad = 0;
  for (size_t i = 0; i < t.size(); i += step) {
    auto ids = tok.encode(t[i], false);
    auto want = variant["ids"][i].get<std::vector<int32_t>>();
    if (ids != want && ++bad <= 3)
      ADD_FAILURE() << label << " differs for " << json(t[i]).dump() << "\n  ours:   " << show(ids)
                    << "\n  oracle: " << show(want);
  }
  return bad;
}

std::string label(const json& variant, const std::string& name) {
  return variant["model"].get<std::string>() + "/" + name;
}

TEST(GgufRawBpe, EncodesLikeLlamaCpp) {
  ASSERT_EQ(oracle()["variants"].size(), 4u);
  for (const auto& variant : oracle()["variants"]) {
    for (const auto& name : variant["names"]) {
      auto tok = tokenizer_from_gguf_vocab(vocab(variant["model"], name), "m.gguf");
      EXPECT_EQ(compare(*tok, variant, label(variant, name)), 0) << label(variant, name);
    }
  }
  // tokenizer.ggml.model "gemma4" is read as pre-tokenizer gemma4 whatever tokenizer.ggml.pre says.
  EXPECT_EQ(compare(*tokenizer_from_gguf_vocab(vocab("gemma4", ""), "m.gguf"), oracle()["variants"][0], "gemma4/"), 0);
  // The newline rule and the space handling make the variants differ on the hard cases.
  const auto& v = oracle()["variants"];
  EXPECT_NE(v[0]["ids"], v[1]["ids"]);
  EXPECT_NE(v[2]["ids"], v[3]["ids"]);
}

TEST(GgufRawBpe, RoundTripThroughGgufFiles) {
  fs::path dir = fs::temp_directory_path() / ("llmtune_gguf_raw_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  for (const auto& variant : oracle()["variants"]) {
    const std::string name = variant["names"][0];
    SCOPED_TRACE(label(variant, name));
    GgufVocab v = vocab(variant["model"], name);
    const fs::path path = dir / (variant["model"].get<std::string>() + "-" + name + ".gguf");
    {
      llmtune::io::GgufWriter w(path);
      write_gguf_vocab(w, v);
      w.commit();
    }
    GgufVocab back = read_gguf_vocab(*llmtune::io::GgufFile::open(path));
    EXPECT_EQ(back.model, v.model);
    EXPECT_EQ(back.pre, name);
    EXPECT_EQ(back.tokens, v.tokens);
    EXPECT_EQ(back.merges, v.merges);
    EXPECT_EQ(back.token_types, v.token_types);
    EXPECT_EQ(compare(*tokenizer_from_gguf_vocab(back, path.string()), variant, name, 3), 0);
  }
  fs::remove_all(dir);
}

TEST(GgufRawBpe, DecodesWhereLlamaCppGivesTheTextBack) {
  const std::vector<std::string> t = texts();
  for (const auto& variant : oracle()["variants"]) {
    const std::string name = variant["names"][0];
    auto tok = tokenizer_from_gguf_vocab(vocab(variant["model"], name), "m.gguf");
    size_t faithful = 0;
    int bad = 0;
    for (size_t i = 0; i < t.size(); ++i) {
      if (!variant["faithful"][i].get<bool>()) continue;
      ++faithful;
      const std::string want = variant["decoded"][i];
      const std::string ours = tok->decode(variant["ids"][i].get<std::vector<int32_t>>());
      if (ours != want && ++bad <= 3)
        ADD_FAILURE() << label(variant, name) << " decodes " << json(t[i]).dump() << " as " << json(ours).dump();
    }
    EXPECT_EQ(bad, 0) << label(variant, name);
    // Enough texts for the check to mean something: most of the corpus, but for "whitespace" only
    // the ASCII ones (llama.cpp maps its tokens back through GPT-2's byte table).
    EXPECT_GT(faithful, variant["pre"] == "whitespace" ? 100u : t.size() / 2) << label(variant, name);
  }
  // Ours keeps the text where llama.cpp's clean-up moves spaces (" ," -> ",").
  auto gemma = tokenizer_from_gguf_vocab(vocab("gpt2", "gemma4"), "m.gguf");
  EXPECT_EQ(gemma->decode(gemma->encode("a , b . c ! d ? e", false)), "a , b . c ! d ? e");
  EXPECT_EQ(gemma->decode(gemma->encode("\u00c5ngstr\u00f6m \U0001f680\n\n\n", false)),
            "\u00c5ngstr\u00f6m \U0001f680\n\n\n");
}

GgufVocab tiny_vocab(const std::string& model, const std::string& pre) {
  GgufVocab v;
  v.model = model;
  v.pre = pre;
  v.tokens = {"h", "i", "<bos>", "<eos>"};
  v.token_types = {1, 1, 3, 3};
  v.bos_id = 2;
  v.eos_id = 3;
  return v;
}

TEST(GgufRawBpe, BosAsLlamaCpp) {
  // llama.cpp adds BOS for Gemma 4 even when the file says not to; the others follow the file.
  for (auto [model, pre, adds] : std::vector<std::tuple<std::string, std::string, bool>>{
           {"gpt2", "gemma4", true}, {"gpt2", "granite-embed-multi-311m", true}, {"gemma4", "", true},
           {"gpt2", "sarvam-moe", false}, {"gpt2", "whitespace", false}, {"whitespace", "whitespace", false}}) {
    for (std::optional<bool> file : {std::optional<bool>(), std::optional<bool>(false)}) {
      GgufVocab v = tiny_vocab(model, pre);
      v.add_bos = file;
      auto ids = tokenizer_from_gguf_vocab(v, "m.gguf")->encode("hi", true);
      EXPECT_EQ(ids.front() == 2, adds) << model << "/" << pre << " file add_bos " << file.has_value();
    }
    GgufVocab v = tiny_vocab(model, pre);
    v.add_bos = true;
    EXPECT_EQ(tokenizer_from_gguf_vocab(v, "m.gguf")->encode("hi", true).front(), 2) << model << "/" << pre;
  }
}

TEST(GgufRawBpe, NamedErrors) {
  auto error = [](const GgufVocab& v) {
    try {
      tokenizer_from_gguf_vocab(v, "m.gguf");
    } catch (const llmtune::TokenizerError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  const std::string unknown = error(tiny_vocab("gpt2", "made-up"));
  EXPECT_NE(unknown.find("over raw UTF-8: gemma4, granite-embed-multi-311m, sarvam-moe, whitespace"),
            std::string::npos)
      << unknown;
  const std::string ws = error(tiny_vocab("whitespace", "gpt-2"));
  EXPECT_NE(ws.find("tokenizer.ggml.model \"whitespace\" needs tokenizer.ggml.pre \"whitespace\""), std::string::npos)
      << ws;
  const std::string model = error(tiny_vocab("t5", ""));
  EXPECT_NE(model.find("supported: llama, gpt2, gemma4, whitespace"), std::string::npos) << model;
}

}  // namespace
