// Tool-call parsing for `llmtune serve`. The expected results are what vLLM's hermes, llama3_json and
// mistral parsers return for the same text (read from their documentation and source): the calls'
// names and arguments (compared as JSON: vLLM re-serialises them with Python's separators), the
// content beside them (null when none; vLLM's "" or None), and the whole text as content when a
// call does not parse.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "../../src/serve/tool_calls.h"

namespace llmtune::serve {
namespace {

using json = nlohmann::json;

std::string read_template(const std::string& name) {
  std::ifstream in(std::string(LLMTUNE_SOURCE_DIR) + "/tests/data/chat_templates/" + name);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void expect_call(const ToolCall& c, const std::string& name, const json& args) {
  EXPECT_EQ(c.name, name);
  EXPECT_EQ(json::parse(c.arguments), args) << c.arguments;
  EXPECT_EQ(c.id.rfind("call_", 0), 0u);
  EXPECT_EQ(c.id.size(), 29u);
}

TEST(ToolCalls, DetectsTheFormatFromTheTemplate) {
  EXPECT_EQ(detect_tool_format(read_template("qwen2.5-instruct.jinja")), ToolFormat::Hermes);
  EXPECT_EQ(detect_tool_format(read_template("llama3.1-instruct.jinja")), ToolFormat::Llama3Json);
  EXPECT_EQ(detect_tool_format(read_template("llama3.2-instruct.jinja")), ToolFormat::Llama3Json);
  EXPECT_EQ(detect_tool_format(read_template("mistral-instruct-v0.3.jinja")), ToolFormat::Mistral);
  for (const char* none : {"llama3-instruct.jinja", "qwen2-instruct.jinja", "gemma-it.jinja", "tinyllama-chat.jinja",
                           "mistral-instruct-v0.2.jinja", "smollm2-instruct.jinja"})
    EXPECT_EQ(detect_tool_format(read_template(none)), ToolFormat::None) << none;
}

TEST(ToolCalls, Hermes) {
  auto p = parse_tool_calls(ToolFormat::Hermes,
                            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 2}}\n</tool_call>");
  ASSERT_EQ(p.calls.size(), 1u);
  expect_call(p.calls[0], "get_weather", {{"city", "Paris"}, {"days", 2}});
  EXPECT_FALSE(p.has_content);

  // Several calls, text before them (content), non-ASCII kept.
  p = parse_tool_calls(ToolFormat::Hermes,
                       "Let me check.\n<tool_call>\n{\"name\": \"a\", \"arguments\": {\"q\": \"é\"}}\n</tool_call>\n"
                       "<tool_call>\n{\"name\": \"b\", \"arguments\": {}}\n</tool_call>");
  ASSERT_EQ(p.calls.size(), 2u);
  expect_call(p.calls[0], "a", {{"q", "é"}});
  expect_call(p.calls[1], "b", json::object());
  EXPECT_NE(p.calls[0].id, p.calls[1].id);
  EXPECT_TRUE(p.has_content);
  EXPECT_EQ(p.content, "Let me check.\n");

  // An unclosed last call still parses (vLLM's regex takes it to the end).
  p = parse_tool_calls(ToolFormat::Hermes, "<tool_call>{\"name\": \"a\", \"arguments\": {\"x\": [1, 2]}}");
  ASSERT_EQ(p.calls.size(), 1u);
  expect_call(p.calls[0], "a", {{"x", {1, 2}}});

  // Malformed JSON, or no name: the whole text is content.
  for (const std::string bad : {"<tool_call>{\"name\": \"a\", \"arguments\": {</tool_call>",
                                "<tool_call>{\"arguments\": {}}</tool_call>", "plain answer"}) {
    p = parse_tool_calls(ToolFormat::Hermes, bad);
    EXPECT_TRUE(p.calls.empty()) << bad;
    EXPECT_TRUE(p.has_content);
    EXPECT_EQ(p.content, bad);
  }
}

TEST(ToolCalls, Llama3Json) {
  auto p = parse_tool_calls(ToolFormat::Llama3Json, "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}");
  ASSERT_EQ(p.calls.size(), 1u);
  expect_call(p.calls[0], "get_weather", {{"city", "Paris"}});
  EXPECT_FALSE(p.has_content);

  // <|python_tag|>, several calls separated by ';', braces inside strings.
  p = parse_tool_calls(ToolFormat::Llama3Json,
                       "<|python_tag|>{\"name\": \"a\", \"parameters\": {\"s\": \"}{\"}}; {\"name\": \"b\", \"arguments\": {\"n\": 1}}");
  ASSERT_EQ(p.calls.size(), 2u);
  expect_call(p.calls[0], "a", {{"s", "}{"}});
  expect_call(p.calls[1], "b", {{"n", 1}});

  // Text before the JSON, malformed JSON, JSON that is no call: content.
  for (const std::string bad : {"Sure: {\"name\": \"a\", \"parameters\": {}}", "{\"name\": \"a\", \"parameters\": {\"x\": }",
                                "{\"answer\": 42}", "{\"name\": \"a\", \"parameters\": {}} and more"}) {
    p = parse_tool_calls(ToolFormat::Llama3Json, bad);
    EXPECT_TRUE(p.calls.empty()) << bad;
    EXPECT_EQ(p.content, bad);
  }
}

TEST(ToolCalls, Mistral) {
  auto p = parse_tool_calls(ToolFormat::Mistral,
                            "[TOOL_CALLS] [{\"name\": \"a\", \"arguments\": {\"x\": 1}}, {\"name\": \"b\", \"arguments\": {}}]");
  ASSERT_EQ(p.calls.size(), 2u);
  expect_call(p.calls[0], "a", {{"x", 1}});
  expect_call(p.calls[1], "b", json::object());
  EXPECT_FALSE(p.has_content);

  p = parse_tool_calls(ToolFormat::Mistral, "I will look.[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {}}]");
  ASSERT_EQ(p.calls.size(), 1u);
  EXPECT_EQ(p.content, "I will look.");

  // Decoding drops the [TOOL_CALLS] special token: a list opening the text is calls too.
  p = parse_tool_calls(ToolFormat::Mistral, "[{\"name\": \"a\", \"arguments\": {\"y\": \"z\"}}]");
  ASSERT_EQ(p.calls.size(), 1u);
  expect_call(p.calls[0], "a", {{"y", "z"}});

  const std::string bad = "[TOOL_CALLS][{\"name\": \"a\", \"arguments\": ";
  p = parse_tool_calls(ToolFormat::Mistral, bad);
  EXPECT_TRUE(p.calls.empty());
  EXPECT_EQ(p.content, bad);
}

TEST(ToolCalls, NoFormatLeavesText) {
  const auto p = parse_tool_calls(ToolFormat::None, "<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call>");
  EXPECT_TRUE(p.calls.empty());
  EXPECT_TRUE(p.has_content);
}

// Streams `pieces` and returns the content shown, and the calls at the end.
std::pair<std::string, ParsedOutput> stream(ToolFormat f, const std::vector<std::string>& pieces) {
  ToolCallStream s(f);
  std::string shown, rest;
  for (const auto& piece : pieces) shown += s.push(piece);
  ParsedOutput p = s.finish(rest);
  return {shown + rest, p};
}

TEST(ToolCalls, StreamHoldsFromTheMarker) {
  ToolCallStream s(ToolFormat::Hermes);
  EXPECT_EQ(s.push("Hi <tool"), "Hi ");  // a marker may begin: held
  EXPECT_EQ(s.push("_call>{\"name\": "), "");
  EXPECT_EQ(s.push("\"f\", \"arguments\": {}}</tool_call>"), "");
  std::string rest;
  auto p = s.finish(rest);
  EXPECT_EQ(rest, "");
  ASSERT_EQ(p.calls.size(), 1u);
  EXPECT_EQ(p.calls[0].name, "f");

  // A held prefix that turns out to be text is shown.
  auto [text, none] = stream(ToolFormat::Hermes, {"a <to", "y> b"});
  EXPECT_EQ(text, "a <toy> b");
  EXPECT_TRUE(none.calls.empty());

  // Malformed: everything comes out as content at the end.
  std::tie(text, none) = stream(ToolFormat::Hermes, {"x<tool_call>{", "oops</tool_call>"});
  EXPECT_EQ(text, "x<tool_call>{oops</tool_call>");
  EXPECT_TRUE(none.calls.empty());

  // Llama and Mistral: a call only at the start; ordinary text streams at once.
  ToolCallStream l(ToolFormat::Llama3Json);
  EXPECT_EQ(l.push("  "), "");
  EXPECT_EQ(l.push("The answer"), "  The answer");
  EXPECT_EQ(l.push(" {is} here"), " {is} here");
  auto [lt, lp] = stream(ToolFormat::Llama3Json, {"{\"name\"", ": \"f\", \"parameters\": {\"a\": 1}}"});
  EXPECT_EQ(lt, "");
  ASSERT_EQ(lp.calls.size(), 1u);
  auto [mt, mp] = stream(ToolFormat::Mistral, {"ok ", "[TOOL_", "CALLS][{\"name\": \"g\", \"arguments\": {}}]"});
  EXPECT_EQ(mt, "ok ");
  ASSERT_EQ(mp.calls.size(), 1u);
  EXPECT_EQ(mp.calls[0].name, "g");
}

TEST(ToolCalls, OpenAIShapes) {
  ToolCall c{"call_abc", "f", "{\"a\":1}"};
  const auto j = tool_calls_json({c});
  EXPECT_EQ(j.dump(), R"([{"id":"call_abc","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}])");
  const auto d = tool_call_deltas(c, 1);
  ASSERT_EQ(d.size(), 2u);
  EXPECT_EQ(d[0].dump(), R"({"index":1,"id":"call_abc","type":"function","function":{"name":"f","arguments":""}})");
  EXPECT_EQ(d[1].dump(), R"({"index":1,"function":{"arguments":"{\"a\":1}"}})");
}

}  // namespace
}  // namespace llmtune::serve
