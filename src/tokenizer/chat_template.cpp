// ChatTemplate: parse once (jinja/parser), render many times (jinja/eval) against a JSON context
// built like transformers' render_jinja_template builds it.
#include "llmtune/tokenizer/chat_template.h"

#include "jinja/eval.h"
#include "jinja/parser.h"
#include "llmtune/util/error.h"

namespace llmtune::tokenizer {

struct ChatTemplate::Impl {
  jinja::Body body;
  bool has_generation = false;
  TemplateLimits limits;
};

namespace {

bool contains_generation(const jinja::Body& body) {
  for (const auto& s : body) {
    if (s->kind == jinja::Stmt::Kind::Generation) return true;
    if (contains_generation(s->body) || contains_generation(s->else_body)) return true;
    for (const auto& [cond, b] : s->branches)
      if (contains_generation(b)) return true;
  }
  return false;
}

jinja::Value context_value(const nlohmann::ordered_json& context) {
  if (!context.is_object())
    throw TemplateError(std::string("chat template context must be a JSON object, got ") + context.type_name());
  try {
    return jinja::Value::from_json(context);
  } catch (const jinja::EvalError& e) {
    throw TemplateError(std::string("chat template context: ") + e.what());
  }
}

}  // namespace

ChatTemplate::ChatTemplate(const std::string& source, TemplateLimits limits) : impl_(std::make_unique<Impl>()) {
  if (limits.max_steps < 1 || limits.max_bytes < 1)
    throw TemplateError("chat template limits must be positive (max_steps " + std::to_string(limits.max_steps) +
                        ", max_bytes " + std::to_string(limits.max_bytes) + ")");
  impl_->limits = limits;
  impl_->body = jinja::parse(source);
  impl_->has_generation = contains_generation(impl_->body);
}

ChatTemplate::~ChatTemplate() = default;
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;

std::string ChatTemplate::render(const nlohmann::ordered_json& context) const {
  return jinja::render(impl_->body, context_value(context), impl_->limits).text;
}

RenderedChat ChatTemplate::render_with_spans(const nlohmann::ordered_json& context) const {
  jinja::RenderResult r = jinja::render(impl_->body, context_value(context), impl_->limits);
  return {std::move(r.text), std::move(r.generation_spans)};
}

bool ChatTemplate::has_generation_blocks() const { return impl_->has_generation; }

nlohmann::ordered_json chat_template_context(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                             const std::string& bos_token, const std::string& eos_token,
                                             const nlohmann::ordered_json& extra) {
  if (!messages.is_array()) throw TemplateError("chat template messages must be a JSON array of message objects");
  if (!extra.is_object()) throw TemplateError("chat template extra variables must be a JSON object");
  // transformers' _alias_reasoning_fields: {"thinking": r, **message, "reasoning_content": r}.
  static const char* const kReasoning[] = {"reasoning_content", "thinking", "reasoning"};
  nlohmann::ordered_json chat = nlohmann::ordered_json::array();
  for (const auto& m : messages) {
    if (!m.is_object()) throw TemplateError(std::string("chat messages must be objects, got ") + m.type_name());
    const nlohmann::ordered_json* reasoning = nullptr;
    for (const char* k : kReasoning)
      if (m.contains(k) && !m[k].is_null()) {
        reasoning = &m[k];
        break;
      }
    if (!reasoning) {
      chat.push_back(m);
      continue;
    }
    nlohmann::ordered_json aliased = nlohmann::ordered_json::object();
    aliased["thinking"] = *reasoning;
    for (auto it = m.begin(); it != m.end(); ++it) aliased[it.key()] = it.value();
    aliased["reasoning_content"] = *reasoning;
    chat.push_back(std::move(aliased));
  }
  nlohmann::ordered_json ctx = nlohmann::ordered_json::object();
  ctx["messages"] = std::move(chat);
  ctx["tools"] = extra.contains("tools") ? extra["tools"] : nlohmann::ordered_json();
  ctx["documents"] = extra.contains("documents") ? extra["documents"] : nlohmann::ordered_json();
  ctx["add_generation_prompt"] = add_generation_prompt;
  ctx["bos_token"] = bos_token;
  ctx["eos_token"] = eos_token;
  for (auto it = extra.begin(); it != extra.end(); ++it)
    if (it.key() != "tools" && it.key() != "documents") ctx[it.key()] = it.value();
  return ctx;
}

std::string apply_chat_template(const std::string& source, const nlohmann::ordered_json& messages,
                                bool add_generation_prompt, const std::string& bos_token,
                                const std::string& eos_token, const nlohmann::ordered_json& extra) {
  return ChatTemplate(source).render(
      chat_template_context(messages, add_generation_prompt, bos_token, eos_token, extra));
}

}  // namespace llmtune::tokenizer
