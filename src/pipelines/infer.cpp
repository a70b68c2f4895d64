// The infer job: load once, then for each prompt render (chat template unless raw), encode,
// generate with streaming decode, stop on stop ids or stop strings, report speeds.
#include "llmtune/pipelines/infer.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "llmtune/io/atomic_file.h"
#include "llmtune/io/jsonl.h"
#include "llmtune/io/read_file.h"
#include "llmtune/model/causal_lm.h"
#include "llmtune/peft/method.h"
#include "llmtune/pipelines/load.h"
#include "llmtune/tokenizer/chat_template.h"
#include "llmtune/tokenizer/tokenizer.h"
#include "llmtune/util/device.h"
#include "llmtune/util/error.h"
#include "llmtune/util/log.h"
#include "saved_template.h"

namespace llmtune::pipelines {
namespace {

using json = nlohmann::ordered_json;

struct Engine {
  std::unique_ptr<tokenizer::Tokenizer> tok;
  std::unique_ptr<model::CausalLM> model;
  const InferParams* params = nullptr;

  // `source` names the prompt in messages ("--prompt", "prompts.jsonl:3").
  std::vector<int64_t> encode_prompt(const json& messages, const std::string& text, const std::string& source) const {
    std::vector<int32_t> ids;
    if (params->raw || tok->chat_template.empty()) {
      if (!params->raw && log::first_time("infer.no_template"))
        spdlog::warn("the tokenizer has no chat template: prompts are used as raw text (--raw)");
      if (!params->system.empty())
        throw UsageError("--system needs a chat template to place the system prompt, and the tokenizer has none "
                         "(an adapter trained with one saves it as chat_template.jinja)");
      std::string plain = text;
      if (plain.empty())
        for (const auto& m : messages) plain += m.value("content", "");
      ids = tok->encode(plain, /*add_special_tokens=*/true);
    } else {
      json msgs = messages;
      if (msgs.empty()) {
        if (!params->system.empty()) msgs.push_back({{"role", "system"}, {"content", params->system}});
        msgs.push_back({{"role", "user"}, {"content", text}});
      }
      std::string rendered = tokenizer::apply_chat_template(tok->chat_template, msgs, true, tok->bos_token, tok->eos_token);
      ids = tok->encode(rendered, /*add_special_tokens=*/false);  // the template already wrote BOS
    }
    // As transformers' generate: an empty prompt starts from BOS; with no BOS there is nothing to start from.
    if (ids.empty())
      throw UsageError(source + ": the prompt is empty and the tokenizer adds no BOS token, so there is nothing to generate "
                       "from (transformers' generate refuses this too); give a prompt, or drop --raw");
    const int64_t context = model->config().max_position_embeddings;
    if (static_cast<int64_t>(ids.size()) >= context)
      throw DataError(source + ": the prompt is " + std::to_string(ids.size()) + " tokens, the model's context "
                      "(max_position_embeddings) is " + std::to_string(context) + ": shorten it to leave room to generate");
    return {ids.begin(), ids.end()};
  }

  struct Output {
    std::string text;
    std::vector<int64_t> ids;
    model::GenerationResult gen;
    int64_t prompt_tokens = 0;
  };

  // Generates for `prompt_ids`; when `stream` is set, text is written as it is decoded.
  Output complete(const std::vector<int64_t>& prompt_ids, std::ostream* stream) const {
    Output o;
    o.prompt_tokens = static_cast<int64_t>(prompt_ids.size());
    size_t printed = 0;
    size_t hold = 0;  // characters held back: they might start a stop string
    for (const auto& s : params->stop) hold = std::max(hold, s.size());
    bool stopped_by_string = false;
    auto on_token = [&](int64_t id) {
      o.ids.push_back(id);
      std::vector<int32_t> ids32(o.ids.begin(), o.ids.end());
      std::string text = tok->decode(ids32, /*skip_special_tokens=*/true);
      for (const auto& s : params->stop) {
        if (auto pos = text.find(s); pos != std::string::npos) {
          text.resize(pos);
          stopped_by_string = true;
        }
      }
      o.text = text;
      // An incomplete UTF-8 sequence decodes to U+FFFD: wait for the next token before printing.
      bool incomplete = text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0;
      size_t limit = stopped_by_string ? text.size() : (text.size() > hold ? text.size() - hold : 0);
      if (stream && !incomplete && limit > printed) {
        *stream << text.substr(printed, limit - printed) << std::flush;
        printed = limit;
      }
      return !stopped_by_string;
    };
    o.gen = model::generate(*model, prompt_ids, params->sampling, on_token);
    if (stream && o.text.size() > printed) *stream << o.text.substr(printed);
    if (stream) *stream << "\n" << std::flush;
    return o;
  }
};

// JSON text of generated text and echoed rows: a completion may end inside a multi-byte character,
// and bytes that are not UTF-8 are written as U+FFFD rather than failing the dump.
std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

json report(const Engine::Output& o) {
  double gen_tps = o.gen.decode_seconds > 0 ? static_cast<double>(o.gen.tokens.size() - 1) / o.gen.decode_seconds : 0;
  double prompt_tps = o.gen.prompt_seconds > 0 ? static_cast<double>(o.prompt_tokens) / o.gen.prompt_seconds : 0;
  return {{"completion", o.text},
          {"token_ids", o.ids},
          {"prompt_tokens", o.prompt_tokens},
          {"generated_tokens", o.ids.size()},
          {"finish_reason", o.gen.finish_reason},
          {"prompt_tokens_per_second", prompt_tps},
          {"generation_tokens_per_second", gen_tps}};
}

}  // namespace

void run_infer(const InferParams& p, std::ostream& out, std::istream& in) {
  int modes = p.prompt.has_value() + !p.prompts_file.empty() + p.chat;
  if (modes != 1) throw UsageError("infer needs exactly one of --prompt, --prompts-file or --chat");
  if (!p.prompts_file.empty() && p.output.empty()) throw UsageError("--prompts-file needs --output FILE.jsonl");
  if (!p.output.empty() && p.prompts_file.empty())
    throw UsageError("--output is written for --prompts-file; with --prompt or --chat the text goes to stdout");
  if (p.raw && !p.system.empty())
    throw UsageError("--system has no effect with --raw (no chat template places it): drop one of them");
  // The files, before the model is loaded.
  if (!p.prompts_file.empty()) {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (fs::is_directory(p.prompts_file, ec))
      throw UsageError("--prompts-file " + p.prompts_file + ": is a directory, not a JSONL file");
    if (!fs::exists(p.prompts_file, ec)) throw UsageError("--prompts-file " + p.prompts_file + ": no such file");
    const fs::path output(p.output);
    if (fs::is_directory(output, ec))
      throw UsageError("--output " + p.output + ": is a directory; give the path of the .jsonl file to write");
    if (output.has_parent_path() && !fs::is_directory(output.parent_path(), ec))
      throw UsageError("--output " + p.output + ": the directory " + output.parent_path().string() + " does not exist");
    if (fs::exists(output, ec) && fs::equivalent(output, p.prompts_file, ec))
      throw UsageError("--output " + p.output + ": is the prompts file itself; write the completions to another file");
  }

  const std::string adapter = p.adapter.empty() ? "" : peft::resolve_adapter_dir(p.adapter).string();
  LoadedModel loaded = load_model("infer", p.model, adapter, p.device, p.dtype, p.refuse_non_finite, p.quantize);
  Engine e;
  e.tok = std::move(loaded.tokenizer);
  // The template the adapter was trained with (finetune saves it next to the adapter).
  if (auto saved = saved_chat_template(p.adapter); saved && !p.raw) {
    e.tok->chat_template = io::read_text_file<TokenizerError>(*saved, "the chat template");
    spdlog::info("infer: chat template {} (saved with the adapter, the one it was trained with)", saved->string());
  }
  e.model = std::move(loaded.model);
  InferParams q = p;
  if (q.sampling.stop_ids.empty()) {
    for (int32_t id : e.tok->stop_ids) q.sampling.stop_ids.push_back(id);
    for (int64_t id : e.model->config().eos_token_ids) q.sampling.stop_ids.push_back(id);
  }
  e.params = &q;

  if (p.prompt) {
    auto o = e.complete(e.encode_prompt(json::array(), *p.prompt, "--prompt"), p.json ? nullptr : &out);
    if (p.json) out << dump(report(o)) << "\n";
    return;
  }

  if (!p.prompts_file.empty()) {
    io::AtomicFile sink(p.output);  // removed unless every row completes
    int64_t n = 0;
    io::read_jsonl(p.prompts_file, [&](int64_t line, const json& row) {
      json messages = json::array();
      std::string text;
      if (row.contains("messages") && row["messages"].is_array()) {
        messages = row["messages"];
        // --system goes first in a conversation that has no system message of its own.
        const bool has_system = !messages.empty() && messages[0].is_object() && messages[0].value("role", "") == "system";
        if (!p.system.empty() && !has_system) messages.insert(messages.begin(), json{{"role", "system"}, {"content", p.system}});
        else if (!p.system.empty() && log::first_time("infer.row_system"))
          spdlog::info("infer: rows with a system message of their own keep it; --system applies to the others");
      } else if (row.contains("prompt") && row["prompt"].is_string()) text = row["prompt"].get<std::string>();
      else throw DataError(p.prompts_file + ":" + std::to_string(line) + ": expected \"prompt\" (string) or \"messages\" (list)");
      auto o = e.complete(e.encode_prompt(messages, text, p.prompts_file + ":" + std::to_string(line)), nullptr);
      json rec = row;
      json stats = report(o);
      for (auto& [k, v] : stats.items()) rec[k] = v;
      std::string text_line = dump(rec) + "\n";
      sink.write(text_line.data(), text_line.size());
      ++n;
    });
    sink.commit();
    spdlog::info("infer: {} completion(s) written to {}", n, p.output);
    // With --json, one report once the file is in place (nothing on stdout when a row fails).
    if (p.json) out << dump(json{{"output", p.output}, {"completions", n}}) << "\n";
    return;
  }

  // Chat: one user line per turn; /reset clears the conversation, /exit or end of input quits.
  json messages = json::array();
  if (!p.system.empty()) messages.push_back({{"role", "system"}, {"content", p.system}});
  const bool tty = isatty(STDIN_FILENO);
  for (std::string line;;) {
    if (tty) std::cerr << "> " << std::flush;
    if (!std::getline(in, line) || line == "/exit") break;
    if (line == "/reset") {
      messages.erase(messages.begin() + (p.system.empty() ? 0 : 1), messages.end());
      continue;
    }
    if (line.empty()) continue;
    messages.push_back({{"role", "user"}, {"content", line}});
    std::vector<int64_t> ids;
    try {
      ids = e.encode_prompt(messages, "", "chat");
    } catch (const DataError& err) {  // the conversation outgrew the context: say so, keep the chat
      messages.erase(messages.end() - 1);
      spdlog::warn("{}; /reset starts a new conversation", err.what());
      continue;
    }
    auto o = e.complete(ids, p.json ? nullptr : &out);
    if (p.json) out << dump(report(o)) << "\n";
    messages.push_back({{"role", "assistant"}, {"content", o.text}});
  }
}

}  // namespace llmtune::pipelines
