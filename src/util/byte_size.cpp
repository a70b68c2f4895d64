// Byte sizes from config strings (merge's shard_size and the like).
#include "llmtune/util/byte_size.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <map>

#include "llmtune/util/error.h"

namespace llmtune {

uint64_t parse_byte_size(const std::string& text, const std::string& key) {
  size_t pos = 0;
  while (pos < text.size() && (std::isdigit(static_cast<unsigned char>(text[pos])) || text[pos] == '.')) ++pos;
  std::string unit = text.substr(pos);
  std::transform(unit.begin(), unit.end(), unit.begin(), [](unsigned char c) { return std::toupper(c); });
  double value = -1;
  if (pos > 0) {
    auto [end, ec] = std::from_chars(text.data(), text.data() + pos, value);
    if (end != text.data() + pos || (ec != std::errc() && ec != std::errc::result_out_of_range)) value = -1;
    else if (ec == std::errc::result_out_of_range) value = HUGE_VAL;
  }
  static const std::map<std::string, double> units{{"", 1}, {"B", 1}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
                                                   {"KIB", 1024.0}, {"MIB", 1048576.0}, {"GIB", 1073741824.0}};
  auto it = units.find(unit);
  if (!(value > 0) || it == units.end())
    throw ConfigError(key + ": '" + text + "' is not a size (use e.g. 5GB, 500MB, 2GiB or a byte count)");
  // Never wrapped: 20000000000GB would overflow 64 bits into a small size.
  const double bytes = value * it->second;
  if (!(bytes < 18446744073709551616.0))
    throw ConfigError(key + ": '" + text + "' is too large (at most 2^64 - 1 bytes, about 18.4 EB)");
  if (bytes < 1) throw ConfigError(key + ": '" + text + "' is less than one byte");
  return static_cast<uint64_t>(bytes);
}

}  // namespace llmtune
