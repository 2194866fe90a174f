// AVX-512 fused depthwise -> pointwise tile: the shared tile code (dwpw_impl.h) on 16-float vectors. Register
// tiles: NCHW pointwise 8 output channels x 3 vectors of pixels, channels_last 6 pixels x 4 vectors of output
// channels (24 accumulators of 32 registers); tails use masked loads and stores.
#include <immintrin.h>

#include "dwpw.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")
#define SPARSECOMP_HAVE_AVX512_TU 1
#endif

#ifdef SPARSECOMP_HAVE_AVX512_TU
// GCC 12 reports the _mm512_undefined_ps() inside _mm512_max_ps/_mm512_min_ps as maybe-uninitialized.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "dwpw_impl.h"
#endif

namespace sparsecomp::cpu {

#ifdef SPARSECOMP_HAVE_AVX512_TU
namespace {

struct Avx512Traits {
  using T = float;
  using V = __m512;
  using M = __mmask16;
  static constexpr int W = 16, kRowsNchw = 8, kVecsNchw = 3, kRowsCl = 6, kVecsCl = 4, kDwVecs = 4;
  static V zero() { return _mm512_setzero_ps(); }
  static V set1(float v) { return _mm512_set1_ps(v); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static V min(V a, V b) { return _mm512_min_ps(a, b); }
  static M mask(int64_t n) {
    return n >= 16 ? static_cast<M>(0xFFFF) : n <= 0 ? static_cast<M>(0) : static_cast<M>((1u << n) - 1u);
  }
  static V load_mask(const float* p, M m) { return _mm512_maskz_loadu_ps(m, p); }
  static void store_mask(float* p, V v, M m) { _mm512_mask_storeu_ps(p, m, v); }
  static void deinterleave(const float* src, float* even, float* odd) {
    const V a = _mm512_loadu_ps(src), b = _mm512_loadu_ps(src + 16);
    const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    _mm512_storeu_ps(even, _mm512_permutex2var_ps(a, ie, b));
    _mm512_storeu_ps(odd, _mm512_permutex2var_ps(a, io, b));
  }
};

}  // namespace

void dwpw_tile_avx512(const DwpwShape& s, const DwpwPacked<float>& p, const float* x_img, float* out_img,
                      int64_t oy0, int64_t oy1, int64_t o0, int64_t o1, float* scratch) {
  dwpw_tile_impl<Avx512Traits>(s, p, x_img, out_img, oy0, oy1, o0, o1, scratch);
}

#else  // not an x86 GCC/Clang build: the dispatcher never selects this.
void dwpw_tile_avx512(const DwpwShape& s, const DwpwPacked<float>& p, const float* x_img, float* out_img,
                      int64_t oy0, int64_t oy1, int64_t o0, int64_t o1, float* scratch) {
  dwpw_tile_portable(s, p, x_img, out_img, oy0, oy1, o0, o1, scratch);
}
#endif

}  // namespace sparsecomp::cpu

#ifdef SPARSECOMP_HAVE_AVX512_TU
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif
