// The renderer behind render_row and load_dataset: a row of any format to text, trained byte
// spans and an Example. Holds the parsed chat template so that a dataset parses it once.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "llmtune/data/dataset.h"
#include "llmtune/tokenizer/chat_template.h"

namespace llmtune::data {

class RowRenderer {
 public:
  RowRenderer(const DataParams& params, const tokenizer::Tokenizer& tok);
  // `format` must be a concrete format name. Row problems are DataErrors "source: ...".
  RenderedRow render(const nlohmann::ordered_json& row, const std::string& format, const std::string& source);
  // "tokenizer" (its own template), a named template, or the .jinja path; "" before first use.
  const std::string& template_name() const { return template_name_; }

 private:
  const tokenizer::ChatTemplate& chat_template();
  RenderedRow render_chat(const nlohmann::ordered_json& messages, const nlohmann::ordered_json& tools,
                          const std::string& source);
  RenderedRow render_plain(const std::string& prompt, const std::string& completion, bool train_prompt,
                           const std::string& source);

  const DataParams& params_;
  const tokenizer::Tokenizer& tok_;
  std::optional<tokenizer::ChatTemplate> template_;
  std::string template_name_;
  int64_t turns_without_stop_ = 0;
};

void check_format_name(const std::string& format);

}  // namespace llmtune::data
