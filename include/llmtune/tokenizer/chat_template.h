// Chat templates: the Jinja subset that the chat templates of Llama 3/3.1/3.2, Qwen2/2.5, Mistral,
// TinyLlama/Zephyr and Gemma use (FORMATS.md §3.4), rendered as transformers'
// apply_chat_template renders them (trim_blocks, lstrip_blocks, loopcontrols, raise_exception,
// strftime_now, HF's tojson). A construct outside the subset is a TemplateError naming it and
// its line, at parse time where possible: never a silent misrender.
//
// Contexts are nlohmann::ordered_json so that tojson keeps the caller's key order, as HF does;
// a plain nlohmann::json converts implicitly but arrives with its keys sorted.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace llmtune::tokenizer {

struct RenderedChat {
  std::string text;
  // Byte ranges [begin, end) of `text` rendered inside {% generation %}...{% endgeneration %}
  // (HF's assistant-mask tag), in output order.
  std::vector<std::pair<size_t, size_t>> generation_spans;
};

// Budgets of one render. A template arrives with any downloaded model, so its loops, strings and
// output are bounded. The defaults are far above what real chat templates need: the shipped
// Llama 3.1, Qwen2.5, Mistral v0.3 and Gemma templates take a few thousand steps per
// conversation and a 1,000-turn conversation well under a million; a step costs up to ~1.5 us,
// so the default also bounds a render to a few seconds.
struct TemplateLimits {
  // Evaluation steps: each loop iteration, statement and expression.
  int64_t max_steps = 2'000'000;
  // Bytes in any one string the template builds, and in its output.
  size_t max_bytes = size_t{64} << 20;
};

class ChatTemplate {
 public:
  // Parses `source`; throws TemplateError for syntax errors and unsupported constructs. Renders
  // past `limits` throw TemplateError.
  explicit ChatTemplate(const std::string& source, TemplateLimits limits = {});
  ~ChatTemplate();
  ChatTemplate(ChatTemplate&&) noexcept;
  ChatTemplate& operator=(ChatTemplate&&) noexcept;

  // Renders with `context` (a JSON object) as the template's variables: messages,
  // add_generation_prompt, bos_token, eos_token, tools, ... (as apply_chat_template passes
  // them). Throws TemplateError on evaluation errors and on raise_exception(msg).
  std::string render(const nlohmann::ordered_json& context) const;
  // Same, plus the output ranges produced inside {% generation %} blocks.
  RenderedChat render_with_spans(const nlohmann::ordered_json& context) const;
  // Whether the template has a {% generation %} block.
  bool has_generation_blocks() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The context transformers' apply_chat_template builds: `messages` (with reasoning_content /
// thinking / reasoning aliased into each other, as transformers does), `tools` and `documents`
// (from `extra`, else null), `add_generation_prompt`, `bos_token`, `eos_token`, then every other
// key of `extra` (special tokens, date_string, custom kwargs).
nlohmann::ordered_json chat_template_context(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                             const std::string& bos_token, const std::string& eos_token,
                                             const nlohmann::ordered_json& extra = nlohmann::ordered_json::object());

// Convenience: chat_template_context(...) rendered with `source`.
std::string apply_chat_template(const std::string& source, const nlohmann::ordered_json& messages,
                                bool add_generation_prompt, const std::string& bos_token,
                                const std::string& eos_token,
                                const nlohmann::ordered_json& extra = nlohmann::ordered_json::object());

}  // namespace llmtune::tokenizer
