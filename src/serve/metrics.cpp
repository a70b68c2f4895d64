// Prometheus text format for the server's metrics (see metrics.h).
#include "metrics.h"

#include <fmt/format.h>

#include <cmath>
#include <sstream>

namespace llmtune::serve {
namespace {

// Label values escape backslash, double quote and newline (the exposition format's rule).
std::string escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

// The shortest text that reads back as the same double ("0.005", not "0.0050000000000000001").
std::string number(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  return fmt::format("{}", v);
}

void header(std::ostringstream& out, const char* name, const char* type, const char* help) {
  out << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n";
}

}  // namespace

Metrics::Metrics()
    : ttft_bounds_{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30},
      itl_bounds_{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1},
      e2e_bounds_{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120} {}

void Metrics::count_request(const std::string& endpoint, int status) {
  std::lock_guard lock(mutex_);
  ++requests_[{endpoint, status}];
}

void Metrics::count_tokens(const std::string& model, int64_t prompt_tokens, int64_t generated_tokens) {
  std::lock_guard lock(mutex_);
  prompt_tokens_[model] += static_cast<uint64_t>(prompt_tokens);
  generated_tokens_[model] += static_cast<uint64_t>(generated_tokens);
}

void Metrics::observe(Family& family, const std::vector<double>& bounds, const std::string& model, double value) {
  std::lock_guard lock(mutex_);
  Histogram& h = family[model];
  if (h.buckets.empty()) h.buckets.assign(bounds.size() + 1, 0);
  size_t i = 0;
  while (i < bounds.size() && value > bounds[i]) ++i;  // le: the first bound >= value
  ++h.buckets[i];
  h.sum += value;
  ++h.count;
}

void Metrics::observe_time_to_first_token(const std::string& model, double s) { observe(ttft_, ttft_bounds_, model, s); }
void Metrics::observe_inter_token_latency(const std::string& model, double s) { observe(itl_, itl_bounds_, model, s); }
void Metrics::observe_request_latency(const std::string& model, double s) { observe(e2e_, e2e_bounds_, model, s); }

void Metrics::set_queue(int64_t running, int64_t waiting) {
  std::lock_guard lock(mutex_);
  running_ = running;
  waiting_ = waiting;
}

void Metrics::count_decode_step(int64_t rows) {
  std::lock_guard lock(mutex_);
  ++decode_steps_;
  decode_rows_ += static_cast<uint64_t>(rows);
}

std::string Metrics::render() const {
  std::lock_guard lock(mutex_);
  std::ostringstream out;
  header(out, "llmtune_requests_total", "counter", "HTTP requests answered, by endpoint and status code");
  for (const auto& [key, n] : requests_)
    out << "llmtune_requests_total{endpoint=\"" << escape(key.first) << "\",status=\"" << key.second << "\"} " << n << "\n";
  header(out, "llmtune_prompt_tokens_total", "counter", "prompt tokens processed, by model");
  for (const auto& [model, n] : prompt_tokens_) out << "llmtune_prompt_tokens_total{model=\"" << escape(model) << "\"} " << n << "\n";
  header(out, "llmtune_generation_tokens_total", "counter", "tokens generated, by model");
  for (const auto& [model, n] : generated_tokens_)
    out << "llmtune_generation_tokens_total{model=\"" << escape(model) << "\"} " << n << "\n";
  header(out, "llmtune_requests_running", "gauge", "generation requests being decoded");
  out << "llmtune_requests_running " << running_ << "\n";
  header(out, "llmtune_requests_waiting", "gauge", "generation requests queued for the worker");
  out << "llmtune_requests_waiting " << waiting_ << "\n";
  header(out, "llmtune_decode_steps_total", "counter", "batched decode steps (forward passes of one token per request)");
  out << "llmtune_decode_steps_total " << decode_steps_ << "\n";
  header(out, "llmtune_decode_rows_total", "counter", "requests advanced by those steps (rows / steps = mean batch size)");
  out << "llmtune_decode_rows_total " << decode_rows_ << "\n";
  auto histogram = [&](const char* name, const char* help, const Family& family, const std::vector<double>& bounds) {
    header(out, name, "histogram", help);
    for (const auto& [model, h] : family) {
      const std::string label = "model=\"" + escape(model) + "\"";
      uint64_t cumulative = 0;
      for (size_t i = 0; i <= bounds.size(); ++i) {
        cumulative += h.buckets[i];
        const double le = i < bounds.size() ? bounds[i] : INFINITY;
        out << name << "_bucket{" << label << ",le=\"" << number(le) << "\"} " << cumulative << "\n";
      }
      out << name << "_sum{" << label << "} " << number(h.sum) << "\n";
      out << name << "_count{" << label << "} " << h.count << "\n";
    }
  };
  histogram("llmtune_time_to_first_token_seconds", "from the request's arrival to its first generated token", ttft_,
            ttft_bounds_);
  histogram("llmtune_inter_token_latency_seconds", "between consecutive generated tokens of a request", itl_, itl_bounds_);
  histogram("llmtune_request_latency_seconds", "from a generation request's arrival to its last token", e2e_, e2e_bounds_);
  return out.str();
}

}  // namespace llmtune::serve
