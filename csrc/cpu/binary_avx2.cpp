// AVX2 binary kernels. AVX2 has no vector popcount: bytes are counted with a 16-entry nibble table (vpshufb),
// summed as bytes for up to 31 words (31 * 8 < 256) and widened with vpsadbw once per block.
#include <immintrin.h>

#include <algorithm>

#include "binary.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi2,popcnt")
#define SPARSECOMP_HAVE_AVX2_TU 1
#endif

#include "binary_common_impl.h"

namespace sparsecomp::cpu {

#ifdef SPARSECOMP_HAVE_AVX2_TU
namespace {

constexpr int64_t kByteBlock = 31;  // words summed in 8-bit lanes before widening

// Per-byte popcount of v (0..8 in each byte) from a 16-entry nibble table.
inline __m256i byte_popcount(__m256i v, __m256i table, __m256i low) {
  const __m256i lo = _mm256_and_si256(v, low);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
  return _mm256_add_epi8(_mm256_shuffle_epi8(table, lo), _mm256_shuffle_epi8(table, hi));
}

// MR weight rows x 8 panel columns (half a panel: columns half*8 .. half*8+7).
template <int MR>
inline void panel_tile(const uint64_t* a, int64_t lda, const uint64_t* panel, int64_t k_words, int half,
                       int32_t* cnt) {
  const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0F);
  const __m256i zero = _mm256_setzero_si256();
  __m256i wide0[MR], wide1[MR];
  for (int r = 0; r < MR; ++r) wide0[r] = wide1[r] = zero;
  for (int64_t k0 = 0; k0 < k_words; k0 += kByteBlock) {
    const int64_t k1 = std::min(k_words, k0 + kByteBlock);
    __m256i acc0[MR], acc1[MR];
    for (int r = 0; r < MR; ++r) acc0[r] = acc1[r] = zero;
    for (int64_t k = k0; k < k1; ++k) {
      const uint64_t* pk = panel + k * kPanelCols + half * 8;
      const __m256i b0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(pk));
      const __m256i b1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(pk + 4));
      for (int r = 0; r < MR; ++r) {
        const __m256i av = _mm256_set1_epi64x(static_cast<long long>(a[r * lda + k]));
        acc0[r] = _mm256_add_epi8(acc0[r], byte_popcount(_mm256_xor_si256(av, b0), table, low));
        acc1[r] = _mm256_add_epi8(acc1[r], byte_popcount(_mm256_xor_si256(av, b1), table, low));
      }
    }
    for (int r = 0; r < MR; ++r) {
      wide0[r] = _mm256_add_epi64(wide0[r], _mm256_sad_epu8(acc0[r], zero));
      wide1[r] = _mm256_add_epi64(wide1[r], _mm256_sad_epu8(acc1[r], zero));
    }
  }
  for (int r = 0; r < MR; ++r) {
    alignas(32) int64_t tmp[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(tmp), wide0[r]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(tmp + 4), wide1[r]);
    for (int c = 0; c < 8; ++c) cnt[r * kPanelCols + half * 8 + c] = static_cast<int32_t>(tmp[c]);
  }
}

template <int MR>
inline void panel_rows(const uint64_t* a, int64_t lda, int64_t row0, int64_t rows, const uint64_t* panel,
                       int64_t k_words, int64_t col0, int64_t cols, const BinaryEpilogue& ep, int64_t& r0) {
  alignas(32) int32_t cnt[MR * kPanelCols];
  for (; r0 + MR <= rows; r0 += MR) {
    panel_tile<MR>(a + r0 * lda, lda, panel, k_words, 0, cnt);
    if (cols > 8) panel_tile<MR>(a + r0 * lda, lda, panel, k_words, 1, cnt);
    apply_epilogue(ep, cnt, MR, cols, row0 + r0, col0);
  }
}

// pos_sum of one weight row for one sample: each weight byte becomes an 8-lane mask (broadcast, test bits).
inline float connect_dot(const uint64_t* wrow, const float* x, int64_t len) {
  const __m256i bit_of_lane = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  const int64_t full = len / 16 * 16;
  int64_t k = 0;
  for (; k < full; k += 16) {
    const uint32_t bits16 = static_cast<uint32_t>(wrow[k >> 6] >> (k & 63));
    const __m256i m0 = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(bits16 & 0xFF), bit_of_lane), bit_of_lane);
    const __m256i m1 =
        _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((bits16 >> 8) & 0xFF), bit_of_lane), bit_of_lane);
    acc0 = _mm256_add_ps(acc0, _mm256_and_ps(_mm256_loadu_ps(x + k), _mm256_castsi256_ps(m0)));
    acc1 = _mm256_add_ps(acc1, _mm256_and_ps(_mm256_loadu_ps(x + k + 8), _mm256_castsi256_ps(m1)));
  }
  const __m256 s = _mm256_add_ps(acc0, acc1);
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  float tail = 0.0f;
  for (; k < len; ++k)
    if ((wrow[k >> 6] >> (k & 63)) & 1u) tail += x[k];
  return _mm_cvtss_f32(h) + tail;
}

}  // namespace

void bitpack_rows_avx2(const float* x, int64_t rows, int64_t ld_x, int64_t len, uint64_t* out, int64_t ld_out) {
  const __m256 zero = _mm256_setzero_ps();
  const int64_t full = len / 64;
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ld_x;
    uint64_t* o = out + r * ld_out;
    for (int64_t w = 0; w < full; ++w) {
      uint64_t bits = 0;
      for (int q = 0; q < 8; ++q) {
        const int m = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(xr + w * 64 + q * 8), zero, _CMP_GE_OQ));
        bits |= static_cast<uint64_t>(static_cast<uint32_t>(m)) << (q * 8);
      }
      o[w] = bits;
    }
    if (len % 64) o[full] = sign_bits_scalar(xr + full * 64, len % 64);
  }
}

void bitpack_planes_avx2(const float* x, int64_t channels, int64_t plane_stride, int64_t positions,
                         uint64_t* out, int64_t ld_out, uint64_t* scratch) {
  bitpack_planes_generic(x, channels, plane_stride, positions, out, ld_out, scratch);
}

void binary_gemm_panel_avx2(const uint64_t* a, int64_t lda, int64_t row0, int64_t rows, const uint64_t* panel,
                            int64_t k_words, int64_t col0, int64_t cols, const BinaryEpilogue& ep) {
  int64_t r0 = 0;
  panel_rows<4>(a, lda, row0, rows, panel, k_words, col0, cols, ep, r0);
  panel_rows<1>(a, lda, row0, rows, panel, k_words, col0, cols, ep, r0);
}

void binary_gemv_avx2(const uint64_t* a, int64_t lda, int64_t row0, int64_t rows, const uint64_t* b, int64_t ldb,
                      int64_t m, int64_t k_words, const BinaryEpilogue& ep) {
  // Scalar POPCNT: at batch <= 4 the weights stream from memory and one popcount per word keeps up.
  int32_t cnt[kPanelCols];
  for (int64_t r = 0; r < rows; ++r) {
    const uint64_t* ar = a + r * lda;
    for (int64_t j = 0; j < m; ++j) {
      const uint64_t* bj = b + j * ldb;
      int64_t s0 = 0, s1 = 0;
      int64_t k = 0;
      for (; k + 2 <= k_words; k += 2) {
        s0 += _mm_popcnt_u64(ar[k] ^ bj[k]);
        s1 += _mm_popcnt_u64(ar[k + 1] ^ bj[k + 1]);
      }
      if (k < k_words) s0 += _mm_popcnt_u64(ar[k] ^ bj[k]);
      cnt[j] = static_cast<int32_t>(s0 + s1);
    }
    apply_epilogue(ep, cnt, 1, m, row0 + r, 0);
  }
}

void popcount_rows_avx2(const uint64_t* words, int64_t rows, int64_t row_words, int32_t* out) {
  popcount_rows_generic(words, rows, row_words, out);
}

void binary_connect_avx2(const uint64_t* w, int64_t ldw, int64_t rows, const float* x, int64_t ldx, int64_t m,
                         int64_t len, float* pos_sum, int64_t ld_sum) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < m; ++j) pos_sum[j * ld_sum + r] = connect_dot(w + r * ldw, x + j * ldx, len);
}

#else

void bitpack_rows_avx2(const float* x, int64_t rows, int64_t ld_x, int64_t len, uint64_t* out, int64_t ld_out) {
  bitpack_rows_portable(x, rows, ld_x, len, out, ld_out);
}
void bitpack_planes_avx2(const float* x, int64_t channels, int64_t plane_stride, int64_t positions,
                         uint64_t* out, int64_t ld_out, uint64_t* scratch) {
  bitpack_planes_portable(x, channels, plane_stride, positions, out, ld_out, scratch);
}
void binary_gemm_panel_avx2(const uint64_t* a, int64_t lda, int64_t row0, int64_t rows, const uint64_t* panel,
                            int64_t k_words, int64_t col0, int64_t cols, const BinaryEpilogue& ep) {
  binary_gemm_panel_portable(a, lda, row0, rows, panel, k_words, col0, cols, ep);
}
void binary_gemv_avx2(const uint64_t* a, int64_t lda, int64_t row0, int64_t rows, const uint64_t* b, int64_t ldb,
                      int64_t m, int64_t k_words, const BinaryEpilogue& ep) {
  binary_gemv_portable(a, lda, row0, rows, b, ldb, m, k_words, ep);
}
void popcount_rows_avx2(const uint64_t* words, int64_t rows, int64_t row_words, int32_t* out) {
  popcount_rows_portable(words, rows, row_words, out);
}
void binary_connect_avx2(const uint64_t* w, int64_t ldw, int64_t rows, const float* x, int64_t ldx, int64_t m,
                         int64_t len, float* pos_sum, int64_t ld_sum) {
  binary_connect_portable(w, ldw, rows, x, ldx, m, len, pos_sum, ld_sum);
}

#endif

}  // namespace sparsecomp::cpu

#ifdef SPARSECOMP_HAVE_AVX2_TU
#pragma GCC pop_options
#endif
