// AVX-512 codebook kernels (F+BW+VL+DQ). Sixteen indices (2 * bits bytes) are decoded at once: the bytes are
// broadcast to the four 128-bit lanes, vpshufb moves the one or two bytes holding index j into dword j, a
// variable shift and a mask finish it. The codebook lives in registers for bits <= 5 (vpermps for 16 entries,
// vpermi2ps for 32) and is gathered from L1 above that.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "codebook.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,bmi2")
#define SPARSECOMP_HAVE_AVX512_TU 1
#endif

namespace sparsecomp::cpu {

#ifdef SPARSECOMP_HAVE_AVX512_TU
namespace {

enum Lut { kPerm16 = 0, kPerm32 = 1, kGather = 2 };

struct Decoder {
  __m512i ctrl, shifts, mask;
  int64_t group_bytes;  // 2 * bits
  __mmask16 full_load;

  explicit Decoder(int bits) : group_bytes(2 * bits) {
    alignas(64) uint8_t c[64];
    alignas(64) uint32_t s[16];
    for (int j = 0; j < 16; ++j) {
      const int bit = j * bits, byte = bit >> 3, shift = bit & 7;
      uint8_t* d = c + 4 * j;  // dword j sits in 128-bit lane j / 4, which holds all 16 source bytes
      d[0] = static_cast<uint8_t>(byte);
      d[1] = shift + bits > 8 ? static_cast<uint8_t>(byte + 1) : 0x80;
      d[2] = d[3] = 0x80;
      s[j] = static_cast<uint32_t>(shift);
    }
    ctrl = _mm512_load_si512(c);
    shifts = _mm512_load_si512(s);
    mask = _mm512_set1_epi32((1 << bits) - 1);
    full_load = static_cast<__mmask16>((1u << group_bytes) - 1u);
  }

  // Indices of group g when 16 bytes from its start lie inside the buffer: a broadcast load (load port, not
  // the shuffle port that vpshufb and vpermps already keep busy).
  inline __m512i indices_unmasked(const uint8_t* row, int64_t g) const {
    // Bits above the index are left in place: Table::lookup ignores them.
    const __m512i v = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + g * group_bytes)));
    return _mm512_srlv_epi32(_mm512_shuffle_epi8(v, ctrl), shifts);
  }

  // Indices of group g (elements 16g .. 16g+15); `load` masks the bytes that may be read.
  inline __m512i indices(const uint8_t* row, int64_t g, __mmask16 load) const {
    const __m128i raw = _mm_maskz_loadu_epi8(load, row + g * group_bytes);
    __m512i v = _mm512_shuffle_epi8(_mm512_broadcast_i32x4(raw), ctrl);
    return _mm512_and_si512(_mm512_srlv_epi32(v, shifts), mask);
  }
};

// The codebook in registers. vpermps reads only the low 4 index bits and vpermi2ps the low 5, so decoders
// leave the bits above an index unmasked; tables with fewer than 16 entries are repeated to fill all 16 lanes
// so those stray bits select the same value. The gather (bits >= 6) masks its indices itself.
struct Table {
  __m512 t0, t1;
  __m512i gather_mask;
  const float* cb;
  template <int L>
  inline void load(const float* table, int bits) {
    cb = table;
    if (L == kPerm16) {
      const __m512 raw = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << (1 << bits)) - 1u), table);
      t0 = _mm512_permutexvar_ps(_mm512_and_si512(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
                                                                    15), _mm512_set1_epi32((1 << bits) - 1)), raw);
    }
    if (L == kPerm32) {
      t0 = _mm512_loadu_ps(table);
      t1 = _mm512_loadu_ps(table + 16);
    }
    if (L == kGather) gather_mask = _mm512_set1_epi32((1 << bits) - 1);
  }
  template <int L>
  inline __m512 lookup(__m512i idx) const {
    if (L == kPerm16) return _mm512_permutexvar_ps(idx, t0);
    if (L == kPerm32) return _mm512_permutex2var_ps(t0, idx, t1);
    return _mm512_i32gather_ps(_mm512_and_si512(idx, gather_mask), cb, 4);
  }
};

// Bytes of group g that lie inside the row (all of them except possibly in the last group).
inline __mmask16 load_mask(const Decoder& d, int64_t row_bytes, int64_t g) {
  const int64_t left = row_bytes - g * d.group_bytes;
  return left >= d.group_bytes ? d.full_load : static_cast<__mmask16>((1u << left) - 1u);
}

// GEMV index decoders. Each reads at most 16 bytes at p (the start of a group of 16 indices) and returns the
// 16 indices in the lane order given by lane_source(). Power-of-two widths avoid vpshufb: the bytes are
// broadcast by the load itself and split with shifts, leaving the shuffle port to vpermps. Their lane order
// is not the stream order (bits 4); the kernel permutes x the same way once per call, and a dot product does
// not care about the order of its terms. (8 bits: a vbroadcasti64x2 + vpsrlvq decoder measured 1.6x slower
// than vpshufb in front of the gather, 1 thread; the gather dominates there.)
enum DecodeKind { kShuffle = 0, kDword = 1, kQword = 2 };

// Index (within its group) that lane `lane` of decode kind `kind` holds.
inline int lane_source(int kind, int lane) {
  const int q = lane / 2, hi = lane & 1;
  if (kind == kQword) return q + 8 * hi;                                 // qword q: indices q and q + 8
  return lane;
}

template <int D>
struct FastDecoder {
  __m512i shifts;
  const Decoder* generic;
  explicit FastDecoder(int bits, const Decoder* g) : generic(g) {
    alignas(64) int64_t s64[8];
    alignas(64) int32_t s32[16];
    for (int q = 0; q < 8; ++q) s64[q] = 4 * q;
    for (int j = 0; j < 16; ++j) s32[j] = j * bits;
    shifts = D == kDword ? _mm512_load_si512(s32) : _mm512_load_si512(s64);
  }
  inline __m512i operator()(const uint8_t* p) const {
    if (D == kDword) {
      int32_t v;
      std::memcpy(&v, p, 4);
      return _mm512_srlv_epi32(_mm512_set1_epi32(v), shifts);  // stray high bits: see Table
    } else if (D == kQword) {
      long long v;
      std::memcpy(&v, p, 8);
      return _mm512_srlv_epi64(_mm512_set1_epi64(v), shifts);
    } else {
      return generic->indices_unmasked(p, 0);
    }
  }
};

template <int M, int L, int D>
void gemv_rows(const CodebookWeight& w, const float* x, int64_t ldx, const float* bias, float* y, int64_t ldy,
               int64_t row_begin, int64_t row_end) {
  constexpr int U = M == 1 ? 4 : (M == 2 ? 2 : 1);  // independent FMA chains per sample
  const Decoder d(w.bits);
  const FastDecoder<D> dec(w.bits, &d);
  const int64_t groups = (w.cols + 15) / 16, full = w.cols / 16, gb = d.group_bytes;
  // x in decode lane order, zero-padded to whole groups: plain loads, padding lanes multiply 0.
  std::vector<float> xbuf(static_cast<size_t>(M * groups * 16));
  int src[16];
  __mmask16 tail_mask = 0;
  for (int lane = 0; lane < 16; ++lane) {
    src[lane] = lane_source(D, lane);
    if (full * 16 + src[lane] < w.cols) tail_mask = static_cast<__mmask16>(tail_mask | (1u << lane));
  }
  for (int j = 0; j < M; ++j)
    for (int64_t g = 0; g < groups; ++g)
      for (int lane = 0; lane < 16; ++lane) {
        const int64_t k = 16 * g + src[lane];
        xbuf[(j * groups + g) * 16 + lane] = k < w.cols ? x[j * ldx + k] : 0.0f;
      }
  const float* xb = xbuf.data();
  const int64_t xld = groups * 16;
  // Several samples: x is read once per row, m * 64 bytes per group, which streams from L2 once m * K floats
  // outgrow L1. Blocking K (kChunk groups, 24 KiB of x at m = 8) over a block of kRows rows keeps it in L1
  // (measured before blocking, 1 thread, 4096x4096 4-bit: batch 8 took 8.7x the batch-1 time).
  constexpr int64_t kChunk = M <= 2 ? (int64_t{1} << 40) : 48;
  constexpr int64_t kRows = 32;
  Table t;
  alignas(64) uint8_t spill[32];
  float part[kRows][M];
  for (int64_t rb = row_begin; rb < row_end; rb += kRows) {
    const int64_t re = std::min(row_end, rb + kRows);
    for (int64_t r = 0; r < re - rb; ++r)
      for (int j = 0; j < M; ++j) part[r][j] = 0.0f;
    for (int64_t c0 = 0; c0 < groups; c0 += kChunk) {
      const int64_t c1 = std::min(groups, c0 + kChunk);
      for (int64_t o = rb; o < re; ++o) {
        const uint8_t* row = w.packed + o * w.row_bytes;
        t.load<L>(w.codebook + o * w.cb_stride, w.bits);
        __m512 acc[U][M];
        for (int u = 0; u < U; ++u)
          for (int j = 0; j < M; ++j) acc[u][j] = _mm512_setzero_ps();
        // Full groups from which 16 bytes can be read without leaving the buffer.
        const int64_t left = (w.rows - o) * w.row_bytes - 16;
        const int64_t safe = std::min(c1, left < 0 ? 0 : std::min<int64_t>(full, left / gb + 1));
        int64_t g = c0;
        for (; g + U <= safe; g += U) {
#pragma GCC unroll 4
          for (int u = 0; u < U; ++u) {
            const __m512 wv = t.lookup<L>(dec(row + (g + u) * gb));
#pragma GCC unroll 8
            for (int j = 0; j < M; ++j)
              acc[u][j] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(xb + j * xld + 16 * (g + u)), acc[u][j]);
          }
        }
        for (; g < c1; ++g) {  // the last few groups of the buffer: decode from a zero-padded copy
          const uint8_t* p = row + g * gb;
          if (g >= safe) {
            std::memset(spill, 0, sizeof(spill));
            std::memcpy(spill, p, static_cast<size_t>(std::min<int64_t>(16, w.row_bytes - g * gb)));
            p = spill;
          }
          __m512 wv = t.lookup<L>(dec(p));
          if (g == full) wv = _mm512_maskz_mov_ps(tail_mask, wv);  // padding indices contribute exactly nothing
#pragma GCC unroll 8
          for (int j = 0; j < M; ++j)
            acc[0][j] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(xb + j * xld + 16 * g), acc[0][j]);
        }
        for (int j = 0; j < M; ++j) {
          __m512 sum = acc[0][j];
          for (int u = 1; u < U; ++u) sum = _mm512_add_ps(sum, acc[u][j]);
          part[o - rb][j] += _mm512_reduce_add_ps(sum);
        }
      }
    }
    for (int64_t o = rb; o < re; ++o) {
      const float b = bias ? bias[o] : 0.0f;
      for (int j = 0; j < M; ++j) y[j * ldy + o] = part[o - rb][j] + b;
    }
  }
}

// 4-bit GEMV at batch <= 2, 128 indices per 64-byte load: dword lane j of the load holds indices 8j .. 8j+7,
// and a right shift by 4n leaves index 8j+n in the low nibble, the only bits vpermps reads. Per 16 weights that
// is 7/8 of a shift, one vpermps and one FMA, against a broadcast, a variable shift, a vpermps and an FMA for
// the 8-byte groups of gemv_rows. (Software prefetch of the index stream, 1 KiB to L1 or 4 KiB to L2 ahead, was
// measured slower; one core streams ~13-14 GB/s of indices either way, which bounds batch 1.)
// x is permuted once per call into that order; indices past the last whole block are summed in scalar code.
template <int M>
void gemv4_rows(const CodebookWeight& w, const float* x, int64_t ldx, const float* bias, float* y, int64_t ldy,
                int64_t row_begin, int64_t row_end) {
  constexpr int U = M == 1 ? 4 : 2;  // independent FMA chains per sample
  const int64_t blocks = w.cols / 128, done = blocks * 128;
  std::vector<float> xbuf(static_cast<size_t>(M * done));
  for (int j = 0; j < M; ++j)
    for (int64_t b = 0; b < blocks; ++b)
      for (int n = 0; n < 8; ++n)
        for (int lane = 0; lane < 16; ++lane)
          xbuf[j * done + (b * 8 + n) * 16 + lane] = x[j * ldx + 128 * b + 8 * lane + n];
  Table t;
  for (int64_t o = row_begin; o < row_end; ++o) {
    const uint8_t* row = w.packed + o * w.row_bytes;
    const float* cb = w.codebook + o * w.cb_stride;
    t.load<kPerm16>(cb, 4);
    __m512 acc[U][M];
    for (int u = 0; u < U; ++u)
      for (int j = 0; j < M; ++j) acc[u][j] = _mm512_setzero_ps();
    for (int64_t b = 0; b < blocks; ++b) {
      const __m512i v = _mm512_loadu_si512(row + 64 * b);
      // Index 8j+n into the low nibble of dword j: bit shifts run on port 0 beside the FMAs, byte shifts within
      // 128-bit lanes (vpsrldq; the low byte of dword j stays in its lane) on port 5 beside vpermps, so the
      // seven shifts are split 4 / 3 between the two ports (measured bound before: port 0, FMA + 7 shifts).
      const __m512i v4 = _mm512_srli_epi32(v, 4);
      const __m512i idx[8] = {v, v4, _mm512_bsrli_epi128(v, 1), _mm512_bsrli_epi128(v4, 1),
                              _mm512_srli_epi32(v, 16), _mm512_srli_epi32(v, 20), _mm512_bsrli_epi128(v, 3),
                              _mm512_srli_epi32(v, 28)};
      const float* xs = xbuf.data() + b * 128;
#pragma GCC unroll 8
      for (int n = 0; n < 8; ++n) {
        const __m512 wv = t.lookup<kPerm16>(idx[n]);
#pragma GCC unroll 2
        for (int j = 0; j < M; ++j)
          acc[n % U][j] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(xs + j * done + 16 * n), acc[n % U][j]);
      }
    }
    for (int j = 0; j < M; ++j) {
      __m512 sum = acc[0][j];
      for (int u = 1; u < U; ++u) sum = _mm512_add_ps(sum, acc[u][j]);
      float s = _mm512_reduce_add_ps(sum);
      for (int64_t k = done; k < w.cols; ++k) s += cb[(row[k >> 1] >> (4 * (k & 1))) & 15] * x[j * ldx + k];
      y[j * ldy + o] = s + (bias ? bias[o] : 0.0f);
    }
  }
}

template <int L, int D>
void gemv_lut(const CodebookWeight& w, const float* x, int64_t ldx, int64_t m, const float* bias, float* y,
              int64_t ldy, int64_t r0, int64_t r1) {
  switch (m) {
    case 1: return gemv_rows<1, L, D>(w, x, ldx, bias, y, ldy, r0, r1);
    case 2: return gemv_rows<2, L, D>(w, x, ldx, bias, y, ldy, r0, r1);
    case 3: return gemv_rows<3, L, D>(w, x, ldx, bias, y, ldy, r0, r1);
    case 4: return gemv_rows<4, L, D>(w, x, ldx, bias, y, ldy, r0, r1);
    case 5: return gemv_rows<5, L, D>(w, x, ldx, bias, y, ldy, r0, r1);
    case 6: return gemv_rows<6, L, D>(w, x, ldx, bias, y, ldy, r0, r1);
    case 7: return gemv_rows<7, L, D>(w, x, ldx, bias, y, ldy, r0, r1);
    default: return gemv_rows<8, L, D>(w, x, ldx, bias, y, ldy, r0, r1);
  }
}

template <int L>
void dequant_rows(const CodebookWeight& w, int64_t row_begin, int64_t row_end, float* out) {
  const Decoder d(w.bits);
  const int64_t groups = (w.cols + 15) / 16;
  Table t;
  for (int64_t o = row_begin; o < row_end; ++o) {
    const uint8_t* row = w.packed + o * w.row_bytes;
    float* dst = out + (o - row_begin) * w.cols;
    t.load<L>(w.codebook + o * w.cb_stride, w.bits);
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t left = w.cols - 16 * g;
      const __mmask16 store = left >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
      _mm512_mask_storeu_ps(dst + 16 * g, store, t.lookup<L>(d.indices(row, g, load_mask(d, w.row_bytes, g))));
    }
  }
}

inline int lut_for(int bits) { return bits <= 4 ? kPerm16 : (bits == 5 ? kPerm32 : kGather); }

}  // namespace

void codebook_gemv_avx512(const CodebookWeight& w, const float* x, int64_t ldx, int64_t m, const float* bias,
                          float* y, int64_t ldy, int64_t row_begin, int64_t row_end) {
  if (w.bits == 8 && w.cb_stride == 0 && codebook_has_vbmi())
    return codebook_gemv8_avx512vbmi(w, x, ldx, m, bias, y, ldy, row_begin, row_end);
  switch (w.bits) {
    case 1:
    case 2: return gemv_lut<kPerm16, kDword>(w, x, ldx, m, bias, y, ldy, row_begin, row_end);
    case 3: return gemv_lut<kPerm16, kShuffle>(w, x, ldx, m, bias, y, ldy, row_begin, row_end);
    case 4:
      if (m == 1 && w.cols >= 128) return gemv4_rows<1>(w, x, ldx, bias, y, ldy, row_begin, row_end);
      if (m == 2 && w.cols >= 128) return gemv4_rows<2>(w, x, ldx, bias, y, ldy, row_begin, row_end);
      return gemv_lut<kPerm16, kQword>(w, x, ldx, m, bias, y, ldy, row_begin, row_end);
    case 5: return gemv_lut<kPerm32, kShuffle>(w, x, ldx, m, bias, y, ldy, row_begin, row_end);
    case 8: return gemv_lut<kGather, kShuffle>(w, x, ldx, m, bias, y, ldy, row_begin, row_end);
    default: return gemv_lut<kGather, kShuffle>(w, x, ldx, m, bias, y, ldy, row_begin, row_end);
  }
}

void codebook_dequant_avx512(const CodebookWeight& w, int64_t row_begin, int64_t row_end, float* out) {
  switch (lut_for(w.bits)) {
    case kPerm16: return dequant_rows<kPerm16>(w, row_begin, row_end, out);
    case kPerm32: return dequant_rows<kPerm32>(w, row_begin, row_end, out);
    default: return dequant_rows<kGather>(w, row_begin, row_end, out);
  }
}

#else  // not an x86 GCC/Clang build: the dispatcher never selects these.
void codebook_gemv_avx512(const CodebookWeight& w, const float* x, int64_t ldx, int64_t m, const float* bias,
                          float* y, int64_t ldy, int64_t row_begin, int64_t row_end) {
  codebook_gemv_portable(w, x, ldx, m, bias, y, ldy, row_begin, row_end);
}
void codebook_dequant_avx512(const CodebookWeight& w, int64_t row_begin, int64_t row_end, float* out) {
  codebook_dequant_portable(w, row_begin, row_end, out);
}
#endif

}  // namespace sparsecomp::cpu

#ifdef SPARSECOMP_HAVE_AVX512_TU
#pragma GCC pop_options
#endif
