// Private to src/quant: the per-row block kernels behind quant/gguf_quants.h and the small numeric
// helpers they share. One call handles one row of n elements (n a multiple of the block size).
#pragma once

#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>

namespace llmtune::quant::rows {

inline uint16_t fp32_to_fp16(float f) { return c10::detail::fp16_ieee_from_fp32_value(f); }
inline float fp16_to_fp32(uint16_t h) { return c10::detail::fp16_ieee_to_fp32_value(h); }

inline uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store_u16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, sizeof v); }
inline float load_fp16(const uint8_t* p) { return fp16_to_fp32(load_u16(p)); }
inline void store_fp16(uint8_t* p, float f) { store_u16(p, fp32_to_fp16(f)); }

// Round to nearest, ties to even, as ggml's nearest_int: adding 1.5·2^23 leaves the rounded
// integer in the low mantissa bits (valid for |f| < 2^22, which every caller guarantees).
inline int nearest_int(float f) {
  float biased = f + 12582912.f;
  int32_t bits;
  std::memcpy(&bits, &biased, sizeof bits);
  return (bits & 0x007fffff) - 0x00400000;
}

inline int clamp_int(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

// The element of x[0..n) with the largest |x|, signed (the first such, as ggml's loops keep it).
inline float signed_absmax(const float* x, int64_t n) {
  float amax = 0.0f, max = 0.0f;
  for (int64_t j = 0; j < n; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  return max;
}

// x: n floats → y: n/block_size blocks (legacy: gguf_quants_legacy.cpp; K-quants: gguf_quants_k.cpp).
void quantize_f32(const float* x, uint8_t* y, int64_t n);
void quantize_f16(const float* x, uint8_t* y, int64_t n);
void quantize_bf16(const float* x, uint8_t* y, int64_t n);
void quantize_q4_0(const float* x, uint8_t* y, int64_t n);
void quantize_q4_1(const float* x, uint8_t* y, int64_t n);
void quantize_q5_0(const float* x, uint8_t* y, int64_t n);
void quantize_q5_1(const float* x, uint8_t* y, int64_t n);
void quantize_q8_0(const float* x, uint8_t* y, int64_t n);
void quantize_q2_k(const float* x, uint8_t* y, int64_t n);
void quantize_q3_k(const float* x, uint8_t* y, int64_t n);
void quantize_q4_k(const float* x, uint8_t* y, int64_t n);
void quantize_q5_k(const float* x, uint8_t* y, int64_t n);
void quantize_q6_k(const float* x, uint8_t* y, int64_t n);

void dequantize_f32(const uint8_t* x, float* y, int64_t n);
void dequantize_f16(const uint8_t* x, float* y, int64_t n);
void dequantize_bf16(const uint8_t* x, float* y, int64_t n);
void dequantize_q4_0(const uint8_t* x, float* y, int64_t n);
void dequantize_q4_1(const uint8_t* x, float* y, int64_t n);
void dequantize_q5_0(const uint8_t* x, float* y, int64_t n);
void dequantize_q5_1(const uint8_t* x, float* y, int64_t n);
void dequantize_q8_0(const uint8_t* x, float* y, int64_t n);
void dequantize_q2_k(const uint8_t* x, float* y, int64_t n);
void dequantize_q3_k(const uint8_t* x, float* y, int64_t n);
void dequantize_q4_k(const uint8_t* x, float* y, int64_t n);
void dequantize_q5_k(const uint8_t* x, float* y, int64_t n);
void dequantize_q6_k(const uint8_t* x, float* y, int64_t n);

}  // namespace llmtune::quant::rows
