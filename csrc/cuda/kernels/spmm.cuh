// CUDA kernels for y = x @ W^T (+ b) and its two backward products, with W in the column-tiled CSR format of
// csrc/cpu/spmm.h: the nonzeros of (row o, column tile t) are [row_ptr[o * tiles + t], row_ptr[o * tiles + t + 1])
// and their column is t * kTileCols + col_idx[p] (col_idx holds uint16 bits).
//
// Plain CUDA, no torch: every launcher takes raw device pointers, sizes and a stream, and returns the launch's
// cudaError_t. Values may be float, __half or __nv_bfloat16; products are always accumulated in fp32.
//
// Kernels:
//   spmm_small_batch_kernel  forward for batch <= ~8 on row-major x [batch, cols]: one warp per output row,
//                            lanes stride over the row's nonzeros, one partial sum per sample, shuffle reduction.
//   spmm_transposed_kernel   forward for larger batches (Sputnik-style) on xt [cols, ld] (x transposed, ld a
//                            multiple of the 16-byte vector width): a subwarp of kG lanes owns one output row and
//                            a kG * vector-wide slice of the batch; the row's nonzeros are staged through shared
//                            memory and every lane does 16-byte loads along the contiguous batch. Writes yt [rows, ld].
//   sddmm_kernel             grad_values[p] = <gyt[row(p), :], xt[col(p), :]>: one warp per row, a subwarp per
//                            nonzero, lanes along the batch, subwarp shuffle reduction.
//   spmm_t_scatter_kernel    gxt[col(p), :] += values[p] * gyt[row(p), :] with fp32 atomics (not deterministic).
//
// Robustness without host synchronization: row_ptr is never validated on the host (that would need a device
// sync), so every kernel clamps row segments to [0, nnz) and skips columns >= cols. A malformed structure then
// gives wrong numbers but never an out-of-bounds access.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "value_types.cuh"

namespace sparsecomp {
namespace cuda {

constexpr int64_t kTileCols = 65536;  // must match csrc/cpu/spmm.h and csrc/ops/sparse_linear_checks.h
constexpr int kWarpSize = 32;

// Largest batch the row-major small-batch kernel is meant for; above it the transposed kernel wins because its
// loads along the batch are contiguous.
constexpr int64_t kSmallBatchMax = 8;

// Elements of T in one 16-byte vector: the leading dimension of xt / yt / gyt must be a multiple of this.
template <typename T>
__host__ __device__ constexpr int64_t vector_width() {
  return 16 / static_cast<int64_t>(sizeof(T));
}

// The sparse structure as the kernels see it (device pointers).
struct SparseStructure {
  const uint16_t* col_idx;
  const int64_t* row_ptr;
  int64_t rows;
  int64_t cols;   // in_features
  int64_t tiles;  // column tiles: row_ptr has rows * tiles + 1 entries
  int64_t nnz;    // length of col_idx (and values)
};

namespace detail {

constexpr int kSmallThreads = 128;  // 4 warps = 4 output rows per block
constexpr int kSpmmThreads = 128;
constexpr int kSpmmChunk = 32;  // nonzeros of a row staged in shared memory at a time
constexpr int kSddmmThreads = 128;
constexpr int kScatterThreads = 128;
constexpr int64_t kMaxGridY = 65535;

// N consecutive elements moved as one aligned vector access (ld/st.v2/v4).
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// 16-byte vector of T converted to / from fp32. p must be 16-byte aligned.
template <typename T>
__device__ __forceinline__ void load_vec16(const T* p, float (&out)[vector_width<T>()]) {
  constexpr int kW = static_cast<int>(vector_width<T>());
  const Pack<T, kW> pk = *reinterpret_cast<const Pack<T, kW>*>(p);
#pragma unroll
  for (int i = 0; i < kW; ++i) out[i] = to_float(pk.v[i]);
}

template <typename T>
__device__ __forceinline__ void store_vec16(T* p, const float (&in)[vector_width<T>()]) {
  constexpr int kW = static_cast<int>(vector_width<T>());
  Pack<T, kW> pk;
#pragma unroll
  for (int i = 0; i < kW; ++i) pk.v[i] = from_float<T>(in[i]);
  *reinterpret_cast<Pack<T, kW>*>(p) = pk;
}

__host__ __device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
__host__ __device__ __forceinline__ int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Nonzeros of (row, tile), clamped into [0, nnz) so a malformed row_ptr cannot send a kernel out of bounds.
__device__ __forceinline__ void row_segment(const SparseStructure& w, int64_t row, int64_t tile, int64_t& begin,
                                            int64_t& end) {
  const int64_t i = row * w.tiles + tile;
  begin = min64(max64(w.row_ptr[i], 0), w.nnz);
  end = min64(max64(w.row_ptr[i + 1], begin), w.nnz);
}

// Columns of tile t that exist (the last tile is partial); in-tile columns at or past this are skipped.
__device__ __forceinline__ int tile_width(const SparseStructure& w, int64_t tile) {
  return static_cast<int>(min64(kTileCols, w.cols - tile * kTileCols));
}

// Lanes of the aligned group of kG lanes that `lane` belongs to (kG a power of two <= 32).
template <int kG>
__device__ __forceinline__ unsigned subwarp_mask(int lane) {
  return kG == kWarpSize ? 0xffffffffu : ((1u << kG) - 1u) << (lane & ~(kG - 1));
}

// ---------------------------------------------------------------------------------------------------------------
// Forward, small batch, row-major x. Block = 4 warps = 4 output rows; grid.y strides over batch tiles of kBT.
// kVec: values / col_idx base pointers are aligned for 4-wide loads; each lane then takes 4 consecutive nonzeros
// per step (one 8-byte index load, one 16- or 8-byte value load), with scalar head and tail around the aligned body.
template <typename T, int kBT, bool kVec>
__global__ void __launch_bounds__(kSmallThreads)
    spmm_small_batch_kernel(const T* __restrict__ values, const SparseStructure w, const T* __restrict__ x,
                            int64_t batch, const T* __restrict__ bias, T* __restrict__ y) {
  constexpr int kWarps = kSmallThreads / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / kWarpSize;
  if (row >= w.rows) return;  // warp-uniform: the shuffles below see full warps
  const uint16_t* __restrict__ col_idx = w.col_idx;

  for (int64_t b0 = static_cast<int64_t>(blockIdx.y) * kBT; b0 < batch;
       b0 += static_cast<int64_t>(gridDim.y) * kBT) {
    const int bt = static_cast<int>(min64(batch - b0, kBT));
    float acc[kBT];
#pragma unroll
    for (int j = 0; j < kBT; ++j) acc[j] = 0.f;

    for (int64_t t = 0; t < w.tiles; ++t) {
      int64_t begin, end;
      row_segment(w, row, t, begin, end);
      const int width = tile_width(w, t);
      const T* __restrict__ xs = x + b0 * w.cols + t * kTileCols;  // sample b0, first column of tile t
      auto accumulate = [&](float v, int c) {
        if (c >= width) return;
#pragma unroll
        for (int j = 0; j < kBT; ++j)
          if (j < bt) acc[j] = fmaf(v, to_float(xs[j * w.cols + c]), acc[j]);
      };
      if constexpr (kVec) {
        const int64_t head = min64(end, (begin + 3) & ~int64_t{3});
        const int64_t body_end = max64(head, end & ~int64_t{3});
        if (begin + lane < head) accumulate(to_float(values[begin + lane]), col_idx[begin + lane]);
        for (int64_t p = head + 4 * lane; p < body_end; p += 4 * kWarpSize) {
          const Pack<uint16_t, 4> c4 = *reinterpret_cast<const Pack<uint16_t, 4>*>(col_idx + p);
          const Pack<T, 4> v4 = *reinterpret_cast<const Pack<T, 4>*>(values + p);
#pragma unroll
          for (int k = 0; k < 4; ++k) accumulate(to_float(v4.v[k]), c4.v[k]);
        }
        if (body_end + lane < end) accumulate(to_float(values[body_end + lane]), col_idx[body_end + lane]);
      } else {
        for (int64_t p = begin + lane; p < end; p += kWarpSize) accumulate(to_float(values[p]), col_idx[p]);
      }
    }

#pragma unroll
    for (int j = 0; j < kBT; ++j) {
#pragma unroll
      for (int off = kWarpSize / 2; off > 0; off /= 2) acc[j] += __shfl_xor_sync(0xffffffffu, acc[j], off);
    }
    // Lane j writes sample j (acc[] is indexed by constants only, so it stays in registers).
    const float b = bias != nullptr ? to_float(bias[row]) : 0.f;
#pragma unroll
    for (int j = 0; j < kBT; ++j)
      if (lane == j && j < bt) y[(b0 + j) * w.rows + row] = from_float<T>(acc[j] + b);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Forward, transposed operands (Sputnik-style). Block = kSpmmThreads / kG subwarps, each owning one output row
// (row_order[slot] when a row swizzle is given, so rows of similar length share a warp) and a batch tile of
// kG * kW columns, kW = 16 / sizeof(T). The subwarp stages kSpmmChunk nonzeros of its row (value as fp32, global
// column) in shared memory, then each lane multiplies them with 16-byte vectors of xt. Synchronization is per
// subwarp (__syncwarp(mask)), so subwarps of one warp may run rows of different lengths.
template <typename T, int kG>
__global__ void __launch_bounds__(kSpmmThreads)
    spmm_transposed_kernel(const T* __restrict__ values, const SparseStructure w,
                           const int32_t* __restrict__ row_order, const T* __restrict__ xt, int64_t ld,
                           const T* __restrict__ bias, T* __restrict__ yt) {
  constexpr int kW = static_cast<int>(vector_width<T>());
  constexpr int kRowsPerBlock = kSpmmThreads / kG;
  __shared__ float s_val[kRowsPerBlock][kSpmmChunk];
  __shared__ int32_t s_col[kRowsPerBlock][kSpmmChunk];

  const int sub = threadIdx.x / kG;
  const int sl = threadIdx.x % kG;
  const unsigned mask = subwarp_mask<kG>(threadIdx.x % kWarpSize);
  const int64_t slot = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + sub;
  if (slot >= w.rows) return;  // subwarp-uniform; only subwarp-wide syncs follow
  const int64_t row = row_order != nullptr ? static_cast<int64_t>(row_order[slot]) : slot;
  float* sv = s_val[sub];
  int32_t* sc = s_col[sub];
  const float b = bias != nullptr ? to_float(bias[row]) : 0.f;
  const int64_t n_btiles = ceil_div(ld, static_cast<int64_t>(kG) * kW);

  for (int64_t bt = blockIdx.y; bt < n_btiles; bt += gridDim.y) {
    const int64_t col0 = bt * kG * kW + static_cast<int64_t>(sl) * kW;  // this lane's first batch column
    const bool active = col0 < ld;  // ld % kW == 0: a lane's vector is entirely inside or entirely outside
    float acc[kW];
#pragma unroll
    for (int k = 0; k < kW; ++k) acc[k] = 0.f;

    for (int64_t t = 0; t < w.tiles; ++t) {
      int64_t begin, end;
      row_segment(w, row, t, begin, end);
      const int width = tile_width(w, t);
      const int32_t tile_base = static_cast<int32_t>(t * kTileCols);
      for (int64_t p0 = begin; p0 < end; p0 += kSpmmChunk) {
        const int n = static_cast<int>(min64(kSpmmChunk, end - p0));
        __syncwarp(mask);  // the previous chunk has been read by every lane of the subwarp
        for (int i = sl; i < n; i += kG) {
          const int c = w.col_idx[p0 + i];
          const bool ok = c < width;  // an invalid column contributes 0 * xt[0, :]
          sv[i] = ok ? to_float(values[p0 + i]) : 0.f;
          sc[i] = ok ? tile_base + c : 0;
        }
        __syncwarp(mask);
        if (active) {
#pragma unroll 4
          for (int i = 0; i < n; ++i) {
            float xv[kW];
            load_vec16(xt + static_cast<int64_t>(sc[i]) * ld + col0, xv);
            const float v = sv[i];
#pragma unroll
            for (int k = 0; k < kW; ++k) acc[k] = fmaf(v, xv[k], acc[k]);
          }
        }
      }
    }
    if (active) {
#pragma unroll
      for (int k = 0; k < kW; ++k) acc[k] += b;
      store_vec16(yt + row * ld + col0, acc);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// grad_values (SDDMM) on transposed operands gyt [rows, ld], xt [cols, ld], pads zero. One warp per row; each
// subwarp of kG lanes takes one nonzero at a time and its lanes walk the batch in 16-byte vectors. The loop over a
// row's nonzeros has a warp-uniform trip count so the full-mask shuffles are legal.
template <typename T, int kG>
__global__ void __launch_bounds__(kSddmmThreads)
    sddmm_kernel(const SparseStructure w, const T* __restrict__ gyt, const T* __restrict__ xt, int64_t ld,
                 T* __restrict__ grad_values) {
  constexpr int kW = static_cast<int>(vector_width<T>());
  constexpr int kSubs = kWarpSize / kG;
  const int lane = threadIdx.x % kWarpSize;
  const int sub = lane / kG;
  const int sl = lane % kG;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kSddmmThreads / kWarpSize) + threadIdx.x / kWarpSize;
  if (row >= w.rows) return;  // warp-uniform
  const T* __restrict__ g = gyt + row * ld;

  for (int64_t t = 0; t < w.tiles; ++t) {
    int64_t begin, end;
    row_segment(w, row, t, begin, end);
    const int width = tile_width(w, t);
    for (int64_t p0 = begin; p0 < end; p0 += kSubs) {
      const int64_t p = p0 + sub;
      float acc = 0.f;
      if (p < end) {
        const int c = w.col_idx[p];
        if (c < width) {
          const T* __restrict__ xr = xt + (t * kTileCols + c) * ld;
          for (int64_t k0 = static_cast<int64_t>(sl) * kW; k0 < ld; k0 += static_cast<int64_t>(kG) * kW) {
            float gv[kW], xv[kW];
            load_vec16(g + k0, gv);
            load_vec16(xr + k0, xv);
#pragma unroll
            for (int k = 0; k < kW; ++k) acc = fmaf(gv[k], xv[k], acc);
          }
        }
      }
#pragma unroll
      for (int off = kG / 2; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
      if (p < end && sl == 0) grad_values[p] = from_float<T>(acc);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// grad_input by scatter: gxt [cols, batch] (fp32, zeroed by the caller) += values[p] * gyt[row(p), :]. One warp per
// row, a subwarp of kG lanes per nonzero, lanes along the batch so each subwarp's atomics hit consecutive words.
template <typename T, int kG>
__global__ void __launch_bounds__(kScatterThreads)
    spmm_t_scatter_kernel(const T* __restrict__ values, const SparseStructure w, const T* __restrict__ gyt,
                          int64_t batch, float* __restrict__ gxt) {
  constexpr int kSubs = kWarpSize / kG;
  const int lane = threadIdx.x % kWarpSize;
  const int sub = lane / kG;
  const int sl = lane % kG;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kScatterThreads / kWarpSize) + threadIdx.x / kWarpSize;
  if (row >= w.rows) return;
  const T* __restrict__ g = gyt + row * batch;

  for (int64_t t = 0; t < w.tiles; ++t) {
    int64_t begin, end;
    row_segment(w, row, t, begin, end);
    const int width = tile_width(w, t);
    for (int64_t p = begin + sub; p < end; p += kSubs) {
      const int c = w.col_idx[p];
      if (c >= width) continue;
      const float v = to_float(values[p]);
      float* dst = gxt + (t * kTileCols + c) * batch;
      for (int64_t k = sl; k < batch; k += kG) atomicAdd(dst + k, v * to_float(g[k]));
    }
  }
}

inline bool aligned_to(const void* p, std::uintptr_t bytes) {
  return reinterpret_cast<std::uintptr_t>(p) % bytes == 0;
}

// Smallest power of two >= n, clamped to [1, 32]: the subwarp size that covers n lanes of work.
inline int subwarp_for(int64_t n) {
  int g = 1;
  while (g < kWarpSize && g < n) g *= 2;
  return g;
}

// A structure with no columns has no valid nonzero; report nnz = 0 so kernels never touch the empty operand.
inline SparseStructure sanitized(SparseStructure w) {
  if (w.cols <= 0) w.nnz = 0;
  return w;
}

// Grid dimensions are 32-bit; refuse (instead of silently truncating) sizes that do not fit.
inline bool grid_fits(int64_t blocks) { return blocks <= 0x7fffffff; }

template <int N>
struct IntConst {
  static constexpr int value = N;
};

// Runs f(IntConst<g>{}) for the subwarp size g in {1, 2, 4, 8, 16, 32}, so f can instantiate a kernel on it.
template <typename F>
cudaError_t with_subwarp(int g, F&& f) {
  switch (g) {
    case 1: return f(IntConst<1>{});
    case 2: return f(IntConst<2>{});
    case 4: return f(IntConst<4>{});
    case 8: return f(IntConst<8>{});
    case 16: return f(IntConst<16>{});
    default: return f(IntConst<32>{});
  }
}

template <typename T, int kBT>
cudaError_t launch_small_batch_bt(const T* values, const SparseStructure& w, const T* x, int64_t batch, const T* bias,
                                  T* y, cudaStream_t stream) {
  const dim3 block(kSmallThreads);
  const dim3 grid(static_cast<unsigned>(ceil_div(w.rows, kSmallThreads / kWarpSize)),
                  static_cast<unsigned>(min64(ceil_div(batch, kBT), kMaxGridY)));
  const bool vec = aligned_to(values, sizeof(T) * 4) && aligned_to(w.col_idx, sizeof(uint16_t) * 4);
  if (vec)
    spmm_small_batch_kernel<T, kBT, true><<<grid, block, 0, stream>>>(values, w, x, batch, bias, y);
  else
    spmm_small_batch_kernel<T, kBT, false><<<grid, block, 0, stream>>>(values, w, x, batch, bias, y);
  return cudaGetLastError();
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------------------------
// Launchers. All pointers are device pointers on the stream's device; sizes as in SparseStructure. Nothing is
// launched (cudaSuccess) when the output is empty.

// y [batch, rows] = x [batch, cols] @ W^T + bias (bias may be null). Meant for batch <= kSmallBatchMax, correct
// for any batch.
template <typename T>
cudaError_t launch_spmm_small_batch(const T* values, const SparseStructure& structure, const T* x, int64_t batch,
                                    const T* bias, T* y, cudaStream_t stream) {
  if (structure.rows <= 0 || batch <= 0) return cudaSuccess;
  if (!detail::grid_fits(detail::ceil_div(structure.rows, detail::kSmallThreads / kWarpSize)))
    return cudaErrorInvalidConfiguration;
  const SparseStructure w = detail::sanitized(structure);
  if (batch == 1) return detail::launch_small_batch_bt<T, 1>(values, w, x, batch, bias, y, stream);
  if (batch == 2) return detail::launch_small_batch_bt<T, 2>(values, w, x, batch, bias, y, stream);
  if (batch <= 4) return detail::launch_small_batch_bt<T, 4>(values, w, x, batch, bias, y, stream);
  return detail::launch_small_batch_bt<T, 8>(values, w, x, batch, bias, y, stream);
}

// yt [rows, ld] = W @ xt + bias[:, None] with xt [cols, ld] (x transposed, batch columns padded to ld). ld must
// be a multiple of vector_width<T>() and xt, yt 16-byte aligned. The padded columns of yt are computed too (from
// xt's pads, which should be zero). row_order (may be null) is a permutation of the rows: the processing order.
template <typename T>
cudaError_t launch_spmm_transposed(const T* values, const SparseStructure& structure, const int32_t* row_order,
                                   const T* xt, int64_t ld, const T* bias, T* yt, cudaStream_t stream) {
  if (structure.rows <= 0 || ld <= 0) return cudaSuccess;
  if (ld % vector_width<T>() != 0 || !detail::aligned_to(xt, 16) || !detail::aligned_to(yt, 16))
    return cudaErrorInvalidValue;
  if (structure.cols > 0x7fffffff) return cudaErrorInvalidValue;  // columns are staged as int32
  const SparseStructure w = detail::sanitized(structure);
  const int g = detail::subwarp_for(ld / vector_width<T>());
  return detail::with_subwarp(g, [&](auto tag) {
    constexpr int kG = decltype(tag)::value;
    const int64_t blocks = detail::ceil_div(w.rows, detail::kSpmmThreads / kG);
    if (!detail::grid_fits(blocks)) return cudaErrorInvalidConfiguration;
    const int64_t n_btiles = detail::ceil_div(ld, kG * vector_width<T>());
    const dim3 grid(static_cast<unsigned>(blocks),
                    static_cast<unsigned>(detail::min64(n_btiles, detail::kMaxGridY)));
    detail::spmm_transposed_kernel<T, kG><<<grid, detail::kSpmmThreads, 0, stream>>>(
        values, w, row_order, xt, ld, bias, yt);
    return cudaGetLastError();
  });
}

// grad_values [nnz]: grad_values[p] = sum_b gyt[row(p), b] * xt[col(p), b], with gyt [rows, ld], xt [cols, ld],
// batch padded to ld with zeros in both. Same ld / alignment rules as launch_spmm_transposed. Entries of
// grad_values not covered by row_ptr are left untouched.
template <typename T>
cudaError_t launch_sddmm(const SparseStructure& structure, const T* gyt, const T* xt, int64_t ld, T* grad_values,
                         cudaStream_t stream) {
  if (structure.rows <= 0 || structure.nnz <= 0 || ld <= 0) return cudaSuccess;
  if (ld % vector_width<T>() != 0 || !detail::aligned_to(gyt, 16) || !detail::aligned_to(xt, 16))
    return cudaErrorInvalidValue;
  const SparseStructure w = detail::sanitized(structure);
  const int64_t blocks = detail::ceil_div(w.rows, detail::kSddmmThreads / kWarpSize);
  if (!detail::grid_fits(blocks)) return cudaErrorInvalidConfiguration;
  const int g = detail::subwarp_for(ld / vector_width<T>());
  return detail::with_subwarp(g, [&](auto tag) {
    constexpr int kG = decltype(tag)::value;
    detail::sddmm_kernel<T, kG><<<static_cast<unsigned>(blocks), detail::kSddmmThreads, 0, stream>>>(
        w, gyt, xt, ld, grad_values);
    return cudaGetLastError();
  });
}

// gxt [cols, batch] += W^T @ gyt with gyt [rows, batch]; gxt is fp32 and must be zeroed (or hold a partial sum)
// before the call. Uses fp32 atomics: the summation order, hence the last bits, vary from run to run.
template <typename T>
cudaError_t launch_spmm_t_scatter(const T* values, const SparseStructure& structure, const T* gyt, int64_t batch,
                                  float* gxt, cudaStream_t stream) {
  if (structure.rows <= 0 || structure.nnz <= 0 || batch <= 0) return cudaSuccess;
  const SparseStructure w = detail::sanitized(structure);
  const int64_t blocks = detail::ceil_div(w.rows, detail::kScatterThreads / kWarpSize);
  if (!detail::grid_fits(blocks)) return cudaErrorInvalidConfiguration;
  const int g = detail::subwarp_for(batch);
  return detail::with_subwarp(g, [&](auto tag) {
    constexpr int kG = decltype(tag)::value;
    detail::spmm_t_scatter_kernel<T, kG><<<static_cast<unsigned>(blocks), detail::kScatterThreads, 0, stream>>>(
        values, w, gyt, batch, gxt);
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace sparsecomp
