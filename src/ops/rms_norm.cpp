// RMSNorm: argument checks, the ATen reference, and dispatch to the CUDA kernel.
#include "llmtune/ops/rms_norm.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/mean.h>
#include <ATen/ops/rsqrt.h>

#include "../../kernels/cuda_runtime_info.h"
#include "../../kernels/launchers.h"
#include "llmtune/util/error.h"
#include "llmtune/util/log.h"

namespace llmtune::ops {

at::Tensor rms_norm_reference(const at::Tensor& x, const at::Tensor& weight, double eps, bool unit_offset) {
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor normed = xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  if (unit_offset) return (normed * (weight.to(at::kFloat) + 1.0)).to(x.scalar_type());
  return weight * normed.to(x.scalar_type());
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps, bool unit_offset) {
  TORCH_CHECK(x.dim() >= 1, "rms_norm: x must have at least one dimension");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(-1), "rms_norm: weight shape ", weight.sizes(),
              " does not match the last dimension of x ", x.sizes());
  TORCH_CHECK(eps >= 0, "rms_norm: eps must be >= 0");
  TORCH_CHECK(x.device() == weight.device(), "rms_norm: x on ", x.device(), " but weight on ", weight.device());
  // The kernel has no backward yet: training (autograd recording) takes the reference path.
  const bool recording = at::GradMode::is_enabled() && (x.requires_grad() || weight.requires_grad());
  if (x.is_cuda() && kernels::cuda_kernels_compiled() && !recording) {
    bool kernel_ok = x.scalar_type() == weight.scalar_type() &&
                     (x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16);
    if (kernel_ok) return kernels::rms_norm_forward_cuda(x.contiguous(), weight.contiguous(), eps, unit_offset);
    if (log::first_time("rms_norm.fallback"))
      spdlog::debug("rms_norm: x {} / weight {} has no CUDA kernel; using the ATen reference",
                    c10::toString(x.scalar_type()), c10::toString(weight.scalar_type()));
  }
  return rms_norm_reference(x, weight, eps, unit_offset);
}

}  // namespace llmtune::ops
