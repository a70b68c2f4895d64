// Temp-name-then-rename writes for files and whole directories (see atomic_file.h).
#include "llmtune/io/atomic_file.h"

#include <algorithm>
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <charconv>
#include <climits>
#include <csignal>
#include <cstring>
#include <mutex>
#include <string>

#include "llmtune/util/error.h"

namespace llmtune::io {
namespace {

namespace fs = std::filesystem;

[[noreturn]] void io_fail(const fs::path& path, const std::string& what, int err) {
  throw IoError(path.string() + ": " + what + ": " + std::strerror(err) + " (check free disk space and permissions)");
}

// A sibling name no other writer in this or another process uses at the same time.
fs::path sibling(const fs::path& path, const char* kind) {
  static std::atomic<unsigned> counter{0};
  return path.parent_path() / ("." + path.filename().string() + "." + kind + "-" + std::to_string(::getpid()) +
                               "-" + std::to_string(counter++));
}

void fsync_path(const fs::path& path, int flags) {
  int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0) io_fail(path, "cannot open for fsync", errno);
  // Some filesystems refuse fsync on directories (EINVAL); there is nothing more to do there.
  if (::fsync(fd) != 0 && errno != EINVAL) {
    int err = errno;
    ::close(fd);
    io_fail(path, "fsync failed", err);
  }
  ::close(fd);
}

fs::path parent_or_dot(const fs::path& path) { return path.has_parent_path() ? path.parent_path() : fs::path("."); }

// Temporary files being written, for the signal handler: fixed slots of plain bytes, so that it
// reads them without locks or allocation. state: 0 free, 1 being filled or emptied, 2 live.
struct TempSlot {
  std::atomic<int> state{0};
  char path[PATH_MAX];
};
constexpr int kTempSlots = 64;
TempSlot g_temp_slots[kTempSlots];
constexpr int kCleanupSignals[] = {SIGINT, SIGTERM, SIGHUP};

void remove_temporaries_and_reraise(int sig) {
  remove_temporaries_now();
  struct sigaction dfl{};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(sig, &dfl, nullptr);
  raise(sig);  // dies of the signal, as it would have without this handler
}

// Installed once, for the signals nobody else handles (finetune's stop handler stays in charge).
void install_cleanup_handlers() {
  static std::once_flag once;
  std::call_once(once, [] {
    for (int sig : kCleanupSignals) {
      struct sigaction current{};
      if (sigaction(sig, nullptr, &current) != 0 || current.sa_handler != SIG_DFL) continue;
      struct sigaction sa{};
      sa.sa_handler = remove_temporaries_and_reraise;
      sigemptyset(&sa.sa_mask);
      sigaction(sig, &sa, nullptr);
    }
  });
}

int register_temporary(const fs::path& path) {
  const std::string& text = path.native();
  if (text.size() >= PATH_MAX) return -1;
  install_cleanup_handlers();
  for (int i = 0; i < kTempSlots; ++i) {
    int expected = 0;
    if (!g_temp_slots[i].state.compare_exchange_strong(expected, 1)) continue;
    std::memcpy(g_temp_slots[i].path, text.c_str(), text.size() + 1);
    g_temp_slots[i].state.store(2);
    return i;
  }
  return -1;  // more than 64 at once: that one is only removed as stale by the next run
}

void unregister_temporary(int slot) {
  if (slot >= 0) g_temp_slots[slot].state.store(0);
}

// Siblings ".<name>.tmp-<pid>-<n>" (and ".<name>.old-<pid>-<n>" when `path` exists, a replaced
// directory whose removal was cut short) left by a process that no longer runs: an llmtune killed
// while writing `path`. Removed before the next write of `path`.
void remove_stale_siblings(const fs::path& path) {
  std::error_code ec;
  const fs::path dir = parent_or_dot(path);
  const std::string base = "." + path.filename().string() + ".";
  const bool target_exists = fs::exists(path, ec);
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (!name.starts_with(base)) continue;
    std::string_view rest = std::string_view(name).substr(base.size());
    if (!(rest.starts_with("tmp-") || (target_exists && rest.starts_with("old-")))) continue;
    rest.remove_prefix(4);
    pid_t pid = 0;
    auto [end_pid, err] = std::from_chars(rest.data(), rest.data() + rest.size(), pid);
    if (err != std::errc() || end_pid == rest.data() + rest.size() || *end_pid != '-' || pid <= 0) continue;
    if (pid == ::getpid() || ::kill(pid, 0) == 0 || errno != ESRCH) continue;  // its writer may still run
    std::error_code rm;
    fs::remove_all(it->path(), rm);
    if (!rm) spdlog::info("removed {}: a temporary left by an interrupted llmtune (pid {})", it->path().string(), pid);
  }
}

}  // namespace

void remove_temporaries_now() noexcept {
  for (auto& slot : g_temp_slots)
    if (slot.state.load() == 2) ::unlink(slot.path);
}

AtomicFile::AtomicFile(fs::path path) : path_(std::move(path)), temp_path_(sibling(path_, "tmp")) {
  remove_stale_siblings(path_);
  slot_ = register_temporary(temp_path_);
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    int err = errno;
    unregister_temporary(slot_);
    io_fail(path_, "cannot create a temporary file beside it", err);
  }
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(temp_path_.c_str());
  }
  unregister_temporary(slot_);
}

void AtomicFile::write(const void* data, size_t n_bytes) {
  if (fd_ < 0) throw IoError(path_.string() + ": write after commit (a bug in llmtune; please report it)");
  const auto* p = static_cast<const char*>(data);
  while (n_bytes > 0) {
    ssize_t n = ::write(fd_, p, n_bytes);
    if (n < 0) {
      if (errno == EINTR) continue;
      io_fail(path_, "write failed", errno);
    }
    p += n;
    n_bytes -= static_cast<size_t>(n);
  }
}

void AtomicFile::commit() {
  if (fd_ < 0) throw IoError(path_.string() + ": committed twice (a bug in llmtune; please report it)");
  if (::fsync(fd_) != 0) io_fail(path_, "fsync failed", errno);
  int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    int err = errno;
    ::unlink(temp_path_.c_str());
    io_fail(path_, "close failed", err);
  }
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    int err = errno;
    ::unlink(temp_path_.c_str());
    unregister_temporary(slot_);
    slot_ = -1;
    io_fail(path_, "cannot rename the temporary file into place", err);
  }
  unregister_temporary(slot_);  // (a signal between the rename and here unlinks a name that is gone)
  slot_ = -1;
  fsync_path(parent_or_dot(path_), O_RDONLY | O_DIRECTORY);
}

void write_file_atomic(const fs::path& path, std::string_view content) {
  AtomicFile file(path);
  file.write(content.data(), content.size());
  file.commit();
}

AtomicDir::AtomicDir(fs::path path) : path_(std::move(path)), staging_(sibling(path_, "tmp")) {
  std::error_code ec;
  fs::create_directories(parent_or_dot(path_), ec);
  if (ec) throw IoError(path_.string() + ": cannot create its parent directory: " + ec.message() + " (check permissions)");
  remove_stale_siblings(path_);
  fs::create_directory(staging_, ec);
  if (ec) throw IoError(staging_.string() + ": cannot create a staging directory: " + ec.message() + " (check permissions)");
}

AtomicDir::~AtomicDir() {
  if (!committed_) {
    std::error_code ec;
    fs::remove_all(staging_, ec);
  }
}

void AtomicDir::commit() {
  std::error_code ec;
  for (const auto& entry : fs::recursive_directory_iterator(staging_, ec))
    if (entry.is_regular_file()) fsync_path(entry.path(), O_RDONLY);
  fs::path old;
  if (fs::exists(path_)) {
    old = sibling(path_, "old");
    if (::rename(path_.c_str(), old.c_str()) != 0) io_fail(path_, "cannot move the existing directory aside", errno);
  }
  if (::rename(staging_.c_str(), path_.c_str()) != 0) {
    int err = errno;
    if (!old.empty()) ::rename(old.c_str(), path_.c_str());  // put the previous output back
    io_fail(path_, "cannot rename the staging directory into place", err);
  }
  committed_ = true;
  fsync_path(parent_or_dot(path_), O_RDONLY | O_DIRECTORY);
  if (!old.empty()) fs::remove_all(old, ec);
}

bool same_or_inside(const std::filesystem::path& inner, const std::filesystem::path& outer) {
  const std::filesystem::path a = std::filesystem::weakly_canonical(inner), b = std::filesystem::weakly_canonical(outer);
  return std::mismatch(b.begin(), b.end(), a.begin(), a.end()).first == b.end();
}

}  // namespace llmtune::io
