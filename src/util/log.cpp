// stderr logging through spdlog, and a once-only helper for fallbacks that must be said once.
#include "llmtune/util/log.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>

#include <mutex>
#include <set>
#include <string>

#include "llmtune/util/error.h"

namespace llmtune::log {

void init(std::string_view level) {
  auto logger = spdlog::stderr_color_mt("llmtune");
  logger->set_pattern("[%H:%M:%S] %^%l%$: %v");
  spdlog::set_default_logger(logger);
  set_level(level);
}

void set_level(std::string_view level) {
  auto parsed = spdlog::level::from_str(std::string(level));
  // from_str maps unknown names to "off"; only "off" itself may mean off.
  if (parsed == spdlog::level::off && level != "off") {
    throw ConfigError("unknown log level '" + std::string(level) +
                      "' (use trace, debug, info, warn, error or off)");
  }
  spdlog::set_level(parsed);
}

void add_file(const std::filesystem::path& path) {
  auto logger = spdlog::default_logger();
  try {
    auto sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path.string(), /*truncate=*/false);
    sink->set_pattern("[%Y-%m-%d %H:%M:%S] %l: %v");
    logger->sinks().push_back(sink);
  } catch (const spdlog::spdlog_ex& e) {
    throw IoError(path.string() + ": cannot open the log file (" + e.what() + ")");
  }
  logger->flush_on(spdlog::level::info);
}

bool first_time(std::string_view key) {
  static std::mutex mutex;
  static std::set<std::string, std::less<>> seen;
  std::lock_guard lock(mutex);
  return seen.emplace(key).second;
}

}  // namespace llmtune::log
