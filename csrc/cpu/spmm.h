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

// One batch tile: xt is the tile's input transposed, [cols][ldx] (ldx >= bt, padded columns zero, ldx a
// multiple of the vector width); writes y[j * ldy + o] for j < bt.
template <typename T>
void spmm_rows_portable(const SparseRows<T>& w, const T* xt, int64_t ldx, int64_t bt, const T* bias, T* y,
                        int64_t ldy, int64_t row_begin, int64_t row_end);
void spmm_rows_avx2(const SparseRows<float>& w, const float* xt, int64_t ldx, int64_t bt, const float* bias,
                    float* y, int64_t ldy, int64_t row_begin, int64_t row_end);
void spmm_rows_avx512(const SparseRows<float>& w, const float* xt, int64_t ldx, int64_t bt, const float* bias,
                      float* y, int64_t ldy, int64_t row_begin, int64_t row_end);

// Packs one batch tile of x ([bt][ld_in] row-major) into xt ([cols][ldx]) for columns [col_begin, col_end),
// zero-filling the padding columns bt..ldx-1.
template <typename T>
void pack_transposed_portable(const T* x, int64_t ld_in, int64_t bt, T* xt, int64_t ldx, int64_t col_begin,
                              int64_t col_end);

// Widest batch tile each path handles in registers (ldx above must not exceed it).
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
