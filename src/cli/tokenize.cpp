// `llmtune tokenize`: how a text or a dataset row is tokenized (ids and pieces).
#include <CLI/CLI.hpp>

#include <fmt/format.h>

#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "common.h"
#include "llmtune/io/hf_dir.h"
#include "llmtune/io/jsonl.h"
#include "llmtune/tokenizer/chat_template.h"
#include "llmtune/tokenizer/tokenizer.h"
#include "llmtune/util/error.h"

namespace llmtune::cli {

Command register_tokenize(CLI::App& root) {
  auto* app = root.add_subcommand("tokenize", "Show the token ids and pieces of a text or a dataset row");
  auto options = std::make_shared<CommonOptions>();
  struct Flags {
    std::string model, text, data;
    int64_t row = 0;
    bool no_special = false;
  };
  auto f = std::make_shared<Flags>();
  add_common_options(app, *options);
  app->add_option("--model", f->model, "model directory or Hugging Face cache repo id")->required();
  app->add_option("--text", f->text, "the text to tokenize");
  app->add_option("--data", f->data, "a JSONL file: the row's \"text\", or its \"messages\" rendered with the chat template");
  app->add_option("--row", f->row, "1-based row number in --data [1]");
  app->add_flag("--no-special-tokens", f->no_special, "do not add BOS/EOS");
  return {app, [options, f] {
            config::Schema schema;
            add_common_keys(schema);
            config::Config cfg = resolve_config(schema, *options);
            if (print_config_if_asked(cfg, *options)) return 0;
            if (f->text.empty() == f->data.empty()) throw UsageError("tokenize needs exactly one of --text or --data");
            auto tok = tokenizer::load_tokenizer(io::resolve_model_dir(f->model));
            std::string text = f->text;
            bool add_special = !f->no_special;
            if (!f->data.empty()) {
              int64_t want = f->row > 0 ? f->row : 1, seen = 0;
              bool found = false;
              io::read_jsonl(f->data, [&](int64_t line, const nlohmann::ordered_json& row) {
                if (++seen != want || found) return;
                found = true;
                if (row.contains("text") && row["text"].is_string()) {
                  text = row["text"].get<std::string>();
                } else if (row.contains("messages") && row["messages"].is_array()) {
                  if (tok->chat_template.empty()) throw DataError(f->data + ":" + std::to_string(line) + ": \"messages\" need a chat template and the tokenizer has none");
                  text = tokenizer::apply_chat_template(tok->chat_template, row["messages"], false, tok->bos_token, tok->eos_token);
                  add_special = false;
                } else {
                  throw DataError(f->data + ":" + std::to_string(line) + ": expected \"text\" or \"messages\"");
                }
              });
              if (!found) throw DataError(f->data + ": has " + std::to_string(seen) + " row(s); --row " + std::to_string(want) + " is past the end");
            }
            std::vector<int32_t> ids = tok->encode(text, add_special);
            if (options->json) {
              nlohmann::ordered_json j;
              j["text"] = text;
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
          }};
}

}  // namespace llmtune::cli
