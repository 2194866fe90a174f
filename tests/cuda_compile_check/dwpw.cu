// Compile check for csrc/cuda/kernels/dwpw.cuh (tests/test_cuda_kernels_compile.py): instantiates the launcher,
// hence every kernel variant (k = 3, 5, 7), for each supported value type. Never linked or run.
#include "../../csrc/cuda/kernels/dwpw.cuh"

#define SPARSECOMP_INSTANTIATE_DWPW(T)                                                                        \
  template cudaError_t sparsecomp::cuda::launch_dwpw_conv2d<T>(const sparsecomp::cuda::DwpwCudaShape&, const T*, \
                                                               const T*, const T*, const T*, const T*, const T*,  \
                                                               T*, cudaStream_t);

SPARSECOMP_INSTANTIATE_DWPW(float)
SPARSECOMP_INSTANTIATE_DWPW(__half)
SPARSECOMP_INSTANTIATE_DWPW(__nv_bfloat16)
