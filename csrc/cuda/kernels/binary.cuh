// CUDA kernels of the binary (1-bit) layers: sign-bit packing, the XNOR-popcount convolution / linear layer (SIMT
// and b1 tensor-core versions) and the BinaryConnect product of real activations with +-1 weights.
//
// Plain CUDA, no torch: every launcher takes raw device pointers, sizes and a stream, and returns the launch's
// cudaError_t. Activations, alpha, bias and outputs may be float, __half or __nv_bfloat16 (bitpack also double);
// popcounts accumulate in int32, BinaryConnect sums in fp32, and the output is rounded once.
//
// Packed layout (the contract of csrc/sparsecomp.cpp): sign bits along the packed dim in 64-bit words, bit i of
// word w = element 64w+i (little-endian, so also bit i of 32-bit word v = element 32v+i), 1 = +1 (v >= 0, NaN ->
// -1), 0 = -1, tail bits past the last element 0.
//   activations of a conv: xbits [N, H, W, groups, Wg], channels of each group packed separately (Wg = ceil(Cg/64))
//   weights:               wbits [O, KH, KW, Wg] = [O, K] with K = KH*KW*Wg words, so the weight row of output o
//                          is contiguous and its word k = (tap, j) matches word k of the implicit im2col row below.
// A linear layer is the 1x1 conv of a 1x1 image: xbits [M, Kw], wbits [O, Kw], output [M, O] (channels-last).
//
// The convolution is an implicit GEMM: row m = (n, oh, ow) of A is the im2col vector of output position m, word
// k = (tap t = (r, s), j) read from xbits[n, oh*SH - PH + r*DH, ow*SW - PW + s*DW, group, j]; no im2col buffer.
// Zero padding: an out-of-frame tap reads 0 words, so it adds popc(0 ^ w_t) = popc(w_t) mismatches instead of 0
// products; with V valid taps the +-1 dot is
//     dot = Cg*V - 2*(mismatches - sum over out-of-frame taps t of popc(W[o, t, :]))
// (interior positions have V = KH*KW and no correction). Padding 'ones' reads all-ones words (tail bits 0)
// instead, so every tap is real and dot = Cg*KH*KW - 2*mismatches. Tail bits are 0 in both operands and never
// mismatch. y = act(alpha[o] * dot + bias[o]) in fp32 (one fma), stored in T, NCHW or channels-last.
//
// Kernels:
//   bitpack_rows_kernel      x rows with contiguous elements (last dim, or channels of a channels-last image):
//                            one warp per 32-bit word, lane i reads element 32v+i, __ballot_sync packs the signs.
//   bitpack_strided_kernel   any-strided NCHW x: one thread per (n, group, word, h, w), w fastest so the reads of a
//                            warp are coalesced along W; each thread loops over its 32 channels.
//   bitunpack_kernel         one thread per output element.
//   weight_popcount_kernel   popc of every (o, tap) word run and of every weight row (the padding correction and the
//                            tensor-core identity below need them). Weight tail bits are masked off wherever the
//                            XNOR kernels read them, so a stray tail bit cannot count (BinaryConnect: it meets x = 0).
//   xnor_simt_kernel         64x64 output tile per 256-thread block, 8 words of K per shared-memory stage,
//                            4x4 outputs per thread, __popcll(a ^ b).
//   xnor_mma_kernel          mma.sync m16n8k256 b1 AND-popc (sm_80+; the XOR form is gone after sm_89):
//                            popc(a ^ b) = popc(a) + popc(b) - 2 popc(a & b) with popc(b) per weight row precomputed
//                            and popc(a) per A row summed by the thread that loads the row. Two tile shapes:
//                            128x128 (wide) and 256x64 (tall, for <= 64 outputs per group); register-staged double
//                            buffering of one 256-bit K step; the epilogue stages each warp's accumulators in shared
//                            memory so that stores run along the output's contiguous dim.
//   binaryconnect_kernel     real activations times +-1 weights: 64x64 tile, a weight word's 64 channels per stage,
//                            the weight bit flips the sign bit of x (no multiplies), fp32 sums; padded taps read 0.
//   b1_mma_peak_kernel       tight loop of independent b1 MMAs on registers (microbenchmark of the peak rate).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "value_types.cuh"

namespace sparsecomp {
namespace cuda {
namespace binary {

constexpr int kWarpSize = 32;

// Geometry of a binary convolution (a linear layer is batch = M, 1x1 image, 1x1 kernel, out_channels_last).
struct ConvShape {
  int64_t batch, in_h, in_w;
  int64_t groups;
  int64_t group_channels;  // Cg = in_channels / groups
  int64_t group_words;     // Wg = ceil(Cg / 64)
  int64_t out_channels;    // O over all groups (a multiple of groups)
  int kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int64_t out_h, out_w;
  bool pad_ones;           // padding_mode 'ones' (XNOR only): padded taps read +1
  bool out_channels_last;  // output memory [N, OH, OW, O] (and [M, O]); else [N, O, OH, OW]

  __host__ __device__ int taps() const { return kernel_h * kernel_w; }
  __host__ __device__ int64_t k_words() const { return static_cast<int64_t>(taps()) * group_words; }
  __host__ __device__ int64_t rows() const { return batch * out_h * out_w; }
  __host__ __device__ int64_t group_out() const { return out_channels / groups; }
  // Valid bits of the last word of a tap (all ones when Cg is a multiple of 64).
  __host__ __device__ uint64_t tail_mask() const {
    const int tail = static_cast<int>(group_channels & 63);
    return tail != 0 ? (uint64_t{1} << tail) - 1 : ~uint64_t{0};
  }
};

// The packed weight and its popcounts (device pointers).
struct PackedWeight {
  const uint64_t* bits;    // [O, K]
  const int32_t* tap_pop;  // [O, taps]: popcount of each tap's Wg words
  const int32_t* row_pop;  // [O]: popcount of the whole row
};

// Output transform: out = act(alpha[o] * acc + bias[o]).
template <typename T>
struct Epilogue {
  const T* alpha;  // [O]
  const T* bias;   // [O] or nullptr
  bool relu;
  T* out;
};

// Real (not binarized) activations of a conv: x[n, c, h, w] at n*stride_n + c*stride_c + h*stride_h + w*stride_w.
template <typename T>
struct RealInput {
  const T* x;
  int64_t stride_n, stride_c, stride_h, stride_w;
};

enum class XnorKernel { kSimt, kMmaWide, kMmaTall };

namespace detail {

constexpr int kPackThreads = 256;
constexpr int64_t kMaxGridBlocks = 1 << 16;  // grid-stride loops above this
constexpr int64_t kMaxGridYZ = 65535;
constexpr int64_t kMaxGridX = 2147483647;

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The sign bit of the contract: v >= 0 (so -0.0 gives 1 and NaN 0), compared in v's own precision (half and
// bfloat16 widen exactly; a double is not narrowed, which could turn -1e-300 into -0.0).
__device__ __forceinline__ bool sign_bit(float v) { return v >= 0.0f; }
__device__ __forceinline__ bool sign_bit(double v) { return v >= 0.0; }
__device__ __forceinline__ bool sign_bit(__half v) { return __half2float(v) >= 0.0f; }
__device__ __forceinline__ bool sign_bit(__nv_bfloat16 v) { return __bfloat162float(v) >= 0.0f; }

__device__ __forceinline__ int popc64(uint64_t v) { return __popcll(v); }

// ------------------------------------------------------------------------------------------------ packing kernels

// out (32-bit words) [rows, segs, w32] with w32 = 2 * ceil(seg_len / 64): segment s of row r is the seg_len elements
// at x[r * row_stride + s * seg_len ...] (contiguous). Word index = (r * segs + s) * w32 + v. Lanes past seg_len vote
// 0, which zeroes the tail bits and the unused upper half of a last 64-bit word.
template <typename T>
__global__ void __launch_bounds__(kPackThreads)
    bitpack_rows_kernel(const T* __restrict__ x, int64_t rows, int64_t row_stride, int64_t seg_len, int64_t segs,
                        uint32_t* __restrict__ out) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t w32 = 2 * ceil_div(seg_len, 64);
  const int64_t items = rows * segs * w32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarpSize);
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
       item < items; item += warps) {  // warp-uniform: every lane of a warp holds the same item
    const int64_t v = item % w32;
    const int64_t rs = item / w32;  // r * segs + s
    const int64_t s = rs % segs, r = rs / segs;
    const int64_t e = v * 32 + lane;
    const bool bit = e < seg_len && sign_bit(x[r * row_stride + s * seg_len + e]);
    const uint32_t word = __ballot_sync(0xffffffffu, bit);
    if (lane == 0) out[item] = word;
  }
}

// x [N, C, H, W] with any strides -> out (32-bit words) [N, H, W, groups, w32]. Item order (n, g, v, h, w), w
// fastest, so consecutive threads read consecutive w of one channel.
template <typename T>
__global__ void __launch_bounds__(kPackThreads)
    bitpack_strided_kernel(const T* __restrict__ x, int64_t n_img, int64_t height, int64_t width, int64_t stride_n,
                           int64_t stride_c, int64_t stride_h, int64_t stride_w, int64_t groups,
                           int64_t group_channels, uint32_t* __restrict__ out) {
  const int64_t w32 = 2 * ceil_div(group_channels, 64);
  const int64_t items = n_img * groups * w32 * height * width;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; item < items; item += step) {
    int64_t rest = item;
    const int64_t w = rest % width;
    rest /= width;
    const int64_t h = rest % height;
    rest /= height;
    const int64_t v = rest % w32;
    rest /= w32;
    const int64_t g = rest % groups;
    const int64_t n = rest / groups;
    const int64_t c0 = g * group_channels + v * 32;
    const int64_t count = group_channels - v * 32;  // channels of this word still in the group (may be <= 0)
    const T* px = x + n * stride_n + h * stride_h + w * stride_w + c0 * stride_c;
    uint32_t word = 0;
    for (int b = 0; b < 32 && b < count; ++b) word |= static_cast<uint32_t>(sign_bit(px[b * stride_c])) << b;
    out[(((n * height + h) * width + w) * groups + g) * w32 + v] = word;
  }
}

__global__ void __launch_bounds__(kPackThreads)
    bitunpack_kernel(const uint64_t* __restrict__ packed, int64_t rows, int64_t words, int64_t size,
                     float* __restrict__ out) {
  const int64_t items = rows * size;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < items; i += step) {
    const int64_t r = i / size, e = i - r * size;
    out[i] = (packed[r * words + (e >> 6)] >> (e & 63)) & 1u ? 1.0f : -1.0f;
  }
}

__global__ void __launch_bounds__(kPackThreads)
    weight_popcount_kernel(const uint64_t* __restrict__ bits, int64_t out_channels, int taps, int64_t tap_bits,
                           int32_t* __restrict__ tap_pop, int32_t* __restrict__ row_pop) {
  const int64_t tap_words = ceil_div(tap_bits, 64);
  const uint64_t tail = (tap_bits & 63) != 0 ? (uint64_t{1} << (tap_bits & 63)) - 1 : ~uint64_t{0};
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t o = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; o < out_channels; o += step) {
    const uint64_t* row = bits + o * taps * tap_words;
    int32_t total = 0;
    for (int t = 0; t < taps; ++t) {
      int32_t p = 0;
      for (int64_t j = 0; j < tap_words; ++j) {
        const uint64_t v = row[t * tap_words + j];
        p += popc64(j == tap_words - 1 ? v & tail : v);  // tail bits ignored, as in load_weight_words
      }
      tap_pop[o * taps + t] = p;
      total += p;
    }
    row_pop[o] = total;
  }
}

// ------------------------------------------------------------------------------- implicit im2col and epilogue

// One output position as both GEMMs need it: where its inputs start and where its outputs go.
struct OutRow {
  int64_t n;           // image
  int64_t out_base;    // offset of output (m, o = 0)
  int64_t out_stride;  // offset step between consecutive output channels
  int64_t ih0, iw0;    // input coordinates of tap (0, 0); may be negative (padding)
  int valid_taps;      // taps inside the input frame (all taps with padding 'ones')
  bool ok;             // m < M
};

__device__ __forceinline__ int count_inside(int64_t start, int kernel, int dil, int64_t size) {
  int n = 0;
  for (int r = 0; r < kernel; ++r) n += (start + static_cast<int64_t>(r) * dil >= 0 && start + r * dil < size);
  return n;
}

__device__ __forceinline__ OutRow out_row(const ConvShape& g, int64_t m) {
  OutRow row;
  row.ok = m < g.rows();
  if (!row.ok) m = 0;
  const int64_t plane = g.out_h * g.out_w;
  row.n = m / plane;
  const int64_t p = m - row.n * plane;
  const int64_t oh = p / g.out_w, ow = p - oh * g.out_w;
  row.ih0 = oh * g.stride_h - g.pad_h;
  row.iw0 = ow * g.stride_w - g.pad_w;
  if (g.out_channels_last) {
    row.out_base = m * g.out_channels;
    row.out_stride = 1;
  } else {
    row.out_base = row.n * g.out_channels * plane + p;
    row.out_stride = plane;
  }
  row.valid_taps = g.pad_ones ? g.taps()
                              : count_inside(row.ih0, g.kernel_h, g.dil_h, g.in_h) *
                                    count_inside(row.iw0, g.kernel_w, g.dil_w, g.in_w);
  return row;
}

// The word that padding 'ones' reads for word j of a tap: all channels +1, tail bits 0.
__device__ __forceinline__ uint64_t ones_word(const ConvShape& g, int64_t j) {
  return j == g.group_words - 1 ? g.tail_mask() : ~uint64_t{0};
}

// A-operand row of the implicit im2col: image n's packed pixels of one group.
struct BitRow {
  const uint64_t* base;  // word j of pixel (h, w) at base[(h * W + w) * pixel_words + j]
  int64_t ih0, iw0;
  bool ok;
};

__device__ __forceinline__ BitRow bit_row(const uint64_t* xbits, const ConvShape& g, int64_t m, int64_t group) {
  const OutRow r = out_row(g, m);
  const int64_t pixel_words = g.groups * g.group_words;
  return {xbits + r.n * g.in_h * g.in_w * pixel_words + group * g.group_words, r.ih0, r.iw0, r.ok};
}

// Words k0 .. k0+NW-1 of an im2col row: 0 past K and for rows past M; out-of-frame taps read 0 ('zeros') or
// ones_word ('ones'). One division per call; the (r, s, j) walk is incremental.
template <int NW>
__device__ __forceinline__ void load_bit_words(const BitRow& row, const ConvShape& g, int64_t k0,
                                               uint64_t (&w)[NW]) {
  const int64_t wg = g.group_words, k_total = g.k_words(), pixel_words = g.groups * wg;
  const int64_t tap = k0 / wg;
  int64_t j = k0 - tap * wg;
  int r = static_cast<int>(tap / g.kernel_w);
  int s = static_cast<int>(tap - static_cast<int64_t>(r) * g.kernel_w);
#pragma unroll
  for (int q = 0; q < NW; ++q) {
    uint64_t v = 0;
    if (row.ok && k0 + q < k_total) {
      const int64_t ih = row.ih0 + static_cast<int64_t>(r) * g.dil_h;
      const int64_t iw = row.iw0 + static_cast<int64_t>(s) * g.dil_w;
      if (ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w)
        v = row.base[(ih * g.in_w + iw) * pixel_words + j];
      else if (g.pad_ones)
        v = ones_word(g, j);
    }
    w[q] = v;
    if (++j == wg) {
      j = 0;
      if (++s == g.kernel_w) {
        s = 0;
        ++r;
      }
    }
  }
}

// Words k0 .. k0+NW-1 of a weight row (nullptr = output channel past the group: zeros), 0 past K. Tail bits are
// masked off: the contract says they are 0, and masking them keeps a stray bit from counting as a mismatch
// without a device-to-host check.
template <int NW>
__device__ __forceinline__ void load_weight_words(const uint64_t* row, const ConvShape& g, int64_t k0,
                                                  uint64_t (&w)[NW]) {
  const int64_t wg = g.group_words, k_total = g.k_words();
  if (row == nullptr || k0 >= k_total) {
#pragma unroll
    for (int q = 0; q < NW; ++q) w[q] = 0;
    return;
  }
  const uint64_t tail = g.tail_mask();
  int64_t j = k0 % wg;  // wg >= 1 here: k_total > 0
#pragma unroll
  for (int q = 0; q < NW; ++q) {
    const uint64_t v = k0 + q < k_total ? row[k0 + q] : 0;
    w[q] = j == wg - 1 ? v & tail : v;
    if (++j == wg) j = 0;
  }
}

// act(alpha * acc + bias) with one rounding (fma); the caller rounds once more to the output type.
__device__ __forceinline__ float epilogue_value(float alpha, float bias, float acc, bool relu) {
  const float y = __fmaf_rn(alpha, acc, bias);
  return relu && y < 0.0f ? 0.0f : y;  // NaN stays NaN, as torch.relu
}

template <typename T>
__device__ __forceinline__ void store_output(const Epilogue<T>& e, const OutRow& row, int64_t o, float acc) {
  const float y = epilogue_value(to_float(e.alpha[o]), e.bias != nullptr ? to_float(e.bias[o]) : 0.0f, acc, e.relu);
  e.out[row.out_base + o * row.out_stride] = from_float<T>(y);
}

// Popcount of the weight taps of output o that met a zero (padded) word at this position. Only border positions
// need it; out of line so the fully unrolled GEMM epilogues do not carry a copy of the loop per output.
inline __device__ __noinline__ int32_t padded_tap_mismatches(const ConvShape& g, const PackedWeight& wt,
                                                             const OutRow& row, int64_t o) {
  const int taps = g.taps();
  int32_t sum = 0;
  for (int r = 0; r < g.kernel_h; ++r) {
    const int64_t ih = row.ih0 + static_cast<int64_t>(r) * g.dil_h;
    const bool row_in = ih >= 0 && ih < g.in_h;
    for (int s = 0; s < g.kernel_w; ++s) {
      const int64_t iw = row.iw0 + static_cast<int64_t>(s) * g.dil_w;
      if (!(row_in && iw >= 0 && iw < g.in_w)) sum += wt.tap_pop[o * taps + r * g.kernel_w + s];
    }
  }
  return sum;
}

// Output (m, o) of the XNOR conv from its mismatch count (popc(a ^ w) summed over all K words of the im2col row).
template <typename T>
__device__ __forceinline__ void store_xnor(const ConvShape& g, const PackedWeight& wt, const Epilogue<T>& e,
                                           const OutRow& row, int64_t o, int64_t mismatches) {
  if (row.valid_taps < g.taps()) mismatches -= padded_tap_mismatches(g, wt, row, o);  // 'zeros' borders only
  const int64_t dot = g.group_channels * row.valid_taps - 2 * mismatches;
  store_output(e, row, o, static_cast<float>(dot));
}

// ------------------------------------------------------------------------------------------------ SIMT XNOR GEMM

constexpr int kSimtBM = 64, kSimtBN = 64, kSimtBK = 8, kSimtThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kSimtThreads)
    xnor_simt_kernel(const uint64_t* __restrict__ xbits, ConvShape g, PackedWeight wt, Epilogue<T> e) {
  __shared__ uint64_t a_tile[kSimtBK][kSimtBM];  // k-major: the compute loop reads a row of m (or o) per k
  __shared__ uint64_t b_tile[kSimtBK][kSimtBN];
  const int tid = threadIdx.x;
  const int64_t group = blockIdx.z, group_out = g.group_out(), k_total = g.k_words();
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kSimtBM, o0 = static_cast<int64_t>(blockIdx.y) * kSimtBN;

  // Loader: thread -> tile row tid / 4 (of A and of B), words 2 * (tid % 4) and the next of each stage.
  const int lrow = tid >> 2, lk = (tid & 3) * 2;
  const BitRow arow = bit_row(xbits, g, m0 + lrow, group);
  const uint64_t* brow = o0 + lrow < group_out ? wt.bits + (group * group_out + o0 + lrow) * k_total : nullptr;

  const int ty = tid >> 4, tx = tid & 15;  // outputs (m0 + ty + 16 i, o0 + tx + 16 j)
  int32_t acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0;

  for (int64_t k0 = 0; k0 < k_total; k0 += kSimtBK) {
    uint64_t a[2], b[2];
    load_bit_words<2>(arow, g, k0 + lk, a);
    load_weight_words<2>(brow, g, k0 + lk, b);
    a_tile[lk][lrow] = a[0];
    a_tile[lk + 1][lrow] = a[1];
    b_tile[lk][lrow] = b[0];
    b_tile[lk + 1][lrow] = b[1];
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kSimtBK; ++kk) {
      uint64_t av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = a_tile[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = b_tile[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += popc64(av[i] ^ bv[j]);
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const OutRow row = out_row(g, m0 + ty + 16 * i);
    if (!row.ok) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t o = o0 + tx + 16 * j;
      if (o < group_out) store_xnor(g, wt, e, row, group * group_out + o, acc[i][j]);
    }
  }
}

// ------------------------------------------------------------------------------------- tensor-core (b1) XNOR GEMM

// d += popc(a & b) over a 16x256 (A, row-major) by 256x8 (B, column-major) bit tile. Fragments (PTX ISA, "Matrix
// Fragments for mma.m16n8k256"), with g = lane / 4, t = lane % 4 and each 256-bit row seen as 8 32-bit words:
//   a[0] = A[g][word t], a[1] = A[g + 8][word t], a[2] = A[g][word t + 4], a[3] = A[g + 8][word t + 4]
//   b[0] = B[col g][word t], b[1] = B[col g][word t + 4]
//   d[0] = D[g][2t], d[1] = D[g][2t + 1], d[2] = D[g + 8][2t], d[3] = D[g + 8][2t + 1]
// Bit i of a word is element 32 * word + i in both operands, so any consistent order gives the same popcount.
__device__ __forceinline__ void mma_b1_and_popc(int32_t (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  asm("mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  (void)d;
  (void)a;
  (void)b;
  __trap();  // never launched below sm_80 (xnor_mma_supported)
#endif
}

// Block = kWarpsM x kWarpsN warps, each owning a (16 kTilesM) x (8 kTilesN) output tile.
template <int kWarpsM_, int kWarpsN_, int kTilesM_, int kTilesN_>
struct MmaConfig {
  static constexpr int kWarpsM = kWarpsM_, kWarpsN = kWarpsN_, kTilesM = kTilesM_, kTilesN = kTilesN_;
  static constexpr int kThreads = kWarpSize * kWarpsM * kWarpsN;
  static constexpr int kBM = kWarpsM * 16 * kTilesM;
  static constexpr int kBN = kWarpsN * 8 * kTilesN;
  static constexpr int kBK = 4;  // 64-bit words of K per stage: one k256 MMA step
  // Shared-memory row stride in 32-bit words: the stage's 8 words plus 4 of padding. With stride 12 the fragment
  // loads of a warp (rows g = 0..7, words t = 0..3 (+4)) hit banks (12 g + t) mod 32, all distinct.
  static constexpr int kRowWords = 12;
  static_assert(kBM % kThreads == 0, "each thread loads whole A rows");
};
using MmaWide = MmaConfig<2, 2, 4, 8>;  // 128 x 128 outputs, 4 warps of 64 x 64
using MmaTall = MmaConfig<4, 1, 4, 8>;  // 256 x 64 outputs, 4 warps of 64 x 64 (layers with <= 64 outputs/group)

template <typename T, typename Cfg>
__global__ void __launch_bounds__(Cfg::kThreads)
    xnor_mma_kernel(const uint64_t* __restrict__ xbits, ConvShape g, PackedWeight wt, Epilogue<T> e) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  constexpr int kThreads = Cfg::kThreads, kBM = Cfg::kBM, kBN = Cfg::kBN, kBK = Cfg::kBK, kRow = Cfg::kRowWords;
  constexpr int kARows = kBM / kThreads;                    // A rows loaded per thread
  constexpr int kBRows = (kBN + kThreads - 1) / kThreads;  // B rows loaded per thread (some threads may idle)
  constexpr int kWarpCols = 8 * Cfg::kTilesN, kScratchRow = kWarpCols + 4;  // epilogue staging, per warp [16][.]
  static_assert(Cfg::kWarpsM * Cfg::kWarpsN * 16 * kScratchRow <= 2 * (kBM + kBN) * kRow,
                "the epilogue staging reuses the operand tiles");
  // Operand tiles: both A buffers [kBM][kRow], then both B buffers [kBN][kRow].
  __shared__ __align__(16) uint32_t tiles[2 * (kBM + kBN) * kRow];
  __shared__ int32_t a_pop[kBM];       // popc of each A row
  __shared__ int64_t row_base[kBM];    // output offset of (row, o = 0); -1 past M
  __shared__ int32_t row_valid[kBM];   // valid taps of the row
  __shared__ float col_alpha[kBN], col_bias[kBN];
  __shared__ int32_t col_pop[kBN];     // popc of each weight row
  auto a_tile = [&](int buf) { return tiles + buf * (kBM * kRow); };
  auto b_tile = [&](int buf) { return tiles + 2 * kBM * kRow + buf * (kBN * kRow); };

  const int tid = threadIdx.x, lane = tid % kWarpSize, warp = tid / kWarpSize;
  const int wm = warp % Cfg::kWarpsM, wn = warp / Cfg::kWarpsM;
  const int gi = lane >> 2, ti = lane & 3;
  const int64_t group = blockIdx.z, group_out = g.group_out(), k_total = g.k_words();
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kBM, o0 = static_cast<int64_t>(blockIdx.y) * kBN;

  // Loader: thread -> A tile rows tid + i * kThreads and B tile rows likewise (all kBK words of a stage). The
  // thread that loads an A row also sums its popcount (padding words included: they are what the MMA sees).
  BitRow arows[kARows];
  int32_t apop[kARows];
#pragma unroll
  for (int i = 0; i < kARows; ++i) {
    arows[i] = bit_row(xbits, g, m0 + tid + i * kThreads, group);
    apop[i] = 0;
  }
  const uint64_t* brows[kBRows];
#pragma unroll
  for (int i = 0; i < kBRows; ++i) {
    const int r = tid + i * kThreads;
    brows[i] = (r < kBN && o0 + r < group_out) ? wt.bits + (group * group_out + o0 + r) * k_total : nullptr;
  }
  uint64_t ra[kARows][kBK], rb[kBRows][kBK];

  auto fetch = [&](int64_t k0) {
#pragma unroll
    for (int i = 0; i < kARows; ++i) {
      load_bit_words<kBK>(arows[i], g, k0, ra[i]);
#pragma unroll
      for (int q = 0; q < kBK; ++q) apop[i] += popc64(ra[i][q]);
    }
#pragma unroll
    for (int i = 0; i < kBRows; ++i) load_weight_words<kBK>(brows[i], g, k0, rb[i]);
  };
  auto stash = [&](int buf) {
#pragma unroll
    for (int i = 0; i < kARows; ++i) {
      uint64_t* dst = reinterpret_cast<uint64_t*>(&a_tile(buf)[(tid + i * kThreads) * kRow]);
#pragma unroll
      for (int q = 0; q < kBK; ++q) dst[q] = ra[i][q];  // 64-bit word q = 32-bit words 2q (low), 2q + 1
    }
#pragma unroll
    for (int i = 0; i < kBRows; ++i) {
      const int r = tid + i * kThreads;
      if (r < kBN) {
        uint64_t* dst = reinterpret_cast<uint64_t*>(&b_tile(buf)[r * kRow]);
#pragma unroll
        for (int q = 0; q < kBK; ++q) dst[q] = rb[i][q];
      }
    }
  };

  int32_t acc[Cfg::kTilesM][Cfg::kTilesN][4];
#pragma unroll
  for (int mt = 0; mt < Cfg::kTilesM; ++mt)
#pragma unroll
    for (int nt = 0; nt < Cfg::kTilesN; ++nt)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[mt][nt][c] = 0;

  auto compute = [&](int buf) {
    uint32_t af[Cfg::kTilesM][4], bf[Cfg::kTilesN][2];
#pragma unroll
    for (int mt = 0; mt < Cfg::kTilesM; ++mt) {
      const uint32_t* p = &a_tile(buf)[((wm * Cfg::kTilesM + mt) * 16 + gi) * kRow + ti];
      af[mt][0] = p[0];
      af[mt][1] = p[8 * kRow];
      af[mt][2] = p[4];
      af[mt][3] = p[8 * kRow + 4];
    }
#pragma unroll
    for (int nt = 0; nt < Cfg::kTilesN; ++nt) {
      const uint32_t* p = &b_tile(buf)[((wn * Cfg::kTilesN + nt) * 8 + gi) * kRow + ti];
      bf[nt][0] = p[0];
      bf[nt][1] = p[4];
    }
#pragma unroll
    for (int mt = 0; mt < Cfg::kTilesM; ++mt)
#pragma unroll
      for (int nt = 0; nt < Cfg::kTilesN; ++nt) mma_b1_and_popc(acc[mt][nt], af[mt], bf[nt]);
  };

  // Double buffer: stage s + 1 is read from global into registers while stage s is multiplied, then stored to the
  // other buffer. The barrier at the end of iteration s - 1 orders the reads of buffer (s + 1) & 1 = (s - 1) & 1
  // before these writes; the barrier at the end of iteration s orders the writes before iteration s + 1 reads.
  const int64_t stages = detail::ceil_div(k_total, kBK);
  if (stages > 0) {
    fetch(0);
    stash(0);
    __syncthreads();
    for (int64_t s = 0; s < stages; ++s) {
      const int buf = static_cast<int>(s & 1);
      if (s + 1 < stages) fetch((s + 1) * kBK);
      compute(buf);
      if (s + 1 < stages) stash(buf ^ 1);
      __syncthreads();
    }
  }
  // Epilogue. Per-row and per-column data go to shared memory once; then each warp stages one 16-row slab of its
  // accumulators at a time in shared memory (over the operand tiles, free after the loop's last barrier) and its
  // lanes walk the slab along the output's contiguous dim: channels for channels-last, positions for NCHW.
#pragma unroll
  for (int i = 0; i < kARows; ++i) a_pop[tid + i * kThreads] = apop[i];
  for (int r = tid; r < kBM; r += kThreads) {
    const OutRow row = out_row(g, m0 + r);
    row_base[r] = row.ok ? row.out_base : -1;
    row_valid[r] = row.valid_taps;
  }
  for (int c = tid; c < kBN; c += kThreads) {
    const int64_t ol = o0 + c, o = group * group_out + ol;
    const bool ok = ol < group_out;
    col_alpha[c] = ok ? to_float(e.alpha[o]) : 0.0f;
    col_bias[c] = ok && e.bias != nullptr ? to_float(e.bias[o]) : 0.0f;
    col_pop[c] = ok ? wt.row_pop[o] : 0;
  }
  __syncthreads();

  int32_t* const scratch = reinterpret_cast<int32_t*>(tiles) + warp * 16 * kScratchRow;
  const int wr0 = wm * Cfg::kTilesM * 16, wc0 = wn * kWarpCols;
  const int64_t out_stride = g.out_channels_last ? 1 : g.out_h * g.out_w;
  const int taps = g.taps();
#pragma unroll
  for (int mt = 0; mt < Cfg::kTilesM; ++mt) {
#pragma unroll
    for (int nt = 0; nt < Cfg::kTilesN; ++nt)
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        scratch[gi * kScratchRow + nt * 8 + 2 * ti + c] = acc[mt][nt][c];
        scratch[(gi + 8) * kScratchRow + nt * 8 + 2 * ti + c] = acc[mt][nt][2 + c];
      }
    __syncwarp();
    for (int i = lane; i < 16 * kWarpCols; i += kWarpSize) {
      const int rr = g.out_channels_last ? i / kWarpCols : i % 16;
      const int cc = g.out_channels_last ? i % kWarpCols : i / 16;
      const int r = wr0 + mt * 16 + rr, c = wc0 + cc;
      const int64_t base = row_base[r], ol = o0 + c;
      if (base < 0 || ol >= group_out) continue;
      const int64_t o = group * group_out + ol;
      // popc(a ^ w) = popc(a) + popc(w) - 2 popc(a & w), summed over the row
      int64_t mismatches =
          static_cast<int64_t>(a_pop[r]) + col_pop[c] - 2 * static_cast<int64_t>(scratch[rr * kScratchRow + cc]);
      const int valid = row_valid[r];
      if (valid < taps) mismatches -= padded_tap_mismatches(g, wt, out_row(g, m0 + r), o);  // 'zeros' borders
      const float dot = static_cast<float>(g.group_channels * valid - 2 * mismatches);
      e.out[base + o * out_stride] = from_float<T>(epilogue_value(col_alpha[c], col_bias[c], dot, e.relu));
    }
    __syncwarp();
  }
#else
  (void)xbits;
  (void)g;
  (void)wt;
  (void)e;
  __trap();  // never launched below sm_80 (xnor_mma_supported)
#endif
}

// ------------------------------------------------------------------------------------------------- BinaryConnect

constexpr int kBcBM = 64, kBcBN = 64, kBcThreads = 256;

// out[m, o] = act(alpha[o] * sum_{tap, c} x[n, g Cg + c, ih, iw] * sgn(W[o, tap, c]) + bias[o]): each stage is one
// weight word (64 channels of one tap); padded taps and channels past Cg read 0 and add nothing.
template <typename T>
__global__ void __launch_bounds__(kBcThreads)
    binaryconnect_kernel(RealInput<T> in, ConvShape g, const uint64_t* __restrict__ wbits, Epilogue<T> e) {
  __shared__ float x_tile[64][kBcBM];  // [channel within the word][row]
  __shared__ uint64_t w_tile[kBcBN];
  const int tid = threadIdx.x;
  const int64_t group = blockIdx.z, group_out = g.group_out(), k_total = g.k_words(), wg = g.group_words;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kBcBM, o0 = static_cast<int64_t>(blockIdx.y) * kBcBN;

  // Loader: thread -> row m0 + tid % 64 (consecutive threads read consecutive positions: coalesced for NCHW),
  // channels tid / 64 + 4 q of each stage.
  const int lrow = tid & 63, lc = tid >> 6;
  const OutRow lr = out_row(g, m0 + lrow);
  const T* xrow = in.x + lr.n * in.stride_n + group * g.group_channels * in.stride_c;

  const int ty = tid >> 4, tx = tid & 15;  // outputs (m0 + ty + 16 i, o0 + tx + 16 j)
  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

  for (int64_t k = 0; k < k_total; ++k) {
    const int64_t tap = k / wg, j = k - tap * wg;
    const int r = static_cast<int>(tap / g.kernel_w), s = static_cast<int>(tap % g.kernel_w);
    const int64_t ih = lr.ih0 + static_cast<int64_t>(r) * g.dil_h, iw = lr.iw0 + static_cast<int64_t>(s) * g.dil_w;
    const bool inside = lr.ok && ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w;
    const T* px = inside ? xrow + ih * in.stride_h + iw * in.stride_w : in.x;
#pragma unroll
    for (int q = 0; q < 16; ++q) {
      const int cl = lc + 4 * q;
      const int64_t c = j * 64 + cl;
      x_tile[cl][lrow] = (inside && c < g.group_channels) ? to_float(px[c * in.stride_c]) : 0.0f;
    }
    if (tid < kBcBN) {
      const int64_t o = o0 + tid;
      w_tile[tid] = o < group_out ? wbits[(group * group_out + o) * k_total + k] : 0;
    }
    __syncthreads();
    // Sign-flip masks: bit c of ~w set -> weight -1 -> flip the sign bit of x (exact; no multiply).
    uint32_t flip_lo[4], flip_hi[4];
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) {
      const uint64_t nw = ~w_tile[tx + 16 * jj];
      flip_lo[jj] = static_cast<uint32_t>(nw);
      flip_hi[jj] = static_cast<uint32_t>(nw >> 32);
    }
#pragma unroll
    for (int c = 0; c < 64; ++c) {
      float xv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) xv[i] = x_tile[c][ty + 16 * i];
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) {
        const uint32_t sign = ((c < 32 ? flip_lo[jj] >> c : flip_hi[jj] >> (c - 32)) & 1u) << 31;
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[i][jj] += __uint_as_float(__float_as_uint(xv[i]) ^ sign);
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const OutRow row = out_row(g, m0 + ty + 16 * i);
    if (!row.ok) continue;
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) {
      const int64_t o = o0 + tx + 16 * jj;
      if (o < group_out) store_output(e, row, group * group_out + o, acc[i][jj]);
    }
  }
}

// --------------------------------------------------------------------------------------------- peak microbenchmark

constexpr int kPeakChains = 8;  // independent accumulators per warp: enough to cover the MMA latency

// Every warp issues iters * kPeakChains b1 MMAs (16 x 8 x 256 AND-popc each) on register operands; the sums go to
// sink so nothing is optimized away.
__global__ void b1_mma_peak_kernel(int iters, int32_t* __restrict__ sink) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  const uint32_t seed = blockIdx.x * blockDim.x + threadIdx.x;
  const uint32_t a[4] = {seed * 0x9E3779B9u, seed ^ 0x85EBCA6Bu, ~seed, seed * 0xC2B2AE35u};
  const uint32_t b[2] = {seed * 0x27D4EB2Fu, seed ^ 0x165667B1u};
  int32_t d[kPeakChains][4];
#pragma unroll
  for (int c = 0; c < kPeakChains; ++c) d[c][0] = d[c][1] = d[c][2] = d[c][3] = 0;
  for (int it = 0; it < iters; ++it) {
#pragma unroll
    for (int c = 0; c < kPeakChains; ++c) {
      asm volatile(
          "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
          "{%8, %9}, {%0, %1, %2, %3};\n"
          : "+r"(d[c][0]), "+r"(d[c][1]), "+r"(d[c][2]), "+r"(d[c][3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
  }
  int32_t total = 0;
#pragma unroll
  for (int c = 0; c < kPeakChains; ++c) total += d[c][0] + d[c][1] + d[c][2] + d[c][3];
  sink[seed] = total;
#else
  (void)iters;
  (void)sink;
  __trap();
#endif
}

inline unsigned grid_for(int64_t items, int64_t per_block) {
  const int64_t blocks = ceil_div(items, per_block);
  return static_cast<unsigned>(blocks < kMaxGridBlocks ? blocks : kMaxGridBlocks);
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------------- launchers

// True when the tensor-core kernels can run on a device of this compute capability (b1 AND-popc MMA: sm_80+).
inline bool xnor_mma_supported(int cc_major) { return cc_major >= 8; }

// out (64-bit words) [rows, segs, ceil(seg_len / 64)] from rows of contiguous elements (see bitpack_rows_kernel).
template <typename T>
cudaError_t launch_bitpack_rows(const T* x, int64_t rows, int64_t row_stride, int64_t seg_len, int64_t segs,
                                uint64_t* out, cudaStream_t stream) {
  const int64_t items = rows * segs * 2 * detail::ceil_div(seg_len, 64);
  if (items == 0) return cudaSuccess;
  const unsigned grid = detail::grid_for(items, detail::kPackThreads / kWarpSize);
  detail::bitpack_rows_kernel<T><<<grid, detail::kPackThreads, 0, stream>>>(x, rows, row_stride, seg_len, segs,
                                                                            reinterpret_cast<uint32_t*>(out));
  return cudaGetLastError();
}

// out [N, H, W, groups, ceil(Cg / 64)] from x [N, C = groups * Cg, H, W] with any element strides.
template <typename T>
cudaError_t launch_bitpack_strided(const T* x, int64_t n_img, int64_t height, int64_t width, int64_t stride_n,
                                   int64_t stride_c, int64_t stride_h, int64_t stride_w, int64_t groups,
                                   int64_t group_channels, uint64_t* out, cudaStream_t stream) {
  const int64_t items = n_img * groups * 2 * detail::ceil_div(group_channels, 64) * height * width;
  if (items == 0) return cudaSuccess;
  detail::bitpack_strided_kernel<T><<<detail::grid_for(items, detail::kPackThreads), detail::kPackThreads, 0, stream>>>(
      x, n_img, height, width, stride_n, stride_c, stride_h, stride_w, groups, group_channels,
      reinterpret_cast<uint32_t*>(out));
  return cudaGetLastError();
}

// out [rows, size] float +1/-1 from packed [rows, words] (size <= 64 * words).
inline cudaError_t launch_bitunpack(const uint64_t* packed, int64_t rows, int64_t words, int64_t size, float* out,
                                    cudaStream_t stream) {
  if (rows * size == 0) return cudaSuccess;
  detail::bitunpack_kernel<<<detail::grid_for(rows * size, detail::kPackThreads), detail::kPackThreads, 0, stream>>>(
      packed, rows, words, size, out);
  return cudaGetLastError();
}

// tap_pop [O, taps] and row_pop [O] of bits [O, taps, ceil(tap_bits / 64)] (tap_bits = Cg; tail bits ignored).
inline cudaError_t launch_weight_popcounts(const uint64_t* bits, int64_t out_channels, int taps, int64_t tap_bits,
                                           int32_t* tap_pop, int32_t* row_pop, cudaStream_t stream) {
  if (out_channels == 0) return cudaSuccess;
  detail::weight_popcount_kernel<<<detail::grid_for(out_channels, detail::kPackThreads), detail::kPackThreads, 0,
                                   stream>>>(bits, out_channels, taps, tap_bits, tap_pop, row_pop);
  return cudaGetLastError();
}

// The kernel the automatic choice takes for this shape on a device of compute capability cc_major.
inline XnorKernel choose_xnor_kernel(const ConvShape& g, int cc_major) {
  if (!xnor_mma_supported(cc_major) || g.rows() < 64) return XnorKernel::kSimt;
  return g.group_out() <= 64 ? XnorKernel::kMmaTall : XnorKernel::kMmaWide;
}

namespace detail {
template <typename T, typename Cfg>
cudaError_t launch_xnor_mma(const uint64_t* xbits, const ConvShape& g, const PackedWeight& wt, const Epilogue<T>& e,
                            cudaStream_t stream) {
  const int64_t gy = ceil_div(g.group_out(), Cfg::kBN);
  if (ceil_div(g.rows(), Cfg::kBM) > kMaxGridX || gy > kMaxGridYZ || g.groups > kMaxGridYZ)
    return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(ceil_div(g.rows(), Cfg::kBM)), static_cast<unsigned>(gy),
                  static_cast<unsigned>(g.groups));
  xnor_mma_kernel<T, Cfg><<<grid, Cfg::kThreads, 0, stream>>>(xbits, g, wt, e);
  return cudaGetLastError();
}
}  // namespace detail

// XNOR conv / linear: e.out (m, o) for all M rows and O outputs from packed activations xbits [N, H, W, groups, Wg]
// and the packed weight with its popcounts (launch_weight_popcounts). kMma* need sm_80+ (xnor_mma_supported).
template <typename T>
cudaError_t launch_xnor_conv(const uint64_t* xbits, const ConvShape& g, const PackedWeight& wt, const Epilogue<T>& e,
                             XnorKernel kernel, cudaStream_t stream) {
  if (g.rows() == 0 || g.out_channels == 0) return cudaSuccess;
  switch (kernel) {
    case XnorKernel::kMmaWide:
      return detail::launch_xnor_mma<T, detail::MmaWide>(xbits, g, wt, e, stream);
    case XnorKernel::kMmaTall:
      return detail::launch_xnor_mma<T, detail::MmaTall>(xbits, g, wt, e, stream);
    case XnorKernel::kSimt:
      break;
  }
  const int64_t gy = detail::ceil_div(g.group_out(), detail::kSimtBN);
  if (detail::ceil_div(g.rows(), detail::kSimtBM) > detail::kMaxGridX || gy > detail::kMaxGridYZ ||
      g.groups > detail::kMaxGridYZ)
    return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(detail::ceil_div(g.rows(), detail::kSimtBM)), static_cast<unsigned>(gy),
                  static_cast<unsigned>(g.groups));
  detail::xnor_simt_kernel<T><<<grid, detail::kSimtThreads, 0, stream>>>(xbits, g, wt, e);
  return cudaGetLastError();
}

// BinaryConnect conv / linear (real activations, +-1 weights, zero padding only).
template <typename T>
cudaError_t launch_binaryconnect_conv(const RealInput<T>& in, const ConvShape& g, const uint64_t* wbits,
                                      const Epilogue<T>& e, cudaStream_t stream) {
  if (g.rows() == 0 || g.out_channels == 0) return cudaSuccess;
  const int64_t gy = detail::ceil_div(g.group_out(), detail::kBcBN);
  if (detail::ceil_div(g.rows(), detail::kBcBM) > detail::kMaxGridX || gy > detail::kMaxGridYZ ||
      g.groups > detail::kMaxGridYZ)
    return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(detail::ceil_div(g.rows(), detail::kBcBM)), static_cast<unsigned>(gy),
                  static_cast<unsigned>(g.groups));
  detail::binaryconnect_kernel<T><<<grid, detail::kBcThreads, 0, stream>>>(in, g, wbits, e);
  return cudaGetLastError();
}

// Peak-rate microbenchmark: blocks x threads (a multiple of 32) threads, each warp issuing iters * kPeakChains
// m16n8k256 MMAs (2 * 16 * 8 * 256 binary ops each). sink needs blocks * threads int32. sm_80+ only.
inline cudaError_t launch_b1_mma_peak(int blocks, int threads, int iters, int32_t* sink, cudaStream_t stream) {
  if (blocks < 1 || threads < kWarpSize || threads % kWarpSize != 0) return cudaErrorInvalidValue;
  detail::b1_mma_peak_kernel<<<blocks, threads, 0, stream>>>(iters, sink);
  return cudaGetLastError();
}

constexpr int kPeakMmasPerWarpIter = detail::kPeakChains;
constexpr int64_t kOpsPerB1Mma = 2LL * 16 * 8 * 256;

}  // namespace binary
}  // namespace cuda
}  // namespace sparsecomp
