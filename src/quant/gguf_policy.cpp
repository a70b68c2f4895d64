// llama.cpp's choice of a ggml type per tensor for a file type, following src/llama-quant.cpp for
// the file types listed in parse_file_type().
#include "llmtune/quant/gguf_policy.h"

#include <cctype>
#include <map>

#include "llmtune/util/error.h"

namespace llmtune::quant {
namespace {

using io::GgmlType;

std::string lower(std::string s) {
  for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

bool is_quantized(GgmlType t) { return t != GgmlType::F32 && t != GgmlType::F16 && t != GgmlType::BF16; }

}  // namespace

bool use_more_bits(int64_t i, int64_t n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

FileType parse_file_type(const std::string& name) {
  static const std::map<std::string, FileType> types = {
      {"f32", {"F32", 0, GgmlType::F32}},        {"f16", {"F16", 1, GgmlType::F16}},
      {"bf16", {"BF16", 32, GgmlType::BF16}},    {"q8_0", {"Q8_0", 7, GgmlType::Q8_0}},
      {"q4_0", {"Q4_0", 2, GgmlType::Q4_0}},     {"q4_1", {"Q4_1", 3, GgmlType::Q4_1}},
      {"q5_0", {"Q5_0", 8, GgmlType::Q5_0}},     {"q5_1", {"Q5_1", 9, GgmlType::Q5_1}},
      {"q4_k_s", {"Q4_K_S", 14, GgmlType::Q4_K}}, {"q4_k_m", {"Q4_K_M", 15, GgmlType::Q4_K}},
      {"q4_k", {"Q4_K_M", 15, GgmlType::Q4_K}},   {"q5_k_s", {"Q5_K_S", 16, GgmlType::Q5_K}},
      {"q5_k_m", {"Q5_K_M", 17, GgmlType::Q5_K}}, {"q5_k", {"Q5_K_M", 17, GgmlType::Q5_K}},
      {"q6_k", {"Q6_K", 18, GgmlType::Q6_K}}};
  auto it = types.find(lower(name));
  if (it == types.end())
    throw QuantError("GGUF type '" + name +
                     "' is not supported (supported: auto, f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k_s, "
                     "q4_k_m, q5_k_s, q5_k_m, q6_k)");
  return it->second;
}

FileType file_type_for_source(at::ScalarType first_matrix_dtype) {
  return parse_file_type(first_matrix_dtype == at::kBFloat16 ? "bf16" : "f16");
}

GgmlType choose_tensor_type(const FileType& ft, const std::string& name, const std::vector<int64_t>& ne,
                            int64_t layer, int64_t n_layers, bool tied, int64_t* n_fallback) {
  // The converter: 1-D tensors, norms and anything not a weight stay F32.
  const bool weight = name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0;
  if (ne.size() < 2 || !weight || name.find("_norm.weight") != std::string::npos) return GgmlType::F32;
  // Learned positions (GPT-2): the converter keeps them F32 and llama-quantize never quantizes them.
  if (name == "position_embd.weight") return GgmlType::F32;
  const GgmlType base = ft.base;
  const int64_t ncols = ne[0];
  if (!is_quantized(base)) return base;
  if (base == GgmlType::Q8_0 && ncols % 32 != 0) {  // the converter's fallback for its own Q8_0
    if (n_fallback) ++*n_fallback;
    return GgmlType::F16;
  }
  const bool output = name == "output.weight";
  const bool embd = name == "token_embd.weight";
  GgmlType t = base;
  if (output || (tied && embd)) {
    if (ncols % io::ggml_type_info(base).block_size != 0) t = GgmlType::Q8_0;
    else if (base != GgmlType::Q8_0) t = GgmlType::Q6_K;
  } else if (name.find("attn_v.weight") != std::string::npos || name.find("attn_qkv.weight") != std::string::npos) {
    // llama.cpp counts a fused attn_qkv as an attn_v (category_is_attn_v); one per layer, visited
    // in layer order: its i_attention_wv is the layer
    if ((ft.name == "Q4_K_M" || ft.name == "Q5_K_M") && use_more_bits(layer, n_layers)) t = GgmlType::Q6_K;
    else if (ft.name == "Q4_K_S" && layer < 4) t = GgmlType::Q5_K;
  } else if (name.find("ffn_down") != std::string::npos) {
    if ((ft.name == "Q4_K_M" || ft.name == "Q5_K_M") && use_more_bits(layer, n_layers)) t = GgmlType::Q6_K;
    else if (ft.name == "Q4_K_S" && layer < n_layers / 8) t = GgmlType::Q5_K;
  }
  // tensor_type_fallback: shapes the chosen type cannot hold.
  if (ncols % io::ggml_type_info(t).block_size != 0) {
    if (n_fallback) ++*n_fallback;
    GgmlType f;
    switch (t) {
      case GgmlType::Q4_K: f = GgmlType::Q5_0; break;
      case GgmlType::Q5_K: f = GgmlType::Q5_1; break;
      case GgmlType::Q6_K: f = GgmlType::Q8_0; break;
      default:
        throw QuantError("tensor " + name + ": ne[0] = " + std::to_string(ncols) + " is not a multiple of " +
                         std::to_string(io::ggml_type_info(t).block_size) + " as " + io::ggml_type_info(t).name +
                         " needs, and llama.cpp defines no fallback for it");
    }
    t = ncols % io::ggml_type_info(f).block_size == 0 ? f : GgmlType::F16;
  }
  return t;
}

}  // namespace llmtune::quant
