// act(gate) * up with a backward that recomputes act(gate) (gated_act.h).
#include "llmtune/ops/gated_act.h"

#include <ATen/core/grad_mode.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/gelu_backward.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/silu_backward.h>
#include <torch/csrc/autograd/custom_function.h>

namespace llmtune::ops {
namespace {

at::Tensor activate(const at::Tensor& x, GateActivation act) {
  return act == GateActivation::Silu ? at::silu(x) : at::gelu(x, "tanh");
}

struct GatedActivation : public torch::autograd::Function<GatedActivation> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& gate, const at::Tensor& up,
                            int64_t act) {
    ctx->save_for_backward({gate, up});
    ctx->saved_data["act"] = act;
    return activate(gate, static_cast<GateActivation>(act)) * up;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &gate = saved[0], &up = saved[1], &g = grad_outputs[0];
    const auto act = static_cast<GateActivation>(ctx->saved_data["act"].toInt());
    // mul's backward (g · up to the activation, g · act(gate) to up), then the activation's.
    at::Tensor grad_gate, grad_up;
    if (ctx->needs_input_grad(0)) {
      const at::Tensor g_act = g * up;
      grad_gate = act == GateActivation::Silu ? at::silu_backward(g_act, gate) : at::gelu_backward(g_act, gate, "tanh");
    }
    if (ctx->needs_input_grad(1)) grad_up = g * activate(gate, act);
    return {grad_gate, grad_up, at::Tensor()};
  }
};

}  // namespace

at::Tensor gated_activation(const at::Tensor& gate, const at::Tensor& up, GateActivation act) {
  if (!at::GradMode::is_enabled() || !(gate.requires_grad() || up.requires_grad())) return activate(gate, act) * up;
  return GatedActivation::apply(gate, up, static_cast<int64_t>(act));
}

}  // namespace llmtune::ops
