// Chat templates: the Jinja subset that the chat templates of Llama 3/3.1/3.2, Qwen2/2.5, Mistral,
// TinyLlama/Zephyr and Gemma use (FORMATS.md §3.4), rendered as transformers'
// apply_chat_template renders them (trim_blocks, lstrip_blocks, loopcontrols, raise_exception,
// strftime_now, HF's tojson). A construct outside the subset is a TemplateError naming it and
// its line, at parse time where possible: never a silent misrender.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

namespace llmtune::tokenizer {

class ChatTemplate {
 public:
  // Parses `source`; throws TemplateError for syntax errors and unsupported constructs.
  explicit ChatTemplate(const std::string& source);
  ~ChatTemplate();
  ChatTemplate(ChatTemplate&&) noexcept;
  ChatTemplate& operator=(ChatTemplate&&) noexcept;

  // Renders with `context` as the template's variables: messages, add_generation_prompt,
  // bos_token, eos_token, tools, ... (as apply_chat_template passes them).
  std::string render(const nlohmann::json& context) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Convenience: the context apply_chat_template builds (messages, add_generation_prompt, the
// special tokens), rendered with `source`.
std::string apply_chat_template(const std::string& source, const nlohmann::json& messages,
                                bool add_generation_prompt, const std::string& bos_token,
                                const std::string& eos_token,
                                const nlohmann::json& extra = nlohmann::json::object());

}  // namespace llmtune::tokenizer
