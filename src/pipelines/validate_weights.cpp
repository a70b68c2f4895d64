// validate's weight check: every tensor config.json implies (model/family.h's checkpoint_tensors),
// looked up in the safetensors headers (nothing of the data is read) for its presence, shape and
// dtype, with the loader's own allowances: a prefix some checkpoints drop, GPT-2's (in, out) linears,
// an untied lm_head that falls back to the embeddings, old rotary buffers.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <map>
#include <set>

#include "llmtune/io/safetensors.h"
#include "llmtune/model/family.h"
#include "validate_parts.h"

namespace llmtune::pipelines {
namespace {

constexpr size_t kTensorsNamed = 8;  // problem lines per kind; the rest is counted

std::string shape_text(const std::vector<int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

bool floating(const std::string& dtype) { return dtype == "F32" || dtype == "F16" || dtype == "BF16" || dtype == "F64"; }

}  // namespace

nlohmann::ordered_json check_weights(const std::filesystem::path& dir, const model::ModelConfig& c, bool quantized,
                                     ValidateReport& report) {
  io::WeightFiles files;
  try {
    files = io::WeightFiles::open(dir);
  } catch (const std::exception& e) {
    report.problems.push_back(e.what());
    return nullptr;
  }
  const model::FamilyDesc& f = model::family_for(c.model_type, dir.string());
  const bool with_lm_head = !c.tie_word_embeddings;
  const std::string lm_head = f.lm_head + ".weight";
  std::set<std::string> used;
  std::map<std::string, int64_t> dtypes;
  std::vector<std::string> missing, mismatched, not_floating;
  nlohmann::ordered_json mismatched_json = nlohmann::ordered_json::array();
  size_t expected = 0;
  for (const auto& [name, shape] : model::checkpoint_tensors(f, c, with_lm_head)) {
    // A quantized checkpoint stores its linears packed under other names: only the dense tensors are checked.
    if (quantized && (!model::projections_of(f, name).empty() || name == lm_head)) continue;
    ++expected;
    std::string stored = name;
    if (!files.contains(stored) && !f.optional_prefix.empty() && name.starts_with(f.optional_prefix) &&
        files.contains(name.substr(f.optional_prefix.size())))
      stored = name.substr(f.optional_prefix.size());
    if (!files.contains(stored)) {
      if (name == lm_head) {
        if (!f.lm_head_optional)
          report.warnings.push_back(dir.string() + ": no " + lm_head + " although config.json has tie_word_embeddings false; "
                                    "the input embeddings are used (tied)");
        continue;
      }
      missing.push_back(name);
      continue;
    }
    used.insert(stored);
    const io::TensorInfo& info = files.info(stored);
    ++dtypes[info.dtype];
    std::vector<int64_t> want = shape;
    if (model::stored_in_out(f, stored) && want.size() == 2) std::swap(want[0], want[1]);
    if (!floating(info.dtype) && !quantized) {
      not_floating.push_back(stored + " (" + info.dtype + ")");
    } else if (info.shape != want) {
      mismatched.push_back(fmt::format("'{}' has shape {} but config.json implies {}", stored, shape_text(info.shape), shape_text(want)));
      mismatched_json.push_back({{"name", stored}, {"shape", info.shape}, {"expected", want}});
    }
  }
  std::vector<std::string> unexpected;
  if (!quantized)
    for (const auto& n : files.names())
      if (!used.count(n) && !n.ends_with("rotary_emb.inv_freq")) unexpected.push_back(n);

  const std::string where = files.path().string();
  auto list = [&](const std::vector<std::string>& items, const std::string& head, const std::string& tail) {
    for (size_t i = 0; i < items.size() && i < kTensorsNamed; ++i) report.problems.push_back(where + ": " + head + items[i] + tail);
    if (items.size() > kTensorsNamed)
      report.problems.push_back(fmt::format("{}: ... and {} more such tensors{}", where, items.size() - kTensorsNamed, tail));
  };
  list(missing, "tensor '", "' is missing (is config.json from the same model?)");
  list(mismatched, "tensor ", ": the weights and config.json are from different models (fix config.json or the weights)");
  list(not_floating, "tensor ", " is stored quantized without a quantization_config in config.json: load a dense checkpoint");
  if (!unexpected.empty())
    report.warnings.push_back(fmt::format("{}: {} tensor(s) the model does not use (e.g. '{}'): they are ignored", where,
                                          unexpected.size(), unexpected.front()));

  nlohmann::ordered_json section = {{"files", where}, {"tensors", files.names().size()}, {"checked", expected}};
  section["dtypes"] = dtypes;
  section["missing"] = missing;
  section["mismatched"] = mismatched_json;
  section["unexpected"] = unexpected;
  if (quantized) section["note"] = "a quantized checkpoint: its packed linears are not checked here";
  return section;
}

}  // namespace llmtune::pipelines
