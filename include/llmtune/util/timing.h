// Wall-clock timing for reports: seconds since a steady_clock time point (one definition for every
// pipeline that reports durations or throughput).
#pragma once

#include <chrono>

namespace llmtune {

using SteadyClock = std::chrono::steady_clock;

inline double seconds_since(SteadyClock::time_point start) {
  return std::chrono::duration<double>(SteadyClock::now() - start).count();
}

}  // namespace llmtune
