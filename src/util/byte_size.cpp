// Byte sizes from config strings (merge's shard_size and the like).
#include "llmtune/util/byte_size.h"

#include <algorithm>
#include <cctype>
#include <map>

#include "llmtune/util/error.h"

namespace llmtune {

uint64_t parse_byte_size(const std::string& text, const std::string& key) {
  size_t pos = 0;
  while (pos < text.size() && (std::isdigit(static_cast<unsigned char>(text[pos])) || text[pos] == '.')) ++pos;
  std::string unit = text.substr(pos);
  std::transform(unit.begin(), unit.end(), unit.begin(), [](unsigned char c) { return std::toupper(c); });
  double value = 0;
  try {
    value = pos == 0 ? -1 : std::stod(text.substr(0, pos));
  } catch (const std::exception&) {
    value = -1;
  }
  static const std::map<std::string, double> units{{"", 1}, {"B", 1}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
                                                   {"KIB", 1024.0}, {"MIB", 1048576.0}, {"GIB", 1073741824.0}};
  auto it = units.find(unit);
  if (value <= 0 || it == units.end())
    throw ConfigError(key + ": '" + text + "' is not a size (use e.g. 5GB, 500MB, 2GiB or a byte count)");
  return static_cast<uint64_t>(value * it->second);
}

}  // namespace llmtune
