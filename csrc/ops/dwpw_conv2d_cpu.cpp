// CPU binding of dwpw_conv2d: out = act(pw(mid_act(depthwise(x) * scale + shift)) + bias) in one pass.
//
// x NCHW-contiguous or channels_last (the output keeps that format); any other strides are first made
// NCHW-contiguous. float32 runs the vector kernels of the active ISA; float64 runs the portable kernel (for
// gradcheck and float64 references). Work is split into tiles of (image, output rows, output-channel block),
// each computing its depthwise tile into per-thread scratch that stays in L2 (csrc/cpu/dwpw.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "../cpu/cpu_features.h"
#include "../cpu/dwpw.h"
#include "dwpw_checks.h"

namespace sparsecomp {
namespace {

using cpu::DwpwShape;

// Depthwise tile per thread. L2 here is 2 MiB per core; a tile of about a quarter of it leaves room for the
// pointwise weights and the input rows, and is still large enough (dozens of output rows at 112x112 and C = 32)
// that the micro-GEMM runs on long pixel runs.
constexpr int64_t kMidBudgetBytes = 512 << 10;
// NCHW calls with output rows this short (half an AVX-512 vector) take the channels_last kernel (see the binding).
constexpr int64_t kNchwViaClWidth = 8;
// Below this many multiply-adds a call stays on the calling thread (waking the team costs more).
constexpr int64_t kSerialMacs = 1 << 17;

enum BufferSlot { kPackedSlot = 0, kScratchSlot = 1 };

// A grow-only, 64-byte aligned buffer per thread and slot, reused across calls. A fresh allocation per call
// was measured to cost more than the convolution at 1024@7->1024 (the kernel zeroes the new pages of a
// multi-MiB block on first touch). The packed operands live in the calling thread's slot 0 for the call;
// every worker (the calling thread included) uses its own slot 1 for scratch.
template <typename T>
T* thread_buffer(BufferSlot slot, int64_t elems) {
  thread_local std::vector<T> buffers[2];
  std::vector<T>& b = buffers[slot];
  const size_t want = static_cast<size_t>(elems) + 64 / sizeof(T);
  if (b.size() < want) b.resize(want);
  const uintptr_t p = reinterpret_cast<uintptr_t>(b.data());
  return reinterpret_cast<T*>((p + 63) & ~static_cast<uintptr_t>(63));
}

template <typename T>
cpu::DwpwPacked<T> pack_operands(const DwpwShape& s, const at::Tensor& dw, const at::Tensor& scale,
                                 const at::Tensor& shift, const at::Tensor& pw, const at::Tensor& bias) {
  const int64_t C = s.c, O = s.o, cp = s.c_pad(), op = s.o_pad(), kk = s.k * s.k;
  const int64_t n_dw = s.channels_last ? kk * cp : 0, n_pw = s.channels_last && !s.cl_transposed ? op * C : 0;
  T* dwp = thread_buffer<T>(kPackedSlot, n_dw + 2 * cp + op + n_pw);
  T* sc = dwp + n_dw;
  T* sh = sc + cp;
  T* bi = sh + cp;
  T* pwp = bi + op;
  const T* dws = dw.data_ptr<T>();
  const T* pws = pw.data_ptr<T>();
  const T* scs = scale.defined() ? scale.data_ptr<T>() : nullptr;
  const T* shs = shift.defined() ? shift.data_ptr<T>() : nullptr;
  const T* bis = bias.defined() ? bias.data_ptr<T>() : nullptr;
  for (int64_t c = 0; c < cp; ++c) {
    sc[c] = c < C && scs ? scs[c] : T(1);
    sh[c] = c < C && shs ? shs[c] : T(0);
  }
  for (int64_t o = 0; o < op; ++o) bi[o] = o < O && bis ? bis[o] : T(0);
  if (s.channels_last) {
    for (int64_t t = 0; t < kk; ++t)
      for (int64_t c = 0; c < cp; ++c) dwp[t * cp + c] = c < C ? dws[c * kk + t] : T(0);
  }
  if (!s.channels_last || s.cl_transposed) return {s.channels_last ? dwp : dws, sc, sh, pws, bi};
  const int64_t blocks = (op + cpu::kDwpwColBlock - 1) / cpu::kDwpwColBlock;
  const bool vector_pack = std::is_same_v<T, float> && cpu::active_isa() != cpu::Isa::Scalar;
  at::parallel_for(0, blocks, op * C < (1 << 16) ? blocks : 1, [&](int64_t b0, int64_t b1) {
    if constexpr (std::is_same_v<T, float>) {
      if (vector_pack) return cpu::dwpw_pack_pw_cl_avx2(s, pws, pwp, b0, b1);
    }
    cpu::dwpw_pack_pw_cl_portable(s, pws, pwp, b0, b1);
  });
  return {dwp, sc, sh, pwp, bi};
}

void run_tile(const DwpwShape& s, const cpu::DwpwPacked<float>& p, const float* x, float* out, int64_t oy0,
              int64_t oy1, int64_t o0, int64_t o1, float* scratch, cpu::Isa isa) {
  switch (isa) {
    case cpu::Isa::Avx512: return cpu::dwpw_tile_avx512(s, p, x, out, oy0, oy1, o0, o1, scratch);
    case cpu::Isa::Avx2: return cpu::dwpw_tile_avx2(s, p, x, out, oy0, oy1, o0, o1, scratch);
    default: return cpu::dwpw_tile_portable(s, p, x, out, oy0, oy1, o0, o1, scratch);
  }
}

void run_tile(const DwpwShape& s, const cpu::DwpwPacked<double>& p, const double* x, double* out, int64_t oy0,
              int64_t oy1, int64_t o0, int64_t o1, double* scratch, cpu::Isa) {
  cpu::dwpw_tile_portable(s, p, x, out, oy0, oy1, o0, o1, scratch);
}

struct Tiling {
  int64_t images;     // images with their own row tiles (NCHW: N; channels_last: 1, its rows run through the batch)
  int64_t row_space;  // rows per such image (NCHW: OH; channels_last: N * OH)
  int64_t rows;       // output rows per tile
  int64_t n_tiles;    // row tiles per image
  int64_t o_block;    // output channels per task (a multiple of the granule, or all)
  int64_t n_oblocks;
};

// Tiles as large as the scratch budget allows; when they cannot keep every thread busy, the rows are split
// further where there are enough of them (no work repeated), else the output channels (batch 1 at 7x7: each
// block recomputes its tile's depthwise stage, a small fraction of the pointwise work there).
Tiling choose_tiling(const DwpwShape& s, int64_t n, int64_t elem_bytes, int64_t threads) {
  const int64_t images = s.channels_last ? 1 : n, row_space = s.channels_last ? n * s.oh : s.oh;
  const int64_t row_bytes = elem_bytes * s.ow * (s.channels_last ? s.c_pad() : s.c);
  const int64_t max_rows = std::clamp<int64_t>(kMidBudgetBytes / std::max<int64_t>(row_bytes, 1), 1, row_space);
  int64_t n_tiles = (row_space + max_rows - 1) / max_rows;
  const int64_t g = s.o_granule(), granules = (s.o + g - 1) / g;
  int64_t n_ob = 1;
  if (images * n_tiles < threads) {
    const int64_t want = (threads + images * n_tiles - 1) / (images * n_tiles);
    const int64_t row_tiles = (threads + images - 1) / images;
    if (row_space >= 4 * row_tiles || granules < 2 * want) n_tiles = std::min(row_space, row_tiles);  // rows
    else n_ob = want;  // few rows (7x7): output-channel blocks, even, at the price of repeating the depthwise
  }
  const int64_t rows = (row_space + n_tiles - 1) / n_tiles;
  n_tiles = (row_space + rows - 1) / rows;
  const int64_t o_block = (granules + n_ob - 1) / n_ob * g;
  return {images, row_space, rows, n_tiles, o_block, (s.o + o_block - 1) / o_block};
}

template <typename T>
void dwpw_run(const DwpwShape& s, const at::Tensor& x, const at::Tensor& dw, const at::Tensor& scale,
              const at::Tensor& shift, const at::Tensor& pw, const at::Tensor& bias, at::Tensor& out) {
  const cpu::DwpwPacked<T> p = pack_operands<T>(s, dw, scale, shift, pw, bias);
  const int64_t n = x.size(0);
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const Tiling t = choose_tiling(s, n, sizeof(T), threads);
  const int64_t tasks = t.images * t.n_tiles * t.n_oblocks;
  const int64_t macs = n * s.oh * s.ow * s.c * (s.k * s.k + s.o);
  const int64_t scratch_elems = s.scratch_elems(t.rows);
  const T* xp = x.data_ptr<T>();
  T* yp = out.data_ptr<T>();
  const int64_t x_img = s.c * s.h * s.w, y_img = s.o * s.oh * s.ow;
  const cpu::Isa isa = cpu::active_isa();
  at::parallel_for(0, tasks, macs < kSerialMacs ? tasks : 1, [&](int64_t t0, int64_t t1) {
    T* sp = thread_buffer<T>(kScratchSlot, scratch_elems);
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t ob = task % t.n_oblocks, rest = task / t.n_oblocks;
      const int64_t tile = rest % t.n_tiles, img = rest / t.n_tiles;
      const int64_t oy0 = tile * t.rows, oy1 = std::min(t.row_space, oy0 + t.rows);
      const int64_t o0 = ob * t.o_block, o1 = std::min(s.o, o0 + t.o_block);
      run_tile(s, p, xp + img * x_img, yp + img * y_img, oy0, oy1, o0, o1, sp, isa);
    }
  });
}

at::Tensor dwpw_conv2d_cpu(const at::Tensor& x_in, const at::Tensor& dw_weight,
                           const c10::optional<at::Tensor>& dw_scale, const c10::optional<at::Tensor>& dw_shift,
                           c10::string_view mid_activation, const at::Tensor& pw_weight,
                           const c10::optional<at::Tensor>& pw_bias, c10::string_view activation,
                           at::IntArrayRef stride, at::IntArrayRef padding) {
  constexpr const char* op = "sparsecomp::dwpw_conv2d";
  DwpwShape s = check_dwpw_conv2d_args(op, x_in, dw_weight, dw_scale, dw_shift, std::string(mid_activation),
                                             pw_weight, pw_bias, std::string(activation), stride, padding);
  TORCH_CHECK(x_in.device().is_cpu(), op, ": the CPU kernel got x on ", x_in.device());
  TORCH_CHECK(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble, op,
              ": x must be float32 or float64 on CPU, got ", x_in.scalar_type());
  const int64_t n = x_in.size(0);
  if (n == 0 || s.o == 0) {
    const auto fmt = s.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
    return at::empty({n, s.o, s.oh, s.ow}, x_in.options().memory_format(fmt));
  }
  // Narrow NCHW maps run the channels_last kernel on a channels_last copy and copy the result back: its
  // depthwise stage vectorizes over channels, where NCHW rows of 7 pixels leave most lanes idle (measured
  // 1 thread, 1024@7->128 batch 8: 1.22 ms this way vs 1.96 ms NCHW, torch 1.6 ms). The copies move
  // C * H * W + O * OH * OW floats, so only where the output is not wider than the input (128@7->1024 lost),
  // and at 14 wide only for outputs at most half as wide (384@14->64 gained, 512@14->512 lost).
  const bool via_cl = !s.channels_last && s.c > 1 &&
                      ((s.ow <= kNchwViaClWidth && s.o <= s.c) || (s.ow <= 2 * kNchwViaClWidth && 2 * s.o <= s.c));
  s.channels_last = s.channels_last || via_cl;
  const auto fmt = s.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor out = at::empty({n, s.o, s.oh, s.ow}, x_in.options().memory_format(fmt));
  const at::Tensor x = x_in.contiguous(fmt);
  // channels_last with few pixels: transpose the pixels around the NCHW product rather than pack the weight
  // when that moves several times fewer floats (the pixel transposes are scalar, the weight's 8 x 8 blocks).
  s.cl_transposed = s.channels_last && 4 * n * s.oh * s.ow * (s.c + s.o) < s.c * s.o;
  const at::Tensor dw = dw_weight.contiguous();
  const at::Tensor pw = pw_weight.reshape({s.o, s.c}).contiguous();
  const at::Tensor scale = dw_scale.has_value() ? dw_scale->contiguous() : at::Tensor();
  const at::Tensor shift = dw_shift.has_value() ? dw_shift->contiguous() : at::Tensor();
  const at::Tensor bias = pw_bias.has_value() ? pw_bias->contiguous() : at::Tensor();
  if (x.scalar_type() == at::kFloat) dwpw_run<float>(s, x, dw, scale, shift, pw, bias, out);
  else dwpw_run<double>(s, x, dw, scale, shift, pw, bias, out);
  return via_cl ? out.contiguous() : out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsecomp, CPU, m) { m.impl("dwpw_conv2d", &dwpw_conv2d_cpu); }

}  // namespace sparsecomp
