// Opening and memory-mapping a whole file, shared by the safetensors and GGUF readers.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "safetensors_detail.h"

namespace llmtune::io::detail {

Mapping map_file(const std::filesystem::path& path, uint64_t min_bytes, const std::string& pass_what,
                 const std::string& too_short, const std::string& remedy) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, std::string("cannot open: ") + std::strerror(errno), "check the path and its permissions");
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path, "not a regular file", pass_what);
  }
  const auto file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < min_bytes) {
    ::close(fd);
    fail(path, "file is " + std::to_string(file_size) + " bytes, " + too_short, remedy);
  }
  void* map = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);  // the mapping stays valid without the descriptor
  if (map == MAP_FAILED) fail(path, std::string("cannot map the file: ") + std::strerror(map_errno), "check free memory and ulimit -v");
  return {map, file_size};
}

}  // namespace llmtune::io::detail
