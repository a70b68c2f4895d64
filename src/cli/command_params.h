// The config schemas of prune, quantize, eval and serve and the functions that turn a resolved
// config into each command's parameters (with the command's up-front checks, which throw the first
// problem): the commands run them, and `llmtune validate` runs the same ones without running.
#pragma once

#include "common.h"
#include "llmtune/pipelines/eval.h"
#include "llmtune/pipelines/prune.h"
#include "llmtune/pipelines/quantize.h"
#include "llmtune/serve/serve.h"
#include "llmtune/util/config.h"

namespace llmtune::cli {

config::Schema prune_schema();
pipelines::PruneParams prune_params(const config::Config& cfg);

config::Schema quantize_schema();
// gptq.method set for --method gptq|rtn, else bnb.type or gguf.type.
pipelines::QuantizeParams quantize_params(const config::Config& cfg);

config::Schema eval_schema();
pipelines::EvalParams eval_params(const config::Config& cfg);

config::Schema serve_schema();
// Everything but on_listening (the caller's).
serve::ServeParams serve_params(const config::Config& cfg);

}  // namespace llmtune::cli
