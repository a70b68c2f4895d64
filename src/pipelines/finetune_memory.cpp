// finetune's base model: the memory estimate before anything is allocated, the bytes the base is
// held in (4-bit linears against their 16-bit size), and the quantization record that --resume checks.
#include "finetune_memory.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "llmtune/model/family.h"
#include "llmtune/ops/runtime.h"
#include "llmtune/quant/bnb_linear.h"
#include "llmtune/quant/gptq_linear.h"
#include "llmtune/util/device.h"
#include "llmtune/util/error.h"

namespace llmtune::pipelines {
namespace fs = std::filesystem;

MemoryEstimate estimate_memory(const FinetuneParams& p, const model::ModelConfig& c, const data::Dataset& dataset,
                               at::ScalarType dtype, const fs::path& model_dir, bool quantized_base, double extra_bytes) {
  const model::FamilyDesc& family = model::family_for(c.model_type, model_dir.string());
  MemoryEstimate m;
  m.parameters = model::parameter_count(family, c, !c.tie_word_embeddings);
  const double elt = static_cast<double>(c10::elementSize(dtype));
  // (A 4-bit base: half a byte per weight, a lower bound as embeddings and lm_head stay dense.)
  m.weights = m.parameters * (p.adapter ? (quantized_base ? 0.5 : elt) : 16.0 + (dtype == at::kFloat ? 0.0 : elt));
  int64_t tokens = 0;
  for (const auto& e : dataset.train) {
    m.longest_example = std::max<int64_t>(m.longest_example, static_cast<int64_t>(e.input_ids.size()));
    tokens += static_cast<int64_t>(e.input_ids.size());
  }
  m.row_tokens = p.packing ? std::min(p.data.max_seq_len, tokens) : m.longest_example;
  const double batch_tokens = static_cast<double>(p.batch_size) * static_cast<double>(m.row_tokens);
  const auto h = static_cast<double>(c.hidden_size), inter = static_cast<double>(c.intermediate_size);
  const double q = static_cast<double>(c.n_heads * c.head_dim), kv = static_cast<double>(c.n_heads_kv * c.head_dim);
  const double per_layer_token = (4 * h + 2 * q + 2 * kv + 3 * inter) * elt;
  const double layers = static_cast<double>(c.n_layers);
  m.activations = batch_tokens * (p.gradient_checkpointing ? h * elt * layers + per_layer_token : per_layer_token * layers);
  const double logit_rows = p.loss_chunk_rows < 0 ? batch_tokens
                            : p.loss_chunk_rows > 0 ? std::min<double>(batch_tokens, static_cast<double>(p.loss_chunk_rows))
                                                    : std::min(batch_tokens, (64.0 * (1 << 20)) / (4.0 * static_cast<double>(c.vocab_size)));
  m.logits = 2 * 4.0 * logit_rows * static_cast<double>(c.vocab_size);
  m.extra = extra_bytes;
  return m;
}

// The terms are lower bounds: weights (fp32 masters, gradients and AdamW moments when training them
// all), the activations kept for backward (per token and layer: the residual stream, norms, q/k/v,
// attention output, gate/up/product; only the layer inputs with gradient checkpointing), and the LM
// head's logits chunk.
void check_memory(const FinetuneParams& p, const model::ModelConfig& c, const data::Dataset& dataset, const c10::Device& device,
                  at::ScalarType dtype, const fs::path& model_dir, bool quantized_base, double extra_bytes) {
  const MemoryEstimate m = estimate_memory(p, c, dataset, dtype, model_dir, quantized_base, extra_bytes);
  ops::check_fits(m.weights, device,
                  fmt::format("{} ({:.3g} parameters{})", (model_dir / "config.json").string(), m.parameters,
                              p.adapter ? "" : ", trained in full with AdamW"),
                  "check hidden_size, intermediate_size, num_hidden_layers and vocab_size there");
  // Packed examples restart their positions: the longest example is what meets the context.
  if (m.longest_example > c.max_position_embeddings)
    spdlog::warn("examples of up to {} tokens (data.max_seq_len {}) run past the model's context (max_position_embeddings {} in {}): "
                 "positions beyond it are outside what the model was trained on",
                 m.longest_example, p.data.max_seq_len, c.max_position_embeddings, (model_dir / "config.json").string());
  ops::check_fits(m.total(), device,
                  fmt::format("a training step on micro-batches of {} rows × {} tokens (weights {:.3g} GB, activations {:.3g} GB{})",
                              p.batch_size, m.row_tokens, m.weights / 1e9, m.activations / 1e9,
                              extra_bytes > 0 ? fmt::format(", teacher {:.3g} GB", extra_bytes / 1e9) : ""),
                  std::string("lower data.max_seq_len or train.batch_size (and raise train.grad_accum_steps)") +
                      (p.gradient_checkpointing ? "" : ", or set train.grad_checkpointing: true"));
}

std::string quantize_on_load(const FinetuneParams& p, const std::optional<quant::BnbConfig>& bnb, const fs::path& model_dir) {
  if (!bnb) return p.quantize == "auto" ? (p.method == "qlora" ? "nf4" : "none") : p.quantize;
  const std::string kind = bnb->load_in_4bit ? "4-bit" : "8-bit";
  if (p.quantize != "auto" && p.quantize != "none")
    throw ConfigError("model.quantize: " + p.quantize + " but " + model_dir.string() + " is already a bitsandbytes " + kind +
                      " checkpoint (config.json quantization_config): remove model.quantize, it loads as stored");
  if (!p.adapter)
    throw ConfigError(model_dir.string() + " is a bitsandbytes " + kind + " checkpoint: method full trains 16-bit weights; "
                      "use method: qlora or lora (an adapter over the frozen quantized base)");
  if (p.method == "qlora" && !bnb->load_in_4bit)
    throw ConfigError(model_dir.string() + " is a bitsandbytes 8-bit checkpoint: method qlora trains over a 4-bit base; use method: lora");
  return "none";
}

nlohmann::json planned_quantization(const FinetuneParams& p, const std::string& on_load) {
  if (on_load == "none") return {{"type", "none"}};
  return {{"type", on_load}, {"double_quant", p.double_quant}, {"blocksize", p.quant_blocksize}};
}

nlohmann::json loaded_quantization(model::CausalLM& model) {
  bool other = false;
  for (auto& [path, slot] : model.named_linears()) {
    if (const auto* g = dynamic_cast<const quant::GptqLinear*>(slot->get()))
      return {{"type", g->quantized().format}, {"bits", g->quantized().bits}};
    if (const auto* q = dynamic_cast<const quant::FourBitLinear*>(slot->get())) {
      const quant::FourBitState& s = q->quantized().state;
      return {{"type", quant::four_bit_name(s.type)}, {"double_quant", s.nested}, {"blocksize", s.blocksize}};
    }
    other = other || (*slot)->parameter_slots().empty();
  }
  // The one other frozen kind a base loads as: LLM.int8 from a bitsandbytes 8-bit checkpoint.
  return {{"type", other ? "int8" : "none"}};
}

std::string describe_quantization(const nlohmann::json& q) {
  const std::string type = q.value("type", std::string("none"));
  if (type == "none") return "none (a 16-bit base)";
  if (type == "int8") return "int8 (LLM.int8)";
  if (type == "gptq") return fmt::format("gptq ({}-bit codes, a GPTQ checkpoint)", q.value("bits", int64_t{4}));
  if (type == "compressed-tensors")
    return fmt::format("compressed-tensors ({}-bit codes, a pack-quantized checkpoint)", q.value("bits", int64_t{4}));
  return fmt::format("{} ({}blocks of {})", type, q.value("double_quant", false) ? "double-quantized absmax, " : "",
                     q.value("blocksize", int64_t{0}));
}

namespace {

// The key=value overrides that reproduce a record.
std::string overrides(const nlohmann::json& q) {
  const std::string type = q.value("type", std::string("none"));
  if (type == "none") return "model.quantize=none method=lora";
  if (type == "int8") return "the same 8-bit checkpoint as model.path";
  if (type == "gptq") return "the same GPTQ checkpoint as model.path";
  if (type == "compressed-tensors") return "the same compressed-tensors checkpoint as model.path";
  return fmt::format("model.quantize={} model.double_quant={} model.quant_blocksize={}", type,
                     q.value("double_quant", false) ? "true" : "false", q.value("blocksize", int64_t{0}));
}

}  // namespace

void check_resume_quantization(const nlohmann::json& checkpoint_state, const nlohmann::json& now, const fs::path& checkpoint) {
  if (!checkpoint_state.contains("quantization") || !checkpoint_state["quantization"].is_object()) return;
  const nlohmann::json& saved = checkpoint_state["quantization"];
  if (saved == now) return;
  throw CheckpointError(checkpoint.string() + ": an adapter trained on a different quantization: the checkpoint's base was " +
                        describe_quantization(saved) + ", this run's is " + describe_quantization(now) + "; resume with " + overrides(saved) +
                        ", or start over with --force");
}

BaseMemory base_memory(model::CausalLM& model) {
  BaseMemory m;
  for (auto& [name, slot] : model.named_weights()) {
    m.parameters += slot->numel();
    m.bytes_held += static_cast<int64_t>(slot->nbytes());
  }
  // Linears that list no weight slot are held in another form (quantized); named_weights skipped them.
  for (auto& [path, slot] : model.named_linears()) {
    if (!(*slot)->parameter_slots().empty()) continue;
    int64_t held = 0;
    for (const at::Tensor& t : (*slot)->tensors()) held += static_cast<int64_t>(t.nbytes());
    at::Tensor bias = (*slot)->bias();
    const int64_t params = (*slot)->out_features() * (*slot)->in_features() + (bias.defined() ? bias.numel() : 0);
    m.parameters += params;
    m.bytes_held += held;
    ++m.quantized_linears;
    m.quantized_bytes_16bit += 2 * params;
    m.quantized_bytes_held += held;
  }
  m.bytes_16bit = 2 * m.parameters;
  return m;
}

nlohmann::json quantization_summary(const nlohmann::json& record, bool from_checkpoint, const BaseMemory& m,
                                    at::ScalarType compute_dtype) {
  nlohmann::json q = record;
  if (q["type"] == "gptq") q["source"] = "GPTQ checkpoint";
  else if (q["type"] == "compressed-tensors") q["source"] = "compressed-tensors checkpoint";
  else if (q["type"] != "none") q["source"] = from_checkpoint ? "bitsandbytes checkpoint" : "quantized while loading";
  q["compute_dtype"] = dtype_name(compute_dtype);
  q["quantized_linears"] = m.quantized_linears;
  q["base_parameters"] = m.parameters;
  q["base_bytes_16bit"] = m.bytes_16bit;
  q["base_bytes_held"] = m.bytes_held;
  q["quantized_bytes_16bit"] = m.quantized_bytes_16bit;
  q["quantized_bytes_held"] = m.quantized_bytes_held;
  q["bytes_saved"] = m.quantized_bytes_16bit - m.quantized_bytes_held;
  return q;
}

}  // namespace llmtune::pipelines
