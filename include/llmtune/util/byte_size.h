// Sizes people write in configs ("5GB", "500MB", "2GiB", a byte count) turned into bytes.
#pragma once

#include <cstdint>
#include <string>

namespace llmtune {

// Decimal units (KB, MB, GB, TB, as transformers' max_shard_size) and binary ones (KiB, MiB, GiB),
// case-insensitive; no unit or B means bytes. Anything else, or a size that is not positive, is a
// ConfigError naming `key`.
uint64_t parse_byte_size(const std::string& text, const std::string& key);

}  // namespace llmtune
