// Metrics file, progress line and stop signals.
#include "llmtune/train/progress.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <sstream>
#include <vector>

#include "llmtune/io/atomic_file.h"
#include "llmtune/util/error.h"

namespace llmtune::train {
namespace fs = std::filesystem;
namespace {

volatile std::sig_atomic_t g_stop_signal = 0;

void on_stop_signal(int sig) {
  if (g_stop_signal != 0 && sig == SIGINT) {
    io::remove_temporaries_now();  // a half-written output's temporary goes with the process
    std::signal(SIGINT, SIG_DFL);
    std::raise(SIGINT);
    return;
  }
  g_stop_signal = sig;
}

std::string format_duration(double seconds) {
  if (seconds < 0 || seconds > 1e8) return "?";
  auto s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%lldh%02lldm", static_cast<long long>(s / 3600), static_cast<long long>(s % 3600 / 60));
  else std::snprintf(buf, sizeof buf, "%lldm%02llds", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  return buf;
}

}  // namespace

MetricsLog::MetricsLog(const fs::path& path, int64_t keep_through_step, bool drop_evals_at_last) {
  std::string kept;
  if (keep_through_step >= 0) {
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
      auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (!j.is_object() || !j.contains("step") || !j["step"].is_number_integer()) continue;
      const int64_t step = j["step"].get<int64_t>();
      if (step > keep_through_step || (drop_evals_at_last && step == keep_through_step && j.contains("eval_loss"))) continue;
      kept += line + '\n';
    }
  }
  io::write_file_atomic(path, kept);  // a kill here leaves the old file or the new one, never a cut
  out_.open(path, std::ios::app);
  if (!out_) throw IoError(path.string() + ": cannot write the metrics file");
}

void MetricsLog::write(const nlohmann::json& record) {
  out_ << record.dump() << '\n';
  out_.flush();
}

Progress::Progress(int64_t total_steps, int64_t log_every, bool quiet)
    : total_steps_(total_steps), log_every_(log_every > 0 ? log_every : 10), tty_(::isatty(STDERR_FILENO) != 0),
      quiet_(quiet) {}

void Progress::update(int64_t step, double loss, double lr, double grad_norm, double tokens_per_second,
                      double elapsed_seconds, double run_seconds_this_process, int64_t steps_this_process) {
  if (quiet_) return;
  const double per_step = steps_this_process > 0 ? run_seconds_this_process / static_cast<double>(steps_this_process) : 0;
  const double eta = per_step * static_cast<double>(total_steps_ - step);
  char buf[256];
  std::snprintf(buf, sizeof buf, "step %lld/%lld  loss %.4f  lr %.3g  grad_norm %.3g  %.0f tok/s  elapsed %s  eta %s",
                static_cast<long long>(step), static_cast<long long>(total_steps_), loss, lr, grad_norm,
                tokens_per_second, format_duration(elapsed_seconds).c_str(), format_duration(eta).c_str());
  if (tty_) {
    std::fprintf(stderr, "\r\033[K%s", buf);
    std::fflush(stderr);
    line_open_ = true;
  } else if (step % log_every_ == 0 || step == total_steps_ || step == 1) {
    spdlog::info("{}", buf);
  }
}

void Progress::message(const std::string& line) {
  if (line_open_) {
    std::fprintf(stderr, "\n");
    line_open_ = false;
  }
  spdlog::info("{}", line);
}

void Progress::finish() {
  if (line_open_) std::fprintf(stderr, "\n");
  line_open_ = false;
}

void install_stop_signals() {
  struct sigaction sa{};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

bool stop_requested() { return g_stop_signal != 0; }
int stop_signal() { return static_cast<int>(g_stop_signal); }

}  // namespace llmtune::train
