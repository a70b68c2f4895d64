// The gated MLP's middle, act(gate) * up (SwiGLU with silu, GeGLU with tanh-GELU), as one autograd
// function that saves gate and up only and recomputes act(gate) in the backward: autograd's own
// graph also keeps act(gate), one more intermediate-wide tensor per token and layer. The forward and
// both gradients are the same operations autograd runs, so the results are bit-identical to
// `at::silu(gate) * up` (or `at::gelu(gate, "tanh") * up`).
#pragma once

#include <ATen/core/Tensor.h>

namespace llmtune::ops {

enum class GateActivation { Silu, GeluTanh };

// gate, up: the same shape and dtype. Without autograd recording it is the plain product.
at::Tensor gated_activation(const at::Tensor& gate, const at::Tensor& up, GateActivation act);

}  // namespace llmtune::ops
