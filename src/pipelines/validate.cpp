// `llmtune validate` for finetune and distill, top to bottom as the run meets things: the run
// directory, the model directory (config, weights from the safetensors headers, quantization), the
// tokenizer, the data, a distillation teacher, the memory estimate, the steps. Each check turns what
// the run would throw into one problem line and goes on; the run's own warnings are collected too.
#include "llmtune/pipelines/validate.h"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <regex>

#include "llmtune/io/hf_dir.h"
#include "llmtune/model/family.h"
#include "llmtune/ops/runtime.h"
#include "llmtune/quant/bnb_checkpoint.h"
#include "llmtune/quant/gptq_linear.h"
#include "llmtune/util/device.h"
#include "llmtune/util/error.h"
#include "distiller.h"
#include "finetune_memory.h"
#include "run_directory.h"
#include "validate_parts.h"

namespace llmtune::pipelines {
namespace fs = std::filesystem;

nlohmann::ordered_json tokenizer_section(const tokenizer::Tokenizer& tok) {
  auto piece = [&](const std::optional<int32_t>& id) {
    return id ? nlohmann::ordered_json(tok.id_to_piece(*id)) : nlohmann::ordered_json(nullptr);
  };
  return {{"vocab_size", tok.vocab_size()}, {"bos", piece(tok.bos_id)}, {"eos", piece(tok.eos_id)},
          {"pad", piece(tok.pad_id)}, {"chat_template", !tok.chat_template.empty()}};
}

namespace {

// The teacher as the run would meet it: found, its weights counted against its device, its
// tokenizer the student's (token by token, as Distiller checks), or its cache present.
void check_teacher(const DistillParams& d, const tokenizer::Tokenizer* student_tok, const c10::Device& device,
                   at::ScalarType dtype, ValidateReport& report) {
  nlohmann::ordered_json section = {{"path", d.teacher}, {"cache", d.cache.string()}};
  if (d.teacher.empty() && d.cache.empty()) {
    report.problems.push_back("teacher.path: not set, and no teacher.cache: distill needs one of them");
  } else if (!d.cache.empty()) {
    if (!fs::exists(d.cache / "teacher_cache.json"))
      report.problems.push_back("teacher.cache: " + d.cache.string() +
                                " holds no teacher_cache.json: build it with llmtune distill --cache-teacher DIR");
  } else {
    const bool found = attempt(report, [&] {
      const c10::Device teacher_device = d.teacher_device == "auto" ? device : choose_device(d.teacher_device).device;
      section["bytes"] = teacher_memory_bytes(d, dtype, teacher_device);
    });
    if (found && !d.teacher.ends_with(".gguf") && student_tok) {
      attempt(report, [&] {
        const fs::path dir = io::resolve_model_dir(d.teacher);
        auto tt = tokenizer::load_tokenizer(dir);
        section["vocab_size"] = tt->vocab_size();
        const int32_t shared = std::min(tt->vocab_size(), student_tok->vocab_size());
        for (int32_t id = 0; id < shared; ++id)
          if (tt->id_to_piece(id) != student_tok->id_to_piece(id))
            throw ConfigError(fmt::format("teacher.path: the teacher's tokenizer ({}) and the student's differ at token {} ('{}' vs "
                                          "'{}'): distillation needs the same tokenizer; pick a teacher and student of one family",
                                          d.teacher, id, tt->id_to_piece(id), student_tok->id_to_piece(id)));
        if (tt->vocab_size() != student_tok->vocab_size() && !d.truncate_vocab)
          throw ConfigError(fmt::format("teacher.path: the teacher's vocabulary ({} tokens) and the student's ({}) differ in size: "
                                        "set distill.vocab: truncate to compare the first {} logits only",
                                        tt->vocab_size(), student_tok->vocab_size(), shared));
      });
    }
  }
  report.sections["teacher"] = section;
}

// What the model directory gave, for the checks after it.
struct ModelFacts {
  std::optional<fs::path> dir;
  std::optional<model::ModelConfig> config;
  bool quantized_base = false;  // the frozen linears held in 4 (or 8) bits
};

// The model section: the directory found, config.json for a known family, the weights against it
// (or none read: random init), the base's quantization as the run would decide it, full.freeze.
ModelFacts check_model(const FinetuneParams& p, ValidateReport& report) {
  nlohmann::ordered_json model = {{"path", p.model}, {"init", p.model_init}};
  ModelFacts facts;
  std::optional<fs::path>& model_dir = facts.dir;
  std::optional<model::ModelConfig>& config = facts.config;
  if (!p.model.empty()) attempt(report, [&] { model_dir = io::resolve_model_dir(p.model); });
  if (model_dir) {
    model["dir"] = model_dir->string();
    attempt(report, [&] { config = model::ModelConfig::load(*model_dir); });
  }
  if (config) {
    const model::FamilyDesc& family = model::family_for(config->model_type, model_dir->string());
    model["model_type"] = config->model_type;
    model["parameters"] = model::parameter_count(family, *config, !config->tie_word_embeddings);
    model["layers"] = config->n_layers;
    model["hidden_size"] = config->hidden_size;
    model["intermediate_size"] = config->intermediate_size;
    model["heads"] = config->n_heads;
    model["kv_heads"] = config->n_heads_kv;
    model["vocab_size"] = config->vocab_size;
    model["max_position_embeddings"] = config->max_position_embeddings;
    model["tie_word_embeddings"] = config->tie_word_embeddings;
    std::optional<quant::BnbConfig> bnb;
    std::optional<quant::GptqConfig> gptq;
    if (p.model_init == "pretrained") {
      attempt(report, [&] {
        bnb = quant::read_bnb_config(*model_dir);
        gptq = quant::read_gptq_config(*model_dir);
      });
      model["weights"] = check_weights(*model_dir, *config, bnb || gptq, report);
    } else {
      model["weights"] = "not read (model.init random: initialized from config.json)";
    }
    // The run's checks of the base's quantization, in its order.
    std::string on_load = "none";
    attempt(report, [&] {
      if (gptq && !p.adapter)
        throw ConfigError(model_dir->string() + " is a GPTQ checkpoint: method full trains 16-bit weights; use an adapter method (lora, dora)");
      if (gptq && p.quantize != "auto" && p.quantize != "none")
        throw ConfigError("model.quantize: " + p.quantize + " but " + model_dir->string() + " is already a GPTQ checkpoint: remove model.quantize");
      if (gptq && p.method == "qlora")
        throw ConfigError("method qlora quantizes a 16-bit base; " + model_dir->string() + " is already a GPTQ checkpoint: use method: lora");
      on_load = gptq ? std::string("none") : quantize_on_load(p, bnb, *model_dir);
    });
    facts.quantized_base = on_load != "none" || bnb.has_value() || gptq.has_value();
    model["quantization"] = bnb    ? std::string("bitsandbytes checkpoint, loaded as stored")
                            : gptq ? std::string("GPTQ checkpoint, loaded as stored")
                                   : describe_quantization(planned_quantization(p, on_load));
  }
  // Method full: every full.freeze pattern must be a regular expression that matches a weight, and leave one to train.
  if (config && !p.adapter && !p.freeze.empty()) {
    std::vector<std::string> names;
    for (const auto& [name, shape] : model::checkpoint_tensors(model::family_for(config->model_type, p.model), *config,
                                                               !config->tie_word_embeddings))
      names.push_back(name);
    std::vector<bool> frozen(names.size(), false);
    for (const auto& f : p.freeze) {
      std::optional<std::regex> re;
      attempt(report, [&] {
        try {
          re.emplace(f);
        } catch (const std::regex_error&) {
          throw ConfigError("full.freeze: '" + f + "' is not a valid regular expression");
        }
      });
      if (!re) continue;
      bool hit = false;
      for (size_t i = 0; i < names.size(); ++i)
        if (std::regex_search(names[i], *re)) frozen[i] = true, hit = true;
      if (!hit)
        report.problems.push_back("full.freeze: '" + f + "' matches no weight (names look like " + names.back() + ")");
    }
    if (std::all_of(frozen.begin(), frozen.end(), [](bool b) { return b; }))
      report.problems.push_back("full.freeze freezes every weight: nothing to train");
  }
  if (!p.model.empty()) report.sections["model"] = model;  // (unset: the config problems say so)
  return facts;
}

}  // namespace

// Runs `check`; an llmtune error (or any other exception) becomes one problem per line of its text.
bool attempt(ValidateReport& report, const std::function<void()>& check) {
  try {
    check();
    return true;
  } catch (const std::exception& e) {
    std::string text = e.what();
    size_t start = 0;
    while (start <= text.size()) {
      const size_t end = std::min(text.find('\n', start), text.size());
      if (end > start) report.problems.push_back(text.substr(start, end - start));
      start = end + 1;
    }
    return false;
  }
}

std::string bytes_text(double bytes) {
  if (bytes >= double(1 << 30)) return fmt::format("{:.2f} GiB", bytes / double(1 << 30));
  if (bytes >= double(1 << 20)) return fmt::format("{:.1f} MiB", bytes / double(1 << 20));
  return fmt::format("{:.1f} KiB", bytes / 1024.0);
}

void validate_training(const FinetuneParams& p, ValidateReport& report) {
  WarningCapture capture(report);
  report.command = p.command;

  // The run directory: read only (check_run_directory writes nothing).
  if (!p.output.empty()) attempt(report, [&] { check_run_directory(p); });

  // The model directory: config, weights, quantization.
  const ModelFacts facts = check_model(p, report);
  const std::optional<fs::path>& model_dir = facts.dir;
  const std::optional<model::ModelConfig>& config = facts.config;
  const bool quantized_base = facts.quantized_base;

  // The tokenizer, then the data through it.
  std::unique_ptr<tokenizer::Tokenizer> tok;
  if (model_dir)
    attempt(report, [&] { tok = tokenizer::load_tokenizer(*model_dir); });
  std::optional<data::Dataset> dataset;
  if (model_dir) report.sections["tokenizer"] = tok ? tokenizer_section(*tok) : nlohmann::ordered_json(nullptr);
  if (tok && !p.data.path.empty()) dataset = check_data(p, *tok, report);
  else if (!p.data.path.empty()) check_data_rows_only(p, report);
  if (dataset && config) {
    attempt(report, [&] {
      data::check_token_ids(dataset->train, config->vocab_size, p.data.path);
      data::check_token_ids(dataset->val, config->vocab_size, p.data.val_path.empty() ? p.data.path : p.data.val_path);
    });
  }

  // The device, the teacher and the memory estimate.
  std::optional<DeviceChoice> device;
  std::optional<DtypeChoice> dtype;
  attempt(report, [&] {
    device = choose_device(p.device);
    dtype = choose_dtype(p.dtype, device->device);
  });
  double teacher_bytes = 0;
  if (p.distill && device) {
    check_teacher(*p.distill, tok.get(), device->device, dtype->dtype, report);
    // (On the student's device, the teacher's weights count against the same memory, as the run counts them.)
    attempt(report, [&] {
      if (p.distill->cache.empty() &&
          (p.distill->teacher_device == "auto" || choose_device(p.distill->teacher_device).device == device->device))
        teacher_bytes = report.sections["teacher"].value("bytes", 0.0);
    });
  }
  if (device && config && dataset) {
    const MemoryEstimate m = estimate_memory(p, *config, *dataset, dtype->dtype, *model_dir, quantized_base, teacher_bytes);
    const int64_t limit = ops::memory_limit_bytes(device->device);
    const bool fits = limit < 0 || m.total() <= static_cast<double>(limit);
    report.sections["memory"] = {{"device", device->device.str()},  {"dtype", dtype_name(dtype->dtype)},
                                 {"weights_bytes", m.weights},      {"activations_bytes", m.activations},
                                 {"logits_bytes", m.logits},        {"teacher_bytes", m.extra},
                                 {"total_bytes", m.total()},        {"limit_bytes", limit},
                                 {"fits", fits},                    {"row_tokens", m.row_tokens}};
    if (!fits)
      report.problems.push_back(fmt::format(
          "memory: a training step on {} rows × {} tokens needs about {}, more than the {} {} has; lower data.max_seq_len or "
          "train.batch_size (and raise train.grad_accum_steps){}", p.batch_size, m.row_tokens, bytes_text(m.total()),
          bytes_text(static_cast<double>(limit)), device->device.str(), p.gradient_checkpointing ? "" : ", or set train.grad_checkpointing: true"));
    if (m.longest_example > config->max_position_embeddings)
      report.warnings.push_back(fmt::format("data: examples of up to {} tokens run past the model's context (max_position_embeddings {} "
                                            "in {})", m.longest_example, config->max_position_embeddings,
                                            (*model_dir / "config.json").string()));
  }
  if (dataset && tok) {
    const int32_t pad_id = tok->pad_id.value_or(tok->eos_id.value_or(0));
    attempt(report, [&] { check_steps(p, *dataset, pad_id, report); });
  }
  // (Two checks can meet one cause, e.g. a teacher that is not found: say it once.)
  std::vector<std::string> unique;
  for (auto& line : report.problems)
    if (std::find(unique.begin(), unique.end(), line) == unique.end()) unique.push_back(std::move(line));
  report.problems = std::move(unique);
}

}  // namespace llmtune::pipelines
