// Running a sweep: each run's config checked by its own command first, then every run a child
// process of this binary (N at a time), its output in SWEEP_DIR/<name> and its log in
// SWEEP_DIR/logs/<name>.log; sweep.json keeps the table so that a re-run resumes.
#include <fcntl.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <torch/cuda.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "llmtune/io/atomic_file.h"
#include "llmtune/pipelines/sweep.h"
#include "llmtune/util/error.h"
#include "run_directory.h"

namespace llmtune::pipelines {
namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;
namespace {

volatile std::sig_atomic_t g_stop_signal = 0;
volatile std::sig_atomic_t g_signals_seen = 0;
void on_stop_signal(int sig) {
  g_stop_signal = sig;
  g_signals_seen = g_signals_seen + 1;
}

bool is_training(const std::string& command) { return command == "finetune" || command == "distill"; }

struct Child {
  pid_t pid = -1;
};

// Starts `exe args` with stdout and stderr into the given files (or a pipe's write end for stderr),
// in its own process group (a terminal's Ctrl-C reaches the sweep, which forwards it once), and
// SIGTERM when the sweep dies (a kill -9 of the sweep stops its runs cleanly, checkpointed).
pid_t spawn(const fs::path& exe, const std::vector<std::string>& args, int out_fd, int err_fd,
            const std::vector<std::pair<std::string, std::string>>& env) {
  std::vector<std::string> argv_text{exe.string()};
  argv_text.insert(argv_text.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_text) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) throw Error(std::string("sweep: cannot start a run (fork: ") + std::strerror(errno) + ")");
  if (pid == 0) {
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(127);
    int devnull = open("/dev/null", O_RDONLY);
    dup2(devnull, 0);
    dup2(out_fd, 1);
    dup2(err_fd, 2);
    for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// The last "llmtune: error: ..." line of a log, or "".
std::string last_error_line(const std::string& log) {
  std::istringstream lines(log);
  std::string last;
  for (std::string line; std::getline(lines, line);)
    if (line.starts_with("llmtune: error: ")) last = line.substr(16);
  return last;
}

std::string describe_exit(int status) {
  if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status)) + " (" + strsignal(WTERMSIG(status)) + ")";
  return "exit code " + std::to_string(WEXITSTATUS(status));
}

// The child's error lines with "command line 'key=value'" replaced by where the sweep set it.
std::vector<std::string> child_errors(const std::string& stderr_text, const SweepDefinition& d) {
  std::vector<std::string> out;
  std::istringstream lines(stderr_text);
  for (std::string line; std::getline(lines, line);) {
    if (!line.starts_with("llmtune: error: ")) continue;
    line = line.substr(16);
    for (const auto& [text, origin] : d.origins) {
      const std::string quoted = "command line '" + text + "'";
      if (auto at = line.find(quoted); at != std::string::npos) line.replace(at, quoted.size(), origin);
    }
    out.push_back(line);
  }
  return out;
}

struct Device {
  std::vector<std::string> per_slot;  // device=... per slot, or empty
  std::vector<std::pair<std::string, std::string>> env;
};

// --parallel N: on CUDA, slot i runs on cuda:i; on CPU, each run gets cores / N threads.
Device plan_devices(const SweepParams& p) {
  Device plan;
  if (p.parallel <= 1) return plan;
  std::string device = "auto";
  for (const auto& [k, v] : p.definition.base)
    if (k == "device") device = v;
  for (const auto& key : swept_keys(p.definition))
    if (key == "device") {
      spdlog::warn("sweep: --parallel {} with device swept: each run uses the device its values name", p.parallel);
      return plan;
    }
  const bool cuda = (device == "auto" || device == "cuda") && torch::cuda::is_available();
  if (cuda) {
    const int64_t n = static_cast<int64_t>(torch::cuda::device_count());
    if (p.parallel > n)
      throw UsageError("--parallel " + std::to_string(p.parallel) + " needs as many CUDA devices, this machine has " +
                       std::to_string(n) + ": lower --parallel (or set device: cpu)");
    for (int i = 0; i < p.parallel; ++i) plan.per_slot.push_back("device=cuda:" + std::to_string(i));
    spdlog::info("sweep: {} runs at a time, run slot i on cuda:i", p.parallel);
    return plan;
  }
  if (device != "auto" && device != "cpu")
    throw UsageError("--parallel " + std::to_string(p.parallel) + " with device " + device +
                     ": the runs would share one device; use --parallel 1, or device: cuda with as many GPUs");
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  const std::string threads = std::to_string(std::max(1u, cores / static_cast<unsigned>(p.parallel)));
  plan.env = {{"OMP_NUM_THREADS", threads}, {"MKL_NUM_THREADS", threads}};
  spdlog::info("sweep: {} runs at a time on the CPU, {} thread(s) each ({} cores)", p.parallel, threads, cores);
  return plan;
}

// sweep.json: the definition, and per run its status, exit, error, attempts and seconds.
struct State {
  fs::path dir;
  ojson json;
  void save() const { io::write_file_atomic(dir / "sweep.json", json.dump(2) + "\n"); }
  ojson& run(size_t i) { return json["runs"][i]; }
};

// Refuses a sweep directory that holds something else, or a sweep with other fixed settings.
State open_state(const SweepParams& p) {
  const SweepDefinition& d = p.definition;
  State s{d.output, sweep_definition_json(d, p.runs)};
  const fs::path file = d.output / "sweep.json";
  std::map<std::string, ojson> earlier;
  if (fs::exists(file)) {
    ojson old = ojson::parse(read_text(file), nullptr, false);
    if (!old.is_object() || !old.contains("base"))
      throw UsageError(file.string() + ": not a sweep state file llmtune wrote; choose another output");
    std::vector<std::string> differ;
    if (old.value("command", "") != d.command) differ.push_back("command " + old.value("command", "") + " → " + d.command);
    std::map<std::string, std::string> before, now;
    for (const auto& [k, v] : old["base"].items()) before[k] = v.get<std::string>();
    for (const auto& [k, v] : d.base) now[k] = v;
    for (const auto& [k, v] : now)
      if (!before.count(k) || before[k] != v) differ.push_back(k + ": " + (before.count(k) ? before[k] : "(unset)") + " → " + v);
    for (const auto& [k, v] : before)
      if (!now.count(k)) differ.push_back(k + ": " + v + " → (unset)");
    if (!differ.empty()) {
      std::string list;
      for (const auto& x : differ) list += (list.empty() ? "" : "; ") + x;
      throw UsageError(d.output.string() + " holds a sweep with other fixed settings (" + list +
                       "): its runs would not compare; choose another output, or restore them");
    }
    for (const auto& r : old["runs"]) earlier[r.value("name", "")] = r;
    // A run of the same name must have the same values (it holds their results).
    for (size_t i = 0; i < p.runs.size(); ++i) {
      auto it = earlier.find(p.runs[i].name);
      if (it == earlier.end()) continue;
      if (it->second["values"] != s.run(i)["values"])
        throw UsageError(d.output.string() + "/" + p.runs[i].name + " was run with other values (" + it->second["values"].dump() +
                         "); choose another output");
      for (const char* key : {"status", "exit", "error", "attempts", "seconds"})
        if (it->second.contains(key)) s.run(i)[key] = it->second[key];
    }
    size_t dropped = 0;
    for (const auto& entry : earlier) {
      const std::string& name = entry.first;
      dropped += std::none_of(p.runs.begin(), p.runs.end(), [&](const SweepRun& x) { return x.name == name; });
    }
    if (dropped) spdlog::info("sweep: {} run(s) of the earlier definition are not part of this one (left on disk, not in the summary)", dropped);
  } else if (fs::exists(d.output) && !fs::is_empty(d.output)) {
    throw UsageError(d.output.string() + " exists and is not a sweep directory (no sweep.json): choose another output");
  }
  for (size_t i = 0; i < p.runs.size(); ++i)
    if (!s.run(i).contains("status")) s.run(i)["status"] = "pending";
  return s;
}

}  // namespace

void validate_sweep(const SweepParams& p) {
  const SweepDefinition& d = p.definition;
  // Check j sets point j of every axis (the last point of a shorter one): a key's value is checked
  // on its own, so these few children find every problem the per-run configs would have.
  size_t longest = 1;
  for (const auto& axis : d.axes) longest = std::max(longest, axis.points.size());
  std::vector<SweepRun> checks;
  for (size_t j = 0; j < longest; ++j) {
    SweepRun r{"check", {}};
    for (const auto& axis : d.axes)
      for (size_t k = 0; k < axis.keys.size(); ++k)
        r.values.emplace_back(axis.keys[k], axis.points[std::min(j, axis.points.size() - 1)][k]);
    checks.push_back(r);
  }
  std::vector<std::string> problems;
  std::set<std::string> seen;
  const size_t batch = std::max(1u, std::thread::hardware_concurrency());
  for (size_t first = 0; first < checks.size(); first += batch) {
    std::vector<std::pair<pid_t, int>> running;
    for (size_t i = first; i < std::min(checks.size(), first + batch); ++i) {
      std::vector<std::string> args = run_arguments(d, checks[i]);
      args.back() = "--print-config";  // in place of --json
      int fds[2];
      if (pipe(fds) != 0) throw Error("sweep: cannot check the configs (pipe failed)");
      int devnull = open("/dev/null", O_WRONLY);
      running.emplace_back(spawn(p.exe, args, devnull, fds[1], {}), fds[0]);
      close(fds[1]);
      close(devnull);
    }
    for (auto [pid, fd] : running) {
      std::string text;
      char buf[4096];
      for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) text.append(buf, static_cast<size_t>(n));
      close(fd);
      int status = 0;
      waitpid(pid, &status, 0);
      if (WIFEXITED(status) && WEXITSTATUS(status) == 0) continue;
      auto lines = child_errors(text, d);
      if (lines.empty()) lines.push_back("llmtune " + d.command + " could not check the config (" + describe_exit(status) + ")");
      for (const auto& l : lines)
        if (seen.insert(l).second) problems.push_back(l);
    }
  }
  if (!problems.empty()) {
    std::string all;
    for (const auto& l : problems) all += (all.empty() ? "" : "\n") + l;
    throw ConfigError(all);
  }
}

ojson run_sweep(const SweepParams& p) {
  const SweepDefinition& d = p.definition;
  const Device devices = plan_devices(p);
  State state = open_state(p);
  fs::create_directories(d.output / "logs");
  state.save();

  struct sigaction sa{}, old_int{}, old_term{};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);

  struct Active {
    size_t run;
    int slot;
    std::chrono::steady_clock::time_point start;
  };
  std::map<pid_t, Active> active;
  std::vector<bool> slot_busy(std::max(1, p.parallel), false);
  size_t next = 0, skipped = 0;
  int forwarded = 0;

  auto launch = [&](size_t i, int slot) {
    const SweepRun& run = p.runs[i];
    const fs::path dir = d.output / run.name;
    std::vector<std::string> args = run_arguments(d, run);
    args.pop_back();  // --json last, after the device and run-directory flags
    // eval writes no directory, a GGUF quantization one file in it: the sweep makes the directory.
    const bool make_dir = d.command == "eval" || (d.command == "quantize" && args.back().ends_with(".gguf"));
    if (!devices.per_slot.empty()) args.push_back(devices.per_slot[slot]);
    if (is_training(d.command)) {
      if (fs::exists(dir / "run.json")) args.push_back("--resume");  // from the last checkpoint, or over when none
      else if (fs::exists(dir)) args.push_back("--force");
    } else if (d.command != "eval" && fs::exists(dir)) {
      args.push_back("force=true");
    }
    args.push_back("--json");
    if (make_dir) fs::create_directories(dir);
    const fs::path log = d.output / "logs" / (run.name + ".log");
    {
      std::ofstream header(log, std::ios::app);
      header << "### llmtune";
      for (const auto& a : args) header << " " << a;
      header << "\n";
    }
    int out_fd = open((d.output / "logs" / (run.name + ".json")).c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int err_fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (out_fd < 0 || err_fd < 0) throw IoError(log.string() + ": cannot write the run's log");
    const pid_t pid = spawn(p.exe, args, out_fd, err_fd, devices.env);
    close(out_fd);
    close(err_fd);
    active[pid] = {i, slot, std::chrono::steady_clock::now()};
    slot_busy[slot] = true;
    state.run(i)["status"] = "running";
    state.run(i)["attempts"] = state.run(i).value("attempts", 0) + 1;
    state.save();
    spdlog::info("sweep: run {}/{} {} started{}", i + 1, p.runs.size(), run.name,
                 args[args.size() - 2] == "--resume" ? " (resuming)" : "");
  };

  auto finish = [&](pid_t pid, int status) {
    const Active a = active.at(pid);
    active.erase(pid);
    slot_busy[a.slot] = false;
    const SweepRun& run = p.runs[a.run];
    const fs::path dir = d.output / run.name;
    ojson& r = state.run(a.run);
    r["exit"] = describe_exit(status);
    r["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - a.start).count();
    const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    std::string result;
    if (is_training(d.command)) {
      const std::string st = read_run_state(dir).value("state", "");
      result = st == "finished" ? "finished" : st == "interrupted" || (g_stop_signal && !ok) ? "interrupted" : "failed";
    } else {
      result = ok ? "finished" : g_stop_signal ? "interrupted" : "failed";
      if (ok) {
        fs::create_directories(dir);
        io::write_file_atomic(dir / "result.json", read_text(d.output / "logs" / (run.name + ".json")));
      }
    }
    r["status"] = result;
    r.erase("error");
    if (result == "failed") {
      std::string why = last_error_line(read_text(d.output / "logs" / (run.name + ".log")));
      r["error"] = why.empty() ? describe_exit(status) : why;
      spdlog::warn("sweep: run {} failed: {} (log: {})", run.name, r["error"].get<std::string>(),
                   (d.output / "logs" / (run.name + ".log")).string());
    } else {
      spdlog::info("sweep: run {} {}", run.name, result);
    }
    state.save();
  };

  while (true) {
    if (g_stop_signal && forwarded < g_signals_seen) {
      for (const auto& [pid, a] : active) kill(pid, g_stop_signal);
      forwarded = g_signals_seen;
    }
    while (!g_stop_signal && next < p.runs.size()) {
      int slot = -1;
      for (size_t s = 0; s < slot_busy.size(); ++s)
        if (!slot_busy[s]) {
          slot = static_cast<int>(s);
          break;
        }
      if (slot < 0) break;
      const size_t i = next++;
      const fs::path dir = d.output / p.runs[i].name;
      const bool done = is_training(d.command) ? fs::exists(dir) && run_finished(dir, read_run_state(dir))
                                               : state.run(i).value("status", "") == "finished" && fs::exists(dir / "result.json");
      if (done) {
        state.run(i)["status"] = "finished";
        ++skipped;
        continue;
      }
      launch(i, slot);
    }
    if (active.empty()) break;
    // Polled, so that a signal arriving at any moment is forwarded within 50 ms.
    int status = 0;
    const pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid < 0 && errno != EINTR) throw Error(std::string("sweep: waiting for a run failed (") + std::strerror(errno) + ")");
    if (pid > 0 && active.count(pid)) finish(pid, status);
    if (pid <= 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  state.save();
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  if (skipped) spdlog::info("sweep: {} run(s) already finished, not repeated", skipped);

  ojson table = summarize_runs(d.output);
  int failed = 0, unfinished = 0;
  for (const auto& r : state.json["runs"]) {
    failed += r["status"] == "failed";
    unfinished += r["status"] != "finished" && r["status"] != "failed";
  }
  table["failed"] = failed;
  table["interrupted"] = g_stop_signal != 0;
  if (g_stop_signal)
    spdlog::warn("sweep stopped by {}: {} run(s) not finished; continue with the same command (finished runs are not repeated)",
                 g_stop_signal == SIGTERM ? "SIGTERM" : "SIGINT", unfinished);
  return table;
}

}  // namespace llmtune::pipelines
