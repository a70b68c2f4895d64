// Reading a whole small file for read_text_file / read_json_file (their errors are in the header).
#include "llmtune/io/read_file.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace llmtune::io::detail {

namespace {
constexpr uintmax_t kMaxFileBytes = uintmax_t{2} << 30;  // configs, templates and tokenizer files are far smaller
}  // namespace

std::string read_file_bytes(const std::filesystem::path& path, std::string* why_not) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    *why_not = "it is a directory";
    return {};
  }
  const uintmax_t size = std::filesystem::file_size(path, ec);
  if (ec) {
    *why_not = ec == std::errc::no_such_file_or_directory ? "no such file" : ec.message();
    return {};
  }
  if (size > kMaxFileBytes) {
    *why_not = "the file is too large (" + std::to_string(size) + " bytes)";
    return {};
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *why_not = std::strerror(errno);
    return {};
  }
  std::ostringstream text;
  text << in.rdbuf();
  why_not->clear();
  return text.str();
}

}  // namespace llmtune::io::detail
