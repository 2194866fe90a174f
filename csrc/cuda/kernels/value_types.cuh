// fp32 <-> element-type conversions shared by every kernel: loads widen to float (products accumulate in fp32),
// stores round to nearest. Element types: float, __half, __nv_bfloat16 (and double where a binding allows it).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace sparsecomp {
namespace cuda {

template <typename T>
__device__ __forceinline__ float to_float(T v) {
  return static_cast<float>(v);
}
template <>
__device__ __forceinline__ float to_float<__half>(__half v) {
  return __half2float(v);
}
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T from_float(float v) {
  return static_cast<T>(v);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

}  // namespace cuda
}  // namespace sparsecomp
