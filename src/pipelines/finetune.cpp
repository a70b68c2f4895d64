// `llmtune finetune`, written out top to bottom: check the run directory, load the model and make
// its trainable tensors, load the data, restore a checkpoint when resuming, then the loop
// (accumulate, clip, AdamW, schedule, log, evaluate, checkpoint, stop on a signal) and the final
// adapter or model, evaluation and summary.
#include "llmtune/pipelines/finetune.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/exp.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <csignal>
#include <cmath>
#include <fstream>
#include <regex>

#include "llmtune/data/batcher.h"
#include "llmtune/io/atomic_file.h"
#include "llmtune/io/hf_dir.h"
#include "llmtune/io/safetensors.h"
#include "llmtune/model/causal_lm.h"
#include "llmtune/tokenizer/tokenizer.h"
#include "llmtune/train/checkpoint.h"
#include "llmtune/train/loss.h"
#include "llmtune/train/lr_schedule.h"
#include "llmtune/train/progress.h"
#include "llmtune/util/device.h"
#include "llmtune/util/error.h"
#include "llmtune/util/log.h"

namespace llmtune::pipelines {
namespace fs = std::filesystem;
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// A new run must not mix its files with an earlier one; a resumed run needs a checkpoint.
std::optional<fs::path> check_run_directory(const FinetuneParams& p) {
  const fs::path ckpts = p.output / "checkpoints";
  if (p.resume) {
    std::optional<fs::path> from = p.resume_from.empty() ? train::latest_checkpoint(ckpts) : std::optional(p.resume_from);
    if (!from) throw CheckpointError(ckpts.string() + ": no checkpoint to resume from (start without --resume)");
    return from;
  }
  for (const char* taken : {"checkpoints", "adapter", "model", "summary.json", "metrics.jsonl"}) {
    if (fs::exists(p.output / taken))
      throw UsageError(p.output.string() + " already holds a run (" + taken + "); continue it with --resume, or choose another --output");
  }
  return std::nullopt;
}

// Files of the base model directory that a full fine-tune's output needs besides the weights.
void copy_model_files(const fs::path& from, const fs::path& to, at::ScalarType saved_dtype) {
  for (const char* name : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                           "chat_template.jinja", "generation_config.json", "added_tokens.json", "vocab.json",
                           "merges.txt"}) {
    if (fs::exists(from / name)) fs::copy_file(from / name, to / name, fs::copy_options::overwrite_existing);
  }
  std::ifstream in(from / "config.json");
  nlohmann::ordered_json config = nlohmann::ordered_json::parse(in);
  const std::string dtype = saved_dtype == at::kBFloat16 ? "bfloat16" : saved_dtype == at::kHalf ? "float16" : "float32";
  if (config.contains("torch_dtype")) config["torch_dtype"] = dtype;
  config["dtype"] = dtype;
  io::write_file_atomic(to / "config.json", config.dump(2) + "\n");
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
    std::ifstream in(name, std::ios::binary);
    source.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  } else {
    source = data::named_template_source(name);
  }
  return source == tok.chat_template ? "" : source;
}

at::ScalarType dtype_from_config_name(const std::string& name) {
  if (name == "bfloat16") return at::kBFloat16;
  if (name == "float16") return at::kHalf;
  return at::kFloat;
}

struct EvalStats {
  double loss = 0, perplexity = 0;
  int64_t targets = 0;
};

EvalStats evaluate(model::CausalLM& model, data::Batcher& batches, int64_t max_batches, bool lora) {
  at::NoGradGuard no_grad;
  if (lora) peft::set_training(model, false);
  double loss_sum = 0;
  int64_t targets = 0;
  int64_t n = batches.batches_per_epoch();
  if (max_batches > 0) n = std::min(n, max_batches);
  batches.seek({});
  for (int64_t i = 0; i < n; ++i) {
    data::Batch b = batches.next();
    model::ForwardOptions fo{.positions = b.positions, .attention_mask = b.attention_mask};
    loss_sum += train::causal_lm_loss_sum(model.forward(b.input_ids, fo), b.labels).item<double>();
    targets += b.n_targets;
  }
  if (lora) peft::set_training(model, true);
  EvalStats s;
  s.targets = targets;
  s.loss = targets > 0 ? loss_sum / static_cast<double>(targets) : 0.0;
  s.perplexity = std::exp(s.loss);
  return s;
}

}  // namespace

nlohmann::json run_finetune(const FinetuneParams& p) {
  const auto t_start = Clock::now();
  std::optional<fs::path> resume_dir = check_run_directory(p);
  train::install_stop_signals();

  // Model.
  const fs::path model_dir = io::resolve_model_dir(p.model);
  DeviceChoice device = choose_device(p.device);
  DtypeChoice dtype = choose_dtype(p.dtype, device.device);
  spdlog::info("finetune: {} ({} {}) on {} ({}), compute {}", model_dir.string(), p.model_init, p.method,
               device.device.str(), device.reason, dtype_name(dtype.dtype));
  auto tok = tokenizer::load_tokenizer(model_dir);
  at::manual_seed(p.seed);
  model::CausalLM model = p.model_init == "random"
                              ? model::CausalLM::init_random(model_dir, device.device, dtype.dtype, p.seed)
                              : model::CausalLM::load(model_dir, device.device, dtype.dtype);
  model.set_gradient_checkpointing(p.gradient_checkpointing);

  // Trainable tensors: fp32 adapters (LoRA) or fp32 copies of the unfrozen weights (full).
  const bool lora = p.method == "lora";
  int64_t n_total = 0;  // the base model's parameters, before any adapter
  for (auto& [name, slot] : model.named_weights()) n_total += slot->numel();
  std::vector<train::NamedParameter> trainable;
  if (lora) {
    for (auto& t : peft::inject_lora(model, p.lora, at::kFloat)) trainable.push_back({t.name, t.tensor});
    peft::set_training(model, true);
  } else {
    std::vector<std::regex> freeze;
    for (const auto& f : p.freeze) {
      try {
        freeze.emplace_back(f);
      } catch (const std::regex_error&) {
        throw ConfigError("full.freeze: '" + f + "' is not a valid regular expression");
      }
    }
    std::vector<size_t> freeze_hits(freeze.size(), 0);
    for (auto& [name, slot] : model.named_weights()) {
      bool frozen = false;
      for (size_t i = 0; i < freeze.size(); ++i)
        if (std::regex_search(name, freeze[i])) frozen = true, ++freeze_hits[i];
      if (frozen) continue;
      *slot = slot->detach().to(at::kFloat).clone().requires_grad_(true);
      trainable.push_back({name, *slot});
    }
    model.retie_embeddings();
    for (size_t i = 0; i < freeze.size(); ++i)
      if (freeze_hits[i] == 0) throw ConfigError("full.freeze: '" + p.freeze[i] + "' matches no weight (names look like model.layers.0.mlp.up_proj.weight)");
    if (trainable.empty()) throw ConfigError("full.freeze freezes every weight: nothing to train");
  }
  int64_t n_trainable = 0;
  for (const auto& t : trainable) n_trainable += t.tensor.numel();
  spdlog::info("trainable: {} tensors, {} parameters ({:.3f}% of the base model's {})", trainable.size(), n_trainable,
               100.0 * static_cast<double>(n_trainable) / static_cast<double>(std::max<int64_t>(n_total, 1)), n_total);

  // Data.
  data::Dataset dataset = data::load_dataset(p.data, *tok);
  const int32_t pad_id = tok->pad_id.value_or(tok->eos_id.value_or(0));
  data::Batcher batches(dataset.train, {.batch_size = p.batch_size, .max_seq_len = p.data.max_seq_len, .packing = p.packing,
                                        .pad_to_multiple_of = 8, .pad_id = pad_id, .shuffle = true, .seed = p.seed});
  std::optional<data::Batcher> val_batches;
  if (!dataset.val.empty())
    val_batches.emplace(dataset.val, data::BatchOptions{.batch_size = p.batch_size, .max_seq_len = p.data.max_seq_len,
                                                        .packing = false, .pad_to_multiple_of = 8, .pad_id = pad_id,
                                                        .shuffle = false, .seed = p.seed});
  const int64_t per_epoch = batches.batches_per_epoch();
  const int64_t total_steps =
      p.max_steps > 0 ? p.max_steps : std::max<int64_t>(1, (p.epochs * per_epoch + p.grad_accum_steps - 1) / p.grad_accum_steps);
  const int64_t warmup_steps =
      p.warmup_steps > 0 ? p.warmup_steps : static_cast<int64_t>(std::ceil(p.warmup_ratio * static_cast<double>(total_steps)));
  const train::Schedule schedule = train::parse_schedule(p.lr_scheduler);
  spdlog::info("data: {} train / {} validation examples, {} batches of {} per epoch; {} optimizer steps ({} batches each), warmup {}",
               dataset.train.size(), dataset.val.size(), per_epoch, p.batch_size, total_steps, p.grad_accum_steps,
               warmup_steps);

  train::AdamW optimizer(trainable, p.adam);

  // Resume: tensors, optimizer moments, RNG, data position, counters.
  int64_t step = 0, tokens_seen = 0;
  double elapsed_before = 0;
  if (resume_dir) {
    train::CheckpointContents ck = train::load_checkpoint(*resume_dir);
    std::map<std::string, at::Tensor> saved(ck.trainable.begin(), ck.trainable.end());
    at::NoGradGuard no_grad;
    for (auto& t : trainable) {
      auto it = saved.find(t.name);
      if (it == saved.end() || it->second.sizes() != t.tensor.sizes())
        throw CheckpointError(resume_dir->string() + ": trainable tensor '" + t.name +
                              (it == saved.end() ? "' is missing" : "' has another shape") +
                              " (was it written with another model or method/lora settings?)");
      t.tensor.copy_(it->second);
    }
    if (saved.size() != trainable.size())
      throw CheckpointError(resume_dir->string() + ": holds " + std::to_string(saved.size()) + " trainable tensors, this run has " +
                            std::to_string(trainable.size()) + " (another configuration?)");
    step = ck.state.at("step").get<int64_t>();
    optimizer.load_state(ck.optimizer, ck.state.at("optimizer_steps").get<int64_t>(), resume_dir->string());
    at::Generator cpu_gen = at::detail::getDefaultCPUGenerator();
    cpu_gen.set_state(ck.rng_state);
    batches.seek({ck.state.at("data_epoch").get<int64_t>(), ck.state.at("data_batch").get<int64_t>()});
    tokens_seen = ck.state.value("tokens_seen", int64_t{0});
    elapsed_before = ck.state.value("elapsed_seconds", 0.0);
    spdlog::info("resumed from {} at step {}/{}", resume_dir->string(), step, total_steps);
  }
  // Everything is validated: only now does the run directory appear.
  fs::create_directories(p.output);
  log::add_file(p.output / "train.log");
  io::write_file_atomic(p.output / "config.yaml", p.config_yaml);
  const int removed = train::remove_stale_staging(p.output / "checkpoints");
  if (removed) spdlog::warn("removed {} incomplete checkpoint(s) left by an interrupted run", removed);

  train::MetricsLog metrics(p.output / "metrics.jsonl", resume_dir ? step : -1);
  train::Progress progress(total_steps, p.log_every_steps, p.quiet);
  const bool cuda = device.device.is_cuda();
  const int device_index = cuda ? device.device.index() : 0;
  auto peak_memory = [&] { return train::peak_memory_bytes(cuda, std::max(device_index, 0)); };

  auto save = [&](int64_t at_step) {
    train::CheckpointContents ck;
    for (const auto& t : trainable) ck.trainable.emplace_back(t.name, t.tensor.detach());
    ck.optimizer = optimizer.state();
    ck.rng_state = at::detail::getDefaultCPUGenerator().get_state();
    const auto pos = batches.position();
    ck.state = {{"step", at_step}, {"optimizer_steps", optimizer.step_count()}, {"data_epoch", pos.epoch},
                {"data_batch", pos.batch}, {"tokens_seen", tokens_seen},
                {"elapsed_seconds", elapsed_before + seconds_since(t_start)}, {"total_steps", total_steps},
                {"method", p.method}};
    auto write_adapter = [&](const fs::path& staging) {
      if (!lora) return;
      std::vector<peft::NamedTensor> adapter;
      for (const auto& t : trainable) adapter.push_back({t.name, t.tensor.detach()});
      peft::save_adapter(staging / "adapter", p.lora, adapter);
    };
    fs::path dir = train::save_checkpoint(p.output / "checkpoints", at_step, ck, write_adapter, p.checkpoint_keep);
    progress.message("checkpoint: " + dir.string());
  };

  // The loop.
  const auto t_loop = Clock::now();
  const int64_t first_step = step, first_tokens = tokens_seen;
  double step_seconds_sum = 0;  // forward/backward/update time only: the throughput's denominator
  double last_loss = std::nan("");
  std::optional<EvalStats> last_eval;
  bool interrupted = false, checkpointed_last = resume_dir.has_value();
  while (step < total_steps) {
    const auto t_step = Clock::now();
    // Gradient accumulation: the loss is summed over every micro-batch's targets and divided by
    // their total, so the update equals one large batch (transformers' num_items_in_batch).
    std::vector<data::Batch> micro;
    int64_t targets = 0, step_tokens = 0;
    for (int64_t i = 0; i < p.grad_accum_steps; ++i) {
      micro.push_back(batches.next());
      targets += micro.back().n_targets;
      step_tokens += micro.back().n_tokens;
    }
    double loss_sum = 0;
    for (const auto& b : micro) {
      if (b.n_targets == 0) continue;
      model::ForwardOptions fo{.positions = b.positions, .attention_mask = b.attention_mask};
      at::Tensor loss = train::causal_lm_loss_sum(model.forward(b.input_ids, fo), b.labels) / static_cast<double>(targets);
      loss.backward();
      loss_sum += loss.item<double>();
    }
    const double grad_norm = train::clip_grad_norm(trainable, p.max_grad_norm);
    const double lr = p.lr * train::lr_multiplier(schedule, step, warmup_steps, total_steps);
    optimizer.step(lr);
    optimizer.zero_grad();
    ++step;
    tokens_seen += step_tokens;
    last_loss = loss_sum;
    checkpointed_last = false;

    const double run_seconds = seconds_since(t_loop);
    const double step_seconds = seconds_since(t_step);
    step_seconds_sum += step_seconds;
    const double tokens_per_second = static_cast<double>(step_tokens) / std::max(step_seconds, 1e-9);
    const double elapsed = elapsed_before + seconds_since(t_start);
    metrics.write({{"step", step}, {"epoch", static_cast<double>(step * p.grad_accum_steps) / static_cast<double>(per_epoch)},
                   {"loss", loss_sum}, {"lr", lr}, {"grad_norm", grad_norm}, {"tokens", step_tokens},
                   {"tokens_per_second", tokens_per_second}, {"peak_memory_bytes", peak_memory()},
                   {"elapsed_seconds", elapsed}});
    progress.update(step, loss_sum, lr, grad_norm, tokens_per_second, elapsed, run_seconds, step - first_step);

    if (val_batches && p.eval_every_steps > 0 && step % p.eval_every_steps == 0 && step < total_steps) {
      last_eval = evaluate(model, *val_batches, p.eval_max_batches, lora);
      metrics.write({{"step", step}, {"eval_loss", last_eval->loss}, {"eval_perplexity", last_eval->perplexity}});
      progress.message(fmt::format("step {}: eval loss {:.4f}, perplexity {:.3f}", step, last_eval->loss, last_eval->perplexity));
    }
    if (p.checkpoint_every_steps > 0 && step % p.checkpoint_every_steps == 0) {
      save(step);
      checkpointed_last = true;
    }
    if (train::stop_requested() && step < total_steps) {
      interrupted = true;
      break;
    }
  }
  if (!checkpointed_last) save(step);
  progress.finish();

  nlohmann::json summary;
  if (interrupted) {
    const std::string resume_command = "llmtune finetune " + (p.output / "config.yaml").string() + " --resume";
    spdlog::warn("stopped by {} after step {}/{}; checkpoint saved. Resume with: {}",
                 train::stop_signal() == SIGTERM ? "SIGTERM" : "SIGINT", step, total_steps, resume_command);
    summary = {{"interrupted", true}, {"step", step}, {"total_steps", total_steps}, {"resume_command", resume_command}};
    return summary;
  }

  // The result: the adapter (PEFT format) or the full model (a Hugging Face directory).
  if (lora) {
    std::vector<peft::NamedTensor> adapter;
    for (const auto& t : trainable) adapter.push_back({t.name, t.tensor.detach()});
    peft::LoraConfig saved = p.lora;
    saved.base_model_name_or_path = p.model;
    peft::save_adapter(p.output / "adapter", saved, adapter);
    if (auto source = trained_template_source(dataset, p.data, *tok); !source.empty())
      io::write_file_atomic(p.output / "adapter" / "chat_template.jinja", source);
    spdlog::info("adapter: {}", (p.output / "adapter").string());
  } else {
    const std::string& config_dtype = model.config().torch_dtype;
    const at::ScalarType save_dtype = config_dtype.empty() ? at::kFloat : dtype_from_config_name(config_dtype);
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    for (auto& [name, slot] : model.named_weights())
      tensors.emplace_back(name, slot->detach().to(at::kCPU, save_dtype).contiguous());
    io::AtomicDir out(p.output / "model");
    io::save_sharded(out.staging(), tensors, uint64_t{5} << 30);
    copy_model_files(model_dir, out.staging(), save_dtype);
    if (auto source = trained_template_source(dataset, p.data, *tok); !source.empty())
      io::write_file_atomic(out.staging() / "chat_template.jinja", source);
    out.commit();
    spdlog::info("model: {} ({})", (p.output / "model").string(), dtype_name(save_dtype));
  }
  if (val_batches) {
    last_eval = evaluate(model, *val_batches, p.eval_max_batches, lora);
    metrics.write({{"step", step}, {"eval_loss", last_eval->loss}, {"eval_perplexity", last_eval->perplexity}});
    spdlog::info("final eval: loss {:.4f}, perplexity {:.3f}", last_eval->loss, last_eval->perplexity);
  }
  const int64_t steps_run = step - first_step;
  summary = {{"interrupted", false},
             {"method", p.method},
             {"steps", step},
             {"epochs", static_cast<double>(step * p.grad_accum_steps) / static_cast<double>(per_epoch)},
             {"final_loss", last_loss},
             {"eval_loss", last_eval ? nlohmann::json(last_eval->loss) : nlohmann::json()},
             {"eval_perplexity", last_eval ? nlohmann::json(last_eval->perplexity) : nlohmann::json()},
             {"trainable_parameters", n_trainable},
             {"tokens_seen", tokens_seen},
             {"tokens_per_second", steps_run > 0 ? static_cast<double>(tokens_seen - first_tokens) / step_seconds_sum : 0.0},
             {"peak_memory_bytes", peak_memory()},
             {"wall_seconds", elapsed_before + seconds_since(t_start)},
             {"device", device.device.str()},
             {"dtype", dtype_name(dtype.dtype)},
             {"output", lora ? (p.output / "adapter").string() : (p.output / "model").string()}};
  io::write_file_atomic(p.output / "summary.json", summary.dump(2) + "\n");
  return summary;
}

}  // namespace llmtune::pipelines
