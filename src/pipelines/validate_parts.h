// The pieces of `llmtune validate` (pipelines/validate.h): the model directory's checks, the data's,
// and the step and memory figures, each adding its section and problems to the report.
#pragma once

#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <functional>
#include <memory>
#include <optional>

#include "llmtune/data/dataset.h"
#include "llmtune/model/config.h"
#include "llmtune/pipelines/validate.h"
#include "llmtune/tokenizer/tokenizer.h"

namespace llmtune::pipelines {

// The weights of `dir` against what `c` implies: every expected tensor present with its shape and a
// floating dtype, read from the safetensors headers only; unexpected tensors are warnings.
// `quantized`: a bitsandbytes or GPTQ checkpoint, whose linears are stored packed (not checked).
nlohmann::ordered_json check_weights(const std::filesystem::path& dir, const model::ModelConfig& c, bool quantized,
                                     ValidateReport& report);

// Reads and tokenizes every row (skipping none silently): the data section, with problems for rows
// that would stop the run; nullopt when no example is left.
std::optional<data::Dataset> check_data(const FinetuneParams& p, const tokenizer::Tokenizer& tok, ValidateReport& report);

// Without a tokenizer: reads every row and detects its format, so that malformed rows are still found.
void check_data_rows_only(const FinetuneParams& p, ValidateReport& report);

// Batches as the run would make them: steps per epoch and in all, tokens, packing efficiency.
void check_steps(const FinetuneParams& p, const data::Dataset& dataset, int32_t pad_id, ValidateReport& report);

// The run's own warnings (spdlog, level warn and above) go into the report instead of stderr while
// the checks run; the logger's sinks come back afterwards.
class WarningCapture {
 public:
  explicit WarningCapture(ValidateReport& report) : report_(report), logger_(spdlog::default_logger()), saved_(logger_->sinks()) {
    ring_ = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(256);
    ring_->set_pattern("%v");
    ring_->set_level(spdlog::level::warn);
    logger_->sinks() = {ring_};
  }
  ~WarningCapture() {
    logger_->sinks() = saved_;
    for (auto& line : ring_->last_formatted()) {
      while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
      // (load_dataset's first few skipped rows: the data section reports every one, grouped.)
      if (!line.starts_with("data: skipping bad row")) report_.warnings.push_back(line);
    }
  }

 private:
  ValidateReport& report_;
  std::shared_ptr<spdlog::logger> logger_;
  std::vector<spdlog::sink_ptr> saved_;
  std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> ring_;
};

// Runs `check`; an llmtune error (or any other exception) becomes one problem per line of its text.
bool attempt(ValidateReport& report, const std::function<void()>& check);

// The tokenizer section: vocabulary size, special tokens, whether it has a chat template.
nlohmann::ordered_json tokenizer_section(const tokenizer::Tokenizer& tok);

// "12.3 MiB", "1.50 GiB".
std::string bytes_text(double bytes);

}  // namespace llmtune::pipelines
