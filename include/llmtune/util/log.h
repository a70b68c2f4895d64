// Logging through spdlog, to stderr (stdout is for results). One logger for the whole program.
#pragma once

#include <spdlog/spdlog.h>

#include <filesystem>
#include <string_view>

namespace llmtune::log {

// Sets up the stderr logger; `level` is trace|debug|info|warn|error|off.
void init(std::string_view level = "info");
void set_level(std::string_view level);
// Also writes every log line to `path` (appending), e.g. a run directory's train.log.
void add_file(const std::filesystem::path& path);

// Once-per-process messages, keyed by `key` (for "No silent behaviour": a fallback is said once).
bool first_time(std::string_view key);

}  // namespace llmtune::log
