// An Ollama Modelfile next to an exported GGUF: FROM, a TEMPLATE in Ollama's Go-template syntax
// when the model's chat template renders like one of our named templates, and stop parameters.
// Ollama adds BOS itself (tokenizer.ggml.add_bos_token), so the templates leave it out.
#include <spdlog/spdlog.h>

#include <set>

#include "gguf_arch.h"
#include "llmtune/data/dataset.h"
#include "llmtune/io/atomic_file.h"
#include "llmtune/tokenizer/chat_template.h"
#include "llmtune/util/error.h"

namespace llmtune::pipelines::gguf_detail {
namespace {

// Go templates equivalent to src/data/templates.cpp's Jinja (messages in .Messages, system
// messages included; Go templates have no trim, so llama3 contents are used as given).
// "{EOS}" is replaced by the tokenizer's EOS text.
std::string go_template(const std::string& name, const std::string& eos) {
  std::string t;
  if (name == "chatml") {
    t = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>";
    if (eos != "<|im_end|>") t += "{{ if eq .Role \"assistant\" }}{EOS}{{ end }}";
    t += "\n{{ end }}<|im_start|>assistant\n";
  } else if (name == "llama3") {
    t = "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>";
    if (eos != "<|eot_id|>") t += "{{ if eq .Role \"assistant\" }}{EOS}{{ end }}";
    t += "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n";
  } else if (name == "zephyr") {
    t = "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}{EOS}\n{{ end }}<|assistant|>\n";
  } else if (name == "mistral") {
    t = "{{- $system := \"\" }}{{- $first := true }}\n"
        "{{- range .Messages }}\n"
        "{{- if eq .Role \"system\" }}{{ $system = .Content }}\n"
        "{{- else if eq .Role \"user\" }}[INST] {{ if and $first $system }}{{ $system }}\n\n{{ end }}"
        "{{ .Content }} [/INST]{{ $first = false }}\n"
        "{{- else if eq .Role \"assistant\" }}{{ .Content }}{EOS}\n"
        "{{- end }}\n"
        "{{- end }}";
  } else if (name == "alpaca") {
    t = "{{- $system := \"Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\" }}\n"
        "{{- range .Messages }}{{ if eq .Role \"system\" }}{{ $system = .Content }}{{ end }}{{ end }}\n"
        "{{- $system }}\n"
        "{{- range .Messages }}\n"
        "{{- if eq .Role \"user\" }}\n\n### Instruction:\n{{ .Content }}\n"
        "{{- else if eq .Role \"assistant\" }}\n\n### Response:\n{{ .Content }}{EOS}\n"
        "{{- end }}\n"
        "{{- end }}\n\n### Response:\n";
  }
  for (size_t at = t.find("{EOS}"); at != std::string::npos; at = t.find("{EOS}", at + eos.size()))
    t.replace(at, 5, eos);
  return t;
}

// Renders `source` on a probe conversation; "" when the template refuses it.
std::string render_probe(const std::string& source, const tokenizer::Tokenizer& tok, bool with_system) {
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  if (with_system) messages.push_back({{"role", "system"}, {"content", "Be brief."}});
  messages.push_back({{"role", "user"}, {"content", "Hello there"}});
  messages.push_back({{"role", "assistant"}, {"content", "Hi! How can I help?"}});
  messages.push_back({{"role", "user"}, {"content", "Name a colour."}});
  try {
    return tokenizer::apply_chat_template(source, messages, true, tok.bos_token, tok.eos_token);
  } catch (const Error&) {
    return "";
  }
}

// The named template whose rendering equals the model's on both probes (a probe the model's
// template refuses is not compared); "" when none does.
std::string recognise_template(const tokenizer::Tokenizer& tok) {
  if (tok.chat_template.empty()) return "";
  const std::string plain = render_probe(tok.chat_template, tok, false);
  const std::string with_system = render_probe(tok.chat_template, tok, true);
  if (plain.empty()) return "";
  for (const auto& name : data::named_templates()) {
    const std::string& ours = data::named_template_source(name);
    if (render_probe(ours, tok, false) != plain) continue;
    if (!with_system.empty() && render_probe(ours, tok, true) != with_system) continue;
    return name;
  }
  return "";
}

bool quotable(const std::string& s) {
  return !s.empty() && s.find('"') == std::string::npos && s.find('\n') == std::string::npos &&
         s.find('\\') == std::string::npos;
}

}  // namespace

std::filesystem::path write_ollama_modelfile(const tokenizer::Tokenizer& tok, const std::filesystem::path& gguf_path) {
  const std::filesystem::path path = gguf_path.parent_path() / "Modelfile";
  std::string text = "FROM ./" + gguf_path.filename().string() + "\n";
  const std::string name = recognise_template(tok);
  if (!name.empty()) {
    const std::string t = go_template(name, tok.eos_token);
    if (t.find("\"\"\"") != std::string::npos) throw IoError(path.string() + ": the template contains \"\"\"");
    text += "TEMPLATE \"\"\"" + t + "\"\"\"\n";
    spdlog::info("Modelfile: the chat template renders as our '{}' template; TEMPLATE written in Ollama's syntax", name);
  } else if (tok.chat_template.empty()) {
    spdlog::warn("Modelfile: the model has no chat template; no TEMPLATE written (Ollama will pass prompts as they are)");
  } else {
    spdlog::warn("Modelfile: the model's chat template is not one llmtune can translate to Ollama's syntax; no TEMPLATE "
                 "written, so Ollama uses the GGUF's tokenizer.chat_template");
  }
  // Stop strings: the end-of-turn/EOS tokens generation stops at.
  std::set<std::string> seen;
  std::vector<int32_t> ids = tok.stop_ids;
  if (tok.eos_id) ids.push_back(*tok.eos_id);
  for (int32_t id : ids) {
    if (id < 0 || id >= tok.vocab_size()) continue;
    const std::string piece = tok.id_to_piece(id);
    if (!quotable(piece) || !seen.insert(piece).second) continue;
    text += "PARAMETER stop \"" + piece + "\"\n";
  }
  for (const char* marker : {"<|im_end|>", "<|eot_id|>", "<|end|>"}) {
    if (!seen.count(marker) && text.find(marker) != std::string::npos && tok.piece_to_id(marker)) {
      seen.insert(marker);
      text += "PARAMETER stop \"" + std::string(marker) + "\"\n";
    }
  }
  io::write_file_atomic(path, text);
  return path;
}

}  // namespace llmtune::pipelines::gguf_detail
