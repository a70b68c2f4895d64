// Reading and writing the teacher cache (teacher_cache.h). Shards are memory-mapped; a batch's rows
// are gathered from whichever shards hold them.
#include "teacher_cache.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/nonzero.h>
#include <ATen/ops/zeros.h>
#include <fmt/format.h>

#include <optional>

#include "llmtune/io/atomic_file.h"
#include "llmtune/io/read_file.h"
#include "llmtune/util/error.h"

namespace llmtune::pipelines {
namespace fs = std::filesystem;
namespace {

constexpr const char* kFormat = "llmtune-teacher-cache";
constexpr int64_t kShardBytes = int64_t{1} << 30;

std::string describe(const nlohmann::json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

}  // namespace

TeacherCache::TeacherCache(const fs::path& dir, const nlohmann::json& expected) : dir_(dir) {
  const fs::path index_path = dir / kTeacherCacheIndex;
  if (!fs::exists(index_path))
    throw CheckpointError("teacher.cache: " + dir.string() + " holds no " + kTeacherCacheIndex +
                          " (build it with: llmtune distill CONFIG --cache-teacher " + dir.string() + ")");
  index_ = io::read_json_file<CheckpointError, nlohmann::json>(index_path, "the teacher cache index");
  if (!index_.is_object() || index_.value("format", std::string()) != kFormat || !index_.contains("shards") ||
      !index_["shards"].is_array())
    throw CheckpointError(index_path.string() + ": not a teacher cache written by llmtune distill --cache-teacher");
  // What was built for other data, another tokenizer or teacher, or other loss settings is stale.
  const std::pair<const char*, const char*> checks[] = {
      {"data_hash", "other training data (rows, template or max_seq_len changed)"},
      {"tokenizer_hash", "another tokenizer"},
      {"teacher_hash", "another teacher (weights, adapter, dtype or quantization)"},
      {"temperature", "another distill.temperature"},
      {"top_k", "another distill.top_k"},
      {"vocab", "another vocabulary width (distill.vocab)"},
      {"rows", "another number of trained positions"}};
  for (const auto& [key, what] : checks) {
    if (!expected.contains(key)) continue;
    if (!index_.contains(key) || index_[key] != expected[key])
      throw CheckpointError(fmt::format("teacher.cache: {} was built for {} ({} {} there, {} here): rebuild it with "
                                        "llmtune distill CONFIG --cache-teacher DIR", dir.string(), what, key,
                                        index_.contains(key) ? describe(index_[key]) : "missing", describe(expected[key])));
  }
  k_ = index_.value("top_k", int64_t{0});
  int64_t next = 0;
  for (const auto& s : index_["shards"]) {
    Shard shard;
    shard.first = s.value("first_row", int64_t{-1});
    shard.rows = s.value("rows", int64_t{-1});
    const std::string file = s.value("file", std::string());
    if (shard.first != next || shard.rows <= 0 || file.empty() || file.find('/') != std::string::npos)
      throw CheckpointError(index_path.string() + ": shard list is broken at row " + std::to_string(next));
    shard.file = io::SafetensorsFile::open(dir / file);
    for (const char* name : {"logprobs", "ids", "rest"})
      if (!shard.file->contains(name) || shard.file->info(name).shape.empty() || shard.file->info(name).shape[0] != shard.rows)
        throw CheckpointError((dir / file).string() + ": tensor '" + name + "' is missing or has another row count");
    next += shard.rows;
    shards_.push_back(std::move(shard));
  }
  if (next != index_.value("rows", int64_t{-1}))
    throw CheckpointError(index_path.string() + ": the shards hold " + std::to_string(next) + " rows, the index says " +
                          describe(index_.value("rows", nlohmann::json())));
}

train::TeacherRows TeacherCache::rows(const at::Tensor& row_numbers, c10::Device device) const {
  const at::Tensor r = row_numbers.to(at::kCPU, at::kLong);
  const int64_t n = r.size(0);
  at::Tensor logprobs = at::empty({n, k_}, at::kFloat), ids = at::empty({n, k_}, at::kLong), rest = at::empty({n}, at::kFloat);
  int64_t found = 0;
  for (const Shard& s : shards_) {
    const at::Tensor where = (r >= s.first).logical_and(r < s.first + s.rows).nonzero().squeeze(1);
    if (where.numel() == 0) continue;
    const at::Tensor local = r.index_select(0, where) - s.first;
    logprobs.index_copy_(0, where, s.file->tensor("logprobs").index_select(0, local).to(at::kFloat));
    ids.index_copy_(0, where, s.file->tensor("ids").index_select(0, local).to(at::kLong));
    rest.index_copy_(0, where, s.file->tensor("rest").index_select(0, local).to(at::kFloat));
    found += where.numel();
  }
  if (found != n) throw CheckpointError(dir_.string() + ": the teacher cache lacks rows this batch needs (is it complete?)");
  return {.logits = {}, .topk_logprobs = logprobs.to(device), .topk_ids = ids.to(device), .rest_logprob = rest.to(device)};
}

struct TeacherCacheWriter::Impl {
  std::optional<io::AtomicDir> out;
  nlohmann::json index;
  int64_t total = 0, k = 0, shard_rows = 0, written = 0, buffered_first = 0, buffered = 0;
  at::Tensor logprobs, ids, rest;  // the shard being filled
  int n_shards = 0;
};

TeacherCacheWriter::TeacherCacheWriter(const fs::path& dir, nlohmann::json index, int64_t total_rows, int64_t k)
    : impl_(std::make_unique<Impl>()) {
  impl_->out.emplace(dir);
  impl_->index = std::move(index);
  impl_->index["format"] = kFormat;
  impl_->index["rows"] = total_rows;
  impl_->index["shards"] = nlohmann::json::array();
  impl_->total = total_rows;
  impl_->k = k;
  impl_->shard_rows = std::max<int64_t>(1, kShardBytes / (8 * k + 4));
  impl_->n_shards = static_cast<int>((total_rows + impl_->shard_rows - 1) / impl_->shard_rows);
}

TeacherCacheWriter::~TeacherCacheWriter() = default;

void TeacherCacheWriter::append(int64_t first, const train::TeacherRows& rows) {
  Impl& m = *impl_;
  TORCH_CHECK(first == m.written + m.buffered, "teacher cache rows must arrive in order: got ", first, ", expected ",
              m.written + m.buffered);
  const int64_t n = rows.topk_logprobs.size(0);
  for (int64_t done = 0; done < n;) {
    if (!m.logprobs.defined()) {
      const int64_t cap = std::min(m.shard_rows, m.total - m.written);
      m.logprobs = at::empty({cap, m.k}, at::kFloat);
      m.ids = at::empty({cap, m.k}, at::kInt);
      m.rest = at::empty({cap}, at::kFloat);
      m.buffered_first = m.written;
      m.buffered = 0;
    }
    const int64_t take = std::min(n - done, m.logprobs.size(0) - m.buffered);
    m.logprobs.narrow(0, m.buffered, take).copy_(rows.topk_logprobs.narrow(0, done, take));
    m.ids.narrow(0, m.buffered, take).copy_(rows.topk_ids.narrow(0, done, take));
    m.rest.narrow(0, m.buffered, take).copy_(rows.rest_logprob.narrow(0, done, take));
    m.buffered += take;
    done += take;
    if (m.buffered == m.logprobs.size(0)) flush();
  }
}

void TeacherCacheWriter::flush() {
  Impl& m = *impl_;
  if (!m.logprobs.defined() || m.buffered == 0) return;
  const int shard = static_cast<int>(m.index["shards"].size()) + 1;
  const std::string file = fmt::format("teacher-{:05d}-of-{:05d}.safetensors", shard, m.n_shards);
  io::save_safetensors(m.out->staging() / file, {{"logprobs", m.logprobs.narrow(0, 0, m.buffered)},
                                                 {"ids", m.ids.narrow(0, 0, m.buffered)},
                                                 {"rest", m.rest.narrow(0, 0, m.buffered)}});
  m.index["shards"].push_back({{"file", file}, {"first_row", m.buffered_first}, {"rows", m.buffered}});
  m.written += m.buffered;
  m.logprobs = m.ids = m.rest = at::Tensor();
  m.buffered = 0;
}

void TeacherCacheWriter::commit() {
  flush();
  Impl& m = *impl_;
  if (m.written != m.total)
    throw Error(fmt::format("teacher cache: {} of {} rows written", m.written, m.total));
  io::write_file_atomic(m.out->staging() / kTeacherCacheIndex, m.index.dump(2) + "\n");
  m.out->commit();
}

}  // namespace llmtune::pipelines
