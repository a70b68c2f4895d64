// The teacher side of a distill run, used by finetune's loop: the teacher loaded (or its top-k cache
// opened) and checked against the student (tokenizers, vocabulary widths, cache hashes), and each
// micro-batch's distillation sums.
#pragma once

#include <c10/core/Device.h>

#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>

#include "llmtune/data/batcher.h"
#include "llmtune/model/causal_lm.h"
#include "llmtune/pipelines/distill.h"
#include "llmtune/pipelines/load.h"
#include "llmtune/tokenizer/tokenizer.h"

namespace llmtune::pipelines {

class TeacherCache;

// The teacher's weights in bytes as it will be held (its dtype, or 4/8 bits), checked against the
// memory of its device (ConfigError with the estimate when it cannot fit); 0 without a teacher.
double teacher_memory_bytes(const DistillParams& params, at::ScalarType student_dtype, c10::Device teacher_device);

class Distiller {
 public:
  // Checks the teacher's memory estimate, then loads it (or opens the cache and checks its hashes
  // against `train` and the student's tokenizer). `student_vocab`: the student's logit width.
  Distiller(const DistillParams& params, const tokenizer::Tokenizer& student_tokenizer, int64_t student_vocab,
            const std::vector<data::Example>& train, c10::Device student_device, at::ScalarType student_dtype,
            bool load_teacher_even_with_cache = false);
  ~Distiller();

  // One micro-batch (`host` as the batcher made it, `batch` on the student's device): the student's
  // forward, the teacher's rows (online or cached), and the chunked sums. chunk_rows < 0: through
  // the full logits.
  train::DistillSums batch_sums(const model::CausalLM& student, const data::Batch& host, const data::Batch& batch,
                                int64_t chunk_rows) const;

  // The teacher's top-k rows of one batch (for the cache), on the host.
  train::TeacherRows teacher_topk_rows(const data::Batch& batch, int64_t k) const;

  const train::DistillLossOptions& loss() const { return loss_; }
  nlohmann::json describe() const;  // the summary's "distill"

  // FNV-1a hashes a cache is checked against.
  static std::string data_hash(const std::vector<data::Example>& train);
  static std::string tokenizer_hash(const tokenizer::Tokenizer& tok);
  std::string teacher_hash() const { return teacher_hash_; }

 private:
  at::Tensor teacher_hidden_rows(const data::Batch& host) const;
  at::Tensor teacher_logit_rows(const at::Tensor& hidden_rows, int64_t start, int64_t rows) const;

  DistillParams params_;
  train::DistillLossOptions loss_;
  c10::Device student_device_;
  std::optional<LoadedModel> teacher_;
  std::unique_ptr<TeacherCache> cache_;
  std::string teacher_hash_;
  int64_t vocab_cut_ = 0;
};

}  // namespace llmtune::pipelines
