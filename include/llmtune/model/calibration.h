// Calibration, layer by layer (Wanda, SparseGPT, GPTQ): the statistics of each linear's inputs,
// gathered by a wrapper put into the linear's slot while one decoder layer runs on the calibration
// sequences, and the sequential driver that feeds each (pruned or quantized) layer's outputs to the
// next, so memory holds one layer's activations for N×T tokens, never the whole model's.
// Shapes: N sequences, T tokens, H hidden, I a linear's input features.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
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

// The statistics of one stream of inputs. Linears that read the same tensor (q/k/v from the same
// normed hidden states, gate/up) share one: XᵀX of a (tokens × 5632) input is the largest cost of a
// calibration pass, and is made once per input, not once per reader.
struct InputStats {
  at::Tensor sq_norms, xtx;  // sums over every token; xtx holds its upper block triangle only (see hessian())
  int64_t tokens = 0, sequences = 0;
  int64_t inputs = 0;  // distinct inputs accumulated
  at::Tensor last;     // the last of them, held so that its identity is not reused by a new tensor
};

// The InputStats of one decoder layer's recorders: a recorder's first input binds it to the stats of
// a recorder that read the same tensor before it, or to new ones.
class SharedInputs {
 public:
  std::shared_ptr<InputStats> bind(const at::Tensor& x);

 private:
  std::vector<std::shared_ptr<InputStats>> stats_;
};

// Forwards to the wrapped linear and records statistics of what it was given. With `shared`,
// statistics are shared with the other recorders of the same SharedInputs that read the same tensors.
class RecordingLinear : public Linear {
 public:
  RecordingLinear(LinearPtr inner, InputStatsWanted wanted, std::shared_ptr<SharedInputs> shared = nullptr);
  at::Tensor forward(const at::Tensor& x) const override;  // x: (N, T, I) or (..., I)
  int64_t in_features() const override { return inner_->in_features(); }
  int64_t out_features() const override { return inner_->out_features(); }
  std::vector<at::Tensor> tensors() const override { return inner_->tensors(); }
  at::Tensor dense_weight() const override { return inner_->dense_weight(); }
  at::Tensor bias() const override { return inner_->bias(); }

  const LinearPtr& inner() const { return inner_; }
  // (I,) fp32; undefined when not wanted or nothing was seen
  at::Tensor sq_norms() const { return stats_ ? stats_->sq_norms : at::Tensor(); }
  // (I, I) fp32: 2/n Σ x xᵀ over the n sequences seen (a batch of shape (N, T, I) counts N).
  at::Tensor hessian() const;
  int64_t tokens() const { return stats_ ? stats_->tokens : 0; }
  int64_t sequences() const { return stats_ ? stats_->sequences : 0; }

 private:
  LinearPtr inner_;
  InputStatsWanted wanted_;
  std::shared_ptr<SharedInputs> shared_;
  mutable std::shared_ptr<InputStats> stats_;  // bound at the first forward
  mutable int64_t seen_ = 0;                   // distinct inputs this recorder has read
};

// xtx += xᵀx for x (tokens, I) in fp32, computing only the blocks on and above the diagonal when I is
// large (about 55% of the products at I = 5632); symmetric_gram(xtx) gives the whole matrix.
void accumulate_gram(at::Tensor& xtx, const at::Tensor& x);
at::Tensor symmetric_gram(const at::Tensor& xtx);

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
