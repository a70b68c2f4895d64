// Calibration, layer by layer (Wanda, SparseGPT, GPTQ): the statistics of each linear's inputs,
// gathered by a wrapper put into the linear's slot while one decoder layer runs on the calibration
// sequences, and the sequential driver that feeds each (pruned or quantized) layer's outputs to the
// next, so memory holds one layer's activations for N×T tokens, never the whole model's.
// Shapes: N sequences, T tokens, H hidden, I a linear's input features.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "llmtune/model/causal_lm.h"
#include "llmtune/model/linear.h"

namespace llmtune::model {

// Which input statistics a RecordingLinear accumulates (in fp32, on the inner linear's device).
struct InputStatsWanted {
  bool sq_norms = false;  // ‖X_j‖₂² per input channel, summed over every token seen
  bool hessian = false;   // H = 2/n · Σ x xᵀ, n counting sequences (SparseGPT's and GPTQ's convention)
};

// Forwards to the wrapped linear and records statistics of what it was given.
class RecordingLinear : public Linear {
 public:
  RecordingLinear(LinearPtr inner, InputStatsWanted wanted);
  at::Tensor forward(const at::Tensor& x) const override;  // x: (N, T, I) or (..., I)
  int64_t in_features() const override { return inner_->in_features(); }
  int64_t out_features() const override { return inner_->out_features(); }
  std::vector<at::Tensor> tensors() const override { return inner_->tensors(); }
  at::Tensor dense_weight() const override { return inner_->dense_weight(); }
  at::Tensor bias() const override { return inner_->bias(); }

  const LinearPtr& inner() const { return inner_; }
  const at::Tensor& sq_norms() const { return sq_norms_; }  // (I,) fp32; undefined when not wanted
  // (I, I) fp32: 2/n Σ x xᵀ over the n sequences seen (a batch of shape (N, T, I) counts N).
  at::Tensor hessian() const;
  int64_t tokens() const { return tokens_; }
  int64_t sequences() const { return sequences_; }

 private:
  LinearPtr inner_;
  InputStatsWanted wanted_;
  mutable at::Tensor sq_norms_, xtx_;  // sums over every token
  mutable int64_t tokens_ = 0, sequences_ = 0;
};

// One linear of the layer being calibrated: its module path, its slot (holding a RecordingLinear
// while the layer's statistics are gathered) and those statistics.
struct CalibratedLinear {
  std::string path;  // "model.layers.3.mlp.down_proj"
  LinearPtr* slot = nullptr;
  std::shared_ptr<RecordingLinear> recorder;
};

struct LayerwiseOptions {
  InputStatsWanted wanted;
  // Linears not to record (nor hand to `update`): paths for which this returns true.
  std::function<bool(const std::string& path)> skip;
  int64_t tokens_per_forward = 8192;  // sequences run together per forward call, at least one
};

// For each decoder layer in order: records its linears' inputs over every calibration sequence
// (all from the layer as it was before `update`), calls update(layer, linears) (which may replace
// the linears in their slots, e.g. with pruned ones), then runs the updated layer on the same
// inputs to produce the next layer's inputs. hidden: (N, T, H), the first layer's inputs
// (CausalLM::embed), consumed. Positions are 0..T-1 in every sequence.
void run_layerwise(CausalLM& model, at::Tensor hidden, const LayerwiseOptions& options,
                   const std::function<void(int64_t layer, std::vector<CalibratedLinear>& linears)>& update);

}  // namespace llmtune::model
