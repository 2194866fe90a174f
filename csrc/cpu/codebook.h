// CPU kernels of the codebook (weight-clustering) layers: y = x @ W^T + bias with W[o][k] = cb(o)[idx(o, k)].
//
// Packed index layout (the one codebook_mm, sparsecomp/formats/codebook.py and CodebookLinear share): each output
// row o is a little-endian bit stream of in_features indices of `bits` bits each; index k occupies stream bits
// [k * bits, (k + 1) * bits), least significant bit first, and stream bit i is bit (i % 32) of int32 word i / 32.
// Rows are padded to whole 32-bit words (row_words = ceil(in_features * bits / 32)); padding bits are ignored.
// Read as bytes on a little-endian machine, byte j of a row holds stream bits [8j, 8j + 8).
// The codebook has exactly 2^bits float entries, one table per layer or one per output row (cb_stride = 2^bits),
// so every packed value is a valid index.
//
// Every kernel covers the row range it is given; the caller owns threading.
#pragma once
#include <cstdint>

namespace sparsecomp::cpu {

constexpr int64_t kCodebookMaxBatch = 8;  // codebook_gemv handles up to this many samples per call

inline int64_t codebook_row_words(int64_t cols, int64_t bits) { return (cols * bits + 31) / 32; }

struct CodebookWeight {
  const uint8_t* packed;  // row o starts at packed + o * row_bytes
  int64_t row_bytes;      // 4 * row_words
  const float* codebook;  // table of row o at codebook + o * cb_stride
  int64_t cb_stride;      // 0 (one table per layer) or 2^bits (one per row)
  int64_t cols;           // in_features
  int bits;               // 1..8
  int64_t rows;           // rows in the packed buffer: bytes from row o to the buffer end = (rows - o) * row_bytes
};

// y[j * ldy + o] = sum_k x[j * ldx + k] * W[o][k] + (bias ? bias[o] : 0) for samples j < m <= kCodebookMaxBatch
// and rows o in [row_begin, row_end). Each index is decoded once and used for all m samples.
void codebook_gemv_portable(const CodebookWeight& w, const float* x, int64_t ldx, int64_t m, const float* bias,
                            float* y, int64_t ldy, int64_t row_begin, int64_t row_end);
void codebook_gemv_avx2(const CodebookWeight& w, const float* x, int64_t ldx, int64_t m, const float* bias, float* y,
                        int64_t ldy, int64_t row_begin, int64_t row_end);
void codebook_gemv_avx512(const CodebookWeight& w, const float* x, int64_t ldx, int64_t m, const float* bias,
                          float* y, int64_t ldy, int64_t row_begin, int64_t row_end);

// 8-bit indices, one codebook per layer, on AVX-512 VBMI (Ice Lake and later): byte-plane table lookups with
// vpermi2b instead of gathers. Called by codebook_gemv_avx512 when codebook_has_vbmi().
bool codebook_has_vbmi();
void codebook_gemv8_avx512vbmi(const CodebookWeight& w, const float* x, int64_t ldx, int64_t m, const float* bias,
                               float* y, int64_t ldy, int64_t row_begin, int64_t row_end);

// out[(o - row_begin) * cols + k] = W[o][k] for rows [row_begin, row_end): the dense tile the large-batch path
// hands to a GEMM.
void codebook_dequant_portable(const CodebookWeight& w, int64_t row_begin, int64_t row_end, float* out);
void codebook_dequant_avx2(const CodebookWeight& w, int64_t row_begin, int64_t row_end, float* out);
void codebook_dequant_avx512(const CodebookWeight& w, int64_t row_begin, int64_t row_end, float* out);

// Index k of a packed row, read byte by byte (never touches bytes past the index's last bit).
inline uint32_t codebook_index_at(const uint8_t* row, int64_t k, int bits) {
  const int64_t bit = k * bits;
  const int64_t byte = bit >> 3;
  const int shift = static_cast<int>(bit & 7);
  uint32_t v = row[byte];
  if (shift + bits > 8) v |= static_cast<uint32_t>(row[byte + 1]) << 8;
  return (v >> shift) & ((1u << bits) - 1u);
}

}  // namespace sparsecomp::cpu
