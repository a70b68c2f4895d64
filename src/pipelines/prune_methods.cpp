// Pruning masks and SparseGPT's reconstruction, as pure tensor functions (fp32 throughout).
#include "llmtune/pipelines/prune_methods.h"

#include <ATen/ops/cholesky_inverse.h>
#include <ATen/ops/linalg_cholesky.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/sqrt.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>
#include <fmt/format.h>

#include <algorithm>
#include <charconv>

#include "llmtune/quant/column_solver.h"
#include "llmtune/util/error.h"

namespace llmtune::pipelines {

std::string SparsityTarget::describe() const {
  return is_nm() ? fmt::format("{}:{}", n, m) : fmt::format("{:g}%", sparsity * 100.0);
}

SparsityTarget parse_nm_pattern(const std::string& text, const std::string& key) {
  const size_t colon = text.find(':');
  int64_t n = 0, m = 0;
  auto number = [](std::string_view s, int64_t& v) {
    auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    return !s.empty() && ec == std::errc() && ptr == s.data() + s.size();
  };
  if (colon == std::string::npos || !number(std::string_view(text).substr(0, colon), n) ||
      !number(std::string_view(text).substr(colon + 1), m))
    throw ConfigError(key + ": '" + text + "' is not an N:M pattern (write it as 2:4 or 4:8: keep N of every M weights)");
  if (n < 1 || m > 1024 || n >= m)
    throw ConfigError(key + ": '" + text + "' keeps N of every M weights and needs 1 <= N < M (e.g. 2:4, 4:8)");
  return {1.0 - static_cast<double>(n) / static_cast<double>(m), n, m};
}

namespace {

// Indices of the k lowest entries along the last dimension; equal scores keep their column order.
at::Tensor lowest(const at::Tensor& scores, int64_t k) {
  return std::get<1>(at::sort(scores, /*stable=*/true, /*dim=*/-1, /*descending=*/false)).narrow(-1, 0, k);
}

// k = floor(count · s), as Python's int() of the product.
int64_t prune_count(int64_t count, double sparsity) {
  return static_cast<int64_t>(static_cast<double>(count) * sparsity);
}

}  // namespace

at::Tensor mask_lowest_per_row(const at::Tensor& scores, const SparsityTarget& target) {
  TORCH_CHECK(scores.dim() == 2, "mask_lowest_per_row: scores must be (out, in)");
  const int64_t rows = scores.size(0), cols = scores.size(1);
  at::Tensor mask = at::zeros({rows, cols}, scores.options().dtype(at::kBool));
  if (target.is_nm()) {
    TORCH_CHECK(cols % target.m == 0, "mask_lowest_per_row: ", cols, " columns are not a multiple of M=", target.m);
    at::Tensor groups = scores.reshape({rows, cols / target.m, target.m});
    at::Tensor group_mask = mask.view({rows, cols / target.m, target.m});
    group_mask.scatter_(-1, lowest(groups, target.m - target.n), true);
    return mask;
  }
  const int64_t k = prune_count(cols, target.sparsity);
  if (k > 0) mask.scatter_(1, lowest(scores, k), true);
  return mask;
}

at::Tensor mask_lowest_per_tensor(const at::Tensor& scores, double sparsity) {
  at::Tensor flat = at::zeros({scores.numel()}, scores.options().dtype(at::kBool));
  const int64_t k = prune_count(scores.numel(), sparsity);
  if (k > 0) flat.scatter_(0, lowest(scores.reshape({-1}), k), true);
  return flat.view(scores.sizes());
}

at::Tensor magnitude_scores(const at::Tensor& weight) { return weight.to(at::kFloat).abs(); }

at::Tensor wanda_scores(const at::Tensor& weight, const at::Tensor& sq_norms) {
  TORCH_CHECK(sq_norms.dim() == 1 && sq_norms.size(0) == weight.size(1), "wanda_scores: one norm per input feature");
  return weight.to(at::kFloat).abs() * at::sqrt(sq_norms.to(at::kFloat)).unsqueeze(0);
}

at::Tensor sparsegpt_prune(const at::Tensor& weight, const at::Tensor& hessian, const SparsityTarget& target,
                           const SparseGptOptions& options) {
  const int64_t rows = weight.size(0), cols = weight.size(1);
  TORCH_CHECK(hessian.dim() == 2 && hessian.size(0) == cols && hessian.size(1) == cols,
              "sparsegpt_prune: the Hessian must be (in, in)");
  TORCH_CHECK(!target.is_nm() || (target.m <= 1024 && cols % target.m == 0 && options.block_size % target.m == 0),
              "sparsegpt_prune: M=", target.m, " must divide the columns (", cols, ") and the block size");
  at::Tensor w = weight.to(at::kFloat).clone();
  at::Tensor h = hessian.to(at::kFloat).clone();
  // Inputs that were always zero: their columns carry nothing, and are pruned.
  at::Tensor diag = h.diagonal();
  const at::Tensor dead = diag == 0;
  diag.masked_fill_(dead, 1.0);
  w.masked_fill_(dead.unsqueeze(0), 0.0);
  diag.add_(diag.mean() * options.damp);
  // The upper Cholesky factor of H⁻¹: row j holds what pruning column j does to columns j.. .
  at::Tensor u;
  try {
    u = at::linalg_cholesky(at::cholesky_inverse(at::linalg_cholesky(h)), /*upper=*/true);
  } catch (const c10::Error&) {
    throw Error("sparsegpt: the calibration Hessian is not positive definite even after damping; use more "
                "calibration samples or longer sequences");
  }
  for (int64_t b0 = 0; b0 < cols; b0 += options.block_size) {
    const int64_t count = std::min(options.block_size, cols - b0);
    at::Tensor w1 = w.narrow(1, b0, count).clone();
    const at::Tensor u1 = u.narrow(0, b0, count).narrow(1, b0, count);
    const at::Tensor d1 = u1.diagonal().cpu().contiguous();
    const float* dp = d1.data_ptr<float>();
    // The block's mask: unstructured, the lowest scores of the whole block as it stands at its start;
    // N:M, chosen in each group of M columns when the loop reaches it (from the updated values).
    at::Tensor mask1 = at::zeros({rows, count}, at::TensorOptions().dtype(at::kBool));
    if (!target.is_nm()) {
      at::Tensor score = w1.square() / u1.diagonal().square().unsqueeze(0);
      mask1 = mask_lowest_per_tensor(score, target.sparsity).cpu().contiguous();
    }
    bool* mp = mask1.data_ptr<bool>();
    const int64_t m = target.m, pruned_per_group = target.m - target.n;
    const at::Tensor err1 = quant::solve_columns(w1, u1, [&](int64_t r, int64_t j, const float* row) {
      bool* mrow = mp + r * count;
      if (target.is_nm() && j % m == 0) {
        // The M − N lowest of row[j..j+M) by w² / d², equal scores in column order (a stable sort).
        int64_t order[1024];
        float score[1024];
        for (int64_t k = 0; k < m; ++k) {
          order[k] = k;
          score[k] = (row[j + k] * row[j + k]) / (dp[j + k] * dp[j + k]);
        }
        std::stable_sort(order, order + m, [&](int64_t a, int64_t b) { return score[a] < score[b]; });
        for (int64_t k = 0; k < pruned_per_group; ++k) mrow[j + order[k]] = true;
      }
      return mrow[j] ? 0.0f : row[j];
    });
    w.narrow(1, b0, count).copy_(w1);
    if (b0 + count < cols)
      w.narrow(1, b0 + count, cols - b0 - count).sub_(err1.matmul(u.narrow(0, b0, count).narrow(1, b0 + count, cols - b0 - count)));
  }
  return w;
}

}  // namespace llmtune::pipelines
