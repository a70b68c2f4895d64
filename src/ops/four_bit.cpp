// Blockwise 4-bit fast paths: a CPU loop (parallel over blocks, a 256-entry byte -> two-codes
// table, written straight into the output dtype) and dispatch to the CUDA kernels. Each rounds
// exactly as the ATen reference in src/quant/bnb.cpp does, so the results are bit-identical.
#include "llmtune/ops/four_bit.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <limits>

#include "../../kernels/cuda_runtime_info.h"
#include "../../kernels/launchers.h"
#include "llmtune/util/error.h"

namespace llmtune::ops {
namespace {

// About this many elements per parallel task: enough to amortise the scheduling.
constexpr int64_t kGrainElements = 1 << 15;

kernels::FourBitArgs args_of(const FourBitBlocks& w) {
  return {.packed = w.packed, .code = w.code, .absmax = w.absmax, .nested_code = w.nested_code,
          .nested_absmax = w.nested_absmax, .nested_offset = w.nested_offset, .blocksize = w.blocksize,
          .nested_blocksize = w.nested_blocksize, .numel = w.numel};
}

// absmax[b] as float32, the nested map applied (product, then the offset added in float32).
struct AbsmaxReader {
  const float* f32 = nullptr;
  const uint8_t* u8 = nullptr;
  const float* nested_code = nullptr;
  const float* nested_absmax = nullptr;
  float offset = 0;
  int64_t nested_blocksize = 256;
  float operator()(int64_t b) const {
    if (f32) return f32[b];
    const float v = nested_code[u8[b]] * nested_absmax[b / nested_blocksize];
    return v + offset;
  }
};

// float -> T rounded to nearest even, written without branches so that the loops vectorize; the
// same bits as c10's conversions (NaN becomes the canonical 0x7FC0 for bfloat16).
template <typename T> inline T narrow_to(float v) { return static_cast<T>(v); }
template <> inline c10::BFloat16 narrow_to<c10::BFloat16>(float v) {
  const uint32_t u = std::bit_cast<uint32_t>(v);
  const auto r = static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  return c10::BFloat16(v != v ? uint16_t{0x7FC0} : r, c10::BFloat16::from_bits());
}

template <typename T>
void dequantize_cpu(const FourBitBlocks& w, const AbsmaxReader& absmax, T* out) {
  std::array<std::array<float, 2>, 256> pair{};
  const float* code = w.code.const_data_ptr<float>();
  for (int b = 0; b < 256; ++b) pair[b] = {code[b >> 4], code[b & 0xF]};
  const uint8_t* bytes = w.packed.const_data_ptr<uint8_t>();
  const int64_t n = w.numel, bs = w.blocksize, blocks = (n + bs - 1) / bs;
  at::parallel_for(0, blocks, std::max<int64_t>(1, kGrainElements / bs), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const float a = absmax(b);
      const int64_t start = b * bs, end = std::min(n, start + bs);  // start is even: bs is
      const uint8_t* src = bytes + start / 2;
      T* dst = out + start;
      const int64_t pairs = (end - start) / 2;
      for (int64_t i = 0; i < pairs; ++i) {
        const auto& v = pair[src[i]];
        dst[2 * i] = narrow_to<T>(v[0] * a);
        dst[2 * i + 1] = narrow_to<T>(v[1] * a);
      }
      if ((end - start) % 2) dst[2 * pairs] = narrow_to<T>(pair[src[pairs]][0] * a);
    }
  });
}

AbsmaxReader absmax_reader(const FourBitBlocks& w) {
  const int64_t blocks = (w.numel + w.blocksize - 1) / w.blocksize;
  TORCH_CHECK(w.absmax.is_contiguous() && w.absmax.numel() >= blocks, "4-bit dequantize: ", blocks,
              " contiguous absmax values needed, got ", w.absmax.numel());
  AbsmaxReader r;
  if (!w.nested_code.defined()) {
    TORCH_CHECK(w.absmax.scalar_type() == at::kFloat, "4-bit dequantize: absmax must be float32 when not nested");
    r.f32 = w.absmax.const_data_ptr<float>();
    return r;
  }
  TORCH_CHECK(w.absmax.scalar_type() == at::kByte && w.nested_code.is_contiguous() && w.nested_code.numel() == 256 &&
                  w.nested_code.scalar_type() == at::kFloat && w.nested_absmax.is_contiguous() &&
                  w.nested_absmax.scalar_type() == at::kFloat && w.nested_blocksize > 0 &&
                  w.nested_absmax.numel() * w.nested_blocksize >= blocks,
              "4-bit dequantize: a nested absmax needs uint8 codes, a 256-entry float32 map and one float32 absmax per ",
              w.nested_blocksize, " blocks");
  r.u8 = w.absmax.const_data_ptr<uint8_t>();
  r.nested_code = w.nested_code.const_data_ptr<float>();
  r.nested_absmax = w.nested_absmax.const_data_ptr<float>();
  r.offset = static_cast<float>(w.nested_offset);
  r.nested_blocksize = w.nested_blocksize;
  return r;
}

template <typename T>
void quantize_cpu(const T* x, int64_t n, int64_t bs, const float* mid, const int64_t* order, uint8_t* packed,
                  float* absmax) {
  // Nearest code by bucketing: the count of midpoints strictly below the value (a value on a
  // midpoint takes the lower code, as at::bucketize with right=false), by a branchless binary
  // search over the 15 midpoints and +inf.
  std::array<float, 16> m16{};
  std::copy(mid, mid + 15, m16.begin());
  m16[15] = std::numeric_limits<float>::infinity();
  auto code_of = [&](float v) -> uint8_t {
    int i = 0;
    i += (m16[i + 7] < v) * 8;
    i += (m16[i + 3] < v) * 4;
    i += (m16[i + 1] < v) * 2;
    i += m16[i] < v;
    return static_cast<uint8_t>(order[i]);
  };
  const uint8_t pad = code_of(0.0f);
  const int64_t blocks = (n + bs - 1) / bs;
  at::parallel_for(0, blocks, std::max<int64_t>(1, kGrainElements / bs), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t start = b * bs, end = std::min(n, start + bs), len = end - start;
      float m = 0.0f;
      bool nan = false;
      for (int64_t e = start; e < end; ++e) {
        const float a = std::fabs(static_cast<float>(x[e]));
        m = a > m ? a : m;
        nan |= a != a;
      }
      if (nan) m = std::numeric_limits<float>::quiet_NaN();  // amax propagates NaN
      // A whole block multiplies by the reciprocal of its clamped absmax, a partial last block
      // divides by it (bitsandbytes' CPU path, and the reference).
      const float am = std::max(m, 1e-38f);
      const bool whole = len == bs;
      const float r = 1.0f / am;
      auto scaled = [&](int64_t e) {
        const float v = whole ? static_cast<float>(x[e]) * r : static_cast<float>(x[e]) / am;
        return std::clamp(v, -1.0f, 1.0f);
      };
      absmax[b] = whole ? m : am;
      for (int64_t e = start; e < end; e += 2) {
        const uint8_t hi = code_of(scaled(e));
        const uint8_t lo = e + 1 < end ? code_of(scaled(e + 1)) : pad;
        packed[e / 2] = static_cast<uint8_t>((hi << 4) | lo);
      }
    }
  });
}

}  // namespace

bool four_bit_dequantize_fast(const c10::Device& device) {
  return device.is_cpu() || (device.is_cuda() && kernels::cuda_kernels_compiled());
}

void four_bit_dequantize_out(const FourBitBlocks& w, at::Tensor& out) {
  const c10::Device device = w.packed.device();
  TORCH_CHECK(w.packed.scalar_type() == at::kByte && w.packed.is_contiguous() && w.packed.numel() * 2 >= w.numel,
              "4-bit dequantize: ", w.numel, " elements need ", (w.numel + 1) / 2, " contiguous uint8 bytes");
  TORCH_CHECK(w.blocksize > 0 && w.blocksize % 2 == 0, "4-bit dequantize: block size ", w.blocksize, " is not even");
  TORCH_CHECK(out.device() == device && out.is_contiguous() && out.numel() == w.numel, "4-bit dequantize: out must be ",
              w.numel, " contiguous values on ", device);
  TORCH_CHECK(w.code.device() == device && w.code.scalar_type() == at::kFloat && w.code.numel() == 16 &&
                  w.code.is_contiguous(),
              "4-bit dequantize: code must be 16 float32 values on ", device);
  if (device.is_cuda()) {
    TORCH_CHECK(kernels::cuda_kernels_compiled(), "4-bit dequantize: llmtune was built without its CUDA kernels");
    kernels::four_bit_dequantize_cuda(args_of(w), out);
    return;
  }
  TORCH_CHECK(device.is_cpu(), "4-bit dequantize: no fast path on ", device, " (use the ATen reference)");
  const AbsmaxReader absmax = absmax_reader(w);
  if (w.numel == 0) return;
  switch (out.scalar_type()) {
    case at::kFloat: dequantize_cpu(w, absmax, out.mutable_data_ptr<float>()); break;
    case at::kBFloat16: dequantize_cpu(w, absmax, out.mutable_data_ptr<c10::BFloat16>()); break;
    case at::kHalf: dequantize_cpu(w, absmax, out.mutable_data_ptr<c10::Half>()); break;
    default: TORCH_CHECK(false, "4-bit dequantize: unsupported output dtype ", out.scalar_type());
  }
}

bool four_bit_gemv_available(const at::Tensor& x) {
  const auto t = x.scalar_type();
  return x.is_cuda() && kernels::cuda_kernels_compiled() && (t == at::kFloat || t == at::kHalf || t == at::kBFloat16);
}

at::Tensor four_bit_gemv(const FourBitBlocks& w, const at::Tensor& x, int64_t out_features) {
  TORCH_CHECK(four_bit_gemv_available(x), "4-bit gemv: needs a float CUDA tensor and llmtune's CUDA kernels");
  return kernels::four_bit_gemv_cuda(args_of(w), x.contiguous().view({-1}), out_features);
}

void four_bit_quantize_cpu(const at::Tensor& x, const at::Tensor& mid, const at::Tensor& order, int64_t blocksize,
                           at::Tensor& packed, at::Tensor& absmax) {
  const int64_t n = x.numel(), blocks = (n + blocksize - 1) / blocksize;
  TORCH_CHECK(x.is_cpu() && x.is_contiguous(), "4-bit quantize: x must be contiguous on the CPU");
  TORCH_CHECK(blocksize > 0 && blocksize % 2 == 0, "4-bit quantize: block size ", blocksize, " is not even");
  TORCH_CHECK(mid.is_cpu() && mid.is_contiguous() && mid.scalar_type() == at::kFloat && mid.numel() == 15 &&
                  order.is_cpu() && order.is_contiguous() && order.scalar_type() == at::kLong && order.numel() == 16,
              "4-bit quantize: 15 float32 midpoints and 16 int64 code indices expected on the CPU");
  TORCH_CHECK(packed.is_cpu() && packed.is_contiguous() && packed.scalar_type() == at::kByte &&
                  packed.numel() == (n + 1) / 2 && absmax.is_cpu() && absmax.is_contiguous() &&
                  absmax.scalar_type() == at::kFloat && absmax.numel() == blocks,
              "4-bit quantize: packed (uint8 [", (n + 1) / 2, "]) and absmax (float32 [", blocks, "]) expected");
  if (n == 0) return;
  const float* m = mid.const_data_ptr<float>();
  const int64_t* o = order.const_data_ptr<int64_t>();
  uint8_t* p = packed.mutable_data_ptr<uint8_t>();
  float* a = absmax.mutable_data_ptr<float>();
  switch (x.scalar_type()) {
    case at::kFloat: quantize_cpu(x.const_data_ptr<float>(), n, blocksize, m, o, p, a); break;
    case at::kBFloat16: quantize_cpu(x.const_data_ptr<c10::BFloat16>(), n, blocksize, m, o, p, a); break;
    case at::kHalf: quantize_cpu(x.const_data_ptr<c10::Half>(), n, blocksize, m, o, p, a); break;
    default: TORCH_CHECK(false, "4-bit quantize: unsupported dtype ", x.scalar_type());
  }
}

}  // namespace llmtune::ops
