// Hostile safetensors files: every malformed layout is refused at open() with one IoError line
// naming the file and the problem, never a crash (these tests also run under AddressSanitizer).
#include <ATen/Functions.h>
#include <ATen/TensorOperators.h>
#include <gtest/gtest.h>

#include <optional>
#include <random>

#include "io/io_test_util.h"
#include "llmtune/io/safetensors.h"
#include "llmtune/util/error.h"

namespace llmtune::io {
namespace {

using llmtune::testing::read_bytes;
using llmtune::testing::TempDir;
using llmtune::testing::write_bytes;

// 8-byte little-endian header length (the real one unless given), header text, data bytes.
std::string file_bytes(const std::string& header, size_t n_data, std::optional<uint64_t> header_size = {}) {
  const uint64_t n = header_size.value_or(header.size());
  std::string out(8, '\0');
  std::memcpy(out.data(), &n, 8);
  out += header;
  for (size_t i = 0; i < n_data; ++i) out += static_cast<char>(i * 7 + 1);
  return out;
}

class SafetensorsMalformed : public ::testing::Test {
 protected:
  // Writes `bytes` and expects open() to fail with a one-line IoError naming the file and
  // containing `expected`.
  void expect_rejected(const std::string& bytes, const std::string& expected) {
    const auto path = dir_ / "bad.safetensors";
    write_bytes(path, bytes);
    try {
      SafetensorsFile::open(path);
      ADD_FAILURE() << "accepted a file that should fail with: " << expected;
    } catch (const IoError& e) {
      const std::string what = e.what();
      EXPECT_EQ(what.find('\n'), std::string::npos) << what;
      EXPECT_EQ(what.rfind(path.string() + ": ", 0), 0u) << what;
      EXPECT_NE(what.find(expected), std::string::npos) << what;
      EXPECT_EQ(what.back(), ')') << "no advice in: " << what;
      EXPECT_EQ(e.exit_code(), 1);
    }
  }
  void expect_header_rejected(const std::string& header, size_t n_data, const std::string& expected) {
    expect_rejected(file_bytes(header, n_data), expected);
  }
  TempDir dir_;
};

const std::string kGood = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";

TEST_F(SafetensorsMalformed, WellFormedControlOpens) {
  write_bytes(dir_ / "ok.safetensors", file_bytes(kGood, 8));
  EXPECT_EQ(SafetensorsFile::open(dir_ / "ok.safetensors")->names(), std::vector<std::string>{"a"});
}

TEST_F(SafetensorsMalformed, LeadingWhitespaceTrailingPaddingAndEmptyHeaderAreAccepted) {
  write_bytes(dir_ / "ws.safetensors", file_bytes(" \n\t" + kGood + "     ", 8));
  EXPECT_TRUE(SafetensorsFile::open(dir_ / "ws.safetensors")->contains("a"));
  write_bytes(dir_ / "empty.safetensors", file_bytes("{}", 0));
  EXPECT_TRUE(SafetensorsFile::open(dir_ / "empty.safetensors")->names().empty());
  write_bytes(dir_ / "nullmeta.safetensors", file_bytes(R"({"__metadata__":null})", 0));
  EXPECT_TRUE(SafetensorsFile::open(dir_ / "nullmeta.safetensors")->metadata().empty());
}

TEST_F(SafetensorsMalformed, EmptyFile) { expect_rejected("", "too short"); }
TEST_F(SafetensorsMalformed, TruncatedLength) { expect_rejected(std::string("\x10\0\0", 3), "too short"); }
TEST_F(SafetensorsMalformed, TruncatedData) { expect_header_rejected(kGood, 5, "past the end of the file"); }
TEST_F(SafetensorsMalformed, HeaderLengthPastEof) {
  expect_rejected(file_bytes(kGood, 8, kGood.size() + 100), "runs past the end");
}
TEST_F(SafetensorsMalformed, HeaderLengthOverLimit) {
  expect_rejected(file_bytes(kGood, 8, 100'000'001), "exceeds the limit");
  expect_rejected(file_bytes(kGood, 8, ~uint64_t{0}), "exceeds the limit");
}
TEST_F(SafetensorsMalformed, BadJson) { expect_header_rejected(R"({"a":{"dtype":)", 0, "not valid JSON"); }
TEST_F(SafetensorsMalformed, ZeroLengthHeader) { expect_header_rejected("", 0, "not valid JSON"); }
TEST_F(SafetensorsMalformed, InvalidUtf8) { expect_header_rejected("{\"a\xff\":{}}", 0, "not valid JSON"); }
TEST_F(SafetensorsMalformed, NulBytes) {
  expect_header_rejected(kGood + std::string(3, '\0'), 8, "NUL byte");
  expect_header_rejected(kGood + std::string(1, '\0') + "garbage", 8, "NUL byte");
}
TEST_F(SafetensorsMalformed, JsonArray) { expect_header_rejected("[1,2]", 0, "header is a JSON array, not an object"); }
TEST_F(SafetensorsMalformed, JsonString) { expect_header_rejected("\"x\"", 0, "not an object"); }
TEST_F(SafetensorsMalformed, DeepNesting) {
  expect_header_rejected(std::string(100000, '[') + std::string(100000, ']'), 0, "nests JSON deeper");
  expect_header_rejected(R"({"a":{"dtype":"F32","shape":[[2]],"data_offsets":[0,8]}})", 8, "nests JSON deeper");
}
TEST_F(SafetensorsMalformed, EntryNotAnObject) { expect_header_rejected(R"({"a":[1]})", 0, "tensor \"a\" is a JSON array"); }
TEST_F(SafetensorsMalformed, MissingField) {
  expect_header_rejected(R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", 8, "has no \"shape\" field");
  expect_header_rejected(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", 8, "has no \"dtype\" field");
  expect_header_rejected(R"({"a":{"dtype":"F32","shape":[2]}})", 8, "has no \"data_offsets\" field");
}
TEST_F(SafetensorsMalformed, ExtraField) {
  expect_header_rejected(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", 8, "unexpected field \"x\"");
}
TEST_F(SafetensorsMalformed, WrongTypes) {
  expect_header_rejected(R"({"a":{"dtype":5,"shape":[2],"data_offsets":[0,8]}})", 8, "dtype that is a JSON number");
  expect_header_rejected(R"({"a":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})", 8, "shape that is a JSON string");
  expect_header_rejected(R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", 8, "shape[0] is a JSON number, not an integer");
  expect_header_rejected(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 8, "not an array of two integers");
  expect_header_rejected(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":{"0":8}}})", 8, "not an array of two integers");
  expect_header_rejected(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":["0",8]}})", 8, "data_offsets[0] is a JSON string");
  expect_header_rejected(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,1e100]}})", 8, "data_offsets[1] is a JSON number");
  expect_header_rejected(R"({"a":{"dtype":"F32","shape":[null],"data_offsets":[0,8]}})", 8, "shape[0] is a JSON null");
}
TEST_F(SafetensorsMalformed, UnknownDtype) {
  expect_header_rejected(R"({"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", 8, "unknown dtype \"F33\"");
}
TEST_F(SafetensorsMalformed, UnsupportedDtype) {
  expect_header_rejected(R"({"a":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}})", 1, "unsupported dtype \"F4\"");
}
TEST_F(SafetensorsMalformed, NegativeShape) {
  expect_header_rejected(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8, "shape[0] is negative");
}
TEST_F(SafetensorsMalformed, NegativeOffset) {
  expect_header_rejected(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", 8, "data_offsets[0] is negative");
}
TEST_F(SafetensorsMalformed, ShapeOverflow) {
  expect_header_rejected(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8, "overflows");
  expect_header_rejected(R"({"a":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,8]}})", 8, "byte count overflows");
  expect_header_rejected(R"({"a":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,8]}})", 8, "too large");
}
TEST_F(SafetensorsMalformed, ByteCountMismatch) {
  expect_header_rejected(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8, "holds 8 bytes but dtype F32 and its shape need 12");
}
TEST_F(SafetensorsMalformed, BeginAfterEnd) {
  expect_header_rejected(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", 8, "BEGIN after END");
}
TEST_F(SafetensorsMalformed, OverlappingOffsets) {
  expect_header_rejected(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                         12, "tensor \"b\" overlaps tensor \"a\"");
}
TEST_F(SafetensorsMalformed, Hole) {
  expect_header_rejected(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})",
                         16, "data bytes 8..12 belong to no tensor");
  expect_header_rejected(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12, "data bytes 0..4 belong to no tensor");
}
TEST_F(SafetensorsMalformed, TrailingBytes) { expect_header_rejected(kGood, 9, "1 trailing bytes after the last tensor"); }
TEST_F(SafetensorsMalformed, DataWithoutTensors) { expect_header_rejected("{}", 4, "4 trailing bytes"); }
TEST_F(SafetensorsMalformed, DuplicateNames) {
  expect_header_rejected(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                         16, "duplicate tensor name \"a\"");
}
TEST_F(SafetensorsMalformed, DuplicateFieldInsideAnEntry) {
  expect_header_rejected(R"({"a":{"dtype":"F32","dtype":"F16","shape":[2],"data_offsets":[0,8]}})", 8, "duplicate key \"dtype\" inside \"a\"");
}
TEST_F(SafetensorsMalformed, NonStringMetadata) {
  expect_header_rejected(R"({"__metadata__":{"format":"pt","step":3}})", 0, "__metadata__ value of \"step\" is a JSON number");
  expect_header_rejected(R"({"__metadata__":{"a":{"b":"c"}}})", 0, "__metadata__ value of \"a\" is a JSON object");
  expect_header_rejected(R"({"__metadata__":["pt"]})", 0, "__metadata__ is a JSON array");
}
TEST_F(SafetensorsMalformed, NameWithNewlineStaysOneLine) {
  expect_header_rejected("{\"a\\nb\":{\"dtype\":\"F33\",\"shape\":[],\"data_offsets\":[0,4]}}", 4, "tensor \"a\\nb\"");
}

TEST_F(SafetensorsMalformed, NotARegularFileOrMissing) {
  EXPECT_THROW(SafetensorsFile::open(dir_.path()), IoError);
  EXPECT_THROW(SafetensorsFile::open(dir_ / "absent.safetensors"), IoError);
}

// Random corruption of a valid file: open() must either accept it (and then every tensor reads)
// or throw IoError; anything else (a crash, another exception, an ASan report) fails.
TEST_F(SafetensorsMalformed, RandomCorruptionNeverCrashes) {
  const auto good_path = dir_ / "good.safetensors";
  save_safetensors(good_path, {{"w", at::randn({3, 4})}, {"b", at::ones({5}, at::kHalf)}, {"s", at::tensor(7)}});
  const std::string good = read_bytes(good_path);
  std::mt19937 rng(1234);
  int accepted = 0;
  for (int iter = 0; iter < 1500; ++iter) {
    std::string bytes = good;
    const int n_flips = 1 + static_cast<int>(rng() % 4);
    for (int i = 0; i < n_flips; ++i) {
      // Mostly the length and header, where the parser works; sometimes anywhere.
      const size_t limit = (rng() % 4 == 0) ? bytes.size() : std::min<size_t>(bytes.size(), 140);
      bytes[rng() % limit] = static_cast<char>(rng() % 256);
    }
    if (rng() % 5 == 0) bytes.resize(rng() % bytes.size());
    const auto path = dir_ / "fuzz.safetensors";
    write_bytes(path, bytes);
    try {
      auto file = SafetensorsFile::open(path);
      for (const auto& name : file->names()) (void)file->tensor(name).sum();
      ++accepted;
    } catch (const IoError& e) {
      ASSERT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
    }
  }
  EXPECT_LT(accepted, 1500);  // the corruption did reach the parser
}

}  // namespace
}  // namespace llmtune::io
