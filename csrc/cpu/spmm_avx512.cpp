// AVX-512 kernels (F+BW+VL+DQ). Only called when cpu_features.cpp detected these extensions; the target
// pragma confines the ISA to this file, which includes no templates shared with the rest of the library.
#include <immintrin.h>

#include "spmm.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,bmi2")
#define SPARSECOMP_HAVE_AVX512_TU 1
#endif

namespace sparsecomp::cpu {

#ifdef SPARSECOMP_HAVE_AVX512_TU
namespace {

// sum_p vals[p] * x[idx[p]] over n nonzeros. 8-wide gathers: on the Xeons measured here (microcode with
// the gather data-sampling fix) two ymm gathers in flight beat zmm gathers by ~15%.
inline float gather_dot(const float* vals, const uint16_t* idx, int64_t n, const float* x) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t p = 0;
  for (; p + 16 <= n; p += 16) {
    __m256i i0 = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(idx + p)));
    __m256i i1 = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(idx + p + 8)));
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(vals + p), _mm256_i32gather_ps(x, i0, 4), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(vals + p + 8), _mm256_i32gather_ps(x, i1, 4), acc1);
  }
  for (; p < n; p += 8) {  // residue: masked loads never touch memory past the row
    const __mmask8 m = n - p >= 8 ? __mmask8(0xFF) : static_cast<__mmask8>((1u << (n - p)) - 1u);
    __m256i i0 = _mm256_cvtepu16_epi32(_mm_maskz_loadu_epi16(m, idx + p));
    __m256 g = _mm256_mmask_i32gather_ps(_mm256_setzero_ps(), m, i0, x, 4);
    acc1 = _mm256_fmadd_ps(_mm256_maskz_loadu_ps(m, vals + p), g, acc1);
  }
  __m256 s = _mm256_add_ps(acc0, acc1);
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  return _mm_cvtss_f32(h);
}

// acc[u][i] += vals[p] * xt[idx[p]][16 i ..] with U independent chains over the nonzeros.
template <int V, int U>
inline void axpy_rows(const float* vals, const uint16_t* idx, int64_t n, const float* xs, int64_t ldx,
                      __m512 (&acc)[U][V]) {
  // (A software prefetch of the xt rows 16 nonzeros ahead was measured here: no gain, up to 15% loss.)
  int64_t p = 0;
  for (; p + U <= n; p += U) {
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) {
      const __m512 v = _mm512_set1_ps(vals[p + u]);
      const float* xr = xs + static_cast<int64_t>(idx[p + u]) * ldx;
#pragma GCC unroll 4
      for (int i = 0; i < V; ++i) acc[u][i] = _mm512_fmadd_ps(v, _mm512_loadu_ps(xr + 16 * i), acc[u][i]);
    }
  }
  for (; p < n; ++p) {
    const __m512 v = _mm512_set1_ps(vals[p]);
    const float* xr = xs + static_cast<int64_t>(idx[p]) * ldx;
#pragma GCC unroll 4
    for (int i = 0; i < V; ++i) acc[0][i] = _mm512_fmadd_ps(v, _mm512_loadu_ps(xr + 16 * i), acc[0][i]);
  }
}

template <int V>
void spmm_tile(const SparseRows<float>& w, const DenseTile<float>& x, const float* bias, const OutTile<float>& y,
               int64_t row_begin, int64_t row_end) {
  constexpr int U = V == 1 ? 8 : (V == 2 ? 4 : 2);  // about eight FMA chains in flight
  alignas(64) float out[16 * V];
  const int64_t bt = x.count;
  for (int64_t o = row_begin; o < row_end; ++o) {
    __m512 acc[U][V];
    for (int u = 0; u < U; ++u)
      for (int i = 0; i < V; ++i) acc[u][i] = _mm512_setzero_ps();
    for (int64_t t = 0; t < w.tiles; ++t) {
      const int64_t begin = w.row_ptr[o * w.tiles + t];
      const int64_t end = w.row_ptr[o * w.tiles + t + 1];
      axpy_rows<V, U>(w.values + begin, w.col_idx + begin, end - begin, x.data + t * kTileCols * x.ld, x.ld, acc);
    }
    const __m512 b = _mm512_set1_ps(bias ? bias[o] : 0.0f);
    float* dst = y.data + o * y.row_stride;
    for (int i = 0; i < V; ++i) {
      __m512 s = acc[0][i];
      for (int u = 1; u < U; ++u) s = _mm512_add_ps(s, acc[u][i]);
      s = _mm512_add_ps(s, b);
      if (y.sample_stride == 1) {  // samples contiguous: (masked) vector store
        const int64_t left = bt - 16 * i;
        if (left <= 0) break;
        const __mmask16 m = left >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
        _mm512_mask_storeu_ps(dst + 16 * i, m, s);
      } else {
        _mm512_store_ps(out + 16 * i, s);
      }
    }
    if (y.sample_stride != 1)
      for (int64_t j = 0; j < bt; ++j) dst[j * y.sample_stride] = out[j];
  }
}

}  // namespace

void spmv_rows_avx512(const SparseRows<float>& w, const float* x, const float* bias, float* y, int64_t row_begin,
                      int64_t row_end) {
  for (int64_t o = row_begin; o < row_end; ++o) {
    float acc = 0.0f;
    for (int64_t t = 0; t < w.tiles; ++t) {
      const int64_t begin = w.row_ptr[o * w.tiles + t];
      const int64_t end = w.row_ptr[o * w.tiles + t + 1];
      acc += gather_dot(w.values + begin, w.col_idx + begin, end - begin, x + t * kTileCols);
    }
    y[o] = acc + (bias ? bias[o] : 0.0f);
  }
}

void spmm_rows_avx512(const SparseRows<float>& w, const DenseTile<float>& x, const float* bias,
                      const OutTile<float>& y, int64_t row_begin, int64_t row_end) {
  if (x.width <= 8) return spmm_rows_avx2(w, x, bias, y, row_begin, row_end);  // half vectors
  switch (x.width / 16) {
    case 1: return spmm_tile<1>(w, x, bias, y, row_begin, row_end);
    case 2: return spmm_tile<2>(w, x, bias, y, row_begin, row_end);
    case 3: return spmm_tile<3>(w, x, bias, y, row_begin, row_end);
    default: return spmm_tile<4>(w, x, bias, y, row_begin, row_end);
  }
}

#else  // not an x86 GCC/Clang build: the dispatcher never selects these.
void spmv_rows_avx512(const SparseRows<float>& w, const float* x, const float* bias, float* y, int64_t row_begin,
                      int64_t row_end) {
  spmv_rows_portable<float>(w, x, bias, y, row_begin, row_end);
}
void spmm_rows_avx512(const SparseRows<float>& w, const DenseTile<float>& x, const float* bias,
                      const OutTile<float>& y, int64_t row_begin, int64_t row_end) {
  spmm_rows_portable<float>(w, x, bias, y, row_begin, row_end);
}
#endif

}  // namespace sparsecomp::cpu

#ifdef SPARSECOMP_HAVE_AVX512_TU
#pragma GCC pop_options
#endif
