// Internals shared by the safetensors reader and writer (src/io only): the dtype table and the
// one-line error helper.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace llmtune::io::detail {

// One row per dtype string of FORMATS.md §1.2. `rank` is the position in the Rust enum, which the
// writer sorts by; `bits` is the element size. `torch` is Undefined where libtorch has no
// byte-addressable equivalent (F4, F6_*): such files are refused as "unsupported dtype".
struct DtypeRow {
  std::string_view name;
  int rank;
  int bits;
  c10::ScalarType torch;
};

// nullptr when `name` is not a safetensors dtype at all.
const DtypeRow* find_dtype(std::string_view name);
// nullptr when no safetensors dtype stores `t`.
const DtypeRow* find_dtype(c10::ScalarType t);
// "F32, F16, ..." for error messages.
std::string supported_dtypes();

// `s` as a JSON string literal: quoted and escaped, so a hostile name keeps a message on one line.
std::string quoted(std::string_view s);

// Throws IoError "<path>: <what> (<remedy>)", with line breaks escaped so it stays one line.
[[noreturn]] void fail(const std::filesystem::path& path, const std::string& what, const std::string& remedy);

// A whole file mapped read-only (MAP_PRIVATE); the descriptor is already closed, the mapping lasts
// until munmap(data, size).
struct Mapping {
  void* data = nullptr;
  uint64_t size = 0;
};
// Maps `path`, failing (IoError naming the file) when it cannot be opened, is not a regular file
// ("not a regular file (<pass_what>)") or is shorter than min_bytes ("file is N bytes, <too_short>
// (<remedy>)").
Mapping map_file(const std::filesystem::path& path, uint64_t min_bytes, const std::string& pass_what,
                 const std::string& too_short, const std::string& remedy);

}  // namespace llmtune::io::detail
