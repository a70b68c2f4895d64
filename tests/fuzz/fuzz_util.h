// Shared by the fuzz targets: one-time setup, a scratch directory for parsers that read files, a
// tiny byte-level tokenizer, and the rule for which exceptions are expected.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <typeinfo>
#include <vector>

#include "llmtune/tokenizer/tokenizer.h"
#include "llmtune/util/error.h"

namespace llmtune::fuzz {

// Logging off (parsers warn about odd but valid input; that is noise at 10^4 inputs a second).
void init();

// A per-process directory on tmpfs when there is one (/dev/shm), removed at exit.
const std::filesystem::path& scratch_dir();
// Writes `bytes` to scratch_dir()/name (replacing it) and returns the path.
std::filesystem::path write_scratch(const std::string& name, std::string_view bytes);

// The input split at NUL bytes (no JSON, YAML or template text holds one): part 0 is the main
// file, the others are side inputs (a tokenizer_config.json, key=value overrides, ...).
std::vector<std::string_view> split_at_nul(std::string_view input, size_t max_parts);

// A byte-level BPE tokenizer with no merges (every byte one token), <s>=256 as BOS and </s>=257
// as EOS, loaded once from files written to the scratch directory.
const tokenizer::Tokenizer& byte_tokenizer();

// True when the environment variable `name` is "1".
bool env_flag(const char* name);

// Runs `f`. llmtune errors are what hostile input should produce: ignored. Any other
// std::exception reaches the user as one line through main's catch-all, so it is not a crash
// either; with LLMTUNE_FUZZ_STRICT=1 it aborts, to hunt raw library messages (nlohmann, c10,
// std::out_of_range) that name neither the file nor the key. Anything else (not a
// std::exception) escapes and ends the process: a finding. LLMTUNE_FUZZ_VERBOSE=1 prints every
// caught message (to see how far a seed gets).
template <class F>
void guarded(F&& f) {
  static const bool strict = env_flag("LLMTUNE_FUZZ_STRICT"), verbose = env_flag("LLMTUNE_FUZZ_VERBOSE");
  try {
    f();
  } catch (const Error& e) {
    if (verbose) std::fprintf(stderr, "fuzz: %s\n", e.what());
  } catch (const std::exception& e) {
    if (verbose) std::fprintf(stderr, "fuzz: %s: %s\n", typeid(e).name(), e.what());
    if (strict) {
      std::fprintf(stderr, "fuzz: exception other than llmtune::Error: %s: %s\n", typeid(e).name(), e.what());
      std::abort();
    }
  }
}

}  // namespace llmtune::fuzz
