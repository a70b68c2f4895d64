// The server's counters, gauges and histograms, rendered in the Prometheus text exposition format
// (version 0.0.4): one HELP and TYPE line per family, cumulative histogram buckets ending in +Inf.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace llmtune::serve {

class Metrics {
 public:
  Metrics();

  // One finished HTTP request (any path; paths outside the API are counted as "other").
  void count_request(const std::string& endpoint, int status);
  void count_tokens(const std::string& model, int64_t prompt_tokens, int64_t generated_tokens);
  void observe_time_to_first_token(const std::string& model, double seconds);
  void observe_inter_token_latency(const std::string& model, double seconds);
  void observe_request_latency(const std::string& model, double seconds);
  void set_queue(int64_t running, int64_t waiting);
  // One batched decode step over `rows` requests.
  void count_decode_step(int64_t rows);

  std::string render() const;

 private:
  struct Histogram {
    std::vector<uint64_t> buckets;  // non-cumulative counts per bound, the last one +Inf
    double sum = 0;
    uint64_t count = 0;
  };
  using Family = std::map<std::string, Histogram>;  // by model label
  void observe(Family& family, const std::vector<double>& bounds, const std::string& model, double value);

  mutable std::mutex mutex_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  std::map<std::string, uint64_t> prompt_tokens_, generated_tokens_;
  Family ttft_, itl_, e2e_;
  std::vector<double> ttft_bounds_, itl_bounds_, e2e_bounds_;
  int64_t running_ = 0, waiting_ = 0;
  uint64_t decode_steps_ = 0, decode_rows_ = 0;
};

}  // namespace llmtune::serve
