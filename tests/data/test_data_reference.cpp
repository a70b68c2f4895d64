// Every row format x chat template against data_reference.py (transformers' apply_chat_template on
// prefixes, HF offsets): the rendered text, input_ids equal to HF's tokenization of it, and labels
// that are exactly the assistant spans plus their end-of-turn token. One Python process for all.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "data/data_reference.h"
#include "llmtune/data/dataset.h"
#include "llmtune/tokenizer/tokenizer.h"

namespace {

using nlohmann::ordered_json;
namespace data = llmtune::data;

ordered_json J(const char* s) { return ordered_json::parse(s); }

std::string read_template(const std::string& name) {
  std::ifstream in(std::string(LLMTUNE_SOURCE_DIR) + "/tests/data/chat_templates/" + name, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct Row {
  std::string name, format;
  ordered_json row;
};

std::vector<Row> chat_rows() {
  return {
      {"alpaca", "alpaca", J(R"({"instruction": "Give three tips for staying healthy.", "input": "", "output": "Eat well, sleep 8 hours, and move every day."})")},
      {"alpaca_input_system", "alpaca", J(R"({"system": "You are terse.", "instruction": "Translate to French.", "input": "Good morning, friend!", "output": "Bonjour, mon ami !"})")},
      {"alpaca_input", "alpaca", J(R"({"instruction": "Sum the numbers.", "input": "12 and 30", "output": "42"})")},
      {"openai_multi_turn_system", "messages", J(R"({"messages": [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hi there!"}, {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "  It is 4.\n"}]})")},
      {"openai_single", "messages", J(R"({"messages": [{"role": "user", "content": "Café ☕ or tea? 🍵"}, {"role": "assistant", "content": "Tea, ángström-sized cups."}]})")},
      {"sharegpt", "messages", J(R"({"conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Tell me a joke"}, {"from": "gpt", "value": "Why did the chicken cross the road?"}, {"from": "human", "value": "Why?"}, {"from": "gpt", "value": "To get to the other side."}]})")},
  };
}

Row tools_row() {
  return {"tools", "tools", J(R"({"tools": [{"type": "function", "function": {"name": "get_weather", "description": "Current weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
   "messages": [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                {"role": "tool", "name": "get_weather", "content": "{\"temp\": 21}"},
                {"role": "assistant", "content": "It is 21 degrees in Paris."}]})")};
}

std::vector<Row> plain_rows() {
  return {
      {"completion", "completion", J(R"({"prompt": "The capital of France is", "completion": " Paris."})")},
      {"completion_nospace", "completion", J(R"({"prompt": "Q: 2+2=\nA:", "completion": "4"})")},
      {"text", "text", J(R"({"text": "Once upon a time, there was a tiny model."})")},
  };
}

struct TemplateSetup {
  std::string model;     // fixture model dir name
  std::string template_;  // "auto", a named template, or a file under tests/data/chat_templates
  bool tools = false;    // the template renders tool calls
};

TEST(DataReference, LabelsAndIdsMatchTransformers) {
  std::vector<TemplateSetup> setups = {
      {"qwen2", "auto"},   {"llama3", "auto"},  {"tinyllama", "auto"},
      {"qwen2", "qwen2.5-instruct.jinja", true}, {"llama3", "llama3.1-instruct.jinja", true},
      {"tinyllama", "tinyllama-chat.jinja"},    {"mistral", "mistral-instruct-v0.3.jinja"},
      {"mistral", "alpaca"}, {"mistral", "chatml"}, {"mistral", "llama3"}, {"mistral", "mistral"}, {"mistral", "zephyr"},
      {"qwen2", "alpaca"},   {"qwen2", "chatml"},   {"llama3", "llama3"}, {"gemma", "zephyr"},
  };
  struct Case {
    std::string label;
    data::RenderedRow ours;
    std::string error;
  };
  std::vector<Case> cases;
  ordered_json request = {{"cases", ordered_json::array()}};
  auto add = [&](const std::string& model, const std::string& tpl, const Row& row, const std::string& train_on) {
    std::string dir = llmtune::testing::fixture_model_dir(model);
    auto tok = llmtune::tokenizer::load_tokenizer(dir);
    data::DataParams p;
    p.format = row.format;
    p.train_on = train_on;
    ordered_json tpl_source;  // null: the tokenizer's own
    if (tpl.find(".jinja") != std::string::npos) {
      p.chat_template = std::string(LLMTUNE_SOURCE_DIR) + "/tests/data/chat_templates/" + tpl;
      tpl_source = read_template(tpl);
    } else if (tpl != "auto") {
      p.chat_template = tpl;
      tpl_source = data::named_template_source(tpl);
    }
    Case c{model + "/" + tpl + "/" + row.name + "/" + train_on, {}, ""};
    try {
      c.ours = data::render_row(row.row, p, *tok, "test:1");
    } catch (const std::exception& e) {
      c.error = e.what();
    }
    cases.push_back(std::move(c));
    request["cases"].push_back({{"dir", dir}, {"template", tpl_source}, {"template_name", tpl}, {"format", row.format},
                                {"row", row.row}, {"train_on", train_on}});
  };
  for (const auto& s : setups) {
    for (const auto& r : chat_rows()) add(s.model, s.template_, r, "assistant");
    if (s.tools) add(s.model, s.template_, tools_row(), "assistant");
    add(s.model, s.template_, chat_rows()[3], "all");
  }
  for (const std::string model : {"qwen2", "llama3", "tinyllama", "mistral", "gemma"})
    for (const auto& r : plain_rows()) {
      add(model, "auto", r, "assistant");
      add(model, "auto", r, "all");
    }

  ordered_json ref = llmtune::testing::data_reference(request)["results"];
  ASSERT_EQ(ref.size(), cases.size());
  int checked = 0, trained_total = 0, non_prefix_stable = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const ordered_json& r = ref[i];
    SCOPED_TRACE(c.label);
    if (!c.error.empty() && r.contains("error")) {
      // Both sides find the template not prefix-stable (Mistral v0.3 moves the system prompt to the
      // last user turn): ours must say so in its error.
      EXPECT_NE(c.error.find("is not prefix-stable"), std::string::npos) << c.error;
      EXPECT_NE(r["error"].get<std::string>().find("prefix-stable"), std::string::npos) << r["error"];
      ++non_prefix_stable;
      continue;
    }
    ASSERT_TRUE(c.error.empty()) << "ours failed: " << c.error;
    ASSERT_FALSE(r.contains("error")) << "reference failed: " << r["error"];
    EXPECT_EQ(c.ours.text, r["text"].get<std::string>());
    EXPECT_EQ(c.ours.example.input_ids, r["input_ids"].get<std::vector<int32_t>>()) << "input_ids differ from HF";
    EXPECT_EQ(r["ids_of_text"], r["input_ids"]) << "HF: apply_chat_template ids differ from tokenizing its text";
    auto ref_labels = r["labels"].get<std::vector<int32_t>>();
    EXPECT_EQ(c.ours.example.labels, ref_labels) << "labels differ from the reference";
    int trained = 0;
    for (int32_t l : ref_labels) trained += l != data::kIgnoreIndex;
    EXPECT_GT(trained, 0);
    trained_total += trained;
    // Each trained assistant turn ends on the token the template ends turns with (special/EOS).
    const auto& ids = c.ours.example.input_ids;
    const auto& labels = c.ours.example.labels;
    for (size_t j = 0; j < labels.size(); ++j)
      if (labels[j] != data::kIgnoreIndex && (j + 1 == labels.size() || labels[j + 1] == data::kIgnoreIndex) &&
          c.label.find("/all") == std::string::npos && c.label.find("/completion") == std::string::npos &&
          c.label.find("/text") == std::string::npos) {
        auto tok = llmtune::tokenizer::load_tokenizer(llmtune::testing::fixture_model_dir(c.label.substr(0, c.label.find('/'))));
        bool named = c.label.find(".jinja") == std::string::npos && c.label.find("/auto/") == std::string::npos;
        if (named) {
          EXPECT_TRUE(tok->eos_id && ids[j] == *tok->eos_id) << "a named template's turn must end with EOS at " << j;
        }
      }
    if (r.contains("assistant_masks")) {
      auto mask = r["assistant_masks"].get<std::vector<int>>();
      ASSERT_EQ(mask.size(), labels.size());
      for (size_t j = 0; j < mask.size(); ++j) EXPECT_EQ(mask[j] != 0, labels[j] != data::kIgnoreIndex) << "token " << j;
    }
    ++checked;
  }
  EXPECT_LE(non_prefix_stable, 3);
  std::printf("[data reference] %d cases checked, %d trained tokens, %d agreed not prefix-stable\n", checked,
              trained_total, non_prefix_stable);
}

}  // namespace
