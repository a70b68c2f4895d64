// Hugging Face model directories: where a model lives (a local directory, or a repo id looked up in
// the local hub cache; llmtune never downloads anything), and the conventions of the files beside
// its weights (config.json's dtype names, the tokenizer files) that every writer of one shares.
#pragma once

#include <c10/core/ScalarType.h>

#include <filesystem>
#include <string>
#include <vector>

namespace llmtune::io {

// `spec` is an existing local directory (returned as is), or a repo id "org/name" (or "name"),
// found in the hub cache at <cache>/models--org--name/snapshots/<revision>/. The cache is
// $HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else
// ~/.cache/huggingface/hub (huggingface_hub's order). The revision is the one refs/main names when
// that snapshot exists, else the most recently modified snapshot. Nothing found -> ModelLoadError
// listing every place looked at.
std::filesystem::path resolve_model_dir(const std::string& spec);

// The hub cache directory the rules above pick (it may not exist).
std::filesystem::path hf_hub_cache_dir();

// config.json's dtype names ("dtype", or "torch_dtype" in older files): bfloat16, float16, float32.
// An empty name gives `fallback`; an unknown one gives `fallback` too, with a warning (once per name).
c10::ScalarType dtype_from_config_name(const std::string& name, c10::ScalarType fallback);
// The inverse: "bfloat16", "float16", "float32"; "" for any other dtype.
std::string config_dtype_name(c10::ScalarType dtype);

// Writes <out_dir>/config.json: <base_dir>/config.json with its dtype set to `dtype`, under the key
// the base spells it with ("dtype" and/or "torch_dtype"; "dtype" when it has neither). Undefined
// (or a dtype config.json cannot name) keeps the base's value. Key order is kept.
void write_config_with_dtype(const std::filesystem::path& base_dir, const std::filesystem::path& out_dir,
                             c10::ScalarType dtype);

// The files a Hugging Face directory holds next to its weights for tokenization and chat
// (tokenizer.json, tokenizer.model, tokenizer_config.json, special_tokens_map.json,
// added_tokens.json, chat_template.jinja, chat_template.json, vocab.json, merges.txt).
const std::vector<std::string>& tokenizer_files();
// Copies those of tokenizer_files() that `from` has into `to` (replacing any there); returns how many.
int copy_tokenizer_files(const std::filesystem::path& from, const std::filesystem::path& to);

}  // namespace llmtune::io
