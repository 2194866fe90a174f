// CUDA kernel of dwpw_conv2d, the fused depthwise -> pointwise convolution:
//   mid[c]  = mid_act(depthwise_kxk(x)[c] * scale[c] + shift[c])
//   out[o]  = act(sum_c pw[o][c] * mid[c] + bias[o])
//
// Plain CUDA, no torch: the launcher takes raw device pointers (NCHW-contiguous x and out, dw [C][k*k], pw [O][C],
// scale/shift/bias nullable), sizes and a stream, and returns the launch's cudaError_t. Values are float, __half or
// __nv_bfloat16; everything is computed and accumulated in fp32.
//
// One block computes an 8x8 tile of output pixels of one image for 64 output channels, looping over the input
// channels in chunks of 16:
//   1. the chunk's input patch (tile + halo, zero padded) -> shared memory, with its dw weights, scale, shift and
//      the pw weights [chunk][64 outputs];
//   2. depthwise taps + scale/shift + mid_act for the 16 x 64 (channel, pixel) pairs -> shared memory `mid`;
//   3. a tiled GEMM step acc[o][p] += pw[o][c] * mid[c][p] from shared memory, each thread holding a 4 x 4 block of
//      (output channel, pixel) accumulators in registers.
// The depthwise result never goes to global memory; the cost is recomputing it once per 64 output channels
// (k*k / 64 extra multiply-adds per pointwise one). Stride is a runtime value (1 or 2 per dimension), the shared
// patch sized for stride 2. First version, compile-checked only (no GPU was available when it was written).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "value_types.cuh"

namespace sparsecomp {
namespace cuda {

constexpr int kDwpwTile = 8;       // output tile is kDwpwTile x kDwpwTile pixels
constexpr int kDwpwPixels = kDwpwTile * kDwpwTile;
constexpr int kDwpwOBlock = 64;    // output channels per block
constexpr int kDwpwChunk = 16;     // input channels per shared-memory stage
constexpr int kDwpwThreads = 256;  // 16 pixel groups x 16 output-channel groups, 4 x 4 accumulators each
constexpr int64_t kDwpwMaxGridZ = 65535;

// Activation codes (same numbering as sparsecomp::cpu::DwpwAct).
enum DwpwCudaAct : int { kDwpwActNone = 0, kDwpwActRelu = 1, kDwpwActRelu6 = 2, kDwpwActHardswish = 3 };

struct DwpwCudaShape {
  int64_t n, c, h, w;  // input
  int64_t o, oh, ow;   // output
  int k;               // 3, 5 or 7
  int sh, sw;          // stride, 1 or 2
  int ph, pw;          // zero padding, < k
  int mid_act, act;    // DwpwCudaAct
};

namespace dwpw_detail {

__device__ __forceinline__ float activate(float v, int act) {
  switch (act) {
    case kDwpwActRelu: return fmaxf(v, 0.0f);
    case kDwpwActRelu6: return fminf(fmaxf(v, 0.0f), 6.0f);
    case kDwpwActHardswish: return v * fminf(fmaxf(v + 3.0f, 0.0f), 6.0f) * (1.0f / 6.0f);
    default: return v;
  }
}

}  // namespace dwpw_detail

// grid: (tiles_h * tiles_w, ceil(O / kDwpwOBlock), images of this launch); x and out point at the first image.
template <typename T, int K>
__global__ void __launch_bounds__(kDwpwThreads)
    dwpw_conv2d_kernel(DwpwCudaShape s, const T* __restrict__ x, const T* __restrict__ dw,
                       const T* __restrict__ scale, const T* __restrict__ shift, const T* __restrict__ pw,
                       const T* __restrict__ bias, T* __restrict__ out) {
  using namespace dwpw_detail;
  constexpr int kPatch = (kDwpwTile - 1) * 2 + K;  // patch side for stride 2 (stride 1 uses a corner of it)
  __shared__ float patch[kDwpwChunk][kPatch][kPatch];
  __shared__ float mid[kDwpwChunk][kDwpwPixels];
  __shared__ float pw_s[kDwpwChunk][kDwpwOBlock];
  __shared__ float dw_s[kDwpwChunk][K * K];
  __shared__ float scale_s[kDwpwChunk], shift_s[kDwpwChunk];

  const int tid = static_cast<int>(threadIdx.x);
  const int tp = tid % 16, to = tid / 16;  // this thread: pixels tp + 16 j, output channels to + 16 i
  const int64_t tiles_w = (s.ow + kDwpwTile - 1) / kDwpwTile;
  const int64_t oy0 = static_cast<int64_t>(blockIdx.x) / tiles_w * kDwpwTile;
  const int64_t ox0 = static_cast<int64_t>(blockIdx.x) % tiles_w * kDwpwTile;
  const int64_t ob0 = static_cast<int64_t>(blockIdx.y) * kDwpwOBlock;
  const int64_t img = blockIdx.z;
  const T* x_img = x + img * s.c * s.h * s.w;
  const int ph_rows = (kDwpwTile - 1) * s.sh + K, ph_cols = (kDwpwTile - 1) * s.sw + K;  // patch in use
  const int64_t iy0 = oy0 * s.sh - s.ph, ix0 = ox0 * s.sw - s.pw;

  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
  }

  for (int64_t c0 = 0; c0 < s.c; c0 += kDwpwChunk) {
    // 1. Stage the chunk: input patch (zeros outside the image and past C), weights, scale/shift.
    const int patch_elems = ph_rows * ph_cols;
    for (int idx = tid; idx < kDwpwChunk * patch_elems; idx += kDwpwThreads) {
      const int cc = idx / patch_elems, r = (idx % patch_elems) / ph_cols, q = idx % ph_cols;
      const int64_t c = c0 + cc, gy = iy0 + r, gx = ix0 + q;
      float v = 0.0f;
      if (c < s.c && gy >= 0 && gy < s.h && gx >= 0 && gx < s.w) v = to_float(x_img[(c * s.h + gy) * s.w + gx]);
      patch[cc][r][q] = v;
    }
    for (int idx = tid; idx < kDwpwChunk * kDwpwOBlock; idx += kDwpwThreads) {
      const int cc = idx % kDwpwChunk, ob = idx / kDwpwChunk;  // consecutive threads read consecutive c of a row
      const int64_t c = c0 + cc, o = ob0 + ob;
      pw_s[cc][ob] = (c < s.c && o < s.o) ? to_float(pw[o * s.c + c]) : 0.0f;
    }
    for (int idx = tid; idx < kDwpwChunk * K * K; idx += kDwpwThreads) {
      const int cc = idx / (K * K), t = idx % (K * K);
      const int64_t c = c0 + cc;
      dw_s[cc][t] = c < s.c ? to_float(dw[c * K * K + t]) : 0.0f;
    }
    if (tid < kDwpwChunk) {
      const int64_t c = c0 + tid;
      scale_s[tid] = (c < s.c && scale != nullptr) ? to_float(scale[c]) : 1.0f;
      shift_s[tid] = (c < s.c && shift != nullptr) ? to_float(shift[c]) : 0.0f;
    }
    __syncthreads();

    // 2. Depthwise taps in (ky, kx) order, then scale/shift and the middle activation.
    for (int idx = tid; idx < kDwpwChunk * kDwpwPixels; idx += kDwpwThreads) {
      const int cc = idx / kDwpwPixels, p = idx % kDwpwPixels;
      const int py = (p / kDwpwTile) * s.sh, px = (p % kDwpwTile) * s.sw;
      float a = 0.0f;
#pragma unroll
      for (int ky = 0; ky < K; ++ky) {
#pragma unroll
        for (int kx = 0; kx < K; ++kx) a = fmaf(patch[cc][py + ky][px + kx], dw_s[cc][ky * K + kx], a);
      }
      // Channels past C hold 0 (their pw weights are 0 too, so a nonzero shift could not leak either).
      mid[cc][p] = (c0 + cc < s.c) ? activate(fmaf(a, scale_s[cc], shift_s[cc]), s.mid_act) : 0.0f;
    }
    __syncthreads();

    // 3. Pointwise GEMM step from shared memory.
#pragma unroll 4
    for (int cc = 0; cc < kDwpwChunk; ++cc) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = pw_s[cc][to + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = mid[cc][tp + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
      }
    }
    __syncthreads();  // the next chunk overwrites the shared buffers
  }

  // Epilogue: bias, activation, store (pixels and channels past the output are dropped).
  T* out_img = out + img * s.o * s.oh * s.ow;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t o = ob0 + to + 16 * i;
    if (o >= s.o) continue;
    const float b = bias != nullptr ? to_float(bias[o]) : 0.0f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int p = tp + 16 * j;
      const int64_t oy = oy0 + p / kDwpwTile, ox = ox0 + p % kDwpwTile;
      if (oy < s.oh && ox < s.ow) out_img[(o * s.oh + oy) * s.ow + ox] = from_float<T>(activate(acc[i][j] + b, s.act));
    }
  }
}

// out = dwpw_conv2d(x, ...) for NCHW-contiguous x [N, C, H, W] and out [N, O, OH, OW]; dw [C][k*k], pw [O][C];
// scale, shift, bias may be nullptr. Returns cudaErrorInvalidValue for an unsupported k, stride or padding.
template <typename T>
cudaError_t launch_dwpw_conv2d(const DwpwCudaShape& s, const T* x, const T* dw, const T* scale, const T* shift,
                               const T* pw, const T* bias, T* out, cudaStream_t stream) {
  if (s.k != 3 && s.k != 5 && s.k != 7) return cudaErrorInvalidValue;
  if (s.sh < 1 || s.sh > 2 || s.sw < 1 || s.sw > 2 || s.ph < 0 || s.pw < 0 || s.ph >= s.k || s.pw >= s.k) {
    return cudaErrorInvalidValue;
  }
  if (s.n <= 0 || s.o <= 0 || s.oh <= 0 || s.ow <= 0) return cudaSuccess;
  const int64_t tiles = ((s.oh + kDwpwTile - 1) / kDwpwTile) * ((s.ow + kDwpwTile - 1) / kDwpwTile);
  const int64_t oblocks = (s.o + kDwpwOBlock - 1) / kDwpwOBlock;
  if (tiles > 0x7fffffff || oblocks > 65535) return cudaErrorInvalidValue;
  const int64_t in_img = s.c * s.h * s.w, out_img = s.o * s.oh * s.ow;
  for (int64_t n0 = 0; n0 < s.n; n0 += kDwpwMaxGridZ) {  // gridDim.z is limited to 65535 images per launch
    const int64_t images = s.n - n0 < kDwpwMaxGridZ ? s.n - n0 : kDwpwMaxGridZ;
    const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(oblocks), static_cast<unsigned>(images));
    const T* xi = x + n0 * in_img;
    T* oi = out + n0 * out_img;
    switch (s.k) {
      case 3: dwpw_conv2d_kernel<T, 3><<<grid, kDwpwThreads, 0, stream>>>(s, xi, dw, scale, shift, pw, bias, oi); break;
      case 5: dwpw_conv2d_kernel<T, 5><<<grid, kDwpwThreads, 0, stream>>>(s, xi, dw, scale, shift, pw, bias, oi); break;
      default: dwpw_conv2d_kernel<T, 7><<<grid, kDwpwThreads, 0, stream>>>(s, xi, dw, scale, shift, pw, bias, oi); break;
    }
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace sparsecomp
