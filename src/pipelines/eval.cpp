// The eval job, top to bottom: resolve the model, load tokenizer and weights, turn the data into
// sequences of ids, score them in batches (the training Batcher, unpacked and in order, and the
// training loss), report.
#include "llmtune/pipelines/eval.h"

#include <algorithm>

#include <ATen/core/grad_mode.h>
#include <ATen/ops/zeros.h>
#include <spdlog/spdlog.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include "llmtune/data/batcher.h"
#include "llmtune/data/dataset.h"
#include "llmtune/io/jsonl.h"
#include "llmtune/pipelines/load.h"
#include "llmtune/train/loss.h"
#include "llmtune/util/device.h"
#include "llmtune/util/error.h"
#include "llmtune/util/timing.h"
#include "saved_template.h"

namespace llmtune::pipelines {
namespace {

// A scored sequence is an Example: ids and their (unshifted) labels, -100 where not scored.
using Scored = data::Example;

std::vector<Scored> load_sequences(const EvalParams& p, const tokenizer::Tokenizer& tok) {
  const std::filesystem::path& path = p.data;
  const int64_t max_seq_len = p.max_seq_len;
  std::vector<Scored> seqs;
  if (path.extension() == ".txt") {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw DataError(path.string() + ": cannot open the data file");
    std::stringstream ss;
    ss << in.rdbuf();
    std::vector<int32_t> ids = tok.encode(ss.str(), /*add_special_tokens=*/true);
    for (size_t start = 0; start + 1 < ids.size(); start += static_cast<size_t>(max_seq_len)) {
      size_t end = std::min(ids.size(), start + static_cast<size_t>(max_seq_len));
      std::vector<int32_t> window(ids.begin() + static_cast<int64_t>(start), ids.begin() + static_cast<int64_t>(end));
      seqs.push_back({.input_ids = window, .labels = window});
    }
  } else if (path.extension() == ".jsonl" || path.extension() == ".json") {
    int64_t truncated = 0, too_short = 0;
    data::DataParams dp;
    dp.format = p.format;
    dp.chat_template = p.chat_template;
    dp.max_seq_len = max_seq_len;
    data::read_rows(path, [&](int64_t line, const nlohmann::ordered_json& row) {
      const std::string source = path.string() + ":" + std::to_string(line);
      Scored s;
      s.line = line;
      auto it = row.find("text");
      const bool plain_text = (p.format == "auto" || p.format == "text") && it != row.end() && it->is_string();
      if (plain_text) {
        // Plain text: every next token is scored (perplexity as transformers computes it).
        s.input_ids = tok.encode(it->get<std::string>(), true);
        s.labels = s.input_ids;
      } else {
        // Instruction / chat rows: rendered as finetune renders them; only the trained (assistant) tokens are scored.
        data::RenderedRow rendered = data::render_row(row, dp, tok, source);
        s.input_ids = std::move(rendered.example.input_ids);
        s.labels = std::move(rendered.example.labels);
      }
      if (static_cast<int64_t>(s.input_ids.size()) > max_seq_len) {
        s.input_ids.resize(static_cast<size_t>(max_seq_len));
        s.labels.resize(static_cast<size_t>(max_seq_len));
        ++truncated;
      }
      if (s.input_ids.size() < 2) {
        ++too_short;
        return;
      }
      seqs.push_back(std::move(s));
    });
    if (truncated) spdlog::info("eval: {} row(s) truncated to max_seq_len={}", truncated, max_seq_len);
    if (too_short) spdlog::warn("eval: {} row(s) skipped: fewer than 2 tokens, nothing to predict", too_short);
  } else {
    throw DataError(path.string() + ": unsupported data file type (use .txt, or .jsonl / .json rows in a finetune format)");
  }
  if (seqs.empty()) throw DataError(path.string() + ": no sequence with at least 2 tokens to evaluate");
  return seqs;
}

}  // namespace

EvalResult run_eval(const EvalParams& params) {
  auto t_load = SteadyClock::now();
  LoadedModel loaded = load_model("eval", params.model, params.adapter, params.device, params.dtype,
                                  params.refuse_non_finite, params.quantize);
  EvalResult r = eval_model(params, *loaded.model, *loaded.tokenizer);
  r.load_seconds = seconds_since(t_load) - r.eval_seconds;
  r.device = loaded.device.device.str();
  r.dtype = dtype_name(loaded.dtype.dtype);
  return r;
}

EvalResult eval_model(const EvalParams& params, const model::CausalLM& model, const tokenizer::Tokenizer& tokenizer) {
  auto t_load = SteadyClock::now();
  EvalParams p = params;
  // The template the adapter was trained with (finetune saves it next to the adapter) unless one was named.
  if (p.chat_template == "auto" && std::filesystem::path(p.data).extension() != ".txt") {
    if (auto saved = saved_chat_template(p.adapter)) {
      p.chat_template = saved->string();
      spdlog::info("eval: chat template {} (saved with the adapter, the one it was trained with)", p.chat_template);
    }
  }
  auto seqs = load_sequences(p, tokenizer);
  data::check_token_ids(seqs, model.config().vocab_size, p.data);

  EvalResult r;
  r.load_seconds = seconds_since(t_load);
  r.sequences = static_cast<int64_t>(seqs.size());
  auto t_eval = SteadyClock::now();
  // One sequence per row, in order, right-padded to the longest of its batch: causal attention
  // never lets a real token see a pad, and pads carry no label.
  // (More rows per batch than there are sequences is one batch of them all.)
  const int64_t batch_size = std::clamp<int64_t>(p.batch_size, 1, std::max<int64_t>(1, static_cast<int64_t>(seqs.size())));
  data::Batcher batches(std::move(seqs), {.batch_size = batch_size, .max_seq_len = p.max_seq_len, .packing = false,
                                          .pad_to_multiple_of = 1, .pad_id = 0, .shuffle = false});
  at::NoGradGuard no_grad;
  // The LM head and loss over chunks of the scored positions (no full logits); summed on the
  // device, read once.
  at::Tensor loss_acc = train::loss_accumulator(model.device());
  for (int64_t i = 0, n = batches.batches_per_epoch(); i < n; ++i) {
    const data::Batch b = data::to_device(batches.next(), model.device());
    loss_acc += train::batch_loss_sum(model, b);
    r.tokens += b.n_targets;
  }
  const double loss_sum = loss_acc.item<double>();
  r.eval_seconds = seconds_since(t_eval);
  if (r.tokens == 0) throw DataError(p.data + ": no scored token (every label is masked)");
  r.loss = loss_sum / static_cast<double>(r.tokens);
  r.perplexity = std::exp(r.loss);
  r.tokens_per_second = r.eval_seconds > 0 ? static_cast<double>(r.tokens) / r.eval_seconds : 0;
  r.device = model.device().str();
  r.dtype = dtype_name(model.dtype());
  return r;
}

}  // namespace llmtune::pipelines
