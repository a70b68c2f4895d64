// bitsandbytes' NF4/FP4 blockwise 4-bit weights on CUDA: dequantize to fp32/fp16/bf16, and a
// matrix-vector product for batch-1 decoding. The ATen reference (and the rounding both must match)
// is quant::dequantize_4bit_reference in src/quant/bnb.cpp; the format is FORMATS.md §5.
// packed: (numel + 1) / 2 bytes, element 2m in the high nibble of byte m; absmax: one per block of
// `blocksize` consecutive elements (uint8 codes of a 256-entry map when double-quantized).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "element_types.cuh"
#include "launchers.h"

namespace llmtune::kernels {
namespace {

// The tables a kernel reads per element, staged in shared memory: 16 codes, and the 256-entry
// nested map when the absmax is double-quantized.
struct Tables {
  float code[16];
  float nested_code[256];
};

struct Params {
  const uint8_t* packed;
  const float* code;
  const float* absmax_f32;       // not nested
  const uint8_t* absmax_u8;      // nested
  const float* nested_code;
  const float* nested_absmax;
  float nested_offset;
  int64_t blocksize;
  int64_t nested_blocksize;
  int64_t numel;
};

__device__ __forceinline__ void load_tables(const Params& p, Tables& t) {
  for (int i = threadIdx.x; i < 16; i += blockDim.x) t.code[i] = p.code[i];
  if (p.absmax_u8)
    for (int i = threadIdx.x; i < 256; i += blockDim.x) t.nested_code[i] = p.nested_code[i];
  __syncthreads();
}

// The float32 absmax of block b. Explicit round-to-nearest intrinsics: no contraction into an FMA,
// so the result is the reference's product-then-sum to the bit.
__device__ __forceinline__ float block_absmax(const Params& p, const Tables& t, int64_t b) {
  if (!p.absmax_u8) return p.absmax_f32[b];
  return __fadd_rn(__fmul_rn(t.nested_code[p.absmax_u8[b]], p.nested_absmax[b / p.nested_blocksize]), p.nested_offset);
}

// Eight consecutive elements per thread (four bytes): blocksize is a multiple of 8, so all eight
// share one absmax.
template <typename T>
__global__ void dequantize_kernel(Params p, T* __restrict__ out) {
  __shared__ Tables t;
  load_tables(p, t);
  const int64_t n_groups = (p.numel + 7) / 8;
  const int64_t n_bytes = (p.numel + 1) / 2;
  for (int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; g < n_groups;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e0 = g * 8;
    const float a = block_absmax(p, t, e0 / p.blocksize);
    const int64_t byte0 = g * 4;
    const int n_here = p.numel - e0 < 8 ? static_cast<int>(p.numel - e0) : 8;
    uint32_t word = 0;
    if (byte0 + 4 <= n_bytes) {
      word = p.packed[byte0] | (uint32_t{p.packed[byte0 + 1]} << 8) | (uint32_t{p.packed[byte0 + 2]} << 16) |
             (uint32_t{p.packed[byte0 + 3]} << 24);
    } else {
      for (int i = 0; byte0 + i < n_bytes; ++i) word |= uint32_t{p.packed[byte0 + i]} << (8 * i);
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      if (i < n_here) {
        const uint32_t byte = (word >> (8 * (i / 2))) & 0xFF;
        const uint32_t nib = (i % 2 == 0) ? (byte >> 4) : (byte & 0xF);
        out[e0 + i] = from_float<T>(__fmul_rn(t.code[nib], a));
      }
    }
  }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

constexpr int kGemvThreads = 128;

// One thread block per output row. kVec: 8 elements per step from one 32-bit word of codes and one
// vector load of x (in_features % 8 == 0, aligned pointers); otherwise one element per step.
template <typename T, bool kVec>
__global__ void gemv_kernel(Params p, const T* __restrict__ x, T* __restrict__ y, int64_t in_features) {
  __shared__ Tables t;
  __shared__ float partial[kGemvThreads / 32];
  load_tables(p, t);
  const int64_t row = blockIdx.x;
  const int64_t row_start = row * in_features;
  float acc = 0.f;
  if constexpr (kVec) {
    const auto* words = reinterpret_cast<const uint32_t*>(p.packed + row_start / 2);
    const auto* xv = reinterpret_cast<const Vec<T, 8>*>(x);
    for (int64_t j = threadIdx.x; j < in_features / 8; j += kGemvThreads) {
      const uint32_t word = words[j];
      const Vec<T, 8> xs = xv[j];
      const float a = block_absmax(p, t, (row_start + 8 * j) / p.blocksize);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const uint32_t byte = (word >> (8 * (i / 2))) & 0xFF;
        const uint32_t nib = (i % 2 == 0) ? (byte >> 4) : (byte & 0xF);
        // The weight rounded to T first, as dequantize-then-multiply rounds it.
        acc += to_float(from_float<T>(__fmul_rn(t.code[nib], a))) * to_float(xs.v[i]);
      }
    }
  } else {
    for (int64_t k = threadIdx.x; k < in_features; k += kGemvThreads) {
      const int64_t e = row_start + k;
      const uint32_t byte = p.packed[e / 2];
      const uint32_t nib = (e % 2 == 0) ? (byte >> 4) : (byte & 0xF);
      const float a = block_absmax(p, t, e / p.blocksize);
      acc += to_float(from_float<T>(__fmul_rn(t.code[nib], a))) * to_float(x[k]);
    }
  }
  acc = warp_sum(acc);
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.f;
#pragma unroll
    for (int w = 0; w < kGemvThreads / 32; ++w) total += partial[w];
    y[row] = from_float<T>(total);
  }
}

Params params_of(const FourBitArgs& w) {
  TORCH_CHECK(w.packed.is_cuda() && w.packed.is_contiguous() && w.packed.scalar_type() == at::kByte,
              "4-bit kernels: packed must be contiguous uint8 on CUDA");
  TORCH_CHECK(w.packed.numel() * 2 >= w.numel, "4-bit kernels: ", w.numel, " elements need ", (w.numel + 1) / 2,
              " packed bytes, got ", w.packed.numel());
  TORCH_CHECK(w.blocksize >= 8 && w.blocksize % 8 == 0, "4-bit kernels: block size ", w.blocksize,
              " is not a multiple of 8");
  TORCH_CHECK(w.code.device() == w.packed.device() && w.code.scalar_type() == at::kFloat && w.code.numel() == 16 &&
                  w.code.is_contiguous(),
              "4-bit kernels: code must be 16 contiguous float32 values on packed's device");
  TORCH_CHECK(w.absmax.device() == w.packed.device() && w.absmax.is_contiguous(),
              "4-bit kernels: absmax must be contiguous on packed's device");
  const int64_t blocks = (w.numel + w.blocksize - 1) / w.blocksize;
  TORCH_CHECK(w.absmax.numel() >= blocks, "4-bit kernels: ", blocks, " absmax values needed, got ", w.absmax.numel());
  Params p{};
  p.packed = w.packed.const_data_ptr<uint8_t>();
  p.code = w.code.const_data_ptr<float>();
  p.blocksize = w.blocksize;
  p.nested_blocksize = w.nested_blocksize;
  p.numel = w.numel;
  p.nested_offset = static_cast<float>(w.nested_offset);
  if (w.nested_code.defined()) {
    TORCH_CHECK(w.absmax.scalar_type() == at::kByte, "4-bit kernels: a nested absmax must be uint8 codes");
    TORCH_CHECK(w.nested_code.device() == w.packed.device() && w.nested_code.scalar_type() == at::kFloat &&
                    w.nested_code.numel() == 256 && w.nested_code.is_contiguous(),
                "4-bit kernels: nested_code must be 256 contiguous float32 values on packed's device");
    TORCH_CHECK(w.nested_absmax.device() == w.packed.device() && w.nested_absmax.scalar_type() == at::kFloat &&
                    w.nested_absmax.is_contiguous() && w.nested_blocksize > 0 &&
                    w.nested_absmax.numel() * w.nested_blocksize >= blocks,
                "4-bit kernels: nested_absmax must be contiguous float32 on packed's device, one per ",
                w.nested_blocksize, " blocks");
    p.absmax_u8 = w.absmax.const_data_ptr<uint8_t>();
    p.nested_code = w.nested_code.const_data_ptr<float>();
    p.nested_absmax = w.nested_absmax.const_data_ptr<float>();
  } else {
    TORCH_CHECK(w.absmax.scalar_type() == at::kFloat, "4-bit kernels: absmax must be float32 when not nested");
    p.absmax_f32 = w.absmax.const_data_ptr<float>();
  }
  return p;
}

template <typename T>
void launch_dequantize(const Params& p, at::Tensor& out) {
  constexpr int threads = 256;
  const int64_t groups = (p.numel + 7) / 8;
  const int64_t blocks = std::min<int64_t>((groups + threads - 1) / threads, 65535 * 8);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(out.get_device()).stream();
  dequantize_kernel<T><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(p, reinterpret_cast<T*>(out.mutable_data_ptr()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_gemv(const Params& p, const at::Tensor& x, at::Tensor& y, int64_t out_features, int64_t in_features) {
  const auto* xp = reinterpret_cast<const T*>(x.const_data_ptr());
  auto* yp = reinterpret_cast<T*>(y.mutable_data_ptr());
  const bool vec = in_features % 8 == 0 && reinterpret_cast<uintptr_t>(p.packed) % 4 == 0 &&
                   reinterpret_cast<uintptr_t>(xp) % (8 * sizeof(T)) == 0;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();
  const auto rows = static_cast<unsigned>(out_features);
  if (vec) {
    gemv_kernel<T, true><<<rows, kGemvThreads, 0, stream>>>(p, xp, yp, in_features);
  } else {
    gemv_kernel<T, false><<<rows, kGemvThreads, 0, stream>>>(p, xp, yp, in_features);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void four_bit_dequantize_cuda(const FourBitArgs& w, at::Tensor& out) {
  c10::cuda::CUDAGuard guard(w.packed.device());
  const Params p = params_of(w);
  TORCH_CHECK(out.device() == w.packed.device() && out.is_contiguous() && out.numel() == w.numel,
              "four_bit_dequantize_cuda: out must be ", w.numel, " contiguous values on packed's device");
  if (w.numel == 0) return;
  switch (out.scalar_type()) {
    case at::kFloat: launch_dequantize<float>(p, out); break;
    case at::kHalf: launch_dequantize<__half>(p, out); break;
    case at::kBFloat16: launch_dequantize<__nv_bfloat16>(p, out); break;
    default: TORCH_CHECK(false, "four_bit_dequantize_cuda: unsupported output dtype ", out.scalar_type());
  }
}

at::Tensor four_bit_gemv_cuda(const FourBitArgs& w, const at::Tensor& x, int64_t out_features) {
  c10::cuda::CUDAGuard guard(w.packed.device());
  const Params p = params_of(w);
  TORCH_CHECK(x.device() == w.packed.device() && x.is_contiguous() && x.dim() == 1,
              "four_bit_gemv_cuda: x must be one contiguous row on packed's device");
  const int64_t in_features = x.numel();
  TORCH_CHECK(out_features > 0 && out_features <= INT32_MAX && out_features * in_features == w.numel,
              "four_bit_gemv_cuda: weight of ", w.numel, " elements is not ", out_features, " x ", in_features);
  at::Tensor y = at::empty({out_features}, x.options());
  switch (x.scalar_type()) {
    case at::kFloat: launch_gemv<float>(p, x, y, out_features, in_features); break;
    case at::kHalf: launch_gemv<__half>(p, x, y, out_features, in_features); break;
    case at::kBFloat16: launch_gemv<__nv_bfloat16>(p, x, y, out_features, in_features); break;
    default: TORCH_CHECK(false, "four_bit_gemv_cuda: unsupported dtype ", x.scalar_type());
  }
  return y;
}

}  // namespace llmtune::kernels
