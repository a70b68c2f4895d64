// The unstructured and N:M pruning methods as pure tensor functions (the prune pipeline applies
// them layer by layer): which weights to zero, and SparseGPT's OBS reconstruction of the rest.
// Shapes: W (O, I), O output rows, I input features. A mask is bool, true where a weight is pruned.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

namespace llmtune::pipelines {

// How much to prune: a fraction of each comparison group (unstructured), or an N:M pattern (keep N
// of every M consecutive input weights of a row, prune the other M−N).
struct SparsityTarget {
  double sparsity = 0.0;  // in [0, 1); for N:M, 1 − N/M
  int64_t n = 0, m = 0;   // m == 0: unstructured
  bool is_nm() const { return m > 0; }
  std::string describe() const;  // "50%" or "2:4"
};

// "2:4" → {0.5, 2, 4}; ConfigError naming `key` when malformed or not 1 ≤ N < M.
SparsityTarget parse_nm_pattern(const std::string& text, const std::string& key);

// The lowest scores pruned: within each row (floor(I·s) per row, ties to the lower index), or, for
// N:M, the M−N lowest of every group of M consecutive columns of each row. scores: (O, I).
at::Tensor mask_lowest_per_row(const at::Tensor& scores, const SparsityTarget& target);
// The floor(O·I·s) lowest scores of the whole matrix (unstructured only).
at::Tensor mask_lowest_per_tensor(const at::Tensor& scores, double sparsity);

// Magnitude: |W_ij|. Wanda (Sun et al. 2023): |W_ij| · ‖X_j‖₂, sq_norms (I,) = Σ_tokens x_j².
at::Tensor magnitude_scores(const at::Tensor& weight);
at::Tensor wanda_scores(const at::Tensor& weight, const at::Tensor& sq_norms);

struct SparseGptOptions {
  double damp = 0.01;        // added to the Hessian's diagonal, times the diagonal's mean
  int64_t block_size = 128;  // columns per lazy batch update (and per unstructured mask selection)
};

// SparseGPT (Frantar & Alistarh 2023): columns visited left to right; each pruned weight's error,
// divided by the inverse Hessian's diagonal, is spread over the remaining columns through the upper
// Cholesky factor of H⁻¹, within a block at once and to later blocks in one product per block. The
// mask is chosen per block of columns, by w²/[H⁻¹]²_jj over the whole block (unstructured: exactly
// floor(O·B·s) weights per block of B columns), or, for N:M, per group of M columns as the sweep
// reaches it. Columns whose Hessian diagonal is 0 (inputs always zero) are zeroed.
// weight (O, I), hessian (I, I) as RecordingLinear::hessian(). Returns the pruned weight in fp32.
at::Tensor sparsegpt_prune(const at::Tensor& weight, const at::Tensor& hessian, const SparsityTarget& target,
                           const SparseGptOptions& options = {});

}  // namespace llmtune::pipelines
