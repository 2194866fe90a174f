// AVX2 + FMA fused depthwise -> pointwise tile: the shared tile code (dwpw_impl.h) on 8-float vectors. Register
// tiles (16 registers): NCHW pointwise 4 output channels x 3 vectors of pixels, channels_last 4 pixels x 3
// vectors of output channels; tails use vmaskmovps.
#include <immintrin.h>

#include "dwpw.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define SPARSECOMP_HAVE_AVX2_TU 1
#endif

#ifdef SPARSECOMP_HAVE_AVX2_TU
#include "dwpw_impl.h"
#endif

namespace sparsecomp::cpu {

#ifdef SPARSECOMP_HAVE_AVX2_TU
namespace {

alignas(64) const int32_t kLaneMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

struct Avx2Traits {
  using T = float;
  using V = __m256;
  using M = __m256i;
  static constexpr int W = 8, kRowsNchw = 4, kVecsNchw = 3, kRowsCl = 4, kVecsCl = 3, kDwVecs = 4;
  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float v) { return _mm256_set1_ps(v); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static V min(V a, V b) { return _mm256_min_ps(a, b); }
  static M mask(int64_t n) {
    const int64_t lanes = n < 0 ? 0 : n > 8 ? 8 : n;
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kLaneMask + 8 - lanes));
  }
  static V load_mask(const float* p, M m) { return _mm256_maskload_ps(p, m); }
  static void store_mask(float* p, V v, M m) { _mm256_maskstore_ps(p, m, v); }
  static void deinterleave(const float* src, float* even, float* odd) {
    const V a = _mm256_loadu_ps(src), b = _mm256_loadu_ps(src + 8);
    // shuffle_ps works per 128-bit lane: [a0 a2 b0 b2 | a4 a6 b4 b6]; the 64-bit permute restores the order.
    const V e = _mm256_shuffle_ps(a, b, 0x88), o = _mm256_shuffle_ps(a, b, 0xDD);
    _mm256_storeu_ps(even, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), 0xD8)));
    _mm256_storeu_ps(odd, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), 0xD8)));
  }
};

// dst[c][j] = src[j][c] for an 8 x 8 square: unpack pairs, shuffle quads, swap 128-bit halves.
void transpose8x8(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m256 r[8], t[8], u[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * lds);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * ldd, _mm256_permute2f128_ps(u[i], u[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * ldd, _mm256_permute2f128_ps(u[i], u[i + 4], 0x31));
  }
}

}  // namespace

void dwpw_pack_pw_cl_avx2(const DwpwShape& s, const float* pw, float* packed, int64_t b0, int64_t b1) {
  pack_pw_cl<float>(s, pw, packed, b0, b1, &transpose8x8);
}

void dwpw_tile_avx2(const DwpwShape& s, const DwpwPacked<float>& p, const float* x_img, float* out_img, int64_t oy0,
                    int64_t oy1, int64_t o0, int64_t o1, float* scratch) {
  dwpw_tile_impl<Avx2Traits>(s, p, x_img, out_img, oy0, oy1, o0, o1, scratch);
}

#else  // not an x86 GCC/Clang build: the dispatcher never selects this.
void dwpw_pack_pw_cl_avx2(const DwpwShape& s, const float* pw, float* packed, int64_t b0, int64_t b1) {
  dwpw_pack_pw_cl_portable(s, pw, packed, b0, b1);
}
void dwpw_tile_avx2(const DwpwShape& s, const DwpwPacked<float>& p, const float* x_img, float* out_img, int64_t oy0,
                    int64_t oy1, int64_t o0, int64_t o1, float* scratch) {
  dwpw_tile_portable(s, p, x_img, out_img, oy0, oy1, o0, o1, scratch);
}
#endif

}  // namespace sparsecomp::cpu

#ifdef SPARSECOMP_HAVE_AVX2_TU
#pragma GCC pop_options
#endif
