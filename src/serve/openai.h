// OpenAI's API shapes for `llmtune serve`: request bodies of /v1/completions and /v1/chat/completions
// checked and turned into a generation job, responses and stream chunks as OpenAI writes them, and
// errors in OpenAI's {"error": {message, type, param, code}} shape.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <functional>
#include <stdexcept>
#include <string>

#include "engine.h"
#include "tool_calls.h"

namespace llmtune::serve {

using json = nlohmann::ordered_json;

// A request the server refuses: the HTTP status and OpenAI's error fields.
struct ApiError : std::runtime_error {
  ApiError(int status, const std::string& message, std::string param = "", std::string code = "")
      : std::runtime_error(message), status(status), param(std::move(param)), code(std::move(code)) {}
  int status;
  std::string param, code;
};

// {"error": {...}}; type follows the status (invalid_request_error, authentication_error, ...).
json error_body(int status, const std::string& message, const std::string& param = "", const std::string& code = "");

// The JSON text of a value; bytes that are not UTF-8 (a completion cut inside a character) become U+FFFD.
std::string dump(const json& j);

// A parsed generation request.
struct CompletionRequest {
  bool chat = false;
  const ServedModel* model = nullptr;
  const tokenizer::Tokenizer* tokenizer = nullptr;  // the engine's, for the tokens of logprobs
  std::vector<JobPtr> jobs;  // one per choice (n): prompt, sampling, stop strings filled; not yet submitted
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  // How calls in the output are parsed into tool_calls: None unless the request gives tools (and
  // tool_choice is not "none") and the chat template writes calls in a known format.
  ToolFormat tool_format = ToolFormat::None;
};

// Parses and checks a body; ApiError (400, 404) naming the field otherwise. Requests without a seed
// get one from `draw_seed`.
CompletionRequest parse_completion_request(const std::string& body, bool chat, const Engine& engine,
                                           const std::function<uint64_t()>& draw_seed);

// The whole response of a finished job, and the pieces of a stream.
json completion_response(const CompletionRequest& r, const std::string& id, int64_t created);
json stream_chunk(const CompletionRequest& r, const std::string& id, int64_t created, size_t index,
                  const std::string& delta, bool first, const std::string& finish_reason, json logprobs = nullptr);
// choice.logprobs for some of a choice's tokens (all of them, or a stream chunk's) whose text starts
// at `text_offset` (completions' text_offset), which moves past them.
json logprobs_json(bool chat, const std::vector<GenerationJob::TokenLogprob>& entries, const tokenizer::Tokenizer& tok,
                   int64_t& text_offset);
// A chat stream chunk carrying one tool_calls delta (see tool_call_deltas).
json tool_call_chunk(const CompletionRequest& r, const std::string& id, int64_t created, size_t index, const json& call);
json usage_chunk(const CompletionRequest& r, const std::string& id, int64_t created);

// /tokenize and /detokenize bodies → responses.
json tokenize(const std::string& body, const Engine& engine);
json detokenize(const std::string& body, const Engine& engine);

}  // namespace llmtune::serve
