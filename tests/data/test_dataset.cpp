// load_dataset on files: formats detected from keys, JSON arrays with line numbers, truncation and
// dropping counted, the seeded validation split, and every kind of bad input as a one-line
// DataError naming file:line (or skipped and counted with skip_bad_rows).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "data/data_reference.h"
#include "llmtune/data/dataset.h"
#include "llmtune/util/error.h"

namespace {

namespace data = llmtune::data;
namespace fs = std::filesystem;

class DatasetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("llmtune-dataset-" + std::to_string(::getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
    tok_ = llmtune::tokenizer::load_tokenizer(llmtune::testing::fixture_model_dir("qwen2"));
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path write(const std::string& name, const std::string& content) {
    fs::path p = dir_ / name;
    std::ofstream(p, std::ios::binary) << content;
    return p;
  }
  data::Dataset load(const fs::path& p, data::DataParams params = {}) {
    params.path = p;
    return data::load_dataset(params, *tok_);
  }
  // The DataError message of loading `p`, checked to be one line.
  std::string error_of(const fs::path& p, data::DataParams params = {}) {
    try {
      load(p, params);
    } catch (const llmtune::DataError& e) {
      std::string m = e.what();
      EXPECT_EQ(m.find('\n'), std::string::npos) << "not one line: " << m;
      return m;
    }
    ADD_FAILURE() << "no DataError for " << p;
    return "";
  }
  fs::path dir_;
  std::unique_ptr<llmtune::tokenizer::Tokenizer> tok_;
};

const char* kChat = R"({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there, friend."}]})";

TEST_F(DatasetTest, DetectsEachFormatFromKeys) {
  struct C {
    const char* row;
    const char* format;
  } cases[] = {
      {kChat, "messages"},
      {R"({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]})", "messages"},
      {R"({"tools": [], "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})", "tools"},
      {R"({"instruction": "a", "input": "", "output": "b"})", "alpaca"},
      {R"({"prompt": "a", "completion": "b"})", "completion"},
      {R"({"text": "abc"})", "text"},
  };
  for (const auto& c : cases) {
    auto ds = load(write("d.jsonl", std::string(c.row) + "\n"));
    EXPECT_EQ(ds.format, c.format) << c.row;
    EXPECT_EQ(ds.train.size(), 1u);
  }
}

TEST_F(DatasetTest, JsonArrayRowsKeepTheirLines) {
  auto p = write("d.json", std::string("[\n  ") + kChat + ",\n\n  " + kChat + "\n]\n");
  auto ds = load(p);
  ASSERT_EQ(ds.train.size(), 2u);
  EXPECT_EQ(ds.train[0].line, 2);
  EXPECT_EQ(ds.train[1].line, 4);
  auto bad = write("bad.json", std::string("[\n  ") + kChat + ",\n  {\"text\": 3}\n]\n");
  data::DataParams params;
  params.format = "messages";
  EXPECT_NE(error_of(bad, params).find("bad.json:3:"), std::string::npos);
}

TEST_F(DatasetTest, MalformedJsonLineNamesFileAndLine) {
  auto p = write("d.jsonl", std::string(kChat) + "\n" + kChat + "\n{\"messages\": [oops\n" + kChat + "\n");
  std::string m = error_of(p);
  EXPECT_NE(m.find("d.jsonl:3: not valid JSON"), std::string::npos) << m;
}

TEST_F(DatasetTest, SkipBadRowsCountsThem) {
  auto p = write("d.jsonl", std::string(kChat) + "\n{broken\n[1, 2]\n{\"messages\": [{\"role\": \"user\"}]}\n" +
                                R"({"messages": [{"role": "user", "content": "only a question"}]})" + "\n" + kChat + "\n");
  data::DataParams params;
  params.skip_bad_rows = true;
  auto ds = load(p, params);
  EXPECT_EQ(ds.train.size(), 2u);
  EXPECT_EQ(ds.stats.rows, 6);
  EXPECT_EQ(ds.stats.skipped_bad, 4);
  EXPECT_EQ(ds.train[1].line, 6);
}

TEST_F(DatasetTest, MissingFieldsNameTheFieldAndRow) {
  data::DataParams alpaca;
  alpaca.format = "alpaca";
  alpaca.chat_template = "alpaca";
  std::string m = error_of(write("a.jsonl", R"({"instruction": "x", "outptu": "y"})" "\n"), alpaca);
  EXPECT_NE(m.find("a.jsonl:1:"), std::string::npos) << m;
  EXPECT_NE(m.find("\"output\""), std::string::npos) << m;
  m = error_of(write("m.jsonl", std::string(kChat) + "\n" + R"({"messages": [{"role": "user"}]})" + "\n"));
  EXPECT_NE(m.find("m.jsonl:2: messages[0] needs a field \"content\""), std::string::npos) << m;
  data::DataParams completion;
  completion.format = "completion";
  m = error_of(write("c.jsonl", R"({"prompt": "x"})" "\n"), completion);
  EXPECT_NE(m.find("c.jsonl:1:"), std::string::npos) << m;
  EXPECT_NE(m.find("\"completion\""), std::string::npos) << m;
  m = error_of(write("u.jsonl", R"({"question": "x", "answer": "y"})" "\n"));
  EXPECT_NE(m.find("u.jsonl:1: cannot tell the data format"), std::string::npos) << m;
}

TEST_F(DatasetTest, RowWithoutAssistantIsAnError) {
  std::string m = error_of(write("d.jsonl", R"({"messages": [{"role": "user", "content": "a question"}]})" "\n"));
  EXPECT_NE(m.find("d.jsonl:1: the row has no token to train on"), std::string::npos) << m;
}

TEST_F(DatasetTest, EmptyFilesAreErrors) {
  EXPECT_NE(error_of(write("e.jsonl", "")).find("the dataset is empty"), std::string::npos);
  EXPECT_NE(error_of(write("e.json", "[]")).find("the dataset is empty"), std::string::npos);
  data::DataParams params;
  params.skip_bad_rows = true;
  EXPECT_NE(error_of(write("b.jsonl", "{bad\n{worse\n"), params).find("2 skipped as bad"), std::string::npos);
  EXPECT_NE(error_of(dir_ / "missing.jsonl").find("cannot open"), std::string::npos);
}

TEST_F(DatasetTest, UnknownNamesAreErrors) {
  auto p = write("d.jsonl", std::string(kChat) + "\n");
  data::DataParams params;
  params.format = "sharegpt4";
  EXPECT_NE(error_of(p, params).find("unknown data format \"sharegpt4\""), std::string::npos);
  params = {};
  params.chat_template = "vicuna";
  std::string m = error_of(p, params);
  EXPECT_NE(m.find("unknown chat template \"vicuna\""), std::string::npos) << m;
  EXPECT_NE(m.find("chatml"), std::string::npos) << m;
  params = {};
  params.train_on = "everything";
  EXPECT_NE(error_of(p, params).find("train_on"), std::string::npos);
  params = {};
  params.truncation = "cut";
  EXPECT_NE(error_of(p, params).find("truncation"), std::string::npos);
  // A base tokenizer without a chat template: the error names the templates to choose from.
  tok_ = llmtune::tokenizer::load_tokenizer(llmtune::testing::fixture_model_dir("mistral"));
  m = error_of(p);
  EXPECT_NE(m.find("has no chat template"), std::string::npos) << m;
  EXPECT_NE(m.find("alpaca, chatml, llama3, mistral, zephyr"), std::string::npos) << m;
}

TEST_F(DatasetTest, TruncateOrDropLongRows) {
  std::string long_answer(400, 'a');
  for (size_t i = 0; i < long_answer.size(); i += 7) long_answer[i] = ' ';
  std::string rows = std::string(kChat) + "\n" + R"({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ")" +
                     long_answer + "\"}]}\n" +
                     R"({"messages": [{"role": "user", "content": ")" + long_answer +
                     R"("}, {"role": "assistant", "content": "short"}]})" + "\n";
  auto p = write("d.jsonl", rows);
  data::DataParams params;
  params.max_seq_len = 40;
  auto ds = load(p, params);
  EXPECT_EQ(ds.stats.truncated, 2);
  EXPECT_EQ(ds.stats.dropped, 1);  // the third: its answer is past the cut
  ASSERT_EQ(ds.train.size(), 2u);
  EXPECT_EQ(ds.train[1].input_ids.size(), 40u);
  params.truncation = "drop";
  ds = load(p, params);
  EXPECT_EQ(ds.train.size(), 1u);
  EXPECT_EQ(ds.stats.dropped, 2);
  EXPECT_EQ(ds.stats.truncated, 0);
}

TEST_F(DatasetTest, ValidationSplitIsSeededAndDisjoint) {
  std::string rows;
  for (int i = 0; i < 50; ++i)
    rows += R"({"messages": [{"role": "user", "content": "q)" + std::to_string(i) +
            R"("}, {"role": "assistant", "content": "a)" + std::to_string(i) + "\"}]}\n";
  auto p = write("d.jsonl", rows);
  data::DataParams params;
  params.val_fraction = 0.2;
  auto a = load(p, params), b = load(p, params);
  ASSERT_EQ(a.val.size(), 10u);
  ASSERT_EQ(a.train.size(), 40u);
  std::vector<int64_t> va, vb, all;
  for (auto& e : a.val) va.push_back(e.line);
  for (auto& e : b.val) vb.push_back(e.line);
  EXPECT_EQ(va, vb);
  for (auto& e : a.train) all.push_back(e.line);
  all.insert(all.end(), va.begin(), va.end());
  std::sort(all.begin(), all.end());
  for (int i = 0; i < 50; ++i) EXPECT_EQ(all[i], i + 1);
  params.seed = 7;
  auto c = load(p, params);
  std::vector<int64_t> vc;
  for (auto& e : c.val) vc.push_back(e.line);
  EXPECT_NE(va, vc);
  // A separate validation file.
  data::DataParams sep;
  sep.val_path = write("v.jsonl", std::string(kChat) + "\n");
  auto d = load(p, sep);
  EXPECT_EQ(d.train.size(), 50u);
  EXPECT_EQ(d.val.size(), 1u);
}

TEST_F(DatasetTest, StatsCountTokens) {
  auto ds = load(write("d.jsonl", std::string(kChat) + "\n" + kChat + "\n"));
  int64_t tokens = 0, trained = 0;
  for (auto& e : ds.train) {
    tokens += e.input_ids.size();
    for (auto l : e.labels) trained += l != data::kIgnoreIndex;
  }
  EXPECT_EQ(ds.stats.tokens, tokens);
  EXPECT_EQ(ds.stats.trained_tokens, trained);
  EXPECT_GT(trained, 0);
  EXPECT_LT(trained, tokens);
  EXPECT_EQ(ds.template_name, "tokenizer");
}

}  // namespace
