// Where a model lives: a local directory, or a Hugging Face repo id looked up in the local hub
// cache. llmtune never downloads anything.
#pragma once

#include <filesystem>
#include <string>

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

}  // namespace llmtune::io
