// The eval job, top to bottom: resolve the model, load tokenizer and weights, turn the data into
// sequences of ids, score them in batches, report.
#include "llmtune/pipelines/eval.h"

#include <ATen/core/Reduction.h>
#include <ATen/ops/cross_entropy_loss.h>
#include <ATen/ops/tensor.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <sstream>

#include "llmtune/data/dataset.h"
#include "llmtune/io/jsonl.h"
#include "llmtune/pipelines/load.h"
#include "llmtune/util/device.h"
#include "llmtune/util/error.h"

namespace llmtune::pipelines {
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// A scored sequence: ids and their (unshifted) labels, -100 where not scored.
struct Scored {
  std::vector<int32_t> ids, labels;
};

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
      seqs.push_back({window, window});
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
      auto it = row.find("text");
      const bool plain_text = (p.format == "auto" || p.format == "text") && it != row.end() && it->is_string();
      if (plain_text) {
        // Plain text: every next token is scored (perplexity as transformers computes it).
        s.ids = tok.encode(it->get<std::string>(), true);
        s.labels = s.ids;
      } else {
        // Instruction / chat rows: rendered as finetune renders them; only the trained (assistant) tokens are scored.
        data::RenderedRow rendered = data::render_row(row, dp, tok, source);
        s.ids = std::move(rendered.example.input_ids);
        s.labels = std::move(rendered.example.labels);
      }
      if (static_cast<int64_t>(s.ids.size()) > max_seq_len) {
        s.ids.resize(static_cast<size_t>(max_seq_len));
        s.labels.resize(static_cast<size_t>(max_seq_len));
        ++truncated;
      }
      if (s.ids.size() < 2) {
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

EvalResult run_eval(const EvalParams& p) {
  auto t_load = Clock::now();
  LoadedModel loaded = load_model("eval", p.model, p.adapter, p.device, p.dtype);
  const model::CausalLM& model = *loaded.model;
  auto seqs = load_sequences(p, *loaded.tokenizer);
  for (const auto& s : seqs)
    for (int32_t id : s.ids)
      if (id < 0 || id >= model.config().vocab_size)
        throw DataError("token id " + std::to_string(id) + " is outside the model's vocabulary (" +
                        std::to_string(model.config().vocab_size) + "): tokenizer and model do not match");

  EvalResult r;
  r.load_seconds = since(t_load);
  auto t_eval = Clock::now();
  double loss_sum = 0;
  for (size_t first = 0; first < seqs.size(); first += static_cast<size_t>(p.batch_size)) {
    size_t last = std::min(seqs.size(), first + static_cast<size_t>(p.batch_size));
    int64_t width = 0;
    for (size_t i = first; i < last; ++i) width = std::max<int64_t>(width, static_cast<int64_t>(seqs[i].ids.size()));
    // Right padding: causal attention never lets a real token see a pad, and pads carry no label.
    const int64_t rows = static_cast<int64_t>(last - first);
    std::vector<int64_t> id_buf(static_cast<size_t>(rows * width), 0), label_buf(id_buf.size(), -100);
    for (size_t i = first; i < last; ++i) {
      for (size_t t = 0; t < seqs[i].ids.size(); ++t) {
        id_buf[(i - first) * static_cast<size_t>(width) + t] = seqs[i].ids[t];
        label_buf[(i - first) * static_cast<size_t>(width) + t] = seqs[i].labels[t];
      }
    }
    at::Tensor ids = at::tensor(id_buf, at::TensorOptions().dtype(at::kLong)).view({rows, width});
    at::Tensor labels = at::tensor(label_buf, at::TensorOptions().dtype(at::kLong)).view({rows, width});
    at::Tensor logits = model.forward(ids).to(at::kFloat);
    at::Tensor shift_logits = logits.narrow(1, 0, width - 1).reshape({-1, logits.size(-1)});
    at::Tensor shift_labels = labels.narrow(1, 1, width - 1).reshape({-1}).to(logits.device());
    loss_sum += at::cross_entropy_loss(shift_logits, shift_labels, {}, at::Reduction::Sum, -100).item<double>();
    r.tokens += (shift_labels != -100).sum().item<int64_t>();
  }
  r.eval_seconds = since(t_eval);
  r.sequences = static_cast<int64_t>(seqs.size());
  if (r.tokens == 0) throw DataError(p.data + ": no scored token (every label is masked)");
  r.loss = loss_sum / static_cast<double>(r.tokens);
  r.perplexity = std::exp(r.loss);
  r.tokens_per_second = r.eval_seconds > 0 ? static_cast<double>(r.tokens) / r.eval_seconds : 0;
  r.device = loaded.device.device.str();
  r.dtype = dtype_name(loaded.dtype.dtype);
  return r;
}

}  // namespace llmtune::pipelines
