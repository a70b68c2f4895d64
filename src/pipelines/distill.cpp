// The teacher side of `llmtune distill` (distiller.h) and the teacher cache's construction.
#include "distiller.h"

#include <ATen/core/grad_mode.h>
#include <ATen/ops/cat.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <fstream>

#include "llmtune/io/gguf.h"
#include "llmtune/io/hf_dir.h"
#include "llmtune/model/config.h"
#include "llmtune/model/family.h"
#include "llmtune/ops/linear_cross_entropy.h"
#include "llmtune/ops/runtime.h"
#include "llmtune/pipelines/finetune.h"
#include "llmtune/quant/bnb_checkpoint.h"
#include "llmtune/util/device.h"
#include "llmtune/util/error.h"
#include "llmtune/util/timing.h"
#include "teacher_cache.h"

namespace llmtune::pipelines {
namespace fs = std::filesystem;
namespace {

// FNV-1a, 64 bits: enough to tell a stale cache from a current one (not a security check).
struct Fnv {
  uint64_t h = 0xcbf29ce484222325ull;
  void add(const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  }
  void add(std::string_view s) {
    add(s.data(), s.size());
    add("\0", 1);
  }
  std::string hex() const { return fmt::format("{:016x}", h); }
};

// A file's name, size and every byte (words of 8 at a time: a 15 GB teacher hashes in seconds), so
// that a teacher fine-tuned anywhere in its weights is another teacher.
void add_file(Fnv& f, const fs::path& path) {
  if (!fs::is_regular_file(path)) return;
  f.add(path.filename().string());
  const uint64_t size = fs::file_size(path);
  f.add(&size, sizeof size);
  std::ifstream in(path, std::ios::binary);
  std::vector<uint64_t> buffer(uint64_t{1} << 17);  // 1 MiB
  while (in) {
    in.read(reinterpret_cast<char*>(buffer.data()), static_cast<std::streamsize>(buffer.size() * sizeof(uint64_t)));
    const auto got = static_cast<size_t>(in.gcount());
    for (size_t i = 0; i < got / 8; ++i) f.h = (f.h ^ buffer[i]) * 0x100000001b3ull;
    f.add(reinterpret_cast<const char*>(buffer.data()) + got / 8 * 8, got % 8);
  }
}

void add_model_files(Fnv& f, const fs::path& path) {
  if (fs::is_regular_file(path)) return add_file(f, path);
  if (!fs::is_directory(path)) return;
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(path)) {
    const std::string ext = e.path().extension().string();
    if (e.path().filename() == "config.json" || e.path().filename() == "adapter_config.json" || ext == ".safetensors" ||
        ext == ".gguf")
      files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  for (const auto& file : files) add_file(f, file);
}

std::string resolve_teacher(const std::string& spec) {
  return spec.ends_with(".gguf") ? spec : io::resolve_model_dir(spec).string();
}

// Parameters of the teacher, from its config.json or its GGUF tensor table, without loading it.
double teacher_parameters(const std::string& path) {
  if (path.ends_with(".gguf")) {
    double n = 0;
    const auto file = io::GgufFile::open(path);
    for (const auto& t : file->tensors()) n += static_cast<double>(t.n_elements());
    return n;
  }
  const model::ModelConfig c = model::ModelConfig::load(path);
  return model::parameter_count(model::family_for(c.model_type, path), c, !c.tie_word_embeddings);
}

std::string teacher_dtype_name(const DistillParams& p, at::ScalarType student_dtype) {
  return p.teacher_dtype == "auto" ? dtype_name(student_dtype) : p.teacher_dtype;
}

}  // namespace

double teacher_memory_bytes(const DistillParams& p, at::ScalarType student_dtype, c10::Device teacher_device) {
  if (p.teacher.empty()) return 0;
  const std::string path = resolve_teacher(p.teacher);
  const double params = teacher_parameters(path);
  double per_weight = static_cast<double>(c10::elementSize(choose_dtype(teacher_dtype_name(p, student_dtype), teacher_device).dtype));
  const auto bnb = path.ends_with(".gguf") ? std::nullopt : quant::read_bnb_config(path);
  const std::string& quantize = p.teacher_quantize.type;
  if (quantize == "nf4" || quantize == "fp4" || (bnb && bnb->load_in_4bit)) per_weight = 0.5;
  else if (quantize == "int8" || bnb) per_weight = 1.0;
  const double bytes = params * per_weight;
  ops::check_fits(bytes, teacher_device,
                  fmt::format("the teacher {} ({:.3g} parameters, {:.3g} GB as loaded)", path, params, bytes / 1e9),
                  "choose a smaller teacher, load it in 4 bits (teacher.quantize: nf4), put it on another device "
                  "(teacher.device), or build its cache once on a larger machine (--cache-teacher, then teacher.cache)");
  return bytes;
}

std::string Distiller::data_hash(const std::vector<data::Example>& train) {
  Fnv f;
  for (const auto& e : train) {
    const uint64_t n = e.input_ids.size();
    f.add(&n, sizeof n);
    f.add(e.input_ids.data(), n * sizeof(int32_t));
    f.add(e.labels.data(), e.labels.size() * sizeof(int32_t));
  }
  return f.hex();
}

std::string Distiller::tokenizer_hash(const tokenizer::Tokenizer& tok) {
  Fnv f;
  for (int32_t id = 0; id < tok.vocab_size(); ++id) f.add(tok.id_to_piece(id));
  return f.hex();
}

Distiller::Distiller(const DistillParams& p, const tokenizer::Tokenizer& student_tok, int64_t student_vocab,
                     const std::vector<data::Example>& train, c10::Device student_device, at::ScalarType student_dtype,
                     bool load_teacher_even_with_cache)
    : params_(p), loss_(p.loss), student_device_(student_device) {
  const std::string dtype = teacher_dtype_name(p, student_dtype);
  // The teacher's fingerprint checks a cache against it: needed when a cache is built or read only.
  if (!p.teacher.empty() && (!p.cache.empty() || load_teacher_even_with_cache)) {
    Fnv f;
    f.add(dtype);
    f.add(p.teacher_quantize.type);
    // (Added only when set: a cache built before these options existed keeps its fingerprint.)
    if (p.teacher_quantize.double_quant || p.teacher_quantize.blocksize != 64)
      f.add(fmt::format("double_quant={} blocksize={}", p.teacher_quantize.double_quant, p.teacher_quantize.blocksize));
    add_model_files(f, resolve_teacher(p.teacher));
    if (!p.teacher_adapter.empty()) add_model_files(f, p.teacher_adapter);
    teacher_hash_ = f.hex();
  }
  if (!p.cache.empty() && !load_teacher_even_with_cache) {
    nlohmann::json expected = {{"data_hash", data_hash(train)}, {"tokenizer_hash", tokenizer_hash(student_tok)},
                               {"temperature", p.loss.temperature}};
    if (!teacher_hash_.empty()) expected["teacher_hash"] = teacher_hash_;
    cache_ = std::make_unique<TeacherCache>(p.cache, expected);
    const int64_t vocab = cache_->index().value("vocab", int64_t{0});
    const int64_t k = cache_->index().value("top_k", int64_t{0});
    if (k != std::min(p.top_k, vocab))
      throw CheckpointError(fmt::format("teacher.cache: {} keeps the top {} tokens, distill.top_k is {}: rebuild it, or set "
                                        "distill.top_k: {}", p.cache.string(), k, p.top_k, k));
    if (vocab > student_vocab || (vocab < student_vocab && !p.truncate_vocab))
      throw ConfigError(fmt::format("teacher.cache: {} compares {} logits, the student has {}{}", p.cache.string(), vocab,
                                    student_vocab, vocab < student_vocab ? ": set distill.vocab: truncate" : ""));
    loss_.vocab = vocab == student_vocab ? 0 : vocab;
    spdlog::info("teacher: the cache {} (top {} of {} logits, {} positions, built from {})", p.cache.string(), k, vocab,
                 cache_->index().value("rows", int64_t{0}), cache_->index().value("teacher", std::string("?")));
    return;
  }
  if (p.teacher.empty())
    throw ConfigError("teacher.path is not set: name the teacher model (--teacher), or a cache of it (teacher.cache)");
  const std::string device = p.teacher_device == "auto" ? student_device.str() : p.teacher_device;
  teacher_memory_bytes(p, student_dtype, choose_device(device).device);
  teacher_.emplace(load_model("distill", p.teacher, p.teacher_adapter, device, dtype, false, p.teacher_quantize));
  const tokenizer::Tokenizer& tt = *teacher_->tokenizer;
  const int64_t ns = student_tok.vocab_size(), nt = tt.vocab_size();
  for (int32_t id = 0; id < std::min(ns, nt); ++id)
    if (student_tok.id_to_piece(id) != tt.id_to_piece(id))
      throw ConfigError(fmt::format("the teacher's tokenizer ({}) and the student's differ: token {} is '{}' in the teacher, "
                                    "'{}' in the student; distillation compares the two models token by token, so both "
                                    "need the same tokenizer (pick a teacher and student of one family)",
                                    p.teacher, id, tt.id_to_piece(id), student_tok.id_to_piece(id)));
  const int64_t vt = teacher_->model->config().vocab_size;
  if (ns != nt || vt != student_vocab) {
    int64_t shared = std::min(vt, student_vocab);
    if (ns != nt) shared = std::min<int64_t>(shared, std::min(ns, nt));
    if (!p.truncate_vocab)
      throw ConfigError(fmt::format("the teacher's vocabulary ({} tokens, {} logits) and the student's ({} tokens, {} logits) "
                                    "differ in size, and the token ids they share mean the same tokens: set distill.vocab: "
                                    "truncate to compare the first {} logits only", nt, vt, ns, student_vocab, shared));
    loss_.vocab = shared;
    vocab_cut_ = std::max(vt, student_vocab) - shared;
    spdlog::info("distill.vocab truncate: comparing the first {} logits; {} teacher and {} student rows cut", shared,
                 vt - shared, student_vocab - shared);
  }
  data::check_token_ids(train, vt, p.teacher);
  spdlog::info("teacher: {} on {} ({}), {} layers, vocabulary {}", teacher_->dir.string(), teacher_->device.device.str(),
               dtype_name(teacher_->dtype.dtype), teacher_->model->config().n_layers, vt);
}

Distiller::~Distiller() = default;

at::Tensor Distiller::teacher_hidden_rows(const data::Batch& host) const {
  at::NoGradGuard no_grad;
  const model::CausalLM& t = *teacher_->model;
  const data::Batch b = data::to_device(host, t.device());
  const at::Tensor hidden = t.forward_hidden(b.input_ids, {.positions = b.positions, .attention_mask = b.attention_mask, .packed = b.packed});
  return hidden.reshape({-1, hidden.size(2)}).index_select(0, b.target_index);
}

at::Tensor Distiller::teacher_logit_rows(const at::Tensor& hidden_rows, int64_t start, int64_t rows) const {
  at::NoGradGuard no_grad;
  return teacher_->model->logits(hidden_rows.narrow(0, start, rows)).to(student_device_);
}

train::DistillSums Distiller::batch_sums(const model::CausalLM& student, const data::Batch& host, const data::Batch& b,
                                         int64_t chunk_rows) const {
  const at::Tensor hidden = student.forward_hidden(b.input_ids, {.positions = b.positions, .attention_mask = b.attention_mask, .packed = b.packed});
  const at::Tensor rows = hidden.reshape({-1, hidden.size(2)}).index_select(0, b.target_index);
  train::TeacherChunk chunk;
  train::TeacherRows cached;
  at::Tensor teacher_rows;
  if (cache_) {
    cached = cache_->rows(host.target_rows, student_device_);
    chunk = [&](int64_t start, int64_t n) {
      return train::TeacherRows{.logits = {}, .topk_logprobs = cached.topk_logprobs.narrow(0, start, n),
                                .topk_ids = cached.topk_ids.narrow(0, start, n), .rest_logprob = cached.rest_logprob.narrow(0, start, n)};
    };
  } else {
    teacher_rows = teacher_hidden_rows(host);
    chunk = [&](int64_t start, int64_t n) { return train::TeacherRows{.logits = teacher_logit_rows(teacher_rows, start, n)}; };
  }
  const at::Tensor* head = student.plain_head_weight();
  if (chunk_rows >= 0 && head) return train::linear_distill_sums(rows, *head, b.target_ids, chunk, loss_, chunk_rows);
  return train::distill_sums(student.logits(rows), chunk(0, rows.size(0)), b.target_ids, loss_);
}

train::TeacherRows Distiller::teacher_topk_rows(const data::Batch& host, int64_t k) const {
  const at::Tensor rows = teacher_hidden_rows(host);
  const int64_t step = ops::auto_chunk_rows(teacher_->model->config().vocab_size);
  std::vector<at::Tensor> lp, ids, rest;
  for (int64_t start = 0; start < rows.size(0); start += step) {
    const int64_t n = std::min(step, rows.size(0) - start);
    at::NoGradGuard no_grad;
    const train::TeacherRows r = train::teacher_topk(teacher_->model->logits(rows.narrow(0, start, n)), k, loss_);
    lp.push_back(r.topk_logprobs.cpu());
    ids.push_back(r.topk_ids.cpu());
    rest.push_back(r.rest_logprob.cpu());
  }
  return {.logits = {}, .topk_logprobs = at::cat(lp), .topk_ids = at::cat(ids), .rest_logprob = at::cat(rest)};
}

nlohmann::json Distiller::describe() const {
  const char* names[] = {"forward_kl", "reverse_kl", "jsd"};
  nlohmann::json j = {{"loss", names[static_cast<int>(loss_.divergence)]}, {"temperature", loss_.temperature},
                      {"kd_ratio", loss_.kd_ratio}, {"teacher", params_.teacher}, {"vocab_rows_cut", vocab_cut_}};
  if (loss_.divergence == train::Divergence::JSD) j["beta"] = loss_.beta;
  if (cache_) j["teacher_cache"] = params_.cache.string();
  return j;
}

nlohmann::json build_teacher_cache(const FinetuneParams& p, const fs::path& out) {
  const auto t_start = SteadyClock::now();
  const fs::path model_dir = io::resolve_model_dir(p.model);
  auto tok = tokenizer::load_tokenizer(model_dir);
  const model::ModelConfig config = model::ModelConfig::load(model_dir);
  const data::Dataset dataset = data::load_dataset(p.data, *tok);
  data::check_token_ids(dataset.train, config.vocab_size, p.data.path);
  const DeviceChoice device = choose_device(p.device);
  const DtypeChoice dtype = choose_dtype(p.dtype, device.device);
  const Distiller distiller(*p.distill, *tok, config.vocab_size, dataset.train, device.device, dtype.dtype, true);
  const int32_t pad_id = tok->pad_id.value_or(tok->eos_id.value_or(0));
  data::Batcher batches(dataset.train, {.batch_size = p.batch_size, .max_seq_len = p.data.max_seq_len, .packing = false,
                                        .pad_to_multiple_of = 8, .pad_id = pad_id, .shuffle = false, .seed = p.seed});
  const int64_t vocab = distiller.loss().vocab > 0 ? distiller.loss().vocab : config.vocab_size;
  const int64_t k = std::min(p.distill->top_k, vocab);
  const nlohmann::json index = {{"top_k", k}, {"temperature", p.distill->loss.temperature}, {"vocab", vocab},
                                {"data_hash", Distiller::data_hash(dataset.train)}, {"tokenizer_hash", Distiller::tokenizer_hash(*tok)},
                                {"teacher_hash", distiller.teacher_hash()}, {"teacher", p.distill->teacher},
                                {"teacher_adapter", p.distill->teacher_adapter}, {"data", p.data.path.string()}};
  const int64_t total = batches.total_targets();
  spdlog::info("teacher cache: {} trained positions of {} examples, top {} of {} logits (about {:.3g} GB) -> {}", total,
               dataset.train.size(), k, vocab, static_cast<double>(total) * static_cast<double>(8 * k + 4) / 1e9, out.string());
  TeacherCacheWriter writer(out, index, total, k);
  for (int64_t i = 0; i < batches.batches_per_epoch(); ++i) {
    const data::Batch host = batches.next();
    if (host.n_targets == 0) continue;
    writer.append(host.target_rows[0].item<int64_t>(), distiller.teacher_topk_rows(host, k));
    if ((i + 1) % 50 == 0) spdlog::info("teacher cache: batch {}/{}", i + 1, batches.batches_per_epoch());
  }
  writer.commit();
  const double seconds = seconds_since(t_start);
  spdlog::info("teacher cache: {} rows in {:.1f} s -> {}", total, seconds, out.string());
  return {{"output", out.string()}, {"rows", total}, {"top_k", k}, {"vocab", vocab}, {"wall_seconds", seconds},
          {"examples", dataset.train.size()}};
}

}  // namespace llmtune::pipelines
