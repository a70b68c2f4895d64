// `llmtune serve`: an OpenAI-compatible HTTP server (/v1/models, /v1/completions,
// /v1/chat/completions, streaming or not) over one loaded model and any number of LoRA adapters
// sharing its base weights, with /health, /tokenize, /detokenize and Prometheus /metrics.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "llmtune/pipelines/quantize_on_load.h"

namespace llmtune::serve {

struct AdapterSpec {
  std::string name;  // what a request's "model" field names
  std::string path;  // a PEFT adapter directory, a finetune run directory, or a hub repo id
};

struct ServeParams {
  std::string model;
  std::string model_name;  // the base model's name in requests; "" = `model` as given
  std::vector<AdapterSpec> adapters;
  std::string chat_template = "auto";  // auto | a built-in name | a .jinja path
  std::string host = "127.0.0.1";
  int64_t port = 8080;  // 0: any free port (the bound one is logged)
  std::string api_key;  // "" = no key needed on /v1/*
  int64_t max_tokens_limit = 2048;  // max_tokens above this is refused (400); the chat default
  int64_t max_concurrency = 8;      // requests decoded together (continuous batching); 1: one at a time
  int64_t max_queue = 64;           // generation requests waiting beyond this get 429
  int64_t max_body_bytes = 1 << 20;  // larger request bodies get 413
  int64_t timeout_s = 60;            // socket read/write timeout
  int64_t http_threads = 128;        // connections handled at once (an open stream holds one)
  std::string device = "auto";
  std::string dtype = "auto";
  pipelines::QuantizeOnLoad quantize;  // nf4 | fp4 | int8: quantize a 16-bit model while it loads
  bool refuse_non_finite = false;
  uint64_t seed = 42;  // seeds the generator that gives a seed to requests without one
  // Called once the socket listens, with the bound port (the one chosen when port is 0).
  std::function<void(int port)> on_listening;
};

// Loads the model and adapters, serves until SIGINT/SIGTERM, then stops accepting, lets the
// request being generated finish, answers queued ones with 503, and returns.
void run_serve(const ServeParams& params);

}  // namespace llmtune::serve
