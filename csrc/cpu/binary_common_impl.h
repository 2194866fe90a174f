// Code shared by the three binary kernel files (portable, AVX2, AVX-512). Every function here has internal
// linkage: each file compiles its own copy under its own target pragma, and no copy built for a wider ISA can
// be picked by the linker for a narrower path.
#pragma once
#include <algorithm>
#include <cstdint>

#include "binary.h"

namespace sparsecomp::cpu {
namespace {

// Turns a tile of counts (cnt[r * kPanelCols + c]) into outputs; see BinaryEpilogue.
inline void apply_epilogue(const BinaryEpilogue& ep, const int32_t* cnt, int64_t mr, int64_t nc, int64_t row0,
                           int64_t col0) {
  const bool relu = ep.activation == Activation::Relu;
  for (int64_t r = 0; r < mr; ++r) {
    const int64_t o = row0 + r;
    const float al = ep.alpha[o];
    const float bi = ep.bias ? ep.bias[o] : 0.0f;
    float* out = ep.out + o * ep.row_stride + col0 * ep.col_stride;
    const int32_t* cr = cnt + r * kPanelCols;
    if (!ep.col_pattern) {
      const int32_t base = ep.pattern_base[0];
      if (ep.col_stride == 1) {
        for (int64_t c = 0; c < nc; ++c) {
          float v = al * static_cast<float>(base - 2 * cr[c]) + bi;
          out[c] = relu ? std::max(v, 0.0f) : v;
        }
      } else {
        for (int64_t c = 0; c < nc; ++c) {
          float v = al * static_cast<float>(base - 2 * cr[c]) + bi;
          out[c * ep.col_stride] = relu ? std::max(v, 0.0f) : v;
        }
      }
    } else {
      const int32_t* pat = ep.col_pattern + col0;
      for (int64_t c = 0; c < nc; ++c) {
        const int32_t p = pat[c];
        const int32_t dot = ep.pattern_base[p] - 2 * (cr[c] - ep.pattern_cor[o * ep.cor_ld + p]);
        float v = al * static_cast<float>(dot) + bi;
        out[c * ep.col_stride] = relu ? std::max(v, 0.0f) : v;
      }
    }
  }
}

// Sign bits of n <= 64 floats (scalar; used for tails).
inline uint64_t sign_bits_scalar(const float* x, int64_t n) {
  uint64_t bits = 0;
  for (int64_t i = 0; i < n; ++i) bits |= static_cast<uint64_t>(x[i] >= 0.0f) << i;
  return bits;
}

// Planar packing with a contiguous inner loop over positions (vectorized by the compiler where it can).
inline void bitpack_planes_generic(const float* x, int64_t channels, int64_t plane_stride, int64_t positions,
                                   uint64_t* out, int64_t ld_out, uint64_t* scratch) {
  for (int64_t w = 0; w * 64 < channels; ++w) {
    std::fill(scratch, scratch + positions, uint64_t{0});
    const int64_t c_end = std::min<int64_t>(channels, w * 64 + 64);
    for (int64_t c = w * 64; c < c_end; ++c) {
      const float* plane = x + c * plane_stride;
      const uint64_t bit = uint64_t{1} << (c - w * 64);
      for (int64_t p = 0; p < positions; ++p) scratch[p] |= plane[p] >= 0.0f ? bit : uint64_t{0};
    }
    for (int64_t p = 0; p < positions; ++p) out[p * ld_out + w] = scratch[p];
  }
}

// pos_sum for one row and one sample, scalar (tails and the portable path).
inline float connect_dot_scalar(const uint64_t* wrow, const float* x, int64_t len) {
  float s = 0.0f;
  for (int64_t k = 0; k < len; ++k)
    if ((wrow[k >> 6] >> (k & 63)) & 1u) s += x[k];
  return s;
}

// Row popcounts; with a popcnt target this is one POPCNT per word.
inline void popcount_rows_generic(const uint64_t* words, int64_t rows, int64_t row_words, int32_t* out) {
  for (int64_t r = 0; r < rows; ++r) {
    int64_t s = 0;
    for (int64_t w = 0; w < row_words; ++w) s += __builtin_popcountll(words[r * row_words + w]);
    out[r] = static_cast<int32_t>(s);
  }
}

}  // namespace
}  // namespace sparsecomp::cpu
