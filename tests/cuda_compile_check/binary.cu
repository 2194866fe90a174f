// Compile check for csrc/cuda/kernels/binary.cuh (tests/test_cuda_kernels_compile.py): instantiates every launcher,
// hence every kernel variant (SIMT, both tensor-core tile shapes, BinaryConnect, packing), for each supported value
// type. Never linked or run.
#include "../../csrc/cuda/kernels/binary.cuh"

namespace bk = sparsecomp::cuda::binary;

#define SPARSECOMP_INSTANTIATE_BINARY(T)                                                                          \
  template cudaError_t bk::launch_bitpack_rows<T>(const T*, int64_t, int64_t, int64_t, int64_t, uint64_t*,        \
                                                  cudaStream_t);                                                  \
  template cudaError_t bk::launch_bitpack_strided<T>(const T*, int64_t, int64_t, int64_t, int64_t, int64_t,       \
                                                     int64_t, int64_t, int64_t, int64_t, uint64_t*, cudaStream_t); \
  template cudaError_t bk::launch_xnor_conv<T>(const uint64_t*, const bk::ConvShape&, const bk::PackedWeight&,    \
                                               const bk::Epilogue<T>&, bk::XnorKernel, cudaStream_t);             \
  template cudaError_t bk::launch_binaryconnect_conv<T>(const bk::RealInput<T>&, const bk::ConvShape&,            \
                                                        const uint64_t*, const bk::Epilogue<T>&, cudaStream_t);

SPARSECOMP_INSTANTIATE_BINARY(float)
SPARSECOMP_INSTANTIATE_BINARY(__half)
SPARSECOMP_INSTANTIATE_BINARY(__nv_bfloat16)

// bitpack also takes float64 input (the sign is compared in double).
template cudaError_t bk::launch_bitpack_rows<double>(const double*, int64_t, int64_t, int64_t, int64_t, uint64_t*,
                                                     cudaStream_t);
template cudaError_t bk::launch_bitpack_strided<double>(const double*, int64_t, int64_t, int64_t, int64_t, int64_t,
                                                        int64_t, int64_t, int64_t, int64_t, uint64_t*, cudaStream_t);

// The non-template launchers (inline): called from an external function so their kernels are compiled too.
cudaError_t sparsecomp_binary_check_inline_launchers(cudaStream_t stream) {
  cudaError_t err = bk::launch_bitunpack(nullptr, 1, 1, 1, nullptr, stream);
  if (err == cudaSuccess) err = bk::launch_weight_popcounts(nullptr, 1, 1, 1, nullptr, nullptr, stream);
  if (err == cudaSuccess) err = bk::launch_b1_mma_peak(1, 32, 1, nullptr, stream);
  return err;
}
