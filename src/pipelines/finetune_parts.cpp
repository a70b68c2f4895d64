// finetune_parts.h: evaluation and the files next to the result.
#include "finetune_parts.h"

#include <ATen/core/grad_mode.h>

#include <cmath>

#include "llmtune/io/hf_dir.h"
#include "llmtune/io/read_file.h"
#include "llmtune/train/loss.h"
#include "llmtune/util/error.h"

namespace llmtune::pipelines {
namespace fs = std::filesystem;

// Files of the base model directory that a full fine-tune's output needs besides the weights.
void copy_model_files(const fs::path& from, const fs::path& to, at::ScalarType saved_dtype) {
  io::copy_tokenizer_files(from, to);
  if (fs::exists(from / "generation_config.json"))
    fs::copy_file(from / "generation_config.json", to / "generation_config.json", fs::copy_options::overwrite_existing);
  io::write_config_with_dtype(from, to, saved_dtype);
}

// The chat template the data was rendered with, when it is not the tokenizer's own (a named
// template or a .jinja file): saved as chat_template.jinja next to the result, so that infer,
// merge and GGUF/Ollama exports keep the layout the model learned. "" when nothing to save.
std::string trained_template_source(const data::Dataset& dataset, const data::DataParams& params,
                                    const tokenizer::Tokenizer& tok) {
  if (dataset.template_name == "tokenizer" || dataset.template_name == "none") return "";
  const std::string& name = params.chat_template;
  std::string source;
  if (name.ends_with(".jinja")) {
    source = io::read_text_file<DataError>(name, "the chat template");
  } else {
    source = data::named_template_source(name);
  }
  return source == tok.chat_template ? "" : source;
}

// `adapter`: the trained method (its dropout is off while evaluating), or nullptr.
EvalStats evaluate(model::CausalLM& model, data::Batcher& batches, int64_t max_batches, const peft::AdapterMethod* adapter,
                   int64_t chunk_rows) {
  at::NoGradGuard no_grad;
  if (adapter) adapter->set_training(model, false);
  at::Tensor loss_acc = train::loss_accumulator(model.device());
  int64_t targets = 0;
  int64_t n = batches.batches_per_epoch();
  if (max_batches > 0) n = std::min(n, max_batches);
  batches.seek({});
  for (int64_t i = 0; i < n; ++i) {
    const data::Batch b = data::to_device(batches.next(), model.device());
    loss_acc += train::batch_loss_sum(model, b, chunk_rows);
    targets += b.n_targets;
  }
  const double loss_sum = loss_acc.item<double>();  // one host sync per evaluation
  if (adapter) adapter->set_training(model, true);
  EvalStats s;
  s.targets = targets;
  s.loss = targets > 0 ? loss_sum / static_cast<double>(targets) : 0.0;
  s.perplexity = std::exp(s.loss);
  return s;
}

}  // namespace llmtune::pipelines
