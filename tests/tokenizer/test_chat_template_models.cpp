// Every shipped chat template (tests/data/chat_templates) rendered by our engine must be
// byte-identical to transformers' rendering on a matrix of conversations, and must raise a
// TemplateError exactly where transformers raises (e.g. Mistral's role alternation rule).
#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <vector>

#include "llmtune/tokenizer/chat_template.h"
#include "llmtune/util/error.h"
#include "support/chat_template_oracle.h"

namespace llmtune::tokenizer {
namespace {

using nlohmann::ordered_json;
using testing::OracleMode;

struct ModelCase {
  std::string template_name;
  std::string label;
  ordered_json messages;
  bool add_generation_prompt;
  std::string bos, eos;
  ordered_json extra;  // tools, date_string, ...
  size_t handle;
};

ordered_json msg(const std::string& role, const ordered_json& content) { return {{"role", role}, {"content", content}}; }

// Conversations every template sees: system prompt or not, one turn or several, content with
// Unicode, newlines, quotes, braces and Jinja-looking text.
std::vector<std::pair<std::string, ordered_json>> chat_conversations() {
  ordered_json sys = msg("system", "You are a careful assistant.\nAnswer briefly.  ");
  ordered_json u1 = msg("user", "Hello! Ünïcödé ✓ 日本語 \"quotes\" 'single' {braces} {{ not jinja }} {% raw %}");
  ordered_json a1 = msg("assistant", "  Hi there.\nLine two\twith tab.  ");
  ordered_json u2 = msg("user", "Second question?\n\n");
  ordered_json a2 = msg("assistant", "Second answer: `code {x}` 🎉");
  ordered_json u3 = msg("user", "Third: backslash \\n literal and \\\" escaped");
  ordered_json a3 = msg("assistant", "Third answer.");
  ordered_json u4 = msg("user", "Fourth?");
  return {
      {"single", ordered_json::array({u1})},
      {"system+single", ordered_json::array({sys, u1})},
      {"multi", ordered_json::array({u1, a1, u2, a2, u3, a3, u4})},
      {"system+multi", ordered_json::array({sys, u1, a1, u2, a2, u3, a3, u4})},
      {"ends-with-assistant", ordered_json::array({u1, a1, u2, a2})},
      {"two-users-in-a-row", ordered_json::array({u1, u2})},
      {"starts-with-assistant", ordered_json::array({a1, u1})},
      {"empty-content", ordered_json::array({msg("user", "")})},
      {"unknown-role", ordered_json::array({msg("user", "hi"), msg("narrator", "aside")})},
  };
}

ordered_json weather_tools() {
  return ordered_json::parse(R"([{"type": "function", "function": {"name": "get_weather",
    "description": "Get the weather in a city", "parameters": {"type": "object", "properties": {
    "city": {"type": "string", "description": "City name, e.g. Paris"},
    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}])");
}

// Tool use: definitions, an assistant tool call, a tool result (string and structured).
std::vector<std::pair<std::string, ordered_json>> tool_conversations() {
  ordered_json sys = msg("system", "You are a careful assistant.");
  ordered_json u = msg("user", "What's the weather in Paris? «ça va»");
  ordered_json call = ordered_json::parse(R"({"role": "assistant", "content": null, "tool_calls": [{"id": "call12345",
    "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}]})");
  ordered_json result = ordered_json::parse(R"({"role": "tool", "tool_call_id": "call12345", "name": "get_weather",
    "content": "{\"temperature\": 21, \"sky\": \"sunny ☀\"}"})");
  ordered_json result_obj = ordered_json::parse(R"({"role": "tool", "tool_call_id": "call12345", "name": "get_weather",
    "content": {"temperature": 21}})");
  ordered_json answer = msg("assistant", "It is 21 °C and sunny in Paris.");
  return {
      {"tools:first-user", ordered_json::array({u})},
      {"tools:system", ordered_json::array({sys, u})},
      {"tools:call+result", ordered_json::array({sys, u, call, result, answer, msg("user", "Thanks!")})},
      {"tools:call+structured-result", ordered_json::array({u, call, result_obj})},
  };
}

struct Family {
  std::string name, bos, eos;
  bool tools;
};

const std::vector<Family>& families() {
  static const std::vector<Family> f = {
      {"llama3-instruct", "<|begin_of_text|>", "<|eot_id|>", false},
      {"llama3.1-instruct", "<|begin_of_text|>", "<|eot_id|>", true},
      {"llama3.2-instruct", "<|begin_of_text|>", "<|eot_id|>", true},
      {"qwen2-instruct", "", "<|im_end|>", false},
      {"qwen2.5-instruct", "", "<|im_end|>", true},
      {"mistral-instruct-v0.1", "<s>", "</s>", false},
      {"mistral-instruct-v0.1-original", "<s>", "</s>", false},
      {"mistral-instruct-v0.2", "<s>", "</s>", false},
      {"mistral-instruct-v0.3", "<s>", "</s>", true},
      {"tinyllama-chat", "<s>", "</s>", false},
      {"gemma-it", "<bos>", "<eos>", false},
      {"smollm2-instruct", "<|im_start|>", "<|im_end|>", false},
  };
  return f;
}

std::vector<ModelCase> build_cases() {
  std::vector<ModelCase> cases;
  auto add = [&](const Family& f, const std::string& label, const ordered_json& messages, bool agp, ordered_json extra) {
    ModelCase c{f.name, label, messages, agp, f.bos, f.eos, std::move(extra), 0};
    ordered_json ctx = {{"messages", messages}};
    if (c.extra.contains("tools")) ctx["tools"] = c.extra["tools"];
    ctx["add_generation_prompt"] = agp;
    ctx["bos_token"] = f.bos;
    ctx["eos_token"] = f.eos;
    for (auto it = c.extra.begin(); it != c.extra.end(); ++it)
      if (it.key() != "tools") ctx[it.key()] = it.value();
    c.handle = testing::register_oracle_case(testing::read_chat_template(f.name), OracleMode::Hf, ctx);
    cases.push_back(std::move(c));
  };
  for (const Family& f : families()) {
    for (const auto& [label, messages] : chat_conversations())
      for (bool agp : {false, true}) add(f, label, messages, agp, {{"date_string", "26 Jul 2024"}});
    // Llama 3.2 dates its system prompt with strftime_now("%d %b %Y") when no date_string is given.
    add(f, "system+single/no-date_string", chat_conversations()[1].second, true, ordered_json::object());
    if (!f.tools) continue;
    for (const auto& [label, messages] : tool_conversations())
      for (bool with_tools : {true, false})
        for (bool in_user : {true, false}) {
          ordered_json extra = {{"date_string", "26 Jul 2024"}};
          if (with_tools) extra["tools"] = weather_tools();
          if (!in_user) extra["tools_in_user_message"] = false;
          add(f, label + (with_tools ? "" : "/no-tools") + (in_user ? "" : "/tools-in-system"), messages, true, extra);
        }
  }
  return cases;
}

const std::vector<ModelCase>& model_cases() {
  static const std::vector<ModelCase> cases = build_cases();
  return cases;
}

// Registered at start-up so the oracle renders these together with every other case.
[[maybe_unused]] const bool kRegistered = !model_cases().empty();

void check_family(const std::string& name) {
  ChatTemplate tmpl(testing::read_chat_template(name));
  int compared = 0, raised = 0;
  for (const ModelCase& c : model_cases()) {
    if (c.template_name != name) continue;
    const testing::OracleResult& ref = testing::oracle_result(c.handle);
    SCOPED_TRACE(name + " / " + c.label + (c.add_generation_prompt ? " / add_generation_prompt" : ""));
    ordered_json ctx = chat_template_context(c.messages, c.add_generation_prompt, c.bos, c.eos, c.extra);
    if (!ref.ok) {
      EXPECT_THROW(tmpl.render(ctx), TemplateError) << "transformers raised: " << ref.error;
      ++raised;
      continue;
    }
    std::string ours;
    try {
      ours = tmpl.render(ctx);
    } catch (const TemplateError& e) {
      ADD_FAILURE() << "we raised but transformers rendered it: " << e.what();
      continue;
    }
    EXPECT_EQ(ours, ref.output);
    ++compared;
  }
  EXPECT_GE(compared, 8) << "too few cases rendered for " << name;
  std::printf("[ chat template %s: %d renders identical to transformers, %d raise in both ]\n", name.c_str(), compared,
              raised);
}

TEST(ChatTemplateModels, Llama3Instruct) { check_family("llama3-instruct"); }
TEST(ChatTemplateModels, Llama31Instruct) { check_family("llama3.1-instruct"); }
TEST(ChatTemplateModels, Llama32Instruct) { check_family("llama3.2-instruct"); }
TEST(ChatTemplateModels, Qwen2Instruct) { check_family("qwen2-instruct"); }
TEST(ChatTemplateModels, Qwen25Instruct) { check_family("qwen2.5-instruct"); }
TEST(ChatTemplateModels, MistralInstructV01) { check_family("mistral-instruct-v0.1"); }
TEST(ChatTemplateModels, MistralInstructV01Original) { check_family("mistral-instruct-v0.1-original"); }
TEST(ChatTemplateModels, MistralInstructV02) { check_family("mistral-instruct-v0.2"); }
TEST(ChatTemplateModels, MistralInstructV03) { check_family("mistral-instruct-v0.3"); }
TEST(ChatTemplateModels, TinyLlamaZephyr) { check_family("tinyllama-chat"); }
TEST(ChatTemplateModels, GemmaInstruct) { check_family("gemma-it"); }
TEST(ChatTemplateModels, SmolLM2Instruct) { check_family("smollm2-instruct"); }

// The render budgets against what the shipped templates need: every conversation above (tools
// included) renders within a hundredth of the default step budget, and a 1,000-turn conversation
// within the defaults, so the budgets stop runaway templates without ever refusing a real one.
TEST(ChatTemplateModels, ShippedTemplatesNeedAHundredthOfTheBudget) {
  const TemplateLimits defaults;
  const TemplateLimits hundredth{.max_steps = defaults.max_steps / 100, .max_bytes = defaults.max_bytes / 100};
  ordered_json long_chat = ordered_json::array();
  for (int i = 0; i < 1000; ++i)
    long_chat.push_back(msg(i % 2 == 0 ? "user" : "assistant", "Turn " + std::to_string(i) + ": a sentence of ordinary length."));
  long_chat.push_back(msg("user", "And the last question?"));
  for (const Family& f : families()) {
    SCOPED_TRACE(f.name);
    const ChatTemplate small(testing::read_chat_template(f.name), hundredth);
    int rendered = 0;
    for (const ModelCase& c : model_cases()) {
      if (c.template_name != f.name || !testing::oracle_result(c.handle).ok) continue;
      SCOPED_TRACE(c.label);
      EXPECT_NO_THROW(small.render(chat_template_context(c.messages, c.add_generation_prompt, c.bos, c.eos, c.extra)));
      ++rendered;
    }
    EXPECT_GE(rendered, 8);
    const ChatTemplate full(testing::read_chat_template(f.name));
    const std::string out = full.render(chat_template_context(long_chat, true, f.bos, f.eos));
    EXPECT_NE(out.find("Turn 999: a sentence"), std::string::npos);
  }
}

// The Mistral alternation rule surfaces as a one-line TemplateError carrying the template's text.
TEST(ChatTemplateModels, MistralAlternationMessage) {
  ordered_json ctx = chat_template_context(ordered_json::array({msg("user", "a"), msg("user", "b")}), false, "<s>", "</s>");
  try {
    ChatTemplate(testing::read_chat_template("mistral-instruct-v0.2")).render(ctx);
    FAIL() << "expected a TemplateError";
  } catch (const TemplateError& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("Conversation roles must alternate user/assistant/user/assistant/..."), std::string::npos) << what;
    EXPECT_EQ(what.rfind("chat template line 1: ", 0), 0u) << what;
    EXPECT_EQ(what.find('\n'), std::string::npos) << what;
  }
}

}  // namespace
}  // namespace llmtune::tokenizer
