// The checkpointing node: saves the block's input (detached) and the RNG state; its apply()
// recomputes the block under grad mode and backpropagates the incoming gradient through it.
#include "recompute.h"

#include <ATen/Context.h>
#include <ATen/core/Generator.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/grad_mode.h>

namespace llmtune::model {
namespace {

using torch::autograd::variable_list;

class RecomputeBackward : public torch::autograd::Node {
 public:
  RecomputeBackward(std::function<at::Tensor(const at::Tensor&)> block, at::Tensor x, bool x_requires_grad,
                    std::vector<at::Tensor> params, at::Generator gen, at::Tensor rng_state)
      : block_(std::move(block)), x_(std::move(x)), x_requires_grad_(x_requires_grad), params_(std::move(params)),
        gen_(std::move(gen)), rng_state_(std::move(rng_state)) {}

  variable_list apply(variable_list&& grads) override {
    at::Tensor x = x_.detach().requires_grad_(x_requires_grad_);
    at::Tensor y;
    {
      torch::autograd::AutoGradMode enable(true);
      // Replay the forward's random numbers, then put the generator back where backward found it.
      auto resume_state = gen_.get_state();
      gen_.set_state(rng_state_);
      y = block_(x);
      gen_.set_state(resume_state);
    }
    variable_list inputs;
    if (x_requires_grad_) inputs.push_back(x);
    inputs.insert(inputs.end(), params_.begin(), params_.end());
    return torch::autograd::grad({y}, inputs, {grads[0]}, /*retain_graph=*/false, /*create_graph=*/false,
                                 /*allow_unused=*/true);
  }

  std::string name() const override { return "llmtune::RecomputeBackward"; }

  void release_variables() override {
    x_ = at::Tensor();
    params_.clear();
  }

 private:
  std::function<at::Tensor(const at::Tensor&)> block_;
  at::Tensor x_;
  bool x_requires_grad_;
  std::vector<at::Tensor> params_;
  at::Generator gen_;
  at::Tensor rng_state_;
};

}  // namespace

at::Tensor recompute_in_backward(std::function<at::Tensor(const at::Tensor&)> block, const at::Tensor& x,
                                 const std::vector<at::Tensor>& tensors) {
  std::vector<at::Tensor> params;
  for (const at::Tensor& t : tensors)
    if (t.defined() && t.requires_grad()) params.push_back(t);
  const bool x_grad = x.requires_grad();
  if (!at::GradMode::is_enabled() || (!x_grad && params.empty())) return block(x);

  at::Generator gen = at::globalContext().defaultGenerator(x.device());
  at::Tensor state = gen.get_state();
  at::Tensor y;
  {
    at::NoGradGuard no_grad;
    y = block(x);
  }
  variable_list edges_of;
  if (x_grad) edges_of.push_back(x);
  edges_of.insert(edges_of.end(), params.begin(), params.end());
  auto node = c10::make_intrusive<RecomputeBackward>(std::move(block), x.detach(), x_grad, params, gen, state);
  node->set_next_edges(torch::autograd::collect_next_edges(edges_of));
  torch::autograd::set_history(y, node);
  return y;
}

}  // namespace llmtune::model
