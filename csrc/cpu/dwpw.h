// CPU kernels of the fused depthwise -> pointwise convolution (dwpw_conv2d):
//   mid[c]  = mid_act(depthwise_kxk(x)[c] * scale[c] + shift[c])
//   out[o]  = act(sum_c pw[o][c] * mid[c] + bias[o])
// One call computes one tile: the output rows [oy0, oy1) of one image for output channels [o0, o1). The
// depthwise result of the tile (all channels) is written to the caller's scratch, which stays in L1/L2, and the
// pointwise micro-GEMM reads it from there: it never makes a round trip through memory.
//
// Operands (the binding packs them once per call, in the same layout for every ISA so that one packing serves
// the portable, AVX2 and AVX-512 kernels; channel counts are padded to kDwpwPad with zeros):
//   NCHW:          dw [C][k*k] and pw [O][C], torch's layouts read in place (the micro-GEMM broadcasts weights)
//   channels_last: dw [k*k][c_pad] (a tap is a vector of channels), pw [ceil(o_pad/64)][C][bw]: pw transposed
//                  into 64-wide blocks of output channels (block b is bw = min(64, o_pad - 64 b) wide)
//   scale, shift [c_pad] (1 and 0 where the op got None), bias [o_pad] (0 where None).
// Every kernel sums the depthwise taps in (ky, kx) order and the pointwise products in channel order, one FMA
// (or one rounding multiply-add in the portable code) each, whatever the tile: results do not depend on the
// tiling or on the thread count.
#pragma once
#include <cstdint>

namespace sparsecomp::cpu {

enum class DwpwAct : int { None = 0, Relu = 1, Relu6 = 2, Hardswish = 3 };

constexpr int64_t kDwpwPad = 16;         // padding of channel counts in the packed layouts (one AVX-512 vector)
constexpr int64_t kDwpwRowBlock = 8;     // NCHW: granularity of a tile's output channels
constexpr int64_t kDwpwColBlock = 64;    // channels_last: output channels per packed pointwise block

inline int64_t dwpw_round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

struct DwpwShape {
  int64_t c, h, w;        // input channels and size
  int64_t o, oh, ow;      // output channels and size
  int64_t k;              // square depthwise kernel
  int64_t sh, sw, ph, pw; // stride and zero padding
  DwpwAct mid_act, act;
  bool channels_last;
  // channels_last through the NCHW micro-GEMM: the depthwise tile is transposed to [C][P], the product runs
  // on torch's [O][C] weight in place and the [O][P] result is transposed into the NHWC output. The binding
  // picks it when a call has so few pixels that transposing them costs less than packing the weight
  // (batch 1 at 7x7 with C = O = 1024: 100K moved floats instead of 1M); pw is then torch's [O][C] layout.
  bool cl_transposed = false;

  int64_t c_pad() const { return dwpw_round_up(c, kDwpwPad); }
  int64_t o_pad() const { return dwpw_round_up(o, kDwpwPad); }
  // Output-channel granularity of a tile's [o0, o1): one packed pointwise block.
  int64_t o_granule() const { return channels_last ? kDwpwColBlock : kDwpwRowBlock; }

  // NCHW scratch: the depthwise tile mid[c][mid_ld] (pixels of the tile's rows back to back; vector stores of a
  // row may spill up to 15 lanes past it, hence the slack), then the zero-padded input rows split by column
  // phase (phase p of a row holds padded-row elements p, p + sw, p + 2 sw, ...), phase_len each, and one
  // padded input row to split from.
  int64_t mid_ld(int64_t rows) const { return dwpw_round_up(rows * ow, 16) + 16; }
  int64_t phase_len() const { return dwpw_round_up(ow, 16) + 16; }
  int64_t in_rows(int64_t rows) const { return (rows - 1) * sh + k; }

  // Floats of scratch one tile of `rows` output rows needs.
  int64_t scratch_elems(int64_t rows) const {
    if (channels_last) return rows * ow * c_pad() + (cl_transposed ? (c + o) * mid_ld(rows) : 0);
    return c * mid_ld(rows) + (in_rows(rows) * sw + sw) * phase_len();
  }
};

template <typename T>
struct DwpwPacked {
  const T* dw;
  const T* scale;
  const T* shift;
  const T* pw;
  const T* bias;
};

// NCHW: x_img is one image [C][H][W], out_img its output [O][OH][OW], and output rows 0 <= oy0 < oy1 <= OH.
// channels_last: x_img and out_img are the whole batch ([N][H][W][C], [N][OH][OW][O]) and the rows count through
// it (row r is row r % OH of image r / OH), so that one tile may span images: at 7x7 that fills the
// micro-GEMM's pixel groups and amortizes its weight loads over several images.
// o0 is a multiple of shape.o_granule(); o1 is one too or equals O. scratch: shape.scratch_elems(oy1 - oy0)
// elements, 64-byte aligned.
void dwpw_tile_portable(const DwpwShape& s, const DwpwPacked<float>& p, const float* x_img, float* out_img,
                        int64_t oy0, int64_t oy1, int64_t o0, int64_t o1, float* scratch);
void dwpw_tile_portable(const DwpwShape& s, const DwpwPacked<double>& p, const double* x_img, double* out_img,
                        int64_t oy0, int64_t oy1, int64_t o0, int64_t o1, double* scratch);
void dwpw_tile_avx2(const DwpwShape& s, const DwpwPacked<float>& p, const float* x_img, float* out_img, int64_t oy0,
                    int64_t oy1, int64_t o0, int64_t o1, float* scratch);
void dwpw_tile_avx512(const DwpwShape& s, const DwpwPacked<float>& p, const float* x_img, float* out_img,
                      int64_t oy0, int64_t oy1, int64_t o0, int64_t o1, float* scratch);

// channels_last pointwise weights: pw [O][C] -> pw_packed (layout above) for the 64-wide blocks [b0, b1).
// The AVX2 version (8 x 8 register transposes) also serves AVX-512 CPUs.
void dwpw_pack_pw_cl_portable(const DwpwShape& s, const float* pw, float* packed, int64_t b0, int64_t b1);
void dwpw_pack_pw_cl_portable(const DwpwShape& s, const double* pw, double* packed, int64_t b0, int64_t b1);
void dwpw_pack_pw_cl_avx2(const DwpwShape& s, const float* pw, float* packed, int64_t b0, int64_t b1);

}  // namespace sparsecomp::cpu
