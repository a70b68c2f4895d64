// Folding an adapter into its base weight, as PEFT's merge_and_unload does (LoRA / rsLoRA:
// W + s·B·A; DoRA: m/‖W + s·B·A‖_row · (W + s·B·A), the norm taken over the unmerged sum).
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/matmul.h>

#include "llmtune/peft/lora.h"

namespace llmtune::peft {

at::Tensor merge_lora_weight(const at::Tensor& w, const AdapterModuleTensors& module, double scaling) {
  // PEFT computes the delta in the adapter's dtype (fp32 on CPU for half adapters) and adds it to
  // the base weight with type promotion; we do the whole sum in fp32 and cast once at the end.
  at::Tensor delta = at::matmul(module.b.to(at::kFloat), module.a.to(at::kFloat)) * scaling;  // (out, in)
  at::Tensor merged = w.to(at::kFloat) + delta;
  if (!module.magnitude.defined()) return merged;
  at::Tensor norm = at::linalg_vector_norm(merged, 2, {1}, /*keepdim=*/true);  // (out, 1)
  return module.magnitude.to(at::kFloat).view({-1, 1}) / norm * merged;
}

}  // namespace llmtune::peft
