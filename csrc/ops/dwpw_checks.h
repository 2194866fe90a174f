// Argument checks of dwpw_conv2d (fused depthwise -> pointwise convolution), shared by every backend: shapes,
// kernel size, groups, stride, padding, activations, and that every tensor has x's dtype and device. Which
// dtypes a backend computes in is its own check. Each message names the argument.
#pragma once
#include <ATen/ATen.h>

#include <string>

#include "../cpu/dwpw.h"

namespace sparsecomp {

inline cpu::DwpwAct parse_dwpw_activation(const char* op, const char* arg, const std::string& name) {
  if (name == "none") return cpu::DwpwAct::None;
  if (name == "relu") return cpu::DwpwAct::Relu;
  if (name == "relu6") return cpu::DwpwAct::Relu6;
  if (name == "hardswish") return cpu::DwpwAct::Hardswish;
  TORCH_CHECK(false, op, ": ", arg, " must be one of 'none', 'relu', 'relu6', 'hardswish', got '", name, "'");
}

// channels_last exactly when x is channels_last-contiguous but not NCHW-contiguous (tensors that are both,
// C == 1 or H == W == 1, count as NCHW; the two layouts are then the same bytes). The fake kernel in
// sparsecomp/ops.py uses the same rule.
inline bool dwpw_channels_last(const at::Tensor& x) {
  return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

inline void check_dwpw_same(const char* op, const char* arg, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", arg, " dtype ", t.scalar_type(),
              " does not match x dtype ", x.scalar_type());
  TORCH_CHECK(t.device() == x.device(), op, ": ", arg, " is on ", t.device(), " but x is on ", x.device());
}

inline cpu::DwpwShape check_dwpw_conv2d_args(const char* op, const at::Tensor& x, const at::Tensor& dw_weight,
                                             const c10::optional<at::Tensor>& dw_scale,
                                             const c10::optional<at::Tensor>& dw_shift,
                                             const std::string& mid_activation, const at::Tensor& pw_weight,
                                             const c10::optional<at::Tensor>& pw_bias,
                                             const std::string& activation, at::IntArrayRef stride,
                                             at::IntArrayRef padding) {
  TORCH_CHECK(x.dim() == 4, op, ": x must be 4-D [N, C, H, W], got shape ", x.sizes());
  const int64_t c = x.size(1);
  TORCH_CHECK(c >= 1, op, ": x must have at least one channel, got shape ", x.sizes());
  TORCH_CHECK(dw_weight.dim() == 4, op, ": dw_weight must be 4-D [C, 1, k, k], got shape ", dw_weight.sizes());
  TORCH_CHECK(dw_weight.size(0) == c, op, ": dw_weight must have C = x.size(1) = ", c,
              " filters (one per channel), got shape ", dw_weight.sizes());
  TORCH_CHECK(dw_weight.size(1) == 1, op, ": dw_weight.size(1) must be 1 (depthwise: groups == channels), got shape ",
              dw_weight.sizes());
  TORCH_CHECK(dw_weight.size(2) == dw_weight.size(3), op, ": dw_weight kernel must be square, got shape ",
              dw_weight.sizes());
  const int64_t k = dw_weight.size(2);
  TORCH_CHECK(k == 3 || k == 5 || k == 7, op, ": dw_weight kernel size must be 3, 5 or 7, got ", k);
  check_dwpw_same(op, "dw_weight", dw_weight, x);
  for (const auto& [arg, t] : {std::make_pair("dw_scale", &dw_scale), std::make_pair("dw_shift", &dw_shift)}) {
    if (!t->has_value()) continue;
    TORCH_CHECK((*t)->dim() == 1 && (*t)->size(0) == c, op, ": ", arg, " must have shape [", c, "], got ",
                (*t)->sizes());
    check_dwpw_same(op, arg, **t, x);
  }
  const bool pw_4d = pw_weight.dim() == 4;
  TORCH_CHECK(pw_weight.dim() == 2 || (pw_4d && pw_weight.size(2) == 1 && pw_weight.size(3) == 1), op,
              ": pw_weight must be [O, C, 1, 1] or [O, C], got shape ", pw_weight.sizes());
  TORCH_CHECK(pw_weight.size(1) == c, op, ": pw_weight must have C = x.size(1) = ", c, " input channels, got shape ",
              pw_weight.sizes());
  check_dwpw_same(op, "pw_weight", pw_weight, x);
  const int64_t o = pw_weight.size(0);
  if (pw_bias.has_value()) {
    TORCH_CHECK(pw_bias->dim() == 1 && pw_bias->size(0) == o, op, ": pw_bias must have shape [", o, "], got ",
                pw_bias->sizes());
    check_dwpw_same(op, "pw_bias", *pw_bias, x);
  }
  TORCH_CHECK(stride.size() == 2, op, ": stride must have 2 elements, got ", stride);
  TORCH_CHECK(padding.size() == 2, op, ": padding must have 2 elements, got ", padding);
  for (int i = 0; i < 2; ++i) {
    TORCH_CHECK(stride[i] == 1 || stride[i] == 2, op, ": stride must be 1 or 2 in each dimension, got ", stride);
    TORCH_CHECK(padding[i] >= 0 && padding[i] < k, op, ": padding must be in [0, k - 1] = [0, ", k - 1,
                "] in each dimension, got ", padding);
  }
  const int64_t h = x.size(2), w = x.size(3);
  TORCH_CHECK(h + 2 * padding[0] >= k && w + 2 * padding[1] >= k, op, ": x spatial size ", h, "x", w,
              " is smaller than the kernel size ", k, " even with padding ", padding);
  cpu::DwpwShape s{};
  s.c = c;
  s.h = h;
  s.w = w;
  s.o = o;
  s.k = k;
  s.sh = stride[0];
  s.sw = stride[1];
  s.ph = padding[0];
  s.pw = padding[1];
  s.oh = (h + 2 * s.ph - k) / s.sh + 1;
  s.ow = (w + 2 * s.pw - k) / s.sw + 1;
  s.mid_act = parse_dwpw_activation(op, "mid_activation", mid_activation);
  s.act = parse_dwpw_activation(op, "activation", activation);
  s.channels_last = dwpw_channels_last(x);
  return s;
}

}  // namespace sparsecomp
