// Argument checks of the binary ops, shared by the CPU and CUDA bindings. Each message names the argument.
#pragma once
#include <ATen/ATen.h>

#include <string>

namespace sparsecomp {

inline int64_t packed_words(int64_t bits) { return (bits + 63) / 64; }

// 'none' -> 0, 'relu' -> 1.
inline int32_t parse_binary_activation(const char* op, const std::string& activation) {
  if (activation == "none") return 0;
  if (activation == "relu") return 1;
  TORCH_CHECK(false, op, ": activation must be 'none' or 'relu', got '", activation, "'");
}

inline void check_packed_weight(const char* op, const at::Tensor& weight_bits, const at::Tensor& x) {
  TORCH_CHECK(weight_bits.scalar_type() == at::kLong, op, ": weight_bits must be int64 (packed sign bits), got ",
              weight_bits.scalar_type());
  TORCH_CHECK(weight_bits.device() == x.device(), op, ": weight_bits is on ", weight_bits.device(), " but x is on ",
              x.device());
}

// alpha [O] and bias [O] (optional) in x's dtype and device.
inline void check_channel_params(const char* op, const at::Tensor& alpha, const c10::optional<at::Tensor>& bias,
                                 int64_t out_channels, const at::Tensor& x) {
  TORCH_CHECK(alpha.dim() == 1 && alpha.size(0) == out_channels, op, ": alpha must have shape [", out_channels,
              "], got ", alpha.sizes());
  TORCH_CHECK(alpha.scalar_type() == x.scalar_type(), op, ": alpha dtype ", alpha.scalar_type(),
              " does not match x dtype ", x.scalar_type());
  TORCH_CHECK(alpha.device() == x.device(), op, ": alpha is on ", alpha.device(), " but x is on ", x.device());
  if (bias.has_value()) {
    const at::Tensor& b = *bias;
    TORCH_CHECK(b.dim() == 1 && b.size(0) == out_channels, op, ": bias must have shape [", out_channels, "], got ",
                b.sizes());
    TORCH_CHECK(b.scalar_type() == x.scalar_type(), op, ": bias dtype ", b.scalar_type(), " does not match x dtype ",
                x.scalar_type());
    TORCH_CHECK(b.device() == x.device(), op, ": bias is on ", b.device(), " but x is on ", x.device());
  }
}

inline void check_binary_linear_args(const char* op, const at::Tensor& x, const at::Tensor& weight_bits,
                                     const at::Tensor& alpha, const c10::optional<at::Tensor>& bias,
                                     int64_t in_features) {
  TORCH_CHECK(in_features >= 0, op, ": in_features must be >= 0, got ", in_features);
  TORCH_CHECK(x.dim() == 2, op, ": x must be 2-D [batch, ", in_features, "], got shape ", x.sizes());
  TORCH_CHECK(x.size(1) == in_features, op, ": x must have in_features=", in_features, " columns, got shape ",
              x.sizes());
  check_packed_weight(op, weight_bits, x);
  TORCH_CHECK(weight_bits.dim() == 2 && weight_bits.size(1) == packed_words(in_features), op,
              ": weight_bits must have shape [out_features, ", packed_words(in_features), "] for in_features=",
              in_features, ", got ", weight_bits.sizes());
  check_channel_params(op, alpha, bias, weight_bits.size(0), x);
}

struct ConvGeometry {
  int64_t n, c, h, w, out_channels, groups, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow;
  int64_t cg() const { return c / groups; }
  int64_t og() const { return out_channels / groups; }
  int64_t cw() const { return packed_words(cg()); }
  int64_t taps() const { return kh * kw; }
};

inline ConvGeometry check_binary_conv2d_args(const char* op, const at::Tensor& x, const at::Tensor& weight_bits,
                                             const at::Tensor& alpha, const c10::optional<at::Tensor>& bias,
                                             int64_t in_channels, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                             at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  TORCH_CHECK(x.dim() == 4, op, ": x must be 4-D [N, C, H, W], got shape ", x.sizes());
  TORCH_CHECK(x.size(1) == in_channels, op, ": x must have in_channels=", in_channels, " channels, got shape ",
              x.sizes());
  TORCH_CHECK(kernel_size.size() == 2 && stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, op,
              ": kernel_size, stride, padding and dilation must each have 2 entries");
  TORCH_CHECK(kernel_size[0] >= 1 && kernel_size[1] >= 1, op, ": kernel_size must be >= 1, got ", kernel_size);
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1, op, ": stride must be >= 1, got ", stride);
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0, op, ": padding must be >= 0, got ", padding);
  TORCH_CHECK(dilation[0] >= 1 && dilation[1] >= 1, op, ": dilation must be >= 1, got ", dilation);
  TORCH_CHECK(groups >= 1, op, ": groups must be >= 1, got ", groups);
  TORCH_CHECK(in_channels >= 1 && in_channels % groups == 0, op, ": in_channels=", in_channels,
              " must be a positive multiple of groups=", groups);
  check_packed_weight(op, weight_bits, x);
  ConvGeometry g{};
  g.n = x.size(0); g.c = in_channels; g.h = x.size(2); g.w = x.size(3);
  g.groups = groups; g.kh = kernel_size[0]; g.kw = kernel_size[1];
  g.sh = stride[0]; g.sw = stride[1]; g.ph = padding[0]; g.pw = padding[1]; g.dh = dilation[0]; g.dw = dilation[1];
  TORCH_CHECK(weight_bits.dim() == 4 && weight_bits.size(1) == g.kh && weight_bits.size(2) == g.kw &&
                  weight_bits.size(3) == g.cw(),
              op, ": weight_bits must have shape [out_channels, ", g.kh, ", ", g.kw, ", ", g.cw(),
              "] (sign bits of in_channels/groups=", g.cg(), " channels per tap), got ", weight_bits.sizes());
  g.out_channels = weight_bits.size(0);
  TORCH_CHECK(g.out_channels % groups == 0, op, ": out_channels=", g.out_channels, " (weight_bits.size(0)) must be a",
              " multiple of groups=", groups);
  check_channel_params(op, alpha, bias, g.out_channels, x);
  g.oh = (g.h + 2 * g.ph - g.dh * (g.kh - 1) - 1) / g.sh + 1;
  g.ow = (g.w + 2 * g.pw - g.dw * (g.kw - 1) - 1) / g.sw + 1;
  TORCH_CHECK(g.h + 2 * g.ph - g.dh * (g.kh - 1) - 1 >= 0 && g.w + 2 * g.pw - g.dw * (g.kw - 1) - 1 >= 0, op,
              ": the kernel ", kernel_size, " with dilation ", dilation, " does not fit the input ", x.sizes().slice(2),
              " with padding ", padding);
  return g;
}

// channels_last output iff x is channels_last-contiguous and not NCHW-contiguous (ambiguous shapes stay NCHW).
inline bool binary_conv_channels_last(const at::Tensor& x) {
  return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// Bits past the last real element of each packed row must be 0 (bitpack writes them so): set tail bits would
// count as mismatches. rows x words, checked on the last word of each row.
inline void check_tail_bits_zero(const char* op, const uint64_t* words, int64_t rows, int64_t row_words,
                                 int64_t bits_per_row) {
  if (bits_per_row % 64 == 0 || row_words == 0) return;
  const uint64_t tail = ~((uint64_t{1} << (bits_per_row % 64)) - 1);
  for (int64_t r = 0; r < rows; ++r)
    TORCH_CHECK((words[(r + 1) * row_words - 1] & tail) == 0, op, ": weight_bits row ", r,
                " has bits set past the last of its ", bits_per_row, " elements (tail bits must be 0)");
}

}  // namespace sparsecomp
