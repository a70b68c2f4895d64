// The pieces of `llmtune validate` (pipelines/validate.h): the model directory's checks, the data's,
// and the step and memory figures, each adding its section and problems to the report.
#pragma once

#include <filesystem>
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

// "12.3 MiB", "1.50 GiB".
std::string bytes_text(double bytes);

}  // namespace llmtune::pipelines
