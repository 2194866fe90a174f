// AVX2 codebook kernels. Eight indices (`bits` bytes) are decoded at once: the 8 bytes are broadcast to both
// 128-bit lanes, vpshufb moves the bytes holding index j into dword j, a variable shift and a mask finish it.
// The codebook lives in registers for bits <= 5 (vpermps on 8-entry tables, blended on the high index bits)
// and is gathered from L1 above that.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "codebook.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi2")
#define SPARSECOMP_HAVE_AVX2_TU 1
#endif

namespace sparsecomp::cpu {

#ifdef SPARSECOMP_HAVE_AVX2_TU
namespace {

struct Decoder {
  __m256i ctrl, shifts, mask, dword_shifts;
  int64_t group_bytes;  // bits

  explicit Decoder(int bits) : group_bytes(bits) {
    alignas(32) uint8_t c[32];
    alignas(32) uint32_t s[8];
    for (int j = 0; j < 8; ++j) {
      const int bit = j * bits, byte = bit >> 3, shift = bit & 7;
      uint8_t* d = c + 4 * j;  // both 128-bit lanes hold the same 8 source bytes
      d[0] = static_cast<uint8_t>(byte);
      d[1] = shift + bits > 8 ? static_cast<uint8_t>(byte + 1) : 0x80;
      d[2] = d[3] = 0x80;
      s[j] = static_cast<uint32_t>(shift);
    }
    ctrl = _mm256_load_si256(reinterpret_cast<const __m256i*>(c));
    shifts = _mm256_load_si256(reinterpret_cast<const __m256i*>(s));
    mask = _mm256_set1_epi32((1 << bits) - 1);
    dword_shifts = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(bits));
  }

  // Indices of group g (elements 8g .. 8g+7); reads at most min(8, row_bytes - offset) bytes. Up to 4 bits the
  // group fits one dword: a broadcast load and a shift per lane, no vpshufb (the shuffle port is the bottleneck).
  inline __m256i indices(const uint8_t* row, int64_t row_bytes, int64_t g) const {
    const int64_t off = g * group_bytes;
    if (group_bytes <= 4) {
      __m256i v;
      if (off + 4 <= row_bytes) {  // vbroadcastss from memory: a load-port uop (a GPR broadcast costs two p5)
        v = _mm256_castps_si256(_mm256_broadcast_ss(reinterpret_cast<const float*>(row + off)));
      } else {
        uint32_t raw = 0;
        std::memcpy(&raw, row + off, static_cast<size_t>(row_bytes - off));
        v = _mm256_set1_epi32(static_cast<int>(raw));
      }
      return _mm256_and_si256(_mm256_srlv_epi32(v, dword_shifts), mask);
    }
    uint64_t raw = 0;
    if (off + 8 <= row_bytes) std::memcpy(&raw, row + off, 8);
    else std::memcpy(&raw, row + off, static_cast<size_t>(row_bytes - off < 8 ? row_bytes - off : 8));
    const __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi64x(static_cast<long long>(raw)), ctrl);
    return _mm256_and_si256(_mm256_srlv_epi32(v, shifts), mask);
  }
};

// Selects by bit `bit` of idx (blendv looks at the sign bit).
inline __m256 select_bit(__m256 zero_side, __m256 one_side, __m256i idx, int bit) {
  return _mm256_blendv_ps(zero_side, one_side, _mm256_castsi256_ps(_mm256_sll_epi32(idx, _mm_cvtsi32_si128(31 - bit))));
}

struct Table {
  __m256 t[4];
  const float* cb;
  int bits;
  inline void load(const float* table, int b) {
    cb = table;
    bits = b;
    if (b <= 5) {
      alignas(32) float pad[32] = {};
      std::memcpy(pad, table, sizeof(float) << b);
      for (int i = 0; i < 4; ++i) t[i] = _mm256_load_ps(pad + 8 * i);
    }
  }
  // L: the table kind (lut_kind(bits)), a template argument so the inner loops carry no branch on it.
  template <int L>
  inline __m256 lookup(__m256i idx) const {
    if (L == 0) return _mm256_permutevar8x32_ps(t[0], idx);
    if (L == 1) return select_bit(_mm256_permutevar8x32_ps(t[0], idx), _mm256_permutevar8x32_ps(t[1], idx), idx, 3);
    if (L == 2) {
      const __m256 lo = select_bit(_mm256_permutevar8x32_ps(t[0], idx), _mm256_permutevar8x32_ps(t[1], idx), idx, 3);
      const __m256 hi = select_bit(_mm256_permutevar8x32_ps(t[2], idx), _mm256_permutevar8x32_ps(t[3], idx), idx, 3);
      return select_bit(lo, hi, idx, 4);
    }
    return _mm256_i32gather_ps(cb, idx, 4);
  }
};

inline int lut_kind(int bits) { return bits <= 3 ? 0 : (bits == 4 ? 1 : (bits == 5 ? 2 : 3)); }

inline __m256i lane_mask(int64_t n) {  // first n (0..8) lanes all-ones
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

template <int M, int L>
void gemv_rows(const CodebookWeight& w, const float* x, int64_t ldx, const float* bias, float* y, int64_t ldy,
               int64_t row_begin, int64_t row_end) {
  constexpr int U = M == 1 ? 4 : (M == 2 ? 2 : 1);
  // K blocked over a block of rows for m > 2 so x stays in L1 (see codebook_avx512.cpp): 96 groups = 768 floats.
  constexpr int64_t kChunk = M <= 2 ? (int64_t{1} << 40) : 96;
  constexpr int64_t kRows = 32;
  const Decoder d(w.bits);
  const int64_t full = w.cols / 8, groups = (w.cols + 7) / 8;
  const int64_t tail = w.cols - 8 * full;
  const __m256i tmask = lane_mask(tail);
  Table t;
  float part[kRows][M];
  for (int64_t rb = row_begin; rb < row_end; rb += kRows) {
    const int64_t re = std::min(row_end, rb + kRows);
    for (int64_t r = 0; r < re - rb; ++r)
      for (int j = 0; j < M; ++j) part[r][j] = 0.0f;
    for (int64_t c0 = 0; c0 < groups; c0 += kChunk) {
      const int64_t c1 = std::min(groups, c0 + kChunk), f1 = std::min(c1, full);
      for (int64_t o = rb; o < re; ++o) {
        const uint8_t* row = w.packed + o * w.row_bytes;
        t.load(w.codebook + o * w.cb_stride, w.bits);
        __m256 acc[U][M];
        for (int u = 0; u < U; ++u)
          for (int j = 0; j < M; ++j) acc[u][j] = _mm256_setzero_ps();
        int64_t g = c0;
        for (; g + U <= f1; g += U) {
#pragma GCC unroll 4
          for (int u = 0; u < U; ++u) {
            const __m256 wv = t.template lookup<L>(d.indices(row, w.row_bytes, g + u));
#pragma GCC unroll 8
            for (int j = 0; j < M; ++j)
              acc[u][j] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + j * ldx + 8 * (g + u)), acc[u][j]);
          }
        }
        for (; g < f1; ++g) {
          const __m256 wv = t.template lookup<L>(d.indices(row, w.row_bytes, g));
#pragma GCC unroll 8
          for (int j = 0; j < M; ++j)
            acc[0][j] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + j * ldx + 8 * g), acc[0][j]);
        }
        if (tail && c1 == groups) {  // masked: padding indices and x past the row end contribute nothing
          const __m256 wv = _mm256_and_ps(t.template lookup<L>(d.indices(row, w.row_bytes, full)),
                                          _mm256_castsi256_ps(tmask));
#pragma GCC unroll 8
          for (int j = 0; j < M; ++j)
            acc[0][j] = _mm256_fmadd_ps(wv, _mm256_maskload_ps(x + j * ldx + 8 * full, tmask), acc[0][j]);
        }
        for (int j = 0; j < M; ++j) {
          __m256 s = acc[0][j];
          for (int u = 1; u < U; ++u) s = _mm256_add_ps(s, acc[u][j]);
          __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
          h = _mm_add_ps(h, _mm_movehl_ps(h, h));
          h = _mm_add_ss(h, _mm_movehdup_ps(h));
          part[o - rb][j] += _mm_cvtss_f32(h);
        }
      }
    }
    for (int64_t o = rb; o < re; ++o) {
      const float b = bias ? bias[o] : 0.0f;
      for (int j = 0; j < M; ++j) y[j * ldy + o] = part[o - rb][j] + b;
    }
  }
}

}  // namespace

namespace {
template <int L>
void gemv_lut(const CodebookWeight& w, const float* x, int64_t ldx, int64_t m, const float* bias, float* y,
              int64_t ldy, int64_t r0, int64_t r1) {
  switch (m) {
    case 1: return gemv_rows<1, L>(w, x, ldx, bias, y, ldy, r0, r1);
    case 2: return gemv_rows<2, L>(w, x, ldx, bias, y, ldy, r0, r1);
    case 3: return gemv_rows<3, L>(w, x, ldx, bias, y, ldy, r0, r1);
    case 4: return gemv_rows<4, L>(w, x, ldx, bias, y, ldy, r0, r1);
    case 5: return gemv_rows<5, L>(w, x, ldx, bias, y, ldy, r0, r1);
    case 6: return gemv_rows<6, L>(w, x, ldx, bias, y, ldy, r0, r1);
    case 7: return gemv_rows<7, L>(w, x, ldx, bias, y, ldy, r0, r1);
    default: return gemv_rows<8, L>(w, x, ldx, bias, y, ldy, r0, r1);
  }
}

template <int L>
void dequant_rows(const CodebookWeight& w, int64_t row_begin, int64_t row_end, float* out) {
  const Decoder d(w.bits);
  const int64_t groups = (w.cols + 7) / 8;
  Table t;
  for (int64_t o = row_begin; o < row_end; ++o) {
    const uint8_t* row = w.packed + o * w.row_bytes;
    float* dst = out + (o - row_begin) * w.cols;
    t.load(w.codebook + o * w.cb_stride, w.bits);
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t left = w.cols - 8 * g;
      const __m256 v = t.template lookup<L>(d.indices(row, w.row_bytes, g));
      if (left >= 8) _mm256_storeu_ps(dst + 8 * g, v);
      else _mm256_maskstore_ps(dst + 8 * g, lane_mask(left), v);
    }
  }
}
}  // namespace

void codebook_gemv_avx2(const CodebookWeight& w, const float* x, int64_t ldx, int64_t m, const float* bias, float* y,
                        int64_t ldy, int64_t r0, int64_t r1) {
  switch (lut_kind(w.bits)) {
    case 0: return gemv_lut<0>(w, x, ldx, m, bias, y, ldy, r0, r1);
    case 1: return gemv_lut<1>(w, x, ldx, m, bias, y, ldy, r0, r1);
    case 2: return gemv_lut<2>(w, x, ldx, m, bias, y, ldy, r0, r1);
    default: return gemv_lut<3>(w, x, ldx, m, bias, y, ldy, r0, r1);
  }
}

void codebook_dequant_avx2(const CodebookWeight& w, int64_t row_begin, int64_t row_end, float* out) {
  switch (lut_kind(w.bits)) {
    case 0: return dequant_rows<0>(w, row_begin, row_end, out);
    case 1: return dequant_rows<1>(w, row_begin, row_end, out);
    case 2: return dequant_rows<2>(w, row_begin, row_end, out);
    default: return dequant_rows<3>(w, row_begin, row_end, out);
  }
}

#else  // not an x86 GCC/Clang build: the dispatcher never selects these.
void codebook_gemv_avx2(const CodebookWeight& w, const float* x, int64_t ldx, int64_t m, const float* bias, float* y,
                        int64_t ldy, int64_t r0, int64_t r1) {
  codebook_gemv_portable(w, x, ldx, m, bias, y, ldy, r0, r1);
}
void codebook_dequant_avx2(const CodebookWeight& w, int64_t row_begin, int64_t row_end, float* out) {
  codebook_dequant_portable(w, row_begin, row_end, out);
}
#endif

}  // namespace sparsecomp::cpu

#ifdef SPARSECOMP_HAVE_AVX2_TU
#pragma GCC pop_options
#endif
