// Request checking and response shapes of the OpenAI API (see openai.h). Field rules follow
// OpenAI's API reference; fields the server cannot honour are refused by name, never ignored.
#include "openai.h"

#include <spdlog/spdlog.h>

#include <atomic>
#include <cmath>

#include "llmtune/io/read_file.h"
#include "llmtune/tokenizer/chat_template.h"
#include "llmtune/util/error.h"

namespace llmtune::serve {
namespace {

ApiError bad(const std::string& param, const std::string& message) { return ApiError(400, message, param); }

std::string type_name_of(const json& v) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number_integer() || v.is_number_unsigned()) return "an integer";
  if (v.is_number()) return "a number";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "an array";
  return "an object";
}

// The field when present and not null, with its type checked.
const json* field(const json& body, const char* key) {
  auto it = body.find(key);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

double number(const json& body, const char* key, double fallback, double lo, double hi, bool lo_exclusive = false) {
  const json* v = field(body, key);
  if (!v) return fallback;
  if (!v->is_number()) throw bad(key, std::string("'") + key + "' must be a number, not " + type_name_of(*v));
  const double x = v->get<double>();
  if (!std::isfinite(x) || x < lo || x > hi || (lo_exclusive && x == lo))
    throw bad(key, std::string("'") + key + "' is " + v->dump() + "; it must be " + (lo_exclusive ? "> " : "≥ ") +
                       dump(lo) + " and ≤ " + dump(hi));
  return x;
}

int64_t integer(const json& body, const char* key, int64_t fallback, int64_t lo, int64_t hi) {
  const json* v = field(body, key);
  if (!v) return fallback;
  if (!v->is_number_integer() && !v->is_number_unsigned())
    throw bad(key, std::string("'") + key + "' must be an integer, not " + type_name_of(*v));
  if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
    throw bad(key, std::string("'") + key + "' is too large");
  const int64_t x = v->get<int64_t>();
  if (x < lo || x > hi)
    throw bad(key, std::string("'") + key + "' is " + std::to_string(x) + "; it must be from " + std::to_string(lo) +
                       " to " + std::to_string(hi));
  return x;
}

bool boolean(const json& body, const char* key, bool fallback) {
  const json* v = field(body, key);
  if (!v) return fallback;
  if (!v->is_boolean()) throw bad(key, std::string("'") + key + "' must be a boolean, not " + type_name_of(*v));
  return v->get<bool>();
}

// Fields of OpenAI's API this server does not implement: refused when set to anything but their
// neutral value, so that a client never gets silently different behaviour.
void refuse_unsupported(const json& body) {
  auto refuse = [](const char* key, const std::string& why) {
    throw bad(key, std::string("'") + key + "' is not supported by llmtune serve (" + why + ")");
  };
  if (const json* v = field(body, "logit_bias"); v && !(v->is_object() && v->empty())) refuse("logit_bias", "no logit bias");
  if (const json* v = field(body, "best_of"); v && !(v->is_number_integer() && v->get<int64_t>() == 1))
    refuse("best_of", "one sequence per choice");
  if (const json* v = field(body, "echo"); v && !(v->is_boolean() && !v->get<bool>())) refuse("echo", "the prompt is not echoed");
  if (const json* v = field(body, "suffix"); v && !(v->is_string() && v->get<std::string>().empty()))
    refuse("suffix", "no fill-in-the-middle");
  if (const json* v = field(body, "response_format"); v && !(v->is_object() && v->value("type", "") == "text"))
    refuse("response_format", "no constrained decoding; only {\"type\": \"text\"}");
  if (const json* v = field(body, "tool_choice");
      v && !(v->is_string() && (v->get<std::string>() == "auto" || v->get<std::string>() == "none")))
    refuse("tool_choice", "the model chooses: only \"auto\" or \"none\"");
}

// A message's text: a string, or an array of {"type": "text", "text": ...} parts joined.
std::string content_text(const json& content, const std::string& where) {
  if (content.is_string()) return content.get<std::string>();
  if (content.is_null()) return "";
  if (!content.is_array()) throw bad(where, "'" + where + "' must be a string or an array of text parts");
  std::string text;
  for (const auto& part : content) {
    if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string())
      throw bad(where, "'" + where + "' holds a part that is not {\"type\": \"text\", \"text\": ...}: only text is supported");
    text += part["text"].get<std::string>();
  }
  return text;
}

std::vector<int64_t> chat_prompt(const json& body, const ServedModel& model, const Engine& engine) {
  const json* messages = field(body, "messages");
  if (!messages) throw bad("messages", "'messages' is required");
  if (!messages->is_array() || messages->empty()) throw bad("messages", "'messages' must be a non-empty array of messages");
  json msgs = json::array();
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& m = (*messages)[i];
    const std::string where = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) throw bad(where, "'" + where + "' must be an object with 'role' and 'content'");
    const json* role = field(m, "role");
    if (!role || !role->is_string()) throw bad(where + ".role", "'" + where + ".role' must be a string");
    const std::string r = role->get<std::string>();
    if (r != "system" && r != "user" && r != "assistant" && r != "tool")
      throw bad(where + ".role", "'" + where + ".role' is '" + r + "'; it must be system, user, assistant or tool");
    json out = m;  // tool_calls, tool_call_id, name pass through to the template
    out["content"] = content_text(m.contains("content") ? m["content"] : json(), where + ".content");
    msgs.push_back(std::move(out));
  }
  if (model.chat_template.empty())
    throw bad("messages", "the model '" + model.name + "' has no chat template: use /v1/completions, or start the "
                          "server with --chat-template");
  json extra = json::object();
  if (const json* tools = field(body, "tools")) {
    if (!tools->is_array()) throw bad("tools", "'tools' must be an array");
    extra["tools"] = *tools;
  }
  const auto& tok = engine.tokenizer();
  std::string rendered;
  try {
    rendered = tokenizer::apply_chat_template(model.chat_template, msgs, true, tok.bos_token, tok.eos_token, extra);
  } catch (const TemplateError& e) {
    throw bad("messages", std::string("the chat template refused the conversation: ") + e.what());
  }
  auto ids = tok.encode(rendered, /*add_special_tokens=*/false);  // the template wrote BOS itself
  return {ids.begin(), ids.end()};
}

std::vector<int64_t> text_prompt(const json& body, const Engine& engine) {
  const json* prompt = field(body, "prompt");
  if (!prompt) throw bad("prompt", "'prompt' is required");
  const auto vocab = engine.tokenizer().vocab_size();
  auto from_ids = [&](const json& list) {
    std::vector<int64_t> ids;
    for (const auto& v : list) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= vocab)
        throw bad("prompt", "'prompt' token ids must be integers from 0 to " + std::to_string(vocab - 1));
      ids.push_back(v.get<int64_t>());
    }
    return ids;
  };
  const json* p = prompt;
  if (p->is_array() && p->size() == 1 && ((*p)[0].is_string() || (*p)[0].is_array())) p = &(*p)[0];
  if (p->is_array() && !p->empty() && (*p)[0].is_number()) return from_ids(*p);
  if (!p->is_string())
    throw bad("prompt", "'prompt' must be a string or an array of token ids (one prompt per request: several are "
                        "not supported yet)");
  auto ids = engine.tokenizer().encode(p->get<std::string>(), /*add_special_tokens=*/true);
  return {ids.begin(), ids.end()};
}

std::vector<std::string> stop_strings(const json& body) {
  const json* v = field(body, "stop");
  if (!v) return {};
  std::vector<std::string> out;
  if (v->is_string()) out.push_back(v->get<std::string>());
  else if (v->is_array()) {
    for (const auto& s : *v) {
      if (!s.is_string()) throw bad("stop", "'stop' must be a string or an array of strings");
      out.push_back(s.get<std::string>());
    }
  } else throw bad("stop", "'stop' must be a string or an array of strings, not " + type_name_of(*v));
  if (out.size() > 16) throw bad("stop", "'stop' holds " + std::to_string(out.size()) + " strings; at most 16");
  for (const auto& s : out)
    if (s.empty()) throw bad("stop", "'stop' holds an empty string, which would stop before the first token");
  return out;
}

// The body as a JSON object; 400 for anything else (nesting bounded as for every JSON we read).
json parse_body(const std::string& text) {
  json body;
  try {
    body = io::parse_json_bounded<json>(text);
  } catch (const io::JsonTooDeep& e) {
    throw ApiError(400, std::string("the request body is not accepted: ") + e.what());
  } catch (const json::exception& e) {
    throw ApiError(400, "the request body is not valid JSON: " + io::json_error_text(e));
  }
  if (!body.is_object()) throw ApiError(400, "the request body must be a JSON object");
  return body;
}

}  // namespace

json error_body(int status, const std::string& message, const std::string& param, const std::string& code) {
  std::string type = status == 401 ? "authentication_error"
                     : status == 404 ? "not_found_error"
                     : status == 429 ? "rate_limit_error"
                     : status >= 500 ? "server_error"
                                     : "invalid_request_error";
  return {{"error", {{"message", message}, {"type", type}, {"param", param.empty() ? json() : json(param)},
                     {"code", code.empty() ? json() : json(code)}}}};
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

CompletionRequest parse_completion_request(const std::string& text, bool chat, const Engine& engine,
                                           const std::function<uint64_t()>& seeds) {
  const json body = parse_body(text);
  CompletionRequest r;
  r.chat = chat;
  r.tokenizer = &engine.tokenizer();
  const json* model = field(body, "model");
  if (!model || !model->is_string()) throw bad("model", "'model' is required: a string naming a served model (GET /v1/models)");
  r.model = engine.find(model->get<std::string>());
  if (!r.model)
    throw ApiError(404, "the model '" + model->get<std::string>() + "' does not exist (GET /v1/models lists those served)",
                   "model", "model_not_found");
  refuse_unsupported(body);
  const int64_t n = integer(body, "n", 1, INT64_MIN, INT64_MAX);
  if (n < 1 || n > engine.max_queue())
    throw bad("n", "'n' is " + std::to_string(n) + "; it must be from 1 to " + std::to_string(engine.max_queue()) +
                       " (the server's max_queue)");
  r.stream = boolean(body, "stream", false);
  if (const json* so = field(body, "stream_options")) {
    if (!r.stream) throw bad("stream_options", "'stream_options' is only allowed with \"stream\": true");
    if (!so->is_object()) throw bad("stream_options", "'stream_options' must be an object");
    r.include_usage = boolean(*so, "include_usage", false);
  }

  auto first = std::make_shared<GenerationJob>();
  GenerationJob& job = *first;
  job.model_name = r.model->name;
  job.prompt = chat ? chat_prompt(body, *r.model, engine) : text_prompt(body, engine);
  if (job.prompt.empty())
    throw bad(chat ? "messages" : "prompt", "the prompt is empty and the tokenizer adds no BOS token: nothing to generate from");
  const int64_t context = engine.context_length();
  const auto n_prompt = static_cast<int64_t>(job.prompt.size());
  if (n_prompt >= context)
    throw ApiError(400, "the prompt is " + std::to_string(n_prompt) + " tokens; the model's context is " +
                            std::to_string(context) + ": shorten it", chat ? "messages" : "prompt", "context_length_exceeded");
  const int64_t limit = engine.max_tokens_limit();
  const char* max_key = field(body, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  const bool given = field(body, max_key) != nullptr;
  int64_t max_tokens = integer(body, max_key, chat ? std::min(limit, context - n_prompt) : std::min<int64_t>(16, limit), 1, limit);
  if (given && n_prompt + max_tokens > context)
    throw ApiError(400, "the prompt (" + std::to_string(n_prompt) + " tokens) plus " + max_key + " (" +
                            std::to_string(max_tokens) + ") exceeds the model's context (" + std::to_string(context) + ")",
                   max_key, "context_length_exceeded");
  max_tokens = std::min(max_tokens, context - n_prompt);

  model::SamplingParams& s = job.sampling;
  s.max_new_tokens = max_tokens;
  s.temperature = number(body, "temperature", 1.0, 0, 2);
  s.top_p = number(body, "top_p", 1.0, 0, 1, /*lo_exclusive=*/true);
  const int64_t top_k = integer(body, "top_k", 0, -1, INT64_MAX);
  s.top_k = top_k < 0 ? 0 : top_k;  // -1: off, as vLLM
  s.min_p = number(body, "min_p", 0.0, 0, 1);
  s.repetition_penalty = number(body, "repetition_penalty", 1.0, 0, 1e6, /*lo_exclusive=*/true);
  const bool seeded = field(body, "seed") != nullptr;
  s.seed = seeded ? static_cast<uint64_t>(integer(body, "seed", 0, INT64_MIN, INT64_MAX)) : seeds();
  s.stop_ids = engine.stop_ids();
  if (const json* ids = field(body, "stop_token_ids")) {
    if (!ids->is_array()) throw bad("stop_token_ids", "'stop_token_ids' must be an array of token ids");
    for (const auto& v : *ids) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= engine.tokenizer().vocab_size())
        throw bad("stop_token_ids", "'stop_token_ids' must hold token ids from 0 to " +
                                        std::to_string(engine.tokenizer().vocab_size() - 1));
      s.stop_ids.push_back(v.get<int64_t>());
    }
  }
  if (const json* ignore = field(body, "ignore_eos"); ignore && boolean(body, "ignore_eos", false))
    s.stop_ids.clear();
  job.stop = stop_strings(body);
  job.presence_penalty = number(body, "presence_penalty", 0, -2, 2);
  job.frequency_penalty = number(body, "frequency_penalty", 0, -2, 2);
  if (chat) {  // logprobs: a boolean; top_logprobs: how many alternatives
    const bool wanted = boolean(body, "logprobs", false);
    if (field(body, "top_logprobs") && !wanted) throw bad("top_logprobs", "'top_logprobs' needs \"logprobs\": true");
    if (wanted) job.logprobs = integer(body, "top_logprobs", 0, 0, 20);
  } else if (field(body, "logprobs")) {  // logprobs: how many alternatives
    job.logprobs = integer(body, "logprobs", 0, 0, 20);
  }
  const json* choice = field(body, "tool_choice");  // checked above: absent, "auto" or "none"
  if (chat && field(body, "tools") && !(choice && *choice == "none")) {
    r.tool_format = detect_tool_format(r.model->chat_template);
    static std::atomic<bool> warned{false};
    if (r.tool_format == ToolFormat::None && !warned.exchange(true))
      spdlog::warn("serve: a request gives tools, but the chat template of '{}' writes calls in none of the formats "
                   "parsed (hermes, llama3_json, mistral): replies come back as content, calls unparsed",
                   r.model->name);
  }
  // Choice i samples with seed + i (reproducible with a seed), or its own drawn seed.
  r.jobs.push_back(first);
  for (int64_t i = 1; i < n; ++i) {
    auto other = std::make_shared<GenerationJob>();
    other->model_name = job.model_name;
    other->prompt = job.prompt;
    other->sampling = job.sampling;
    other->sampling.seed = seeded ? job.sampling.seed + static_cast<uint64_t>(i) : seeds();
    other->stop = job.stop;
    other->presence_penalty = job.presence_penalty;
    other->frequency_penalty = job.frequency_penalty;
    other->logprobs = job.logprobs;
    r.jobs.push_back(std::move(other));
  }
  return r;
}

namespace {

// The prompt counts once, as OpenAI counts it, however many choices were generated from it.
json usage(const CompletionRequest& r) {
  const auto p = static_cast<int64_t>(r.jobs.front()->prompt.size());
  int64_t generated = 0;
  for (const auto& job : r.jobs) generated += job->completion_tokens;
  return {{"prompt_tokens", p}, {"completion_tokens", generated}, {"total_tokens", p + generated}};
}

json head(const CompletionRequest& r, const std::string& id, int64_t created, bool chunk) {
  const char* object = r.chat ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion";
  return {{"id", id}, {"object", object}, {"created", created}, {"model", r.model->name}};
}

json finish(const std::string& reason) { return reason.empty() ? json() : json(reason); }

// A token's text (special tokens included) and its bytes, as OpenAI's logprobs give them.
std::string token_text(const tokenizer::Tokenizer& tok, int64_t id) {
  return tok.decode(std::vector<int32_t>{static_cast<int32_t>(id)}, /*skip_special_tokens=*/false);
}
json token_bytes(const std::string& s) {
  json out = json::array();
  for (unsigned char c : s) out.push_back(c);
  return out;
}

}  // namespace

// OpenAI's choice.logprobs: chat's {"content": [...]} or completions' tokens/token_logprobs/top_logprobs,
// for some of a choice's tokens (a stream chunk's) whose text starts at `text_offset`, which moves on.
json logprobs_json(bool chat, const std::vector<GenerationJob::TokenLogprob>& entries, const tokenizer::Tokenizer& tok,
                   int64_t& text_offset) {
  if (chat) {
    json content = json::array();
    for (const auto& t : entries) {
      const std::string text = token_text(tok, t.token);
      json top = json::array();
      for (const auto& [id, lp] : t.top) {
        const std::string alt = token_text(tok, id);
        top.push_back({{"token", alt}, {"logprob", lp}, {"bytes", token_bytes(alt)}});
      }
      content.push_back({{"token", text}, {"logprob", t.logprob}, {"bytes", token_bytes(text)}, {"top_logprobs", top}});
    }
    return {{"content", content}, {"refusal", nullptr}};
  }
  json tokens = json::array(), values = json::array(), top = json::array(), offsets = json::array();
  for (const auto& t : entries) {
    const std::string text = token_text(tok, t.token);
    tokens.push_back(text);
    values.push_back(t.logprob);
    json alts = json::object();
    for (const auto& [id, lp] : t.top) alts[token_text(tok, id)] = lp;
    top.push_back(alts);
    offsets.push_back(text_offset);
    text_offset += static_cast<int64_t>(text.size());
  }
  return {{"tokens", tokens}, {"token_logprobs", values}, {"top_logprobs", top}, {"text_offset", offsets}};
}

json completion_response(const CompletionRequest& r, const std::string& id, int64_t created) {
  json out = head(r, id, created, false);
  out["choices"] = json::array();
  for (size_t i = 0; i < r.jobs.size(); ++i) {
    const GenerationJob& job = *r.jobs[i];
    json choice = {{"index", i}};
    std::string reason = job.finish_reason;
    if (r.chat) {
      const ParsedOutput parsed = parse_tool_calls(r.tool_format, job.text);
      choice["message"] = {{"role", "assistant"}, {"content", parsed.has_content ? json(parsed.content) : json()}};
      if (!parsed.calls.empty()) {
        choice["message"]["tool_calls"] = tool_calls_json(parsed.calls);
        if (reason == "stop") reason = "tool_calls";
      }
    } else {
      choice["text"] = job.text;
    }
    int64_t offset = 0;
    choice["logprobs"] = job.logprobs < 0 ? json() : logprobs_json(r.chat, job.token_logprobs, *r.tokenizer, offset);
    choice["finish_reason"] = finish(reason);
    out["choices"].push_back(std::move(choice));
  }
  out["usage"] = usage(r);
  return out;
}

json stream_chunk(const CompletionRequest& r, const std::string& id, int64_t created, size_t index, const std::string& delta,
                  bool first, const std::string& finish_reason, json logprobs) {
  json out = head(r, id, created, true);
  json choice = {{"index", index}};
  if (r.chat) {
    json d = json::object();
    if (first) d["role"] = "assistant";
    if (!delta.empty() || (first && finish_reason.empty())) d["content"] = delta;
    choice["delta"] = d;
  } else choice["text"] = delta;
  choice["logprobs"] = std::move(logprobs);
  choice["finish_reason"] = finish(finish_reason);
  out["choices"] = json::array({choice});
  if (r.include_usage) out["usage"] = nullptr;
  return out;
}

json tool_call_chunk(const CompletionRequest& r, const std::string& id, int64_t created, size_t index, const json& call) {
  json out = head(r, id, created, true);
  out["choices"] = json::array({{{"index", index}, {"delta", {{"tool_calls", json::array({call})}}}, {"logprobs", nullptr},
                                 {"finish_reason", nullptr}}});
  if (r.include_usage) out["usage"] = nullptr;
  return out;
}

json usage_chunk(const CompletionRequest& r, const std::string& id, int64_t created) {
  json out = head(r, id, created, true);
  out["choices"] = json::array();
  out["usage"] = usage(r);
  return out;
}

json tokenize(const std::string& text, const Engine& engine) {
  const json body = parse_body(text);
  if (const json* model = field(body, "model"); model && (!model->is_string() || !engine.find(model->get<std::string>())))
    throw ApiError(404, "the model " + model->dump() + " does not exist (GET /v1/models lists those served)", "model",
                   "model_not_found");
  std::vector<int64_t> ids;
  if (field(body, "messages")) {
    const json* model = field(body, "model");
    ids = chat_prompt(body, model ? *engine.find(model->get<std::string>()) : engine.models().front(), engine);
  } else {
    const json* prompt = field(body, "prompt");
    if (!prompt || !prompt->is_string()) throw bad("prompt", "'prompt' (a string) or 'messages' is required");
    auto ids32 = engine.tokenizer().encode(prompt->get<std::string>(), boolean(body, "add_special_tokens", true));
    ids.assign(ids32.begin(), ids32.end());
  }
  return {{"count", ids.size()}, {"max_model_len", engine.context_length()}, {"tokens", ids}};
}

json detokenize(const std::string& text, const Engine& engine) {
  const json body = parse_body(text);
  if ( !field(body, "tokens") || !body["tokens"].is_array())
    throw bad("tokens", "'tokens' (an array of token ids) is required");
  std::vector<int32_t> ids;
  const int32_t vocab = engine.tokenizer().vocab_size();
  for (const auto& v : body["tokens"]) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= vocab)
      throw bad("tokens", "'tokens' must hold token ids from 0 to " + std::to_string(vocab - 1));
    ids.push_back(static_cast<int32_t>(v.get<int64_t>()));
  }
  return {{"prompt", engine.tokenizer().decode(ids, /*skip_special_tokens=*/false)}};
}

}  // namespace llmtune::serve
