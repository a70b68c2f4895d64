// `llmtune validate` for prune, quantize, eval and serve: the model directory (as finetune's
// validation checks it), each adapter against the model, the calibration or evaluation data through
// the tokenizer, and the output path as the command would meet it; every problem collected.
#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "llmtune/io/atomic_file.h"
#include "llmtune/io/hf_dir.h"
#include "llmtune/model/family.h"
#include "llmtune/ops/runtime.h"
#include "llmtune/peft/method.h"
#include "llmtune/pipelines/calibration.h"
#include "llmtune/quant/bnb_checkpoint.h"
#include "llmtune/quant/gptq_linear.h"
#include "llmtune/util/device.h"
#include "llmtune/util/error.h"
#include "validate_parts.h"

namespace llmtune::pipelines {
namespace fs = std::filesystem;

namespace {

struct Model {
  std::optional<fs::path> dir;
  std::optional<model::ModelConfig> config;
  std::unique_ptr<tokenizer::Tokenizer> tok;
};

// The model section: found, config.json of a known family, the weights against it, the tokenizer.
Model check_model_dir(const std::string& spec, ValidateReport& report) {
  Model m;
  nlohmann::ordered_json section = {{"path", spec}};
  if (spec.ends_with(".gguf")) {
    std::error_code ec;
    if (!fs::is_regular_file(spec, ec)) report.problems.push_back("model: " + spec + " is not a file (a .gguf model is a file)");
    else section["bytes"] = fs::file_size(spec, ec);
    report.sections["model"] = section;
    return m;
  }
  attempt(report, [&] { m.dir = io::resolve_model_dir(spec); });
  if (m.dir) {
    section["dir"] = m.dir->string();
    attempt(report, [&] { m.config = model::ModelConfig::load(*m.dir); });
  }
  if (m.config) {
    const model::FamilyDesc& family = model::family_for(m.config->model_type, m.dir->string());
    section["model_type"] = m.config->model_type;
    section["parameters"] = model::parameter_count(family, *m.config, !m.config->tie_word_embeddings);
    section["layers"] = m.config->n_layers;
    section["hidden_size"] = m.config->hidden_size;
    section["intermediate_size"] = m.config->intermediate_size;
    section["heads"] = m.config->n_heads;
    section["kv_heads"] = m.config->n_heads_kv;
    section["vocab_size"] = m.config->vocab_size;
    section["max_position_embeddings"] = m.config->max_position_embeddings;
    bool quantized = false;
    attempt(report, [&] { quantized = quant::read_bnb_config(*m.dir).has_value() || quant::read_gptq_config(*m.dir).has_value(); });
    section["quantized"] = quantized;
    section["weights"] = check_weights(*m.dir, *m.config, quantized, report);
  }
  if (m.dir) {
    attempt(report, [&] { m.tok = tokenizer::load_tokenizer(*m.dir); });
    report.sections["tokenizer"] = m.tok ? tokenizer_section(*m.tok) : nlohmann::ordered_json(nullptr);
  }
  report.sections["model"] = section;
  return m;
}

// Each adapter read as the command reads it (config and weights), and every module it touches
// present in the model with the shapes its tensors need (apply_adapter's checks, from the headers).
void check_adapters(const CommandInputs& in, const Model& m, ValidateReport& report) {
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  std::map<std::string, std::vector<int64_t>> shapes;
  if (m.config)
    for (auto& [name, shape] : model::checkpoint_tensors(model::family_for(m.config->model_type, m.dir->string()), *m.config,
                                                         !m.config->tie_word_embeddings))
      shapes[name] = shape;
  for (const auto& a : in.adapters) {
    nlohmann::ordered_json entry = {{"key", a.key}, {"path", a.path}};
    attempt(report, [&] {
      try {
        const peft::SavedAdapter saved = peft::open_adapter(peft::resolve_adapter_dir(a.path));
        entry["dir"] = saved.dir.string();
        entry["method"] = saved.method->describe();
        entry["modules"] = saved.modules.size();
        if (!m.config) return;
        for (const auto& module : saved.modules) {
          auto it = shapes.find(module + ".weight");
          if (it == shapes.end() || it->second.size() != 2)
            throw AdapterError(saved.weights_path.string() + ": module '" + module +
                               "' does not exist in this model (adapter made for another base?)");
          saved.method->check_module_fits(saved.tensors, module, it->second[0], it->second[1], saved.weights_path.string());
        }
      } catch (const Error& e) {
        throw AdapterError(a.key + ": " + e.what());
      }
    });
    list.push_back(entry);
  }
  if (!in.adapters.empty()) report.sections["adapters"] = list;
}

// Calibration text: read and tokenized as the command reads it, the windows cut; evaluation data:
// rows and tokens, and how many windows (.txt) or rows run past seq_len.
void check_data_file(const CommandInputs::Data& d, const Model& m, ValidateReport& report, nlohmann::ordered_json& out) {
  nlohmann::ordered_json section = {{"key", d.key}, {"path", d.path}};
  std::error_code ec;
  if (!fs::exists(d.path, ec)) {
    report.problems.push_back(d.key + ": '" + d.path + "' does not exist");
  } else if (fs::is_directory(d.path, ec)) {
    report.problems.push_back(d.key + ": '" + d.path + "' is a directory, not a data file");
  } else if (m.tok) {
    int64_t seq_len = d.seq_len;
    if (seq_len == 0) seq_len = std::min<int64_t>(512, m.config ? m.config->max_position_embeddings : 512);
    section["seq_len"] = seq_len;
    attempt(report, [&] {
      CalibrationParams c{.path = d.path, .format = d.format, .chat_template = d.chat_template,
                          .samples = std::max<int64_t>(1, d.windows), .seq_len = d.windows > 0 ? seq_len : 2, .seed = d.seed};
      const CalibrationSet set = read_calibration(c, *m.tok);
      section["rows"] = set.rows;
      section["tokens"] = set.corpus_tokens;
      if (d.windows > 0) {
        section["windows"] = d.windows;
        const int64_t distinct = set.corpus_tokens / seq_len;
        section["distinct_windows"] = distinct;
        if (distinct < d.windows)
          report.warnings.push_back(fmt::format("{}: {} holds {} tokens, {} windows of {} without overlap; the {} windows drawn "
                                                "overlap (more text calibrates better)", d.key, d.path, set.corpus_tokens,
                                                distinct, seq_len, d.windows));
      } else if (d.path.ends_with(".txt")) {
        section["windows"] = (set.corpus_tokens + seq_len - 1) / seq_len;  // (eval splits a .txt stream into windows)
      }
    });
  }
  out.push_back(section);
}

// The output path as the command meets it before it starts: refused when it exists without
// force, is the wrong kind of path, or would overwrite the model or an adapter.
void check_output_path(const CommandInputs& in, const Model& m, ValidateReport& report) {
  if (in.output_kind.empty() || in.output.empty()) return;
  const fs::path out = in.output;
  std::error_code ec;
  const bool exists = fs::exists(out, ec);
  nlohmann::ordered_json section = {{"path", in.output}, {"exists", exists}, {"force", in.force}};
  if (in.output_kind == "gguf") {
    if (out.extension() != ".gguf")
      report.problems.push_back("output: '" + in.output + "' does not end in .gguf (GGUF types write a file; nf4, fp4 and int8 write a directory)");
    if (fs::is_directory(out, ec)) report.problems.push_back("output: '" + in.output + "' is a directory; give the path of the .gguf file to write");
  } else if (exists && !fs::is_directory(out, ec)) {
    report.problems.push_back("output: '" + in.output + "' is a file; this command writes a directory");
  }
  if (exists && !in.force)
    report.problems.push_back(in.output + ": the output already exists (set force: true, or pass --force, to replace it)");
  std::vector<fs::path> inputs;
  if (m.dir) inputs.push_back(*m.dir);
  for (const auto& a : in.adapters) inputs.push_back(a.path);
  for (const auto& input : inputs)
    if (io::same_or_inside(input, out) || io::same_or_inside(out, input))
      report.problems.push_back("output: '" + in.output + "' would overwrite the input " + input.string() + "; choose another path");
  report.sections["output"] = section;
}

}  // namespace

void validate_command(const CommandInputs& in, ValidateReport& report) {
  WarningCapture capture(report);
  const Model m = in.model.empty() ? Model{} : check_model_dir(in.model, report);
  check_adapters(in, m, report);
  nlohmann::ordered_json data = nlohmann::ordered_json::array();
  for (const auto& d : in.data) check_data_file(d, m, report, data);
  if (!in.data.empty()) report.sections["data"] = data;
  check_output_path(in, m, report);
  attempt(report, [&] {
    const DeviceChoice device = choose_device(in.device);
    const DtypeChoice dtype = choose_dtype(in.dtype, device.device);
    report.sections["device"] = {{"device", device.device.str()}, {"dtype", dtype_name(dtype.dtype)}};
  });
  std::vector<std::string> unique;
  for (auto& line : report.problems)
    if (std::find(unique.begin(), unique.end(), line) == unique.end()) unique.push_back(std::move(line));
  report.problems = std::move(unique);
}

}  // namespace llmtune::pipelines
