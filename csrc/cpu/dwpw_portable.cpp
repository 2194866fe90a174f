// Portable fused depthwise -> pointwise tile: the shared tile code (dwpw_impl.h) on one scalar "lane", for
// float (CPUs without AVX2) and double (the float64 path that gradcheck and float64 references use).
#include "dwpw.h"
#include "dwpw_impl.h"

namespace sparsecomp::cpu {
namespace {

template <typename TT>
struct ScalarTraits {
  using T = TT;
  using V = TT;
  using M = bool;
  static constexpr int W = 1, kRowsNchw = 4, kVecsNchw = 4, kRowsCl = 4, kVecsCl = 4, kDwVecs = 4;
  static V zero() { return T(0); }
  static V set1(T v) { return v; }
  static V load(const T* p) { return *p; }
  static void store(T* p, V v) { *p = v; }
  static V fma(V a, V b, V c) { return a * b + c; }
  static V add(V a, V b) { return a + b; }
  static V mul(V a, V b) { return a * b; }
  static V max(V a, V b) { return a > b ? a : b; }  // b when either is NaN, like maxps
  static V min(V a, V b) { return a < b ? a : b; }
  static M mask(int64_t n) { return n > 0; }
  static V load_mask(const T* p, M m) { return m ? *p : T(0); }
  static void store_mask(T* p, V v, M m) {
    if (m) *p = v;
  }
  static void deinterleave(const T* src, T* even, T* odd) {
    *even = src[0];
    *odd = src[1];
  }
};

}  // namespace

void dwpw_pack_pw_cl_portable(const DwpwShape& s, const float* pw, float* packed, int64_t b0, int64_t b1) {
  pack_pw_cl<float>(s, pw, packed, b0, b1, static_cast<void (*)(const float*, int64_t, float*, int64_t)>(nullptr));
}

void dwpw_pack_pw_cl_portable(const DwpwShape& s, const double* pw, double* packed, int64_t b0, int64_t b1) {
  pack_pw_cl<double>(s, pw, packed, b0, b1, static_cast<void (*)(const double*, int64_t, double*, int64_t)>(nullptr));
}

void dwpw_tile_portable(const DwpwShape& s, const DwpwPacked<float>& p, const float* x_img, float* out_img,
                        int64_t oy0, int64_t oy1, int64_t o0, int64_t o1, float* scratch) {
  dwpw_tile_impl<ScalarTraits<float>>(s, p, x_img, out_img, oy0, oy1, o0, o1, scratch);
}

void dwpw_tile_portable(const DwpwShape& s, const DwpwPacked<double>& p, const double* x_img, double* out_img,
                        int64_t oy0, int64_t oy1, int64_t o0, int64_t o1, double* scratch) {
  dwpw_tile_impl<ScalarTraits<double>>(s, p, x_img, out_img, oy0, oy1, o0, o1, scratch);
}

}  // namespace sparsecomp::cpu
