// Reading and writing bitsandbytes checkpoints as transformers saves them (FORMATS.md §5.4, §8.1):
// the quantization_config, each quantized linear's tensors checked against its packed quant_state
// JSON, and the linear factory that builds FourBitLinear / Int8Linear straight from them.
#include "llmtune/quant/bnb_checkpoint.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/zeros.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstring>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>

#include "llmtune/io/read_file.h"
#include "llmtune/quant/bnb_linear.h"
#include "llmtune/quant/int8_linear.h"
#include "llmtune/util/error.h"

namespace llmtune::quant {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

// Tensors by name: the file's (CPU views) or a model loader's (tracked as used).
using StoredGetter = std::function<at::Tensor(const std::string&)>;

const std::map<std::string, at::ScalarType>& storage_dtypes() {
  static const std::map<std::string, at::ScalarType> m{
      {"uint8", at::kByte},    {"int8", at::kChar},   {"int16", at::kShort},   {"int32", at::kInt},   {"int64", at::kLong},
      {"bfloat16", at::kBFloat16}, {"float16", at::kHalf}, {"float32", at::kFloat}, {"float64", at::kDouble}};
  return m;
}

at::ScalarType float_dtype(const std::string& name, const std::string& where) {
  if (name == "float32") return at::kFloat;
  if (name == "bfloat16") return at::kBFloat16;
  if (name == "float16") return at::kHalf;
  throw QuantError(where + " is '" + name + "'; expected float32, bfloat16 or float16");
}

std::string float_dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    default: throw QuantError(std::string("4-bit weights of dtype ") + c10::toString(t) + " cannot be described in a quant_state");
  }
}

bool valid_blocksize(int64_t b) { return b >= 32 && b <= 4096 && (b & (b - 1)) == 0; }

std::string quant_state_key(const std::string& module, FourBit type) {
  return module + ".weight.quant_state.bitsandbytes__" + four_bit_name(type);
}

// The module's quant_state key; QuantError naming what is there when neither nf4 nor fp4 is.
std::string find_quant_state(const io::WeightFiles& files, const std::string& module, const std::string& source) {
  for (FourBit t : {FourBit::NF4, FourBit::FP4})
    if (files.contains(quant_state_key(module, t))) return quant_state_key(module, t);
  const std::string prefix = module + ".weight.quant_state.";
  for (const auto& n : files.names())
    if (n.starts_with(prefix))
      throw QuantError(source + ": '" + n + "' names an unknown 4-bit quant_type; bitsandbytes__nf4 and bitsandbytes__fp4 are supported");
  throw QuantError(source + ": 4-bit module '" + module + "' has no '" + prefix +
                   "bitsandbytes__nf4' (or __fp4) tensor; the checkpoint is incomplete, save it again with transformers");
}

const at::Tensor& need(const at::Tensor& t, at::ScalarType dtype, int64_t numel, const std::string& key, const std::string& source) {
  if (t.scalar_type() != dtype || t.numel() != numel)
    throw QuantError(fmt::format("{}: '{}' is {} {} but the quant_state needs {} values of {}", source, key,
                                 c10::toString(t.scalar_type()), c10::str(t.sizes()), numel, c10::toString(dtype)));
  return t;
}

FourBitTensor read_four_bit(const io::WeightFiles& files, const StoredGetter& get, const std::string& module,
                            const std::string& source) {
  const std::string qs_key = find_quant_state(files, module, source);
  const at::Tensor qs_bytes = get(qs_key).contiguous();
  if (qs_bytes.scalar_type() != at::kByte || qs_bytes.dim() != 1)
    throw QuantError(source + ": '" + qs_key + "' must be uint8 bytes of a JSON object");
  json qs;
  try {
    qs = io::parse_json_bounded<json>(std::string_view(reinterpret_cast<const char*>(qs_bytes.data_ptr<uint8_t>()), qs_bytes.numel()));
  } catch (const std::exception& e) {
    throw QuantError(source + ": '" + qs_key + "' is not a JSON object (" + io::json_error_text(e) + ")");
  }
  const auto field = [&](const char* k) -> const json& {
    if (!qs.is_object() || !qs.contains(k)) throw QuantError(source + ": '" + qs_key + "' has no \"" + k + "\"");
    return qs.at(k);
  };
  const auto int_field = [&](const char* k) -> int64_t {
    const json& v = field(k);
    if (!v.is_number_integer()) throw QuantError(source + ": '" + qs_key + "' \"" + k + "\" must be an integer, got " + v.dump());
    return v.get<int64_t>();
  };
  const auto string_field = [&](const char* k) -> std::string {
    const json& v = field(k);
    if (!v.is_string()) throw QuantError(source + ": '" + qs_key + "' \"" + k + "\" must be a string, got " + v.dump());
    return v.get<std::string>();
  };

  FourBitTensor q;
  FourBitState& s = q.state;
  const std::string type_name = string_field("quant_type");
  if (type_name != "nf4" && type_name != "fp4")
    throw QuantError(source + ": '" + qs_key + "' has unknown quant_type '" + type_name + "'; nf4 and fp4 are supported");
  s.type = four_bit_from_name(type_name);
  if (qs_key != quant_state_key(module, s.type))
    throw QuantError(source + ": '" + qs_key + "' says quant_type '" + type_name + "', which its name contradicts");
  s.blocksize = int_field("blocksize");
  if (!valid_blocksize(s.blocksize))
    throw QuantError(source + ": '" + qs_key + "' has blocksize " + std::to_string(s.blocksize) +
                     "; bitsandbytes supports powers of two from 32 to 4096");
  s.dtype = float_dtype(string_field("dtype"), source + ": '" + qs_key + "' dtype");
  const json& shape = field("shape");
  if (!shape.is_array() || shape.size() != 2 || !shape[0].is_number_integer() || !shape[1].is_number_integer() ||
      shape[0].get<int64_t>() <= 0 || shape[1].get<int64_t>() <= 0)
    throw QuantError(source + ": '" + qs_key + "' \"shape\" must be [out, in] of positive integers, got " + shape.dump());
  s.shape = {shape[0].get<int64_t>(), shape[1].get<int64_t>()};
  const int64_t n = s.shape[0] * s.shape[1], blocks = (n + s.blocksize - 1) / s.blocksize;

  // The packed codes, in whatever dtype bnb_4bit_quant_storage gave them: the bytes count.
  const std::string wkey = module + ".weight";
  at::Tensor packed = get(wkey).contiguous();
  packed = (packed.scalar_type() == at::kByte ? packed : packed.view(at::kByte)).reshape({-1, 1});
  if (packed.size(0) != (n + 1) / 2)
    throw QuantError(fmt::format("{}: '{}' holds {} packed bytes but its quant_state shape [{}, {}] needs {}", source, wkey,
                                 packed.size(0), s.shape[0], s.shape[1], (n + 1) / 2));
  q.packed = packed;

  s.nested = qs.contains("nested_blocksize") || files.contains(wkey + ".nested_absmax");
  const std::string akey = wkey + ".absmax";
  if (!files.contains(akey)) throw QuantError(source + ": 4-bit module '" + module + "' has no '" + akey + "' tensor");
  s.absmax = need(get(akey).reshape({-1}), s.nested ? at::kByte : at::kFloat, blocks, akey, source);
  if (s.nested) {
    s.nested_blocksize = int_field("nested_blocksize");
    if (!valid_blocksize(s.nested_blocksize))
      throw QuantError(source + ": '" + qs_key + "' has nested_blocksize " + std::to_string(s.nested_blocksize) +
                       "; bitsandbytes supports powers of two from 32 to 4096");
    float_dtype(string_field("nested_dtype"), source + ": '" + qs_key + "' nested_dtype");
    const json& offset = field("nested_offset");
    if (!offset.is_number()) throw QuantError(source + ": '" + qs_key + "' \"nested_offset\" must be a number");
    s.nested_offset = offset.get<double>();
    for (const char* k : {".nested_absmax", ".nested_quant_map"})
      if (!files.contains(wkey + k)) throw QuantError(source + ": double-quantized module '" + module + "' has no '" + wkey + k + "' tensor");
    s.nested_absmax = need(get(wkey + ".nested_absmax").reshape({-1}).to(at::kFloat), at::kFloat,
                           (blocks + s.nested_blocksize - 1) / s.nested_blocksize, wkey + ".nested_absmax", source);
    s.nested_code = need(get(wkey + ".nested_quant_map").reshape({-1}), at::kFloat, 256, wkey + ".nested_quant_map", source);
  }
  // The code table: only bitsandbytes' own NF4/FP4 tables are supported.
  if (files.contains(wkey + ".quant_map")) {
    const at::Tensor map = get(wkey + ".quant_map").reshape({-1});
    need(map, at::kFloat, 16, wkey + ".quant_map", source);
    if (!at::equal(map, four_bit_code(s.type)))
      throw QuantError(source + ": '" + wkey + ".quant_map' is not bitsandbytes' " + type_name + " code table; custom 4-bit codes are not supported");
  }
  return q;
}

Int8Tensor read_int8(const io::WeightFiles& files, const StoredGetter& get, const std::string& module, const std::string& source) {
  Int8Tensor q;
  const std::string wkey = module + ".weight", skey = module + ".SCB";
  if (!files.contains(skey)) throw QuantError(source + ": 8-bit module '" + module + "' has no '" + skey + "' tensor");
  q.weight = get(wkey);
  if (q.weight.scalar_type() != at::kChar || q.weight.dim() != 2)
    throw QuantError(fmt::format("{}: '{}' is {} {}; an 8-bit module stores int8 (out, in)", source, wkey,
                                 c10::toString(q.weight.scalar_type()), c10::str(q.weight.sizes())));
  q.scb = get(skey);
  if (q.scb.scalar_type() != at::kFloat || q.scb.dim() != 1 || q.scb.size(0) != q.weight.size(0))
    throw QuantError(fmt::format("{}: '{}' is {} {}; it must be float32 ({},), one absmax per row of '{}'", source, skey,
                                 c10::toString(q.scb.scalar_type()), c10::str(q.scb.sizes()), q.weight.size(0), wkey));
  if (files.contains(module + ".weight_format")) {
    const at::Tensor f = get(module + ".weight_format");
    if (f.numel() != 1 || f.to(at::kLong).item<int64_t>() != 0)
      throw QuantError(source + ": '" + module + ".weight_format' is not 0 (row); only bitsandbytes' row layout loads");
  }
  return q;
}

bool is_four_bit(const io::WeightFiles& files, const std::string& module) {
  return files.contains(module + ".weight.absmax") || files.contains(quant_state_key(module, FourBit::NF4)) ||
         files.contains(quant_state_key(module, FourBit::FP4));
}

const json& typed(const json& q, const char* key, bool (json::*is)() const noexcept, const char* what, const std::string& source) {
  const json& v = q.at(key);
  if (!(v.*is)()) throw QuantError(source + ": quantization_config." + key + " must be " + what + ", got " + v.dump());
  return v;
}

}  // namespace

std::optional<BnbConfig> read_bnb_config(const fs::path& model_dir) {
  const fs::path path = model_dir / "config.json";
  const json config = io::read_json_file<QuantError, json>(path, "config.json");
  if (!config.contains("quantization_config") || config.at("quantization_config").is_null()) return std::nullopt;
  const std::string source = path.string();
  const json& q = config.at("quantization_config");
  if (!q.is_object()) throw QuantError(source + ": quantization_config must be a JSON object");
  const std::string method = q.contains("quant_method") && q.at("quant_method").is_string() ? q.at("quant_method").get<std::string>() : "";
  if (method == "gptq" || method == "compressed-tensors") return std::nullopt;  // quant/gptq_linear.h reads those
  if (method != "bitsandbytes")
    throw QuantError(source + ": quantization_config.quant_method '" + method +
                     "' is not supported yet (bitsandbytes, gptq and compressed-tensors checkpoints load); use the model's "
                     "16-bit original");
  BnbConfig c;
  const auto flag = [&](const char* key, const char* hidden) {
    const char* k = q.contains(key) ? key : hidden;
    return q.contains(k) && typed(q, k, &json::is_boolean, "true or false", source).get<bool>();
  };
  c.load_in_4bit = flag("load_in_4bit", "_load_in_4bit");
  c.load_in_8bit = flag("load_in_8bit", "_load_in_8bit");
  if (c.load_in_4bit == c.load_in_8bit)
    throw QuantError(source + ": quantization_config must set exactly one of load_in_4bit and load_in_8bit");
  if (q.contains("bnb_4bit_quant_type")) {
    const std::string t = typed(q, "bnb_4bit_quant_type", &json::is_string, "a string", source).get<std::string>();
    if (t != "nf4" && t != "fp4")
      throw QuantError(source + ": quantization_config.bnb_4bit_quant_type '" + t + "' is unknown; use nf4 or fp4");
    c.type = four_bit_from_name(t);
  }
  if (q.contains("bnb_4bit_use_double_quant"))
    c.double_quant = typed(q, "bnb_4bit_use_double_quant", &json::is_boolean, "true or false", source).get<bool>();
  if (q.contains("bnb_4bit_compute_dtype") && !q.at("bnb_4bit_compute_dtype").is_null()) {
    std::string d = typed(q, "bnb_4bit_compute_dtype", &json::is_string, "a dtype name", source).get<std::string>();
    if (d.starts_with("torch.")) d = d.substr(6);
    c.compute_dtype = float_dtype(d, source + ": quantization_config.bnb_4bit_compute_dtype");
  }
  if (q.contains("bnb_4bit_quant_storage") && !q.at("bnb_4bit_quant_storage").is_null()) {
    std::string d = typed(q, "bnb_4bit_quant_storage", &json::is_string, "a dtype name", source).get<std::string>();
    if (d.starts_with("torch.")) d = d.substr(6);
    if (!storage_dtypes().count(d))
      throw QuantError(source + ": quantization_config.bnb_4bit_quant_storage '" + d + "' is not a torch dtype bitsandbytes can store codes in");
    c.quant_storage = d;
  }
  if (q.contains("llm_int8_skip_modules") && !q.at("llm_int8_skip_modules").is_null()) {
    for (const json& m : typed(q, "llm_int8_skip_modules", &json::is_array, "a list of module names", source)) {
      if (!m.is_string()) throw QuantError(source + ": quantization_config.llm_int8_skip_modules must hold strings, got " + m.dump());
      c.skip_modules.push_back(m.get<std::string>());
    }
  }
  if (q.contains("llm_int8_threshold")) {
    c.int8_threshold = typed(q, "llm_int8_threshold", &json::is_number, "a number", source).get<double>();
    if (c.int8_threshold < 0) throw QuantError(source + ": quantization_config.llm_int8_threshold must be ≥ 0");
  }
  return c;
}

std::string bnb_config_json(const BnbConfig& c) {
  nlohmann::ordered_json j;
  j["_load_in_4bit"] = c.load_in_4bit;
  j["_load_in_8bit"] = c.load_in_8bit;
  j["bnb_4bit_compute_dtype"] = float_dtype_name(c.compute_dtype);
  j["bnb_4bit_quant_storage"] = c.quant_storage;
  j["bnb_4bit_quant_type"] = four_bit_name(c.type);
  j["bnb_4bit_use_double_quant"] = c.double_quant;
  j["llm_int8_enable_fp32_cpu_offload"] = false;
  j["llm_int8_has_fp16_weight"] = false;
  j["llm_int8_skip_modules"] = c.skip_modules.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(c.skip_modules);
  j["llm_int8_threshold"] = c.int8_threshold;
  j["load_in_4bit"] = c.load_in_4bit;
  j["load_in_8bit"] = c.load_in_8bit;
  j["quant_method"] = "bitsandbytes";
  return j.dump();
}

bool is_bnb_quantized_module(const io::WeightFiles& files, const std::string& module_path) {
  if (is_four_bit(files, module_path) || files.contains(module_path + ".SCB")) return true;
  const std::string w = module_path + ".weight";
  return files.contains(w) && (files.info(w).dtype == "U8" || files.info(w).dtype == "I8");
}

FourBitTensor read_four_bit_module(const io::WeightFiles& files, const std::string& module_path) {
  return read_four_bit(files, [&](const std::string& n) { return files.tensor(n); }, module_path, files.path().string());
}

Int8Tensor read_int8_module(const io::WeightFiles& files, const std::string& module_path) {
  return read_int8(files, [&](const std::string& n) { return files.tensor(n); }, module_path, files.path().string());
}

at::Tensor dequantize_bnb_module(const io::WeightFiles& files, const std::string& module_path, at::ScalarType dtype) {
  if (!is_bnb_quantized_module(files, module_path))
    throw QuantError(files.path().string() + ": module '" + module_path + "' is not stored quantized");
  if (is_four_bit(files, module_path)) return dequantize_4bit(read_four_bit_module(files, module_path), dtype);
  return dequantize_int8(read_int8_module(files, module_path), dtype);
}

model::LinearFactory bnb_checkpoint_linear_factory(const BnbConfig& config, const io::WeightFiles& files, const fs::path& dir,
                                                   c10::Device device) {
  return [config, files, source = dir.string(), device](const model::LinearRequest& r,
                                                        const model::TensorSource& get) -> model::LinearPtr {
    if (!is_bnb_quantized_module(files, r.path)) return model::make_dense_linear(r, get);  // kept 16-bit (skip list)
    const StoredGetter stored = [&](const std::string& n) { return get(n, model::kStoredTensor); };
    const bool four_bit = is_four_bit(files, r.path);
    if (four_bit != config.load_in_4bit)
      throw QuantError(source + ": module '" + r.path + "' is stored " + (four_bit ? "4-bit" : "8-bit") +
                       " but config.json's quantization_config says " + (config.load_in_4bit ? "load_in_4bit" : "load_in_8bit"));
    const std::vector<int64_t> expected{r.out_features, r.in_features};
    at::Tensor bias = r.bias ? get(r.path + ".bias", {r.out_features}) : at::Tensor();
    if (four_bit) {
      FourBitTensor q = read_four_bit(files, stored, r.path, source);
      if (q.state.shape != expected)
        throw QuantError(fmt::format("{}: '{}' has quant_state shape {} but config.json implies {}", source,
                                     quant_state_key(r.path, q.state.type), c10::str(at::IntArrayRef(q.state.shape)),
                                     c10::str(at::IntArrayRef(expected))));
      // Each stored tensor moved once to the model's device.
      FourBitState& s = q.state;
      q.packed = q.packed.to(device);
      s.absmax = s.absmax.to(device);
      if (s.nested) {
        s.nested_absmax = s.nested_absmax.to(device);
        s.nested_code = s.nested_code.to(device);
      }
      // bnb_4bit_compute_dtype applies as transformers applies it (Linear4bit's compute_dtype).
      return std::make_shared<FourBitLinear>(std::move(q), std::move(bias), config.compute_dtype);
    }
    Int8Tensor q = read_int8(files, stored, r.path, source);
    if (q.weight.sizes() != at::IntArrayRef(expected))
      throw QuantError(fmt::format("{}: '{}.weight' has shape {} but config.json implies {}", source, r.path,
                                   c10::str(q.weight.sizes()), c10::str(at::IntArrayRef(expected))));
    q.weight = q.weight.to(device);
    q.scb = q.scb.to(device);
    return std::make_shared<Int8Linear>(std::move(q), std::move(bias), config.int8_threshold);
  };
}

std::string four_bit_state_json(const FourBitState& s) {
  // The layout json.dumps gives QuantState.as_dict(packed=True)'s non-tensor items.
  std::string out = fmt::format(R"({{"quant_type": "{}", "blocksize": {}, "dtype": "{}", "shape": [{}]}})", four_bit_name(s.type),
                                s.blocksize, float_dtype_name(s.dtype), fmt::join(s.shape, ", "));
  if (s.nested) {
    out.pop_back();
    out += fmt::format(R"(, "nested_blocksize": {}, "nested_dtype": "float32", "nested_offset": {}}})", s.nested_blocksize,
                       s.nested_offset);
  }
  return out;
}

std::vector<std::pair<std::string, at::Tensor>> bnb_module_tensors(const std::string& module_path, const FourBitTensor& weight,
                                                                   const std::string& quant_storage) {
  const FourBitState& s = weight.state;
  const std::string w = module_path + ".weight";
  const auto storage = storage_dtypes().find(quant_storage);
  if (storage == storage_dtypes().end())
    throw QuantError("bnb_4bit_quant_storage '" + quant_storage + "' is not a torch dtype bitsandbytes can store codes in");
  at::Tensor packed = weight.packed.to(at::kCPU).contiguous().reshape({-1});
  if (packed.scalar_type() != at::kByte) packed = packed.view(at::kByte);
  if (packed.numel() % c10::elementSize(storage->second) != 0)
    throw QuantError(fmt::format("'{}': {} packed bytes do not fill whole {} values (bnb_4bit_quant_storage)", w, packed.numel(),
                                 quant_storage));
  std::vector<std::pair<std::string, at::Tensor>> out;
  out.emplace_back(w, packed.view(storage->second).reshape({-1, 1}));
  out.emplace_back(w + ".absmax", s.absmax.to(at::kCPU));
  out.emplace_back(w + ".quant_map", four_bit_code(s.type) + 0.0);  // bitsandbytes saves FP4's -0 as +0
  if (s.nested) {
    out.emplace_back(w + ".nested_absmax", s.nested_absmax.to(at::kCPU));
    out.emplace_back(w + ".nested_quant_map", s.nested_code.to(at::kCPU));
  }
  const std::string text = four_bit_state_json(s);
  at::Tensor bytes = at::empty({static_cast<int64_t>(text.size())}, at::kByte);
  std::memcpy(bytes.data_ptr<uint8_t>(), text.data(), text.size());
  out.emplace_back(quant_state_key(module_path, s.type), bytes);
  return out;
}

std::vector<std::pair<std::string, at::Tensor>> bnb_module_tensors(const std::string& module_path, const Int8Tensor& weight) {
  return {{module_path + ".weight", weight.weight.to(at::kCPU)},
          {module_path + ".SCB", weight.scb.to(at::kCPU, at::kFloat)},
          {module_path + ".weight_format", at::zeros({}, at::kByte)}};
}

}  // namespace llmtune::quant
