// GGUF vocabularies against the references: gguf_vocab_from_model_dir() against what llama.cpp's
// converter writes (gguf-py's LlamaHfVocab / SpecialVocab, and gguf_vocab_reference.py's copies of
// the converter's SentencePiece and GPT-2 paths), and tokenizer_from_gguf_vocab() against
// AutoTokenizer on the original directory, on the corpus and hard cases. One Python run for all.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "llmtune/io/gguf.h"
#include "llmtune/tokenizer/gguf_vocab.h"
#include "llmtune/util/error.h"
#include "support/interop.h"
#include "tokenizer/tokenizer_reference.h"

namespace {

namespace fs = std::filesystem;
using llmtune::tokenizer::GgufVocab;
using llmtune::tokenizer::gguf_vocab_from_model_dir;
using llmtune::tokenizer::read_gguf_vocab;
using llmtune::tokenizer::write_gguf_vocab;
using llmtune::tokenizer::tokenizer_from_gguf_vocab;
using nlohmann::json;

struct Case {
  std::string name, dir;
  int64_t vocab_size;  // 0: the tokenizer's own size
  std::string pre;
};

std::vector<Case> cases() {
  const std::string f = LLMTUNE_FIXTURES_DIR;
  std::vector<Case> out;
  for (auto [name, pre] : std::vector<std::pair<std::string, std::string>>{
           {"spm-llama", "default"}, {"spm-llama-json", "default"}, {"spm-legacy-fast", "default"},
           {"spm-metaspace-fast", "default"}, {"bpe-llama3", "llama-bpe"}, {"bpe-qwen2", "qwen2"}, {"bpe-gpt2", "gpt-2"}})
    out.push_back({name, f + "/tokenizers/" + name, 0, pre});
  // The model fixtures carry config.json (special ids for SpecialVocab) and a padded vocab_size.
  for (auto [name, size, pre] : std::vector<std::tuple<std::string, int64_t, std::string>>{
           {"tinyllama", 1536, "default"}, {"mistral", 1536, "default"}, {"gemma", 1536, "default"},
           {"llama3", 2048, "llama-bpe"}, {"qwen2", 2048, "qwen2"}, {"llama-linear", 2048, "gpt-2"}})
    out.push_back({"model-" + name, f + "/models/" + name, size, pre});
  return out;
}

std::vector<std::string> hard_cases() {
  return {"hi<|eot_id|>there", "<|eot_id|>start", "end<|eot_id|>",
          "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>", "<s>hello</s>",
          "<s> hello </s>", " <s>", "hi <s> there", "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
          "<|endoftext|>", "x<|endoftext|>y", " <|sep|> a", "a<|sep|>b", "[WORD] x[WORD] [WORD]y",
          "<tool_call>{\"a\": 1}</tool_call>", "   many   spaces   ", "\n\n\n", "\t", "a\tb\t\tc", "line\r\nnext\r\n",
          "1234567", "12 345 6789.01", "I'LL", "you'RE", "it's", "emoji 🎉👨‍👩‍👧‍👦🇩🇪👍🏽", "cafe\u0301 café",
          "A\u030angstro\u0308m Ångström", "", " ", "  ", "\u2581", "\u2581hello", "a\u2581b", "\u00a0nbsp", "中文 日本語",
          " Hello", "\ufb01", "<0x41>", "<unk>", "Ⅻ①②", "\u3000full width space"};
}

std::vector<std::string> texts() {
  std::vector<std::string> t = llmtune::testing::corpus_lines();
  for (auto& h : hard_cases()) t.push_back(h);
  return t;
}

// One Python run: the converter's vocabulary and AutoTokenizer's answers for every case.
const json& reference() {
  static const json ref = [] {
    json request_cases = json::array();
    for (const Case& c : cases()) request_cases.push_back({{"dir", c.dir}, {"vocab_size", c.vocab_size}});
    nlohmann::ordered_json request{{"cases", request_cases}, {"texts", texts()}};
    return json(llmtune::testing::run_json_script("tests/tokenizer/gguf_vocab_reference.py", request));
  }();
  return ref;
}

std::optional<int32_t> opt_id(const json& j) {
  return j.is_null() ? std::nullopt : std::optional<int32_t>(j.get<int32_t>());
}
std::optional<bool> opt_bool(const json& j) { return j.is_null() ? std::nullopt : std::optional<bool>(j.get<bool>()); }

TEST(GgufVocab, MatchesConverter) {
  auto all = cases();
  for (size_t k = 0; k < all.size(); ++k) {
    const Case& c = all[k];
    SCOPED_TRACE(c.name);
    const json& r = reference()["cases"][k];
    GgufVocab v = gguf_vocab_from_model_dir(c.dir, c.vocab_size);
    EXPECT_EQ(v.model, r["model"].get<std::string>());
    EXPECT_EQ(v.pre, c.pre);
    EXPECT_EQ(v.tokens, r["tokens"].get<std::vector<std::string>>());
    EXPECT_EQ(v.token_types, r["types"].get<std::vector<int32_t>>());
    if (r["scores"].is_null()) {
      EXPECT_TRUE(v.scores.empty());
    } else {
      auto ref_scores = r["scores"].get<std::vector<double>>();
      ASSERT_EQ(v.scores.size(), ref_scores.size());
      size_t bad = 0;
      for (size_t i = 0; i < ref_scores.size(); ++i) bad += v.scores[i] != static_cast<float>(ref_scores[i]);
      EXPECT_EQ(bad, 0u) << "scores differ";
    }
    EXPECT_EQ(v.merges, r["merges"].get<std::vector<std::string>>());
    EXPECT_EQ(v.bos_id, opt_id(r["ids"]["bos"]));
    EXPECT_EQ(v.eos_id, opt_id(r["ids"]["eos"]));
    EXPECT_EQ(v.unk_id, opt_id(r["ids"]["unk"]));
    EXPECT_EQ(v.pad_id, opt_id(r["ids"]["pad"]));
    EXPECT_EQ(v.eot_id, opt_id(r["ids"]["eot"]));
    EXPECT_EQ(v.add_bos, opt_bool(r["add_bos"]));
    EXPECT_EQ(v.add_eos, opt_bool(r["add_eos"]));
    EXPECT_EQ(v.add_space_prefix, opt_bool(r["add_space_prefix"]));
    EXPECT_EQ(v.chat_template, r["chat_template"].is_null() ? std::string() : r["chat_template"].get<std::string>());
  }
}

std::string show(const std::vector<int32_t>& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? ", " : "") + std::to_string(ids[i]);
  return s + "]";
}

// What a GGUF vocabulary cannot say, and so texts whose encoding legitimately differs:
// * HF tokenizers that prepend "▁" to every piece of text (LlamaTokenizer legacy=true, the legacy
//   Prepend normalizer) differ from prepend_scheme "first" on text that follows an added token;
// * the legacy Prepend("▁") normalizer (PreTrainedTokenizerFast on an old tokenizer.json) adds
//   "▁" even to text that starts with a space or "▁", where Metaspace "first" does not;
// * lstrip / rstrip / single_word (GPT-2 fixture's <|sep|>, [WORD]) and normalized=true (Qwen2's
//   "Ångström") are added-token flags GGUF does not store.
bool lossy_text(const Case& c, const GgufVocab& v, const std::string& text) {
  auto contains = [&](const char* s) { return text.find(s) != std::string::npos; };
  if (c.name == "spm-llama-json" || c.name == "spm-legacy-fast" || c.name == "model-gemma") {
    for (size_t i = 0; i < v.tokens.size(); ++i) {
      if (v.token_types[i] != 3 && v.token_types[i] != 4) continue;
      size_t p = text.find(v.tokens[i]);
      if (p != std::string::npos && p + v.tokens[i].size() < text.size()) return true;
    }
  }
  if (c.name == "spm-legacy-fast" && (text.rfind(" ", 0) == 0 || text.rfind("\u2581", 0) == 0)) return true;
  if (c.name == "bpe-gpt2" || c.name == "model-llama-linear") return contains("<|sep|>") || contains("[WORD]");
  if (c.name == "bpe-qwen2" || c.name == "model-qwen2") return contains("A\u030a");
  return false;
}

TEST(GgufVocabTokenizer, EncodesLikeAutoTokenizer) {
  auto all = cases();
  const std::vector<std::string> t = texts();
  for (size_t k = 0; k < all.size(); ++k) {
    const Case& c = all[k];
    SCOPED_TRACE(c.name);
    const json& hf = reference()["cases"][k]["hf"];
    GgufVocab v = gguf_vocab_from_model_dir(c.dir, c.vocab_size);
    auto tok = tokenizer_from_gguf_vocab(v, c.dir);
    int mismatches = 0, skipped = 0;
    auto report = [&](const std::string& what, size_t i, const std::string& ours, const std::string& theirs) {
      if (++mismatches <= 6)
        ADD_FAILURE() << what << " differs for " << json(t[i]).dump() << "\n  ours: " << ours << "\n  HF:   " << theirs;
    };
    for (size_t i = 0; i < t.size(); ++i) {
      if (lossy_text(c, v, t[i])) {
        ++skipped;
        continue;
      }
      auto ref_ids = hf["ids"][i].get<std::vector<int32_t>>(), ref_plain = hf["ids_plain"][i].get<std::vector<int32_t>>();
      auto ids = tok->encode(t[i], true), plain = tok->encode(t[i], false);
      if (ids != ref_ids) report("ids", i, show(ids), show(ref_ids));
      if (plain != ref_plain) report("ids (no special tokens)", i, show(plain), show(ref_plain));
      if (auto d = tok->decode(ref_ids); d != hf["decoded"][i].get<std::string>())
        report("decode", i, json(d).dump(), hf["decoded"][i].dump());
      if (auto d = tok->decode(ref_ids, true); d != hf["decoded_skip"][i].get<std::string>())
        report("decode(skip_special_tokens)", i, json(d).dump(), hf["decoded_skip"][i].dump());
    }
    EXPECT_EQ(mismatches, 0) << c.name;
    // A handful of hard cases; for spm-legacy-fast also the corpus lines that start with a space.
    EXPECT_LT(skipped, c.name == "spm-legacy-fast" ? 200 : 20) << c.name;
    if (skipped) std::printf("[gguf vocab] %-22s %d of %zu texts not compared (not representable in GGUF)\n",
                             c.name.c_str(), skipped, t.size());
  }
}

TEST(GgufVocabTokenizer, SpecialTokensAndTemplate) {
  const std::string f = LLMTUNE_FIXTURES_DIR;
  auto llama3 = tokenizer_from_gguf_vocab(gguf_vocab_from_model_dir(f + "/tokenizers/bpe-llama3", 0), "llama3");
  EXPECT_EQ(llama3->bos_id, 2000);
  EXPECT_EQ(llama3->eos_id, 2009);
  EXPECT_EQ(llama3->bos_token, "<|begin_of_text|>");
  EXPECT_EQ(llama3->stop_ids, std::vector<int32_t>{2009});
  EXPECT_TRUE(llama3->is_special(2009));
  EXPECT_NE(llama3->chat_template.find("<|start_header_id|>"), std::string::npos);
  // SpecialVocab finds no ids for a tokenizer.model without config.json; llama.cpp's defaults apply.
  auto spm = tokenizer_from_gguf_vocab(gguf_vocab_from_model_dir(f + "/tokenizers/spm-llama", 0), "spm");
  EXPECT_EQ(spm->bos_id, 1);
  EXPECT_EQ(spm->eos_id, 2);
  EXPECT_EQ(spm->unk_id, 0);
  auto qwen = tokenizer_from_gguf_vocab(gguf_vocab_from_model_dir(f + "/tokenizers/bpe-qwen2", 0), "qwen2");
  EXPECT_FALSE(qwen->is_special(2003));  // <tool_call>: user-defined
  EXPECT_EQ(qwen->pad_id, 2000);
}

fs::path temp_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("llmtune_gguf_vocab_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

TEST(GgufVocabErrors, UnknownPreTokenizerRegexNamesFileAndRegex) {
  const std::string f = LLMTUNE_FIXTURES_DIR;
  std::ifstream in(f + "/tokenizers/bpe-llama3/tokenizer.json");
  json j = json::parse(in);
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\p{L}+|\\p{N}{1,4}";
  fs::path d = temp_dir("regex");
  std::ofstream(d / "tokenizer.json") << j.dump();
  try {
    gguf_vocab_from_model_dir(d, 0);
    FAIL() << "expected a TokenizerError";
  } catch (const llmtune::TokenizerError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("tokenizer.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find("\\\\p{N}{1,4}"), std::string::npos) << msg;
  }
  fs::remove_all(d);
}

TEST(GgufVocabErrors, UnsupportedModelsAndVocab) {
  fs::path d = temp_dir("wordpiece");
  std::ofstream(d / "tokenizer.json") << R"({"model": {"type": "WordPiece", "vocab": {"a": 0}}})";
  EXPECT_THROW(gguf_vocab_from_model_dir(d, 0), llmtune::TokenizerError);
  fs::remove_all(d);
  EXPECT_THROW(gguf_vocab_from_model_dir("/nonexistent/dir", 0), llmtune::TokenizerError);
  // vocab_size below the tokenizer's ids.
  EXPECT_THROW(gguf_vocab_from_model_dir(std::string(LLMTUNE_FIXTURES_DIR) + "/tokenizers/bpe-llama3", 100),
               llmtune::TokenizerError);
  GgufVocab v;
  v.model = "gpt2";
  v.pre = "made-up";
  v.tokens = {"a"};
  v.token_types = {1};
  EXPECT_THROW(tokenizer_from_gguf_vocab(v, "x.gguf"), llmtune::TokenizerError);
  v.model = "bert";
  EXPECT_THROW(tokenizer_from_gguf_vocab(v, "x.gguf"), llmtune::TokenizerError);
}


// ---- GGUF files: write_gguf_vocab / read_gguf_vocab, gguf-py's reader, transformers' loader ----

// A GGUF holding `v` plus the few llama.* keys and the one tensor transformers' loader wants.
void write_vocab_file(const GgufVocab& v, const fs::path& path) {
  using llmtune::io::GgmlType;
  llmtune::io::GgufWriter w(path);
  const auto n = static_cast<uint32_t>(v.tokens.size());
  w.add_string("general.architecture", "llama");
  w.add_u32("llama.context_length", 64);
  w.add_u32("llama.embedding_length", 8);
  w.add_u32("llama.block_count", 1);
  w.add_u32("llama.feed_forward_length", 16);
  w.add_u32("llama.attention.head_count", 2);
  w.add_u32("llama.attention.head_count_kv", 2);
  w.add_f32("llama.rope.freq_base", 10000.0f);
  w.add_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  w.add_u32("llama.vocab_size", n);
  write_gguf_vocab(w, v);
  w.add_tensor_info("token_embd.weight", {8, static_cast<int64_t>(n)}, GgmlType::F32);
  std::vector<float> zeros(size_t{8} * n, 0.0f);
  w.write_tensor(zeros.data(), zeros.size() * sizeof(float));
  w.commit();
}

void expect_same_vocab(const GgufVocab& a, const GgufVocab& b) {
  EXPECT_EQ(a.model, b.model);
  EXPECT_EQ(a.pre, b.pre);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.scores, b.scores);
  EXPECT_EQ(a.token_types, b.token_types);
  EXPECT_EQ(a.merges, b.merges);
  EXPECT_EQ(a.bos_id, b.bos_id);
  EXPECT_EQ(a.eos_id, b.eos_id);
  EXPECT_EQ(a.unk_id, b.unk_id);
  EXPECT_EQ(a.pad_id, b.pad_id);
  EXPECT_EQ(a.eot_id, b.eot_id);
  EXPECT_EQ(a.add_bos, b.add_bos);
  EXPECT_EQ(a.add_eos, b.add_eos);
  EXPECT_EQ(a.add_space_prefix, b.add_space_prefix);
  EXPECT_EQ(a.chat_template, b.chat_template);
}

TEST(GgufVocabFile, RoundTripGgufPyAndTransformersLoader) {
  auto all = cases();
  fs::path dir = temp_dir("files");
  std::vector<GgufVocab> vocabs;
  json files = json::array();
  for (const Case& c : all) {
    SCOPED_TRACE(c.name);
    vocabs.push_back(gguf_vocab_from_model_dir(c.dir, c.vocab_size));
    fs::path sub = dir / c.name;
    fs::create_directories(sub);
    write_vocab_file(vocabs.back(), sub / "vocab.gguf");
    expect_same_vocab(read_gguf_vocab(*llmtune::io::GgufFile::open(sub / "vocab.gguf")), vocabs.back());
    files.push_back({{"path", (sub / "vocab.gguf").string()}, {"orig_dir", c.dir}});
  }
  const std::vector<std::string> t = texts();
  nlohmann::ordered_json request{{"files", files}, {"texts", t}};
  json ref = json(llmtune::testing::run_json_script("tests/tokenizer/gguf_vocab_file_reference.py", request));
  for (size_t k = 0; k < all.size(); ++k) {
    const Case& c = all[k];
    const GgufVocab& v = vocabs[k];
    SCOPED_TRACE(c.name);
    const json& r = ref["files"][k];
    const json& f = r["fields"];
    auto expect_field = [&](const std::string& key, const std::vector<std::string>& types, const json& value) {
      ASSERT_TRUE(f.contains(key)) << key;
      EXPECT_EQ(f[key]["types"].get<std::vector<std::string>>(), types) << key;
      EXPECT_EQ(f[key]["value"], value) << key;
    };
    expect_field("tokenizer.ggml.model", {"STRING"}, v.model);
    expect_field("tokenizer.ggml.pre", {"STRING"}, v.pre);
    expect_field("tokenizer.ggml.tokens", {"ARRAY", "STRING"}, v.tokens);
    expect_field("tokenizer.ggml.token_type", {"ARRAY", "INT32"}, v.token_types);
    if (!v.scores.empty()) {
      ASSERT_TRUE(f.contains("tokenizer.ggml.scores"));
      EXPECT_EQ(f["tokenizer.ggml.scores"]["types"].get<std::vector<std::string>>(),
                (std::vector<std::string>{"ARRAY", "FLOAT32"}));
      auto scores = f["tokenizer.ggml.scores"]["value"].get<std::vector<double>>();
      ASSERT_EQ(scores.size(), v.scores.size());
      for (size_t i = 0; i < scores.size(); ++i) ASSERT_EQ(static_cast<float>(scores[i]), v.scores[i]) << i;
    }
    if (!v.merges.empty()) expect_field("tokenizer.ggml.merges", {"ARRAY", "STRING"}, v.merges);
    for (auto [key, id] : std::vector<std::pair<std::string, std::optional<int32_t>>>{
             {"bos_token_id", v.bos_id}, {"eos_token_id", v.eos_id}, {"unknown_token_id", v.unk_id},
             {"padding_token_id", v.pad_id}, {"eot_token_id", v.eot_id}}) {
      if (id) expect_field("tokenizer.ggml." + key, {"UINT32"}, *id);
      else EXPECT_FALSE(f.contains("tokenizer.ggml." + key)) << key;
    }
    if (v.add_bos) expect_field("tokenizer.ggml.add_bos_token", {"BOOL"}, *v.add_bos);
    if (v.add_eos) expect_field("tokenizer.ggml.add_eos_token", {"BOOL"}, *v.add_eos);
    if (v.add_space_prefix) expect_field("tokenizer.ggml.add_space_prefix", {"BOOL"}, *v.add_space_prefix);
    if (!v.chat_template.empty()) expect_field("tokenizer.chat_template", {"STRING"}, v.chat_template);

    // transformers' GGUF loader on our file encodes like AutoTokenizer on the original directory.
    ASSERT_FALSE(r.contains("error")) << r.value("error", std::string());
    // Without a BOS id (a tokenizer.model directory without config.json: SpecialVocab finds none)
    // transformers adds no BOS; llama.cpp and tokenizer_from_gguf_vocab fall back to id 1.
    const bool bos_unknown = !v.bos_id && v.add_bos.value_or(v.model == "llama");
    // What transformers' GGUF loader itself does differently (characterized, not llmtune's):
    // * GPT2Tokenizer's default "<|endoftext|>" is added as a new special token (id = vocab size)
    //   to a byte-level vocabulary without it (Llama 3), so that text is matched whole;
    // * no NFC normalizer for pre "qwen2" (Qwen2's tokenizer.json has one);
    // * a BOS id that names a normal token (the Qwen2 model fixture's config.json says bos 1, which
    //   SpecialVocab writes) makes that token special, so its text is split out.
    auto loader_differs = [&](const std::string& text) {
      if (v.model == "gpt2" && text.find("<|endoftext|>") != std::string::npos &&
          std::find(v.tokens.begin(), v.tokens.end(), "<|endoftext|>") == v.tokens.end())
        return true;
      if (v.pre == "qwen2" && !ref["is_nfc"][&text - t.data()].get<bool>()) return true;
      return v.bos_id && v.token_types[*v.bos_id] == 1 && text.find(v.tokens[*v.bos_id]) != std::string::npos;
    };
    int mismatches = 0, loader_skipped = 0;
    for (size_t i = 0; i < t.size(); ++i) {
      if (lossy_text(c, v, t[i])) continue;
      if (loader_differs(t[i])) {
        ++loader_skipped;
        continue;
      }
      for (const char* key : {"ids", "ids_plain"}) {
        if (bos_unknown && std::string(key) == "ids") continue;
        auto ours = r["gguf"][key][i].get<std::vector<int32_t>>(), orig = r["orig"][key][i].get<std::vector<int32_t>>();
        if (ours != orig && ++mismatches <= 4)
          ADD_FAILURE() << key << " differ for " << json(t[i]).dump() << "\n  gguf: " << show(ours)
                        << "\n  orig: " << show(orig);
      }
    }
    EXPECT_EQ(mismatches, 0);
    if (loader_skipped)
      std::printf("[gguf vocab] %-22s transformers' GGUF loader: %d texts not compared (its own differences)\n",
                  c.name.c_str(), loader_skipped);
  }
  fs::remove_all(dir);
}

TEST(GgufVocabFile, ReadRejectsInconsistentArrays) {
  fs::path dir = temp_dir("bad");
  {
    llmtune::io::GgufWriter w(dir / "bad.gguf");
    w.add_string("tokenizer.ggml.model", "llama");
    w.add_string_array("tokenizer.ggml.tokens", {"a", "b"});
    w.add_f32_array("tokenizer.ggml.scores", {0.0f});
    w.commit();
  }
  try {
    read_gguf_vocab(*llmtune::io::GgufFile::open(dir / "bad.gguf"));
    FAIL() << "expected an error";
  } catch (const llmtune::Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer.ggml.scores"), std::string::npos) << e.what();
  }
  {
    llmtune::io::GgufWriter w(dir / "none.gguf");
    w.add_string("general.architecture", "llama");
    w.commit();
  }
  EXPECT_THROW(read_gguf_vocab(*llmtune::io::GgufFile::open(dir / "none.gguf")), llmtune::Error);
  fs::remove_all(dir);
}

}  // namespace
