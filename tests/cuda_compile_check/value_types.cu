// Compile check for csrc/cuda/kernels/value_types.cuh (tests/test_cuda_kernels_compile.py): a round trip through
// every element type, so each conversion is instantiated. Never linked or run.
#include "../../csrc/cuda/kernels/value_types.cuh"

template <typename T>
__global__ void value_types_round_trip(const T* in, T* out) {
  out[threadIdx.x] = sparsecomp::cuda::from_float<T>(sparsecomp::cuda::to_float(in[threadIdx.x]) * 2.0f);
}

template __global__ void value_types_round_trip<float>(const float*, float*);
template __global__ void value_types_round_trip<__half>(const __half*, __half*);
template __global__ void value_types_round_trip<__nv_bfloat16>(const __nv_bfloat16*, __nv_bfloat16*);
