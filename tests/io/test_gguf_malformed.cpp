// Hostile GGUF files: every malformed layout is refused at open() with one IoError line naming the
// file and the problem, never a crash or a huge allocation (these tests also run under ASan+UBSan).
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "io/io_test_util.h"
#include "llmtune/io/gguf.h"
#include "llmtune/util/error.h"

namespace llmtune::io {
namespace {

namespace fs = std::filesystem;
using llmtune::testing::read_bytes;
using llmtune::testing::TempDir;
using llmtune::testing::write_bytes;

// Little-endian GGUF bytes, field by field, so each test can put a lie exactly where it wants.
struct Bytes {
  std::string out;
  Bytes& u8(uint8_t v) { return raw(&v, 1); }
  Bytes& u32(uint32_t v) { return raw(&v, 4); }
  Bytes& u64(uint64_t v) { return raw(&v, 8); }
  Bytes& str(const std::string& s) {
    u64(s.size());
    out += s;
    return *this;
  }
  Bytes& header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    out += "GGUF";
    return u32(version).u64(n_tensors).u64(n_kv);
  }
  Bytes& kv_u32(const std::string& key, uint32_t v) { return str(key).u32(4).u32(v); }
  Bytes& kv_str(const std::string& key, const std::string& v) { return str(key).u32(8).str(v); }
  Bytes& tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type, uint64_t offset) {
    str(name).u32(static_cast<uint32_t>(ne.size()));
    for (uint64_t d : ne) u64(d);
    return u32(type).u64(offset);
  }
  Bytes& pad(size_t alignment = 32) {
    while (out.size() % alignment != 0) out += '\0';
    return *this;
  }
  Bytes& data(size_t n) {
    for (size_t i = 0; i < n; ++i) out += static_cast<char>(i * 13 + 7);
    return *this;
  }
  Bytes& raw(const void* p, size_t n) {
    out.append(static_cast<const char*>(p), n);
    return *this;
  }
};

class GgufMalformed : public ::testing::Test {
 protected:
  // Writes `bytes` and expects open() to fail with a one-line IoError that starts with the file,
  // contains `expected` and ends with advice in parentheses.
  void expect_rejected(const std::string& bytes, const std::string& expected) {
    write_bytes(path_, bytes);
    try {
      GgufFile::open(path_);
      ADD_FAILURE() << "accepted a file that should fail with: " << expected;
    } catch (const IoError& e) {
      const std::string what = e.what();
      EXPECT_EQ(what.find('\n'), std::string::npos) << what;
      EXPECT_EQ(what.rfind(path_.string() + ": ", 0), 0u) << what;
      EXPECT_NE(what.find(expected), std::string::npos) << what;
      EXPECT_EQ(what.back(), ')') << "no advice in: " << what;
    }
  }
  std::shared_ptr<GgufFile> accepted(const std::string& bytes) {
    write_bytes(path_, bytes);
    return GgufFile::open(path_);
  }
  TempDir dir_;
  fs::path path_ = dir_ / "bad.gguf";
};

// One F32 tensor of 4 elements after one KV pair: the base most cases below alter one field of.
std::string one_tensor(uint32_t type = 0, std::vector<uint64_t> ne = {4}, uint64_t offset = 0, size_t n_data = 16) {
  return Bytes().header(1, 1).kv_str("general.architecture", "llama").tensor("t", ne, type, offset).pad().data(n_data).out;
}

TEST_F(GgufMalformed, WellFormedControlOpens) {
  auto file = accepted(one_tensor());
  ASSERT_EQ(file->tensors().size(), 1u);
  EXPECT_EQ(file->tensors()[0].n_bytes, 16u);
  EXPECT_EQ(file->get_string("general.architecture"), "llama");
}

TEST_F(GgufMalformed, EmptyAndShortFiles) {
  expect_rejected("", "too short");
  expect_rejected("GGUF\x03\0\0\0", "too short");
}

TEST_F(GgufMalformed, BadMagic) { expect_rejected("GGUX" + one_tensor().substr(4), "not a GGUF file"); }

TEST_F(GgufMalformed, BigEndianFilesAreNamedAsSuch) {
  // Newer writers swap the magic too ("FUGG" read little-endian); older ones keep "GGUF".
  Bytes swapped;
  swapped.out = "FUGG";
  swapped.u32(__builtin_bswap32(3)).u64(__builtin_bswap64(0)).u64(__builtin_bswap64(0));
  expect_rejected(swapped.out, "big-endian");
  swapped.out.replace(0, 4, "GGUF");
  expect_rejected(swapped.out, "big-endian");
}

TEST_F(GgufMalformed, Versions) {
  expect_rejected(Bytes().header(0, 0, 1).out, "GGUF version 1 is not supported");
  expect_rejected(Bytes().header(0, 0, 4).out, "unsupported GGUF version 4");
  expect_rejected(Bytes().header(0, 0, 0).out, "unsupported GGUF version 0");
}

TEST_F(GgufMalformed, DuplicateKey) {
  expect_rejected(Bytes().header(0, 2).kv_u32("a.b", 1).kv_u32("a.b", 2).out, "duplicate metadata key \"a.b\"");
}

TEST_F(GgufMalformed, DuplicateTensorName) {
  expect_rejected(Bytes().header(2, 0).tensor("t", {8}, 0, 0).tensor("t", {8}, 0, 32).pad().data(64).out,
                  "duplicate tensor name \"t\"");
}

TEST_F(GgufMalformed, UnknownValueTypes) {
  expect_rejected(Bytes().header(0, 1).str("k").u32(13).u32(0).out, "metadata key \"k\" has unknown value type 13");
  expect_rejected(Bytes().header(0, 1).str("k").u32(9).u32(99).u64(1).u32(0).out,
                  "metadata key \"k\" has unknown array element type 99");
}

TEST_F(GgufMalformed, BoolMustBeZeroOrOne) {
  expect_rejected(Bytes().header(0, 1).str("k").u32(7).u8(2).out, "BOOL byte 2");
}

TEST_F(GgufMalformed, UnknownGgmlType) {
  expect_rejected(one_tensor(16), "tensor \"t\" has unknown or unsupported ggml type id 16");  // IQ2_XXS
  expect_rejected(one_tensor(4), "ggml type id 4");                                           // removed Q4_2
  expect_rejected(one_tensor(0xFFFFFFFF), "ggml type id 4294967295");
}

TEST_F(GgufMalformed, TooManyDims) { expect_rejected(one_tensor(0, {1, 1, 1, 1, 4}), "tensor \"t\" has 5 dimensions"); }

TEST_F(GgufMalformed, LyingStringLength) {
  expect_rejected(Bytes().header(0, 1).u64(1ull << 60).out + std::string(40, 'k'), "string of 1152921504606846976 bytes");
  expect_rejected(Bytes().header(0, 1).str("k").u32(8).u64(1ull << 60).out + "value", "longer than");
  expect_rejected(Bytes().header(1, 0).u64(~0ull).out + std::string(40, 'x'), "tensor info 0 has a string of");
}

TEST_F(GgufMalformed, LyingArrayCount) {
  expect_rejected(Bytes().header(0, 1).str("k").u32(9).u32(4).u64(1ull << 60).u32(1).out,
                  "metadata key \"k\" claims 1152921504606846976 UINT32 array elements");
  // Strings: the count is checked against 8 bytes per element, before any allocation.
  expect_rejected(Bytes().header(0, 1).str("k").u32(9).u32(8).u64(10).u64(0).u64(0).out, "claims 10 STRING array elements");
  expect_rejected(Bytes().header(0, 1).str("k").u32(9).u32(9).u64(~0ull).out, "claims 18446744073709551615 ARRAY");
}

TEST_F(GgufMalformed, LyingCounts) {
  expect_rejected(Bytes().header(0, 1ull << 60).kv_u32("k", 1).out, "claims 1152921504606846976 metadata pairs");
  expect_rejected(Bytes().header(1ull << 62, 0).tensor("t", {4}, 0, 0).out, "claims 4611686018427387904 tensors");
}

TEST_F(GgufMalformed, DeeplyNestedArrays) {
  Bytes b;
  b.header(0, 1).str("k").u32(9);
  for (int i = 0; i < 20; ++i) b.u32(9).u64(1);
  b.u32(4).u64(0);
  expect_rejected(b.out, "nests arrays more than 8 deep");
}

TEST_F(GgufMalformed, TensorPastEof) {
  expect_rejected(one_tensor(0, {4}, 0, 15), "tensor \"t\" spans data bytes [0, 0 + 16), past the end of the 15-byte");
  expect_rejected(one_tensor(0, {4}, 1ull << 40, 16), "past the end");
  expect_rejected(one_tensor(0, {4}, ~0ull - 31, 16), "past the end");  // offset + size overflows
  // Nothing after the tensor infos at all.
  expect_rejected(Bytes().header(1, 0).tensor("t", {4}, 0, 0).out, "ends before its data section");
}

TEST_F(GgufMalformed, MisalignedOffset) {
  expect_rejected(one_tensor(0, {4}, 4, 64), "tensor \"t\" has data offset 4, not a multiple of the alignment 32");
}

TEST_F(GgufMalformed, OverlappingTensors) {
  expect_rejected(Bytes().header(2, 0).tensor("a", {16}, 0, 0).tensor("b", {8}, 0, 32).pad().data(64).out,
                  "tensor \"b\" overlaps tensor \"a\"");
}

TEST_F(GgufMalformed, NeNotAMultipleOfTheBlockSize) {
  expect_rejected(one_tensor(8, {48, 2}, 0, 128), "tensor \"t\" of type Q8_0 has ne[0] = 48, not a multiple of the block size 32");
  expect_rejected(one_tensor(12, {128}, 0, 256), "of type Q4_K has ne[0] = 128");
}

TEST_F(GgufMalformed, SizesThatOverflow) {
  expect_rejected(one_tensor(0, {1ull << 63}), "ne[0] = 9223372036854775808 is too large");
  expect_rejected(one_tensor(0, {1ull << 32, 1ull << 32}), "element count overflows");
  expect_rejected(one_tensor(0, {1ull << 62}), "byte count overflows");
}

TEST_F(GgufMalformed, LongTensorName) {
  expect_rejected(Bytes().header(1, 0).tensor(std::string(64, 'n'), {4}, 0, 0).pad().data(16).out,
                  "has a name of 64 bytes (GGUF allows at most 63)");
}

TEST_F(GgufMalformed, Alignment) {
  auto with_alignment = [](auto add_kv) {
    Bytes b;
    b.header(1, 1);
    add_kv(b);
    return b.tensor("t", {4}, 0, 0).pad(64).data(16).out;
  };
  expect_rejected(with_alignment([](Bytes& b) { b.kv_u32("general.alignment", 48); }), "general.alignment is 48, not a power of two");
  expect_rejected(with_alignment([](Bytes& b) { b.kv_u32("general.alignment", 0); }), "general.alignment is 0, not a power of two");
  expect_rejected(with_alignment([](Bytes& b) { b.str("general.alignment").u32(10).u64(64); }),
                  "general.alignment is UINT64, not UINT32");
  expect_rejected(with_alignment([](Bytes& b) { b.str("general.alignment").u32(5).u32(64); }),
                  "general.alignment is INT32, not UINT32");
  EXPECT_EQ(accepted(with_alignment([](Bytes& b) { b.kv_u32("general.alignment", 64); }))->alignment(), 64u);
}

// Not every valid layout is ggml's running sum: tensors stored in another order than their infos,
// with gaps, are read (gguf-py reads them too); only overlaps and misalignment are refused.
TEST_F(GgufMalformed, OffsetsOutOfInfoOrderAreAccepted) {
  auto file = accepted(Bytes().header(2, 0).tensor("a", {4}, 0, 64).tensor("b", {4}, 0, 0).pad().data(96).out);
  EXPECT_EQ(file->tensors()[0].offset, 64u);
  EXPECT_EQ(file->data(file->tensors()[0]) - file->data(file->tensors()[1]), 64);
}

TEST_F(GgufMalformed, FileWithoutTensorsMayEndBeforeThePadding) {
  auto file = accepted(Bytes().header(0, 1).kv_u32("k", 3).out);
  EXPECT_EQ(file->get_int("k"), 3);
  EXPECT_TRUE(file->tensors().empty());
}

// Every prefix of a valid file that cuts into its header or tensor data is refused; only trailing
// padding after the last tensor may go.
TEST_F(GgufMalformed, EveryTruncationIsRefused) {
  const auto good = dir_ / "good.gguf";
  {
    GgufWriter w(good);
    w.add_string("general.architecture", "llama");
    w.add_string_array("tokenizer.ggml.tokens", {"<s>", "\xe2\x96\x81hi", ""});
    w.add_f32_array("scores", {0.0f, -1.5f, 2.0f});
    w.add_bool("flag", true);
    w.add("u64s", {GgufValueType::ARRAY, GgufValueType::UINT64, {1, 2}});
    w.add_tensor_info("a", {5}, GgmlType::F32);
    w.add_tensor_info("q", {32, 1}, GgmlType::Q8_0);
    const std::string a(20, '\x11'), q(34, '\x22');
    w.write_tensor(a.data(), a.size());
    w.write_tensor(q.data(), q.size());
    w.commit();
  }
  const std::string bytes = read_bytes(good);
  const auto file = GgufFile::open(good);
  ASSERT_EQ(file->tensors()[1].offset, 32u);
  const size_t data_end = bytes.size() - 64 + 34;  // q's 34 bytes end 30 bytes of padding before the file does
  ASSERT_LT(data_end, bytes.size());
  for (size_t n = 0; n < data_end; ++n) {
    write_bytes(path_, bytes.substr(0, n));
    try {
      GgufFile::open(path_);
      ADD_FAILURE() << "accepted a prefix of " << n << " of " << bytes.size() << " bytes";
    } catch (const IoError& e) {
      EXPECT_EQ(std::string(e.what()).rfind(path_.string() + ": ", 0), 0u) << e.what();
    }
  }
  for (size_t n = data_end; n <= bytes.size(); ++n) {
    write_bytes(path_, bytes.substr(0, n));
    EXPECT_NO_THROW(GgufFile::open(path_)) << n;
  }
}

// Random byte changes to a valid file: each either opens (a changed value or tensor byte) or is
// refused with an IoError; nothing else (a crash, another exception, a sanitizer report).
TEST_F(GgufMalformed, RandomByteChangesNeverCrash) {
  const std::string good = Bytes()
                               .header(2, 3)
                               .kv_str("general.architecture", "llama")
                               .str("tokens").u32(9).u32(8).u64(2).str("a").str("bc")
                               .kv_u32("general.alignment", 32)
                               .tensor("a", {8}, 0, 0)
                               .tensor("q", {32, 2}, 8, 32)
                               .pad()
                               .data(32 + 68)
                               .out;
  ASSERT_EQ(accepted(good)->tensors().size(), 2u);
  std::mt19937 rng(1234);
  int refused = 0;
  for (int i = 0; i < 1500; ++i) {
    std::string bytes = good;
    const int n_changes = 1 + static_cast<int>(rng() % 3);
    for (int c = 0; c < n_changes; ++c) {
      const size_t at = rng() % bytes.size();
      // Mostly small values and all-ones bytes: those are the interesting lies for counts and types.
      const uint32_t kind = rng() % 4;
      bytes[at] = static_cast<char>(kind == 0 ? 0xFF : kind == 1 ? rng() % 16 : rng() & 0xFF);
    }
    write_bytes(path_, bytes);
    try {
      GgufFile::open(path_);
    } catch (const IoError& e) {
      ++refused;
      ASSERT_EQ(std::string(e.what()).rfind(path_.string() + ": ", 0), 0u) << e.what();
    }
  }
  EXPECT_GT(refused, 50);
}

TEST_F(GgufMalformed, NotARegularFile) {
  try {
    GgufFile::open(dir_.path());
    ADD_FAILURE() << "opened a directory";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("not a regular file"), std::string::npos) << e.what();
  }
  EXPECT_THROW(GgufFile::open(dir_ / "absent.gguf"), IoError);
}

}  // namespace
}  // namespace llmtune::io
