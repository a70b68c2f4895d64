// `llmtune tokenize`: how a text or a dataset row is tokenized (ids and pieces), and for a row
// the rendered text with its trained spans marked and the label of every token.
#include <CLI/CLI.hpp>
#include <unistd.h>

#include <fmt/format.h>

#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "common.h"
#include "llmtune/data/dataset.h"
#include "llmtune/io/hf_dir.h"
#include "llmtune/tokenizer/tokenizer.h"
#include "llmtune/util/error.h"

namespace llmtune::cli {
namespace {

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

}  // namespace

Command register_tokenize(CLI::App& root) {
  auto* app = root.add_subcommand("tokenize", "Show the token ids and pieces of a text, or a dataset row with its labels");
  auto options = std::make_shared<CommonOptions>();
  struct Flags {
    std::string model, text, data, format = "auto", chat_template = "auto", train_on = "assistant";
    int64_t row = 0, max_seq_len = 0;
    bool no_special = false;
  };
  auto f = std::make_shared<Flags>();
  add_common_options(app, *options);
  app->add_option("--model", f->model, "model directory or Hugging Face cache repo id")->required();
  app->add_option("--text", f->text, "the text to tokenize");
  app->add_option("--data", f->data, "a .jsonl or .json dataset: show one row rendered, with its trained spans and labels");
  app->add_option("--row", f->row, "1-based row number in --data [1]");
  app->add_option("--format", f->format, "row format: auto, alpaca, messages, tools, completion, text [auto]");
  app->add_option("--template", f->chat_template,
                  "chat template: auto (the tokenizer's), alpaca, chatml, llama3, mistral, zephyr, or a .jinja file [auto]");
  app->add_option("--train-on", f->train_on, "assistant or all [assistant]");
  app->add_option("--max-seq-len", f->max_seq_len, "truncate the row to this many tokens, as finetune would [no limit]");
  app->add_flag("--no-special-tokens", f->no_special, "with --text: do not add BOS/EOS");
  return {app, [options, f] {
            config::Schema schema;
            add_common_keys(schema);
            config::Config cfg = resolve_config(schema, *options);
            if (print_config_if_asked(cfg, *options)) return 0;
            if (f->text.empty() == f->data.empty()) throw UsageError("tokenize needs exactly one of --text or --data");
            if (f->max_seq_len < 0) throw UsageError("--max-seq-len must be positive");
            auto tok = tokenizer::load_tokenizer(io::resolve_model_dir(f->model));
            if (!f->text.empty()) {
              std::vector<int32_t> ids = tok->encode(f->text, !f->no_special);
              if (options->json) {
                nlohmann::ordered_json j;
                j["text"] = f->text;
                j["ids"] = ids;
                j["pieces"] = nlohmann::json::array();
                for (int32_t id : ids) j["pieces"].push_back(tok->id_to_piece(id));
                std::cout << j.dump(2) << "\n";
              } else {
                std::cout << fmt::format("{} tokens\n", ids.size());
                for (int32_t id : ids)
                  std::cout << fmt::format("{:>8}  {}{}\n", id, tok->id_to_piece(id), tok->is_special(id) ? "  (special)" : "");
              }
              return 0;
            }
            data::DataParams params;
            params.path = f->data;
            params.format = f->format;
            params.chat_template = f->chat_template;
            params.train_on = f->train_on;
            const int64_t want = f->row > 0 ? f->row : 1;
            int64_t seen = 0;
            std::optional<data::RenderedRow> rendered;
            data::read_rows(f->data, [&](int64_t line, const nlohmann::ordered_json& row) {
              if (++seen != want) return;
              rendered = data::render_row(row, params, *tok, f->data + ":" + std::to_string(line));
            });
            if (!rendered)
              throw DataError(f->data + ": has " + std::to_string(seen) + " row(s); --row " + std::to_string(want) +
                              " is past the end");
            data::Example& ex = rendered->example;
            if (f->max_seq_len > 0 && static_cast<int64_t>(ex.input_ids.size()) > f->max_seq_len) {
              ex.input_ids.resize(f->max_seq_len);
              ex.labels.resize(f->max_seq_len);
            }
            if (options->json) {
              nlohmann::ordered_json j;
              j["text"] = rendered->text;
              j["trained_spans"] = nlohmann::json::array();
              for (auto [b, e] : rendered->trained_spans) j["trained_spans"].push_back({b, e});
              j["input_ids"] = ex.input_ids;
              j["labels"] = ex.labels;
              std::cout << j.dump(2) << "\n";
              return 0;
            }
            const bool color = ::isatty(STDOUT_FILENO);
            int64_t trained = 0;
            for (int32_t l : ex.labels) trained += l != data::kIgnoreIndex;
            std::cout << mark_spans(rendered->text, rendered->trained_spans, color) << "\n\n";
            std::cout << fmt::format("{} tokens, {} trained\n{:>6}  {:>8}  {:>8}  piece\n", ex.input_ids.size(), trained,
                                     "pos", "id", "label");
            for (size_t i = 0; i < ex.input_ids.size(); ++i) {
              bool t = ex.labels[i] != data::kIgnoreIndex;
              std::cout << fmt::format("{:>6}  {:>8}  {:>8}  {}{}{}\n", i, ex.input_ids[i],
                                       t ? std::to_string(ex.labels[i]) : std::string("-100"),
                                       color && t ? "\x1b[32m" : "", nlohmann::json(tok->id_to_piece(ex.input_ids[i])).dump(),
                                       color && t ? "\x1b[0m" : "");
            }
            return 0;
          }};
}

}  // namespace llmtune::cli
