// AVX-512 binary kernels. The popcount GEMM needs VPOPCNTQ (AVX512_VPOPCNTDQ, Ice Lake and later); the binding
// only calls it when cpu_features reports that extension. Packing and BinaryConnect need F+BW+VL+DQ only.
#include <immintrin.h>

#include <algorithm>

#include "binary.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vpopcntdq,fma,bmi2,popcnt")
#define SPARSECOMP_HAVE_AVX512_TU 1
#endif

#include "binary_common_impl.h"

namespace sparsecomp::cpu {

#ifdef SPARSECOMP_HAVE_AVX512_TU
namespace {

inline __mmask16 tail_mask16(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1u); }
inline __mmask8 tail_mask8(int64_t n) { return n >= 8 ? __mmask8(0xFF) : __mmask8((1u << n) - 1u); }

// Sign bits of 64 consecutive floats: four compares, one mask register each.
inline uint64_t sign_bits64(const float* x) {
  const __m512 zero = _mm512_setzero_ps();
  const uint64_t m0 = _mm512_cmp_ps_mask(_mm512_loadu_ps(x), zero, _CMP_GE_OQ);
  const uint64_t m1 = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + 16), zero, _CMP_GE_OQ);
  const uint64_t m2 = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + 32), zero, _CMP_GE_OQ);
  const uint64_t m3 = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + 48), zero, _CMP_GE_OQ);
  return m0 | (m1 << 16) | (m2 << 32) | (m3 << 48);
}

// Per-panel part of the vector epilogue: the border pattern of each of the 16 columns and its product count.
struct PanelPatterns {
  bool vector;       // false: use the scalar epilogue (more than 32 patterns)
  bool patterned;
  __mmask16 cols;    // valid columns
  __m512i pattern;   // pattern id per column
  __m512i base;      // pattern_base per column
};

inline PanelPatterns panel_patterns(const BinaryEpilogue& ep, int64_t col0, int64_t cols) {
  PanelPatterns pp{};
  pp.cols = tail_mask16(cols);
  pp.patterned = ep.col_pattern != nullptr;
  pp.vector = !pp.patterned || ep.cor_ld <= 32;
  if (!pp.patterned) {
    pp.base = _mm512_set1_epi32(ep.pattern_base[0]);
  } else if (pp.vector) {
    pp.pattern = _mm512_maskz_loadu_epi32(pp.cols, ep.col_pattern + col0);
    pp.base = ep.cor_ld <= 16 ? _mm512_permutexvar_epi32(pp.pattern, _mm512_loadu_si512(ep.pattern_base))
                              : _mm512_permutex2var_epi32(_mm512_loadu_si512(ep.pattern_base), pp.pattern,
                                                          _mm512_loadu_si512(ep.pattern_base + 16));
  }
  return pp;
}

// Outputs of channel o for the 16 columns of a panel, from its two 8 x 64-bit accumulators.
inline void store_channel(const BinaryEpilogue& ep, const PanelPatterns& pp, __m512i acc_lo, __m512i acc_hi,
                          int64_t o, int64_t col0) {
  const __m512i counts = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(acc_lo)),
                                            _mm512_cvtepi64_epi32(acc_hi), 1);
  __m512i mismatches = counts;
  if (pp.patterned) {
    const int32_t* row = ep.pattern_cor + o * ep.cor_ld;
    const __m512i cor = ep.cor_ld <= 16
                            ? _mm512_permutexvar_epi32(pp.pattern, _mm512_loadu_si512(row))
                            : _mm512_permutex2var_epi32(_mm512_loadu_si512(row), pp.pattern, _mm512_loadu_si512(row + 16));
    mismatches = _mm512_sub_epi32(counts, cor);
  }
  const __m512i dot = _mm512_sub_epi32(pp.base, _mm512_slli_epi32(mismatches, 1));
  __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(ep.alpha[o]),
                             _mm512_set1_ps(ep.bias ? ep.bias[o] : 0.0f));
  if (ep.activation == Activation::Relu) v = _mm512_max_ps(v, _mm512_setzero_ps());
  float* out = ep.out + o * ep.row_stride + col0 * ep.col_stride;
  if (ep.col_stride == 1) {
    _mm512_mask_storeu_ps(out, pp.cols, v);
  } else {
    const __m512i idx = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                           _mm512_set1_epi32(static_cast<int32_t>(ep.col_stride)));
    _mm512_mask_i32scatter_ps(out, pp.cols, idx, v, 4);
  }
}

// Register tile: MR weight rows x 16 panel columns, accumulators 8 x 64-bit lanes wide, never reduced (each
// lane is one output). Per word k: MR broadcasts, two panel loads, 2*MR xor+popcount+add.
template <int MR>
inline void panel_tile(const uint64_t* a, int64_t lda, const uint64_t* panel, int64_t k_words, __m512i* acc0,
                       __m512i* acc1) {
  for (int r = 0; r < MR; ++r) acc0[r] = acc1[r] = _mm512_setzero_si512();
  for (int64_t k = 0; k < k_words; ++k) {
    const __m512i b0 = _mm512_load_si512(panel + k * kPanelCols);
    const __m512i b1 = _mm512_load_si512(panel + k * kPanelCols + 8);
    for (int r = 0; r < MR; ++r) {
      const __m512i av = _mm512_set1_epi64(static_cast<long long>(a[r * lda + k]));
      acc0[r] = _mm512_add_epi64(acc0[r], _mm512_popcnt_epi64(_mm512_xor_si512(av, b0)));
      acc1[r] = _mm512_add_epi64(acc1[r], _mm512_popcnt_epi64(_mm512_xor_si512(av, b1)));
    }
  }
}

template <int MR>
inline void panel_rows(const uint64_t* a, int64_t lda, int64_t row0, int64_t rows, const uint64_t* panel,
                       int64_t k_words, int64_t col0, int64_t cols, const BinaryEpilogue& ep,
                       const PanelPatterns& pp, int64_t& r0) {
  alignas(64) int32_t cnt[MR * kPanelCols];
  __m512i acc0[MR], acc1[MR];
  for (; r0 + MR <= rows; r0 += MR) {
    panel_tile<MR>(a + r0 * lda, lda, panel, k_words, acc0, acc1);
    if (pp.vector) {
      for (int r = 0; r < MR; ++r) store_channel(ep, pp, acc0[r], acc1[r], row0 + r0 + r, col0);
      continue;
    }
    for (int r = 0; r < MR; ++r) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(cnt + r * kPanelCols), _mm512_cvtepi64_epi32(acc0[r]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(cnt + r * kPanelCols + 8), _mm512_cvtepi64_epi32(acc1[r]));
    }
    apply_epilogue(ep, cnt, MR, cols, row0 + r0, col0);
  }
}

// Rows x up to 4 samples, vectors along k (no panel: the weights are streamed once in their stored order).
template <int R, int M>
inline void gemv_tile(const uint64_t* a, int64_t lda, const uint64_t* b, int64_t ldb, int64_t k_words, int32_t* cnt) {
  __m512i acc[R][M];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < M; ++j) acc[r][j] = _mm512_setzero_si512();
  for (int64_t k = 0; k < k_words; k += 8) {
    const __mmask8 mk = tail_mask8(k_words - k);
    __m512i bv[M];
    for (int j = 0; j < M; ++j) bv[j] = _mm512_maskz_loadu_epi64(mk, b + j * ldb + k);
    for (int r = 0; r < R; ++r) {
      const __m512i av = _mm512_maskz_loadu_epi64(mk, a + r * lda + k);
      for (int j = 0; j < M; ++j)
        acc[r][j] = _mm512_add_epi64(acc[r][j], _mm512_popcnt_epi64(_mm512_xor_si512(av, bv[j])));
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < M; ++j) cnt[r * kPanelCols + j] = static_cast<int32_t>(_mm512_reduce_add_epi64(acc[r][j]));
}

template <int M>
void gemv_rows(const uint64_t* a, int64_t lda, int64_t row0, int64_t rows, const uint64_t* b, int64_t ldb,
               int64_t k_words, const BinaryEpilogue& ep) {
  constexpr int R = 4;
  alignas(64) int32_t cnt[R * kPanelCols];
  int64_t r0 = 0;
  for (; r0 + R <= rows; r0 += R) {
    gemv_tile<R, M>(a + r0 * lda, lda, b, ldb, k_words, cnt);
    apply_epilogue(ep, cnt, R, M, row0 + r0, 0);
  }
  for (; r0 < rows; ++r0) {
    gemv_tile<1, M>(a + r0 * lda, lda, b, ldb, k_words, cnt);
    apply_epilogue(ep, cnt, 1, M, row0 + r0, 0);
  }
}

// pos_sum of one weight row for M samples: masked adds, 16 weights (one mask register) per instruction.
template <int M>
inline void connect_row(const uint64_t* wrow, const float* x, int64_t ldx, int64_t len, float* out, int64_t ld_out) {
  __m512 acc[M];
  for (int j = 0; j < M; ++j) acc[j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < len; k += 16) {
    const __mmask16 wm = static_cast<__mmask16>(wrow[k >> 6] >> (k & 63));
    const __mmask16 lm = tail_mask16(len - k);
    for (int j = 0; j < M; ++j) acc[j] = _mm512_mask_add_ps(acc[j], wm, acc[j], _mm512_maskz_loadu_ps(lm, x + j * ldx + k));
  }
  for (int j = 0; j < M; ++j) out[j * ld_out] = _mm512_reduce_add_ps(acc[j]);
}

}  // namespace

void bitpack_rows_avx512(const float* x, int64_t rows, int64_t ld_x, int64_t len, uint64_t* out, int64_t ld_out) {
  const int64_t full = len / 64;
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ld_x;
    uint64_t* o = out + r * ld_out;
    for (int64_t w = 0; w < full; ++w) o[w] = sign_bits64(xr + w * 64);
    if (len % 64) o[full] = sign_bits_scalar(xr + full * 64, len % 64);
  }
}

void bitpack_planes_avx512(const float* x, int64_t channels, int64_t plane_stride, int64_t positions,
                           uint64_t* out, int64_t ld_out, uint64_t* scratch) {
  // 32 positions at a time, all channels of one word held in four registers: per channel two loads, two
  // compares and four masked ORs of the channel's bit, no scratch round trips.
  (void)scratch;
  const __m512 zero = _mm512_setzero_ps();
  const __m512i idx = _mm512_mullo_epi64(_mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_epi64(ld_out));
  for (int64_t p = 0; p < positions; p += 32) {
    const int64_t np = std::min<int64_t>(32, positions - p);
    const __mmask16 pm0 = tail_mask16(np), pm1 = tail_mask16(np > 16 ? np - 16 : 0);
    for (int64_t w = 0; w * 64 < channels; ++w) {
      __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
      const int64_t c_end = std::min<int64_t>(channels, w * 64 + 64);
      for (int64_t c = w * 64; c < c_end; ++c) {
        const float* xc = x + c * plane_stride + p;
        const __m512i bit = _mm512_set1_epi64(static_cast<long long>(uint64_t{1} << (c - w * 64)));
        const __mmask16 ge0 = _mm512_mask_cmp_ps_mask(pm0, _mm512_maskz_loadu_ps(pm0, xc), zero, _CMP_GE_OQ);
        const __mmask16 ge1 = _mm512_mask_cmp_ps_mask(pm1, _mm512_maskz_loadu_ps(pm1, xc + 16), zero, _CMP_GE_OQ);
        s0 = _mm512_mask_or_epi64(s0, static_cast<__mmask8>(ge0), s0, bit);
        s1 = _mm512_mask_or_epi64(s1, static_cast<__mmask8>(ge0 >> 8), s1, bit);
        s2 = _mm512_mask_or_epi64(s2, static_cast<__mmask8>(ge1), s2, bit);
        s3 = _mm512_mask_or_epi64(s3, static_cast<__mmask8>(ge1 >> 8), s3, bit);
      }
      uint64_t* o = out + p * ld_out + w;
      _mm512_mask_i64scatter_epi64(o, static_cast<__mmask8>(pm0), idx, s0, 8);
      _mm512_mask_i64scatter_epi64(o + 8 * ld_out, static_cast<__mmask8>(pm0 >> 8), idx, s1, 8);
      _mm512_mask_i64scatter_epi64(o + 16 * ld_out, static_cast<__mmask8>(pm1), idx, s2, 8);
      _mm512_mask_i64scatter_epi64(o + 24 * ld_out, static_cast<__mmask8>(pm1 >> 8), idx, s3, 8);
    }
  }
}

void binary_gemm_panel_avx512(const uint64_t* a, int64_t lda, int64_t row0, int64_t rows, const uint64_t* panel,
                              int64_t k_words, int64_t col0, int64_t cols, const BinaryEpilogue& ep) {
  const PanelPatterns pp = panel_patterns(ep, col0, cols);
  int64_t r0 = 0;
  panel_rows<8>(a, lda, row0, rows, panel, k_words, col0, cols, ep, pp, r0);
  panel_rows<4>(a, lda, row0, rows, panel, k_words, col0, cols, ep, pp, r0);
  panel_rows<2>(a, lda, row0, rows, panel, k_words, col0, cols, ep, pp, r0);
  panel_rows<1>(a, lda, row0, rows, panel, k_words, col0, cols, ep, pp, r0);
}

void binary_gemv_avx512(const uint64_t* a, int64_t lda, int64_t row0, int64_t rows, const uint64_t* b,
                        int64_t ldb, int64_t m, int64_t k_words, const BinaryEpilogue& ep) {
  switch (m) {
    case 1: gemv_rows<1>(a, lda, row0, rows, b, ldb, k_words, ep); break;
    case 2: gemv_rows<2>(a, lda, row0, rows, b, ldb, k_words, ep); break;
    case 3: gemv_rows<3>(a, lda, row0, rows, b, ldb, k_words, ep); break;
    case 4: gemv_rows<4>(a, lda, row0, rows, b, ldb, k_words, ep); break;
    default: break;  // m == 0: nothing to do; the binding never passes more than kGemvMaxBatch
  }
}

void popcount_rows_avx512(const uint64_t* words, int64_t rows, int64_t row_words, int32_t* out) {
  popcount_rows_generic(words, rows, row_words, out);
}

void binary_connect_avx512(const uint64_t* w, int64_t ldw, int64_t rows, const float* x, int64_t ldx, int64_t m,
                           int64_t len, float* pos_sum, int64_t ld_sum) {
  for (int64_t j0 = 0; j0 < m; j0 += 4) {
    const int64_t mj = std::min<int64_t>(4, m - j0);
    const float* xj = x + j0 * ldx;
    float* sj = pos_sum + j0 * ld_sum;
    for (int64_t r = 0; r < rows; ++r) {
      const uint64_t* wrow = w + r * ldw;
      switch (mj) {
        case 4: connect_row<4>(wrow, xj, ldx, len, sj + r, ld_sum); break;
        case 3: connect_row<3>(wrow, xj, ldx, len, sj + r, ld_sum); break;
        case 2: connect_row<2>(wrow, xj, ldx, len, sj + r, ld_sum); break;
        default: connect_row<1>(wrow, xj, ldx, len, sj + r, ld_sum); break;
      }
    }
  }
}

#else  // not x86 with GCC/Clang: never called (detect_isa reports no AVX-512)

void bitpack_rows_avx512(const float* x, int64_t rows, int64_t ld_x, int64_t len, uint64_t* out, int64_t ld_out) {
  bitpack_rows_portable(x, rows, ld_x, len, out, ld_out);
}
void bitpack_planes_avx512(const float* x, int64_t channels, int64_t plane_stride, int64_t positions,
                           uint64_t* out, int64_t ld_out, uint64_t* scratch) {
  bitpack_planes_portable(x, channels, plane_stride, positions, out, ld_out, scratch);
}
void binary_gemm_panel_avx512(const uint64_t* a, int64_t lda, int64_t row0, int64_t rows, const uint64_t* panel,
                              int64_t k_words, int64_t col0, int64_t cols, const BinaryEpilogue& ep) {
  binary_gemm_panel_portable(a, lda, row0, rows, panel, k_words, col0, cols, ep);
}
void binary_gemv_avx512(const uint64_t* a, int64_t lda, int64_t row0, int64_t rows, const uint64_t* b,
                        int64_t ldb, int64_t m, int64_t k_words, const BinaryEpilogue& ep) {
  binary_gemv_portable(a, lda, row0, rows, b, ldb, m, k_words, ep);
}
void popcount_rows_avx512(const uint64_t* words, int64_t rows, int64_t row_words, int32_t* out) {
  popcount_rows_portable(words, rows, row_words, out);
}
void binary_connect_avx512(const uint64_t* w, int64_t ldw, int64_t rows, const float* x, int64_t ldx, int64_t m,
                           int64_t len, float* pos_sum, int64_t ld_sum) {
  binary_connect_portable(w, ldw, rows, x, ldx, m, len, pos_sum, ld_sum);
}

#endif

}  // namespace sparsecomp::cpu

#ifdef SPARSECOMP_HAVE_AVX512_TU
#pragma GCC pop_options
#endif
