// Tool calls in generated text → OpenAI's tool_calls (see tool_calls.h). The expected results follow
// what vLLM's hermes, llama3_json and mistral parsers return for the same text; arguments are
// re-serialised compactly (clients parse them as JSON).
#include "tool_calls.h"

#include <random>

namespace llmtune::serve {
namespace {

using json = nlohmann::ordered_json;

constexpr const char* kHermesOpen = "<tool_call>";
constexpr const char* kHermesClose = "</tool_call>";
constexpr const char* kPythonTag = "<|python_tag|>";
constexpr const char* kMistralMarker = "[TOOL_CALLS]";

std::string call_id() {
  static const char kChars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::uniform_int_distribution<size_t> pick(0, sizeof(kChars) - 2);
  std::string id = "call_";
  for (int i = 0; i < 24; ++i) id += kChars[pick(rng)];
  return id;
}

bool blank(const std::string& s) { return s.find_first_not_of(" \t\r\n") == std::string::npos; }

std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t\r\n");
  if (a == std::string::npos) return "";
  return s.substr(a, s.find_last_not_of(" \t\r\n") + 1 - a);
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }

// {"name": ..., "arguments" | "parameters": {...}} → a call; false when it is not one.
bool to_call(const json& obj, ToolCall& call) {
  if (!obj.is_object() || !obj.contains("name") || !obj["name"].is_string()) return false;
  const char* key = obj.contains("arguments") ? "arguments" : "parameters";
  call.name = obj["name"].get<std::string>();
  if (!obj.contains(key)) call.arguments = "{}";
  else if (obj[key].is_object()) call.arguments = obj[key].dump(-1, ' ', false, json::error_handler_t::replace);
  else if (obj[key].is_string()) call.arguments = obj[key].get<std::string>();
  else return false;
  call.id = call_id();
  return true;
}

bool parse_json(const std::string& text, json& out) {
  out = json::parse(text, nullptr, /*allow_exceptions=*/false);
  return !out.is_discarded();
}

// The end (one past) of the JSON object starting at text[from] == '{', or npos when it is not closed.
size_t object_end(const std::string& text, size_t from) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = from; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') in_string = true;
    else if (c == '{') ++depth;
    else if (c == '}' && --depth == 0) return i + 1;
  }
  return std::string::npos;
}

bool parse_hermes(const std::string& text, ParsedOutput& out) {
  size_t at = text.find(kHermesOpen);
  if (at == std::string::npos) return false;
  out.content = text.substr(0, at);
  while (at != std::string::npos) {
    const size_t body = at + std::string(kHermesOpen).size();
    const size_t close = text.find(kHermesClose, body);
    json obj;
    ToolCall call;
    const std::string inner = text.substr(body, close == std::string::npos ? std::string::npos : close - body);
    if (!parse_json(trim(inner), obj) || !to_call(obj, call)) return false;
    out.calls.push_back(std::move(call));
    at = close == std::string::npos ? close : text.find(kHermesOpen, close);
  }
  return true;
}

bool parse_llama(const std::string& text, ParsedOutput& out) {
  std::string s = trim(text);
  if (starts_with(s, kPythonTag)) s = trim(s.substr(std::string(kPythonTag).size()));
  if (!starts_with(s, "{")) return false;
  size_t at = 0;
  while (at < s.size()) {
    const size_t end = object_end(s, at);
    json obj;
    ToolCall call;
    if (end == std::string::npos || !parse_json(s.substr(at, end - at), obj) || !to_call(obj, call)) return false;
    out.calls.push_back(std::move(call));
    at = s.find_first_not_of(" \t\r\n", end);
    if (at == std::string::npos) break;
    if (s[at] != ';') return false;
    at = s.find_first_not_of(" \t\r\n", at + 1);
    if (at == std::string::npos) break;
    if (s[at] != '{') return false;
  }
  out.content.clear();
  return true;
}

// The marker is a special token that decoding drops: a JSON array opening the text is a call list too.
bool parse_mistral(const std::string& text, ParsedOutput& out) {
  std::string calls;
  const size_t at = text.find(kMistralMarker);
  if (at != std::string::npos) {
    out.content = text.substr(0, at);
    calls = text.substr(at);
    for (size_t m; (m = calls.find(kMistralMarker)) != std::string::npos;)
      calls.erase(m, std::string(kMistralMarker).size());
  } else if (starts_with(trim(text), "[")) {
    out.content.clear();
    calls = text;
  } else {
    return false;
  }
  json list;
  if (!parse_json(trim(calls), list)) return false;
  if (list.is_object()) list = json::array({list});
  if (!list.is_array() || list.empty()) return false;
  for (const auto& obj : list) {
    ToolCall call;
    if (!to_call(obj, call)) return false;
    out.calls.push_back(std::move(call));
  }
  return true;
}

// How much of `text` may be shown now: all of it, or up to where a call begins or may begin; `begun`
// tells whether a call has surely begun (nothing is shown after it).
size_t showable(ToolFormat f, const std::string& text, bool& begun) {
  begun = false;
  auto marker_anywhere = [&](const std::string& marker) {
    if (const size_t at = text.find(marker); at != std::string::npos) {
      begun = true;
      return at;
    }
    for (size_t k = std::min(marker.size() - 1, text.size()); k > 0; --k)  // a marker's first bytes at the end
      if (text.compare(text.size() - k, k, marker, 0, k) == 0) return text.size() - k;
    return text.size();
  };
  const size_t first = text.find_first_not_of(" \t\r\n");
  const std::string lead = first == std::string::npos ? "" : text.substr(first);
  switch (f) {
    case ToolFormat::None:
      return text.size();
    case ToolFormat::Hermes:
      return marker_anywhere(kHermesOpen);
    case ToolFormat::Mistral:
      if (lead.empty()) return 0;
      if (starts_with(lead, "[")) {
        begun = true;
        return 0;
      }
      return marker_anywhere(kMistralMarker);
    case ToolFormat::Llama3Json:
      if (lead.empty()) return 0;
      if (starts_with(lead, "{") || starts_with(lead, kPythonTag)) {
        begun = true;
        return 0;
      }
      if (std::string(kPythonTag).compare(0, lead.size(), lead) == 0) return 0;
      return text.size();
  }
  return text.size();
}

}  // namespace

ToolFormat detect_tool_format(const std::string& t) {
  if (t.find(kHermesOpen) != std::string::npos) return ToolFormat::Hermes;
  if (t.find(kMistralMarker) != std::string::npos) return ToolFormat::Mistral;
  if (t.find("<|start_header_id|>") != std::string::npos && t.find("\"parameters\"") != std::string::npos)
    return ToolFormat::Llama3Json;
  return ToolFormat::None;
}

const char* tool_format_name(ToolFormat f) {
  switch (f) {
    case ToolFormat::Hermes: return "hermes";
    case ToolFormat::Llama3Json: return "llama3_json";
    case ToolFormat::Mistral: return "mistral";
    case ToolFormat::None: break;
  }
  return "none";
}

ParsedOutput parse_tool_calls(ToolFormat f, const std::string& text) {
  ParsedOutput out;
  bool ok = false;
  if (f == ToolFormat::Hermes) ok = parse_hermes(text, out);
  else if (f == ToolFormat::Llama3Json) ok = parse_llama(text, out);
  else if (f == ToolFormat::Mistral) ok = parse_mistral(text, out);
  if (!ok || out.calls.empty()) {
    out = ParsedOutput{};
    out.content = text;
    return out;
  }
  out.has_content = !blank(out.content);
  if (!out.has_content) out.content.clear();
  return out;
}

json tool_calls_json(const std::vector<ToolCall>& calls) {
  json out = json::array();
  for (const auto& c : calls)
    out.push_back({{"id", c.id}, {"type", "function"}, {"function", {{"name", c.name}, {"arguments", c.arguments}}}});
  return out;
}

std::vector<json> tool_call_deltas(const ToolCall& call, size_t index) {
  return {{{"index", index}, {"id", call.id}, {"type", "function"}, {"function", {{"name", call.name}, {"arguments", ""}}}},
          {{"index", index}, {"function", {{"arguments", call.arguments}}}}};
}

std::string ToolCallStream::push(const std::string& delta) {
  text_ += delta;
  if (holding_) return "";
  const size_t limit = showable(format_, text_, holding_);
  if (limit <= shown_) return "";
  std::string out = text_.substr(shown_, limit - shown_);
  shown_ = limit;
  return out;
}

ParsedOutput ToolCallStream::finish(std::string& rest) {
  ParsedOutput parsed = parse_tool_calls(format_, text_);
  if (parsed.calls.empty()) rest = text_.substr(shown_);
  else rest = parsed.has_content && parsed.content.size() > shown_ ? parsed.content.substr(shown_) : "";
  return parsed;
}

}  // namespace llmtune::serve
