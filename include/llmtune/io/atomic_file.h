// Atomic outputs: a file is written under a temporary name in its target directory, flushed to disk
// and renamed into place, so readers see the old file or the complete new one, never a partial one.
#pragma once

#include <cstddef>
#include <filesystem>
#include <string_view>

namespace llmtune::io {

// Usage: AtomicFile f(path); f.write(...); ...; f.commit();
// Destroyed without commit() (an exception, an early return), it removes the temporary file and
// leaves `path` untouched. Errors throw IoError naming the target path. SIGINT, SIGTERM and SIGHUP,
// when nothing else handles them, remove the temporary files before the process dies of them; and
// temporaries of `path` left by a process that no longer runs (kill -9) are removed on the next write.
class AtomicFile {
 public:
  explicit AtomicFile(std::filesystem::path path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t n_bytes);
  // fsync, rename over `path`, fsync the directory (so the rename itself survives a crash).
  void commit();
  const std::filesystem::path& temp_path() const { return temp_path_; }

 private:
  std::filesystem::path path_, temp_path_;
  int fd_ = -1;
  int slot_ = -1;  // in the table of temporaries a signal removes
};

// Unlinks every AtomicFile temporary being written, now. Async-signal-safe: for a signal handler of
// one's own that ends the process (finetune's second Ctrl-C) to call before it does.
void remove_temporaries_now() noexcept;

// Whether `inner` is `outer` or lies below it, after resolving both (an output that would land in
// or over an input is refused with this).
bool same_or_inside(const std::filesystem::path& inner, const std::filesystem::path& outer);

// The whole of `content` into `path`, atomically.
void write_file_atomic(const std::filesystem::path& path, std::string_view content);

// A directory produced as a unit (a merged model, a checkpoint step): files are written into
// staging() (a sibling "<name>.tmp-<pid>-<n>" directory) and commit() moves it into place. An
// existing directory at `path` is moved aside first and removed after, so there is a short moment
// with no directory at `path`, but never a half-written one. Without commit(), staging is removed;
// stagings left by a process that no longer runs are removed when `path` is next written.
class AtomicDir {
 public:
  explicit AtomicDir(std::filesystem::path path);
  ~AtomicDir();
  AtomicDir(const AtomicDir&) = delete;
  AtomicDir& operator=(const AtomicDir&) = delete;

  const std::filesystem::path& staging() const { return staging_; }
  void commit();

 private:
  std::filesystem::path path_, staging_;
  bool committed_ = false;
};

}  // namespace llmtune::io
