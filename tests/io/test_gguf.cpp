// GGUF container tests against gguf-py (tests/io/gguf_reference.py): files written by GGUFWriter
// read back by GgufFile, files written by GgufWriter read back by GGUFReader (one Python process for
// the whole suite), plus the typed getters and the type table. Writer failures: test_gguf_write.cpp.
#include <gtest/gtest.h>

#include <random>

#include "io/gguf_test_util.h"
#include "io/io_test_util.h"
#include "llmtune/io/gguf.h"
#include "llmtune/util/error.h"
#include "support/interop.h"

namespace llmtune::io {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using llmtune::testing::read_bytes;
using llmtune::testing::TempDir;
using llmtune::testing::expect_io_error;
using llmtune::testing::random_bytes;
using VT = GgufValueType;

struct TensorSpec {
  std::string name;
  std::vector<int64_t> ne;
  GgmlType type;
  std::string bytes;
};

// Every scalar type at its extremes, strings with non-ASCII text, and arrays of each kind.
std::vector<GgufKV> spec_metadata() {
  auto kv = [](std::string key, VT type, json value, VT elem = VT::UINT32) { return GgufKV{std::move(key), {type, elem, std::move(value)}}; };
  return {
      kv("general.architecture", VT::STRING, "llama"),
      kv("test.uint8", VT::UINT8, 255),
      kv("test.int8", VT::INT8, -128),
      kv("test.uint16", VT::UINT16, 65535),
      kv("test.int16", VT::INT16, -32768),
      kv("test.uint32", VT::UINT32, 4294967295u),
      kv("test.int32", VT::INT32, -2147483647 - 1),
      kv("test.float32", VT::FLOAT32, 1e-5),
      kv("test.bool_true", VT::BOOL, true),
      kv("test.bool_false", VT::BOOL, false),
      kv("test.string", VT::STRING, "h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\xa6\x99"),
      kv("test.empty_string", VT::STRING, ""),
      kv("test.uint64", VT::UINT64, 18446744073709551615ull),
      kv("test.int64", VT::INT64, std::numeric_limits<int64_t>::min()),
      kv("test.float64", VT::FLOAT64, 3.141592653589793),
      kv("test.arr_u8", VT::ARRAY, {0, 1, 255}, VT::UINT8),
      kv("test.arr_i16", VT::ARRAY, {-32768, 0, 32767}, VT::INT16),
      kv("test.arr_i32", VT::ARRAY, {-1, 2, 2147483647}, VT::INT32),
      kv("test.arr_u64", VT::ARRAY, {0, 18446744073709551615ull}, VT::UINT64),
      kv("test.arr_i64", VT::ARRAY, {-5, 9223372036854775807ll}, VT::INT64),
      kv("test.arr_f32", VT::ARRAY, {0.5, -1.25, 1e-5, 3e38}, VT::FLOAT32),
      kv("test.arr_f64", VT::ARRAY, {0.1, -2.5e-300}, VT::FLOAT64),
      kv("test.arr_str", VT::ARRAY, {"a", "", "\xc3\xbc", "<0x0A>", "\xe2\x96\x81the"}, VT::STRING),
      kv("test.arr_bool", VT::ARRAY, {true, false, true}, VT::BOOL),
  };
}

std::vector<TensorSpec> spec_tensors() {
  return {
      {"token_embd.weight", {8, 3}, GgmlType::F32, random_bytes(8 * 3 * 4, 1)},
      {"blk.0.attn_norm.weight", {8}, GgmlType::F16, random_bytes(8 * 2, 2)},
      {"ids", {5, 1, 2}, GgmlType::I32, random_bytes(10 * 4, 3)},
      {"blk.0.ffn_down.weight", {64, 2}, GgmlType::Q8_0, random_bytes(2 * 2 * 34, 4)},
      {"blk.0.ffn_up.weight", {256, 2}, GgmlType::Q4_K, random_bytes(2 * 144, 5)},
      {"output.weight", {4, 3, 2, 2}, GgmlType::BF16, random_bytes(48 * 2, 6)},
  };
}

std::string hex(const std::string& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

// Values compare exactly, except FLOAT32 which compares as the float32 both sides stored.
bool same_value(VT type, const json& expected, const json& actual) {
  if (type == VT::FLOAT32) return actual.is_number() && static_cast<float>(expected.get<double>()) == static_cast<float>(actual.get<double>());
  return expected == actual;
}

void expect_same_value(const std::string& key, const GgufValue& expected, VT type, VT elem_type, const json& actual) {
  ASSERT_EQ(type, expected.type) << key;
  if (type != VT::ARRAY) {
    EXPECT_TRUE(same_value(type, expected.value, actual)) << key << ": " << expected.value << " vs " << actual;
    return;
  }
  ASSERT_EQ(elem_type, expected.elem_type) << key;
  ASSERT_TRUE(actual.is_array()) << key;
  ASSERT_EQ(actual.size(), expected.value.size()) << key;
  for (size_t i = 0; i < actual.size(); ++i)
    EXPECT_TRUE(same_value(elem_type, expected.value[i], actual[i])) << key << "[" << i << "]: " << expected.value[i] << " vs " << actual[i];
}

// Writes the spec with GgufWriter, using the typed helpers where they exist.
void write_spec(const fs::path& path, uint32_t alignment) {
  GgufWriter w(path, alignment);
  for (const auto& kv : spec_metadata()) {
    const auto& v = kv.value;
    if (v.type == VT::STRING) w.add_string(kv.key, v.value.get<std::string>());
    else if (v.type == VT::UINT32) w.add_u32(kv.key, v.value.get<uint32_t>());
    else if (v.type == VT::INT32) w.add_i32(kv.key, v.value.get<int32_t>());
    else if (v.type == VT::UINT64) w.add_u64(kv.key, v.value.get<uint64_t>());
    else if (v.type == VT::FLOAT32) w.add_f32(kv.key, static_cast<float>(v.value.get<double>()));
    else if (v.type == VT::BOOL) w.add_bool(kv.key, v.value.get<bool>());
    else if (v.type == VT::ARRAY && v.elem_type == VT::STRING) w.add_string_array(kv.key, v.value.get<std::vector<std::string>>());
    else if (v.type == VT::ARRAY && v.elem_type == VT::INT32) w.add_i32_array(kv.key, v.value.get<std::vector<int32_t>>());
    else if (v.type == VT::ARRAY && v.elem_type == VT::FLOAT32) {
      std::vector<float> f;
      for (const auto& e : v.value) f.push_back(static_cast<float>(e.get<double>()));
      w.add_f32_array(kv.key, f);
    } else {
      w.add(kv.key, v);
    }
  }
  for (const auto& t : spec_tensors()) w.add_tensor_info(t.name, t.ne, t.type);
  for (const auto& t : spec_tensors()) w.write_tensor(t.bytes.data(), t.bytes.size());
  w.commit();
  EXPECT_EQ(w.bytes_written(), fs::file_size(path));
}

json spec_request_for_python(const fs::path& path, uint32_t alignment) {
  json kv = json::array();
  for (const auto& item : spec_metadata()) {
    json j{{"key", item.key}, {"type", gguf_value_type_name(item.value.type)}, {"value", item.value.value}};
    if (item.value.type == VT::ARRAY) j["elem_type"] = gguf_value_type_name(item.value.elem_type);
    kv.push_back(j);
    if (alignment != 32 && item.key == "general.architecture")
      kv.push_back({{"key", "general.alignment"}, {"type", "UINT32"}, {"value", alignment}});
  }
  // gguf-py writes arrays of arrays (inner type from the first element); GgufFile reads them.
  kv.push_back({{"key", "test.nested"}, {"type", "ARRAY"}, {"elem_type", "ARRAY"}, {"value", {{1, 2}, {3}}}});
  json tensors = json::array();
  for (const auto& t : spec_tensors())
    tensors.push_back({{"name", t.name}, {"type", ggml_type_info(t.type).name}, {"ne", t.ne}, {"hex", hex(t.bytes)}});
  return {{"path", path.string()}, {"kv", kv}, {"tensors", tensors}};
}

// One Python run for the suite: gguf-py writes two files and reads the two GgufWriter wrote.
class GgufInterop : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    write_spec(ours(32), 32);
    write_spec(ours(64), 64);
    json request;
    request["write"] = {spec_request_for_python(theirs(32), 32), spec_request_for_python(theirs(64), 64)};
    request["read"] = {ours(32).string(), ours(64).string()};
    request["types"] = json::array();
    for (uint32_t id = 0; id < 64; ++id)
      if (ggml_type_info(id)) request["types"].push_back(id);
    try {
      response_ = new json(llmtune::testing::run_json_script("tests/io/gguf_reference.py", nlohmann::ordered_json(request)));
    } catch (const std::exception& e) {
      error_ = new std::string(e.what());
    }
  }
  static void TearDownTestSuite() {
    delete dir_;
    delete response_;
    delete error_;
    dir_ = nullptr;
    response_ = nullptr;
    error_ = nullptr;
  }
  void SetUp() override {
    if (error_) FAIL() << *error_;
  }
  static fs::path ours(uint32_t alignment) { return *dir_ / ("ours-" + std::to_string(alignment) + ".gguf"); }
  static fs::path theirs(uint32_t alignment) { return *dir_ / ("theirs-" + std::to_string(alignment) + ".gguf"); }

  void check_python_read(size_t index, uint32_t alignment) {
    const json& r = (*response_)["read"][index];
    ASSERT_FALSE(r.contains("error")) << r["error"];
    EXPECT_EQ(r["version"], 3);
    EXPECT_EQ(r["alignment"], alignment);
    auto metadata = spec_metadata();
    if (alignment != 32) metadata.insert(metadata.begin(), GgufKV{"general.alignment", {VT::UINT32, VT::UINT32, alignment}});
    const json& fields = r["fields"];
    ASSERT_EQ(fields.size(), metadata.size());
    for (size_t i = 0; i < metadata.size(); ++i) {
      const json& f = fields[i];
      EXPECT_EQ(f["key"], metadata[i].key);
      const auto type_of = [](const json& name) {
        for (uint32_t id = 0; id <= 12; ++id)
          if (name == gguf_value_type_name(static_cast<VT>(id))) return static_cast<VT>(id);
        ADD_FAILURE() << "unknown type " << name;
        return VT::UINT8;
      };
      const VT type = type_of(f["types"][0]);
      const VT elem = f["types"].size() > 1 ? type_of(f["types"][1]) : VT::UINT32;
      expect_same_value(metadata[i].key, metadata[i].value, type, elem, f["value"]);
    }
    const auto file = GgufFile::open(ours(alignment));
    const auto specs = spec_tensors();
    ASSERT_EQ(r["tensors"].size(), specs.size());
    uint64_t expected_offset = 0;
    for (size_t i = 0; i < specs.size(); ++i) {
      const json& t = r["tensors"][i];
      EXPECT_EQ(t["name"], specs[i].name);
      EXPECT_EQ(t["type"], ggml_type_info(specs[i].type).name);
      EXPECT_EQ(t["shape"], json(specs[i].ne));
      EXPECT_EQ(t["n_bytes"], specs[i].bytes.size());
      EXPECT_EQ(t["hex"], hex(specs[i].bytes)) << specs[i].name;
      // gguf-py's absolute offset is where GgufFile finds the data, and the layout is ggml's:
      // in info order, each tensor padded to the alignment.
      const GgufTensorInfo& ours_t = file->tensors()[i];
      EXPECT_EQ(ours_t.offset, expected_offset);
      EXPECT_EQ(t["data_offset"].get<uint64_t>() - r["tensors"][0]["data_offset"].get<uint64_t>(), ours_t.offset);
      EXPECT_EQ(t["data_offset"].get<uint64_t>() % alignment, 0u);
      expected_offset += (specs[i].bytes.size() + alignment - 1) / alignment * alignment;
      if (specs[i].type == GgmlType::F32 || specs[i].type == GgmlType::F16 || specs[i].type == GgmlType::I32) {
        EXPECT_EQ(t["data_shape"], json(ours_t.shape()));
      }
    }
    EXPECT_EQ(fs::file_size(ours(alignment)) % alignment, 0u);
  }

  void check_our_read(uint32_t alignment) {
    const auto file = GgufFile::open(theirs(alignment));
    EXPECT_EQ(file->version(), 3u);
    EXPECT_EQ(file->alignment(), alignment);
    auto metadata = spec_metadata();
    if (alignment != 32) metadata.insert(metadata.begin() + 1, GgufKV{"general.alignment", {VT::UINT32, VT::UINT32, alignment}});
    const auto& got = file->metadata();
    ASSERT_EQ(got.size(), metadata.size() + 1);
    for (size_t i = 0; i < metadata.size(); ++i) {
      EXPECT_EQ(got[i].key, metadata[i].key);
      expect_same_value(metadata[i].key, metadata[i].value, got[i].value.type, got[i].value.elem_type, got[i].value.value);
    }
    EXPECT_EQ(got.back().key, "test.nested");
    EXPECT_EQ(got.back().value.type, VT::ARRAY);
    EXPECT_EQ(got.back().value.elem_type, VT::ARRAY);
    EXPECT_EQ(got.back().value.value, json({{1, 2}, {3}}));

    const auto specs = spec_tensors();
    ASSERT_EQ(file->tensors().size(), specs.size());
    for (size_t i = 0; i < specs.size(); ++i) {
      const GgufTensorInfo& t = file->tensors()[i];
      EXPECT_EQ(t.name, specs[i].name);
      EXPECT_EQ(t.ne, specs[i].ne);
      EXPECT_EQ(t.type, specs[i].type);
      EXPECT_EQ(t.n_bytes, specs[i].bytes.size());
      EXPECT_EQ(t.offset % alignment, 0u);
      EXPECT_EQ(std::string(reinterpret_cast<const char*>(file->data(t)), t.n_bytes), specs[i].bytes) << t.name;
      EXPECT_EQ(file->find_tensor(t.name), &t);
    }
  }

  static TempDir* dir_;
  static json* response_;
  static std::string* error_;
};

TempDir* GgufInterop::dir_ = nullptr;
json* GgufInterop::response_ = nullptr;
std::string* GgufInterop::error_ = nullptr;

TEST_F(GgufInterop, GgufPyReadsOurFile) { check_python_read(0, 32); }
TEST_F(GgufInterop, GgufPyReadsOurFileWithAlignment64) { check_python_read(1, 64); }
TEST_F(GgufInterop, WeReadGgufPyFile) { check_our_read(32); }
TEST_F(GgufInterop, WeReadGgufPyFileWithAlignment64) { check_our_read(64); }

// gguf-py's block table agrees with ours for every type, except Q8_1 (FORMATS.md §6.3).
TEST_F(GgufInterop, TypeTableMatchesGgufPy) {
  const json& table = (*response_)["types"];
  ASSERT_EQ(table.size(), 20u);
  for (const auto& row : table) {
    const auto* info = ggml_type_info(row["id"].get<uint32_t>());
    ASSERT_NE(info, nullptr) << row;
    EXPECT_EQ(row["name"], info->name);
    EXPECT_EQ(row["block_size"], info->block_size) << info->name;
    if (info->type == GgmlType::Q8_1) EXPECT_EQ(info->type_size, 36);  // gguf-py says 40
    else EXPECT_EQ(row["type_size"], info->type_size) << info->name;
  }
}

TEST(GgufTypes, NamesIdsAndSizes) {
  EXPECT_EQ(ggml_type_from_name("q4_k"), GgmlType::Q4_K);
  EXPECT_EQ(ggml_type_from_name("BF16"), GgmlType::BF16);
  EXPECT_EQ(ggml_type_from_name("Q8_0"), GgmlType::Q8_0);
  EXPECT_EQ(ggml_type_from_name("iq2_xxs"), std::nullopt);
  EXPECT_EQ(ggml_type_from_name(""), std::nullopt);
  EXPECT_EQ(ggml_type_info(16), nullptr);  // IQ2_XXS
  EXPECT_EQ(ggml_type_info(39), nullptr);  // MXFP4
  EXPECT_EQ(ggml_type_info(GgmlType::Q8_1).type_size, 36);
  EXPECT_EQ(ggml_nbytes(GgmlType::Q4_K, 512), 288u);
  EXPECT_EQ(ggml_nbytes(GgmlType::F16, 7), 14u);
  EXPECT_EQ(ggml_nbytes(GgmlType::Q8_0, 0), 0u);
  EXPECT_THROW(ggml_nbytes(GgmlType::Q8_0, 33), IoError);
  EXPECT_THROW(ggml_nbytes(GgmlType::F32, -1), IoError);
  EXPECT_THROW(ggml_nbytes(GgmlType::F64, std::numeric_limits<int64_t>::max()), IoError);
  EXPECT_STREQ(gguf_value_type_name(VT::FLOAT64), "FLOAT64");
  GgufTensorInfo t;
  t.ne = {4, 3, 2};
  EXPECT_EQ(t.shape(), (std::vector<int64_t>{2, 3, 4}));
  EXPECT_EQ(t.n_elements(), 24);
}

class GgufGetters : public ::testing::Test {
 protected:
  void SetUp() override {
    GgufWriter w(path_);
    w.add_string("s", "text");
    w.add_u32("u32", 7);
    w.add_i32("i32", -3);
    w.add("u64_big", {VT::UINT64, VT::UINT32, 18446744073709551615ull});
    w.add("u8", {VT::UINT8, VT::UINT32, 200});
    w.add_f32("f32", 0.5f);
    w.add("f64", {VT::FLOAT64, VT::UINT32, 0.1});
    w.add_bool("b", true);
    w.add_string_array("strs", {"x", "y"});
    w.add_f32_array("floats", {1.5f, -2.0f});
    w.add_i32_array("ints", {1, -2, 3});
    w.add("u64s", {VT::ARRAY, VT::UINT64, {1, 18446744073709551615ull}});
    w.add("empty", {VT::ARRAY, VT::INT32, json::array()});
    w.commit();
    file_ = GgufFile::open(path_);
  }
  TempDir dir_;
  fs::path path_ = dir_ / "g.gguf";
  std::shared_ptr<GgufFile> file_;
};

TEST_F(GgufGetters, ReturnValuesOfCompatibleTypes) {
  EXPECT_EQ(file_->get_string("s"), "text");
  EXPECT_EQ(file_->get_int("u32"), 7);
  EXPECT_EQ(file_->get_int("i32"), -3);
  EXPECT_EQ(file_->get_int("u8"), 200);
  EXPECT_EQ(file_->get_float("f32"), 0.5);
  EXPECT_EQ(file_->get_float("f64"), 0.1);
  EXPECT_EQ(file_->get_float("u32"), 7.0);  // integers are numbers too
  EXPECT_EQ(file_->get_bool_opt("b"), true);
  EXPECT_EQ(file_->get_string_array("strs"), (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(file_->get_float_array("floats"), (std::vector<double>{1.5, -2.0}));
  EXPECT_EQ(file_->get_float_array("ints"), (std::vector<double>{1, -2, 3}));
  EXPECT_EQ(file_->get_int_array("ints"), (std::vector<int64_t>{1, -2, 3}));
  EXPECT_TRUE(file_->get_int_array("empty").empty());
  EXPECT_EQ(file_->get_string_opt("absent"), std::nullopt);
  EXPECT_EQ(file_->get_int_opt("absent"), std::nullopt);
  EXPECT_EQ(file_->get_float_opt("absent"), std::nullopt);
  EXPECT_EQ(file_->get_bool_opt("absent"), std::nullopt);
  EXPECT_EQ(file_->find("absent"), nullptr);
  EXPECT_EQ(file_->find_tensor("absent"), nullptr);
  EXPECT_TRUE(file_->tensors().empty());
}

TEST_F(GgufGetters, MissingKeysAndWrongTypesNameTheKey) {
  expect_io_error(path_, "metadata key \"absent\" is missing", [&] { file_->get_string("absent"); });
  expect_io_error(path_, "metadata key \"absent\" is missing", [&] { file_->get_int("absent"); });
  expect_io_error(path_, "metadata key \"absent\" is missing", [&] { file_->get_float_array("absent"); });
  expect_io_error(path_, "metadata key \"u32\" is UINT32, expected STRING", [&] { file_->get_string("u32"); });
  expect_io_error(path_, "metadata key \"s\" is STRING, expected an integer", [&] { file_->get_int("s"); });
  expect_io_error(path_, "metadata key \"f32\" is FLOAT32, expected an integer", [&] { file_->get_int("f32"); });
  expect_io_error(path_, "metadata key \"b\" is BOOL, expected a number", [&] { file_->get_float("b"); });
  expect_io_error(path_, "metadata key \"s\" is STRING, expected BOOL", [&] { file_->get_bool_opt("s"); });
  expect_io_error(path_, "\"u64_big\" = 18446744073709551615 does not fit int64", [&] { file_->get_int("u64_big"); });
  expect_io_error(path_, "\"u64s\" element 1", [&] { file_->get_int_array("u64s"); });
  expect_io_error(path_, "is ARRAY of FLOAT32, expected ARRAY of STRING", [&] { file_->get_string_array("floats"); });
  expect_io_error(path_, "is ARRAY of FLOAT32, expected ARRAY of integers", [&] { file_->get_int_array("floats"); });
  expect_io_error(path_, "is ARRAY of STRING, expected ARRAY of numbers", [&] { file_->get_float_array("strs"); });
}

TEST(GgufRead, RawTensorKeepsTheMappingAlive) {
  TempDir dir;
  const auto path = dir / "r.gguf";
  const std::string bytes = random_bytes(34 * 2, 9);
  {
    GgufWriter w(path);
    w.add_tensor_info("q", {64}, GgmlType::Q8_0);
    w.add_tensor_info("empty", {0, 3}, GgmlType::F32);
    w.write_tensor(bytes.data(), bytes.size());
    w.write_tensor(nullptr, 0);
    w.commit();
  }
  at::Tensor raw, empty;
  {
    auto file = GgufFile::open(path);
    raw = file->raw(*file->find_tensor("q"));
    empty = file->raw(*file->find_tensor("empty"));
    EXPECT_EQ(file->find_tensor("empty")->shape(), (std::vector<int64_t>{3, 0}));
  }
  EXPECT_EQ(raw.sizes(), (std::vector<int64_t>{68}));
  EXPECT_EQ(raw.scalar_type(), at::kByte);
  EXPECT_EQ(std::string(static_cast<const char*>(raw.const_data_ptr()), 68), bytes);
  EXPECT_EQ(empty.numel(), 0);
}

TEST(GgufRead, Version2IsAccepted) {
  TempDir dir;
  const auto path = dir / "v2.gguf";
  {
    GgufWriter w(path);
    w.add_u32("k", 1);
    w.commit();
  }
  std::string bytes = read_bytes(path);
  bytes[4] = 2;
  llmtune::testing::write_bytes(path, bytes);
  const auto file = GgufFile::open(path);
  EXPECT_EQ(file->version(), 2u);
  EXPECT_EQ(file->get_int("k"), 1);
}

}  // namespace
}  // namespace llmtune::io
