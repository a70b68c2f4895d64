// K-quants (FORMATS.md §6.4): super-blocks of 256 with sub-block scales. The quantizers follow
// ggml's reference path (quantize_row_q*_K_ref, what llama-quantize runs without an importance
// matrix) float operation by float operation, so the blocks match llama-quantize's on x86-64,
// where ggml-base is built without FMA; this file is compiled with -ffp-contract=off for that.
#include <cmath>
#include <cstring>
#include <limits>

#include "gguf_quants_k_fit.h"
#include "gguf_quants_rows.h"

namespace llmtune::quant::rows {
namespace {

constexpr int64_t kQkK = 256;

// Q4_K/Q5_K's 12 scale bytes: eight 6-bit scales and eight 6-bit mins (FORMATS.md §6.4).
void pack_scale_min_k4(uint8_t* packed, const uint8_t* ls, const uint8_t* lm) {
  for (int j = 0; j < 4; ++j) {
    packed[j] = ls[j];
    packed[j + 4] = lm[j];
  }
  for (int j = 4; j < 8; ++j) {
    packed[j + 4] = static_cast<uint8_t>((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
    packed[j - 4] |= static_cast<uint8_t>((ls[j] >> 4) << 6);
    packed[j] |= static_cast<uint8_t>((lm[j] >> 4) << 6);
  }
}

inline void unpack_scale_min_k4(int j, const uint8_t* packed, int& sc, int& m) {
  if (j < 4) {
    sc = packed[j] & 63;
    m = packed[j + 4] & 63;
  } else {
    sc = (packed[j + 4] & 0xF) | ((packed[j - 4] >> 6) << 4);
    m = (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4);
  }
}

// Q3_K's 16 6-bit scales (stored +32): low nibbles in bytes 0..7, top two bits in bytes 8..11.
inline int unpack_scale_q3(int j, const uint8_t* packed) {
  const int low = j < 8 ? (packed[j] & 0xF) : (packed[j - 8] >> 4);
  return low | (((packed[8 + j % 4] >> (2 * (j / 4))) & 3) << 4);
}

// Shared by Q4_K and Q5_K, after the eight sub-block fits of one super-block (scales, neg_mins,
// levels L): the 6-bit scales/mins and d/dmin, then L re-derived from the stored (rounded) scales.
// `head` points at d.
void finish_scale_min_block(const float* x, uint8_t* head, uint8_t* L, const float* scales, const float* mins, int nmax) {
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < 8; ++j) {
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
  const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
  uint8_t ls[8], lm[8];
  for (int j = 0; j < 8; ++j) {
    // ggml truncates to uint8 before clamping; kept for identical bytes on degenerate input.
    ls[j] = static_cast<uint8_t>(nearest_int(inv_scale * scales[j]));
    lm[j] = static_cast<uint8_t>(nearest_int(inv_min * mins[j]));
    if (ls[j] > 63) ls[j] = 63;
    if (lm[j] > 63) lm[j] = 63;
  }
  uint8_t* packed = head + 4;
  pack_scale_min_k4(packed, ls, lm);
  store_fp16(head, max_scale / 63.f);
  store_fp16(head + 2, max_min / 63.f);

  const float d_all = load_fp16(head), dmin_all = load_fp16(head + 2);
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    unpack_scale_min_k4(j, packed, sc, m);
    const float d = d_all * sc;
    if (d == 0) continue;  // keep the fit's levels, as ggml does
    const float dm = dmin_all * m;
    for (int l = 0; l < 32; ++l) L[32 * j + l] = static_cast<uint8_t>(clamp_int(nearest_int((x[32 * j + l] + dm) / d), 0, nmax));
  }
}

// A Q4_K/Q5_K row: the sub-block fits run four super-blocks (32 lanes) at a time where the row
// has them, one super-block (8 lanes) otherwise; then each super-block is finished and packed.
template <int kNmax, int64_t kBlockBytes>
void quantize_scale_min_row(const float* x, uint8_t* y, int64_t n, float rmin, int nstep,
                            void (*pack_levels)(const uint8_t* L, uint8_t* block)) {
  const int64_t n_blocks = n / kQkK;
  for (int64_t b = 0; b < n_blocks;) {
    const int64_t group = n_blocks - b >= 4 ? 4 : 1;
    uint8_t L[4 * kQkK];
    float scales[32], mins[32];
    if (group == 4) {
      fit_scale_min<32, 32, false, true>(x + b * kQkK, kNmax, rmin, 0.1f, nstep, L, scales, mins);
    } else {
      fit_scale_min<32, 8, false, true>(x + b * kQkK, kNmax, rmin, 0.1f, nstep, L, scales, mins);
    }
    for (int64_t k = 0; k < group; ++k) {
      uint8_t* block = y + (b + k) * kBlockBytes;
      finish_scale_min_block(x + (b + k) * kQkK, block, L + k * kQkK, scales + 8 * k, mins + 8 * k, kNmax);
      pack_levels(L + k * kQkK, block);
    }
    b += group;
  }
}

// Q4_K levels: chunk c's 32 bytes hold outputs 64c+l (low nibble) and 64c+32+l (high nibble).
void pack_q4_k_levels(const uint8_t* L, uint8_t* block) {
  uint8_t* qs = block + 16;
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) qs[32 * c + l] = static_cast<uint8_t>(L[64 * c + l] | (L[64 * c + l + 32] << 4));
}

// Q5_K levels: as Q4_K for the low four bits; qh bit 2c / 2c+1 of byte l is the fifth bit of
// output 64c+l / 64c+32+l.
void pack_q5_k_levels(const uint8_t* L, uint8_t* block) {
  uint8_t* qh = block + 16;
  uint8_t* qs = block + 48;
  std::memset(qh, 0, 32);
  for (int c = 0; c < 4; ++c) {
    for (int l = 0; l < 32; ++l) {
      const int lo = L[64 * c + l], hi = L[64 * c + l + 32];
      qh[l] |= static_cast<uint8_t>(((lo >> 4) << (2 * c)) | ((hi >> 4) << (2 * c + 1)));
      qs[32 * c + l] = static_cast<uint8_t>((lo & 0xF) | ((hi & 0xF) << 4));
    }
  }
}

}  // namespace

// Q2_K (84 B): scales[16] (low nibble scale, high nibble min), qs[64] (2 bits), d, dmin.
void quantize_q2_k(const float* x, uint8_t* y, int64_t n) {
  uint8_t L_group[2 * kQkK];
  float scales_group[32], mins_group[32];
  const int64_t n_blocks = n / kQkK;
  for (int64_t b = 0; b < n_blocks; ++b, x += kQkK, y += 84) {
    // Sub-block fits two super-blocks (32 lanes) at a time where the row has them.
    const int64_t k = b % 2;
    if (k == 0) {
      if (n_blocks - b >= 2) {
        fit_scale_min<16, 32, true, false>(x, 3, -0.5f, 0.1f, 15, L_group, scales_group, mins_group);
      } else {
        fit_scale_min<16, 16, true, false>(x, 3, -0.5f, 0.1f, 15, L_group, scales_group, mins_group);
      }
    }
    uint8_t* L = L_group + k * kQkK;
    const float* scales = scales_group + 16 * k;
    const float* mins = mins_group + 16 * k;
    uint8_t* scale_bytes = y;
    uint8_t* qs = y + 16;
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 16; ++j) {
      if (scales[j] > max_scale) max_scale = scales[j];
      if (mins[j] > max_min) max_min = mins[j];
    }
    if (max_scale > 0) {
      const float iscale = 15.f / max_scale;
      for (int j = 0; j < 16; ++j) scale_bytes[j] = static_cast<uint8_t>(nearest_int(iscale * scales[j]));
      store_fp16(y + 80, max_scale / 15.f);
    } else {
      std::memset(scale_bytes, 0, 16);
      store_fp16(y + 80, 0.f);
    }
    if (max_min > 0) {
      const float iscale = 15.f / max_min;
      for (int j = 0; j < 16; ++j) scale_bytes[j] |= static_cast<uint8_t>(nearest_int(iscale * mins[j]) << 4);
      store_fp16(y + 82, max_min / 15.f);
    } else {
      store_fp16(y + 82, 0.f);
    }
    const float d_all = load_fp16(y + 80), dmin_all = load_fp16(y + 82);
    for (int j = 0; j < 16; ++j) {
      const float d = d_all * (scale_bytes[j] & 0xF);
      if (d == 0) continue;
      const float dm = dmin_all * (scale_bytes[j] >> 4);
      for (int l = 0; l < 16; ++l) L[16 * j + l] = static_cast<uint8_t>(clamp_int(nearest_int((x[16 * j + l] + dm) / d), 0, 3));
    }
    for (int h = 0; h < 2; ++h) {
      const uint8_t* Lh = L + 128 * h;
      for (int l = 0; l < 32; ++l)
        qs[32 * h + l] = static_cast<uint8_t>(Lh[l] | (Lh[l + 32] << 2) | (Lh[l + 64] << 4) | (Lh[l + 96] << 6));
    }
  }
}

// Q3_K (110 B): hmask[32] (bit 2 of each level), qs[64] (low 2 bits), scales[12], d.
void quantize_q3_k(const float* x, uint8_t* y, int64_t n) {
  for (int64_t b = 0; b < n / kQkK; ++b, x += kQkK, y += 110) {
    uint8_t* hmask = y;
    uint8_t* qs = y + 32;
    uint8_t* packed = y + 96;
    int8_t L[kQkK];
    float scales[16];
    float max_scale = 0, amax = 0;
    for (int j = 0; j < 16; ++j) {
      scales[j] = fit_scale_q3(16, 4, x + 16 * j, L + 16 * j);
      if (std::fabs(scales[j]) > amax) {
        amax = std::fabs(scales[j]);
        max_scale = scales[j];
      }
    }
    std::memset(packed, 0, 12);
    if (max_scale != 0) {
      const float iscale = -32.f / max_scale;
      for (int j = 0; j < 16; ++j) {
        const int l = clamp_int(static_cast<int8_t>(nearest_int(iscale * scales[j])), -32, 31) + 32;
        if (j < 8) {
          packed[j] = static_cast<uint8_t>(l & 0xF);
        } else {
          packed[j - 8] |= static_cast<uint8_t>((l & 0xF) << 4);
        }
        packed[8 + j % 4] |= static_cast<uint8_t>((l >> 4) << (2 * (j / 4)));
      }
      store_fp16(y + 108, 1 / iscale);
    } else {
      store_fp16(y + 108, 0.f);
    }
    const float d_all = load_fp16(y + 108);
    for (int j = 0; j < 16; ++j) {
      const float d = d_all * (unpack_scale_q3(j, packed) - 32);
      if (d == 0) continue;
      for (int l = 0; l < 16; ++l) L[16 * j + l] = static_cast<int8_t>(clamp_int(nearest_int(x[16 * j + l] / d), -4, 3) + 4);
    }
    std::memset(hmask, 0, 32);
    for (int j = 0; j < kQkK; ++j) {
      if (L[j] > 3) {
        hmask[j % 32] |= static_cast<uint8_t>(1 << (j / 32));
        L[j] = static_cast<int8_t>(L[j] - 4);
      }
    }
    for (int h = 0; h < 2; ++h) {
      const int8_t* Lh = L + 128 * h;
      for (int l = 0; l < 32; ++l)
        qs[32 * h + l] = static_cast<uint8_t>(Lh[l] | (Lh[l + 32] << 2) | (Lh[l + 64] << 4) | (Lh[l + 96] << 6));
    }
  }
}

// Q4_K (144 B): d, dmin, scales[12], qs[128].
void quantize_q4_k(const float* x, uint8_t* y, int64_t n) {
  quantize_scale_min_row<15, 144>(x, y, n, -1.f, 20, pack_q4_k_levels);
}

// Q5_K (176 B): d, dmin, scales[12], qh[32], qs[128].
void quantize_q5_k(const float* x, uint8_t* y, int64_t n) {
  quantize_scale_min_row<31, 176>(x, y, n, -0.5f, 15, pack_q5_k_levels);
}

// Q6_K (210 B): ql[128], qh[64], scales int8[16], d (last).
void quantize_q6_k(const float* x, uint8_t* y, int64_t n) {
  for (int64_t b = 0; b < n / kQkK; ++b, x += kQkK, y += 210) {
    int8_t L[kQkK];
    float scales[16];
    float max_scale = 0, max_abs_scale = 0;
    for (int j = 0; j < 16; ++j) {
      scales[j] = fit_scale_symmetric(16, 32, x + 16 * j, L + 16 * j);
      if (std::fabs(scales[j]) > max_abs_scale) {
        max_abs_scale = std::fabs(scales[j]);
        max_scale = scales[j];
      }
    }
    if (max_abs_scale < kGroupMaxEps) {
      std::memset(y, 0, 210);
      continue;
    }
    uint8_t* ql = y;
    uint8_t* qh = y + 128;
    int8_t* sc = reinterpret_cast<int8_t*>(y + 192);
    const float iscale = -128.f / max_scale;
    store_fp16(y + 208, 1 / iscale);
    for (int j = 0; j < 16; ++j) {
      const int s = nearest_int(iscale * scales[j]);
      sc[j] = static_cast<int8_t>(s < 127 ? s : 127);
    }
    const float d_all = load_fp16(y + 208);
    for (int j = 0; j < 16; ++j) {
      const float d = d_all * sc[j];
      if (d == 0) continue;
      for (int l = 0; l < 16; ++l) L[16 * j + l] = static_cast<int8_t>(clamp_int(nearest_int(x[16 * j + l] / d), -32, 31) + 32);
    }
    for (int h = 0; h < 2; ++h) {
      const int8_t* Lh = L + 128 * h;
      for (int l = 0; l < 32; ++l) {
        ql[64 * h + l] = static_cast<uint8_t>((Lh[l] & 0xF) | ((Lh[l + 64] & 0xF) << 4));
        ql[64 * h + l + 32] = static_cast<uint8_t>((Lh[l + 32] & 0xF) | ((Lh[l + 96] & 0xF) << 4));
        qh[32 * h + l] = static_cast<uint8_t>((Lh[l] >> 4) | ((Lh[l + 32] >> 4) << 2) | ((Lh[l + 64] >> 4) << 4) |
                                              ((Lh[l + 96] >> 4) << 6));
      }
    }
  }
}

void dequantize_q2_k(const uint8_t* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQkK; ++b, x += 84) {
    const uint8_t* scale_bytes = x;
    const float d = load_fp16(x + 80), dmin = load_fp16(x + 82);
    int is = 0;
    for (int h = 0; h < 2; ++h) {
      const uint8_t* q = x + 16 + 32 * h;
      for (int shift = 0; shift < 8; shift += 2) {
        for (int half = 0; half < 2; ++half) {
          const uint8_t s = scale_bytes[is++];
          const float dl = d * (s & 0xF), ml = dmin * (s >> 4);
          for (int l = 0; l < 16; ++l) *y++ = dl * ((q[16 * half + l] >> shift) & 3) - ml;
        }
      }
    }
  }
}

void dequantize_q3_k(const uint8_t* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQkK; ++b, x += 110) {
    const uint8_t* hmask = x;
    const uint8_t* packed = x + 96;
    const float d_all = load_fp16(x + 108);
    int is = 0;
    for (int h = 0; h < 2; ++h) {
      const uint8_t* q = x + 32 + 32 * h;
      for (int k = 0; k < 4; ++k) {
        const int shift = 2 * k;
        const uint8_t bit = static_cast<uint8_t>(1 << (4 * h + k));
        for (int half = 0; half < 2; ++half) {
          const float dl = d_all * (unpack_scale_q3(is++, packed) - 32);
          for (int l = 16 * half; l < 16 * half + 16; ++l)
            *y++ = dl * (((q[l] >> shift) & 3) - ((hmask[l] & bit) ? 0 : 4));
        }
      }
    }
  }
}

void dequantize_q4_k(const uint8_t* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQkK; ++b, x += 144) {
    const float d = load_fp16(x), dmin = load_fp16(x + 2);
    const uint8_t* packed = x + 4;
    const uint8_t* q = x + 16;
    for (int c = 0; c < 4; ++c, q += 32) {
      int sc, m;
      unpack_scale_min_k4(2 * c, packed, sc, m);
      const float d1 = d * sc, m1 = dmin * m;
      unpack_scale_min_k4(2 * c + 1, packed, sc, m);
      const float d2 = d * sc, m2 = dmin * m;
      for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
    }
  }
}

void dequantize_q5_k(const uint8_t* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQkK; ++b, x += 176) {
    const float d = load_fp16(x), dmin = load_fp16(x + 2);
    const uint8_t* packed = x + 4;
    const uint8_t* qh = x + 16;
    const uint8_t* ql = x + 48;
    for (int c = 0; c < 4; ++c, ql += 32) {
      int sc, m;
      unpack_scale_min_k4(2 * c, packed, sc, m);
      const float d1 = d * sc, m1 = dmin * m;
      unpack_scale_min_k4(2 * c + 1, packed, sc, m);
      const float d2 = d * sc, m2 = dmin * m;
      for (int l = 0; l < 32; ++l) *y++ = d1 * ((ql[l] & 0xF) + (((qh[l] >> (2 * c)) & 1) << 4)) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * ((ql[l] >> 4) + (((qh[l] >> (2 * c + 1)) & 1) << 4)) - m2;
    }
  }
}

void dequantize_q6_k(const uint8_t* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQkK; ++b, x += 210, y += kQkK) {
    const float d = load_fp16(x + 208);
    const int8_t* sc = reinterpret_cast<const int8_t*>(x + 192);
    for (int h = 0; h < 2; ++h) {
      const uint8_t* ql = x + 64 * h;
      const uint8_t* qh = x + 128 + 32 * h;
      const int8_t* s = sc + 8 * h;
      float* out = y + 128 * h;
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        out[l] = d * s[is] * q1;
        out[l + 32] = d * s[is + 2] * q2;
        out[l + 64] = d * s[is + 4] * q3;
        out[l + 96] = d * s[is + 6] * q4;
      }
    }
  }
}

}  // namespace llmtune::quant::rows
