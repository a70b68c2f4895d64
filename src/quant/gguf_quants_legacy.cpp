// Float and 32-element block formats (FORMATS.md §6.4): F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.
// The quantizers repeat ggml's quantize_row_*_ref float operations in the same order, so their
// blocks are bit-exact with ggml's and with gguf-py's (this file is compiled with -ffp-contract=off).
#include <cfloat>
#include <cmath>
#include <cstring>

#include "gguf_quants_rows.h"

namespace llmtune::quant::rows {
namespace {

constexpr int64_t kQk = 32;  // elements per block for every format in this file

void min_max(const float* x, float& min, float& max) {
  min = FLT_MAX;
  max = -FLT_MAX;
  for (int64_t j = 0; j < kQk; ++j) {
    if (x[j] < min) min = x[j];
    if (x[j] > max) max = x[j];
  }
}

inline int min_int(int a, int b) { return a < b ? a : b; }

// Q5's high bits: bit j of the u32 holds bit 4 of element j.
void store_high_bits(uint8_t* qh_dst, const uint8_t* q) {
  uint32_t qh = 0;
  for (int64_t j = 0; j < kQk; ++j) qh |= static_cast<uint32_t>((q[j] >> 4) & 1) << j;
  std::memcpy(qh_dst, &qh, sizeof qh);
}

// Low nibbles: byte j holds element j (low) and element j+16 (high).
void store_nibbles(uint8_t* qs, const uint8_t* q) {
  for (int64_t j = 0; j < kQk / 2; ++j) qs[j] = static_cast<uint8_t>((q[j] & 0x0F) | ((q[j + kQk / 2] & 0x0F) << 4));
}

// Element j (0..31) of a block from its 16 nibble bytes.
inline int nibble(const uint8_t* qs, int64_t j) {
  return j < kQk / 2 ? (qs[j] & 0x0F) : (qs[j - kQk / 2] >> 4);
}

}  // namespace

void quantize_f32(const float* x, uint8_t* y, int64_t n) { std::memcpy(y, x, static_cast<size_t>(n) * sizeof(float)); }

void quantize_f16(const float* x, uint8_t* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) store_u16(y + 2 * i, fp32_to_fp16(x[i]));
}

// ggml_compute_fp32_to_bf16: round to nearest even on the upper half; a NaN stays a NaN (quiet bit set).
void quantize_bf16(const float* x, uint8_t* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &x[i], sizeof bits);
    uint16_t h;
    if ((bits & 0x7fffffffu) > 0x7f800000u) {
      h = static_cast<uint16_t>((bits >> 16) | 64);
    } else {
      h = static_cast<uint16_t>((bits + (0x7fffu + ((bits >> 16) & 1u))) >> 16);
    }
    store_u16(y + 2 * i, h);
  }
}

// Q4_0 (18 B): d, then 16 bytes of nibbles; x ≈ (q − 8)·d with d = max/−8.
void quantize_q4_0(const float* x, uint8_t* y, int64_t n) {
  for (int64_t b = 0; b < n / kQk; ++b, x += kQk, y += 18) {
    const float d = signed_absmax(x, kQk) / -8;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_fp16(y, d);
    uint8_t q[kQk];
    for (int64_t j = 0; j < kQk; ++j) q[j] = static_cast<uint8_t>(min_int(15, static_cast<int>(x[j] * id + 8.5f)));
    store_nibbles(y + 2, q);
  }
}

// Q4_1 (20 B): d, m, nibbles; x ≈ q·d + m with m = min, d = (max − min)/15.
void quantize_q4_1(const float* x, uint8_t* y, int64_t n) {
  for (int64_t b = 0; b < n / kQk; ++b, x += kQk, y += 20) {
    float min, max;
    min_max(x, min, max);
    const float d = (max - min) / 15;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_fp16(y, d);
    store_fp16(y + 2, min);
    uint8_t q[kQk];
    for (int64_t j = 0; j < kQk; ++j) q[j] = static_cast<uint8_t>(min_int(15, static_cast<int>((x[j] - min) * id + 0.5f)));
    store_nibbles(y + 4, q);
  }
}

// Q5_0 (22 B): d, qh (u32), nibbles; x ≈ (q − 16)·d with d = max/−16.
void quantize_q5_0(const float* x, uint8_t* y, int64_t n) {
  for (int64_t b = 0; b < n / kQk; ++b, x += kQk, y += 22) {
    const float d = signed_absmax(x, kQk) / -16;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_fp16(y, d);
    uint8_t q[kQk];
    for (int64_t j = 0; j < kQk; ++j) q[j] = static_cast<uint8_t>(min_int(31, static_cast<int>(x[j] * id + 16.5f)));
    store_high_bits(y + 2, q);
    store_nibbles(y + 6, q);
  }
}

// Q5_1 (24 B): d, m, qh, nibbles; x ≈ q·d + m with d = (max − min)/31 (ggml does not clamp here).
void quantize_q5_1(const float* x, uint8_t* y, int64_t n) {
  for (int64_t b = 0; b < n / kQk; ++b, x += kQk, y += 24) {
    float min, max;
    min_max(x, min, max);
    const float d = (max - min) / 31;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_fp16(y, d);
    store_fp16(y + 2, min);
    uint8_t q[kQk];
    for (int64_t j = 0; j < kQk; ++j) q[j] = static_cast<uint8_t>(static_cast<int>((x[j] - min) * id + 0.5f));
    store_high_bits(y + 4, q);
    store_nibbles(y + 8, q);
  }
}

// Q8_0 (34 B): d, 32 int8; q = round-half-away(x/d) computed with the f32 d, d = max|x|/127.
void quantize_q8_0(const float* x, uint8_t* y, int64_t n) {
  for (int64_t b = 0; b < n / kQk; ++b, x += kQk, y += 34) {
    float amax = 0.0f;
    for (int64_t j = 0; j < kQk; ++j) amax = amax > std::fabs(x[j]) ? amax : std::fabs(x[j]);
    const float d = amax / 127;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_fp16(y, d);
    for (int64_t j = 0; j < kQk; ++j) y[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::roundf(x[j] * id)));
  }
}

void dequantize_f32(const uint8_t* x, float* y, int64_t n) { std::memcpy(y, x, static_cast<size_t>(n) * sizeof(float)); }

void dequantize_f16(const uint8_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = fp16_to_fp32(load_u16(x + 2 * i));
}

void dequantize_bf16(const uint8_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t bits = static_cast<uint32_t>(load_u16(x + 2 * i)) << 16;
    std::memcpy(&y[i], &bits, sizeof bits);
  }
}

void dequantize_q4_0(const uint8_t* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQk; ++b, x += 18, y += kQk) {
    const float d = load_fp16(x);
    for (int64_t j = 0; j < kQk; ++j) y[j] = static_cast<float>(nibble(x + 2, j) - 8) * d;
  }
}

void dequantize_q4_1(const uint8_t* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQk; ++b, x += 20, y += kQk) {
    const float d = load_fp16(x), m = load_fp16(x + 2);
    for (int64_t j = 0; j < kQk; ++j) y[j] = static_cast<float>(nibble(x + 4, j)) * d + m;
  }
}

void dequantize_q5_0(const uint8_t* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQk; ++b, x += 22, y += kQk) {
    const float d = load_fp16(x);
    uint32_t qh;
    std::memcpy(&qh, x + 2, sizeof qh);
    for (int64_t j = 0; j < kQk; ++j) {
      const int q = nibble(x + 6, j) | static_cast<int>(((qh >> j) & 1u) << 4);
      y[j] = static_cast<float>(q - 16) * d;
    }
  }
}

void dequantize_q5_1(const uint8_t* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQk; ++b, x += 24, y += kQk) {
    const float d = load_fp16(x), m = load_fp16(x + 2);
    uint32_t qh;
    std::memcpy(&qh, x + 4, sizeof qh);
    for (int64_t j = 0; j < kQk; ++j) {
      const int q = nibble(x + 8, j) | static_cast<int>(((qh >> j) & 1u) << 4);
      y[j] = static_cast<float>(q) * d + m;
    }
  }
}

void dequantize_q8_0(const uint8_t* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQk; ++b, x += 34, y += kQk) {
    const float d = load_fp16(x);
    for (int64_t j = 0; j < kQk; ++j) y[j] = static_cast<float>(static_cast<int8_t>(x[2 + j])) * d;
  }
}

}  // namespace llmtune::quant::rows
