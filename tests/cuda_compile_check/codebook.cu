// Compile check for csrc/cuda/kernels/codebook.cuh (tests/test_cuda_kernels_compile.py): instantiates every
// launcher, hence every kernel variant, for each supported value type. Never linked or run.
#include "../../csrc/cuda/kernels/codebook.cuh"

#define SPARSECOMP_INSTANTIATE_CODEBOOK(T)                                                                      \
  template cudaError_t sparsecomp::cuda::launch_codebook_gemv<T>(const T*, int64_t, int64_t,                    \
                                                                 const sparsecomp::cuda::CodebookView&, const T*, \
                                                                 const T*, T*, int64_t, cudaStream_t);          \
  template cudaError_t sparsecomp::cuda::launch_codebook_dequant<T>(const sparsecomp::cuda::CodebookView&,        \
                                                                    const T*, T*, cudaStream_t);

SPARSECOMP_INSTANTIATE_CODEBOOK(float)
SPARSECOMP_INSTANTIATE_CODEBOOK(__half)
SPARSECOMP_INSTANTIATE_CODEBOOK(__nv_bfloat16)
