// The column loop GPTQ and SparseGPT share (Optimal Brain Surgeon over one block of columns): column j
// of the block takes a chosen value (its quantized value, or 0 where pruned), and the error, divided by
// U's diagonal, comes off the block's later columns in proportion to U's row j. Inside a block the rows
// never meet, so the loop runs row by row, rows in parallel, with plain float arithmetic in the order of
// the tensor formulation (err = (x − q) / d; w −= err · u, the product rounded before the subtraction:
// the files using this are compiled with -ffp-contract=off). A block on another device is moved to the
// CPU once and back (it is rows × block floats; the lazy update between blocks stays on the device).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>

namespace llmtune::quant {

// w1: (rows, count) fp32, the block as it stands; on return it holds the chosen values. u1: (count,
// count), U's block. Returns err1 (rows, count): each column's error divided by U's diagonal, which
// the caller spreads over the later blocks. choose(r, j, row) → the value of element (r, j), where
// row points at row r's current values (entries ≥ j are updated by the earlier columns); it may
// record what it decided (codes, masks) for (r, j).
template <typename Choose>
at::Tensor solve_columns(at::Tensor& w1, const at::Tensor& u1, Choose&& choose) {
  const at::Device device = w1.device();
  at::Tensor w = w1.to(at::kCPU).contiguous();
  const at::Tensor u = u1.to(at::kCPU).contiguous();
  const int64_t rows = w.size(0), count = w.size(1);
  at::Tensor err = at::empty({rows, count}, w.options());
  float* wp = w.data_ptr<float>();
  float* ep = err.data_ptr<float>();
  const float* up = u.data_ptr<float>();
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, count * count / 2)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* row = wp + r * count;
      float* erow = ep + r * count;
      for (int64_t j = 0; j < count; ++j) {
        const float x = row[j];
        const float q = choose(r, j, static_cast<const float*>(row));
        const float e = (x - q) / up[j * count + j];
        erow[j] = e;
        row[j] = q;
        const float* urow = up + j * count;
        for (int64_t k = j + 1; k < count; ++k) {
          const float p = e * urow[k];
          row[k] = row[k] - p;
        }
      }
    }
  });
  if (device.is_cpu()) {
    if (!w1.is_same(w)) w1.copy_(w);
    return err;
  }
  w1.copy_(w);
  return err.to(device);
}

}  // namespace llmtune::quant
