// The model side of the server: loading (base once, each adapter as a set of wrapped linears), the
// job queue, and the worker that runs model::generate for one job at a time, streaming its text.
#include "engine.h"

#include <c10/core/InferenceMode.h>
#include <malloc.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <set>

#include "../pipelines/saved_template.h"
#include "llmtune/data/dataset.h"
#include "llmtune/io/read_file.h"
#include "llmtune/peft/method.h"
#include "llmtune/pipelines/load.h"
#include "llmtune/util/error.h"
#include "batch.h"
#include "sampling.h"
#include "text_stream.h"

namespace llmtune::serve {
namespace {

double seconds_between(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

std::string template_source(const std::string& choice, const std::string& adapter, const std::string& tokenizer_own) {
  if (choice == "auto") {
    if (auto saved = pipelines::saved_chat_template(adapter))
      return io::read_text_file<TokenizerError>(*saved, "the chat template");
    return tokenizer_own;
  }
  if (choice.ends_with(".jinja")) return io::read_text_file<TokenizerError>(choice, "the chat template");
  return data::named_template_source(choice);
}

}  // namespace

GenerationJob::Update GenerationJob::wait_update() {
  std::unique_lock lock(mutex);
  changed.wait(lock, [&] { return done || !unread.empty(); });
  Update u{std::move(unread), done, {}};
  unread.clear();
  u.logprobs.assign(token_logprobs.begin() + static_cast<std::ptrdiff_t>(logprobs_read), token_logprobs.end());
  logprobs_read = token_logprobs.size();
  return u;
}

void GenerationJob::publish(const std::string& delta, int64_t tokens) {
  std::lock_guard lock(mutex);
  text += delta;
  unread += delta;
  completion_tokens = tokens;
  if (!delta.empty()) changed.notify_all();
}

void GenerationJob::finish(const std::string& delta, const std::string& reason, int64_t tokens) {
  std::lock_guard lock(mutex);
  text += delta;
  unread += delta;
  completion_tokens = tokens;
  finish_reason = reason;
  done = true;
  changed.notify_all();
}

void GenerationJob::fail(int status, const std::string& message) {
  std::lock_guard lock(mutex);
  error_status = status;
  error = message;
  done = true;
  changed.notify_all();
}

void GenerationJob::wait_done() {
  std::unique_lock lock(mutex);
  changed.wait(lock, [&] { return done; });
}

Engine::Engine(const ServeParams& params, Metrics& metrics) : params_(params), metrics_(metrics) {
  // The adapters' names and directories are checked before the (slower) model load.
  const std::string base_name = params.model_name.empty() ? params.model : params.model_name;
  std::set<std::string> names{base_name};
  std::vector<std::filesystem::path> adapter_dirs;
  for (const auto& spec : params.adapters) {
    if (!names.insert(spec.name).second)
      throw UsageError("--adapter " + spec.name + "=" + spec.path + ": the name '" + spec.name +
                       "' is already taken (by the base model or another adapter); give each a different name");
    adapter_dirs.push_back(peft::resolve_adapter_dir(spec.path));
  }
  pipelines::LoadedModel loaded = pipelines::load_model("serve", params.model, "", params.device, params.dtype,
                                                        params.refuse_non_finite, params.quantize);
  tokenizer_ = std::move(loaded.tokenizer);
  model_ = std::move(loaded.model);
  for (int32_t id : tokenizer_->stop_ids) stop_ids_.push_back(id);
  for (int64_t id : model_->config().eos_token_ids)
    if (std::find(stop_ids_.begin(), stop_ids_.end(), id) == stop_ids_.end()) stop_ids_.push_back(id);

  std::vector<model::LinearPtr> base;
  for (auto& [name, slot] : model_->named_linears()) {
    slots_.push_back(slot);
    base.push_back(*slot);
  }
  models_.push_back({base_name, "", template_source(params.chat_template, "", tokenizer_->chat_template), base});
  for (size_t a = 0; a < params.adapters.size(); ++a) {
    const AdapterSpec& spec = params.adapters[a];
    const std::filesystem::path& dir = adapter_dirs[a];
    peft::apply_adapter(*model_, dir);
    const peft::SavedAdapter saved = peft::open_adapter(dir);
    std::vector<std::pair<std::string, const at::Tensor*>> tensors;
    for (const auto& [key, t] : saved.tensors) tensors.emplace_back(key, &t);
    pipelines::check_finite(tensors, saved.weights_path.string(), params.refuse_non_finite);
    ServedModel m{spec.name, dir.string(), template_source(params.chat_template, spec.path, tokenizer_->chat_template), {}};
    for (size_t i = 0; i < slots_.size(); ++i) {
      m.linears.push_back(*slots_[i]);
      *slots_[i] = base[i];  // the next adapter wraps the bare base again
    }
    spdlog::info("serve: adapter '{}' from {}", spec.name, dir.string());
    models_.push_back(std::move(m));
  }
  active_ = &models_.front();
  if (params.max_concurrency > 1) {
    const std::string why_not = Batch::unsupported_reason(*model_);
    if (why_not.empty()) batch_ = std::make_unique<Batch>(*model_, *tokenizer_, metrics_, params.max_concurrency);
    else spdlog::warn("serve: requests are decoded one at a time: {} (max_concurrency {} has no effect)", why_not,
                      params.max_concurrency);
  }
  thread_ = std::thread([this] { batch_ ? worker_batched() : worker(); });
}

Engine::~Engine() { shutdown(); }

const ServedModel* Engine::find(const std::string& name) const {
  for (const auto& m : models_)
    if (m.name == name) return &m;
  return nullptr;
}

int64_t Engine::context_length() const { return model_->config().max_position_embeddings; }

Engine::Submitted Engine::submit(const std::vector<JobPtr>& jobs) {
  std::lock_guard lock(mutex_);
  if (stopping_) return Submitted::ShuttingDown;
  if (static_cast<int64_t>(queue_.size() + jobs.size()) > params_.max_queue) return Submitted::QueueFull;
  queue_.insert(queue_.end(), jobs.begin(), jobs.end());
  publish_queue_gauges();
  wake_.notify_one();
  return Submitted::Queued;
}

void Engine::publish_queue_gauges() { metrics_.set_queue(running_, static_cast<int64_t>(queue_.size())); }

void Engine::shutdown() {
  std::deque<JobPtr> dropped;
  {
    std::lock_guard lock(mutex_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
    dropped.swap(queue_);
    publish_queue_gauges();
    wake_.notify_all();
  }
  for (auto& job : dropped) job->fail(503, "the server is shutting down");
  if (thread_.joinable()) thread_.join();
}

void Engine::worker() {
  c10::InferenceMode inference;
  for (;;) {
    JobPtr job;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, nothing left
      job = std::move(queue_.front());
      queue_.pop_front();
      running_ = 1;
      publish_queue_gauges();
    }
    try {
      run(*job);
    } catch (const std::exception& e) {
      spdlog::error("serve: generation failed: {}", e.what());
      job->fail(500, std::string("generation failed: ") + e.what());
    }
    std::lock_guard lock(mutex_);
    running_ = 0;
    publish_queue_gauges();
  }
}

void Engine::activate(const ServedModel* m) {
  if (m == active_) return;
  for (size_t i = 0; i < slots_.size(); ++i) *slots_[i] = m->linears[i];
  active_ = m;
}

// Continuous batching: between decode steps, every queued job that can join (a free row, the
// adapter of the running rows, room in the cache) is prefilled into the batch; the queue's head
// waits for the batch to drain when it needs another adapter.
void Engine::worker_batched() {
  c10::InferenceMode inference;
  for (;;) {
    JobPtr next;
    const ServedModel* m = nullptr;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || !queue_.empty() || batch_->active() > 0; });
      if (queue_.empty() && batch_->active() == 0) return;  // stopping, nothing left
      if (!queue_.empty() && batch_->has_free_row()) {
        m = find(queue_.front()->model_name);
        if ((batch_->active() == 0 || m == active_) && batch_->fits(*queue_.front())) {
          next = std::move(queue_.front());
          queue_.pop_front();
        }
      }
      running_ = batch_->active() + (next ? 1 : 0);
      publish_queue_gauges();
    }
    try {
      if (next && next->cancelled) next->fail(499, "the client closed the connection");
      else if (next) {
        if (batch_->active() == 0) activate(m);
        batch_->admit(next, m->name);
      } else if (batch_->active() > 0) batch_->step();
    } catch (const std::exception& e) {
      spdlog::error("serve: generation failed: {}", e.what());
      if (next && !next->done) next->fail(500, std::string("generation failed: ") + e.what());
      batch_->fail_all(std::string("generation failed: ") + e.what());
    }
    if (!next) {
      std::lock_guard lock(mutex_);
      running_ = batch_->active();
      publish_queue_gauges();
      // Idle: the batch's caches and the requests' buffers are freed; hand the memory back to the
      // system (glibc keeps freed heap pages otherwise, and the process would stay at its peak).
      if (running_ == 0 && queue_.empty()) malloc_trim(0);
    }
  }
}

void Engine::run(GenerationJob& job) {
  if (job.cancelled) return job.fail(499, "the client closed the connection");
  const ServedModel* m = find(job.model_name);
  activate(m);
  TextStream stream(*tokenizer_, job.stop);
  auto last = job.arrived;
  int64_t n = 0;
  auto on_token = [&](int64_t id) {
    const auto now = std::chrono::steady_clock::now();
    if (n == 0) metrics_.observe_time_to_first_token(m->name, seconds_between(last, now));
    else metrics_.observe_inter_token_latency(m->name, seconds_between(last, now));
    last = now;
    ++n;
    job.publish(stream.push(id), n);
    return !stream.stopped() && !job.cancelled.load();
  };
  auto choose = [&job](const at::Tensor& logits, const std::vector<int64_t>& history, at::Generator& generator) {
    return pick_token(logits, history, job, generator);
  };
  const model::GenerationResult result = model::generate(*model_, job.prompt, job.sampling, on_token, choose);
  metrics_.count_tokens(m->name, static_cast<int64_t>(job.prompt.size()), n);
  metrics_.observe_request_latency(m->name, seconds_between(job.arrived, std::chrono::steady_clock::now()));
  job.finish(stream.rest(), stream.stopped() ? "stop" : result.finish_reason, n);
}

}  // namespace llmtune::serve
