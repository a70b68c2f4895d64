// Gradient checkpointing: run a block without keeping its activations and recompute it in
// backward (the reentrant scheme of torch.utils.checkpoint, as one autograd node).
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <vector>

namespace llmtune::model {

// y = block(x). When autograd is recording and x or any of `tensors` requires grad, the forward
// runs without recording; backward re-runs block (with the RNG state of the first run, so dropout
// masks repeat) and returns the gradients of x and of the tensors that require grad.
// `tensors`: everything block reads that may require grad (weights, adapter tensors).
at::Tensor recompute_in_backward(std::function<at::Tensor(const at::Tensor&)> block, const at::Tensor& x,
                                 const std::vector<at::Tensor>& tensors);

}  // namespace llmtune::model
