// CUDA kernels of codebook_mm: y = x @ W^T + bias with W[o][k] = codebook(o)[idx(o, k)], the indices packed as in
// csrc/cpu/codebook.h (per row a little-endian bit stream of `bits`-bit indices, rows padded to 32-bit words).
//
// Plain CUDA, no torch: launchers take raw device pointers, sizes and a stream and return the launch's
// cudaError_t. x, codebook, bias and y are float, __half or __nv_bfloat16; products accumulate in fp32.
//
// Kernels (first version, compile-checked only: no GPU was available when they were written):
//   codebook_gemv_kernel     batch <= kCodebookSmallBatchMax: one warp per output row; lane l decodes indices
//                            l, l + 32, ... (consecutive lanes read consecutive bits: coalesced words) and reuses
//                            each decoded weight for every sample. Tables of <= 32 entries live in registers
//                            (lane e holds entry e, looked up with __shfl_sync: no shared-memory banks involved);
//                            larger tables (6..8 bits) sit in shared memory, one copy per warp.
//   codebook_dequant_kernel  W in T for the larger-batch path, where the binding hands it to cuBLAS (tensor cores
//                            for half/bfloat16).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "value_types.cuh"

namespace sparsecomp {
namespace cuda {

constexpr int64_t kCodebookSmallBatchMax = 8;
constexpr int kCodebookWarps = 8;  // warps (= output rows) per block of the GEMV

struct CodebookView {
  const uint32_t* packed;  // row o at packed + o * row_words
  int64_t row_words;
  int64_t rows;
  int64_t cols;
  int bits;           // 1..8
  int64_t cb_stride;  // 0 (one table) or 2^bits (one per row)
};

namespace codebook_detail {

// Index k of a packed row; never reads past the row's last word.
__device__ __forceinline__ uint32_t index_at(const uint32_t* row, int64_t row_words, int64_t k, int bits) {
  const int64_t bit = k * bits;
  const int64_t word = bit >> 5;
  const int shift = static_cast<int>(bit & 31);
  uint64_t v = __ldg(row + word);
  if (shift + bits > 32 && word + 1 < row_words) v |= static_cast<uint64_t>(__ldg(row + word + 1)) << 32;
  return static_cast<uint32_t>(v >> shift) & ((1u << bits) - 1u);
}

}  // namespace codebook_detail

template <typename T, int M>
__global__ void __launch_bounds__(kCodebookWarps * 32)
    codebook_gemv_kernel(const T* __restrict__ x, int64_t ldx, CodebookView w, const T* __restrict__ codebook,
                         const T* __restrict__ bias, T* __restrict__ y, int64_t ldy) {
  using namespace codebook_detail;
  __shared__ float tables[kCodebookWarps][256];
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kCodebookWarps + warp;
  if (o >= w.rows) return;  // whole warps leave together: the shuffles below stay warp-uniform
  const int entries = 1 << w.bits;
  const T* cb = codebook + o * w.cb_stride;
  const bool in_registers = entries <= 32;
  float reg_entry = 0.0f;
  if (in_registers) {
    reg_entry = lane < entries ? to_float(cb[lane]) : 0.0f;
  } else {
    for (int e = lane; e < entries; e += 32) tables[warp][e] = to_float(cb[e]);
    __syncwarp();
  }
  const uint32_t* row = w.packed + o * w.row_words;
  float acc[M];
#pragma unroll
  for (int j = 0; j < M; ++j) acc[j] = 0.0f;
  for (int64_t k0 = 0; k0 < w.cols; k0 += 32) {
    const int64_t k = k0 + lane;
    const bool active = k < w.cols;
    const uint32_t idx = active ? index_at(row, w.row_words, k, w.bits) : 0u;
    // Every lane takes part in the shuffle, active or not.
    const float wv = in_registers ? __shfl_sync(0xffffffffu, reg_entry, static_cast<int>(idx)) : tables[warp][idx];
    if (active) {
#pragma unroll
      for (int j = 0; j < M; ++j) acc[j] = fmaf(wv, to_float(x[j * ldx + k]), acc[j]);
    }
  }
#pragma unroll
  for (int j = 0; j < M; ++j) {
    float s = acc[j];
#pragma unroll
    for (int off = 16; off > 0; off /= 2) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0) y[j * ldy + o] = from_float<T>(s + (bias ? to_float(bias[o]) : 0.0f));
  }
}

template <typename T>
__global__ void codebook_dequant_kernel(CodebookView w, const T* __restrict__ codebook, T* __restrict__ out) {
  using namespace codebook_detail;
  const int64_t total = w.rows * w.cols;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t o = i / w.cols, k = i % w.cols;
    out[i] = codebook[o * w.cb_stride + index_at(w.packed + o * w.row_words, w.row_words, k, w.bits)];
  }
}

// y[j * ldy + o] for samples j < m <= kCodebookSmallBatchMax and every row o.
template <typename T>
cudaError_t launch_codebook_gemv(const T* x, int64_t ldx, int64_t m, const CodebookView& w, const T* codebook,
                                 const T* bias, T* y, int64_t ldy, cudaStream_t stream) {
  if (m <= 0 || w.rows <= 0) return cudaSuccess;
  if (m > kCodebookSmallBatchMax) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>((w.rows + kCodebookWarps - 1) / kCodebookWarps));
  const dim3 block(kCodebookWarps * 32);
  switch (m) {
    case 1: codebook_gemv_kernel<T, 1><<<grid, block, 0, stream>>>(x, ldx, w, codebook, bias, y, ldy); break;
    case 2: codebook_gemv_kernel<T, 2><<<grid, block, 0, stream>>>(x, ldx, w, codebook, bias, y, ldy); break;
    case 3: codebook_gemv_kernel<T, 3><<<grid, block, 0, stream>>>(x, ldx, w, codebook, bias, y, ldy); break;
    case 4: codebook_gemv_kernel<T, 4><<<grid, block, 0, stream>>>(x, ldx, w, codebook, bias, y, ldy); break;
    case 5: codebook_gemv_kernel<T, 5><<<grid, block, 0, stream>>>(x, ldx, w, codebook, bias, y, ldy); break;
    case 6: codebook_gemv_kernel<T, 6><<<grid, block, 0, stream>>>(x, ldx, w, codebook, bias, y, ldy); break;
    case 7: codebook_gemv_kernel<T, 7><<<grid, block, 0, stream>>>(x, ldx, w, codebook, bias, y, ldy); break;
    default: codebook_gemv_kernel<T, 8><<<grid, block, 0, stream>>>(x, ldx, w, codebook, bias, y, ldy); break;
  }
  return cudaGetLastError();
}

// out[o * cols + k] = W[o][k] (row-major [rows, cols] in T).
template <typename T>
cudaError_t launch_codebook_dequant(const CodebookView& w, const T* codebook, T* out, cudaStream_t stream) {
  const int64_t total = w.rows * w.cols;
  if (total <= 0) return cudaSuccess;
  const int threads = 256;
  const int64_t blocks = (total + threads - 1) / threads;
  const unsigned grid = static_cast<unsigned>(blocks < 65535 * 16 ? blocks : 65535 * 16);  // grid-stride beyond
  codebook_dequant_kernel<T><<<grid, threads, 0, stream>>>(w, codebook, out);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace sparsecomp
