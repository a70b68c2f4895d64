// safetensors reader and writer against the reference: Python's safetensors writes, we read the
// same bytes; we write, Python reads the same values; and our files are byte-identical to Python's.
#include <ATen/Functions.h>
#include <ATen/TensorOperators.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "io/io_test_util.h"
#include "llmtune/io/safetensors.h"
#include "llmtune/util/error.h"

namespace llmtune::io {
namespace {

using json = nlohmann::json;
using llmtune::testing::hex_of;
using llmtune::testing::py_str;
using llmtune::testing::read_bytes;
using llmtune::testing::run_python;
using llmtune::testing::TempDir;
using llmtune::testing::write_bytes;
using Named = std::vector<std::pair<std::string, at::Tensor>>;

// Every dtype both libraries can exchange, by safetensors name.
const char* const kPyDtypes = R"(
import json, torch
from safetensors import safe_open
from safetensors.torch import save_file, load_file
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool, "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16,
          "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "C64": torch.complex64}
NAMES = {v: k for k, v in DTYPES.items()}
def hexdump(t):
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes().hex()
def manifest(tensors):
    return {k: {"dtype": NAMES[t.dtype], "shape": list(t.shape), "hex": hexdump(t)} for k, t in tensors.items()}
)";

const std::vector<std::string> kDtypeNames = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8",
                                              "U8",  "BOOL", "U64", "U32", "U16", "F8_E4M3", "F8_E5M2", "C64"};

at::Tensor make_tensor(at::ScalarType dtype, at::IntArrayRef shape) {
  if (dtype == at::kBool) return at::rand(shape) > 0.5;
  if (at::isComplexType(dtype)) return at::randn(shape, at::TensorOptions().dtype(dtype));
  if (at::isFloatingType(dtype)) return (at::randn(shape) * 3).to(dtype);
  return at::randint(-1000, 1000, shape).to(dtype);
}

// Per dtype: a matrix, a rank-0 scalar and a zero-size tensor; plus names that need JSON escaping.
Named make_all_dtypes() {
  at::manual_seed(0);
  Named out;
  for (const auto& name : kDtypeNames) {
    const auto dtype = dtype_from_safetensors(name);
    out.emplace_back(name + ".matrix", make_tensor(dtype, {3, 5}));
    out.emplace_back(name + ".scalar", make_tensor(dtype, {}));
    out.emplace_back(name + ".empty", make_tensor(dtype, {0, 4}));
  }
  out.emplace_back("名前 \"quoted\"\\\n\x01", at::arange(4, at::TensorOptions().dtype(at::kFloat)));
  return out;
}

void expect_matches_manifest(const SafetensorsFile& file, const json& manifest) {
  std::vector<std::string> expected_names;
  for (const auto& [name, spec] : manifest.items()) expected_names.push_back(name);
  std::sort(expected_names.begin(), expected_names.end());
  EXPECT_EQ(file.names(), expected_names);
  for (const auto& [name, spec] : manifest.items()) {
    SCOPED_TRACE(name);
    const TensorInfo& info = file.info(name);
    EXPECT_EQ(info.dtype, spec["dtype"].get<std::string>());
    EXPECT_EQ(info.shape, spec["shape"].get<std::vector<int64_t>>());
    const at::Tensor t = file.tensor(name);
    EXPECT_EQ(t.scalar_type(), dtype_from_safetensors(info.dtype));
    EXPECT_EQ(t.sizes().vec(), info.shape);
    EXPECT_EQ(hex_of(t), spec["hex"].get<std::string>());
  }
}

TEST(SafetensorsInterop, PythonWritesEveryDtypeWeReadTheSameBytes) {
  TempDir dir;
  const auto out = run_python(dir.path(), std::string(kPyDtypes) + R"(
torch.manual_seed(0)
def make(dt, shape):
    if dt == torch.bool: return torch.rand(shape) > 0.5
    if dt.is_complex: return torch.randn(shape, dtype=dt)
    if dt.is_floating_point: return (torch.randn(shape) * 3).to(dt)
    return torch.randint(-1000, 1000, shape).to(dt)
tensors = {}
for name, dt in DTYPES.items():
    tensors[name + ".matrix"] = make(dt, (3, 5))
    tensors[name + ".scalar"] = make(dt, ())
    tensors[name + ".empty"] = make(dt, (0, 4))
save_file(tensors, "py.safetensors", metadata={"format": "pt", "note": "caf\u00e9"})
print(json.dumps(manifest(tensors)))
)");
  auto file = SafetensorsFile::open(dir / "py.safetensors");
  expect_matches_manifest(*file, json::parse(out));
  EXPECT_EQ(file->metadata(), (std::map<std::string, std::string>{{"format", "pt"}, {"note", "café"}}));
}

TEST(SafetensorsInterop, WeWriteEveryDtypePythonReadsTheSameBytes) {
  TempDir dir;
  const Named tensors = make_all_dtypes();
  save_safetensors(dir / "ours.safetensors", tensors, {{"note", "é \"x\"\n"}});
  const auto out = run_python(dir.path(), std::string(kPyDtypes) + R"(
with safe_open("ours.safetensors", framework="pt") as f:
    tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta = f.metadata()
print(json.dumps({"metadata": meta, "tensors": manifest(tensors)}))
)");
  const json result = json::parse(out);
  EXPECT_EQ(result["metadata"], (json{{"format", "pt"}, {"note", "é \"x\"\n"}}));
  ASSERT_EQ(result["tensors"].size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    SCOPED_TRACE(name);
    const json& spec = result["tensors"].at(name);
    EXPECT_EQ(spec["dtype"], dtype_to_safetensors(t.scalar_type()));
    EXPECT_EQ(spec["shape"].get<std::vector<int64_t>>(), t.sizes().vec());
    EXPECT_EQ(spec["hex"], hex_of(t));
  }
  // And our own reader agrees with Python.
  expect_matches_manifest(*SafetensorsFile::open(dir / "ours.safetensors"), result["tensors"]);
}

TEST(SafetensorsInterop, OurBytesEqualPythonsForTheSameTensors) {
  TempDir dir;
  // A single metadata key with characters that need escaping: Rust orders several keys randomly.
  const std::map<std::string, std::string> meta{{"format", "pt \"é\"\n\x01\t/"}};
  save_safetensors(dir / "ours.safetensors", make_all_dtypes(), meta);
  run_python(dir.path(), std::string(kPyDtypes) + R"(
with safe_open("ours.safetensors", framework="pt") as f:
    meta = f.metadata()
save_file(load_file("ours.safetensors"), "py.safetensors", metadata=meta)
)");
  const std::string ours = read_bytes(dir / "ours.safetensors"), theirs = read_bytes(dir / "py.safetensors");
  ASSERT_EQ(ours.size(), theirs.size());
  EXPECT_TRUE(ours == theirs) << "header ours:   " << ours.substr(8, 300) << "\nheader python: " << theirs.substr(8, 300);
}

TEST(SafetensorsInterop, RewritingAPythonFileReproducesItsBytes) {
  TempDir dir;
  run_python(dir.path(), std::string(kPyDtypes) + R"(
torch.manual_seed(1)
tensors = {"model.layers.10.w": torch.randn(4, 3), "model.layers.2.w": torch.randn(2).to(torch.bfloat16),
           "b": torch.tensor(True), "a": torch.randint(0, 9, (5,)), "A": torch.zeros(0), "z": torch.ones(3, dtype=torch.float16)}
save_file(tensors, "py.safetensors", metadata={"format": "pt"})
)");
  auto file = SafetensorsFile::open(dir / "py.safetensors");
  Named tensors;
  for (const auto& name : file->names()) tensors.emplace_back(name, file->tensor(name));
  save_safetensors(dir / "ours.safetensors", tensors, file->metadata());
  EXPECT_TRUE(read_bytes(dir / "ours.safetensors") == read_bytes(dir / "py.safetensors"));
}

TEST(SafetensorsFile, FormatPtIsAddedAndHeaderPaddedToEightBytes) {
  TempDir dir;
  save_safetensors(dir / "x.safetensors", {{"w", at::ones({3}, at::kHalf)}});
  const std::string bytes = read_bytes(dir / "x.safetensors");
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  const std::string json_text = R"({"__metadata__":{"format":"pt"},"w":{"dtype":"F16","shape":[3],"data_offsets":[0,6]}})";
  ASSERT_GE(n, json_text.size());
  EXPECT_EQ(bytes.substr(8, n), json_text + std::string(n - json_text.size(), ' '));
  EXPECT_LT(n - json_text.size(), 8u);
  EXPECT_EQ(SafetensorsFile::open(dir / "x.safetensors")->metadata().at("format"), "pt");
}

TEST(SafetensorsFile, TensorsAreZeroCopyViewsThatOutliveTheFile) {
  TempDir dir;
  const at::Tensor w = at::randn({64, 32});
  const at::Tensor b = at::randn({7}, at::kDouble);
  save_safetensors(dir / "x.safetensors", {{"w", w}, {"b", b}});
  auto file = SafetensorsFile::open(dir / "x.safetensors");
  at::Tensor v1 = file->tensor("w"), v2 = file->tensor("w"), vb = file->tensor("b");
  EXPECT_EQ(v1.const_data_ptr(), v2.const_data_ptr());  // both views of the same mapped bytes
  EXPECT_EQ(reinterpret_cast<uintptr_t>(vb.const_data_ptr()) % 8, 0u);
  file.reset();  // the views keep the mapping alive
  EXPECT_TRUE(at::equal(v1, w));
  EXPECT_TRUE(at::equal(vb, b));
  // Modifying requires a copy first (the mapping is read-only).
  at::Tensor copy = v1.clone();
  copy.add_(1);
  EXPECT_TRUE(at::equal(v1, w));
}

TEST(SafetensorsFile, UnalignedDataFromOldWritersIsCopied) {
  TempDir dir;
  // An unpadded header of odd length: the F32 data starts at an odd file offset.
  std::string header = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  if ((8 + header.size()) % 4 == 0) header += " ";
  ASSERT_NE((8 + header.size()) % 4, 0u);
  const float values[2] = {1.5f, -2.0f};
  std::string bytes(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(bytes.data(), &n, 8);
  bytes += header;
  bytes.append(reinterpret_cast<const char*>(values), sizeof values);
  write_bytes(dir / "old.safetensors", bytes);
  const at::Tensor t = SafetensorsFile::open(dir / "old.safetensors")->tensor("x");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.const_data_ptr()) % alignof(float), 0u);
  EXPECT_FLOAT_EQ(t[0].item<float>(), 1.5f);
  EXPECT_FLOAT_EQ(t[1].item<float>(), -2.0f);
}

TEST(SafetensorsFile, UnknownTensorNameIsAnErrorNamingTheFile) {
  TempDir dir;
  save_safetensors(dir / "x.safetensors", {{"w", at::ones({1})}});
  auto file = SafetensorsFile::open(dir / "x.safetensors");
  EXPECT_FALSE(file->contains("v"));
  try {
    file->tensor("v");
    FAIL() << "no error";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("x.safetensors"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("\"v\""), std::string::npos);
  }
}

TEST(SafetensorsFile, DtypeNames) {
  EXPECT_EQ(dtype_to_safetensors(at::kBFloat16), "BF16");
  EXPECT_EQ(dtype_to_safetensors(at::kBool), "BOOL");
  EXPECT_EQ(dtype_from_safetensors("I64"), at::kLong);
  EXPECT_EQ(dtype_from_safetensors("F8_E8M0"), at::kFloat8_e8m0fnu);
  EXPECT_THROW(dtype_to_safetensors(at::kComplexDouble), IoError);
  EXPECT_THROW(dtype_from_safetensors("F4"), IoError);
  EXPECT_THROW(dtype_from_safetensors("f32"), IoError);
}

TEST(SafetensorsFile, WriterRejectsBadInputWithoutLeavingAFile) {
  TempDir dir;
  const auto path = dir / "x.safetensors";
  EXPECT_THROW(save_safetensors(path, {{"a", at::ones({1})}, {"a", at::ones({2})}}), IoError);
  EXPECT_THROW(save_safetensors(path, {{"__metadata__", at::ones({1})}}), IoError);
  EXPECT_THROW(save_safetensors(path, {{"c", at::ones({1}, at::kComplexDouble)}}), IoError);
  EXPECT_THROW(save_safetensors(path, {{"bad\xff", at::ones({1})}}), IoError);
  EXPECT_THROW(save_safetensors(dir / "missing-dir" / "x.safetensors", {{"a", at::ones({1})}}), IoError);
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

}  // namespace
}  // namespace llmtune::io
