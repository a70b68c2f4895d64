// `llmtune serve`: parse, resolve the config, run the OpenAI-compatible server.
#include <CLI/CLI.hpp>

#include <spdlog/spdlog.h>

#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "command_params.h"
#include "common.h"
#include "llmtune/io/read_file.h"
#include "llmtune/serve/serve.h"
#include "llmtune/util/error.h"

namespace llmtune::cli {

config::Schema serve_schema() {
  using config::Type;
  config::Schema s;
  add_common_keys(s);
  s.add({.name = "model", .type = Type::String, .help = "model directory, Hugging Face cache repo id, or .gguf file", .required = true});
  s.add({.name = "model_name", .type = Type::String, .help = "the base model's name in requests (default: model as given)"});
  s.add({.name = "adapters", .type = Type::StringList, .default_value = std::vector<std::string>{},
         .help = "LoRA adapters served over the base, each NAME=PATH; requests select one with \"model\": NAME",
         .check = [](const config::Value& v) -> std::string {
           for (const auto& a : std::get<std::vector<std::string>>(v)) {
             const auto eq = a.find('=');
             if (eq == std::string::npos || eq == 0 || eq + 1 == a.size())
               return "'" + a + "' is not NAME=PATH (the name requests give as \"model\", then the adapter directory)";
           }
           return "";
         }});
  s.add({.name = "chat_template", .type = Type::String, .default_value = std::string("auto"),
         .help = std::string(kChatTemplateHelp) + " (auto: an adapter's saved template, else the tokenizer's)",
         .check = check_chat_template});
  s.add({.name = "host", .type = Type::String, .default_value = std::string("127.0.0.1"),
         .help = "address to listen on (0.0.0.0: every interface; then set an API key)"});
  s.add({.name = "port", .type = Type::Int, .default_value = int64_t{8080}, .help = "TCP port; 0 = any free port (logged)",
         .min = 0, .max = 65535});
  s.add({.name = "api_key", .type = Type::String, .help = "required as 'Authorization: Bearer KEY' on /v1/*, /tokenize, /detokenize"});
  s.add({.name = "api_key_file", .type = Type::String, .help = "file whose first line is the API key"});
  s.add({.name = "max_tokens_limit", .type = Type::Int, .default_value = int64_t{2048},
         .help = "max_tokens above this is refused (400); chat requests without max_tokens get this (within the context)", .min = 1});
  s.add({.name = "max_concurrency", .type = Type::Int, .default_value = int64_t{8},
         .help = "requests decoded together in one batch (continuous batching); 1 = one at a time", .min = 1, .max = 256});
  s.add({.name = "max_queue", .type = Type::Int, .default_value = int64_t{64},
         .help = "generation requests waiting at most; more get 429", .min = 1});
  s.add({.name = "max_body_bytes", .type = Type::Int, .default_value = int64_t{1} << 20,
         .help = "request bodies larger than this get 413", .min = 1024});
  s.add({.name = "timeout_s", .type = Type::Int, .default_value = int64_t{60}, .help = "socket read/write timeout, seconds", .min = 1});
  s.add({.name = "http_threads", .type = Type::Int, .default_value = int64_t{128},
         .help = "connections served at once (an open stream holds one); keep it above max_concurrency + max_queue "
                 "so that a full queue answers 429 rather than leaving connections waiting", .min = 1, .max = 4096});
  add_quantize_on_load_keys(s, "", "blocksize");
  s.add({.name = "refuse_non_finite", .type = Type::Bool, .default_value = false,
         .help = "refuse weights or adapter tensors holding NaN or infinite values (default: a warning naming them)"});
  return s;
}

namespace {

struct ServeFlags {
  std::optional<std::string> model, model_name, chat_template, host, api_key, api_key_file;
  LoadQuantizeFlags quantize;
  std::optional<int64_t> port, max_tokens_limit, max_concurrency, max_queue, max_body_bytes, timeout_s, http_threads;
  std::vector<std::string> adapters;
  bool refuse_non_finite = false;
};

std::string trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  size_t b = 0;
  while (b < s.size() && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  return s.substr(b);
}

}  // namespace

serve::ServeParams serve_params(const config::Config& cfg) {
  serve::ServeParams p;
  p.model = cfg.get_string("model");
  if (cfg.has("model_name")) p.model_name = cfg.get_string("model_name");
  for (const auto& a : cfg.get_list("adapters")) {
    const auto eq = a.find('=');
    p.adapters.push_back({a.substr(0, eq), a.substr(eq + 1)});
  }
  p.chat_template = cfg.get_string("chat_template");
  p.host = cfg.get_string("host");
  p.port = cfg.get_int("port");
  if (cfg.has("api_key") && cfg.has("api_key_file"))
    throw UsageError("give the API key once: api_key (" + cfg.origin("api_key").describe() + ") or api_key_file (" +
                     cfg.origin("api_key_file").describe() + "), not both");
  if (cfg.has("api_key")) p.api_key = cfg.get_string("api_key");
  if (cfg.has("api_key_file")) {
    const std::string path = cfg.get_string("api_key_file");
    const std::string text = io::read_text_file<UsageError>(path, "the API key file");
    p.api_key = trim(text.substr(0, text.find('\n')));
    if (p.api_key.empty()) throw UsageError("api_key_file " + path + ": the first line is empty; write the key there");
  }
  if (cfg.has("api_key") && p.api_key.empty())
    throw UsageError("api_key is empty: give a key, or leave it out to serve without one");
  if (p.api_key.empty() && p.host != "127.0.0.1" && p.host != "localhost" && p.host != "::1")
    spdlog::warn("serve: listening on {} without an API key: anyone who reaches this address can use the model "
                 "(set --api-key or --api-key-file)", p.host);
  p.max_tokens_limit = cfg.get_int("max_tokens_limit");
  p.max_concurrency = cfg.get_int("max_concurrency");
  p.max_queue = cfg.get_int("max_queue");
  p.max_body_bytes = cfg.get_int("max_body_bytes");
  p.timeout_s = cfg.get_int("timeout_s");
  p.http_threads = cfg.get_int("http_threads");
  p.quantize = quantize_on_load(cfg, "", "blocksize");
  p.refuse_non_finite = cfg.get_bool("refuse_non_finite");
  p.device = cfg.get_string("device");
  p.dtype = cfg.get_string("dtype");
  p.seed = static_cast<uint64_t>(cfg.get_int("seed"));
  return p;
}

Command register_serve(CLI::App& root) {
  auto* app = root.add_subcommand("serve", "Serve a model (and LoRA adapters) over an OpenAI-compatible HTTP API");
  auto options = std::make_shared<CommonOptions>();
  auto f = std::make_shared<ServeFlags>();
  add_common_options(app, *options);
  app->add_option("--model", f->model, "model directory, Hugging Face cache repo id (org/name), or .gguf file");
  app->add_option("--model-name", f->model_name, "the base model's name in requests [the --model value]");
  app->add_option("--adapter", f->adapters, "NAME=PATH: a LoRA adapter served as model NAME over the same base (repeatable)")
      ->allow_extra_args(false);
  app->add_option("--chat-template", f->chat_template, "auto|alpaca|chatml|llama3|mistral|zephyr|FILE.jinja [auto]");
  app->add_option("--host", f->host, "address to listen on [127.0.0.1]");
  app->add_option("--port", f->port, "TCP port; 0 = any free port, logged and printed with --json [8080]");
  app->add_option("--api-key", f->api_key, "require 'Authorization: Bearer KEY' on /v1/*, /tokenize, /detokenize");
  app->add_option("--api-key-file", f->api_key_file, "read the API key from the first line of this file");
  app->add_option("--max-tokens-limit", f->max_tokens_limit, "largest max_tokens a request may ask for [2048]");
  app->add_option("--max-concurrency", f->max_concurrency, "requests decoded together (continuous batching); 1 = one at a time [8]");
  app->add_option("--max-queue", f->max_queue, "generation requests waiting at most; beyond it 429 [64]");
  app->add_option("--max-body-bytes", f->max_body_bytes, "largest request body; beyond it 413 [1048576]");
  app->add_option("--timeout", f->timeout_s, "socket read/write timeout in seconds [60]");
  app->add_option("--http-threads", f->http_threads, "connections served at once [128]");
  add_quantize_on_load_flags(app, f->quantize);
  app->add_flag("--refuse-non-finite", f->refuse_non_finite, "refuse weights or adapter tensors holding NaN or infinite values");
  return {app, [options, f] {
            FlagValues extra;
            auto put = [&](const char* key, const auto& v, const char* flag = "") { add_flag_value(extra, key, v, flag); };
            put("model", f->model);
            put("model_name", f->model_name);
            put("chat_template", f->chat_template);
            put("host", f->host);
            put("port", f->port);
            put("api_key", f->api_key);
            put("api_key_file", f->api_key_file);
            put("max_tokens_limit", f->max_tokens_limit);
            put("max_concurrency", f->max_concurrency);
            put("max_queue", f->max_queue);
            put("max_body_bytes", f->max_body_bytes);
            put("timeout_s", f->timeout_s, "--timeout");
            put("http_threads", f->http_threads);
            add_quantize_on_load_values(extra, f->quantize);
            add_flag_value(extra, "refuse_non_finite", f->refuse_non_finite);
            if (!f->adapters.empty()) {
              nlohmann::json list = f->adapters;
              extra.push_back({"adapters", list.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), "--adapter"});
            }
            config::Config cfg = resolve_config(serve_schema(), *options, extra);
            if (print_config_if_asked(cfg, *options)) return 0;
            serve::ServeParams p = serve_params(cfg);
            if (options->json) {
              p.on_listening = [host = p.host](int port) {
                std::cout << nlohmann::json{{"listening", "http://" + host + ":" + std::to_string(port)}, {"host", host},
                                            {"port", port}}.dump()
                          << std::endl;
              };
            }
            serve::run_serve(p);
            return 0;
          }};
}

}  // namespace llmtune::cli
