// Whole small files read with one-line errors that name the file: text (chat templates, tokenizer
// models) and JSON objects (config.json, adapter_config.json, tokenizer files, checkpoint state).
// Every such reader goes through these two functions.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <stdexcept>
#include <string_view>

#include "llmtune/util/error.h"

namespace llmtune::io {

// Hostile files: every JSON value llmtune reads is parsed with a nesting limit enforced while
// parsing, so a 100,000-deep array is refused before it is built (destroying or copying such a
// value recursively overflows the stack). The largest real files (tokenizer.json, chat-template
// tool schemas) nest fewer than 20 levels.
inline constexpr int kMaxJsonDepth = 512;

// Thrown by parse_json_bounded; callers turn it into their own error naming the file and line.
struct JsonTooDeep : std::runtime_error {
  JsonTooDeep() : std::runtime_error("JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels") {}
};

// Json::parse with the nesting limit. Throws Json's parse_error for malformed text, JsonTooDeep.
template <class Json = nlohmann::ordered_json>
Json parse_json_bounded(std::string_view text) {
  return Json::parse(text.begin(), text.end(), [](int depth, typename Json::parse_event_t event, Json&) {
    if ((event == Json::parse_event_t::object_start || event == Json::parse_event_t::array_start) && depth >= kMaxJsonDepth)
      throw JsonTooDeep();
    return true;
  });
}

namespace detail {
// The file's bytes; "" in *why_not when they were read, else the reason they could not be (no such
// file, a directory, over 2 GiB, an OS error).
std::string read_file_bytes(const std::filesystem::path& path, std::string* why_not);
}  // namespace detail

// The file's bytes. `what` names the file's role in the message ("chat template", "config.json"):
// "<path>: cannot read <what>: <reason>", thrown as Err.
template <class Err = IoError>
std::string read_text_file(const std::filesystem::path& path, std::string_view what) {
  std::string why_not;
  std::string text = detail::read_file_bytes(path, &why_not);
  if (!why_not.empty()) throw Err(path.string() + ": cannot read " + std::string(what) + ": " + why_not);
  return text;
}

// nlohmann's message without its "[json.exception.out_of_range.406] " prefix.
inline std::string json_error_text(const std::exception& e) {
  const std::string what = e.what();
  const size_t end = what.starts_with("[json.exception.") ? what.find("] ") : std::string::npos;
  return end == std::string::npos ? what : what.substr(end + 2);
}

// The JSON object in the file at `path`. A file that cannot be read (as read_text_file), is not
// JSON ("<path>: malformed JSON in <what> (<parser message>)") or is not an object throws Err.
// Json is nlohmann::ordered_json (keys keep their file order, for files written back) or
// nlohmann::json (faster lookups, for large files such as tokenizer.json).
template <class Err = IoError, class Json = nlohmann::ordered_json>
Json read_json_file(const std::filesystem::path& path, std::string_view what) {
  const std::string text = read_text_file<Err>(path, what);
  Json j;
  try {
    j = parse_json_bounded<Json>(text);
  } catch (const nlohmann::json::out_of_range& e) {
    throw Err(path.string() + ": a number in " + std::string(what) + " is out of range (" + json_error_text(e) + ")");
  } catch (const nlohmann::json::exception& e) {
    throw Err(path.string() + ": malformed JSON in " + std::string(what) + " (" + e.what() + ")");
  } catch (const JsonTooDeep& e) {
    throw Err(path.string() + ": refused " + std::string(what) + ": " + e.what());
  }
  if (!j.is_object()) throw Err(path.string() + ": " + std::string(what) + " must hold a JSON object at the top level");
  return j;
}

}  // namespace llmtune::io
