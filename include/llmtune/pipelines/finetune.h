// `llmtune finetune`: LoRA / rsLoRA / DoRA (over a 16-bit base, or a 4-bit one: QLoRA) or full
// fine-tuning of a causal LM on a dataset, with a run directory (config.yaml, adapter/ or model/,
// checkpoints/step-N/, metrics.jsonl, summary.json, train.log) and lossless resume.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "llmtune/data/dataset.h"
#include "llmtune/pipelines/distill.h"
#include "llmtune/peft/method.h"
#include "llmtune/train/optimizer.h"

namespace llmtune::pipelines {

struct FinetuneParams {
  std::string command = "finetune";     // finetune | distill (messages, the resume command)
  std::shared_ptr<const DistillParams> distill;  // distill: the teacher and the losses; null for finetune
  std::string model;                    // model.path: directory or Hugging Face cache repo id
  std::string model_init = "pretrained";  // pretrained | random (config.json's shape, transformers' init)
  // auto | none | nf4 | fp4: the frozen base quantized while it loads. auto: nf4 with method qlora,
  // none otherwise; a bitsandbytes checkpoint loads as stored (auto or none only).
  std::string quantize = "auto";
  bool double_quant = true;
  int64_t quant_blocksize = 64;
  std::filesystem::path output;         // the run directory
  std::string method = "lora";          // an adapter method's name (lora, ...), qlora or full
  peft::AdapterMethodPtr adapter;       // the adapter method and its settings (qlora: lora's); null for full

  std::vector<std::string> freeze;      // method full: regexes of weight names kept frozen
  data::DataParams data;
  bool packing = true;
  int64_t batch_size = 4;
  int64_t grad_accum_steps = 1;
  int64_t epochs = 1;
  int64_t max_steps = -1;               // > 0 overrides epochs
  double lr = 2e-4;
  std::string lr_scheduler = "cosine";  // constant | linear | cosine
  int64_t warmup_steps = 0;
  double warmup_ratio = 0.0;            // used when warmup_steps is 0
  train::AdamWOptions adam;
  double max_grad_norm = 1.0;           // <= 0: no clipping
  bool gradient_checkpointing = false;
  // Rows of the LM head + loss computed at a time (0: auto, at most 64 MiB of fp32 logits; -1: the
  // unchunked reference through the full logits).
  int64_t loss_chunk_rows = 0;
  int64_t eval_every_steps = 0;         // 0: only at the end (when there is validation data)
  int64_t eval_max_batches = 0;         // 0: all
  int64_t checkpoint_every_steps = 0;   // 0: only at the end
  int64_t checkpoint_keep = 2;
  int64_t log_every_steps = 10;
  uint64_t seed = 42;
  std::string device = "auto";
  std::string dtype = "auto";
  bool resume = false;
  bool force = false;                   // start over: remove an earlier run's files from `output` first
  std::filesystem::path resume_from;    // empty: the latest checkpoint of `output`
  std::string config_yaml;              // the resolved config, saved as config.yaml
  bool quiet = false;                   // no progress output (--json)
};

// Runs the job; returns summary.json's content. When SIGINT/SIGTERM arrives, the current step is
// finished and checkpointed, and the summary has "interrupted": true and "resume_command".
nlohmann::json run_finetune(const FinetuneParams& params);

}  // namespace llmtune::pipelines
