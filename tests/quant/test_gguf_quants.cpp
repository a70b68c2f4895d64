// GGUF block codecs against the references: gguf-py (llama.cpp's Python package: quantize is
// bit-exact for the float and 32-element formats, dequantize for every format), and bytes written
// by ggml's own quantize_row_*_ref (tests/quant/data). Plus round-trip error bounds and errors.
#include <ATen/Functions.h>
#include <ATen/TensorOperators.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "io/io_test_util.h"
#include "llmtune/quant/gguf_quants.h"
#include "llmtune/util/error.h"
#include "support/interop.h"

namespace llmtune::quant {
namespace {

using llmtune::testing::read_bytes;
using llmtune::testing::TempDir;
using llmtune::testing::write_bytes;

struct TypeInfo {
  GgmlType type;
  const char* name;
  int64_t block_size;
  int64_t type_size;
  std::vector<int64_t> fp16_offsets;  // fp16 fields inside a block (scales, mins)
};

const std::vector<TypeInfo>& all_types() {
  static const std::vector<TypeInfo> types = {
      {GgmlType::F32, "F32", 1, 4, {}},           {GgmlType::F16, "F16", 1, 2, {0}},
      {GgmlType::BF16, "BF16", 1, 2, {}},         {GgmlType::Q4_0, "Q4_0", 32, 18, {0}},
      {GgmlType::Q4_1, "Q4_1", 32, 20, {0, 2}},   {GgmlType::Q5_0, "Q5_0", 32, 22, {0}},
      {GgmlType::Q5_1, "Q5_1", 32, 24, {0, 2}},   {GgmlType::Q8_0, "Q8_0", 32, 34, {0}},
      {GgmlType::Q2_K, "Q2_K", 256, 84, {80, 82}}, {GgmlType::Q3_K, "Q3_K", 256, 110, {108}},
      {GgmlType::Q4_K, "Q4_K", 256, 144, {0, 2}}, {GgmlType::Q5_K, "Q5_K", 256, 176, {0, 2}},
      {GgmlType::Q6_K, "Q6_K", 256, 210, {208}},
  };
  return types;
}

// gguf-py's quantize is bit-exact with ggml for these (FORMATS.md §7).
const std::vector<const char*> kExactQuantTypes = {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"};
const std::vector<const char*> kKQuantTypes = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"};

const TypeInfo& info(const std::string& name) {
  for (const auto& t : all_types())
    if (name == t.name) return t;
  throw std::runtime_error("no type " + name);
}

// One input matrix (rows × cols float32) and what it exercises.
struct Input {
  std::string name;
  int64_t rows, cols;
  std::vector<float> values;
};

float from_bits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

std::vector<Input> make_inputs() {
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<Input> in;
  auto add = [&](std::string name, int64_t rows, int64_t cols, auto gen) {
    Input x{std::move(name), rows, cols, std::vector<float>(static_cast<size_t>(rows * cols))};
    for (int64_t i = 0; i < rows * cols; ++i) x.values[static_cast<size_t>(i)] = gen(i);
    in.push_back(std::move(x));
  };
  add("normal", 16, 1024, [&](int64_t) { return normal(rng); });
  add("normal_narrow", 8, 96, [&](int64_t) { return normal(rng); });  // 3 blocks of 32, no K-quant
  add("uniform", 8, 512, [&](int64_t) { return 3.0f * uniform(rng); });
  add("positive", 4, 256, [&](int64_t) { return 0.5f + 0.1f * std::fabs(normal(rng)); });  // min > 0
  // Heavy tails: Cauchy, clipped so every fp16 scale stays finite.
  add("heavy", 8, 768, [&](int64_t) { return std::clamp(std::tan(1.57f * uniform(rng)), -1000.0f, 1000.0f); });
  add("zeros", 2, 256, [](int64_t) { return 0.0f; });
  add("constant", 2, 256, [](int64_t i) { return i < 256 ? 0.37f : -2.5f; });
  add("outlier", 4, 512, [&](int64_t i) { return i % 512 == 77 ? 50.0f : 0.01f * normal(rng); });
  add("tiny_fp16_subnormal", 2, 256, [&](int64_t) { return 1e-6f * normal(rng); });
  add("tiny_1e-30", 2, 256, [&](int64_t) { return 1e-30f * normal(rng); });
  add("large", 2, 256, [&](int64_t) { return 3e4f * normal(rng); });
  // Exact ties: with max |x| = 127 per block Q8_0's scale is 1 and the half-integers tie in roundf;
  // with −8 per block Q4_0's is 1 and x + 8.5 lands on integers.
  add("ties_q8", 2, 256, [&](int64_t i) { return i % 32 == 5 ? 127.0f : static_cast<float>(static_cast<int>(i * 37 % 253) - 126) + 0.5f; });
  add("ties_q4", 2, 256, [&](int64_t i) { return i % 32 == 9 ? -8.0f : static_cast<float>(static_cast<int>(i * 13 % 31) - 16) * 0.5f; });
  add("ties_q4_1", 2, 256, [&](int64_t i) { return i % 32 == 0 ? 0.0f : (i % 32 == 1 ? 15.0f : static_cast<float>(i * 7 % 30) * 0.5f); });
  // Ties of the float conversions: halfway between two fp16 (k·2⁻¹¹, k odd) and two bf16 (low half 0x8000).
  add("ties_f16", 1, 256, [&](int64_t i) { return static_cast<float>(2049 + 2 * i) * (1.0f / 2048.0f); });
  add("ties_bf16", 1, 256, [&](int64_t i) {
    const uint32_t hi = static_cast<uint32_t>(0x3f00 + i * 3) & 0xffffu;
    return from_bits((hi << 16) | 0x8000u);
  });
  return in;
}

// Random blocks of `type` with every fp16 field finite (exponent bits not all ones).
std::string random_blocks(const TypeInfo& t, int64_t n_blocks, std::mt19937& rng) {
  std::string bytes(static_cast<size_t>(n_blocks * t.type_size), '\0');
  std::uniform_int_distribution<int> byte(0, 255);
  for (auto& c : bytes) c = static_cast<char>(byte(rng));
  auto* p = reinterpret_cast<uint8_t*>(bytes.data());
  for (int64_t b = 0; b < n_blocks; ++b) {
    uint8_t* block = p + b * t.type_size;
    if (t.type == GgmlType::F32) {
      if ((block[3] & 0x7f) == 0x7f && (block[2] & 0x80)) block[3] &= 0xbf;  // no inf/NaN
    } else if (t.type == GgmlType::BF16) {
      if ((block[1] & 0x7f) == 0x7f && (block[0] & 0x80)) block[1] &= 0xbf;
    } else {
      for (int64_t off : t.fp16_offsets)
        if ((block[off + 1] & 0x7c) == 0x7c) block[off + 1] &= 0xbf;
    }
  }
  return bytes;
}

std::string as_bytes(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.const_data_ptr()), c.nbytes());
}

at::Tensor as_matrix(const Input& x) {
  return at::from_blob(const_cast<float*>(x.values.data()), {x.rows, x.cols}, at::kFloat).clone();
}

// Index of the first differing byte, or -1.
int64_t first_difference(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i] != b[i]) return static_cast<int64_t>(i);
  return -1;
}

// Everything gguf-py is asked, in one Python run for the whole suite.
class GgufQuantReference : public ::testing::Test {
 protected:
  struct Pair {
    std::string ours, reference;
  };
  static inline std::map<std::string, Pair> quantized;    // "<input>/<type>": our bytes, gguf-py's
  static inline std::map<std::string, Pair> dequantized;  // "<blocks>/<type>": our floats, gguf-py's
  static inline std::string setup_error;

  static void SetUpTestSuite() {
    try {
      run_reference();
    } catch (const std::exception& e) {
      setup_error = e.what();
    }
  }

  static void run_reference() {
    TempDir dir;
    nlohmann::ordered_json cases = nlohmann::ordered_json::array();
    std::map<std::string, std::string> quant_files, dequant_files;  // key → file of gguf-py's output
    auto dequant_case = [&](const std::string& key, const TypeInfo& t, const std::string& blocks, int64_t rows,
                            int64_t cols) {
      const std::string file = "blocks_" + std::to_string(dequant_files.size()) + ".bin";
      write_bytes(dir / file, blocks);
      const std::string out = "dq_" + std::to_string(dequant_files.size()) + ".f32";
      cases.push_back({{"op", "dequantize"}, {"type", t.name}, {"input", file},
                       {"shape", {rows, cols / t.block_size * t.type_size}}, {"output", out}});
      dequant_files[key] = out;
      dequantized[key].ours = as_bytes(dequantize(reinterpret_cast<const uint8_t*>(blocks.data()), t.type, {rows, cols}));
    };

    for (const Input& x : make_inputs()) {
      const std::string in_file = "in_" + x.name + ".f32";
      write_bytes(dir / in_file, std::string(reinterpret_cast<const char*>(x.values.data()), x.values.size() * sizeof(float)));
      for (const TypeInfo& t : all_types()) {
        if (x.cols % t.block_size != 0) continue;
        const std::string key = x.name + "/" + t.name;
        const std::string ours = as_bytes(quantize(as_matrix(x), t.type));
        bool exact = false;
        for (const char* e : kExactQuantTypes) exact = exact || std::string(e) == t.name;
        if (exact) {
          const std::string out = "q_" + x.name + "_" + t.name + ".bin";
          cases.push_back({{"op", "quantize"}, {"type", t.name}, {"input", in_file}, {"shape", {x.rows, x.cols}}, {"output", out}});
          quant_files[key] = out;
          quantized[key].ours = ours;
        }
        dequant_case("ours:" + key, t, ours, x.rows, x.cols);
      }
    }
    std::mt19937 rng(99);
    for (const TypeInfo& t : all_types()) dequant_case("random/" + std::string(t.name), t, random_blocks(t, 64, rng), 4, 16 * t.block_size);

    nlohmann::ordered_json request{{"dir", dir.path().string()}, {"cases", cases}};
    const auto response = llmtune::testing::run_json_script("tests/quant/gguf_quants_reference.py", request);
    if (response.at("done").get<size_t>() != cases.size()) throw std::runtime_error("reference did not run every case");
    for (const auto& [key, file] : quant_files) quantized[key].reference = read_bytes(dir / file);
    for (const auto& [key, file] : dequant_files) dequantized[key].reference = read_bytes(dir / file);
  }

  void SetUp() override { ASSERT_TRUE(setup_error.empty()) << setup_error; }
};

TEST_F(GgufQuantReference, QuantizeIsBitExactWithGgufPy) {
  std::map<std::string, int> checked;
  for (const auto& [key, pair] : quantized) {
    ASSERT_FALSE(pair.reference.empty()) << key;
    const int64_t at = first_difference(pair.ours, pair.reference);
    EXPECT_EQ(at, -1) << key << ": first differing byte " << at << " of " << pair.ours.size();
    ++checked[key.substr(key.find('/') + 1)];
  }
  for (const char* t : kExactQuantTypes) EXPECT_GE(checked[t], 15) << t << " was not compared on every input";
}

TEST_F(GgufQuantReference, DequantizeOurBlocksEqualsGgufPy) {
  int n = 0;
  for (const auto& [key, pair] : dequantized) {
    if (key.rfind("ours:", 0) != 0) continue;
    ASSERT_EQ(pair.ours.size(), pair.reference.size()) << key;
    const int64_t at = first_difference(pair.ours, pair.reference);
    EXPECT_EQ(at, -1) << key << ": first differing float " << at / 4;
    ++n;
  }
  EXPECT_GE(n, 150);
}

TEST_F(GgufQuantReference, DequantizeRandomBlocksEqualsGgufPy) {
  for (const TypeInfo& t : all_types()) {
    const auto& pair = dequantized.at("random/" + std::string(t.name));
    ASSERT_EQ(pair.ours.size(), pair.reference.size()) << t.name;
    const int64_t at = first_difference(pair.ours, pair.reference);
    EXPECT_EQ(at, -1) << t.name << ": first differing float " << at / 4;
  }
}

// Bytes from ggml's quantize_row_*_ref (ggml d99724f2, built as llama.cpp builds ggml-base on
// x86-64: gcc -O3 -std=gnu11, no -march) for tests/quant/data/ggml_golden_input.f32 (4 × 512:
// normal, heavy-tailed, sparse, positive rows). The K-quants have no Python quantizer to compare with.
TEST(GgufQuantGolden, MatchesGgmlReferenceQuantizer) {
  const std::string dir = std::string(LLMTUNE_SOURCE_DIR) + "/tests/quant/data/";
  const std::string input = read_bytes(dir + "ggml_golden_input.f32");
  ASSERT_EQ(input.size(), 4u * 512u * 4u);
  const at::Tensor x = at::from_blob(const_cast<char*>(input.data()), {4, 512}, at::kFloat).clone();
  for (const char* name : {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}) {
    std::string file = name;
    for (auto& c : file) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    const std::string expected = read_bytes(dir + "ggml_golden_" + file + ".bin");
    const std::string ours = as_bytes(quantize(x, info(name).type));
    ASSERT_EQ(ours.size(), expected.size()) << name;
    EXPECT_EQ(first_difference(ours, expected), -1) << name << ": first differing byte " << first_difference(ours, expected);
  }
}

double relative_rmse(const at::Tensor& x, GgmlType type) {
  const at::Tensor q = quantize(x, type);
  const at::Tensor y = dequantize(q.const_data_ptr<uint8_t>(), type, x.sizes().vec());
  return (y - x).pow(2).mean().sqrt().item<double>() / x.std().item<double>();
}

// RMSE/std on N(0,1) rows. ggml's reference quantizer reaches (256 × 4096 samples): Q2_K 0.297,
// Q3_K 0.151, Q4_0 0.086, Q4_1 0.078, Q4_K 0.0715, Q5_0 0.043, Q5_1 0.038, Q5_K 0.0361,
// Q6_K 0.0178, Q8_0 0.0054 — our bytes are ggml's, so the bounds sit ~5% above those.
TEST(GgufQuantRoundTrip, ErrorOnGaussianRowsWithinReferenceBounds) {
  at::manual_seed(7);
  const at::Tensor x = at::randn({64, 4096});
  const std::map<std::string, double> bound = {{"Q2_K", 0.31}, {"Q3_K", 0.16}, {"Q4_0", 0.09}, {"Q4_1", 0.082},
                                               {"Q4_K", 0.075}, {"Q5_0", 0.045}, {"Q5_1", 0.04}, {"Q5_K", 0.038},
                                               {"Q6_K", 0.019}, {"Q8_0", 0.0057}};
  std::map<std::string, double> err;
  for (const auto& [name, b] : bound) {
    err[name] = relative_rmse(x, info(name).type);
    EXPECT_LT(err[name], b) << name;
    EXPECT_GT(err[name], 0.5 * b) << name << " is suspiciously exact";
  }
  EXPECT_LT(err["Q6_K"], err["Q5_K"]);
  EXPECT_LT(err["Q5_K"], err["Q4_K"]);
  EXPECT_LT(err["Q4_K"], err["Q4_0"]);
  EXPECT_LT(err["Q4_K"], err["Q3_K"]);
  EXPECT_LT(err["Q3_K"], err["Q2_K"]);
  // Lossless: f32; f16 and bf16 round once.
  EXPECT_EQ(relative_rmse(x, GgmlType::F32), 0.0);
  EXPECT_LT(relative_rmse(x, GgmlType::F16), 5e-4);
  EXPECT_LT(relative_rmse(x, GgmlType::BF16), 4e-3);
}

TEST(GgufQuantRoundTrip, TensorApiShapesDtypesAndRows) {
  at::manual_seed(3);
  const at::Tensor x = at::randn({3, 5, 512});
  const at::Tensor q = quantize(x, GgmlType::Q4_K);
  EXPECT_EQ(q.scalar_type(), at::kByte);
  EXPECT_EQ(q.sizes().vec(), (std::vector<int64_t>{15, 2 * 144}));
  const at::Tensor y = dequantize(q.const_data_ptr<uint8_t>(), GgmlType::Q4_K, {3, 5, 512});
  EXPECT_EQ(y.sizes().vec(), (std::vector<int64_t>{3, 5, 512}));
  EXPECT_EQ(y.scalar_type(), at::kFloat);

  // Each row is encoded on its own: the whole matrix equals the rows one by one, whatever the
  // parallel split; a non-contiguous or bf16 input is read as its float values.
  for (GgmlType t : {GgmlType::Q8_0, GgmlType::Q5_1, GgmlType::Q6_K, GgmlType::Q3_K}) {
    const at::Tensor flat = x.reshape({15, 512});
    const at::Tensor whole = quantize(flat, t);
    for (int64_t r = 0; r < 15; ++r) EXPECT_TRUE(at::equal(quantize(flat[r], t)[0], whole[r]));
    EXPECT_TRUE(at::equal(quantize(flat.t().contiguous().t(), t), whole));
  }
  const at::Tensor xb = x.to(at::kBFloat16);
  EXPECT_TRUE(at::equal(quantize(xb, GgmlType::Q4_0), quantize(xb.to(at::kFloat), GgmlType::Q4_0)));
  EXPECT_TRUE(at::equal(quantize(x, GgmlType::BF16).view(at::kBFloat16).reshape({3, 5, 512}), xb));
  EXPECT_TRUE(at::equal(quantize(x, GgmlType::F16).view(at::kHalf).reshape({3, 5, 512}), x.to(at::kHalf)));

  // A 1-D tensor is one row; an empty one is no row.
  EXPECT_EQ(quantize(at::randn({256}), GgmlType::Q8_0).sizes().vec(), (std::vector<int64_t>{1, 8 * 34}));
  EXPECT_EQ(quantize(at::randn({0, 256}), GgmlType::Q4_K).size(0), 0);
}

TEST(GgufQuantErrors, RowLengthNotAMultipleOfTheBlockSize) {
  const at::Tensor x = at::randn({2, 300});
  for (GgmlType t : {GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q2_K, GgmlType::Q3_K})
    EXPECT_THROW(quantize(x, t), QuantError);
  EXPECT_THROW(quantize(at::randn({2, 48}), GgmlType::Q4_0), QuantError);
  EXPECT_NO_THROW(quantize(at::randn({2, 48}), GgmlType::F16));
  std::vector<uint8_t> bytes(1024);
  std::vector<float> out(1024);
  EXPECT_THROW(quantize_rows(GgmlType::Q6_K, out.data(), bytes.data(), 1, 128), QuantError);
  EXPECT_THROW(dequantize_rows(GgmlType::Q8_0, bytes.data(), out.data(), 1, 40), QuantError);
  EXPECT_THROW(dequantize(bytes.data(), GgmlType::Q4_K, {2, 128}), QuantError);
  try {
    quantize(x, GgmlType::Q4_K);
  } catch (const QuantError& e) {
    EXPECT_NE(std::string(e.what()).find("256"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("300"), std::string::npos) << e.what();
  }
}

TEST(GgufQuantErrors, UnsupportedTypesAndInputs) {
  for (const TypeInfo& t : all_types()) {
    EXPECT_TRUE(can_quantize(t.type)) << t.name;
    EXPECT_TRUE(can_dequantize(t.type)) << t.name;
  }
  for (GgmlType t : {GgmlType::Q8_1, GgmlType::Q8_K, GgmlType::I8, GgmlType::I32, GgmlType::F64}) {
    EXPECT_FALSE(can_quantize(t));
    EXPECT_FALSE(can_dequantize(t));
    EXPECT_THROW(quantize(at::randn({1, 256}), t), QuantError);
    uint8_t buf[512] = {};
    EXPECT_THROW(dequantize(buf, t, {1, 256}), QuantError);
  }
  EXPECT_THROW(quantize(at::ones({2, 32}, at::kInt), GgmlType::Q8_0), QuantError);
  EXPECT_THROW(quantize(at::scalar_tensor(1.0), GgmlType::F32), QuantError);
  EXPECT_THROW(dequantize(nullptr, GgmlType::F32, {}), QuantError);
}

}  // namespace
}  // namespace llmtune::quant
