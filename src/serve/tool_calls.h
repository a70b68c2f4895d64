// Function calls in generated text, parsed back into OpenAI's `tool_calls`. The format follows the
// chat template in use (found by its markers), as the templates finetune trains with write calls:
//   Hermes / Qwen   <tool_call>{"name": ..., "arguments": {...}}</tool_call> (several in a row)
//   Llama 3.1 / 3.2 {"name": ..., "parameters": {...}} at the start, optionally after <|python_tag|>,
//                   several separated by ';'
//   Mistral v0.3    [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]
// Text that does not parse stays content, whole (as vLLM's parsers leave it).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace llmtune::serve {

enum class ToolFormat { None, Hermes, Llama3Json, Mistral };

// The format a chat template's source writes calls in; None when it shows none of the markers.
ToolFormat detect_tool_format(const std::string& chat_template);
const char* tool_format_name(ToolFormat f);

struct ToolCall {
  std::string id;         // call_ + 24 random letters and digits
  std::string name;
  std::string arguments;  // a JSON object, as text
};

struct ParsedOutput {
  std::vector<ToolCall> calls;  // empty: no call (or one that did not parse)
  std::string content;          // the text outside the calls (all of it when there are none)
  bool has_content = true;      // false: OpenAI's "content": null (no text beside the calls)
};

ParsedOutput parse_tool_calls(ToolFormat f, const std::string& text);

// OpenAI's message.tool_calls array, and the stream deltas for call `index` (one naming it, with
// empty arguments, then one with the arguments), as OpenAI streams them.
nlohmann::ordered_json tool_calls_json(const std::vector<ToolCall>& calls);
std::vector<nlohmann::ordered_json> tool_call_deltas(const ToolCall& call, size_t index);

// A streamed choice's text, let through while it cannot be the start of a call; from the opening
// marker on it is held, and parsed at the end.
class ToolCallStream {
 public:
  explicit ToolCallStream(ToolFormat f) : format_(f) {}
  // Adds generated text; returns the content that may be shown now.
  std::string push(const std::string& delta);
  // At the end: the parse of all the text; `rest` gets the content still to show (the held text
  // when it held no call).
  ParsedOutput finish(std::string& rest);

 private:
  ToolFormat format_;
  std::string text_;
  size_t shown_ = 0;
  bool holding_ = false;  // a call has begun: nothing more is shown until the end
};

}  // namespace llmtune::serve
