// The teacher cache on disk: per trained position of the training data (numbered in example order,
// data::Batch::target_rows), the teacher's top-k log-probabilities at the run's temperature, their
// token ids and the log of the remaining mass, in shards of safetensors (`logprobs` (n, k) F32,
// `ids` (n, k) I32, `rest` (n,) F32) with teacher_cache.json describing them and the hashes of the
// data, tokenizer and teacher they were made from.
#pragma once

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "llmtune/io/safetensors.h"
#include "llmtune/train/distill_loss.h"

namespace llmtune::pipelines {

inline constexpr const char* kTeacherCacheIndex = "teacher_cache.json";

class TeacherCache {
 public:
  // Opens `dir` and checks it against what the run expects (`expected`: top_k, temperature, vocab,
  // rows, data_hash, tokenizer_hash, and teacher_hash when the teacher is named); CheckpointError
  // naming what differs otherwise.
  TeacherCache(const std::filesystem::path& dir, const nlohmann::json& expected);

  // The rows (int64 cache row numbers) on `device`.
  train::TeacherRows rows(const at::Tensor& row_numbers, c10::Device device) const;
  const nlohmann::json& index() const { return index_; }

 private:
  struct Shard {
    int64_t first = 0, rows = 0;
    std::shared_ptr<io::SafetensorsFile> file;
  };
  std::filesystem::path dir_;
  nlohmann::json index_;
  std::vector<Shard> shards_;
  int64_t k_ = 0;
};

// Writes shards as rows arrive in order, then the index; the directory appears only when complete.
class TeacherCacheWriter {
 public:
  TeacherCacheWriter(const std::filesystem::path& dir, nlohmann::json index, int64_t total_rows, int64_t k);
  ~TeacherCacheWriter();
  // rows first .. first + n - 1 (contiguous, following the previous call).
  void append(int64_t first, const train::TeacherRows& rows);
  void commit();

 private:
  void flush();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace llmtune::pipelines
