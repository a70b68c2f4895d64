// What every writer of a Hugging Face directory shares (io/hf_dir.h: config.json dtype names and
// rewrite, the tokenizer files) and the whole-file readers with errors that name the file
// (io/read_file.h).
#include <gtest/gtest.h>

#include "io/io_test_util.h"
#include "llmtune/io/hf_dir.h"
#include "llmtune/io/read_file.h"
#include "llmtune/util/error.h"

namespace llmtune::io {
namespace {

using llmtune::testing::read_bytes;
using llmtune::testing::TempDir;
using llmtune::testing::write_bytes;

template <class Err, class F>
std::string error_of(F f) {
  try {
    f();
  } catch (const Err& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error thrown";
  return "";
}

TEST(HfFiles, ConfigDtypeNames) {
  EXPECT_EQ(dtype_from_config_name("bfloat16", c10::kFloat), c10::kBFloat16);
  EXPECT_EQ(dtype_from_config_name("float16", c10::kFloat), c10::kHalf);
  EXPECT_EQ(dtype_from_config_name("float32", c10::ScalarType::Undefined), c10::kFloat);
  // Empty or unknown: the caller's fallback (finetune saves fp32, merge keeps what is stored).
  EXPECT_EQ(dtype_from_config_name("", c10::kFloat), c10::kFloat);
  EXPECT_EQ(dtype_from_config_name("", c10::ScalarType::Undefined), c10::ScalarType::Undefined);
  EXPECT_EQ(dtype_from_config_name("float64", c10::kFloat), c10::kFloat);
  for (auto d : {c10::kBFloat16, c10::kHalf, c10::kFloat})
    EXPECT_EQ(dtype_from_config_name(config_dtype_name(d), c10::ScalarType::Undefined), d);
  EXPECT_EQ(config_dtype_name(c10::kDouble), "");
}

TEST(HfFiles, ConfigDtypeIsRewrittenUnderTheBasesKeyInOrder) {
  TempDir base, out;
  write_bytes(base / "config.json", R"({"model_type": "llama", "torch_dtype": "float32", "vocab_size": 8})");
  write_config_with_dtype(base.path(), out.path(), c10::kBFloat16);
  auto j = nlohmann::ordered_json::parse(read_bytes(out / "config.json"));
  EXPECT_EQ(j["torch_dtype"], "bfloat16");
  EXPECT_FALSE(j.contains("dtype"));
  EXPECT_EQ(j.begin().key(), "model_type");  // key order kept

  write_bytes(base / "config.json", R"({"model_type": "llama"})");
  write_config_with_dtype(base.path(), out.path(), c10::kHalf);
  EXPECT_EQ(nlohmann::json::parse(read_bytes(out / "config.json"))["dtype"], "float16");

  write_bytes(base / "config.json", R"({"dtype": "bfloat16"})");
  write_config_with_dtype(base.path(), out.path(), c10::ScalarType::Undefined);  // as stored
  EXPECT_EQ(nlohmann::json::parse(read_bytes(out / "config.json"))["dtype"], "bfloat16");
}

TEST(HfFiles, TokenizerFilesIncludeTheChatTemplates) {
  const auto& files = tokenizer_files();
  for (const char* f : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "chat_template.jinja",
                        "chat_template.json", "special_tokens_map.json"})
    EXPECT_NE(std::find(files.begin(), files.end(), f), files.end()) << f;
  TempDir from, to;
  write_bytes(from / "tokenizer.json", "{}");
  write_bytes(from / "chat_template.json", R"({"chat_template": "x"})");
  write_bytes(from / "model.safetensors", "not a tokenizer file");
  EXPECT_EQ(copy_tokenizer_files(from.path(), to.path()), 2);
  EXPECT_EQ(read_bytes(to / "chat_template.json"), R"({"chat_template": "x"})");
  EXPECT_FALSE(std::filesystem::exists(to / "model.safetensors"));
}

TEST(ReadFile, ErrorsNameTheFileAndWhatIsWrong) {
  TempDir dir;
  std::string m = error_of<ModelLoadError>([&] { read_json_file<ModelLoadError>(dir / "config.json", "config.json"); });
  EXPECT_NE(m.find((dir / "config.json").string() + ": cannot read config.json: no such file"), std::string::npos) << m;

  write_bytes(dir / "config.json", R"({"a": )");
  m = error_of<ModelLoadError>([&] { read_json_file<ModelLoadError>(dir / "config.json", "config.json"); });
  EXPECT_NE(m.find("malformed JSON in config.json"), std::string::npos) << m;
  EXPECT_EQ(m.find('\n'), std::string::npos) << m;

  write_bytes(dir / "config.json", "[1, 2]");
  m = error_of<AdapterError>([&] { read_json_file<AdapterError>(dir / "config.json", "adapter_config.json"); });
  EXPECT_NE(m.find("JSON object"), std::string::npos) << m;

  m = error_of<IoError>([&] { read_text_file(dir.path(), "the chat template"); });
  EXPECT_NE(m.find("is a directory"), std::string::npos) << m;
}

TEST(ReadFile, ReadsTextAndJsonAsStored) {
  TempDir dir;
  write_bytes(dir / "t.jinja", std::string("{{ x }}\n\0tail", 14));
  EXPECT_EQ(read_text_file(dir / "t.jinja", "template"), std::string("{{ x }}\n\0tail", 14));
  write_bytes(dir / "c.json", R"({"z": 1, "a": [true, null]})");
  auto ordered = read_json_file(dir / "c.json", "c.json");
  EXPECT_EQ(ordered.begin().key(), "z");
  auto plain = read_json_file<IoError, nlohmann::json>(dir / "c.json", "c.json");
  EXPECT_EQ(plain["a"][0], true);
}

}  // namespace
}  // namespace llmtune::io
