// GPTQ-format linears (gptq_linear.h): unpacking, the convention of the zero points, and the
// dequantize-on-the-fly product.
#include "llmtune/quant/gptq_linear.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/bitwise_and.h>
#include <ATen/ops/full.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <fmt/format.h>
#include <torch/csrc/autograd/custom_function.h>

#include <numeric>

#include "llmtune/io/read_file.h"
#include "llmtune/util/error.h"

namespace llmtune::quant {
namespace fs = std::filesystem;
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct GptqMatmul : public torch::autograd::Function<GptqMatmul> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t weight) {
    const auto* w = reinterpret_cast<const GptqTensor*>(static_cast<intptr_t>(weight));
    ctx->saved_data["weight"] = weight;
    return at::linear(x, dequantize_gptq(*w, x.scalar_type()));
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto* w = reinterpret_cast<const GptqTensor*>(static_cast<intptr_t>(ctx->saved_data["weight"].toInt()));
    const at::Tensor& g = grad_outputs[0];
    return {at::matmul(g, dequantize_gptq(*w, g.scalar_type())), at::Tensor()};
  }
};

}  // namespace

std::optional<GptqConfig> read_gptq_config(const fs::path& dir) {
  const fs::path path = dir / "config.json";
  if (!fs::exists(path)) return std::nullopt;
  const auto config = io::read_json_file<QuantError, nlohmann::json>(path, "config.json");
  if (!config.is_object() || !config.contains("quantization_config") || !config["quantization_config"].is_object()) return std::nullopt;
  const auto& q = config["quantization_config"];
  const std::string method = q.value("quant_method", std::string());
  if (method == "compressed-tensors") {
    // One config group of int weights in groups, pack-quantized, compressed on disk.
    const std::string where = path.string() + ": quantization_config (compressed-tensors)";
    if (q.value("format", std::string()) != "pack-quantized" || q.value("quantization_status", std::string()) != "compressed")
      throw QuantError(where + ": only format pack-quantized with quantization_status compressed is loaded");
    if (!q.contains("config_groups") || !q["config_groups"].is_object() || q["config_groups"].size() != 1)
      throw QuantError(where + ": config_groups must hold one group");
    const auto& w = q["config_groups"].begin().value().value("weights", nlohmann::json());
    if (!w.is_object() || w.value("type", std::string()) != "int" || w.value("strategy", std::string()) != "group" ||
        !w.value("num_bits", nlohmann::json()).is_number_integer())
      throw QuantError(where + ": weights must be int with strategy group (others are not loaded)");
    GptqConfig c;
    c.bits = w["num_bits"].get<int64_t>();
    c.group_size = w.value("group_size", int64_t{128});
    c.sym = w.value("symmetric", true);
    c.checkpoint_format = "compressed-tensors";
    if (!supported_bits(c.bits))
      throw QuantError(fmt::format("{}: num_bits {} is not loaded (2, 3, 4 or 8)", where, c.bits));
    return c;
  }
  if (method != "gptq") return std::nullopt;
  GptqConfig c;
  try {
    c.bits = q.value("bits", int64_t{4});
    c.group_size = q.value("group_size", int64_t{128});
    c.sym = q.value("sym", true);
    c.desc_act = q.value("desc_act", false);
    c.checkpoint_format = q.value("checkpoint_format", std::string("gptq"));
  } catch (const nlohmann::json::exception&) {
    throw QuantError(path.string() + ": quantization_config (gptq) has a key of the wrong type (bits, group_size: integers; sym, desc_act: booleans)");
  }
  if (!supported_bits(c.bits))
    throw QuantError(fmt::format("{}: quantization_config.bits {} is not loaded (2, 3, 4 or 8)", path.string(), c.bits));
  if (c.checkpoint_format != "gptq" && c.checkpoint_format != "gptq_v2")
    throw QuantError(path.string() + ": quantization_config.checkpoint_format '" + c.checkpoint_format + "' is not gptq or gptq_v2");
  return c;
}

namespace {

// A packing unit: the fewest codes that fill whole words (3 bits: 32 codes, 3 words; 4 bits: 8, 1).
struct PackUnit {
  int64_t codes, words;
};
PackUnit pack_unit(int64_t bits) {
  TORCH_CHECK(bits >= 1 && bits <= 8, "pack_codes: bits must be 1..8, not ", bits);
  const int64_t g = std::gcd(bits, int64_t{32});
  return {32 / g, bits / g};
}

}  // namespace

at::Tensor pack_codes(const at::Tensor& codes, int64_t bits, int64_t dim) {
  const PackUnit unit = pack_unit(bits);
  const at::Tensor c = (dim == 0 ? codes : codes.t()).to(at::kLong);
  const int64_t n = c.size(0), m = c.size(1);
  TORCH_CHECK(n % unit.codes == 0, "pack_codes: ", n, " codes of ", bits, " bits do not fill whole 32-bit words");
  const at::Tensor units = c.reshape({n / unit.codes, unit.codes, m});
  at::Tensor words = at::zeros({n / unit.codes, unit.words, m}, c.options());
  for (int64_t k = 0; k < unit.codes; ++k) {
    const int64_t word = k * bits / 32, shift = k * bits % 32;
    const at::Tensor v = units.select(1, k);
    words.select(1, word).bitwise_or_(v.bitwise_left_shift(shift).bitwise_and(0xFFFFFFFFLL));
    if (shift + bits > 32) words.select(1, word + 1).bitwise_or_(v.bitwise_right_shift(32 - shift));
  }
  // Unsigned 32-bit words as int32 (two's complement: the top bit is the sign).
  at::Tensor out = at::where(words >= (int64_t{1} << 31), words - (int64_t{1} << 32), words).reshape({-1, m}).to(at::kInt);
  return dim == 0 ? out : out.t().contiguous();
}

at::Tensor unpack_codes(const at::Tensor& words, int64_t bits, int64_t dim) {
  const PackUnit unit = pack_unit(bits);
  const at::Tensor w = (dim == 0 ? words : words.t()).to(at::kLong).bitwise_and(0xFFFFFFFFLL);
  const int64_t n = w.size(0), m = w.size(1);
  TORCH_CHECK(n % unit.words == 0, "unpack_codes: ", n, " words do not hold whole ", bits, "-bit codes");
  const at::Tensor units = w.reshape({n / unit.words, unit.words, m});
  std::vector<at::Tensor> parts;
  for (int64_t k = 0; k < unit.codes; ++k) {
    const int64_t word = k * bits / 32, shift = k * bits % 32;
    at::Tensor v = units.select(1, word).bitwise_right_shift(shift);
    if (shift + bits > 32) v = v.bitwise_or(units.select(1, word + 1).bitwise_left_shift(32 - shift));
    parts.push_back(v.bitwise_and((int64_t{1} << bits) - 1));
  }
  const at::Tensor out = at::stack(parts, 1).reshape({-1, m}).to(at::kInt);
  return dim == 0 ? out : out.t().contiguous();
}

at::Tensor dequantize_gptq(const GptqTensor& t, at::ScalarType dtype) {
  const at::Tensor q = unpack_codes(t.qweight, t.bits, 0);                      // (in, out)
  const at::Tensor z = unpack_codes(t.qzeros, t.bits, 1) + t.zero_offset;      // (groups, out)
  const at::Tensor g = t.g_idx.to(at::kLong);
  const at::Tensor scales = t.scales.to(at::kFloat).index_select(0, g);  // (in, out)
  const at::Tensor w = scales * (q - z.index_select(0, g)).to(at::kFloat);
  return w.t().to(dtype).contiguous();
}

GptqLinear::GptqLinear(GptqTensor weight, at::Tensor bias) : weight_(std::move(weight)), bias_(std::move(bias)) {}

at::Tensor GptqLinear::forward(const at::Tensor& x) const {
  at::Tensor y = GptqMatmul::apply(x, static_cast<int64_t>(reinterpret_cast<intptr_t>(&weight_)));
  if (!bias_.defined()) return y;
  return y + (bias_.scalar_type() == y.scalar_type() ? bias_ : bias_.to(y.scalar_type()));
}

std::vector<at::Tensor> GptqLinear::tensors() const {
  std::vector<at::Tensor> out{weight_.qweight, weight_.qzeros, weight_.scales, weight_.g_idx};
  if (bias_.defined()) out.push_back(bias_);
  return out;
}

std::string packed_suffix(const GptqConfig& config) {
  return config.checkpoint_format == "compressed-tensors" ? ".weight_packed" : ".qweight";
}

namespace {

// compressed-tensors pack-quantized: the same packed words as GPTQ's, transposed; z stored as is
// (symmetric: none, 2^(bits−1)); scales (out, groups) in the model dtype.
GptqTensor read_compressed_module(const io::WeightFiles& files, const std::string& module, const GptqConfig& config,
                                  int64_t out, int64_t in, const std::string& source) {
  const at::Tensor shape = files.tensor(module + ".weight_shape");
  if (shape.numel() != 2) throw QuantError(source + ": '" + module + ".weight_shape' must hold [out, in]");
  const int64_t stored_out = shape[0].item<int64_t>(), stored_in = shape[1].item<int64_t>();
  if ((out >= 0 && stored_out != out) || (in >= 0 && stored_in != in))
    throw QuantError(fmt::format("{}: '{}.weight_shape' is [{}, {}], the model expects [{}, {}]", source, module, stored_out,
                                 stored_in, out, in));
  out = stored_out, in = stored_in;
  if (!packs_whole(in, config.bits) || !packs_whole(out, config.bits))
    throw QuantError(fmt::format("{}: {} ({}×{}) does not pack into {}-bit words", source, module, out, in, config.bits));
  const int64_t g = config.group_size == -1 ? in : config.group_size;
  const int64_t groups = (in + g - 1) / g;
  auto stored = [&](const std::string& suffix, const std::vector<int64_t>& want, bool is_int) {
    at::Tensor v = files.tensor(module + suffix);
    if (v.sizes() != at::IntArrayRef(want) || (is_int ? v.scalar_type() != at::kInt : !at::isFloatingType(v.scalar_type())))
      throw QuantError(fmt::format("{}: '{}{}' is {} {}, expected {} {}", source, module, suffix, c10::toString(v.scalar_type()),
                                   c10::str(v.sizes()), is_int ? "Int" : "a float", c10::str(at::IntArrayRef(want))));
    return v;
  };
  GptqTensor t;
  t.format = "compressed-tensors";
  t.bits = config.bits;
  t.qweight = stored(".weight_packed", {out, in * config.bits / 32}, true).t().contiguous();
  t.scales = stored(".weight_scale", {out, groups}, false).t().contiguous();
  t.g_idx = (at::arange(in, at::kInt) / static_cast<int>(g)).to(at::kInt);
  t.qzeros = config.sym ? pack_codes(at::full({groups, out}, int64_t{1} << (config.bits - 1), at::kInt), config.bits, 1)
                        : stored(".weight_zero_point", {out * config.bits / 32, groups}, true).t().contiguous();
  t.zero_offset = 0;
  return t;
}

}  // namespace

GptqTensor read_gptq_module(const io::WeightFiles& files, const std::string& module, const GptqConfig& config, int64_t out,
                            int64_t in, const std::string& source) {
  if (config.checkpoint_format == "compressed-tensors") return read_compressed_module(files, module, config, out, in, source);
  if (in < 0 || out < 0) {
    const auto& qw = files.info(module + ".qweight").shape;
    if (qw.size() != 2) throw QuantError(source + ": '" + module + ".qweight' is not a matrix");
    in = qw[0] * 32 / config.bits;
    out = qw[1];
  }
  auto stored = [&](const std::string& suffix, at::ScalarType dtype, const std::vector<int64_t>& shape) {
    at::Tensor v = files.tensor(module + suffix);
    if (v.scalar_type() != dtype || v.sizes() != at::IntArrayRef(shape))
      throw QuantError(fmt::format("{}: '{}{}' is {} {}, expected {} {} for a {}-bit {}×{} linear", source, module, suffix,
                                   c10::toString(v.scalar_type()), c10::str(v.sizes()), c10::toString(dtype),
                                   c10::str(at::IntArrayRef(shape)), config.bits, out, in));
    return v;
  };
  if (!packs_whole(in, config.bits) || !packs_whole(out, config.bits))
    throw QuantError(fmt::format("{}: {} ({}×{}) does not pack into {}-bit words", source, module, out, in, config.bits));
  GptqTensor t;
  t.bits = config.bits;
  t.qweight = stored(".qweight", at::kInt, {in * config.bits / 32, out});
  t.g_idx = stored(".g_idx", at::kInt, {in});
  if (in > 0 && t.g_idx.min().item<int64_t>() < 0) throw QuantError(source + ": '" + module + ".g_idx' holds a negative group");
  const int64_t groups = in > 0 ? t.g_idx.max().item<int64_t>() + 1 : 0;
  t.qzeros = stored(".qzeros", at::kInt, {groups, out * config.bits / 32});
  t.scales = stored(".scales", at::kHalf, {groups, out});
  // The zero-point convention: symmetric zeros are all 2^(bits−1) (v2) or one less (v1), whatever the label.
  const at::Tensor z = unpack_codes(t.qzeros, t.bits, 1);
  const int64_t mid = int64_t{1} << (config.bits - 1);
  const bool all_mid = (z == mid).all().item<bool>(), all_below = (z == mid - 1).all().item<bool>();
  t.zero_offset = all_below ? 1 : all_mid ? 0 : (config.checkpoint_format == "gptq_v2" ? 0 : 1);
  return t;
}

model::LinearFactory gptq_linear_factory(const GptqConfig& config, const io::WeightFiles& files, const fs::path& dir,
                                         c10::Device device) {
  return [config, files, source = dir.string(), device](const model::LinearRequest& r,
                                                        const model::TensorSource& get) -> model::LinearPtr {
    if (!files.contains(r.path + packed_suffix(config))) return model::make_dense_linear(r, get);
    GptqTensor t = read_gptq_module(files, r.path, config, r.out_features, r.in_features, source);
    // Each stored tensor moved once to the model's device.
    for (at::Tensor* x : {&t.qweight, &t.qzeros, &t.scales, &t.g_idx}) *x = x->to(device);
    // (Counted as read, so that the loader does not report them unused.)
    const bool ct = config.checkpoint_format == "compressed-tensors";
    for (const char* suffix : ct ? std::vector<const char*>{".weight_packed", ".weight_scale", ".weight_shape", ".weight_zero_point"}
                                 : std::vector<const char*>{".qweight", ".qzeros", ".scales", ".g_idx"})
      if (files.contains(r.path + suffix)) (void)get(r.path + suffix, model::kStoredTensor);
    at::Tensor bias = r.bias ? get(r.path + ".bias", {r.out_features}) : at::Tensor();
    return std::make_shared<GptqLinear>(std::move(t), std::move(bias));
  };
}

}  // namespace llmtune::quant
