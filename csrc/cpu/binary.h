// CPU kernels of the binary (1-bit, XNOR-popcount) layers.
//
// Packed layout (the one every binary op and module uses): sign bits along the packed dimension (channels),
// bit i of 64-bit word w = element 64w+i (little-endian, so it is also bit i of 32-bit word v = element 32v+i);
// 1 = +1 (v >= 0; NaN -> -1), 0 = -1; tail bits past the last element are 0 in every operand, so they add
// nothing to popcount(a ^ b). For two +-1 vectors of length K: dot(a, b) = K - 2 * popcount(a ^ b).
//
// The GEMM kernels compute counts[r][c] = sum_k popcount(A[r][k] ^ B[c][k]) for rows r of A (weights, one row
// per output channel, canonical layout) and columns c of B (activations: one position or sample each), and hand
// each register tile to BinaryEpilogue, which turns counts into floats (alpha, bias, padding correction,
// activation) and stores them. B is read from panels of kPanelCols columns laid out [k][kPanelCols] so that one
// vector load fetches word k of several columns; the caller builds panels (im2col of bits for a convolution).
//
// Every kernel covers the row range it is given, so the caller owns threading.
#pragma once
#include <cstdint>

namespace sparsecomp::cpu {

constexpr int64_t kPanelCols = 16;    // columns per B panel
constexpr int64_t kGemvMaxBatch = 4;  // binary_gemv handles up to this many samples per call

inline int64_t words_for(int64_t bits) { return (bits + 63) / 64; }

enum class Activation : int32_t { None = 0, Relu = 1 };

// How counts become outputs. For output (row r, column c) with channel o = row0 + r and position q = col0 + c:
//   pattern = col_pattern ? col_pattern[q] : 0
//   dot     = pattern_base[pattern] - 2 * (count - pattern_cor[o * cor_ld + pattern])
//   out[o * row_stride + q * col_stride] = act(alpha[o] * dot + bias[o])
// pattern_base[p] is the number of +-1 products (valid taps times channels per group); pattern_cor[o][p] the
// popcount of channel o's weight words at the out-of-frame taps of pattern p, which a zero word in the im2col
// panel counted although a zero-padded tap must contribute nothing. Pattern 0 is the interior (correction 0).
// cor_ld is a multiple of 16 and pattern_base has cor_ld entries, so a vector path can load whole rows and
// pick entries with a permute.
struct BinaryEpilogue {
  const float* alpha;
  const float* bias;  // may be null
  Activation activation;
  const int32_t* col_pattern;   // may be null: every column is pattern 0
  const int32_t* pattern_base;  // cor_ld entries (at least 1 when col_pattern is null)
  const int32_t* pattern_cor;   // [channels][cor_ld]; may be null when col_pattern is null
  int64_t cor_ld;
  float* out;
  int64_t row_stride;
  int64_t col_stride;
};

// --- packing (sign bits) ---
// out[r * ld_out + w] = bits of x[r * ld_x + 64w .. 64w+63] for r < rows, w < words_for(len).
void bitpack_rows_portable(const float* x, int64_t rows, int64_t ld_x, int64_t len, uint64_t* out, int64_t ld_out);
void bitpack_rows_avx2(const float* x, int64_t rows, int64_t ld_x, int64_t len, uint64_t* out, int64_t ld_out);
void bitpack_rows_avx512(const float* x, int64_t rows, int64_t ld_x, int64_t len, uint64_t* out, int64_t ld_out);
// Planar input (NCHW): channel c of position p is x[c * plane_stride + p]. Writes words_for(channels) words per
// position: out[p * ld_out + w]. `scratch` holds `positions` words.
void bitpack_planes_portable(const float* x, int64_t channels, int64_t plane_stride, int64_t positions,
                             uint64_t* out, int64_t ld_out, uint64_t* scratch);
void bitpack_planes_avx2(const float* x, int64_t channels, int64_t plane_stride, int64_t positions,
                         uint64_t* out, int64_t ld_out, uint64_t* scratch);
void bitpack_planes_avx512(const float* x, int64_t channels, int64_t plane_stride, int64_t positions,
                           uint64_t* out, int64_t ld_out, uint64_t* scratch);

// --- popcount GEMM against one B panel ---
// Rows [row0, row0 + rows) of A (a points at row row0, row stride lda words) against panel columns
// [col0, col0 + cols), cols <= kPanelCols, k_words words each. The panel must be 64-byte aligned.
void binary_gemm_panel_portable(const uint64_t* a, int64_t lda, int64_t row0, int64_t rows, const uint64_t* panel,
                                int64_t k_words, int64_t col0, int64_t cols, const BinaryEpilogue& ep);
void binary_gemm_panel_avx2(const uint64_t* a, int64_t lda, int64_t row0, int64_t rows, const uint64_t* panel,
                            int64_t k_words, int64_t col0, int64_t cols, const BinaryEpilogue& ep);
void binary_gemm_panel_avx512(const uint64_t* a, int64_t lda, int64_t row0, int64_t rows, const uint64_t* panel,
                              int64_t k_words, int64_t col0, int64_t cols, const BinaryEpilogue& ep);

// --- small batch: rows of A against m <= kGemvMaxBatch packed samples in canonical layout (no panel) ---
// Sample j is b[j * ldb ..]; the column index of sample j is j.
void binary_gemv_portable(const uint64_t* a, int64_t lda, int64_t row0, int64_t rows, const uint64_t* b,
                          int64_t ldb, int64_t m, int64_t k_words, const BinaryEpilogue& ep);
void binary_gemv_avx2(const uint64_t* a, int64_t lda, int64_t row0, int64_t rows, const uint64_t* b, int64_t ldb,
                      int64_t m, int64_t k_words, const BinaryEpilogue& ep);
void binary_gemv_avx512(const uint64_t* a, int64_t lda, int64_t row0, int64_t rows, const uint64_t* b,
                        int64_t ldb, int64_t m, int64_t k_words, const BinaryEpilogue& ep);

// --- popcount of each row: out[r] = sum_w popcount(words[r * row_words + w]) ---
void popcount_rows_portable(const uint64_t* words, int64_t rows, int64_t row_words, int32_t* out);
void popcount_rows_avx2(const uint64_t* words, int64_t rows, int64_t row_words, int32_t* out);
void popcount_rows_avx512(const uint64_t* words, int64_t rows, int64_t row_words, int32_t* out);

// --- BinaryConnect: real activations times +-1 weights ---
// pos_sum[j * ld_sum + r] = sum of x[j * ldx + k] over the k < len whose weight bit in row r is set, for rows
// [0, rows) of w (row stride ldw words) and samples j < m. The caller forms 2 * pos_sum - sum(x).
void binary_connect_portable(const uint64_t* w, int64_t ldw, int64_t rows, const float* x, int64_t ldx, int64_t m,
                             int64_t len, float* pos_sum, int64_t ld_sum);
void binary_connect_avx2(const uint64_t* w, int64_t ldw, int64_t rows, const float* x, int64_t ldx, int64_t m,
                         int64_t len, float* pos_sum, int64_t ld_sum);
void binary_connect_avx512(const uint64_t* w, int64_t ldw, int64_t rows, const float* x, int64_t ldx, int64_t m,
                           int64_t len, float* pos_sum, int64_t ld_sum);

}  // namespace sparsecomp::cpu
