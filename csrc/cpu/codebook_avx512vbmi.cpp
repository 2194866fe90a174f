// AVX-512 VBMI GEMV for 8-bit indices with one codebook per layer. The 256-entry table is split into four byte
// planes (byte b of every entry), 4 zmm each; vpermi2b looks up 64 indices in 128 entries at once, so a block
// of 64 weights costs 8 vpermi2b + 4 blends + 8 unpacks instead of four 16-lane gathers. Separate file: the
// VBMI target must not leak into code that runs on AVX-512 CPUs without it (Skylake-X).
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "codebook.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,fma")
#define SPARSECOMP_HAVE_VBMI_TU 1
#endif

namespace sparsecomp::cpu {

#ifdef SPARSECOMP_HAVE_VBMI_TU
namespace {

// Position of weight i (0..63) of a block in the kernel's output order: unpacking byte planes works inside
// 128-bit lanes, so float vector r holds, in lane L, the weights 16L + 4r .. 16L + 4r + 3.
inline int block_slot(int i) {
  const int lane = i / 16, r = (i % 16) / 4, e = i % 4;
  return 16 * r + 4 * lane + e;
}

struct Planes {
  __m512i t[4][4];  // t[b][q]: byte b of entries 64q .. 64q + 63
  explicit Planes(const float* cb) {
    alignas(64) uint8_t bytes[4][256];
    const uint8_t* src = reinterpret_cast<const uint8_t*>(cb);
    for (int e = 0; e < 256; ++e)
      for (int b = 0; b < 4; ++b) bytes[b][e] = src[4 * e + b];
    for (int b = 0; b < 4; ++b)
      for (int q = 0; q < 4; ++q) t[b][q] = _mm512_load_si512(bytes[b] + 64 * q);
  }
  // The 64 weights of `idx` (64 byte indices) as 4 float vectors in block_slot order.
  inline void lookup(__m512i idx, __m512 (&out)[4]) const {
    const __mmask64 high = _mm512_movepi8_mask(idx);  // index bit 7: entries 128..255
    __m512i p[4];
    for (int b = 0; b < 4; ++b) {
      const __m512i lo = _mm512_permutex2var_epi8(t[b][0], idx, t[b][1]);
      const __m512i hi = _mm512_permutex2var_epi8(t[b][2], idx, t[b][3]);
      p[b] = _mm512_mask_blend_epi8(high, lo, hi);
    }
    const __m512i lo01 = _mm512_unpacklo_epi8(p[0], p[1]), hi01 = _mm512_unpackhi_epi8(p[0], p[1]);
    const __m512i lo23 = _mm512_unpacklo_epi8(p[2], p[3]), hi23 = _mm512_unpackhi_epi8(p[2], p[3]);
    out[0] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(lo01, lo23));
    out[1] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(lo01, lo23));
    out[2] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(hi01, hi23));
    out[3] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(hi01, hi23));
  }
};

template <int M>
void gemv8(const CodebookWeight& w, const float* x, int64_t ldx, const float* bias, float* y, int64_t ldy,
           int64_t row_begin, int64_t row_end) {
  const int64_t blocks = (w.cols + 63) / 64, full = w.cols / 64;
  const int64_t xld = 64 * blocks;
  std::vector<float> xbuf(static_cast<size_t>(M * xld));  // x in block_slot order, zero-padded
  for (int j = 0; j < M; ++j)
    for (int64_t k = 0; k < xld; ++k)
      xbuf[j * xld + 64 * (k / 64) + block_slot(static_cast<int>(k % 64))] = k < w.cols ? x[j * ldx + k] : 0.0f;
  __mmask16 tail[4] = {0, 0, 0, 0};  // lanes of the last block that hold real weights
  for (int i = 0; i < 64; ++i) {
    const int slot = block_slot(i);
    if (64 * full + i < w.cols) tail[slot / 16] = static_cast<__mmask16>(tail[slot / 16] | (1u << (slot % 16)));
  }
  const Planes planes(w.codebook);
  alignas(64) uint8_t spill[64];
  for (int64_t o = row_begin; o < row_end; ++o) {
    const uint8_t* row = w.packed + o * w.row_bytes;
    constexpr int C = M <= 2 ? 4 : 1;  // independent FMA chains per sample (the 4 vectors of a block)
    __m512 acc[C][M];
    for (int c = 0; c < C; ++c)
      for (int j = 0; j < M; ++j) acc[c][j] = _mm512_setzero_ps();
    for (int64_t blk = 0; blk < blocks; ++blk) {
      __m512i idx;
      if (blk < full) {
        idx = _mm512_loadu_si512(row + 64 * blk);
      } else {  // the row's last bytes, zero-padded (never read past the row)
        std::memset(spill, 0, sizeof(spill));
        std::memcpy(spill, row + 64 * blk, static_cast<size_t>(w.cols - 64 * blk));
        idx = _mm512_load_si512(spill);
      }
      __m512 wv[4];
      planes.lookup(idx, wv);
      if (blk == full)
        for (int r = 0; r < 4; ++r) wv[r] = _mm512_maskz_mov_ps(tail[r], wv[r]);
      const float* xb = xbuf.data() + 64 * blk;
#pragma GCC unroll 8
      for (int j = 0; j < M; ++j)
#pragma GCC unroll 4
        for (int r = 0; r < 4; ++r)
          acc[r % C][j] = _mm512_fmadd_ps(wv[r], _mm512_loadu_ps(xb + j * xld + 16 * r), acc[r % C][j]);
    }
    const float b = bias ? bias[o] : 0.0f;
    for (int j = 0; j < M; ++j) {
      __m512 sum = acc[0][j];
      for (int c = 1; c < C; ++c) sum = _mm512_add_ps(sum, acc[c][j]);
      y[j * ldy + o] = _mm512_reduce_add_ps(sum) + b;
    }
  }
}

}  // namespace

bool codebook_has_vbmi() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512bw");
  }();
  return has;
}

void codebook_gemv8_avx512vbmi(const CodebookWeight& w, const float* x, int64_t ldx, int64_t m, const float* bias,
                               float* y, int64_t ldy, int64_t row_begin, int64_t row_end) {
  switch (m) {
    case 1: return gemv8<1>(w, x, ldx, bias, y, ldy, row_begin, row_end);
    case 2: return gemv8<2>(w, x, ldx, bias, y, ldy, row_begin, row_end);
    case 3: return gemv8<3>(w, x, ldx, bias, y, ldy, row_begin, row_end);
    case 4: return gemv8<4>(w, x, ldx, bias, y, ldy, row_begin, row_end);
    case 5: return gemv8<5>(w, x, ldx, bias, y, ldy, row_begin, row_end);
    case 6: return gemv8<6>(w, x, ldx, bias, y, ldy, row_begin, row_end);
    case 7: return gemv8<7>(w, x, ldx, bias, y, ldy, row_begin, row_end);
    default: return gemv8<8>(w, x, ldx, bias, y, ldy, row_begin, row_end);
  }
}

#else
bool codebook_has_vbmi() { return false; }
void codebook_gemv8_avx512vbmi(const CodebookWeight& w, const float* x, int64_t ldx, int64_t m, const float* bias,
                               float* y, int64_t ldy, int64_t row_begin, int64_t row_end) {
  codebook_gemv_portable(w, x, ldx, m, bias, y, ldy, row_begin, row_end);
}
#endif

}  // namespace sparsecomp::cpu

#ifdef SPARSECOMP_HAVE_VBMI_TU
#pragma GCC pop_options
#endif
