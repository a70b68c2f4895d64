// The HTTP side of `llmtune serve` on cpp-httplib (the library llama.cpp's server uses, packaged
// by Debian): routes, the Bearer key on the model endpoints, server-sent event streams, request
// metrics, and shutdown on SIGINT/SIGTERM.
#include <httplib.h>
#include <pthread.h>
#include <sys/socket.h>
#include <spdlog/spdlog.h>

#include <csignal>
#include <cstring>
#include <ctime>
#include <random>

#include "engine.h"
#include "llmtune/serve/serve.h"
#include "llmtune/util/error.h"
#include "metrics.h"
#include "openai.h"

namespace llmtune::serve {
namespace {

constexpr const char* kJson = "application/json";

void send_error(httplib::Response& res, int status, const std::string& message, const std::string& param = "",
                const std::string& code = "") {
  res.status = status;
  res.set_content(dump(error_body(status, message, param, code)), kJson);
}

// Compares without stopping at the first difference, so the time taken does not tell how much of a
// guessed key was right.
bool same_secret(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i % (b.empty() ? 1 : b.size())]);
  return diff == 0 && !b.empty();
}

bool needs_key(const std::string& path) {
  return path.starts_with("/v1/") || path == "/v1" || path == "/tokenize" || path == "/detokenize";
}

std::string endpoint_label(const std::string& path) {
  for (const char* known : {"/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions", "/tokenize",
                            "/detokenize"})
    if (path == known) return known;
  if (path.starts_with("/v1/models/")) return "/v1/models";
  return "other";
}

// Request ids and default seeds, shared by the HTTP threads.
class Randomness {
 public:
  explicit Randomness(uint64_t seed) : seeds_(seed), ids_(std::random_device{}()) {}
  std::string id(const char* prefix) {
    std::lock_guard lock(mutex_);
    static const char* hex = "0123456789abcdef";
    std::string s = prefix;
    for (int i = 0; i < 24; ++i) s += hex[ids_() % 16];
    return s;
  }
  uint64_t seed() {
    std::lock_guard lock(mutex_);
    return seeds_();
  }

 private:
  std::mutex mutex_;
  std::mt19937_64 seeds_, ids_;
};

std::string sse(const json& j) { return "data: " + dump(j) + "\n\n"; }

void cancel_all(const std::vector<JobPtr>& jobs) {
  for (const auto& job : jobs) job->cancelled = true;
}

void serve_generation(const httplib::Request& req, httplib::Response& res, bool chat, Engine& engine, Randomness& rnd) {
  CompletionRequest r = parse_completion_request(req.body, chat, engine, [&rnd] { return rnd.seed(); });
  const std::string id = rnd.id(chat ? "chatcmpl-" : "cmpl-");
  const int64_t created = static_cast<int64_t>(std::time(nullptr));
  switch (engine.submit(r.jobs)) {
    case Engine::Submitted::QueueFull:
      return send_error(res, 429, "the server's queue is full: retry later", "", "queue_full");
    case Engine::Submitted::ShuttingDown:
      return send_error(res, 503, "the server is shutting down");
    case Engine::Submitted::Queued:
      break;
  }
  if (!r.stream) {
    for (const auto& job : r.jobs) {
      job->wait_done();
      if (job->error_status) {
        cancel_all(r.jobs);
        return send_error(res, job->error_status, job->error);
      }
    }
    res.set_content(dump(completion_response(r, id, created)), kJson);
    return;
  }
  // The choices stream one after the other (each chunk names its index), then the usage and [DONE].
  res.set_header("Cache-Control", "no-cache");
  struct Progress {
    size_t choice = 0;
    bool first = true;
    std::unique_ptr<ToolCallStream> tools;  // the current choice's, when tool calls are parsed
    std::vector<GenerationJob::TokenLogprob> logprobs;  // the current choice's, not yet sent
    int64_t text_offset = 0;  // completions' text_offset of the next token
  };
  auto at = std::make_shared<Progress>();
  std::vector<JobPtr> jobs = r.jobs;
  res.set_chunked_content_provider(
      "text/event-stream",
      [r, id, created, at](size_t, httplib::DataSink& sink) {
        GenerationJob& job = *r.jobs[at->choice];
        GenerationJob::Update u = job.wait_update();
        std::string out;
        bool end = false;
        if (job.error_status) {
          out = sse(error_body(job.error_status, job.error)) + "data: [DONE]\n\n";
          end = true;
        } else {
          // With tools, text that may open a call is held; at the end the calls go out as deltas.
          if (r.tool_format != ToolFormat::None && !at->tools) at->tools = std::make_unique<ToolCallStream>(r.tool_format);
          std::string delta = at->tools ? at->tools->push(u.delta) : u.delta;
          std::string reason = job.finish_reason;
          std::vector<ToolCall> calls;
          if (u.done && at->tools) {
            std::string rest;
            calls = at->tools->finish(rest).calls;
            delta += rest;
            if (!calls.empty() && reason == "stop") reason = "tool_calls";
          }
          // Each chunk carries the log probabilities of the tokens generated since the last one; the
          // last chunk of a choice carries what is left.
          at->logprobs.insert(at->logprobs.end(), u.logprobs.begin(), u.logprobs.end());
          auto take_logprobs = [&]() -> json {
            if (job.logprobs < 0) return nullptr;
            json j = logprobs_json(r.chat, at->logprobs, *r.tokenizer, at->text_offset);
            at->logprobs.clear();
            return j;
          };
          if (!delta.empty() || (at->first && r.chat))
            out += sse(stream_chunk(r, id, created, at->choice, delta, at->first, "", take_logprobs()));
          if (!out.empty()) at->first = false;
          for (size_t i = 0; i < calls.size(); ++i)
            for (const auto& d : tool_call_deltas(calls[i], i)) out += sse(tool_call_chunk(r, id, created, at->choice, d));
          if (u.done) {
            out += sse(stream_chunk(r, id, created, at->choice, "", at->first && r.chat, reason,
                                    at->logprobs.empty() ? json() : take_logprobs()));
            at->first = true;
            at->text_offset = 0;
            at->tools.reset();
            if (++at->choice == r.jobs.size()) {
              if (r.include_usage) out += sse(usage_chunk(r, id, created));
              out += "data: [DONE]\n\n";
              end = true;
            }
          }
        }
        if (!out.empty() && !sink.write(out.data(), out.size())) {
          cancel_all(r.jobs);  // the client went away: free the worker at the next token
          return false;
        }
        if (end) {
          cancel_all(r.jobs);  // after an error, the other choices are not wanted
          sink.done();
        }
        return true;
      },
      [jobs](bool success) {
        if (!success) cancel_all(jobs);
      });
}

// Runs `body`, turning ApiErrors into their status and anything else into a 500.
template <typename F>
void guarded(httplib::Response& res, F&& body) {
  try {
    body();
  } catch (const ApiError& e) {
    send_error(res, e.status, e.what(), e.param, e.code);
  } catch (const std::exception& e) {
    spdlog::error("serve: {}", e.what());
    send_error(res, 500, e.what());
  }
}

// httplib 0.11 listens with a backlog of 5: a burst of clients connecting at once overflows it and
// some get their connection reset. listen() again on the bound socket raises the backlog (POSIX
// allows it; Linux applies the new value).
class Server : public httplib::Server {
 public:
  void widen_backlog(int backlog) { ::listen(svr_sock_, backlog); }
};

}  // namespace

void run_serve(const ServeParams& p) {
  // SIGINT/SIGTERM are taken by one thread (sigwait), never by a thread in the middle of a request:
  // blocked here, before any thread starts, so every thread inherits the mask.
  sigset_t stop_signals, old_mask;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, &old_mask);
  struct RestoreMask {
    sigset_t mask;
    ~RestoreMask() { pthread_sigmask(SIG_SETMASK, &mask, nullptr); }
  } restore{old_mask};

  // The signal watcher runs from the start: a signal while the model loads ends the process at once
  // (nothing to finish yet); once serving, it stops the engine and the server gracefully.
  std::atomic<bool> finished{false}, signalled{false};
  std::atomic<Engine*> live_engine{nullptr};
  std::atomic<Server*> live_server{nullptr};
  std::thread watcher([&] {
    const timespec tick{0, 200'000'000};
    while (!finished) {
      const int sig = sigtimedwait(&stop_signals, nullptr, &tick);
      if (sig <= 0) continue;
      const char* name = sig == SIGTERM ? "SIGTERM" : "SIGINT";
      Server* server = live_server.load();
      if (!server) {
        spdlog::info("serve: {} while loading: exiting", name);
        std::_Exit(0);
      }
      signalled = true;
      spdlog::info("serve: {}: finishing the request being generated, then exiting", name);
      live_engine.load()->shutdown();
      server->stop();
      return;
    }
  });
  struct JoinWatcher {
    std::atomic<bool>& finished;
    std::thread& thread;
    ~JoinWatcher() {
      finished = true;
      if (thread.joinable()) thread.join();
    }
  } join_watcher{finished, watcher};

  // The port is taken before the model loads, so a port in use is reported at once, not after a
  // long load; connections made meanwhile wait in the backlog until serving starts.
  Server server;
  int port = static_cast<int>(p.port);
  if (p.port == 0) port = server.bind_to_any_port(p.host);
  else if (!server.bind_to_port(p.host, port)) port = -1;
  if (port > 0) server.widen_backlog(SOMAXCONN);
  if (port <= 0)
    throw Error("serve: cannot listen on " + p.host + ":" + std::to_string(p.port) + " (" + std::strerror(errno) +
                "): is the port in use, or the host not an address of this machine? (--port 0 picks a free port)");

  Metrics metrics;
  Engine engine(p, metrics);
  Randomness rnd(p.seed);
  const int64_t started = static_cast<int64_t>(std::time(nullptr));

  const auto threads = static_cast<size_t>(p.http_threads);
  server.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  server.set_payload_max_length(static_cast<size_t>(p.max_body_bytes));
  server.set_read_timeout(p.timeout_s);
  server.set_write_timeout(p.timeout_s);

  server.set_pre_routing_handler([&](const httplib::Request& req, httplib::Response& res) {
    if (p.api_key.empty() || !needs_key(req.path)) return httplib::Server::HandlerResponse::Unhandled;
    const std::string auth = req.get_header_value("Authorization");
    if (auth.starts_with("Bearer ") && same_secret(auth.substr(7), p.api_key))
      return httplib::Server::HandlerResponse::Unhandled;
    res.set_header("WWW-Authenticate", "Bearer");
    send_error(res, 401, auth.empty() ? "no API key given: send the header 'Authorization: Bearer <key>'"
                                      : "the API key is not the server's",
               "", "invalid_api_key");
    return httplib::Server::HandlerResponse::Handled;
  });
  server.Get("/health", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(R"({"status":"ok"})", kJson);
  });
  server.Get("/metrics", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics.render(), "text/plain; version=0.0.4; charset=utf-8");
  });
  auto model_card = [&](const ServedModel& m) {
    return json{{"id", m.name},
                {"object", "model"},
                {"created", started},
                {"owned_by", "llmtune"},
                {"root", m.adapter_path.empty() ? p.model : m.adapter_path},
                {"parent", m.adapter_path.empty() ? json() : json(engine.models().front().name)},
                {"max_model_len", engine.context_length()}};
  };
  server.Get("/v1/models", [&](const httplib::Request&, httplib::Response& res) {
    json data = json::array();
    for (const auto& m : engine.models()) data.push_back(model_card(m));
    res.set_content(dump(json{{"object", "list"}, {"data", data}}), kJson);
  });
  server.Get(R"(/v1/models/(.+))", [&](const httplib::Request& req, httplib::Response& res) {
    const ServedModel* m = engine.find(req.matches[1]);
    if (!m) return send_error(res, 404, "the model '" + std::string(req.matches[1]) + "' does not exist", "model", "model_not_found");
    res.set_content(dump(model_card(*m)), kJson);
  });
  server.Post("/v1/completions", [&](const httplib::Request& req, httplib::Response& res) {
    guarded(res, [&] { serve_generation(req, res, false, engine, rnd); });
  });
  server.Post("/v1/chat/completions", [&](const httplib::Request& req, httplib::Response& res) {
    guarded(res, [&] { serve_generation(req, res, true, engine, rnd); });
  });
  server.Post("/tokenize", [&](const httplib::Request& req, httplib::Response& res) {
    guarded(res, [&] { res.set_content(dump(tokenize(req.body, engine)), kJson); });
  });
  server.Post("/detokenize", [&](const httplib::Request& req, httplib::Response& res) {
    guarded(res, [&] { res.set_content(dump(detokenize(req.body, engine)), kJson); });
  });
  // Statuses httplib sets itself (no route 404, 413 over the body limit, 400 unparsable) get a body in
  // OpenAI's shape too.
  server.set_error_handler([&](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    if (res.status == 404) send_error(res, 404, "no endpoint " + req.method + " " + req.path);
    else if (res.status == 413)
      send_error(res, 413, "the request body is larger than the server's limit of " + std::to_string(p.max_body_bytes) +
                               " bytes (max_body_bytes)", "", "request_too_large");
    else send_error(res, res.status, "the request could not be read (HTTP " + std::to_string(res.status) + ")");
  });
  server.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
    send_error(res, 500, "internal error");
  });
  server.set_logger([&](const httplib::Request& req, const httplib::Response& res) {
    metrics.count_request(endpoint_label(req.path), res.status);
    spdlog::debug("serve: {} {} → {}", req.method, req.path, res.status);
  });

  spdlog::info("serve: listening on http://{}:{} ({} model(s): base '{}'{})", p.host, port, engine.models().size(),
               engine.models().front().name, p.api_key.empty() ? "" : ", API key required on /v1/*");

  if (p.on_listening) p.on_listening(port);
  live_engine = &engine;
  live_server = &server;
  const bool ok = server.listen_after_bind();
  finished = true;
  watcher.join();
  engine.shutdown();
  if (!ok && !signalled) throw Error("serve: the server stopped with an error");
  spdlog::info("serve: stopped");
}

}  // namespace llmtune::serve
