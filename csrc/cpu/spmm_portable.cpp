// Portable kernels: any x86-64 (or other) CPU, and the float64 path used by gradcheck.
#include <algorithm>
#include <cstring>

#include "spmm.h"

namespace sparsecomp::cpu {

template <typename T>
void spmv_rows_portable(const SparseRows<T>& w, const T* x, const T* bias, T* y, int64_t row_begin, int64_t row_end) {
  for (int64_t o = row_begin; o < row_end; ++o) {
    T acc[4] = {0, 0, 0, 0};  // four chains hide the add latency
    for (int64_t t = 0; t < w.tiles; ++t) {
      const T* xs = x + t * kTileCols;
      int64_t p = w.row_ptr[o * w.tiles + t];
      const int64_t end = w.row_ptr[o * w.tiles + t + 1];
      for (; p + 4 <= end; p += 4)
        for (int u = 0; u < 4; ++u) acc[u] += w.values[p + u] * xs[w.col_idx[p + u]];
      for (; p < end; ++p) acc[0] += w.values[p] * xs[w.col_idx[p]];
    }
    y[o] = (acc[0] + acc[1]) + (acc[2] + acc[3]) + (bias ? bias[o] : T(0));
  }
}

template <typename T>
void spmm_rows_portable(const SparseRows<T>& w, const DenseTile<T>& x, const T* bias, const OutTile<T>& y,
                        int64_t row_begin, int64_t row_end) {
  T acc[kMaxTilePortable];
  const int64_t bt = x.count;
  for (int64_t o = row_begin; o < row_end; ++o) {
    std::fill(acc, acc + bt, T(0));
    for (int64_t t = 0; t < w.tiles; ++t) {
      const T* xs = x.data + t * kTileCols * x.ld;
      for (int64_t p = w.row_ptr[o * w.tiles + t]; p < w.row_ptr[o * w.tiles + t + 1]; ++p) {
        const T v = w.values[p];
        const T* xr = xs + static_cast<int64_t>(w.col_idx[p]) * x.ld;
        for (int64_t j = 0; j < bt; ++j) acc[j] += v * xr[j];
      }
    }
    const T b = bias ? bias[o] : T(0);
    T* dst = y.data + o * y.row_stride;
    for (int64_t j = 0; j < bt; ++j) dst[j * y.sample_stride] = acc[j] + b;
  }
}

template <typename T>
void pack_transposed_portable(const T* x, int64_t ld_in, int64_t bt, T* xt, int64_t ldx, int64_t col_begin,
                              int64_t col_end) {
  constexpr int64_t kBlock = 16;  // 16 columns x bt samples: reads whole cache lines, writes stay in L1
  for (int64_t k0 = col_begin; k0 < col_end; k0 += kBlock) {
    const int64_t k1 = std::min(k0 + kBlock, col_end);
    for (int64_t j = 0; j < bt; ++j) {
      const T* src = x + j * ld_in;
      for (int64_t k = k0; k < k1; ++k) xt[k * ldx + j] = src[k];
    }
    for (int64_t k = k0; k < k1; ++k)
      for (int64_t j = bt; j < ldx; ++j) xt[k * ldx + j] = T(0);
  }
}

template <typename T>
void pack_rows_portable(const T* x, int64_t ld_in, int64_t bt, T* xt, int64_t ldx, int64_t row_begin,
                        int64_t row_end) {
  for (int64_t k = row_begin; k < row_end; ++k) {
    std::copy(x + k * ld_in, x + k * ld_in + bt, xt + k * ldx);
    std::fill(xt + k * ldx + bt, xt + (k + 1) * ldx, T(0));
  }
}

namespace {
template <typename T> struct ExponentBits;
template <> struct ExponentBits<float> { using U = uint32_t; static constexpr U mask = 0x7F800000u; };
template <> struct ExponentBits<double> { using U = uint64_t; static constexpr U mask = 0x7FF0000000000000ull; };
}  // namespace

template <typename T>
bool all_finite_portable(const T* x, int64_t n) {
  using U = typename ExponentBits<T>::U;
  constexpr U mask = ExponentBits<T>::mask;
  U any_special = 0;
  for (int64_t i = 0; i < n; ++i) {
    U bits;
    std::memcpy(&bits, x + i, sizeof(U));
    any_special |= static_cast<U>((bits & mask) == mask);
  }
  return any_special == 0;
}

template <typename T>
void spmm_t_rows_portable(const SparseRows<T>& w, const T* grad_yt, int64_t batch, T* grad_xt, int64_t row_begin,
                          int64_t row_end) {
  for (int64_t o = row_begin; o < row_end; ++o) {
    const T* g = grad_yt + o * batch;
    for (int64_t t = 0; t < w.tiles; ++t) {
      T* gx = grad_xt + t * kTileCols * batch;
      for (int64_t p = w.row_ptr[o * w.tiles + t]; p < w.row_ptr[o * w.tiles + t + 1]; ++p) {
        const T v = w.values[p];
        T* dst = gx + static_cast<int64_t>(w.col_idx[p]) * batch;
        for (int64_t b = 0; b < batch; ++b) dst[b] += v * g[b];
      }
    }
  }
}

template <typename T>
void sddmm_rows_portable(const SparseRows<T>& w, const T* grad_yt, const T* xt, int64_t batch, T* grad_values,
                         int64_t row_begin, int64_t row_end) {
  for (int64_t o = row_begin; o < row_end; ++o) {
    const T* g = grad_yt + o * batch;
    for (int64_t t = 0; t < w.tiles; ++t) {
      const T* xs = xt + t * kTileCols * batch;
      for (int64_t p = w.row_ptr[o * w.tiles + t]; p < w.row_ptr[o * w.tiles + t + 1]; ++p) {
        const T* xr = xs + static_cast<int64_t>(w.col_idx[p]) * batch;
        T acc = 0;
        for (int64_t b = 0; b < batch; ++b) acc += g[b] * xr[b];
        grad_values[p] = acc;
      }
    }
  }
}

#define SPARSECOMP_INSTANTIATE(T)                                                                                 \
  template void spmv_rows_portable<T>(const SparseRows<T>&, const T*, const T*, T*, int64_t, int64_t);           \
  template void spmm_rows_portable<T>(const SparseRows<T>&, const DenseTile<T>&, const T*, const OutTile<T>&,     \
                                      int64_t, int64_t);                                                          \
  template void pack_transposed_portable<T>(const T*, int64_t, int64_t, T*, int64_t, int64_t, int64_t);       \
  template void pack_rows_portable<T>(const T*, int64_t, int64_t, T*, int64_t, int64_t, int64_t);             \
  template bool all_finite_portable<T>(const T*, int64_t);                                                     \
  template void spmm_t_rows_portable<T>(const SparseRows<T>&, const T*, int64_t, T*, int64_t, int64_t);          \
  template void sddmm_rows_portable<T>(const SparseRows<T>&, const T*, const T*, int64_t, T*, int64_t, int64_t);
SPARSECOMP_INSTANTIATE(float)
SPARSECOMP_INSTANTIATE(double)
#undef SPARSECOMP_INSTANTIATE

}  // namespace sparsecomp::cpu
