// What a run reports while it trains: metrics.jsonl (one JSON object per logged step or eval,
// flushed as written) with the same scalars in TensorBoard event files (tb/) and a loss curve
// (loss.svg), a progress line with ETA on a terminal or plain log lines otherwise, and the signals
// (SIGINT/SIGTERM) that ask the loop to stop after the current step.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "llmtune/train/loss_plot.h"

namespace llmtune::train {

class EventWriter;

class MetricsLog {
 public:
  // Opens `path` for appending. On resume, lines with "step" > keep_through_step are dropped
  // first (the file rewritten atomically), so that it matches an uninterrupted run's
  // (keep_through_step < 0: start empty). drop_evals_at_last also drops the evaluation records at
  // keep_through_step: a run finished from its last checkpoint evaluates again.
  // Beside `path`: tb/ gets a new events file (the earlier ones lose the same records, so that no
  // step appears twice) and loss.svg the curve of the kept and new records.
  MetricsLog(const std::filesystem::path& path, int64_t keep_through_step, bool drop_evals_at_last = false);
  // Draws loss.svg a last time (the end of a run, finished, interrupted or failed).
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;
  // One line of metrics.jsonl and one TensorBoard event holding each of its numbers (as float32,
  // tagged with its key) at its "step"; an evaluation record redraws loss.svg.
  void write(const nlohmann::json& record);

 private:
  void draw_plot();
  std::ofstream out_;
  std::unique_ptr<EventWriter> events_;
  std::filesystem::path plot_path_;
  LossPlot plot_;
};

// Progress for `total_steps` optimizer steps: on a terminal, one line rewritten in place
// (step, loss, lr, tokens/s, ETA); otherwise a log line every `log_every` steps.
class Progress {
 public:
  Progress(int64_t total_steps, int64_t log_every, bool quiet);
  void update(int64_t step, double loss, double lr, double grad_norm, double tokens_per_second, double elapsed_seconds,
              double run_seconds_this_process, int64_t steps_this_process);
  void message(const std::string& line);  // ends the in-place line first
  void finish();

 private:
  int64_t total_steps_, log_every_;
  bool tty_, quiet_, line_open_ = false;
};

// SIGINT / SIGTERM set a flag instead of killing the process; a second SIGINT kills it.
void install_stop_signals();
bool stop_requested();
int stop_signal();  // the signal number that asked to stop, 0 when none

}  // namespace llmtune::train
