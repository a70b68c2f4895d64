// Temp-name-then-rename writes for files and whole directories (see atomic_file.h).
#include "llmtune/io/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
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

}  // namespace

AtomicFile::AtomicFile(fs::path path) : path_(std::move(path)), temp_path_(sibling(path_, "tmp")) {
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd_ < 0) io_fail(path_, "cannot create a temporary file beside it", errno);
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(temp_path_.c_str());
  }
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
    io_fail(path_, "cannot rename the temporary file into place", err);
  }
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

}  // namespace llmtune::io
