// Row formats to conversations, conversations through the chat template, and labels from the
// rendered byte spans of the assistant messages (prefix renders, or {% generation %} spans).
#include "render.h"

#include <fstream>
#include <sstream>

#include "llmtune/io/read_file.h"
#include "llmtune/util/error.h"
#include "llmtune/util/log.h"

namespace llmtune::data {
namespace {

using ojson = nlohmann::ordered_json;

const std::vector<std::string> kFormats = {"alpaca", "messages", "tools", "completion", "text"};

std::string keys_of(const ojson& row) {
  std::string s;
  for (auto it = row.begin(); it != row.end(); ++it) s += (s.empty() ? "" : ", ") + it.key();
  return s.empty() ? "none" : s;
}

const std::string& string_field(const ojson& row, const char* key, const std::string& source, const char* format) {
  if (!row.contains(key) || !row[key].is_string())
    throw DataError(source + ": the " + format + " row needs a string field \"" + key + "\"" +
                    (row.contains(key) ? std::string(" (it is a ") + row[key].type_name() + ")" : " (keys: " + keys_of(row) + ")"));
  return row[key].get_ref<const std::string&>();
}

std::string optional_string(const ojson& row, const char* key, const std::string& source) {
  if (!row.contains(key) || row[key].is_null()) return "";
  if (!row[key].is_string()) throw DataError(source + ": field \"" + key + "\" must be a string, got a " + row[key].type_name());
  return row[key].get<std::string>();
}

// OpenAI-style messages, or ShareGPT "conversations" (from/value), as chat-template messages.
ojson conversation(const ojson& row, const std::string& source) {
  ojson out = ojson::array();
  if (row.contains("messages")) {
    const ojson& msgs = row["messages"];
    if (!msgs.is_array() || msgs.empty())
      throw DataError(source + ": \"messages\" must be a non-empty array of {role, content} objects");
    for (size_t i = 0; i < msgs.size(); ++i) {
      const ojson& m = msgs[i];
      std::string where = source + ": messages[" + std::to_string(i) + "]";
      if (!m.is_object()) throw DataError(where + " must be an object with \"role\" and \"content\"");
      if (!m.contains("role") || !m["role"].is_string()) throw DataError(where + " needs a string field \"role\"");
      bool has_calls = m.contains("tool_calls") && m["tool_calls"].is_array() && !m["tool_calls"].empty();
      if (!m.contains("content") && !has_calls) throw DataError(where + " needs a field \"content\"");
      if (m.contains("content") && !m["content"].is_string() && !(m["content"].is_null() && has_calls))
        throw DataError(where + ": \"content\" must be a string (lists of content parts are not supported), got a " +
                        std::string(m["content"].type_name()));
      out.push_back(m);
    }
    return out;
  }
  if (!row.contains("conversations") || !row["conversations"].is_array() || row["conversations"].empty())
    throw DataError(source + ": the row needs \"messages\" (role/content) or \"conversations\" (from/value), a non-empty array (keys: " +
                    keys_of(row) + ")");
  const ojson& conv = row["conversations"];
  for (size_t i = 0; i < conv.size(); ++i) {
    const ojson& m = conv[i];
    std::string where = source + ": conversations[" + std::to_string(i) + "]";
    if (!m.is_object() || !m.contains("from") || !m["from"].is_string())
      throw DataError(where + " needs a string field \"from\" (human, gpt or system)");
    if (!m.contains("value") || !m["value"].is_string()) throw DataError(where + " needs a string field \"value\"");
    std::string from = m["from"];
    std::string role = from == "human" || from == "user"        ? "user"
                       : from == "gpt" || from == "assistant"    ? "assistant"
                       : from == "system"                        ? "system"
                       : from == "tool" || from == "observation" ? "tool"
                                                                 : "";
    if (role.empty())
      throw DataError(where + ": unknown \"from\" value \"" + from + "\" (use human, gpt, system or tool)");
    ojson msg = ojson::object();
    msg["role"] = role;
    msg["content"] = m["value"];
    out.push_back(std::move(msg));
  }
  return out;
}

// Trailing whitespace after the end of a turn is not trained.
size_t trim_end(const std::string& text, size_t begin, size_t end) {
  while (end > begin && (text[end - 1] == ' ' || text[end - 1] == '\n' || text[end - 1] == '\t' || text[end - 1] == '\r'))
    --end;
  return end;
}

std::string read_text_file(const std::string& path) { return io::read_text_file<DataError>(path, "the chat template file"); }

}  // namespace

void check_format_name(const std::string& format) {
  if (format == "auto") return;
  for (const auto& f : kFormats)
    if (f == format) return;
  throw DataError("unknown data format \"" + format + "\": use auto, alpaca, messages, tools, completion or text");
}

std::string detect_format(const ojson& row, const std::string& source) {
  if (row.contains("messages") || row.contains("conversations")) return row.contains("tools") ? "tools" : "messages";
  if (row.contains("instruction") && row.contains("output")) return "alpaca";
  if (row.contains("prompt") && row.contains("completion")) return "completion";
  if (row.contains("text")) return "text";
  throw DataError(source + ": cannot tell the data format from the row's keys (" + keys_of(row) +
                  "); expected messages/conversations (+tools), instruction/input/output, prompt/completion or text, "
                  "or name the format explicitly");
}

RowRenderer::RowRenderer(const DataParams& params, const tokenizer::Tokenizer& tok) : params_(params), tok_(tok) {
  if (params.train_on != "assistant" && params.train_on != "all")
    throw DataError("unknown train_on \"" + params.train_on + "\": use assistant or all");
  check_format_name(params.format);
}

const tokenizer::ChatTemplate& RowRenderer::chat_template() {
  if (template_) return *template_;
  const std::string& name = params_.chat_template;
  std::string source;
  if (name == "auto") {
    if (tok_.chat_template.empty())
      throw DataError("the tokenizer has no chat template: choose one with chat_template (--template): alpaca, chatml, "
                      "llama3, mistral, zephyr, or a path to a .jinja file");
    source = tok_.chat_template;
    template_name_ = "tokenizer";
  } else if (name.size() > 6 && name.compare(name.size() - 6, 6, ".jinja") == 0) {
    source = read_text_file(name);
    template_name_ = name;
  } else {
    source = named_template_source(name);
    template_name_ = name;
  }
  try {
    template_.emplace(source);
  } catch (const Error& e) {
    throw DataError("chat template " + template_name_ + " cannot be parsed: " + e.what());
  }
  return *template_;
}

RenderedRow RowRenderer::render(const ojson& row, const std::string& format, const std::string& source) {
  if (format == "text") {
    return render_plain("", string_field(row, "text", source, "text"), true, source);
  }
  if (format == "completion") {
    return render_plain(string_field(row, "prompt", source, "completion"),
                        string_field(row, "completion", source, "completion"), params_.train_on == "all", source);
  }
  if (format == "alpaca") {
    std::string instruction = string_field(row, "instruction", source, "alpaca");
    std::string output = string_field(row, "output", source, "alpaca");
    std::string input = optional_string(row, "input", source), system = optional_string(row, "system", source);
    ojson messages = ojson::array();
    if (!system.empty()) messages.push_back({{"role", "system"}, {"content", system}});
    ojson user = ojson::object();
    user["role"] = "user";
    chat_template();  // resolves template_name_
    if (template_name_ == "alpaca") {
      // The Alpaca prompt has its own "### Input:" section.
      user["content"] = instruction;
      if (!input.empty()) user["input"] = input;
    } else {
      user["content"] = input.empty() ? instruction : instruction + "\n\n" + input;
    }
    messages.push_back(std::move(user));
    messages.push_back({{"role", "assistant"}, {"content", output}});
    return render_chat(messages, ojson(), source);
  }
  if (format == "messages" || format == "tools") {
    ojson tools;
    if (format == "tools") {
      if (!row.contains("tools")) throw DataError(source + ": the tools row needs a field \"tools\" (the function definitions)");
      tools = row["tools"];
      if (tools.is_string()) {  // Glaive-style conversions store the definitions as a JSON string
        try {
          tools = io::parse_json_bounded(tools.get<std::string>());
        } catch (const io::JsonTooDeep& e) {
          throw DataError(source + ": \"tools\" is refused: " + e.what());
        } catch (const ojson::parse_error&) {
          throw DataError(source + ": \"tools\" is a string that is not valid JSON; give the function definitions as a JSON array");
        }
      }
      if (!tools.is_array()) throw DataError(source + ": \"tools\" must be an array of function definitions");
    }
    return render_chat(conversation(row, source), tools, source);
  }
  check_format_name(format);
  throw DataError("format \"" + format + "\" must be resolved before rendering (internal)");
}

RenderedRow RowRenderer::render_chat(const ojson& messages, const ojson& tools, const std::string& source) {
  const tokenizer::ChatTemplate& tpl = chat_template();
  ojson extra = ojson::object();
  if (!tools.is_null()) extra["tools"] = tools;
  auto render = [&](const ojson& msgs, bool gen) {
    try {
      return tpl.render_with_spans(tokenizer::chat_template_context(msgs, gen, tok_.bos_token, tok_.eos_token, extra));
    } catch (const TemplateError& e) {
      throw DataError(source + ": chat template " + template_name_ + ": " + e.what());
    }
  };
  RenderedRow out;
  tokenizer::RenderedChat full = render(messages, false);
  out.text = std::move(full.text);
  const std::string& text = out.text;
  if (params_.train_on == "all") {
    if (!text.empty()) out.trained_spans.emplace_back(0, text.size());
  } else {
    bool stable = true;
    std::vector<std::pair<size_t, size_t>> spans;
    for (size_t i = 0; i < messages.size() && stable; ++i) {
      if (messages[i]["role"] != "assistant") continue;
      ojson before(messages.begin(), messages.begin() + i), upto(messages.begin(), messages.begin() + i + 1);
      std::string prompt;
      try {
        prompt = render(before, true).text;
      } catch (const DataError&) {
        if (i != 0) throw;
        stable = false;  // a template that cannot render an empty conversation: use its generation spans
        break;
      }
      std::string done = render(upto, false).text;
      stable = done.size() >= prompt.size() && text.compare(0, done.size(), done) == 0 &&
               done.compare(0, prompt.size(), prompt) == 0;
      if (stable) {
        size_t end = trim_end(text, prompt.size(), done.size());
        if (end > prompt.size()) spans.emplace_back(prompt.size(), end);
      }
    }
    if (!stable) {
      if (!tpl.has_generation_blocks())
        throw DataError(source + ": chat template " + template_name_ +
                        " is not prefix-stable (rendering the messages before an assistant turn is not a prefix of the "
                        "whole conversation) and has no {% generation %} blocks, so the assistant spans cannot be "
                        "found: choose another template (--template) or train_on=all");
      spans.clear();
      for (auto [b, e] : full.generation_spans) {
        size_t end = trim_end(text, b, e);
        if (end > b) spans.emplace_back(b, end);
      }
    }
    out.trained_spans = std::move(spans);
  }
  tokenizer::Tokenizer::Encoding enc = tok_.encode_with_offsets(text, /*add_special_tokens=*/false);
  out.example.input_ids = std::move(enc.ids);
  out.example.labels.assign(out.example.input_ids.size(), kIgnoreIndex);
  size_t s = 0;
  int32_t last_trained = -1;
  for (size_t j = 0; j < out.example.input_ids.size(); ++j) {
    size_t at = enc.offsets[j].first;
    while (s < out.trained_spans.size() && out.trained_spans[s].second <= at) {
      if (last_trained >= 0 && params_.train_on != "all" && !tok_.is_special(last_trained) &&
          !(tok_.eos_id && last_trained == *tok_.eos_id))
        ++turns_without_stop_;
      last_trained = -1;
      ++s;
    }
    if (s < out.trained_spans.size() && at >= out.trained_spans[s].first) {
      out.example.labels[j] = out.example.input_ids[j];
      last_trained = out.example.input_ids[j];
    }
  }
  if (last_trained >= 0 && params_.train_on != "all" && !tok_.is_special(last_trained) &&
      !(tok_.eos_id && last_trained == *tok_.eos_id))
    ++turns_without_stop_;
  if (turns_without_stop_ > 0 && log::first_time("data.turn-without-stop-token"))
    spdlog::warn("data: chat template {}: an assistant turn ({}) does not end with a special end-of-turn/EOS token, "
                 "so the model will not learn to stop there; consider another template (--template)",
                 template_name_, source);
  return out;
}

RenderedRow RowRenderer::render_plain(const std::string& prompt, const std::string& completion, bool train_prompt,
                                      const std::string& source) {
  if (!tok_.eos_id) throw DataError(source + ": the tokenizer has no eos_token, which completion and text rows end with");
  RenderedRow out;
  out.text = prompt + completion;
  out.trained_spans.emplace_back(train_prompt ? 0 : prompt.size(), out.text.size());
  if (out.trained_spans.back().first == out.trained_spans.back().second) out.trained_spans.clear();
  tokenizer::Tokenizer::Encoding enc = tok_.encode_with_offsets(out.text, /*add_special_tokens=*/true);
  Example& ex = out.example;
  ex.input_ids = enc.ids;
  ex.labels.assign(ex.input_ids.size(), kIgnoreIndex);
  if (train_prompt) {  // text rows: every token (the BOS too; it is never a target after the shift)
    ex.labels = ex.input_ids;
  } else {
    for (size_t j = 0; j < ex.input_ids.size(); ++j) {
      auto [b, e] = enc.offsets[j];
      // BOS/EOS from the post-processor have empty ranges: a BOS untrained, a trailing EOS trained.
      bool trained = b == e ? b == out.text.size() && b > 0 : b >= prompt.size();
      if (trained) ex.labels[j] = ex.input_ids[j];
    }
  }
  if (ex.input_ids.empty() || ex.input_ids.back() != *tok_.eos_id) {
    ex.input_ids.push_back(*tok_.eos_id);
    ex.labels.push_back(*tok_.eos_id);
  }
  return out;
}

RenderedRow render_row(const ojson& row, const DataParams& params, const tokenizer::Tokenizer& tok,
                       const std::string& source) {
  RowRenderer r(params, tok);
  std::string format = params.format == "auto" ? detect_format(row, source) : params.format;
  return r.render(row, format, source);
}

}  // namespace llmtune::data
