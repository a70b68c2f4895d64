// `llmtune finetune`, written out top to bottom: check the run directory, load the model and make
// its trainable tensors, load the data, restore a checkpoint when resuming, then the loop
// (accumulate, clip, AdamW, schedule, log, evaluate, checkpoint, stop on a signal) and the final
// adapter or model, evaluation and summary.
#include "llmtune/pipelines/finetune.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/exp.h>
#include <ATen/ops/zeros.h>
#include <spdlog/spdlog.h>

#include <csignal>
#include <cmath>
#include <ctime>
#include <fstream>
#include <regex>

#include "llmtune/data/batcher.h"
#include "llmtune/io/atomic_file.h"
#include "llmtune/io/hf_dir.h"
#include "llmtune/io/read_file.h"
#include "llmtune/io/safetensors.h"
#include "llmtune/model/causal_lm.h"
#include "llmtune/ops/runtime.h"
#include "llmtune/pipelines/load.h"
#include "llmtune/quant/bnb_checkpoint.h"
#include "llmtune/quant/bnb_linear.h"
#include "llmtune/quant/gptq_linear.h"
#include "llmtune/tokenizer/tokenizer.h"
#include "llmtune/train/checkpoint.h"
#include "llmtune/train/loss.h"
#include "llmtune/train/loss_scale.h"
#include "llmtune/train/lr_schedule.h"
#include "llmtune/train/progress.h"
#include "llmtune/util/device.h"
#include "llmtune/util/error.h"
#include "llmtune/util/log.h"
#include "llmtune/util/timing.h"
#include "distiller.h"
#include "finetune_parts.h"
#include "finetune_memory.h"
#include "run_directory.h"

namespace llmtune::pipelines {
namespace fs = std::filesystem;
using Clock = SteadyClock;

// Where a run is, for the failed state that run_finetune records when an error ends it.
struct RunProgress {
  bool directory_created = false;
  int64_t step = 0, total_steps = 0;
};

nlohmann::json run_finetune_impl(const FinetuneParams& p, RunProgress& progress_record) {
  const auto t_start = Clock::now();
  const RunStart start = check_run_directory(p);
  std::optional<fs::path> resume_dir = start.checkpoint;
  train::install_stop_signals();

  // Model.
  const fs::path model_dir = io::resolve_model_dir(p.model);
  DeviceChoice device = choose_device(p.device);
  DtypeChoice dtype = choose_dtype(p.dtype, device.device);
  spdlog::info("{}: {} ({} {}) on {} ({}), compute {}", p.command, model_dir.string(), p.model_init, p.method,
               device.device.str(), device.reason, dtype_name(dtype.dtype));
  auto tok = tokenizer::load_tokenizer(model_dir);
  const model::ModelConfig config = model::ModelConfig::load(model_dir);

  // Data, before the model: a bad row or a tokenizer that does not fit is found in seconds.
  data::Dataset dataset = data::load_dataset(p.data, *tok);
  data::check_token_ids(dataset.train, config.vocab_size, p.data.path);
  data::check_token_ids(dataset.val, config.vocab_size, p.data.val_path.empty() ? p.data.path : p.data.val_path);
  // The base: quantized while it loads (model.quantize, method qlora), or a bitsandbytes checkpoint as stored.
  const std::optional<quant::BnbConfig> bnb =
      p.model_init == "pretrained" ? quant::read_bnb_config(model_dir) : std::optional<quant::BnbConfig>();
  const std::optional<quant::GptqConfig> gptq =
      p.model_init == "pretrained" ? quant::read_gptq_config(model_dir) : std::optional<quant::GptqConfig>();
  if (gptq && !p.adapter)
    throw ConfigError(model_dir.string() + " is a GPTQ checkpoint: method full trains 16-bit weights; use an adapter method (lora, dora) over the frozen quantized base");
  if (gptq && p.quantize != "auto" && p.quantize != "none")
    throw ConfigError("model.quantize: " + p.quantize + " but " + model_dir.string() + " is already a GPTQ checkpoint: remove model.quantize");
  const std::string quantize = gptq ? std::string("none") : quantize_on_load(p, bnb, model_dir);
  if (gptq && p.method == "qlora")
    throw ConfigError("method qlora quantizes a 16-bit base to 4 bits; " + model_dir.string() + " is already a GPTQ checkpoint: use method: lora");
  // A distillation teacher on the student's device counts against the same memory.
  double teacher_bytes = 0;
  if (p.distill && p.distill->cache.empty() && (p.distill->teacher_device == "auto" || choose_device(p.distill->teacher_device).device == device.device))
    teacher_bytes = teacher_memory_bytes(*p.distill, dtype.dtype, device.device);
  check_memory(p, config, dataset, device.device, dtype.dtype, model_dir, quantize != "none" || bnb.has_value() || gptq.has_value(),
               teacher_bytes);

  // Batches.
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
  if (p.grad_accum_steps > per_epoch)
    spdlog::warn("train.grad_accum_steps {} is more micro-batches than an epoch has ({}): every optimizer step goes through "
                 "the data {:.3g} times", p.grad_accum_steps, per_epoch,
                 static_cast<double>(p.grad_accum_steps) / static_cast<double>(per_epoch));
  const train::Schedule schedule = train::parse_schedule(p.lr_scheduler);
  spdlog::info("data: {} train / {} validation examples, {} batches of {} per epoch; {} optimizer steps ({} batches each), warmup {}",
               dataset.train.size(), dataset.val.size(), per_epoch, p.batch_size, total_steps, p.grad_accum_steps,
               warmup_steps);


  // Resuming a run that is already finished is a no-op that leaves everything as it is.
  if (resume_dir) {
    const nlohmann::json saved_state = train::read_checkpoint_state(*resume_dir);
    if (!bnb) check_resume_quantization(saved_state, planned_quantization(p, quantize), *resume_dir);
    const int64_t saved_step = saved_state.at("step").get<int64_t>();
    if (saved_step >= total_steps && run_finished(p.output, read_run_state(p.output))) {
      spdlog::info("{}: the run finished at step {}/{}; nothing to do (raise train.max_steps to train further, or start over with --force)",
                   p.output.string(), saved_step, total_steps);
      return io::read_json_file<CheckpointError, nlohmann::json>(p.output / "summary.json", "the run summary");
    }
  }

  at::manual_seed(p.seed);
  model::LinearFactory linear = model::make_dense_linear;
  if (gptq)
    linear = quant::gptq_linear_factory(*gptq, io::WeightFiles::open(model_dir), model_dir, device.device);
  else if (bnb)
    linear = quant::bnb_checkpoint_linear_factory(*bnb, io::WeightFiles::open(model_dir), model_dir, device.device);
  else if (quantize != "none")
    linear = quant::four_bit_linear_factory(
        {.type = quant::four_bit_from_name(quantize), .blocksize = p.quant_blocksize, .double_quant = p.double_quant});
  model::CausalLM model = p.model_init == "random" ? model::CausalLM::init_random(model_dir, device.device, dtype.dtype, p.seed)
                                                   : model::CausalLM::load(model_dir, device.device, dtype.dtype, linear);
  // A base holding NaN or inf trains to a NaN loss at step 1: say which tensors, before that.
  const int64_t base_non_finite = p.model_init == "random" ? 0 : check_model_finite(model, model_dir.string(), /*refuse=*/false);
  const BaseMemory base = base_memory(model);
  const nlohmann::json quantization = loaded_quantization(model);
  if (quantization["type"] != "none")
    spdlog::info("base {} {}: {} linears in {:.2f} MiB instead of {:.2f} MiB in 16 bits; the rest (lm_head, embeddings, "
                 "norms) {}, compute in {}", bnb ? "loaded as stored (a bitsandbytes checkpoint):" : gptq ? "loaded as stored:" : "quantized to",
                 describe_quantization(quantization), base.quantized_linears, base.quantized_bytes_held / double(1 << 20),
                 base.quantized_bytes_16bit / double(1 << 20), dtype_name(dtype.dtype), dtype_name(dtype.dtype));
  model.set_gradient_checkpointing(p.gradient_checkpointing);
  // distill: the teacher (or its cache), checked against the student before anything trains.
  std::unique_ptr<Distiller> distiller;
  if (p.distill)
    distiller = std::make_unique<Distiller>(*p.distill, *tok, config.vocab_size, dataset.train, device.device, dtype.dtype);

  // Trainable tensors: fp32 adapters (LoRA) or fp32 copies of the unfrozen weights (full).
  // An adapter method (lora, ...) or full fine-tuning (p.adapter is null).
  const peft::AdapterMethod* adapter = p.adapter.get();
  const bool use_adapter = adapter != nullptr;
  const int64_t n_total = base.parameters;  // the base model's parameters, before any adapter
  std::vector<train::NamedParameter> trainable;
  if (use_adapter) {
    std::vector<peft::NamedTensor> injected;
    try {
      injected = p.adapter->inject(model, at::kFloat);
    } catch (const AdapterError& e) {
      throw ConfigError(e.what());  // the run's adapter settings do not fit this model: a usage error
    }
    for (auto& t : injected) trainable.push_back({t.name, t.tensor});
    adapter->set_training(model, true);
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

  if (model.config().dropout > 0)
    spdlog::warn("{}: config.json sets a model dropout of {} (attention/residual/embedding); llmtune trains without it "
                 "(transformers in train mode would apply it)", model_dir.string(), model.config().dropout);
  train::AdamW optimizer(trainable, p.adam);
  // fp16 compute: dynamic loss scaling (bf16 and fp32 need none).
  train::LossScaler scaler(dtype.dtype == at::kHalf);
  if (scaler.enabled()) spdlog::info("fp16: dynamic loss scaling from {}", scaler.scale());

  // Resume: tensors, optimizer moments, RNG, data position, counters.
  int64_t step = 0, tokens_seen = 0;
  double elapsed_before = 0;
  double train_seconds_before = 0;  // forward/backward/update seconds of earlier processes (-1: not recorded)
  double last_loss = std::nan("");
  if (resume_dir) {
    train::CheckpointContents ck = train::load_checkpoint(*resume_dir);
    check_resume_quantization(ck.state, quantization, *resume_dir);
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
    scaler.restore(ck.state.value("loss_scale", scaler.scale()), ck.state.value("loss_scale_good_steps", int64_t{0}));
    at::Generator cpu_gen = at::detail::getDefaultCPUGenerator();
    cpu_gen.set_state(ck.rng_state);
    for (const auto& [name, state] : ck.device_rng_states) {
      if (name != device.device.str())
        throw CheckpointError(resume_dir->string() + ": the run drew random numbers on " + name + ", this one runs on " +
                              device.device.str() + "; resume on the same device (--device " + name + ")");
      at::Generator gen = at::globalContext().defaultGenerator(device.device);
      gen.set_state(state);
    }
    if (ck.device_rng_states.empty() && !device.device.is_cpu())
      throw CheckpointError(resume_dir->string() + ": the run was on the CPU, this one runs on " + device.device.str() +
                            "; resume on the same device (--device cpu)");
    batches.seek({ck.state.at("data_epoch").get<int64_t>(), ck.state.at("data_batch").get<int64_t>()});
    tokens_seen = ck.state.value("tokens_seen", int64_t{0});
    elapsed_before = ck.state.value("elapsed_seconds", 0.0);
    train_seconds_before = ck.state.value("train_seconds", -1.0);
    if (ck.state.contains("loss") && ck.state["loss"].is_number()) last_loss = ck.state["loss"].get<double>();
    spdlog::info("resumed from {} at step {}/{}", resume_dir->string(), step, total_steps);
  }
  // Everything is validated: only now does the run directory appear (or an earlier run's files go).
  if (start.clear) clear_run_files(p.output);
  fs::create_directories(p.output);
  log::add_file(p.output / "train.log");
  io::write_file_atomic(p.output / "config.yaml", p.config_yaml);
  write_run_state(p.output, "training", step, total_steps);
  progress_record = {true, step, total_steps};
  const int removed = train::remove_stale_staging(p.output / "checkpoints");
  if (removed) spdlog::warn("removed {} incomplete or half-pruned checkpoint(s) left by an interrupted run", removed);

  // A run killed after its last checkpoint is finished from it: its final evaluation comes again.
  train::MetricsLog metrics(p.output / "metrics.jsonl", resume_dir ? step : -1, /*drop_evals_at_last=*/step >= total_steps);
  train::Progress progress(total_steps, p.log_every_steps, p.quiet);
  auto peak_memory = [&] { return ops::peak_memory_bytes(device.device); };

  double step_seconds_sum = 0;  // forward/backward/update time only: the throughput's denominator
  auto save = [&](int64_t at_step) {
    train::CheckpointContents ck;
    for (const auto& t : trainable) ck.trainable.emplace_back(t.name, t.tensor.detach());
    ck.optimizer = optimizer.state();
    ck.rng_state = at::detail::getDefaultCPUGenerator().get_state();
    if (!device.device.is_cpu())
      ck.device_rng_states.emplace_back(device.device.str(), at::globalContext().defaultGenerator(device.device).get_state());
    const auto pos = batches.position();
    ck.state = {{"step", at_step}, {"optimizer_steps", optimizer.step_count()}, {"data_epoch", pos.epoch},
                {"data_batch", pos.batch}, {"tokens_seen", tokens_seen},
                {"elapsed_seconds", elapsed_before + seconds_since(t_start)}, {"total_steps", total_steps},
                {"method", p.method}, {"quantization", quantization}, {"loss_scale", scaler.scale()}, {"loss_scale_good_steps", scaler.good_steps()},
                {"loss", last_loss}, {"train_seconds", train_seconds_before >= 0 ? train_seconds_before + step_seconds_sum : -1.0}};
    auto write_adapter = [&](const fs::path& staging) {
      if (!use_adapter) return;
      std::vector<peft::NamedTensor> tensors;
      for (const auto& t : trainable) tensors.push_back({t.name, t.tensor.detach()});
      peft::save_adapter(staging / "adapter", *p.adapter, tensors);
    };
    fs::path dir = train::save_checkpoint(p.output / "checkpoints", at_step, ck, write_adapter, p.checkpoint_keep);
    progress.message("checkpoint: " + dir.string());
  };

  // The loop.
  const auto t_loop = Clock::now();
  const int64_t first_step = step, first_tokens = tokens_seen;
  std::optional<EvalStats> last_eval;
  bool interrupted = false, checkpointed_last = resume_dir.has_value();
  while (step < total_steps) {
    const auto t_step = Clock::now();
    // Gradient accumulation: the loss is summed over every micro-batch's targets and divided by
    // their total, so the update equals one large batch (transformers' num_items_in_batch).
    // The micro-batches are counted first (from the examples, without building them) and then built
    // and run one at a time: only one exists at once, however many are accumulated.
    const auto [step_tokens, targets] = batches.peek_counts(p.grad_accum_steps);
    // Losses stay on the device until the step is done: one host sync per step, not per micro-batch.
    at::Tensor loss_acc = train::loss_accumulator(model.device());
    at::Tensor soft_acc, ce_acc;  // distill: the two parts, for the log
    if (distiller) soft_acc = train::loss_accumulator(model.device()), ce_acc = train::loss_accumulator(model.device());
    for (int64_t i = 0; i < p.grad_accum_steps; ++i) {
      const data::Batch host_batch = batches.next();
      if (host_batch.n_targets == 0) continue;
      const data::Batch b = data::to_device(host_batch, model.device());
      at::Tensor loss;
      if (distiller) {
        const train::DistillSums sums = distiller->batch_sums(model, host_batch, b, p.loss_chunk_rows);
        loss = sums.total / static_cast<double>(targets);
        soft_acc += sums.soft / static_cast<double>(targets);
        ce_acc += sums.ce / static_cast<double>(targets);
      } else {
        loss = train::batch_loss_sum(model, b, p.loss_chunk_rows) / static_cast<double>(targets);
      }
      (scaler.enabled() ? loss * scaler.scale() : loss).backward();
      loss_acc += loss.detach();
    }
    const bool finite = scaler.unscale_and_check(trainable);
    const double grad_norm = finite ? train::clip_grad_norm(trainable, p.max_grad_norm) : std::nan("");
    const double loss_sum = loss_acc.item<double>();
    const double lr = p.lr * train::lr_multiplier(schedule, step, warmup_steps, total_steps);
    // Diverged (fp16: inf/nan gradients with the loss scale at its floor; it skips them until then):
    // stop before the update, so that nothing of this step reaches the weights and the last
    // checkpoint stays the last good state.
    if (scaler.enabled() ? scaler.diverged(!finite)
                         : !std::isfinite(loss_sum) || (p.max_grad_norm > 0 && !std::isfinite(grad_norm))) {
      const std::optional<fs::path> last = train::latest_checkpoint(p.output / "checkpoints");
      auto number = [](double v) { return std::isnan(v) ? std::string("NaN") : std::isinf(v) ? (v > 0 ? "inf" : "-inf") : fmt::format("{:g}", v); };
      if (base_non_finite > 0)
        throw Error(fmt::format("step {}: the loss is {}: {} tensor(s) of the base model {} hold NaN or infinite values "
                                "(named in the warning above); no learning rate fixes that: repair or replace the model",
                                step + 1, number(loss_sum), base_non_finite, model_dir.string()));
      throw Error(fmt::format("step {}: the loss is {} (gradient norm {}): training diverged, this step was not applied; {} "
                              "lower train.lr (now {:g}) or raise train.warmup_steps",
                              step + 1, number(loss_sum), number(grad_norm),
                              last ? "the last good checkpoint is " + last->string() + " (continue from it with --resume after you"
                                   : "no checkpoint was written yet (start over with --force after you",
                              p.lr) + ")");
    }
    if (finite) optimizer.step(lr);
    else progress.message(fmt::format("fp16: inf/nan gradients at step {}: update skipped, loss scale {} → {}", step + 1,
                                      scaler.scale(), scaler.scale() / 2));
    scaler.update(!finite);
    optimizer.zero_grad();
    ++step;
    progress_record.step = step;
    tokens_seen += step_tokens;
    last_loss = loss_sum;
    checkpointed_last = false;

    const double run_seconds = seconds_since(t_loop);
    const double step_seconds = seconds_since(t_step);
    step_seconds_sum += step_seconds;
    const double tokens_per_second = static_cast<double>(step_tokens) / std::max(step_seconds, 1e-9);
    const double elapsed = elapsed_before + seconds_since(t_start);
    nlohmann::json record = {{"step", step}, {"epoch", static_cast<double>(step * p.grad_accum_steps) / static_cast<double>(per_epoch)},
                             {"loss", loss_sum}, {"lr", lr}, {"grad_norm", grad_norm}, {"tokens", step_tokens},
                             {"tokens_per_second", tokens_per_second}, {"peak_memory_bytes", peak_memory()},
                             {"elapsed_seconds", elapsed}};
    if (distiller) {
      record["soft_loss"] = soft_acc.item<double>();
      record["ce_loss"] = ce_acc.item<double>();
    }
    if (scaler.enabled()) {
      record["loss_scale"] = scaler.scale();
      record["skipped"] = !finite;
    }
    metrics.write(record);
    progress.update(step, loss_sum, lr, grad_norm, tokens_per_second, elapsed, run_seconds, step - first_step);

    if (val_batches && p.eval_every_steps > 0 && step % p.eval_every_steps == 0 && step < total_steps) {
      last_eval = evaluate(model, *val_batches, p.eval_max_batches, adapter, p.loss_chunk_rows);
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
    const std::string resume_command = "llmtune " + p.command + " " + (p.output / "config.yaml").string() + " --resume";
    spdlog::warn("stopped by {} after step {}/{}; checkpoint saved. Resume with: {}",
                 train::stop_signal() == SIGTERM ? "SIGTERM" : "SIGINT", step, total_steps, resume_command);
    summary = {{"interrupted", true}, {"step", step}, {"total_steps", total_steps}, {"resume_command", resume_command}};
    write_run_state(p.output, "interrupted", step, total_steps);
    return summary;
  }

  // The result: the adapter (PEFT format) or the full model (a Hugging Face directory).
  if (use_adapter) {
    std::vector<peft::NamedTensor> tensors;
    for (const auto& t : trainable) tensors.push_back({t.name, t.tensor.detach()});
    p.adapter->set_base_model(p.model);
    peft::save_adapter(p.output / "adapter", *p.adapter, tensors);
    if (auto source = trained_template_source(dataset, p.data, *tok); !source.empty())
      io::write_file_atomic(p.output / "adapter" / "chat_template.jinja", source);
    spdlog::info("adapter: {}", (p.output / "adapter").string());
  } else {
    const at::ScalarType save_dtype = io::dtype_from_config_name(model.config().torch_dtype, at::kFloat);
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    for (auto& [name, slot] : model.named_weights()) {
      // GPT-2's Conv1D linears are held (out, in) and stored (in, out), as transformers reads them.
      const bool in_out = model::stored_in_out(model.family(), name);
      tensors.emplace_back(name, (in_out ? slot->detach().t() : slot->detach()).to(at::kCPU, save_dtype).contiguous());
    }
    io::AtomicDir out(p.output / "model");
    io::save_sharded(out.staging(), tensors, uint64_t{5} << 30);
    copy_model_files(model_dir, out.staging(), save_dtype);
    if (auto source = trained_template_source(dataset, p.data, *tok); !source.empty())
      io::write_file_atomic(out.staging() / "chat_template.jinja", source);
    out.commit();
    spdlog::info("model: {} ({})", (p.output / "model").string(), dtype_name(save_dtype));
  }
  if (val_batches) {
    last_eval = evaluate(model, *val_batches, p.eval_max_batches, adapter, p.loss_chunk_rows);
    metrics.write({{"step", step}, {"eval_loss", last_eval->loss}, {"eval_perplexity", last_eval->perplexity}});
    spdlog::info("final eval: loss {:.4f}, perplexity {:.3f}", last_eval->loss, last_eval->perplexity);
  }
  // The whole run's throughput (earlier processes included, when their checkpoints recorded it).
  const double train_seconds = train_seconds_before >= 0 ? train_seconds_before + step_seconds_sum : step_seconds_sum;
  const int64_t run_tokens = train_seconds_before >= 0 ? tokens_seen : tokens_seen - first_tokens;
  const double tokens_per_second = train_seconds > 0 ? static_cast<double>(run_tokens) / train_seconds : 0.0;
  summary = {{"interrupted", false},
             {"method", p.method},
             {"steps", step},
             {"epochs", static_cast<double>(step * p.grad_accum_steps) / static_cast<double>(per_epoch)},
             {"final_loss", last_loss},
             {"eval_loss", last_eval ? nlohmann::json(last_eval->loss) : nlohmann::json()},
             {"eval_perplexity", last_eval ? nlohmann::json(last_eval->perplexity) : nlohmann::json()},
             {"trainable_parameters", n_trainable},
             {"tokens_seen", tokens_seen},
             {"tokens_per_second", tokens_per_second},
             {"peak_memory_bytes", peak_memory()},
             {"wall_seconds", elapsed_before + seconds_since(t_start)},
             {"device", device.device.str()},
             {"dtype", dtype_name(dtype.dtype)},
             {"quantization", quantization_summary(quantization, bnb.has_value(), base, dtype.dtype)},
             {"output", use_adapter ? (p.output / "adapter").string() : (p.output / "model").string()}};
  if (distiller) summary["distill"] = distiller->describe();
  io::write_file_atomic(p.output / "summary.json", summary.dump(2) + "\n");
  write_run_state(p.output, "finished", step, total_steps);
  return summary;
}

nlohmann::json run_finetune(const FinetuneParams& p) {
  RunProgress progress;
  try {
    return run_finetune_impl(p, progress);
  } catch (const std::exception& e) {
    if (progress.directory_created) {
      const std::string what = e.what();
      try {
        write_run_state(p.output, "failed", progress.step, progress.total_steps, what.substr(0, what.find('\n')));
      } catch (const std::exception&) {
        // The error being reported matters more than the state file.
      }
    }
    throw;
  }
}

}  // namespace llmtune::pipelines
