// Conversions between the element types the kernels read and write (fp32, fp16, bf16) and the
// float32 they compute in (round to nearest even on the way back), and an aligned vector of N
// elements for 8- or 16-byte loads. Shared by the .cu files in kernels/.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace llmtune::kernels {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

}  // namespace llmtune::kernels
