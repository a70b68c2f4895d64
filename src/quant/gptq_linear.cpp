// GPTQ-format linears (gptq_linear.h): unpacking, the convention of the zero points, and the
// dequantize-on-the-fly product.
#include "llmtune/quant/gptq_linear.h"

#include <ATen/ops/bitwise_and.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/stack.h>
#include <fmt/format.h>
#include <torch/csrc/autograd/custom_function.h>

#include "llmtune/io/read_file.h"
#include "llmtune/util/error.h"

namespace llmtune::quant {
namespace fs = std::filesystem;
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// int32 words → codes (int32), 32/bits per word along `dim` (0 or 1), lowest bits first.
at::Tensor unpack(const at::Tensor& words, int64_t bits, int64_t dim) {
  const int64_t per = 32 / bits;
  std::vector<at::Tensor> parts;
  for (int64_t k = 0; k < per; ++k) parts.push_back(words.bitwise_right_shift(bits * k).bitwise_and((1 << bits) - 1));
  at::Tensor stacked = at::stack(parts, dim + 1);  // word, then the position within it
  std::vector<int64_t> shape = words.sizes().vec();
  shape[static_cast<size_t>(dim)] *= per;
  return stacked.reshape(shape);
}

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
  if (q.value("quant_method", std::string()) != "gptq") return std::nullopt;
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
  if (c.bits != 2 && c.bits != 4 && c.bits != 8)
    throw QuantError(fmt::format("{}: quantization_config.bits {} is not loaded (2, 4 or 8)", path.string(), c.bits));
  if (c.checkpoint_format != "gptq" && c.checkpoint_format != "gptq_v2")
    throw QuantError(path.string() + ": quantization_config.checkpoint_format '" + c.checkpoint_format + "' is not gptq or gptq_v2");
  return c;
}

at::Tensor dequantize_gptq(const GptqTensor& t, at::ScalarType dtype) {
  const at::Tensor q = unpack(t.qweight, t.bits, 0);                      // (in, out)
  const at::Tensor z = unpack(t.qzeros, t.bits, 1) + t.zero_offset;      // (groups, out)
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

GptqTensor read_gptq_module(const io::WeightFiles& files, const std::string& module, const GptqConfig& config, int64_t out,
                            int64_t in, const std::string& source) {
  const int64_t per = 32 / config.bits;
  if (in < 0 || out < 0) {
    const auto& qw = files.info(module + ".qweight").shape;
    if (qw.size() != 2) throw QuantError(source + ": '" + module + ".qweight' is not a matrix");
    in = qw[0] * per;
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
  if (in % per != 0 || out % per != 0)
    throw QuantError(fmt::format("{}: {} ({}×{}) does not pack into {}-bit words", source, module, out, in, config.bits));
  GptqTensor t;
  t.bits = config.bits;
  t.qweight = stored(".qweight", at::kInt, {in / per, out});
  t.g_idx = stored(".g_idx", at::kInt, {in});
  if (in > 0 && t.g_idx.min().item<int64_t>() < 0) throw QuantError(source + ": '" + module + ".g_idx' holds a negative group");
  const int64_t groups = in > 0 ? t.g_idx.max().item<int64_t>() + 1 : 0;
  t.qzeros = stored(".qzeros", at::kInt, {groups, out / per});
  t.scales = stored(".scales", at::kHalf, {groups, out});
  // The zero-point convention: symmetric zeros are all 2^(bits−1) (v2) or one less (v1), whatever the label.
  const at::Tensor z = unpack(t.qzeros, t.bits, 1);
  const int64_t mid = int64_t{1} << (config.bits - 1);
  const bool all_mid = (z == mid).all().item<bool>(), all_below = (z == mid - 1).all().item<bool>();
  t.zero_offset = all_below ? 1 : all_mid ? 0 : (config.checkpoint_format == "gptq_v2" ? 0 : 1);
  return t;
}

model::LinearFactory gptq_linear_factory(const GptqConfig& config, const io::WeightFiles& files, const fs::path& dir,
                                         c10::Device device) {
  return [config, files, source = dir.string(), device](const model::LinearRequest& r,
                                                        const model::TensorSource& get) -> model::LinearPtr {
    if (!files.contains(r.path + ".qweight")) return model::make_dense_linear(r, get);
    GptqTensor t = read_gptq_module(files, r.path, config, r.out_features, r.in_features, source);
    // Each stored tensor moved once to the model's device.
    for (at::Tensor* x : {&t.qweight, &t.qzeros, &t.scales, &t.g_idx}) *x = x->to(device);
    for (const char* suffix : {".qweight", ".qzeros", ".scales", ".g_idx"}) (void)get(r.path + suffix, model::kStoredTensor);
    at::Tensor bias = r.bias ? get(r.path + ".bias", {r.out_features}) : at::Tensor();
    return std::make_shared<GptqLinear>(std::move(t), std::move(bias));
  };
}

}  // namespace llmtune::quant
