// Byte sizes from config strings (merge's shard_size): decimal and binary units, and the errors.
#include <gtest/gtest.h>

#include "llmtune/util/byte_size.h"
#include "llmtune/util/error.h"

namespace llmtune {
namespace {

TEST(ByteSize, UnitsAsTransformersWritesThem) {
  EXPECT_EQ(parse_byte_size("5GB", "shard_size"), 5'000'000'000ull);
  EXPECT_EQ(parse_byte_size("500mb", "shard_size"), 500'000'000ull);
  EXPECT_EQ(parse_byte_size("2GiB", "shard_size"), 2ull << 30);
  EXPECT_EQ(parse_byte_size("1.5KiB", "shard_size"), 1536ull);
  EXPECT_EQ(parse_byte_size("1000000", "shard_size"), 1'000'000ull);
  EXPECT_EQ(parse_byte_size("200KB", "shard_size"), 200'000ull);
}

TEST(ByteSize, AnythingElseNamesTheKey) {
  for (const char* bad : {"", "GB", "-5GB", "0", "5 GB", "5XB", "five"}) {
    try {
      parse_byte_size(bad, "shard_size");
      ADD_FAILURE() << bad;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("shard_size: '"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace llmtune
