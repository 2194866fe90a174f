// Portable binary kernels: plain C++ for any x86-64 (or other) CPU, and the reference the vector paths are
// tested against.
#include <algorithm>

#include "binary.h"
#include "binary_common_impl.h"

namespace sparsecomp::cpu {

void bitpack_rows_portable(const float* x, int64_t rows, int64_t ld_x, int64_t len, uint64_t* out, int64_t ld_out) {
  const int64_t words = words_for(len);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t w = 0; w < words; ++w)
      out[r * ld_out + w] = sign_bits_scalar(x + r * ld_x + w * 64, std::min<int64_t>(64, len - w * 64));
}

void bitpack_planes_portable(const float* x, int64_t channels, int64_t plane_stride, int64_t positions,
                             uint64_t* out, int64_t ld_out, uint64_t* scratch) {
  bitpack_planes_generic(x, channels, plane_stride, positions, out, ld_out, scratch);
}

void binary_gemm_panel_portable(const uint64_t* a, int64_t lda, int64_t row0, int64_t rows, const uint64_t* panel,
                                int64_t k_words, int64_t col0, int64_t cols, const BinaryEpilogue& ep) {
  constexpr int64_t kRows = 4;
  int32_t cnt[kRows * kPanelCols];
  for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
    const int64_t mr = std::min(kRows, rows - r0);
    for (int64_t r = 0; r < mr; ++r) {
      const uint64_t* ar = a + (r0 + r) * lda;
      for (int64_t c = 0; c < cols; ++c) {
        int64_t s = 0;
        for (int64_t k = 0; k < k_words; ++k) s += __builtin_popcountll(ar[k] ^ panel[k * kPanelCols + c]);
        cnt[r * kPanelCols + c] = static_cast<int32_t>(s);
      }
    }
    apply_epilogue(ep, cnt, mr, cols, row0 + r0, col0);
  }
}

void binary_gemv_portable(const uint64_t* a, int64_t lda, int64_t row0, int64_t rows, const uint64_t* b,
                          int64_t ldb, int64_t m, int64_t k_words, const BinaryEpilogue& ep) {
  int32_t cnt[kPanelCols];
  for (int64_t r = 0; r < rows; ++r) {
    const uint64_t* ar = a + r * lda;
    for (int64_t j = 0; j < m; ++j) {
      int64_t s = 0;
      for (int64_t k = 0; k < k_words; ++k) s += __builtin_popcountll(ar[k] ^ b[j * ldb + k]);
      cnt[j] = static_cast<int32_t>(s);
    }
    apply_epilogue(ep, cnt, 1, m, row0 + r, 0);
  }
}

void popcount_rows_portable(const uint64_t* words, int64_t rows, int64_t row_words, int32_t* out) {
  popcount_rows_generic(words, rows, row_words, out);
}

void binary_connect_portable(const uint64_t* w, int64_t ldw, int64_t rows, const float* x, int64_t ldx, int64_t m,
                             int64_t len, float* pos_sum, int64_t ld_sum) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < m; ++j) pos_sum[j * ld_sum + r] = connect_dot_scalar(w + r * ldw, x + j * ldx, len);
}

}  // namespace sparsecomp::cpu
