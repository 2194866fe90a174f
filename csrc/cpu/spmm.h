// CPU kernels for y = x @ W^T (+ b) with W stored as column-tiled compressed rows.
//
// Format ("tiled CSR", see sparsecomp/formats/sparse.py): the nonzeros of row o are stored in column order;
// columns are split into tiles of kTileCols so that a column fits in 16 bits inside its tile (6 bytes per fp32
// nonzero instead of 8 for int32 CSR: dense break-even moves from 50% to 33% sparsity in the memory-bound
// regime). row_ptr has rows * tiles + 1 entries: the nonzeros of (row o, tile t) are
// [row_ptr[o * tiles + t], row_ptr[o * tiles + t + 1]) and their column is t * kTileCols + col_idx[p].
//
// Every kernel computes a range of output rows [row_begin, row_end) so the caller owns threading.
#pragma once
#include <cstdint>

namespace sparsecomp::cpu {

constexpr int64_t kTileCols = 65536;

template <typename T>
struct SparseRows {
  const T* values;
  const uint16_t* col_idx;
  const int64_t* row_ptr;
  int64_t rows;
  int64_t cols;
  int64_t tiles;
};

// Batch 1: y[o] = sum_p values[p] * x[col(p)] + bias[o] (bias may be null).
template <typename T>
void spmv_rows_portable(const SparseRows<T>& w, const T* x, const T* bias, T* y, int64_t row_begin, int64_t row_end);
void spmv_rows_avx2(const SparseRows<float>& w, const float* x, const float* bias, float* y, int64_t row_begin,
                    int64_t row_end);
void spmv_rows_avx512(const SparseRows<float>& w, const float* x, const float* bias, float* y, int64_t row_begin,
                      int64_t row_end);

// One tile of the dense operand, k-major: the `width` values of input feature k (one per sample) start at
// data + k * ld. width is a multiple of the vector width; values past `count` samples must be finite (zero).
template <typename T>
struct DenseTile {
  const T* data;
  int64_t ld;
  int64_t width;
  int64_t count;
};

// Where the result for (sample j, output row o) goes: data[j * sample_stride + o * row_stride]. With
// sample_stride == 1 (the [rows][samples] layout of a convolution output) kernels store whole vectors.
template <typename T>
struct OutTile {
  T* data;
  int64_t sample_stride;
  int64_t row_stride;
};

// One tile of samples: y(j, o) = sum_p values[p] * x(col(p), j) + bias[o] for j < x.count, o in the row range.
template <typename T>
void spmm_rows_portable(const SparseRows<T>& w, const DenseTile<T>& x, const T* bias, const OutTile<T>& y,
                        int64_t row_begin, int64_t row_end);
void spmm_rows_avx2(const SparseRows<float>& w, const DenseTile<float>& x, const float* bias, const OutTile<float>& y,
                    int64_t row_begin, int64_t row_end);
void spmm_rows_avx512(const SparseRows<float>& w, const DenseTile<float>& x, const float* bias,
                      const OutTile<float>& y, int64_t row_begin, int64_t row_end);

// Packs one batch tile of x ([bt][ld_in] row-major) into xt ([cols][ldx]) for columns [col_begin, col_end),
// zero-filling the padding columns bt..ldx-1.
template <typename T>
void pack_transposed_portable(const T* x, int64_t ld_in, int64_t bt, T* xt, int64_t ldx, int64_t col_begin,
                              int64_t col_end);
// Copies rows [row_begin, row_end) of a k-major tile (bt values each, row stride ld_in) into rows of ldx values,
// zero-filling bt..ldx-1: used for the last, partial sample tile of a k-major input.
template <typename T>
void pack_rows_portable(const T* x, int64_t ld_in, int64_t bt, T* xt, int64_t ldx, int64_t row_begin,
                        int64_t row_end);

// True iff none of x[0..n) is NaN or +-Inf (an exponent test on the bits: one vectorizable pass).
template <typename T>
bool all_finite_portable(const T* x, int64_t n);

// Widest sample tile each path handles in registers (DenseTile::width must not exceed it).
constexpr int64_t kMaxTileAvx512 = 64;
constexpr int64_t kMaxTileAvx2 = 32;
constexpr int64_t kMaxTilePortable = 64;

// Backward, transposed layouts ([*, B] rows contiguous along the batch).
// grad_xt[k][b] += sum over nonzeros (o, k) of values * grad_yt[o][b], for rows [row_begin, row_end).
template <typename T>
void spmm_t_rows_portable(const SparseRows<T>& w, const T* grad_yt, int64_t batch, T* grad_xt, int64_t row_begin,
                          int64_t row_end);
// grad_values[p] = sum_b grad_yt[o][b] * xt[col(p)][b] for the nonzeros of rows [row_begin, row_end).
template <typename T>
void sddmm_rows_portable(const SparseRows<T>& w, const T* grad_yt, const T* xt, int64_t batch, T* grad_values,
                         int64_t row_begin, int64_t row_end);

}  // namespace sparsecomp::cpu
