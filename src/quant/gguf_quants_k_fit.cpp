// The K-quant scale searches (ggml's make_qkx2_quants, make_qx_quants, make_q3_quants), float
// operation by float operation in ggml's order, so the blocks built from them match llama-quantize's
// on x86-64 (ggml-base is built without FMA; this file is compiled with -ffp-contract=off for that).
#include "gguf_quants_k_fit.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "gguf_quants_rows.h"

namespace llmtune::quant::rows {
namespace {

// ggml's nearest_int on one lane of the candidate loops below (the same bits, written so that it
// vectorizes).
inline int nearest_int_lane(float f) { return (std::bit_cast<int32_t>(f + 12582912.f) & 0x007fffff) - 0x00400000; }

// nearest_int(f) clamped to 0..nmax, as a float. The clamp is done on the float (exact: the
// integer is below 2^23 in magnitude) so that it vectorizes to min/max instructions.
inline float level(float f, float nmax) {
  const float l = static_cast<float>(nearest_int_lane(f));
  const float lo = l < 0.0f ? 0.0f : l;
  return lo > nmax ? nmax : lo;
}

}  // namespace

// Fits x ≈ scale·L + min with L in 0..nmax and min ≤ 0 for S independent groups of N elements
// at once (ggml's make_qkx2_quants): a first grid from the range, then nstep+1 grids stretched by
// rmin + rdelta·k levels, each followed by the weighted least-squares scale and min for its levels,
// kept when its error Σ w·err² (Σ w·|err| with kUseMad) is the best so far. A kept candidate moves
// min and so the next grids: each group's search is sequential, hence lane s runs group s's search
// with selects instead of branches. The float operations of every lane are ggml's, in ggml's order.
// x: S·N floats (group s at x + s·N). Weights: sqrt(mean x²) + |x| with kRmsWeights, else |x|.
// Writes L (S·N levels, same layout), scales[S] and neg_mins[S] (= −min ≥ 0).
template <int N, int S, bool kUseMad, bool kRmsWeights>
void fit_scale_min(const float* x_in, int nmax, float rmin, float rdelta, int nstep, uint8_t* L_out, float* scales,
                   float* neg_mins) {
  alignas(64) float x[N][S], w[N][S], L_try[N][S];
  for (int s = 0; s < S; ++s)
    for (int i = 0; i < N; ++i) x[i][s] = x_in[s * N + i];
  if constexpr (kRmsWeights) {
    alignas(64) float sum_x2[S] = {};
    for (int i = 0; i < N; ++i)
      for (int s = 0; s < S; ++s) sum_x2[s] += x[i][s] * x[i][s];
    for (int s = 0; s < S; ++s) sum_x2[s] = std::sqrt(sum_x2[s] / N);
    for (int i = 0; i < N; ++i)
      for (int s = 0; s < S; ++s) w[i][s] = sum_x2[s] + std::fabs(x[i][s]);
  } else {
    for (int i = 0; i < N; ++i)
      for (int s = 0; s < S; ++s) w[i][s] = std::fabs(x[i][s]);
  }

  alignas(64) float min[S], max[S], sum_w[S], sum_x[S], scale[S], best_error[S] = {};
  for (int s = 0; s < S; ++s) {
    min[s] = max[s] = x[0][s];
    sum_w[s] = w[0][s];
    sum_x[s] = sum_w[s] * x[0][s];
  }
  for (int i = 1; i < N; ++i) {
    for (int s = 0; s < S; ++s) {
      min[s] = x[i][s] < min[s] ? x[i][s] : min[s];
      max[s] = x[i][s] > max[s] ? x[i][s] : max[s];
      sum_w[s] += w[i][s];
      sum_x[s] += w[i][s] * x[i][s];
    }
  }
  const float fmax_level = static_cast<float>(nmax);
  bool flat[S];  // max == min: ggml returns all-zero levels and scale 0 for such a group
  float flat_min[S];
  for (int s = 0; s < S; ++s) {
    min[s] = min[s] > 0 ? 0 : min[s];
    flat[s] = max[s] == min[s];
    flat_min[s] = min[s];
    const float iscale = fmax_level / (max[s] - min[s]);  // inf for a flat group: fixed up at the end
    scale[s] = 1 / iscale;
  }
  // The grid that gave each lane's current levels (its iscale and the min it was applied with):
  // the levels themselves are recomputed from it once, at the end.
  alignas(64) float grid_iscale[S], grid_min[S];
  for (int s = 0; s < S; ++s) {
    grid_iscale[s] = fmax_level / (max[s] - min[s]);
    grid_min[s] = min[s];
  }
  for (int i = 0; i < N; ++i) {
    for (int s = 0; s < S; ++s) {
      const float l = level(grid_iscale[s] * (x[i][s] - min[s]), fmax_level);
      float diff = scale[s] * l + min[s] - x[i][s];
      diff = kUseMad ? std::fabs(diff) : diff * diff;
      best_error[s] += w[i][s] * diff;
    }
  }
  for (int step = 0; step <= nstep; ++step) {
    alignas(64) float iscale[S], sum_l[S] = {}, sum_l2[S] = {}, sum_xl[S] = {};
    const float stretch = rmin + rdelta * step + nmax;
    for (int s = 0; s < S; ++s) iscale[s] = stretch / (max[s] - min[s]);
    for (int i = 0; i < N; ++i) {
      for (int s = 0; s < S; ++s) {
        const float l = level(iscale[s] * (x[i][s] - min[s]), fmax_level);
        L_try[i][s] = l;
        sum_l[s] += w[i][s] * l;
        sum_l2[s] += w[i][s] * l * l;
        sum_xl[s] += w[i][s] * l * x[i][s];
      }
    }
    alignas(64) float try_scale[S], try_min[S], error[S] = {};
    for (int s = 0; s < S; ++s) {
      const float det = sum_w[s] * sum_l2[s] - sum_l[s] * sum_l[s];
      const float sc = (sum_w[s] * sum_xl[s] - sum_x[s] * sum_l[s]) / det;
      const float mn = (sum_l2[s] * sum_x[s] - sum_l[s] * sum_xl[s]) / det;
      const float sc_no_min = sum_xl[s] / sum_l2[s];  // the fit when min is pinned at 0
      try_scale[s] = mn > 0 ? sc_no_min : sc;
      try_min[s] = mn > 0 ? 0.0f : mn;
      // A singular system (det ≤ 0) is never kept: poison its error.
      error[s] = det > 0 ? 0.0f : std::numeric_limits<float>::quiet_NaN();
    }
    for (int i = 0; i < N; ++i) {
      for (int s = 0; s < S; ++s) {
        float diff = try_scale[s] * L_try[i][s] + try_min[s] - x[i][s];
        diff = kUseMad ? std::fabs(diff) : diff * diff;
        error[s] += w[i][s] * diff;
      }
    }
    for (int s = 0; s < S; ++s) {
      const bool keep = error[s] < best_error[s];  // false for NaN
      best_error[s] = keep ? error[s] : best_error[s];
      grid_iscale[s] = keep ? iscale[s] : grid_iscale[s];
      grid_min[s] = keep ? min[s] : grid_min[s];
      scale[s] = keep ? try_scale[s] : scale[s];
      min[s] = keep ? try_min[s] : min[s];
    }
  }
  for (int s = 0; s < S; ++s) {
    scales[s] = flat[s] ? 0.f : scale[s];
    neg_mins[s] = flat[s] ? -flat_min[s] : -min[s];
    for (int i = 0; i < N; ++i)
      L_out[s * N + i] = flat[s] ? 0 : static_cast<uint8_t>(level(grid_iscale[s] * (x[i][s] - grid_min[s]), fmax_level));
  }
}

// Symmetric fit x ≈ scale·(L − nmax), L − nmax in −nmax..nmax−1, weighted by x² (ggml's
// make_qx_quants with rmse_type 1): the grid through the largest |x|, then 18 slightly
// stretched or shrunk grids, keeping the best least-squares fit. n ≤ 32.
float fit_scale_symmetric(int n, int nmax, const float* x, int8_t* L) {
  const float max = signed_absmax(x, n);
  if (std::fabs(max) < kGroupMaxEps) {
    std::memset(L, 0, static_cast<size_t>(n));
    return 0.f;
  }
  // The 19 candidate grids do not depend on one another (only the choice among them does), so
  // they are evaluated side by side, each with its own sums accumulated in ggml's order, and then
  // chosen among in ggml's order. Candidate 0 is the grid through max; 1..18 are steps −9..−1, 1..9.
  constexpr int kCandidates = 19, kLanes = 24;
  alignas(64) float iscales[kLanes], sumlx[kLanes] = {}, suml2[kLanes] = {};
  iscales[0] = -nmax / max;
  for (int k = 1; k < kLanes; ++k) {
    const int step = k <= 9 ? k - 10 : k - 9;
    iscales[k] = -(nmax + 0.1f * step) / max;
  }
  for (int i = 0; i < n; ++i) {
    const float xi = x[i], wx = x[i] * x[i] * x[i], w = x[i] * x[i];
    for (int k = 0; k < kLanes; ++k) {
      int l = nearest_int_lane(iscales[k] * xi);
      l = l < -nmax ? -nmax : (l > nmax - 1 ? nmax - 1 : l);
      const float lf = static_cast<float>(l);
      sumlx[k] += wx * lf;
      suml2[k] += w * lf * lf;
    }
  }
  float scale = suml2[0] != 0 ? sumlx[0] / suml2[0] : 0.0f;
  float best = scale * sumlx[0];
  int chosen = 0;
  for (int k = 1; k < kCandidates; ++k) {
    if (suml2[k] > 0 && sumlx[k] * sumlx[k] > best * suml2[k]) {
      scale = sumlx[k] / suml2[k];
      best = scale * sumlx[k];
      chosen = k;
    }
  }
  for (int i = 0; i < n; ++i) L[i] = static_cast<int8_t>(nmax + clamp_int(nearest_int(iscales[chosen] * x[i]), -nmax, nmax - 1));
  return scale;
}

// Q3_K's sub-block fit (ggml's make_q3_quants with do_rmse): the grid through the largest |x|,
// then up to 5 passes moving single levels while the x²-weighted fit improves. L gets l + nmax.
float fit_scale_q3(int n, int nmax, const float* x, int8_t* L) {
  const float max = signed_absmax(x, n);
  if (std::fabs(max) < kGroupMaxEps) {
    std::memset(L, 0, static_cast<size_t>(n));
    return 0.f;
  }
  const float iscale = -nmax / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = clamp_int(nearest_int(iscale * x[i]), -nmax, nmax - 1);
    L[i] = static_cast<int8_t>(l);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * l;
    suml2 += w * l * l;
  }
  for (int pass = 0; pass < 5; ++pass) {
    int n_changed = 0;
    for (int i = 0; i < n; ++i) {
      const float w = x[i] * x[i];
      float slx = sumlx - w * x[i] * L[i];
      if (slx > 0) {
        float sl2 = suml2 - w * L[i] * L[i];
        const int new_l = clamp_int(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
        if (new_l != L[i]) {
          slx += w * x[i] * new_l;
          sl2 += w * new_l * new_l;
          if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
            L[i] = static_cast<int8_t>(new_l);
            sumlx = slx;
            suml2 = sl2;
            ++n_changed;
          }
        }
      }
    }
    if (n_changed == 0) break;
  }
  for (int i = 0; i < n; ++i) L[i] = static_cast<int8_t>(L[i] + nmax);
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

template void fit_scale_min<32, 32, false, true>(const float*, int, float, float, int, uint8_t*, float*, float*);
template void fit_scale_min<32, 8, false, true>(const float*, int, float, float, int, uint8_t*, float*, float*);
template void fit_scale_min<16, 32, true, false>(const float*, int, float, float, int, uint8_t*, float*, float*);
template void fit_scale_min<16, 16, true, false>(const float*, int, float, float, int, uint8_t*, float*, float*);

}  // namespace llmtune::quant::rows
