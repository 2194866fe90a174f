// The fused depthwise -> pointwise tile (see dwpw.h), written once over a vector "traits" type that each kernel
// file supplies (AVX-512: 16 floats, AVX2: 8, portable: 1 scalar of float or double). Everything here has
// internal linkage: each file compiles its own copy under its own target pragma, and no copy built for a wider
// ISA can be picked by the linker for a narrower path.
//
// Traits provide: T (element), V (vector), M (lane mask), W (lanes), zero/set1/load/store/fma/add/mul,
// max(a, b)/min(a, b) returning b when either is NaN (x86 maxps/minps semantics: NaN in b propagates),
// mask(n) (first n lanes, n >= W: all), load_mask/store_mask, deinterleave(src, even, odd) (2 W elements
// -> their W even- and W odd-indexed ones), and the register-tile sizes:
//   kRowsNchw x kVecsNchw: NCHW micro-GEMM, output channels (broadcast weights) x pixel vectors; kRowsNchw
//                          divides kDwpwRowBlock (o0 is a multiple of it);
//   kRowsCl x kVecsCl:     channels_last micro-GEMM, pixels (broadcast activations) x output-channel vectors;
//   kDwVecs:               NCHW depthwise, vectors of one output row computed together (one broadcast per tap).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "dwpw.h"

namespace sparsecomp::cpu {
namespace {

template <class Tr>
inline typename Tr::V dwpw_activate(typename Tr::V v, DwpwAct act) {
  using V = typename Tr::V;
  const V zero = Tr::zero();
  switch (act) {
    case DwpwAct::Relu: return Tr::max(zero, v);
    case DwpwAct::Relu6: return Tr::min(Tr::set1(6), Tr::max(zero, v));
    case DwpwAct::Hardswish: {  // torch: x * relu6(x + 3) / 6
      const V r = Tr::min(Tr::set1(6), Tr::max(zero, Tr::add(v, Tr::set1(3))));
      return Tr::mul(Tr::mul(v, r), Tr::set1(static_cast<typename Tr::T>(1) / 6));
    }
    default: return v;
  }
}

// ------------------------------------------------------------------------------------------ NCHW depthwise
// dst[j] = row[j - pad] inside the row, 0 outside, for j < len. Plain loops, not memcpy/fill: the rows are
// short (7 floats at 7x7) and a library call per row costs more than the copy.
template <typename T>
inline void padded_row(const T* row, int64_t w, int64_t pad, T* dst, int64_t len) {
  const int64_t left = std::min(pad, len);
  const int64_t n = std::max<int64_t>(0, std::min(w, len - pad));
  for (int64_t j = 0; j < left; ++j) dst[j] = T(0);
  for (int64_t j = 0; j < n; ++j) dst[left + j] = row[j];
  for (int64_t j = left + n; j < len; ++j) dst[j] = T(0);
}

// even[j] = src[2j], odd[j] = src[2j + 1] for j < len (len a multiple of W; src holds 2 len elements).
template <class Tr>
inline void split_phases2(const typename Tr::T* src, typename Tr::T* even, typename Tr::T* odd, int64_t len) {
  for (int64_t j = 0; j < len; j += Tr::W) Tr::deinterleave(src + 2 * j, even + j, odd + j);
}

// NV vectors of one output row: taps in (ky, kx) order, then scale/shift and the mid activation.
// col_off[kx]: offset of tap kx in a phase-split row ((kx % sw) * lp + kx / sw), computed once per call
// (integer division in the tap loop was measured to cost more than the FMAs).
template <class Tr, int NV>
inline void dw_row_chunk(const typename Tr::T* rows, int64_t row_stride, const int64_t* col_off, int64_t k,
                         int64_t ky0, int64_t ky1, const typename Tr::T* wk, typename Tr::V scale,
                         typename Tr::V shift, DwpwAct act, typename Tr::T* dst) {
  using V = typename Tr::V;
  V acc[NV];
  for (int v = 0; v < NV; ++v) acc[v] = Tr::zero();
  for (int64_t ky = ky0; ky < ky1; ++ky) {
    const typename Tr::T* base = rows + ky * row_stride;
    for (int64_t kx = 0; kx < k; ++kx) {
      const V wv = Tr::set1(wk[ky * k + kx]);
      const typename Tr::T* src = base + col_off[kx];
      for (int v = 0; v < NV; ++v) acc[v] = Tr::fma(wv, Tr::load(src + v * Tr::W), acc[v]);
    }
  }
  for (int v = 0; v < NV; ++v) Tr::store(dst + v * Tr::W, dwpw_activate<Tr>(Tr::fma(acc[v], scale, shift), act));
}

// mid[c][(oy - oy0) * ow + ox] for every channel. The input rows a channel's tile reads are first copied
// zero-padded and split by column phase, so that every tap of a vector of outputs is one contiguous load
// (stride 2 included) and borders need no test in the inner loop.
template <class Tr>
void dw_nchw(const DwpwShape& s, const DwpwPacked<typename Tr::T>& p, const typename Tr::T* x_img, int64_t oy0,
             int64_t oy1, typename Tr::T* mid, typename Tr::T* phases, typename Tr::T* padded) {
  using T = typename Tr::T;
  constexpr int W = Tr::W, DV = Tr::kDwVecs;
  const int64_t rows = oy1 - oy0, P = rows * s.ow, ld = s.mid_ld(rows), lp = s.phase_len();
  const int64_t n_in = s.in_rows(rows), iy_first = oy0 * s.sh - s.ph, row_stride = s.sw * lp;
  const int64_t kk = s.k * s.k;
  int64_t col_off[7];  // k <= 7
  for (int64_t kx = 0; kx < s.k; ++kx) col_off[kx] = (kx % s.sw) * lp + kx / s.sw;
  for (int64_t c = 0; c < s.c; ++c) {
    const T* xc = x_img + c * s.h * s.w;
    for (int64_t r = 0; r < n_in; ++r) {
      const int64_t iy = iy_first + r;
      if (iy < 0 || iy >= s.h) continue;  // taps on padding rows are skipped below
      T* dst = phases + r * row_stride;
      if (s.sw == 1) {
        padded_row(xc + iy * s.w, s.w, s.pw, dst, lp);
      } else {  // stride 2 (the checks allow 1 and 2)
        padded_row(xc + iy * s.w, s.w, s.pw, padded, 2 * lp);
        split_phases2<Tr>(padded, dst, dst + lp, lp);
      }
    }
    const T* wk = p.dw + c * kk;
    const typename Tr::V scale = Tr::set1(p.scale[c]), shift = Tr::set1(p.shift[c]);
    T* mc = mid + c * ld;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t top = (oy0 + r) * s.sh - s.ph;  // input row of ky = 0
      const int64_t ky0 = std::max<int64_t>(0, -top), ky1 = std::min<int64_t>(s.k, s.h - top);
      const T* rbase = phases + r * s.sh * row_stride;
      // Vector stores may spill past the row into the next one, which is written after (or into the slack).
      for (int64_t j0 = 0; j0 < s.ow; j0 += DV * W) {
        const int64_t nv = std::min<int64_t>(DV, (s.ow - j0 + W - 1) / W);
        const T* src = rbase + j0;
        T* dst = mc + r * s.ow + j0;
        switch (nv) {
          case 1: dw_row_chunk<Tr, 1>(src, row_stride, col_off, s.k, ky0, ky1, wk, scale, shift, s.mid_act, dst); break;
          case 2: dw_row_chunk<Tr, 2>(src, row_stride, col_off, s.k, ky0, ky1, wk, scale, shift, s.mid_act, dst); break;
          case 3: dw_row_chunk<Tr, 3>(src, row_stride, col_off, s.k, ky0, ky1, wk, scale, shift, s.mid_act, dst); break;
          default: dw_row_chunk<Tr, DV>(src, row_stride, col_off, s.k, ky0, ky1, wk, scale, shift, s.mid_act, dst);
        }
      }
    }
    // Pixels past the tile that the GEMM's last vector reads: zero (the outputs there are masked off, but
    // uninitialized lanes could hold denormals or NaN and slow the FMAs down).
    std::fill(mc + P, mc + dwpw_round_up(P, 16), T(0));
  }
}

// ------------------------------------------------------------------------------------------ NCHW pointwise
// out[r][j] = act(sum_c w[r][c] * mid[c][j] + bias[r]) for r < rows_valid, j < n_valid. w: rows of torch's
// [O][C] weight, read in place (MR streams along c); rows past rows_valid repeat the last valid one.
template <class Tr, int NV>
void gemm_nchw(int64_t C, const typename Tr::T* mid, int64_t ld, const typename Tr::T* w, int64_t rows_valid,
               const typename Tr::T* bias, typename Tr::T* out, int64_t out_stride, int64_t n_valid, DwpwAct act) {
  using V = typename Tr::V;
  constexpr int MR = Tr::kRowsNchw, W = Tr::W;
  const typename Tr::T* wr[MR];
  for (int r = 0; r < MR; ++r) wr[r] = w + std::min<int64_t>(r, rows_valid - 1) * C;
  V acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = Tr::zero();
  for (int64_t c = 0; c < C; ++c) {
    V b[NV];
    for (int v = 0; v < NV; ++v) b[v] = Tr::load(mid + c * ld + v * W);
    for (int r = 0; r < MR; ++r) {
      const V a = Tr::set1(wr[r][c]);
      for (int v = 0; v < NV; ++v) acc[r][v] = Tr::fma(a, b[v], acc[r][v]);
    }
  }
  const typename Tr::M last = Tr::mask(n_valid - (NV - 1) * W);
  for (int r = 0; r < MR; ++r) {
    if (r >= rows_valid) break;
    const V bv = Tr::set1(bias[r]);
    typename Tr::T* o = out + r * out_stride;
    for (int v = 0; v < NV - 1; ++v) Tr::store(o + v * W, dwpw_activate<Tr>(Tr::add(acc[r][v], bv), act));
    Tr::store_mask(o + (NV - 1) * W, dwpw_activate<Tr>(Tr::add(acc[r][NV - 1], bv), act), last);
  }
}

// out[o * out_stride + j] for o in [o0, o1), j < P, from mid [C][ld] and torch's [O][C] weight.
template <class Tr>
void pw_rows(const DwpwShape& s, const DwpwPacked<typename Tr::T>& p, const typename Tr::T* mid, int64_t ld,
             int64_t P, int64_t o0, int64_t o1, typename Tr::T* out, int64_t out_stride) {
  constexpr int W = Tr::W, NVM = Tr::kVecsNchw, MR = Tr::kRowsNchw;
  // Output channels in groups of MR (weights of the group stay in L1), all pixel chunks of the tile each.
  for (int64_t og = o0; og < o1; og += MR) {
    const int64_t rv = std::min<int64_t>(MR, o1 - og);
    const typename Tr::T* w = p.pw + og * s.c;
    const typename Tr::T* bias = p.bias + og;
    typename Tr::T* o = out + og * out_stride;
    // Pixel vectors in chunks of at most NVM, spread evenly (49 pixels: 2 + 2 vectors, not 3 + 1: a 1-vector
    // chunk loads 8 weights per 8 FMAs and is load-bound).
    const int64_t vecs = (P + W - 1) / W, chunks = (vecs + NVM - 1) / NVM;
    for (int64_t ci = 0, p0 = 0; ci < chunks; ++ci) {
      const int64_t nv = (vecs * (ci + 1)) / chunks - (vecs * ci) / chunks;
      const int64_t n = std::min(P - p0, nv * W);
      switch (nv) {
        case 1: gemm_nchw<Tr, 1>(s.c, mid + p0, ld, w, rv, bias, o + p0, out_stride, n, s.act); break;
        case 2: gemm_nchw<Tr, 2>(s.c, mid + p0, ld, w, rv, bias, o + p0, out_stride, n, s.act); break;
        default: gemm_nchw<Tr, NVM>(s.c, mid + p0, ld, w, rv, bias, o + p0, out_stride, n, s.act);
      }
      p0 += nv * W;
    }
  }
}

template <class Tr>
void pw_nchw(const DwpwShape& s, const DwpwPacked<typename Tr::T>& p, const typename Tr::T* mid, int64_t oy0,
             int64_t oy1, int64_t o0, int64_t o1, typename Tr::T* out_img) {
  const int64_t rows = oy1 - oy0;
  pw_rows<Tr>(s, p, mid, s.mid_ld(rows), rows * s.ow, o0, o1, out_img + oy0 * s.ow, s.oh * s.ow);
}

// ------------------------------------------------------------------------------- channels_last depthwise
// G neighbouring output pixels of one channel vector, kernel columns [kx0, kx1) (the others fall on padding).
template <class Tr, int G, bool Masked>
inline void dw_cl_pixels(const DwpwShape& s, const typename Tr::T* x_img, const typename Tr::T* wv_base,
                         int64_t cp, int64_t top, int64_t ky0, int64_t ky1, int64_t left, int64_t kx0, int64_t kx1,
                         typename Tr::M mask, typename Tr::V scale, typename Tr::V shift, typename Tr::T* dst) {
  using V = typename Tr::V;
  V acc[G];
  for (int g = 0; g < G; ++g) acc[g] = Tr::zero();
  const int64_t C = s.c, step = s.sw * C;
  for (int64_t ky = ky0; ky < ky1; ++ky) {
    const typename Tr::T* xrow = x_img + (top + ky) * s.w * C;
    for (int64_t kx = kx0; kx < kx1; ++kx) {
      const V wv = Tr::load(wv_base + (ky * s.k + kx) * cp);
      const typename Tr::T* src = xrow + (left + kx) * C;  // left + kx >= 0 for kx >= kx0
      for (int g = 0; g < G; ++g) {
        const V xv = Masked ? Tr::load_mask(src + g * step, mask) : Tr::load(src + g * step);
        acc[g] = Tr::fma(wv, xv, acc[g]);
      }
    }
  }
  for (int g = 0; g < G; ++g) Tr::store(dst + g * cp, dwpw_activate<Tr>(Tr::fma(acc[g], scale, shift), s.mid_act));
}

// G pixels starting at output column ox of one row, every channel vector (the pixels' channels are contiguous
// in the NHWC input, so this walks it in address order).
template <class Tr, int G>
inline void dw_cl_run(const DwpwShape& s, const DwpwPacked<typename Tr::T>& p, const typename Tr::T* xc, int64_t top,
                      int64_t ky0, int64_t ky1, int64_t ox, int64_t kx0, int64_t kx1, typename Tr::T* row) {
  constexpr int W = Tr::W;
  const int64_t cp = s.c_pad(), full = s.c / W, left = ox * s.sw - s.pw;
  typename Tr::T* dst = row + ox * cp;
  for (int64_t v = 0; v < full; ++v) {
    const int64_t c0 = v * W;
    dw_cl_pixels<Tr, G, false>(s, xc + c0, p.dw + c0, cp, top, ky0, ky1, left, kx0, kx1, Tr::mask(W),
                               Tr::load(p.scale + c0), Tr::load(p.shift + c0), dst + c0);
  }
  if (s.c % W) {  // lanes [c, c_pad) of the padded row: weights 0, inputs masked to 0
    const int64_t c0 = full * W;
    dw_cl_pixels<Tr, G, true>(s, xc + c0, p.dw + c0, cp, top, ky0, ky1, left, kx0, kx1, Tr::mask(s.c - c0),
                              Tr::load(p.scale + c0), Tr::load(p.shift + c0), dst + c0);
  }
}

// mid[(oy - oy0) * ow + ox][c] (rows of c_pad): a tap of W channels is one load of the NHWC input. Rows count
// through the batch: image oy / oh, its row oy % oh. Lanes [c, c_pad) past the last channel vector may stay
// unwritten; the GEMM reads channels < c only.
template <class Tr>
void dw_cl(const DwpwShape& s, const DwpwPacked<typename Tr::T>& p, const typename Tr::T* x_img, int64_t oy0,
           int64_t oy1, typename Tr::T* mid) {
  constexpr int G = 4;
  const int64_t cp = s.c_pad();
  // Output columns whose taps all lie inside the row: [in_lo, in_hi).
  const int64_t in_lo = std::min(s.ow, (s.pw + s.sw - 1) / s.sw);
  const int64_t in_hi = s.w - s.k + s.pw >= 0 ? std::min(s.ow, (s.w - s.k + s.pw) / s.sw + 1) : 0;
  for (int64_t oy = oy0; oy < oy1; ++oy) {
    const typename Tr::T* xc = x_img + (oy / s.oh) * s.h * s.w * s.c;
    const int64_t top = (oy % s.oh) * s.sh - s.ph;
    const int64_t ky0 = std::max<int64_t>(0, -top), ky1 = std::min<int64_t>(s.k, s.h - top);
    typename Tr::T* row = mid + (oy - oy0) * s.ow * cp;
    auto single = [&](int64_t ox) {
      const int64_t left = ox * s.sw - s.pw;
      dw_cl_run<Tr, 1>(s, p, xc, top, ky0, ky1, ox, std::max<int64_t>(0, -left), std::min<int64_t>(s.k, s.w - left),
                       row);
    };
    int64_t ox = 0;
    for (; ox < in_lo; ++ox) single(ox);
    for (; ox + G <= in_hi; ox += G) dw_cl_run<Tr, G>(s, p, xc, top, ky0, ky1, ox, 0, s.k, row);
    for (; ox < s.ow; ++ox) single(ox);
  }
}

// -------------------------------------------------------------------------------- channels_last pointwise
// out[r][j] = act(sum_c mid[r][c] * w[c][j] + bias[j]) for MR pixels and j < o_valid of NV vectors.
template <class Tr, int MR, int NV>
void gemm_cl(int64_t C, const typename Tr::T* mid, int64_t cp, const typename Tr::T* w, int64_t bw,
             const typename Tr::T* bias, typename Tr::T* out, int64_t out_stride, int64_t o_valid, DwpwAct act) {
  using V = typename Tr::V;
  constexpr int W = Tr::W;
  V acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = Tr::zero();
  for (int64_t c = 0; c < C; ++c) {
    V b[NV];
    for (int v = 0; v < NV; ++v) b[v] = Tr::load(w + c * bw + v * W);
    for (int r = 0; r < MR; ++r) {
      const V a = Tr::set1(mid[r * cp + c]);
      for (int v = 0; v < NV; ++v) acc[r][v] = Tr::fma(a, b[v], acc[r][v]);
    }
  }
  for (int v = 0; v < NV; ++v) {
    const int64_t n = o_valid - v * W;
    if (n <= 0) break;
    const V bv = Tr::load(bias + v * W);
    const typename Tr::M m = Tr::mask(n);
    for (int r = 0; r < MR; ++r) {
      const V y = dwpw_activate<Tr>(Tr::add(acc[r][v], bv), act);
      if (n >= W) Tr::store(out + r * out_stride + v * W, y);
      else Tr::store_mask(out + r * out_stride + v * W, y, m);
    }
  }
}

template <class Tr, int MR>
void gemm_cl_nv(int64_t nv, int64_t C, const typename Tr::T* mid, int64_t cp, const typename Tr::T* w, int64_t bw,
                const typename Tr::T* bias, typename Tr::T* out, int64_t out_stride, int64_t o_valid, DwpwAct act) {
  switch (nv) {
    case 1: return gemm_cl<Tr, MR, 1>(C, mid, cp, w, bw, bias, out, out_stride, o_valid, act);
    case 2: return gemm_cl<Tr, MR, 2>(C, mid, cp, w, bw, bias, out, out_stride, o_valid, act);
    case 3: return gemm_cl<Tr, MR, 3>(C, mid, cp, w, bw, bias, out, out_stride, o_valid, act);
    default: return gemm_cl<Tr, MR, Tr::kVecsCl>(C, mid, cp, w, bw, bias, out, out_stride, o_valid, act);
  }
}

template <class Tr>
void pw_cl(const DwpwShape& s, const DwpwPacked<typename Tr::T>& p, const typename Tr::T* mid, int64_t oy0,
           int64_t oy1, int64_t o0, int64_t o1, typename Tr::T* out_img) {
  constexpr int W = Tr::W, NVM = Tr::kVecsCl, MR = Tr::kRowsCl;
  const int64_t P = (oy1 - oy0) * s.ow, cp = s.c_pad(), op = s.o_pad(), C = s.c, O = s.o;
  typename Tr::T* out0 = out_img + oy0 * s.ow * O;
  for (int64_t ob = o0 / kDwpwColBlock; ob * kDwpwColBlock < o1; ++ob) {
    const int64_t start = ob * kDwpwColBlock, bw = std::min(kDwpwColBlock, op - start);
    const typename Tr::T* wblk = p.pw + start * C;
    for (int64_t v0 = 0; v0 < bw; v0 += NVM * W) {
      const int64_t nv = std::min<int64_t>(NVM, (bw - v0) / W), first = start + v0;
      const int64_t o_valid = std::min(nv * W, O - first);
      if (o_valid <= 0) break;
      const typename Tr::T* w = wblk + v0;
      const typename Tr::T* bias = p.bias + first;
      int64_t p0 = 0;
      for (; p0 + MR <= P; p0 += MR)
        gemm_cl_nv<Tr, MR>(nv, C, mid + p0 * cp, cp, w, bw, bias, out0 + p0 * O + first, O, o_valid, s.act);
      const int64_t rest = P - p0;
      const typename Tr::T* m = mid + p0 * cp;
      typename Tr::T* o = out0 + p0 * O + first;
      switch (rest) {  // MR <= 6
        case 0: break;
        case 1: gemm_cl_nv<Tr, 1>(nv, C, m, cp, w, bw, bias, o, O, o_valid, s.act); break;
        case 2: gemm_cl_nv<Tr, 2>(nv, C, m, cp, w, bw, bias, o, O, o_valid, s.act); break;
        case 3: gemm_cl_nv<Tr, 3>(nv, C, m, cp, w, bw, bias, o, O, o_valid, s.act); break;
        case 4: gemm_cl_nv<Tr, 4>(nv, C, m, cp, w, bw, bias, o, O, o_valid, s.act); break;
        default: gemm_cl_nv<Tr, 5>(nv, C, m, cp, w, bw, bias, o, O, o_valid, s.act); break;
      }
    }
  }
}

// ------------------------------------------------------------------------------------- weight packing
// Blocks [b0, b1) of the channels_last pointwise weights (dwpw.h). Transpose8 (nullptr: none) transposes an
// 8 x 8 square (src rows lds apart -> dst rows ldd apart); squares cut by C or O are copied one by one.
template <typename T, class Transpose8>
void pack_pw_cl(const DwpwShape& s, const T* pw, T* packed, int64_t b0, int64_t b1, Transpose8 transpose8) {
  const int64_t C = s.c, O = s.o, op = s.o_pad();
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t start = b * kDwpwColBlock, bw = std::min(kDwpwColBlock, op - start);
    T* blk = packed + start * C;
    for (int64_t c0 = 0; c0 < C; c0 += 8) {
      for (int64_t j0 = 0; j0 < bw; j0 += 8) {
        if (transpose8 && c0 + 8 <= C && start + j0 + 8 <= O) {
          transpose8(pw + (start + j0) * C + c0, C, blk + c0 * bw + j0, bw);
          continue;
        }
        for (int64_t j = j0; j < j0 + 8; ++j) {
          const int64_t o = start + j;
          for (int64_t c = c0; c < std::min(C, c0 + 8); ++c) blk[c * bw + j] = o < O ? pw[o * C + c] : T(0);
        }
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------- tile
template <class Tr>
void dwpw_tile_impl(const DwpwShape& s, const DwpwPacked<typename Tr::T>& p, const typename Tr::T* x_img,
                    typename Tr::T* out_img, int64_t oy0, int64_t oy1, int64_t o0, int64_t o1,
                    typename Tr::T* scratch) {
  static_assert(kDwpwRowBlock % Tr::kRowsNchw == 0 && kDwpwPad % Tr::W == 0, "tile sizes must divide the packing");
  static_assert(Tr::kRowsCl <= 6, "pw_cl handles pixel tails up to 5");
  if (oy1 <= oy0 || o1 <= o0) return;
  if (s.channels_last) {
    dw_cl<Tr>(s, p, x_img, oy0, oy1, scratch);
    if (!s.cl_transposed) return pw_cl<Tr>(s, p, scratch, oy0, oy1, o0, o1, out_img);
    // Few pixels (see DwpwShape::cl_transposed): [P][c_pad] -> [C][ld], NCHW product, [O][ld] -> [P][O].
    using T = typename Tr::T;
    const int64_t P = (oy1 - oy0) * s.ow, cp = s.c_pad(), ld = s.mid_ld(oy1 - oy0), pz = dwpw_round_up(P, 16);
    T* mid_t = scratch + P * cp;
    T* out_t = mid_t + s.c * ld;
    for (int64_t j = 0; j < P; ++j)
      for (int64_t c = 0; c < s.c; ++c) mid_t[c * ld + j] = scratch[j * cp + c];
    for (int64_t c = 0; c < s.c; ++c) std::fill(mid_t + c * ld + P, mid_t + c * ld + pz, T(0));
    pw_rows<Tr>(s, p, mid_t, ld, P, o0, o1, out_t, ld);
    T* out0 = out_img + oy0 * s.ow * s.o;
    for (int64_t j = 0; j < P; ++j)
      for (int64_t o = o0; o < o1; ++o) out0[j * s.o + o] = out_t[o * ld + j];
  } else {
    const int64_t rows = oy1 - oy0;
    typename Tr::T* mid = scratch;
    typename Tr::T* phases = mid + s.c * s.mid_ld(rows);
    typename Tr::T* padded = phases + s.in_rows(rows) * s.sw * s.phase_len();
    dw_nchw<Tr>(s, p, x_img, oy0, oy1, mid, phases, padded);
    pw_nchw<Tr>(s, p, mid, oy0, oy1, o0, o1, out_img);
  }
}

}  // namespace
}  // namespace sparsecomp::cpu
