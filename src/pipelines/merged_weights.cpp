// MergedWeights: a base checkpoint (dense, or a bitsandbytes 4-bit/8-bit one dequantized module by
// module) with an optional adapter folded in, one tensor at a time; and the files merge and quantize
// copy next to the weights they write (tokenizer, generation config).
#include <ATen/ops/equal.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <nlohmann/json.hpp>

#include "llmtune/io/atomic_file.h"
#include "llmtune/io/hf_dir.h"
#include "llmtune/io/read_file.h"
#include "llmtune/model/family.h"
#include "llmtune/pipelines/merge.h"
#include "llmtune/quant/bnb_checkpoint.h"
#include "llmtune/quant/gptq_linear.h"
#include "llmtune/util/error.h"

namespace llmtune::pipelines {

namespace fs = std::filesystem;

bool natural_less(const std::string& a, const std::string& b) {
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    if (std::isdigit(static_cast<unsigned char>(a[i])) && std::isdigit(static_cast<unsigned char>(b[j]))) {
      size_t i2 = i, j2 = j;
      while (i2 < a.size() && std::isdigit(static_cast<unsigned char>(a[i2]))) ++i2;
      while (j2 < b.size() && std::isdigit(static_cast<unsigned char>(b[j2]))) ++j2;
      const std::string na = a.substr(i, i2 - i), nb = b.substr(j, j2 - j);
      if (na.size() != nb.size()) return na.size() < nb.size();
      if (na != nb) return na < nb;
      i = i2, j = j2;
      continue;
    }
    if (a[i] != b[j]) return a[i] < b[j];
    ++i, ++j;
  }
  return a.size() - i < b.size() - j;
}

int copy_tokenizer_and_generation_files(const fs::path& base_dir, const fs::path& adapter_dir, const fs::path& out_dir,
                                        const model::ModelConfig& config) {
  const bool adapter_has_tokenizer =
      !adapter_dir.empty() && (fs::exists(adapter_dir / "tokenizer.json") || fs::exists(adapter_dir / "tokenizer.model"));
  const fs::path from = adapter_has_tokenizer ? adapter_dir : base_dir;
  if (adapter_has_tokenizer) spdlog::info("merge: tokenizer files from the adapter directory {}", adapter_dir.string());
  const int copied = io::copy_tokenizer_files(from, out_dir);
  if (copied == 0) spdlog::warn("merge: {} has no tokenizer files; the merged directory has none either", from.string());
  // The template the adapter was trained with (finetune saves it there when it is not the base's).
  if (!adapter_dir.empty() && from != adapter_dir && fs::exists(adapter_dir / "chat_template.jinja")) {
    io::write_file_atomic(out_dir / "chat_template.jinja", io::read_text_file<AdapterError>(adapter_dir / "chat_template.jinja", "the chat template"));
    if (fs::exists(out_dir / "tokenizer_config.json")) {
      auto tc = io::read_json_file<ModelLoadError>(out_dir / "tokenizer_config.json", "tokenizer_config.json");
      if (tc.contains("chat_template")) {
        tc.erase("chat_template");
        io::write_file_atomic(out_dir / "tokenizer_config.json", tc.dump(2) + "\n");
      }
    }
    spdlog::info("merge: chat template from the adapter directory (the one it was trained with)");
  }
  if (fs::exists(base_dir / "generation_config.json")) {
    io::write_file_atomic(out_dir / "generation_config.json", io::read_text_file<ModelLoadError>(base_dir / "generation_config.json", "generation_config.json"));
  } else {
    nlohmann::ordered_json g{{"_from_model_config", true}};
    if (config.bos_token_id) g["bos_token_id"] = *config.bos_token_id;
    if (config.eos_token_ids.size() == 1) g["eos_token_id"] = config.eos_token_ids[0];
    else if (!config.eos_token_ids.empty()) g["eos_token_id"] = config.eos_token_ids;
    if (config.pad_token_id) g["pad_token_id"] = *config.pad_token_id;
    io::write_file_atomic(out_dir / "generation_config.json", g.dump(2) + "\n");
  }
  return copied;
}


MergedWeights::MergedWeights(const fs::path& model_dir, const std::string& adapter, at::ScalarType out_dtype)
    : model_dir_(model_dir), config_(model::ModelConfig::load(model_dir)), checkpoint_(io::WeightFiles::open(model_dir)),
      out_dtype_(out_dtype) {
  if (auto bnb = quant::read_bnb_config(model_dir)) find_bnb_modules(*bnb);
  if (auto gptq = quant::read_gptq_config(model_dir)) find_gptq_modules(*gptq);
  for (const auto& name : checkpoint_.names())
    if (!hidden_.count(name)) names_.push_back(name);
  // A GPTQ base's dense weights exist only dequantized.
  for (const auto& [name, spec] : bnb_modules_)
    if (!checkpoint_.contains(name)) names_.push_back(name);
  std::sort(names_.begin(), names_.end(), natural_less);
  // GPT-2's Conv1D linears are stored (in, out): adapters are folded in (out, in) and the result
  // written back as stored (PEFT's fan_in_fan_out merge). A quantized base holds them (out, in)
  // (transformers transposes before quantizing); they are still handed out in the dense layout.
  const model::FamilyDesc& family = model::family_for(config_.model_type, (model_dir / "config.json").string());
  for (const auto& name : names_)
    if (model::stored_in_out(family, name)) conv1d_.insert(name);
  if (adapter.empty()) return;
  adapter_ = std::make_unique<peft::SavedAdapter>(peft::open_adapter(adapter));
  if (!adapter_->method->mergeable())
    throw AdapterError(adapter_->dir.string() + ": " + adapter_->method->peft_type() +
                       " adapters cannot be merged into the base weights; load them with --adapter instead");
  auto stored = [&](const std::string& name) { return checkpoint_.contains(name) || bnb_modules_.count(name) > 0; };
  for (const auto& path : adapter_->modules) {
    std::string weight = path + ".weight";
    // GPT-2's own files leave "transformer." off every name; PEFT's keys have it.
    if (!stored(weight) && !family.optional_prefix.empty() && weight.starts_with(family.optional_prefix) &&
        stored(weight.substr(family.optional_prefix.size())))
      weight = weight.substr(family.optional_prefix.size());
    if (!stored(weight))
      throw AdapterError(adapter_->weights_path.string() + ": module '" + path + "' has no weight '" + weight + "' in " +
                         model_dir.string() + " (adapter made for another base?)");
    const std::vector<int64_t> shape = spec(weight).shape;
    if (shape.size() != 2)
      throw AdapterError(adapter_->weights_path.string() + ": module '" + path + "': the base weight is not a matrix");
    const bool in_out = conv1d_.count(weight) > 0;
    adapter_->method->check_module_fits(adapter_->tensors, path, shape[in_out ? 1 : 0], shape[in_out ? 0 : 1],
                                        adapter_->weights_path.string());
    module_of_weight_[weight] = path;
  }
}

// Every quantized linear of a bitsandbytes checkpoint, read (and so checked) here: a missing
// quant_state or a shape that does not match the packed bytes fails before anything is written.
void MergedWeights::find_bnb_modules(const quant::BnbConfig& bnb) {
  const std::string state_4bit = ".weight.quant_state.bitsandbytes__";
  std::vector<std::string> modules;
  for (const auto& name : checkpoint_.names()) {
    if (const size_t at = name.rfind(state_4bit); bnb.load_in_4bit && at != std::string::npos)
      modules.push_back(name.substr(0, at));
    else if (bnb.load_in_8bit && name.ends_with(".SCB"))
      modules.push_back(name.substr(0, name.size() - 4));
  }
  const at::ScalarType int8_dtype = io::dtype_from_config_name(config_.torch_dtype, at::kFloat);
  for (const auto& module : modules) {
    if (!quant::is_bnb_quantized_module(checkpoint_, module))
      throw QuantError(checkpoint_.path().string() + ": module '" + module +
                       "' has only part of its quantized tensors (a damaged checkpoint?)");
    io::TensorSpec dense{module + ".weight", at::kFloat, {}};
    if (bnb.load_in_4bit) {
      const quant::FourBitTensor q = quant::read_four_bit_module(checkpoint_, module);
      dense.dtype = q.state.dtype, dense.shape = q.state.shape;
    } else {
      const quant::Int8Tensor q = quant::read_int8_module(checkpoint_, module);
      dense.dtype = int8_dtype, dense.shape = q.weight.sizes().vec();
    }
    for (const auto& name : checkpoint_.names())
      if (name.starts_with(module + ".weight.") || name == module + ".SCB" || name == module + ".weight_format")
        hidden_.insert(name);
    bnb_modules_[dense.name] = dense;
  }
  base_quantization_ = bnb.load_in_8bit ? "int8" : std::string(quant::four_bit_name(bnb.type)) + (bnb.double_quant ? " double-quant" : "");
  spdlog::info("{}: a bitsandbytes {} checkpoint; {} quantized linears are dequantized to {} on reading", model_dir_.string(),
               base_quantization_, bnb_modules_.size(),
               bnb_modules_.empty() ? std::string("-") : std::string(c10::toString(bnb_modules_.begin()->second.dtype)));
}

// Every linear of a GPTQ checkpoint, read and checked here; dequantized in fp32 on reading, written
// in config.json's dtype.
void MergedWeights::find_gptq_modules(const quant::GptqConfig& gptq) {
  gptq_ = std::make_shared<quant::GptqConfig>(gptq);
  const at::ScalarType dense_dtype = io::dtype_from_config_name(config_.torch_dtype, at::kHalf);
  const std::string packed = quant::packed_suffix(gptq);
  for (const auto& name : checkpoint_.names()) {
    if (!name.ends_with(packed)) continue;
    const std::string module = name.substr(0, name.size() - packed.size());
    const quant::GptqTensor t = quant::read_gptq_module(checkpoint_, module, gptq, -1, -1, checkpoint_.path().string());
    for (const char* suffix : {".qweight", ".qzeros", ".scales", ".g_idx", ".weight_packed", ".weight_scale", ".weight_shape",
                               ".weight_zero_point"})
      if (checkpoint_.contains(module + suffix)) hidden_.insert(module + suffix);
    bnb_modules_[module + ".weight"] = io::TensorSpec{module + ".weight", dense_dtype, {t.scales.size(1), t.g_idx.size(0)}};
  }
  base_quantization_ = fmt::format("{} {}-bit", gptq.checkpoint_format == "compressed-tensors" ? "compressed-tensors" : "gptq", gptq.bits);
  spdlog::info("{}: a {}-bit integer checkpoint; {} quantized linears are dequantized to {} on reading", model_dir_.string(),
               gptq.bits, bnb_modules_.size(), c10::toString(dense_dtype));
}

at::ScalarType MergedWeights::dtype_for(at::ScalarType stored) const {
  if (out_dtype_ == at::ScalarType::Undefined || !at::isFloatingType(stored)) return stored;
  return out_dtype_;
}

uint64_t MergedWeights::n_bytes(const std::string& name) const { return spec(name).n_bytes(); }

io::TensorSpec MergedWeights::spec(const std::string& name) const {
  if (auto it = bnb_modules_.find(name); it != bnb_modules_.end()) {
    std::vector<int64_t> shape = it->second.shape;  // (out, in) as quantized
    if (conv1d_.count(name)) std::reverse(shape.begin(), shape.end());
    return {name, dtype_for(it->second.dtype), shape};
  }
  const auto& info = checkpoint_.info(name);
  return {name, dtype_for(io::dtype_from_safetensors(info.dtype)), info.shape};
}

at::Tensor MergedWeights::get(const std::string& name) const {
  const at::ScalarType dtype = spec(name).dtype;
  auto bnb = bnb_modules_.find(name);
  at::Tensor base;
  if (bnb != bnb_modules_.end()) {
    // Dequantized in float32: the adapter delta is added before the one rounding to `dtype`.
    const std::string module = name.substr(0, name.size() - 7);
    base = gptq_ ? quant::dequantize_gptq(quant::read_gptq_module(checkpoint_, module, *gptq_, -1, -1, checkpoint_.path().string()), at::kFloat)
                 : quant::dequantize_bnb_module(checkpoint_, module, at::kFloat);
    for (auto h = hidden_.lower_bound(module + "."); h != hidden_.end() && h->starts_with(module + "."); ++h)
      checkpoint_.release(*h);
  } else {
    base = checkpoint_.tensor(name);
  }
  // w: (out, in); a Conv1D weight is stored (in, out) unless it was dequantized.
  const bool conv1d = conv1d_.count(name) > 0, dequantized = bnb != bnb_modules_.end();
  const at::Tensor w = conv1d && !dequantized ? base.t() : base;
  auto as_stored = [&](const at::Tensor& t) { return conv1d ? t.t().contiguous() : t; };
  auto it = module_of_weight_.find(name);
  if (it == module_of_weight_.end()) {
    at::Tensor out = conv1d && dequantized ? as_stored(base).to(dtype) : base.to(dtype, /*non_blocking=*/false, /*copy=*/true);
    if (checkpoint_.contains(name)) checkpoint_.release(name);
    return out;
  }
  at::Tensor merged = adapter_->method->merged_weight(adapter_->tensors, it->second, w).to(dtype);
  if (at::equal(merged, w.to(dtype)) && unchanged_names_.insert(name).second) {
    ++unchanged_;
    if (adapter_->method->update_is_zero(adapter_->tensors, it->second)) ++zero_b_;
  }
  if (checkpoint_.contains(name)) checkpoint_.release(name);
  return as_stored(merged);
}

}  // namespace llmtune::pipelines
