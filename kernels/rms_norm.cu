// RMSNorm forward on CUDA: one thread block per row, fp32 accumulation, 16-byte vector loads when
// the row allows. The reference and the rounding order it must match are in src/ops/rms_norm.cpp.
// x, y: (rows, H) contiguous; w: (H,)
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "element_types.cuh"
#include "launchers.h"

namespace llmtune::kernels {
namespace {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the block; every thread gets the result.
__device__ float block_sum(float v) {
  __shared__ float partial[32];
  __shared__ float total;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < (blockDim.x + 31) / 32 ? partial[lane] : 0.f;
    v = warp_sum(v);
    if (lane == 0) total = v;
  }
  __syncthreads();
  return total;
}

// N elements per access (N = 1 for the scalar path).
template <typename T, int N>
__global__ void rms_norm_kernel(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                                int64_t hidden, float eps, bool unit_offset) {
  using V = Vec<T, N>;
  const int64_t row = blockIdx.x;
  const V* xr = reinterpret_cast<const V*>(x + row * hidden);
  const V* wv = reinterpret_cast<const V*>(w);
  V* yr = reinterpret_cast<V*>(y + row * hidden);
  const int64_t n_vec = hidden / N;

  float sum_sq = 0.f;
  for (int64_t i = threadIdx.x; i < n_vec; i += blockDim.x) {
    V a = xr[i];
#pragma unroll
    for (int j = 0; j < N; ++j) {
      float f = to_float(a.v[j]);
      sum_sq += f * f;
    }
  }
  const float inv_rms = rsqrtf(block_sum(sum_sq) / static_cast<float>(hidden) + eps);

  for (int64_t i = threadIdx.x; i < n_vec; i += blockDim.x) {
    V a = xr[i], g = wv[i], out;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      float normed = to_float(a.v[j]) * inv_rms;
      // Llama rounds the normalized value to T before scaling; Gemma scales in fp32.
      out.v[j] = unit_offset ? from_float<T>(normed * (1.f + to_float(g.v[j])))
                             : from_float<T>(to_float(g.v[j]) * to_float(from_float<T>(normed)));
    }
    yr[i] = out;
  }
}

template <typename T>
void launch(const at::Tensor& x, const at::Tensor& w, at::Tensor& y, double eps, bool unit_offset) {
  constexpr int kVec = 16 / sizeof(T);
  const int64_t hidden = x.size(-1);
  const int64_t rows = x.numel() / hidden;
  const auto* xp = reinterpret_cast<const T*>(x.const_data_ptr());
  const auto* wp = reinterpret_cast<const T*>(w.const_data_ptr());
  auto* yp = reinterpret_cast<T*>(y.mutable_data_ptr());
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const bool vectorized = hidden % kVec == 0 && aligned(xp) && aligned(wp) && aligned(yp);
  const int64_t n_access = vectorized ? hidden / kVec : hidden;
  const int threads = static_cast<int>(std::min<int64_t>(1024, std::max<int64_t>(32, (n_access + 31) / 32 * 32)));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();
  if (vectorized) {
    rms_norm_kernel<T, kVec><<<rows, threads, 0, stream>>>(xp, wp, yp, hidden, static_cast<float>(eps), unit_offset);
  } else {
    rms_norm_kernel<T, 1><<<rows, threads, 0, stream>>>(xp, wp, yp, hidden, static_cast<float>(eps), unit_offset);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

at::Tensor rms_norm_forward_cuda(const at::Tensor& x, const at::Tensor& weight, double eps, bool unit_offset) {
  TORCH_CHECK(x.is_cuda() && weight.is_cuda() && x.is_contiguous() && weight.is_contiguous(),
              "rms_norm_forward_cuda: contiguous CUDA tensors expected");
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(), "rms_norm_forward_cuda: x and weight dtypes differ");
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
  switch (x.scalar_type()) {
    case at::kFloat: launch<float>(x, weight, y, eps, unit_offset); break;
    case at::kHalf: launch<__half>(x, weight, y, eps, unit_offset); break;
    case at::kBFloat16: launch<__nv_bfloat16>(x, weight, y, eps, unit_offset); break;
    default: TORCH_CHECK(false, "rms_norm_forward_cuda: unsupported dtype ", x.scalar_type());
  }
  return y;
}

}  // namespace llmtune::kernels
