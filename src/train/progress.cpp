// Metrics file, progress line and stop signals.
#include "llmtune/train/progress.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <sstream>
#include <vector>

#include "llmtune/io/atomic_file.h"
#include "llmtune/train/tensorboard.h"
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

MetricsLog::MetricsLog(const fs::path& path, int64_t keep_through_step, bool drop_evals_at_last)
    : plot_path_(path.parent_path() / "loss.svg"), plot_(path.parent_path().filename().string()) {
  auto dropped = [&](int64_t step, bool eval) {
    return keep_through_step < 0 || step > keep_through_step || (drop_evals_at_last && step == keep_through_step && eval);
  };
  std::string kept;
  if (keep_through_step >= 0) {
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
      auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (!j.is_object() || !j.contains("step") || !j["step"].is_number_integer()) continue;
      if (dropped(j["step"].get<int64_t>(), j.contains("eval_loss"))) continue;
      kept += line + '\n';
      plot_.add(j);
    }
  }
  io::write_file_atomic(path, kept);  // a kill here leaves the old file or the new one, never a cut
  out_.open(path, std::ios::app);
  if (!out_) throw IoError(path.string() + ": cannot write the metrics file");
  // The event files mirror it: the same records dropped from the earlier ones, the rest in a new one.
  const fs::path tb = path.parent_path() / "tb";
  filter_event_files(tb, [&](const ScalarEvent& e) {
    return dropped(e.step, std::any_of(e.scalars.begin(), e.scalars.end(), [](const auto& s) { return s.first == "eval_loss"; }));
  });
  events_ = std::make_unique<EventWriter>(tb);
}

MetricsLog::~MetricsLog() {
  try {
    draw_plot();
  } catch (const std::exception& e) {
    spdlog::warn("{}: {}", plot_path_.string(), e.what());
  }
}

void MetricsLog::write(const nlohmann::json& record) {
  out_ << record.dump() << '\n';
  out_.flush();
  // Exactly the numbers of the line: a NaN or infinity is written to it as null, so is left out here.
  Scalars scalars;
  for (const auto& [key, value] : record.items()) {
    if (key == "step") continue;
    if (value.is_number() && std::isfinite(value.get<double>())) scalars.emplace_back(key, static_cast<float>(value.get<double>()));
    else if (value.is_boolean()) scalars.emplace_back(key, value.get<bool>() ? 1.0f : 0.0f);
  }
  if (!scalars.empty()) events_->write(record.at("step").get<int64_t>(), scalars);
  plot_.add(record);
  if (record.contains("eval_loss")) draw_plot();
}

void MetricsLog::draw_plot() { io::write_file_atomic(plot_path_, plot_.svg()); }

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
