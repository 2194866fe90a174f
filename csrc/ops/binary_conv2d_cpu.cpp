// CPU binding of binary_conv2d: y = act(alpha[o] * conv2d(s(x), sign(W)) + bias[o]).
//
// binarize_input: (1) pack x to sign bits per position and group ([N][H][W][G][Cw] words, from NCHW planes or
// channels_last rows); (2) im2col of bits into B panels of 16 output positions, a zero word for each
// out-of-frame tap ('zeros') or the all-channels +1 word ('ones'); (3) popcount GEMM of the weight rows against
// each panel with the epilogue fused. A zero word still counts popcount(W[o, tap]) mismatches, so positions
// whose taps leave the frame get a correction: their pattern of out-of-frame taps (one interval of kernel rows
// and one of kernel columns are valid) indexes a table of per-channel popcounts of the missing taps.
// BinaryConnect (binarize_input=false): the weights are unpacked to +-alpha floats and torch's conv2d runs;
// there is no XNOR to exploit with real activations, only the 32x smaller stored weights.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "binary_checks.h"
#include "binary_cpu_common.h"

namespace sparsecomp {
namespace {

using cpu::kPanelCols;

// Valid kernel index interval [lo, hi) for output coordinate o along one axis.
std::pair<int64_t, int64_t> valid_taps(int64_t o, int64_t stride, int64_t pad, int64_t dil, int64_t k, int64_t size) {
  int64_t lo = k, hi = 0;
  for (int64_t i = 0; i < k; ++i) {
    const int64_t in = o * stride - pad + i * dil;
    if (in >= 0 && in < size) { lo = std::min(lo, i); hi = std::max(hi, i + 1); }
  }
  return lo < hi ? std::make_pair(lo, hi) : std::make_pair(int64_t{0}, int64_t{0});
}

// Border patterns of the output positions of one image and their correction tables (see file comment).
struct BorderPatterns {
  std::vector<int32_t> col_pattern;  // [oh * ow]
  std::vector<int32_t> base;         // [cor_ld]: channels per group * valid taps
  std::vector<int32_t> cor;          // [out_channels][cor_ld]
  int64_t cor_ld = 16;               // patterns rounded up to a multiple of 16
};

BorderPatterns border_patterns(const cpu_binding::BinaryKernels& kern, const ConvGeometry& g, const uint64_t* w) {
  using Interval = std::pair<int64_t, int64_t>;
  std::vector<Interval> rows(g.oh), cols(g.ow);
  for (int64_t o = 0; o < g.oh; ++o) rows[o] = valid_taps(o, g.sh, g.ph, g.dh, g.kh, g.h);
  for (int64_t o = 0; o < g.ow; ++o) cols[o] = valid_taps(o, g.sw, g.pw, g.dw, g.kw, g.w);
  // Distinct valid intervals per axis, the full one first; pattern id = row kind * column kinds + column kind,
  // so the interior is pattern 0.
  auto kinds_of = [](const std::vector<Interval>& per_output, Interval full, std::vector<int32_t>& kind) {
    std::vector<Interval> distinct{full};
    kind.resize(per_output.size());
    for (size_t o = 0; o < per_output.size(); ++o) {
      auto it = std::find(distinct.begin(), distinct.end(), per_output[o]);
      if (it == distinct.end()) it = distinct.insert(distinct.end(), per_output[o]);
      kind[o] = static_cast<int32_t>(it - distinct.begin());
    }
    return distinct;
  };
  std::vector<int32_t> row_kind, col_kind;
  const std::vector<Interval> row_kinds = kinds_of(rows, {0, g.kh}, row_kind);
  const std::vector<Interval> col_kinds = kinds_of(cols, {0, g.kw}, col_kind);
  const int32_t n_col_kinds = static_cast<int32_t>(col_kinds.size());
  std::vector<std::pair<Interval, Interval>> list;
  for (const Interval& r : row_kinds)
    for (const Interval& c : col_kinds) list.emplace_back(r, c);
  BorderPatterns bp;
  bp.col_pattern.resize(g.oh * g.ow);
  for (int64_t y = 0; y < g.oh; ++y)
    for (int64_t x = 0; x < g.ow; ++x) bp.col_pattern[y * g.ow + x] = row_kind[y] * n_col_kinds + col_kind[x];
  // Popcount of each weight tap; a 2-D prefix sum over the kernel per channel then gives the popcount inside
  // any pattern's valid rectangle in O(1), and the correction is the rest.
  const int64_t taps = g.taps(), n_pat = static_cast<int64_t>(list.size());
  std::vector<int32_t> tap_pop(g.out_channels * taps);
  bp.cor_ld = (n_pat + 15) / 16 * 16;
  bp.base.assign(bp.cor_ld, 0);
  bp.cor.assign(bp.cor_ld * g.out_channels, 0);
  for (int64_t p = 0; p < n_pat; ++p) {
    const auto& [ri, ci] = list[p];
    bp.base[p] = static_cast<int32_t>(g.cg() * (ri.second - ri.first) * (ci.second - ci.first));
  }
  const int64_t pw = g.kw + 1;
  at::parallel_for(0, g.out_channels, cpu_binding::binary_grain(g.out_channels, g.out_channels * taps * g.cw()),
                   [&](int64_t b, int64_t e) {
    kern.popcount_rows(w + b * taps * g.cw(), (e - b) * taps, g.cw(), tap_pop.data() + b * taps);
    std::vector<int32_t> prefix((g.kh + 1) * pw, 0);
    for (int64_t o = b; o < e; ++o) {
      for (int64_t i = 0; i < g.kh; ++i)
        for (int64_t j = 0; j < g.kw; ++j)
          prefix[(i + 1) * pw + j + 1] = tap_pop[o * taps + i * g.kw + j] + prefix[i * pw + j + 1] +
                                         prefix[(i + 1) * pw + j] - prefix[i * pw + j];
      const int32_t total = prefix[g.kh * pw + g.kw];
      for (int64_t p = 1; p < n_pat; ++p) {
        const auto& [ri, ci] = list[p];
        const int32_t inside = prefix[ri.second * pw + ci.second] - prefix[ri.first * pw + ci.second] -
                               prefix[ri.second * pw + ci.first] + prefix[ri.first * pw + ci.first];
        bp.cor[o * bp.cor_ld + p] = total - inside;
      }
    }
  });
  return bp;
}

// Step 1: sign bits of every input position, [N][H][W][G * cw] words.
at::Tensor pack_input(const cpu_binding::BinaryKernels& kern, const at::Tensor& x, const ConvGeometry& g,
                      bool channels_last) {
  const int64_t cw = g.cw(), ld = g.groups * cw, hw = g.h * g.w;
  at::Tensor xp_t = cpu_binding::word_buffer(g.n * hw * ld);
  uint64_t* xp = cpu_binding::words_of(xp_t);
  const float* xd = x.data_ptr<float>();
  if (channels_last) {
    const int64_t rows = g.n * hw;
    at::parallel_for(0, rows, cpu_binding::binary_grain(rows, rows * ld * 8), [&](int64_t b, int64_t e) {
      for (int64_t gi = 0; gi < g.groups; ++gi)
        kern.bitpack_rows(xd + b * g.c + gi * g.cg(), e - b, g.c, g.cg(), xp + b * ld + gi * cw, ld);
    });
    return xp_t;
  }
  // NCHW: tasks over (image, group, block of positions) so that batch 1 still uses every thread.
  constexpr int64_t kBlock = 256;
  const int64_t blocks = (hw + kBlock - 1) / kBlock;
  const int64_t tasks = g.n * g.groups * blocks;
  at::parallel_for(0, tasks, cpu_binding::binary_grain(tasks, g.n * hw * ld * 8), [&](int64_t b, int64_t e) {
    std::vector<uint64_t> scratch(kBlock);
    for (int64_t t = b; t < e; ++t) {
      const int64_t blk = t % blocks, gi = (t / blocks) % g.groups, n = t / (blocks * g.groups);
      const int64_t p0 = blk * kBlock, np = std::min(kBlock, hw - p0);
      kern.bitpack_planes(xd + (n * g.c + gi * g.cg()) * hw + p0, g.cg(), hw, np, xp + (n * hw + p0) * ld + gi * cw,
                          ld, scratch.data());
    }
  });
  return xp_t;
}

// Step 2: one panel = 16 output positions of image n, group gi: [taps * cw][16] words. tap_offset[t] is the
// position offset of tap t from the tap (0, 0) of an output position whose taps are all inside the frame.
void fill_panel(const uint64_t* xp, const ConvGeometry& g, int64_t n, int64_t gi, int64_t panel_index,
                const uint64_t* pad_words, const std::vector<int64_t>& tap_offset, uint64_t* panel) {
  const int64_t cw = g.cw(), ld = g.groups * cw, positions = g.oh * g.ow, taps = g.taps();
  const uint64_t* image = xp + n * g.h * g.w * ld + gi * cw;
  for (int64_t c = 0; c < kPanelCols; ++c) {
    const int64_t q = panel_index * kPanelCols + c;
    if (q >= positions) {
      for (int64_t k = 0; k < taps * cw; ++k) panel[k * kPanelCols + c] = 0;
      continue;
    }
    const int64_t oy = q / g.ow, ox = q % g.ow;
    const int64_t iy0 = oy * g.sh - g.ph, ix0 = ox * g.sw - g.pw;
    const bool interior = iy0 >= 0 && iy0 + (g.kh - 1) * g.dh < g.h && ix0 >= 0 && ix0 + (g.kw - 1) * g.dw < g.w;
    if (interior) {  // the common case: no bounds checks, one table lookup per tap
      const uint64_t* origin = image + (iy0 * g.w + ix0) * ld;
      if (cw == 1) {
        for (int64_t t = 0; t < taps; ++t) panel[t * kPanelCols + c] = origin[tap_offset[t] * ld];
      } else {
        for (int64_t t = 0; t < taps; ++t) {
          const uint64_t* src = origin + tap_offset[t] * ld;
          uint64_t* dst = panel + t * cw * kPanelCols + c;
          for (int64_t w = 0; w < cw; ++w) dst[w * kPanelCols] = src[w];
        }
      }
      continue;
    }
    for (int64_t i = 0; i < g.kh; ++i) {
      const int64_t iy = iy0 + i * g.dh;
      for (int64_t j = 0; j < g.kw; ++j) {
        const int64_t ix = ix0 + j * g.dw;
        const bool inside = iy >= 0 && iy < g.h && ix >= 0 && ix < g.w;
        const uint64_t* src = inside ? image + (iy * g.w + ix) * ld : pad_words;
        uint64_t* dst = panel + (i * g.kw + j) * cw * kPanelCols + c;
        for (int64_t w = 0; w < cw; ++w) dst[w * kPanelCols] = src[w];
      }
    }
  }
}

at::Tensor binary_conv2d_packed(const at::Tensor& x, const at::Tensor& weight_bits, const at::Tensor& alpha,
                                const c10::optional<at::Tensor>& bias, const ConvGeometry& g, bool pad_ones,
                                bool relu, bool channels_last) {
  const auto kern = cpu_binding::binary_kernels();
  const int64_t positions = g.oh * g.ow, cw = g.cw(), k_words = g.taps() * cw;
  at::Tensor out = at::empty({g.n, g.out_channels, g.oh, g.ow},
                             x.options().memory_format(channels_last ? at::MemoryFormat::ChannelsLast
                                                                     : at::MemoryFormat::Contiguous));
  if (g.n == 0 || g.out_channels == 0) return out;
  const uint64_t* w = cpu_binding::words_of(weight_bits);
  const at::Tensor xp_t = pack_input(kern, x, g, channels_last);
  const uint64_t* xp = cpu_binding::words_of(xp_t);

  // 'ones' pads with +1 on every real channel (tail bits stay 0); 'zeros' pads with 0 words plus the correction.
  std::vector<uint64_t> pad_words(cw, 0);
  if (pad_ones)
    for (int64_t c = 0; c < g.cg(); ++c) pad_words[c / 64] |= uint64_t{1} << (c % 64);
  BorderPatterns bp;
  if (pad_ones) bp.base.assign(16, static_cast<int32_t>(g.cg() * g.taps()));
  else bp = border_patterns(kern, g, w);

  const int64_t n_panels = (positions + kPanelCols - 1) / kPanelCols;
  const int64_t panel_words = k_words * kPanelCols;
  const int64_t all_panels = g.n * g.groups * n_panels;
  at::Tensor panels_t = cpu_binding::word_buffer(all_panels * panel_words);
  uint64_t* panels = cpu_binding::words_of(panels_t);
  std::vector<int64_t> tap_offset(g.taps());
  for (int64_t i = 0; i < g.kh; ++i)
    for (int64_t j = 0; j < g.kw; ++j) tap_offset[i * g.kw + j] = i * g.dh * g.w + j * g.dw;
  at::parallel_for(0, all_panels, cpu_binding::binary_grain(all_panels, all_panels * panel_words),
                   [&](int64_t b, int64_t e) {
                     for (int64_t t = b; t < e; ++t) {
                       const int64_t p = t % n_panels, gi = (t / n_panels) % g.groups, n = t / (n_panels * g.groups);
                       fill_panel(xp, g, n, gi, p, pad_words.data(), tap_offset, panels + t * panel_words);
                     }
                   });

  const float* al = alpha.data_ptr<float>();
  const float* bi = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  float* od = out.data_ptr<float>();
  const int64_t og = g.og();
  const int64_t chunk = cpu_binding::row_chunk_size(og, all_panels, at::get_num_threads());
  const int64_t chunks = (og + chunk - 1) / chunk;
  const int64_t tasks = all_panels * chunks;
  const int64_t word_ops = g.n * positions * g.out_channels * k_words;
  at::parallel_for(0, tasks, cpu_binding::binary_grain(tasks, word_ops), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t pt = t % all_panels, c = t / all_panels;
      const int64_t p = pt % n_panels, gi = (pt / n_panels) % g.groups, n = pt / (n_panels * g.groups);
      const int64_t r0 = gi * og + c * chunk, r1 = std::min(gi * og + og, r0 + chunk);
      cpu::BinaryEpilogue ep{al, bi, relu ? cpu::Activation::Relu : cpu::Activation::None,
                             pad_ones ? nullptr : bp.col_pattern.data(), bp.base.data(),
                             pad_ones ? nullptr : bp.cor.data(), bp.cor_ld,
                             od + n * g.out_channels * positions,
                             channels_last ? 1 : positions, channels_last ? g.out_channels : 1};
      const int64_t col0 = p * kPanelCols;
      kern.gemm_panel(w + r0 * k_words, k_words, r0, r1 - r0, panels + pt * panel_words, k_words, col0,
                      std::min(kPanelCols, positions - col0), ep);
    }
  });
  return out;
}

at::Tensor binary_conv2d_connect(const at::Tensor& x, const at::Tensor& weight_bits, const at::Tensor& alpha,
                                 const c10::optional<at::Tensor>& bias, const ConvGeometry& g, bool relu) {
  // [O, kh, kw, cw] bits -> [O, kh, kw, cg] +-1 -> [O, cg, kh, kw] * alpha.
  const at::Tensor shifts = at::arange(64, weight_bits.options());
  const at::Tensor bits = weight_bits.unsqueeze(-1).bitwise_right_shift(shifts).bitwise_and(1);
  const at::Tensor signs = bits.flatten(-2).narrow(-1, 0, g.cg()).to(at::kFloat).mul(2).sub(1);
  const at::Tensor weight = (signs.permute({0, 3, 1, 2}) * alpha.view({-1, 1, 1, 1})).contiguous();
  at::Tensor y = at::conv2d(x, weight, bias, {g.sh, g.sw}, {g.ph, g.pw}, {g.dh, g.dw}, g.groups);
  return relu ? y.relu_() : y;
}

at::Tensor binary_conv2d_cpu(const at::Tensor& x_in, const at::Tensor& weight_bits_in, const at::Tensor& alpha_in,
                             const c10::optional<at::Tensor>& bias_in, int64_t in_channels, at::IntArrayRef kernel_size,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                             bool binarize_input, c10::string_view padding_mode, c10::string_view activation) {
  const char* op = "binary_conv2d";
  TORCH_CHECK(x_in.scalar_type() == at::kFloat, op, ": x must be float32 on CPU, got ", x_in.scalar_type());
  const ConvGeometry g = check_binary_conv2d_args(op, x_in, weight_bits_in, alpha_in, bias_in, in_channels,
                                                  kernel_size, stride, padding, dilation, groups);
  const std::string mode(padding_mode);
  TORCH_CHECK(mode == "zeros" || mode == "ones", op, ": padding_mode must be 'zeros' or 'ones', got '", mode, "'");
  TORCH_CHECK(binarize_input || mode == "zeros", op,
              ": padding_mode='ones' needs binarize_input=True (real activations are zero-padded)");
  const bool relu = parse_binary_activation(op, std::string(activation)) == 1;
  const bool channels_last = binary_conv_channels_last(x_in);
  const at::Tensor x = channels_last ? x_in : x_in.contiguous();
  const at::Tensor weight_bits = weight_bits_in.contiguous();
  check_tail_bits_zero(op, cpu_binding::words_of(weight_bits), g.out_channels * g.taps(), g.cw(), g.cg());
  const at::Tensor alpha = alpha_in.contiguous();
  c10::optional<at::Tensor> bias;
  if (bias_in.has_value()) bias = bias_in->contiguous();
  if (!binarize_input) {
    at::Tensor y = binary_conv2d_connect(x, weight_bits, alpha, bias, g, relu);
    return y.contiguous(channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  }
  return binary_conv2d_packed(x, weight_bits, alpha, bias, g, mode == "ones", relu, channels_last);
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsecomp, CPU, m) { m.impl("binary_conv2d", &binary_conv2d_cpu); }

}  // namespace sparsecomp
