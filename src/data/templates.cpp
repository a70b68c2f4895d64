// Chat templates shipped inside the binary for base models that have none (our own Jinja, rendered
// by tokenizer/chat_template like any model's). Each assistant turn ends with the tokenizer's EOS
// (after the format's end-of-turn marker where it has one) so the model learns to stop.
#include <map>
#include <string>
#include <vector>

#include "llmtune/data/dataset.h"
#include "llmtune/util/error.h"

namespace llmtune::data {
namespace {

// Stanford Alpaca's prompt. A user message's optional "input" key becomes the "### Input:" section
// (the alpaca format passes it so); a leading system message replaces the preamble.
const char* kAlpaca = R"JINJA({%- if messages and messages[0]['role'] == 'system' -%}
{%- set preamble = messages[0]['content'] -%}
{%- set rest = messages[1:] -%}
{%- else -%}
{%- set rest = messages -%}
{%- if rest and rest[0]['input'] is defined and rest[0]['input'] -%}
{%- set preamble = 'Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.' -%}
{%- else -%}
{%- set preamble = 'Below is an instruction that describes a task. Write a response that appropriately completes the request.' -%}
{%- endif -%}
{%- endif -%}
{{- preamble -}}
{%- for message in rest -%}
{%- if message['role'] == 'user' -%}
{{- '\n\n### Instruction:\n' + message['content'] -}}
{%- if message['input'] is defined and message['input'] -%}
{{- '\n\n### Input:\n' + message['input'] -}}
{%- endif -%}
{%- elif message['role'] == 'assistant' -%}
{{- '\n\n### Response:\n' + message['content'] + eos_token -}}
{%- else -%}
{{- raise_exception('the alpaca template takes a first system message, then user and assistant messages; got role ' + message['role']) -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '\n\n### Response:\n' -}}
{%- endif -%})JINJA";

const char* kChatml = R"JINJA({%- for message in messages -%}
{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' -}}
{%- if message['role'] == 'assistant' and eos_token != '<|im_end|>' -%}
{{- eos_token -}}
{%- endif -%}
{{- '\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|im_start|>assistant\n' -}}
{%- endif -%})JINJA";

const char* kLlama3 = R"JINJA({{- bos_token -}}
{%- for message in messages -%}
{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' -}}
{%- if message['role'] == 'assistant' and eos_token != '<|eot_id|>' -%}
{{- eos_token -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
{%- endif -%})JINJA";

// Mistral Instruct: [INST] user [/INST]assistant</s>; a system message is put before the first
// user message, as Mistral's v0.2+ templates do.
const char* kMistral = R"JINJA({%- if messages and messages[0]['role'] == 'system' -%}
{%- set system = messages[0]['content'] -%}
{%- set rest = messages[1:] -%}
{%- else -%}
{%- set system = '' -%}
{%- set rest = messages -%}
{%- endif -%}
{{- bos_token -}}
{%- for message in rest -%}
{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
{{- raise_exception('the mistral template needs user and assistant messages alternating, starting with user (after an optional system message)') -}}
{%- endif -%}
{%- if message['role'] == 'user' -%}
{%- if loop.first and system -%}
{{- '[INST] ' + system + '\n\n' + message['content'] + ' [/INST]' -}}
{%- else -%}
{{- '[INST] ' + message['content'] + ' [/INST]' -}}
{%- endif -%}
{%- elif message['role'] == 'assistant' -%}
{{- message['content'] + eos_token -}}
{%- else -%}
{{- raise_exception('the mistral template takes system, user and assistant messages; got role ' + message['role']) -}}
{%- endif -%}
{%- endfor -%})JINJA";

// Zephyr / TinyLlama-Chat.
const char* kZephyr = R"JINJA({%- for message in messages -%}
{{- '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|assistant|>\n' -}}
{%- endif -%})JINJA";

const std::map<std::string, std::string>& sources() {
  static const std::map<std::string, std::string> m = {
      {"alpaca", kAlpaca}, {"chatml", kChatml}, {"llama3", kLlama3}, {"mistral", kMistral}, {"zephyr", kZephyr}};
  return m;
}

}  // namespace

const std::vector<std::string>& named_templates() {
  static const std::vector<std::string> names = {"alpaca", "chatml", "llama3", "mistral", "zephyr"};
  return names;
}

const std::string& named_template_source(const std::string& name) {
  auto it = sources().find(name);
  if (it == sources().end())
    throw DataError("unknown chat template \"" + name +
                    "\": use auto (the tokenizer's own), alpaca, chatml, llama3, mistral, zephyr, or a path to a .jinja file");
  return it->second;
}

}  // namespace llmtune::data
