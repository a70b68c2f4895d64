// Helpers for the GGUF tests: deterministic random bytes and the IoError expectation.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <random>
#include <string>

#include "llmtune/util/error.h"

namespace llmtune::testing {

inline std::string random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string out(n, '\0');
  for (auto& c : out) c = static_cast<char>(rng() & 0xFF);
  return out;
}

// Expects `f` to throw an IoError whose one-line message starts with the file and contains `what`.
template <typename F>
void expect_io_error(const std::filesystem::path& path, const std::string& what, F&& f) {
  try {
    f();
    ADD_FAILURE() << "no IoError; expected: " << what;
  } catch (const IoError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind(path.string() + ": ", 0), 0u) << msg;
    EXPECT_NE(msg.find(what), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

}  // namespace llmtune::testing
