// The inference side of `llmtune serve`: the model, its tokenizer and adapters loaded once, a bounded
// queue of generation jobs, and one worker thread that decodes them. HTTP threads submit a job and
// read its text as it grows; the worker swaps the adapter's linears in per job (pointer swaps: the
// base weights are held once).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "llmtune/model/causal_lm.h"
#include "llmtune/model/generate.h"
#include "llmtune/serve/serve.h"
#include "llmtune/tokenizer/tokenizer.h"
#include "metrics.h"

namespace llmtune::serve {

// A name a request may give as "model": the base, or the base with one adapter.
struct ServedModel {
  std::string name;
  std::string adapter_path;   // "" for the base
  std::string chat_template;  // "" when there is none
  std::vector<model::LinearPtr> linears;  // the value of every linear slot (model order) under this model
};

struct GenerationJob {
  // Filled by the HTTP thread before submit().
  std::string model_name;
  std::vector<int64_t> prompt;
  model::SamplingParams sampling;  // max_new_tokens already within the context; stop_ids set
  std::vector<std::string> stop;   // stop strings: the text ends before the first one
  double presence_penalty = 0, frequency_penalty = 0;  // OpenAI's, over the generated tokens
  int64_t logprobs = -1;  // -1: none; else the chosen token's log probability and this many alternatives
  std::chrono::steady_clock::time_point arrived = std::chrono::steady_clock::now();
  std::atomic<bool> cancelled{false};  // the client went away: stop at the next token

  // Filled by the worker.
  struct TokenLogprob {
    int64_t token;
    double logprob;
    std::vector<std::pair<int64_t, double>> top;  // the most likely tokens, best first
  };
  std::vector<TokenLogprob> token_logprobs;  // one per generated token but stop ids (appended under mutex)
  struct Update {
    std::string delta;  // text since the last update
    bool done = false;
    std::vector<TokenLogprob> logprobs;  // the token_logprobs added since the last update
  };
  // Waits until there is new text or the job ended.
  Update wait_update();
  void publish(const std::string& delta, int64_t tokens);
  void finish(const std::string& delta, const std::string& finish_reason, int64_t tokens);
  void fail(int status, const std::string& message);
  void wait_done();

  std::mutex mutex;
  std::condition_variable changed;
  std::string text, unread;
  size_t logprobs_read = 0;  // token_logprobs handed out by wait_update
  int64_t completion_tokens = 0;
  bool done = false;
  std::string finish_reason;
  int error_status = 0;  // 0: no error
  std::string error;
};
using JobPtr = std::shared_ptr<GenerationJob>;

class Batch;

class Engine {
 public:
  Engine(const ServeParams& params, Metrics& metrics);
  ~Engine();

  const std::vector<ServedModel>& models() const { return models_; }
  const ServedModel* find(const std::string& name) const;
  const tokenizer::Tokenizer& tokenizer() const { return *tokenizer_; }
  int64_t context_length() const;
  const std::vector<int64_t>& stop_ids() const { return stop_ids_; }
  uint64_t default_seed() const { return params_.seed; }
  int64_t max_tokens_limit() const { return params_.max_tokens_limit; }
  int64_t max_queue() const { return params_.max_queue; }

  enum class Submitted { Queued, QueueFull, ShuttingDown };
  // Queues all of `jobs` (a request's choices) or none.
  Submitted submit(const std::vector<JobPtr>& jobs);
  // Refuses new jobs, fails the queued ones (503), lets the running one finish, joins the worker.
  void shutdown();

 private:
  void worker();
  void worker_batched();
  void run(GenerationJob& job);
  void activate(const ServedModel* m);  // swaps the model's linears in
  void publish_queue_gauges();  // with mutex_ held

  ServeParams params_;
  Metrics& metrics_;
  std::unique_ptr<tokenizer::Tokenizer> tokenizer_;
  std::unique_ptr<model::CausalLM> model_;
  std::vector<model::LinearPtr*> slots_;  // every linear slot of model_, model order
  std::vector<ServedModel> models_;
  std::vector<int64_t> stop_ids_;
  const ServedModel* active_ = nullptr;
  std::unique_ptr<Batch> batch_;  // null: one request at a time (max_concurrency 1, or a model it cannot batch)

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<JobPtr> queue_;
  int64_t running_ = 0;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace llmtune::serve
