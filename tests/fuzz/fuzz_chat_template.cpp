// Fuzz target: the Jinja chat-template engine (src/tokenizer/jinja/): lexing, parsing, and
// rendering under its step/size/depth budgets, as finetune, infer and tokenize render a model's
// template. The input is the template source, optionally followed by a NUL byte and a JSON array
// of messages (else a fixed conversation with a system prompt, a tool call and a tool result).
#include <nlohmann/json.hpp>

#include "fuzz_util.h"
#include "llmtune/io/read_file.h"
#include "llmtune/tokenizer/chat_template.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  llmtune::fuzz::init();
  return 0;
}

namespace {

using ojson = nlohmann::ordered_json;

const ojson& default_messages() {
  static const ojson m = ojson::parse(R"([
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "What is 2+2? Use the tool."},
    {"role": "assistant", "content": "", "tool_calls": [
      {"type": "function", "id": "call_1", "function": {"name": "add", "arguments": {"a": 2, "b": 2}}}]},
    {"role": "tool", "content": "4", "tool_call_id": "call_1"},
    {"role": "assistant", "content": "It is 4."},
    {"role": "user", "content": "Thanks!"}
  ])");
  return m;
}

const ojson& default_tools() {
  static const ojson t = ojson::parse(R"([{"type": "function", "function": {"name": "add",
    "description": "Adds two numbers", "parameters": {"type": "object",
    "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}}}])");
  return t;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace llmtune;
  const auto parts = fuzz::split_at_nul({reinterpret_cast<const char*>(data), size}, 2);
  const std::string source(parts[0]);
  ojson messages = default_messages();
  if (parts.size() > 1) {
    try {
      messages = io::parse_json_bounded(parts[1]);
    } catch (const std::exception&) {
      // Not JSON (or too deep): render with the default conversation.
    }
  }
  fuzz::guarded([&] {
    // Budgets 1/500 of the defaults: the same checks, but a runaway template stops in a few ms
    // instead of seconds, so the fuzzer spends its time on new inputs. Every shipped template
    // renders its test conversations (tools included) within 1/1000 of the defaults, so the seeds
    // still render in full (checked by hand; ChatTemplateModels.ShippedTemplatesNeedAHundredthOfTheBudget
    // asserts 1/100).
    tokenizer::ChatTemplate tpl(source, {.max_steps = 4'000, .max_bytes = size_t{128} << 10});
    (void)tpl.has_generation_blocks();
    const ojson extra = {{"tools", default_tools()}, {"date_string", "26 Jul 2024"}};
    // One render per input (the input's parity picks add_generation_prompt).
    const bool gen = size % 2 == 1;
    auto out = tpl.render_with_spans(tokenizer::chat_template_context(messages, gen, "<s>", "</s>", extra));
    for (const auto& [begin, end] : out.generation_spans)
      if (begin > end || end > out.text.size()) std::abort();  // spans must lie inside the text
  });
  return 0;
}
