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
  for (const char* bad : {"", "GB", "-5GB", "0", "5 GB", "5XB", "five", "1.2.3GB", "0.5", "20000000000GB",
                          "99999999999999999999999", "1e5"}) {
    try {
      parse_byte_size(bad, "shard_size");
      ADD_FAILURE() << bad;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("shard_size: '"), std::string::npos) << e.what();
    }
  }
}

TEST(ByteSize, OverflowIsRefusedNeverWrapped) {
  try {
    parse_byte_size("20000000000GB", "shard_size");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("too large"), std::string::npos) << e.what();
  }
  EXPECT_EQ(parse_byte_size("18000000000GB", "shard_size"), 18'000'000'000'000'000'000ull);
}

}  // namespace
}  // namespace llmtune
