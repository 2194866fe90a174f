// Portable codebook kernels: decode a chunk of one row into floats on the stack, then dot it with every sample.
// Plain loops the compiler can vectorize for the baseline ISA.
#include <algorithm>

#include "codebook.h"

namespace sparsecomp::cpu {
namespace {

constexpr int64_t kChunk = 256;

inline void decode_chunk(const CodebookWeight& w, const uint8_t* row, const float* cb, int64_t k0, int64_t n,
                         float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = cb[codebook_index_at(row, k0 + i, w.bits)];
}

}  // namespace

void codebook_gemv_portable(const CodebookWeight& w, const float* x, int64_t ldx, int64_t m, const float* bias,
                            float* y, int64_t ldy, int64_t row_begin, int64_t row_end) {
  float buf[kChunk];
  for (int64_t o = row_begin; o < row_end; ++o) {
    const uint8_t* row = w.packed + o * w.row_bytes;
    const float* cb = w.codebook + o * w.cb_stride;
    float acc[kCodebookMaxBatch] = {};
    for (int64_t k0 = 0; k0 < w.cols; k0 += kChunk) {
      const int64_t n = std::min(kChunk, w.cols - k0);
      decode_chunk(w, row, cb, k0, n, buf);
      for (int64_t j = 0; j < m; ++j) {
        const float* xj = x + j * ldx + k0;
        float s = 0.0f;
        for (int64_t i = 0; i < n; ++i) s += buf[i] * xj[i];
        acc[j] += s;
      }
    }
    for (int64_t j = 0; j < m; ++j) y[j * ldy + o] = acc[j] + (bias ? bias[o] : 0.0f);
  }
}

void codebook_dequant_portable(const CodebookWeight& w, int64_t row_begin, int64_t row_end, float* out) {
  for (int64_t o = row_begin; o < row_end; ++o)
    decode_chunk(w, w.packed + o * w.row_bytes, w.codebook + o * w.cb_stride, 0, w.cols,
                 out + (o - row_begin) * w.cols);
}

}  // namespace sparsecomp::cpu
