// GPTQ and RTN (gptq.h), in the reference's order of operations so that codes agree with it except
// where a value lies within float rounding of a rounding boundary.
#include "llmtune/quant/gptq.h"

#include <ATen/ops/argsort.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cholesky_inverse.h>
#include <ATen/ops/clamp.h>
#include <ATen/ops/full.h>
#include <ATen/ops/linalg_cholesky.h>
#include <ATen/ops/maximum.h>
#include <ATen/ops/minimum.h>
#include <ATen/ops/round.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "llmtune/quant/column_solver.h"
#include "llmtune/quant/gptq_linear.h"
#include "llmtune/util/error.h"

namespace llmtune::quant {
namespace {

double max_code(const GroupQuantOptions& o) { return std::ldexp(1.0, static_cast<int>(o.bits)) - 1.0; }

void check_options(const GroupQuantOptions& o, int64_t cols) {
  if (!supported_bits(o.bits))
    throw ConfigError(fmt::format("bits: {} is not one of 2, 3, 4, 8", o.bits));
  if (o.group_size != -1 && o.group_size < 1) throw ConfigError(fmt::format("group size: {} (use a positive size or -1)", o.group_size));
  (void)cols;
}

int64_t group_count(int64_t cols, int64_t group_size) { return group_size == -1 ? 1 : (cols + group_size - 1) / group_size; }

at::Tensor group_index(int64_t cols, int64_t group_size, const at::TensorOptions& options) {
  at::Tensor g = at::arange(cols, options.dtype(at::kLong));
  return (group_size == -1 ? at::zeros_like(g) : g.div(group_size, "floor")).to(at::kInt);
}

}  // namespace

std::pair<at::Tensor, at::Tensor> find_group_params(const at::Tensor& x, const GroupQuantOptions& o) {
  const double maxq = max_code(o);
  const at::Tensor zero0 = at::zeros({}, x.options());
  at::Tensor xmin = at::minimum(std::get<0>(x.min(1)), zero0);
  at::Tensor xmax = at::maximum(std::get<0>(x.max(1)), zero0);
  if (o.sym) {
    xmax = at::maximum(xmin.abs(), xmax);
    xmin = at::where(xmin < 0, -xmax, xmin);
  }
  const at::Tensor both_zero = (xmin == 0).logical_and(xmax == 0);
  xmin = at::where(both_zero, at::full({}, -1.0, x.options()), xmin);
  xmax = at::where(both_zero, at::full({}, 1.0, x.options()), xmax);
  const at::Tensor scale = (xmax - xmin) / maxq;
  const at::Tensor zero = o.sym ? at::full_like(scale, (maxq + 1) / 2) : at::round(-xmin / scale);
  return {scale, zero.to(at::kInt)};
}

at::Tensor GroupQuantized::dequantized() const {
  const at::Tensor g = g_idx.to(at::kLong);
  const at::Tensor s = scales.index_select(1, g), z = zeros.index_select(1, g).to(at::kFloat);
  return s * (codes.to(at::kFloat) - z);
}

GroupQuantized rtn_quantize(const at::Tensor& weight, const GroupQuantOptions& o) {
  const at::Tensor w = weight.to(at::kFloat);
  const int64_t rows = w.size(0), cols = w.size(1);
  check_options(o, cols);
  const int64_t groups = group_count(cols, o.group_size), width = o.group_size == -1 ? cols : o.group_size;
  GroupQuantized out;
  out.codes = at::empty({rows, cols}, w.options().dtype(at::kByte));
  out.scales = at::empty({rows, groups}, w.options());
  out.zeros = at::empty({rows, groups}, w.options().dtype(at::kInt));
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t c0 = g * width, n = std::min(width, cols - c0);
    const at::Tensor x = w.narrow(1, c0, n);
    auto [scale, zero] = find_group_params(x, o);
    out.scales.select(1, g).copy_(scale);
    out.zeros.select(1, g).copy_(zero);
    out.codes.narrow(1, c0, n).copy_(at::clamp(at::round(x / scale.unsqueeze(1)) + zero.unsqueeze(1).to(at::kFloat), 0.0, max_code(o)));
  }
  out.g_idx = group_index(cols, o.group_size, w.options());
  return out;
}

GroupQuantized gptq_quantize(const at::Tensor& weight, const at::Tensor& hessian, const GptqOptions& options,
                             const std::string& layer) {
  const GroupQuantOptions& o = options.quant;
  const double maxq = max_code(o);
  at::Tensor w = weight.to(at::kFloat).clone();
  const int64_t rows = w.size(0), cols = w.size(1);
  check_options(o, cols);
  TORCH_CHECK(hessian.dim() == 2 && hessian.size(0) == cols && hessian.size(1) == cols, "gptq_quantize: the Hessian must be (in, in)");
  const int64_t gs = o.group_size, groups = group_count(cols, gs);
  GroupQuantized out;
  out.scales = at::empty({rows, groups}, w.options());
  out.zeros = at::empty({rows, groups}, w.options().dtype(at::kInt));
  // One group per row: its parameters come from the weight as given (dead columns included).
  at::Tensor row_scale, row_zero;
  if (gs == -1) {
    std::tie(row_scale, row_zero) = find_group_params(w, o);
    out.scales.select(1, 0).copy_(row_scale);
    out.zeros.select(1, 0).copy_(row_zero);
  }
  at::Tensor h = hessian.to(at::kFloat).clone();
  const at::Tensor dead = h.diagonal() == 0;
  h.diagonal().masked_fill_(dead, 1.0);
  w.masked_fill_(dead.unsqueeze(0), 0.0);
  // Act-order: groups fixed on the original columns before the permutation ("static groups").
  std::vector<std::pair<at::Tensor, at::Tensor>> static_groups;
  at::Tensor perm;
  if (options.act_order) {
    if (gs != -1) {
      for (int64_t g = 0; g < groups; ++g) {
        static_groups.push_back(find_group_params(w.narrow(1, g * gs, std::min(gs, cols - g * gs)), o));
        out.scales.select(1, g).copy_(static_groups.back().first);
        out.zeros.select(1, g).copy_(static_groups.back().second);
      }
    }
    perm = at::argsort(h.diagonal(), /*stable=*/true, /*dim=*/0, /*descending=*/true);
    w = w.index_select(1, perm);
    h = h.index_select(0, perm).index_select(1, perm);
  }
  // The upper Cholesky factor of (H + damp·mean(diag)·I)⁻¹, with more dampening when H is singular.
  const double mean_diag = h.diagonal().mean().item<double>();
  at::Tensor u;
  double damp = options.damp;
  for (int attempt = 0;; ++attempt, damp *= 10) {
    at::Tensor hd = h.clone();
    hd.diagonal().add_(damp * mean_diag);
    try {
      u = at::linalg_cholesky(at::cholesky_inverse(at::linalg_cholesky(hd)), /*upper=*/true);
      break;
    } catch (const c10::Error&) {
      if (attempt == 2)
        throw QuantError(fmt::format("gptq: the calibration Hessian of {} is not positive definite even with dampening {:g}; "
                                     "use more calibration samples or longer sequences", layer.empty() ? "a layer" : layer, damp));
      spdlog::warn("gptq: {}: the Hessian is singular with dampening {:g}; retrying with {:g}", layer.empty() ? "a layer" : layer,
                   damp, damp * 10);
    }
  }
  out.damp_used = damp;
  at::Tensor codes = at::empty({rows, cols}, w.options());
  at::Tensor scale = row_scale, zero = row_zero.defined() ? row_zero.to(at::kFloat) : at::Tensor();
  const int64_t* perm_ptr = nullptr;
  at::Tensor perm_cpu;
  if (perm.defined()) {
    perm_cpu = perm.cpu().contiguous();
    perm_ptr = perm_cpu.data_ptr<int64_t>();
  }
  const float maxq_f = static_cast<float>(maxq);
  for (int64_t b0 = 0; b0 < cols; b0 += options.block_size) {
    const int64_t count = std::min(options.block_size, cols - b0);
    // The scale and zero each column of the block is quantized with.
    std::vector<at::Tensor> col_scale, col_zero;
    for (int64_t j = 0; j < count; ++j) {
      const int64_t col = b0 + j;
      if (gs != -1) {
        if (!options.act_order) {
          // As the reference: the group's parameters from the full matrix as it stands at this
          // block's start (later columns of this block not yet updated by its earlier ones).
          if (col % gs == 0) {
            auto [s, z] = find_group_params(w.narrow(1, col, std::min(gs, cols - col)), o);
            out.scales.select(1, col / gs).copy_(s);
            out.zeros.select(1, col / gs).copy_(z);
            scale = s;
            zero = z.to(at::kFloat);
          }
        } else {
          const auto& [s, z] = static_groups[perm_ptr[col] / gs];
          scale = s;
          zero = z.to(at::kFloat);
        }
      }
      col_scale.push_back(scale);
      col_zero.push_back(zero);
    }
    const at::Tensor scales = at::stack(col_scale, 1).cpu().contiguous(), zeros = at::stack(col_zero, 1).cpu().contiguous();
    const float* sp = scales.data_ptr<float>();
    const float* zp = zeros.data_ptr<float>();
    at::Tensor codes1 = at::empty({rows, count}, scales.options());
    float* cp = codes1.data_ptr<float>();
    at::Tensor w1 = w.narrow(1, b0, count).clone();
    const at::Tensor err1 = solve_columns(w1, u.narrow(0, b0, count).narrow(1, b0, count),
                                          [&](int64_t r, int64_t j, const float* row) {
                                            const int64_t at = r * count + j;
                                            const float q = std::min(std::max(std::nearbyint(row[j] / sp[at]) + zp[at], 0.0f), maxq_f);
                                            cp[at] = q;
                                            return sp[at] * (q - zp[at]);
                                          });
    codes.narrow(1, b0, count).copy_(codes1);
    if (b0 + count < cols)
      w.narrow(1, b0 + count, cols - b0 - count).sub_(err1.matmul(u.narrow(0, b0, count).narrow(1, b0 + count, cols - b0 - count)));
  }
  if (perm.defined()) codes = codes.index_select(1, at::argsort(perm));
  out.codes = codes.to(at::kByte);
  out.g_idx = group_index(cols, gs, w.options());
  return out;
}

}  // namespace llmtune::quant
