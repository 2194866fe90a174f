// Compile check for csrc/cuda/kernels/spmm.cuh (tests/test_cuda_kernels_compile.py): instantiates every launcher,
// hence every kernel variant, for each supported value type. Never linked or run.
#include "../../csrc/cuda/kernels/spmm.cuh"

#define SPARSECOMP_INSTANTIATE_SPMM(T)                                                                           \
  template cudaError_t sparsecomp::cuda::launch_spmm_small_batch<T>(                                            \
      const T*, const sparsecomp::cuda::SparseStructure&, const T*, int64_t, const T*, T*, cudaStream_t);       \
  template cudaError_t sparsecomp::cuda::launch_spmm_transposed<T>(const T*, const sparsecomp::cuda::SparseStructure&, \
                                                                   const int32_t*, const T*, int64_t, const T*, T*, \
                                                                   cudaStream_t);                              \
  template cudaError_t sparsecomp::cuda::launch_sddmm<T>(const sparsecomp::cuda::SparseStructure&, const T*,     \
                                                         const T*, int64_t, T*, cudaStream_t);                   \
  template cudaError_t sparsecomp::cuda::launch_spmm_t_scatter<T>(                                              \
      const T*, const sparsecomp::cuda::SparseStructure&, const T*, int64_t, float*, cudaStream_t);

SPARSECOMP_INSTANTIATE_SPMM(float)
SPARSECOMP_INSTANTIATE_SPMM(__half)
SPARSECOMP_INSTANTIATE_SPMM(__nv_bfloat16)
