// `llmtune tokenize`: how a text or a dataset row is tokenized (ids and pieces), and for a row
// the rendered text with its trained spans marked and the label of every token.
#include <CLI/CLI.hpp>
#include <unistd.h>

#include <fmt/format.h>

#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "common.h"
#include "llmtune/pipelines/tokenize.h"

namespace llmtune::cli {
namespace {

const CommonUse kTokenizeUse{.device = false, .dtype = false, .seed = false,
                             .why_not = "tokenize loads the tokenizer only: no weights, no device, nothing random"};

// JSON output of a text that need not be valid UTF-8 (the user's bytes, a piece of a multi-byte
// character): invalid bytes are written as U+FFFD, as the tokenizer itself reads them.
std::string dump_json(const nlohmann::ordered_json& j) {
  return j.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

// The text with trained spans in green on a terminal, or between « and » otherwise.
std::string mark_spans(const std::string& text, const std::vector<std::pair<size_t, size_t>>& spans, bool color) {
  std::string out;
  size_t at = 0;
  for (auto [b, e] : spans) {
    out += text.substr(at, b - at);
    out += color ? "\x1b[32m" : "«";
    out += text.substr(b, e - b);
    out += color ? "\x1b[0m" : "»";
    at = e;
  }
  return out + text.substr(at);
}

void print_text(const pipelines::TokenizeResult& r, bool json) {
  if (json) {
    nlohmann::ordered_json j;
    j["text"] = r.text;
    j["ids"] = r.ids;
    j["pieces"] = r.pieces;
    std::cout << dump_json(j) << "\n";
    return;
  }
  std::cout << fmt::format("{} tokens\n", r.ids.size());
  for (size_t i = 0; i < r.ids.size(); ++i)
    std::cout << fmt::format("{:>8}  {}{}\n", r.ids[i], r.pieces[i], r.special[i] ? "  (special)" : "");
}

void print_row(const pipelines::TokenizeResult& r, bool json) {
  if (json) {
    nlohmann::ordered_json j;
    j["text"] = r.text;
    j["trained_spans"] = nlohmann::json::array();
    for (auto [b, e] : r.trained_spans) j["trained_spans"].push_back({b, e});
    j["input_ids"] = r.ids;
    j["labels"] = r.labels;
    std::cout << dump_json(j) << "\n";
    return;
  }
  const bool color = ::isatty(STDOUT_FILENO);
  std::cout << mark_spans(r.text, r.trained_spans, color) << "\n\n";
  std::cout << fmt::format("{} tokens, {} trained\n{:>6}  {:>8}  {:>8}  piece\n", r.ids.size(), r.trained_tokens, "pos",
                           "id", "label");
  for (size_t i = 0; i < r.ids.size(); ++i) {
    const bool t = r.labels[i] != -100;
    std::cout << fmt::format("{:>6}  {:>8}  {:>8}  {}{}{}\n", i, r.ids[i], r.labels[i], color && t ? "\x1b[32m" : "",
                             nlohmann::json(r.pieces[i]).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), color && t ? "\x1b[0m" : "");
  }
}

}  // namespace

Command register_tokenize(CLI::App& root) {
  auto* app = root.add_subcommand("tokenize", "Show the token ids and pieces of a text, or a dataset row with its labels");
  auto options = std::make_shared<CommonOptions>();
  auto p = std::make_shared<pipelines::TokenizeParams>();
  auto no_special = std::make_shared<bool>(false);
  add_common_options(app, *options, kTokenizeUse);
  app->add_option("--model", p->model, "model directory or Hugging Face cache repo id")->required();
  app->add_option("--text", p->text, "the text to tokenize");
  app->add_option("--data", p->data, "a .jsonl or .json dataset: show one row rendered, with its trained spans and labels");
  app->add_option("--row", p->row, "1-based row number in --data [1]");
  app->add_option("--format", p->format, "row format: auto, alpaca, messages, tools, completion, text [auto]");
  app->add_option("--template", p->chat_template,
                  "chat template: auto (the tokenizer's), alpaca, chatml, llama3, mistral, zephyr, or a .jinja file [auto]");
  app->add_option("--train-on", p->train_on, "assistant or all [assistant]");
  app->add_option("--max-seq-len", p->max_seq_len, "truncate the row to this many tokens, as finetune would [no limit]");
  app->add_flag("--no-special-tokens", *no_special, "with --text: do not add BOS/EOS");
  return {app, [options, p, no_special] {
            config::Schema schema;
            add_common_keys(schema);
            config::Config cfg = resolve_config(schema, *options);
            if (print_config_if_asked(cfg, *options)) return 0;
            p->add_special_tokens = !*no_special;
            const pipelines::TokenizeResult r = pipelines::run_tokenize(*p);
            if (r.is_row) print_row(r, options->json);
            else print_text(r, options->json);
            return 0;
          }};
}

}  // namespace llmtune::cli
