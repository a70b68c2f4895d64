// Private to src/quant: the K-quant scale searches (gguf_quants_k_fit.cpp) behind the Q2_K..Q6_K
// block encoders in gguf_quants_k.cpp.
#pragma once

#include <cstdint>

namespace llmtune::quant::rows {

constexpr float kGroupMaxEps = 1e-15f;  // below this a group counts as all zero (ggml's GROUP_MAX_EPS)

// ggml's make_qkx2_quants for S groups of N side by side: x ≈ scale·L + min, L in 0..nmax, min ≤ 0.
// x: S·N floats (group s at x + s·N); writes L (same layout), scales[S], neg_mins[S] (= −min).
// Instantiated for <32, 32|8, false, true> (Q4_K/Q5_K) and <16, 32|16, true, false> (Q2_K).
template <int N, int S, bool kUseMad, bool kRmsWeights>
void fit_scale_min(const float* x_in, int nmax, float rmin, float rdelta, int nstep, uint8_t* L_out, float* scales,
                   float* neg_mins);

// ggml's make_qx_quants (rmse_type 1): x ≈ scale·(L − nmax); returns scale. n ≤ 32.
float fit_scale_symmetric(int n, int nmax, const float* x, int8_t* L);

// ggml's make_q3_quants with do_rmse: L gets l + nmax; returns scale.
float fit_scale_q3(int n, int nmax, const float* x, int8_t* L);

}  // namespace llmtune::quant::rows
