// A model family as a description: the tensors it has (transformers and GGUF names, which linears
// are fused and how their outputs split), how config.json sets its switches, and what GGUF export
// and import do for it. The loader, named_linears/named_weights, checkpoint lists and the GGUF
// name maps all derive from it; one file per family under src/model/ fills one in.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <utility>
#include <vector>

#include "llmtune/model/config.h"

namespace llmtune::model {

// What a projection's output is. A fused linear (Phi-3's qkv_proj, gate_up_proj) holds several,
// concatenated along the output dimension in the order listed.
enum class Proj { Q, K, V, O, Gate, Up, Down };

// Which of a decoder layer's norms: before attention, before the MLP (Llama's
// post_attention_layernorm), on the attention output and on the MLP output before each residual add
// (Gemma 2/3's sandwich norms), and per head on queries and keys before RoPE (Qwen3, Gemma 3).
enum class NormRole { Input, PostAttention, AttnOut, MlpOut, QHead, KHead };

struct LinearDesc {
  std::string name;          // module path inside a layer: "self_attn.q_proj"
  std::string gguf;          // its GGUF name inside blk.N: "attn_q"
  std::vector<Proj> parts;   // what its output holds (one entry, or several for a fused linear)
};

struct NormDesc {
  NormRole role;
  std::string name;  // "input_layernorm"
  std::string gguf;  // "attn_norm"
};

// (H,) for the layer norms, (head_dim,) for the per-head q/k norms.
int64_t norm_size(const ModelConfig& c, NormRole role);

// Which <arch>.* keys llama.cpp's converter writes, and in which order: its TextModel base set
// (qwen2), LlamaModel's (plus vocab_size and rope.dimension_count), or GemmaModel's own.
enum class GgufKeys { Text, Llama, Gemma, Gemma2, Gemma3, Phi3, Gpt2 };

struct GgufDesc {
  std::string arch;            // general.architecture ("" when the family has no GGUF form)
  GgufKeys keys = GgufKeys::Llama;
  bool permute_qk = false;     // q/k rows interleaved for llama.cpp's NORM rope (llama)
  bool norm_plus_one = false;  // every *norm.weight stored as 1 + w (gemma)
  bool drop_lm_head = false;   // the converter never writes output.weight (gemma)
  bool loads_arch = true;      // a GGUF of `arch` loads as this family (false: mistral, read as llama)
};

struct FamilyDesc {
  std::string model_type;  // config.json's model_type
  std::string layers_prefix = "model.layers.";
  std::string embed = "model.embed_tokens", final_norm = "model.norm", lm_head = "lm_head";
  std::string embed_gguf = "token_embd", final_norm_gguf = "output_norm", lm_head_gguf = "output";
  // Learned absolute position embeddings (GPT-2's wpe), "" when positions come from RoPE.
  std::string pos_embed, pos_embed_gguf;
  // Norms are LayerNorms with a bias (GPT-2), not RMSNorms.
  bool layer_norm = false;
  // Linear weights are stored (in, out), as GPT-2's Conv1D keeps them (PEFT's fan_in_fan_out); the
  // model holds them (out, in), transposed once while loading and back when written.
  bool conv1d = false;
  // A prefix some checkpoints leave off every name (GPT-2's own files: "h.0.attn.c_attn.weight").
  std::string optional_prefix;
  // The family always ties lm_head to the embeddings, whatever tie_word_embeddings says (GPT-2):
  // no warning when a checkpoint has none.
  bool lm_head_optional = false;
  std::vector<NormDesc> norms;      // per layer, in checkpoint order
  std::vector<LinearDesc> linears;  // per layer, in checkpoint order (q, k, v, o, gate, up, down)
  GgufDesc gguf;
  // Before the shared fields are parsed: the family's own spellings of them (GPT-2's n_embd, ...)
  // copied to the shared names. May be empty.
  std::function<void(nlohmann::json& j, const std::string& source)> prepare;
  // After the fields every family shares are parsed: the family's own switches (biases, norm
  // offset, sliding windows, ...). May throw ModelLoadError naming `source`.
  std::function<void(ModelConfig& c, const nlohmann::json& j, const std::string& source)> configure;
};

// Llama's names and layout: the starting point every family file edits.
FamilyDesc llama_layout(std::string model_type);

// The registry: the built-in families, plus any registered at run time (a test's own family).
void register_family(FamilyDesc family);
const FamilyDesc* find_family(const std::string& model_type);
// ModelLoadError naming `source` and the supported model types when there is none.
const FamilyDesc& family_for(const std::string& model_type, const std::string& source);
// The family a GGUF of architecture `arch` loads as; nullptr when none.
const FamilyDesc* family_for_gguf_arch(const std::string& arch);
std::vector<std::string> supported_model_types();
std::vector<std::string> supported_gguf_archs();

// Shapes from the config.
int64_t proj_out_features(const ModelConfig& c, Proj p);
int64_t proj_in_features(const ModelConfig& c, Proj p);
bool proj_has_bias(const ModelConfig& c, Proj p);

// One linear of a model: its module path, shape and whether it has a bias.
struct LinearShape {
  std::string path;  // "model.layers.3.self_attn.q_proj", "lm_head"
  int64_t out_features = 0, in_features = 0;
  bool bias = false;
};
LinearShape linear_shape(const FamilyDesc& f, const ModelConfig& c, int64_t layer, const LinearDesc& l);

// Every tensor a model of `c` has, by transformers name and PyTorch shape, in load order:
// embeddings, per layer the norms then the linears (weight, bias), final norm, lm_head.
std::vector<std::pair<std::string, std::vector<int64_t>>> checkpoint_tensors(const FamilyDesc& f, const ModelConfig& c,
                                                                             bool with_lm_head);

// The number of parameters of a model of `c` (checkpoint_tensors' total, computed without listing
// them: layer 0's count times the layers), as a double so that no config can overflow it.
double parameter_count(const FamilyDesc& f, const ModelConfig& c, bool with_lm_head);

// "model.layers.3.self_attn.q_proj.weight" → "blk.3.attn_q.weight"; "" for a name with no GGUF
// counterpart.
std::string hf_to_gguf_name(const FamilyDesc& f, const std::string& hf_name);
// Whether `hf_name` is one of the family's norm weights (per layer or final).
bool is_norm_weight(const FamilyDesc& f, const std::string& hf_name);
// The projections a tensor or module name holds (empty when not a layer linear).
std::vector<Proj> projections_of(const FamilyDesc& f, const std::string& hf_name);
// Whether checkpoint tensor `hf_name` is a linear weight stored (in, out) (GPT-2's Conv1D), with or
// without the family's optional prefix.
bool stored_in_out(const FamilyDesc& f, const std::string& hf_name);

}  // namespace llmtune::model
