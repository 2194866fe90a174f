// CUDA binding of the binary (1-bit) ops: bitpack, bitunpack, binary_linear, binary_conv2d. Argument checks are
// the ones of the CPU binding (csrc/ops/binary_checks.h) plus the CUDA dtype set; then the activations are packed
// (XNOR) or read in place (BinaryConnect), the kernel is chosen and launched on the current stream. Nothing here
// waits for the device: so unlike the CPU binding, weight_bits tail bits are not checked (that would need a copy
// back); the kernels mask them off instead, so a stray tail bit is ignored rather than rejected.
//
// Kernel choice for the XNOR GEMM: b1 tensor cores (sm_80+) when there are >= 64 output positions, else the SIMT
// popcount kernel. The environment variable SPARSECOMP_BINARY_CUDA_KERNEL = auto | simt | mma | mma_wide | mma_tall
// overrides it (tests use it to run every kernel on the same inputs).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <limits>
#include <string>
#include <vector>

#include "../ops/binary_checks.h"
#include "kernels/binary.cuh"

namespace sparsecomp {
namespace {

namespace bk = sparsecomp::cuda::binary;

// at:: element types -> the CUDA types the kernels are written for (same bits).
template <typename T>
struct DeviceType {
  using type = T;
};
template <>
struct DeviceType<at::Half> {
  using type = __half;
};
template <>
struct DeviceType<at::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename T>
const typename DeviceType<T>::type* device_ptr(const at::Tensor& t) {
  return t.defined() ? reinterpret_cast<const typename DeviceType<T>::type*>(t.const_data_ptr<T>()) : nullptr;
}

const uint64_t* word_ptr(const at::Tensor& t) { return reinterpret_cast<const uint64_t*>(t.const_data_ptr<int64_t>()); }
uint64_t* mutable_word_ptr(at::Tensor& t) { return reinterpret_cast<uint64_t*>(t.mutable_data_ptr<int64_t>()); }

// float32, float16 and bfloat16: the activation / alpha / bias types of the CUDA kernels.
#define SPARSECOMP_BINARY_DISPATCH(TYPE, NAME, ...)                    \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                       \
                     AT_DISPATCH_CASE(at::ScalarType::Float, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::ScalarType::Half, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::ScalarType::BFloat16, __VA_ARGS__))

// bitpack also takes float64 (compared in double).
#define SPARSECOMP_BITPACK_DISPATCH(TYPE, NAME, ...)                    \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                        \
                     AT_DISPATCH_CASE(at::ScalarType::Float, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::ScalarType::Half, __VA_ARGS__)   \
                     AT_DISPATCH_CASE(at::ScalarType::BFloat16, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::ScalarType::Double, __VA_ARGS__))

void check_cuda_dtype(const char* op, const at::Tensor& x) {
  const at::ScalarType t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kHalf || t == at::kBFloat16, op,
              ": on CUDA x must be float32, float16 or bfloat16 (alpha and bias in the same dtype), got ", t);
  TORCH_CHECK(x.is_cuda(), op, ": x must be on a CUDA device, got ", x.device());
}

// The kernels count popcounts in int32 and keep the small conv parameters in int.
void check_kernel_limits(const char* op, int64_t k_bits, const ConvGeometry& g) {
  constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();
  TORCH_CHECK(k_bits <= kIntMax, op, ": on CUDA the reduction length (kernel taps x 64 * ceil(channels per group / 64)",
              " = ", k_bits, " bits) must be < 2^31");
  for (const int64_t v : {g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw})
    TORCH_CHECK(v <= kIntMax / 4, op, ": on CUDA kernel_size, stride, padding and dilation must be < 2^29, got ", v);
  TORCH_CHECK(g.groups <= 65535, op, ": on CUDA groups must be <= 65535, got ", g.groups);
}

int compute_capability_major(const at::Tensor& x) {
  int major = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, x.get_device()));
  return major;
}

bk::XnorKernel pick_xnor_kernel(const char* op, const bk::ConvShape& s, const at::Tensor& x) {
  const int major = compute_capability_major(x);
  const char* env = std::getenv("SPARSECOMP_BINARY_CUDA_KERNEL");
  const std::string want = env == nullptr ? "" : env;
  if (want.empty() || want == "auto") return bk::choose_xnor_kernel(s, major);
  if (want == "simt") return bk::XnorKernel::kSimt;
  TORCH_CHECK(want == "mma" || want == "mma_wide" || want == "mma_tall", op,
              ": SPARSECOMP_BINARY_CUDA_KERNEL must be auto, simt, mma, mma_wide or mma_tall, got '", want, "'");
  TORCH_CHECK(bk::xnor_mma_supported(major), op, ": SPARSECOMP_BINARY_CUDA_KERNEL=", want,
              " needs b1 tensor cores (compute capability 8.0 or newer), this device has ", major, ".x");
  if (want == "mma_wide") return bk::XnorKernel::kMmaWide;
  if (want == "mma_tall") return bk::XnorKernel::kMmaTall;
  return s.group_out() <= 64 ? bk::XnorKernel::kMmaTall : bk::XnorKernel::kMmaWide;
}

bk::ConvShape conv_shape(const ConvGeometry& g, bool pad_ones, bool out_channels_last) {
  bk::ConvShape s{};
  s.batch = g.n;
  s.in_h = g.h;
  s.in_w = g.w;
  s.groups = g.groups;
  s.group_channels = g.cg();
  s.group_words = g.cw();
  s.out_channels = g.out_channels;
  s.kernel_h = static_cast<int>(g.kh);
  s.kernel_w = static_cast<int>(g.kw);
  s.stride_h = static_cast<int>(g.sh);
  s.stride_w = static_cast<int>(g.sw);
  s.pad_h = static_cast<int>(g.ph);
  s.pad_w = static_cast<int>(g.pw);
  s.dil_h = static_cast<int>(g.dh);
  s.dil_w = static_cast<int>(g.dw);
  s.out_h = g.oh;
  s.out_w = g.ow;
  s.pad_ones = pad_ones;
  s.out_channels_last = out_channels_last;
  return s;
}

// A linear layer as the 1x1 convolution of a 1x1 image per row: output [M, O] is the channels-last layout.
ConvGeometry linear_geometry(int64_t rows, int64_t in_features, int64_t out_features) {
  ConvGeometry g{};
  g.n = rows;
  g.c = in_features;
  g.h = g.w = 1;
  g.out_channels = out_features;
  g.groups = 1;
  g.kh = g.kw = g.sh = g.sw = g.dh = g.dw = 1;
  g.ph = g.pw = 0;
  g.oh = g.ow = 1;
  return g;
}

// Sign bits of x [N, C, H, W] (any strides) -> int64 [N, H, W, groups, ceil((C/groups)/64)].
at::Tensor pack_activations(const at::Tensor& x, int64_t groups, cudaStream_t stream) {
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3), cg = c / groups;
  at::Tensor out = at::empty({n, h, w, groups, packed_words(cg)}, x.options().dtype(at::kLong));
  if (out.numel() == 0) return out;
  SPARSECOMP_BINARY_DISPATCH(x.scalar_type(), "binary_pack_activations_cuda", [&] {
    if (x.is_contiguous(at::MemoryFormat::ChannelsLast)) {
      // Every pixel's C channels are contiguous: warp-ballot packing along them.
      C10_CUDA_CHECK(bk::launch_bitpack_rows(device_ptr<scalar_t>(x), n * h * w, c, cg, groups,
                                             mutable_word_ptr(out), stream));
    } else {
      C10_CUDA_CHECK(bk::launch_bitpack_strided(device_ptr<scalar_t>(x), n, h, w, x.stride(0), x.stride(1),
                                                x.stride(2), x.stride(3), groups, cg, mutable_word_ptr(out), stream));
    }
  });
  return out;
}

// Weight popcounts per (output, tap) and per output row.
struct WeightPopcounts {
  at::Tensor tap_pop, row_pop;
};

WeightPopcounts weight_popcounts(const at::Tensor& weight_bits, int64_t out_channels, int64_t taps,
                                 int64_t tap_bits, cudaStream_t stream) {
  const at::TensorOptions opts = weight_bits.options().dtype(at::kInt);
  WeightPopcounts p{at::empty({out_channels, taps}, opts), at::empty({out_channels}, opts)};
  C10_CUDA_CHECK(bk::launch_weight_popcounts(word_ptr(weight_bits), out_channels, static_cast<int>(taps), tap_bits,
                                             p.tap_pop.mutable_data_ptr<int32_t>(),
                                             p.row_pop.mutable_data_ptr<int32_t>(), stream));
  return p;
}

// out = act(alpha * conv(sign(x), sign(W)) + bias) (XNOR) or act(alpha * conv(x, sign(W)) + bias) (BinaryConnect),
// for validated operands; out is allocated by the caller in the memory format s.out_channels_last says.
void run_binary(const char* op, const at::Tensor& x, const at::Tensor& weight_bits, const at::Tensor& alpha,
                const at::Tensor& bias, const bk::ConvShape& s, bool binarize_input, bool relu, at::Tensor& out) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (!binarize_input) {
    // BinaryConnect reads x in place through its strides (any layout, padded taps read as 0). Its own kernel rather
    // than at::conv2d with +-alpha weights: cuDNN may use TF32 for float32, which would lose the fp32 accuracy.
    SPARSECOMP_BINARY_DISPATCH(x.scalar_type(), "binaryconnect_cuda", [&] {
      using D = typename DeviceType<scalar_t>::type;
      const bk::RealInput<D> in{device_ptr<scalar_t>(x), x.stride(0), x.stride(1), x.dim() == 4 ? x.stride(2) : 0,
                                x.dim() == 4 ? x.stride(3) : 0};
      const bk::Epilogue<D> e{device_ptr<scalar_t>(alpha), device_ptr<scalar_t>(bias), relu,
                              reinterpret_cast<D*>(out.mutable_data_ptr<scalar_t>())};
      C10_CUDA_CHECK(bk::launch_binaryconnect_conv(in, s, word_ptr(weight_bits), e, stream));
    });
    return;
  }
  const bk::XnorKernel kernel = pick_xnor_kernel(op, s, x);
  at::Tensor xbits;
  if (x.dim() == 4) {
    xbits = pack_activations(x, s.groups, stream);
  } else {  // linear: x [M, K] is the NCHW image [M, K, 1, 1]
    xbits = pack_activations(x.unsqueeze(-1).unsqueeze(-1), 1, stream);
  }
  const WeightPopcounts pops = weight_popcounts(weight_bits, s.out_channels, s.taps(), s.group_channels, stream);
  const bk::PackedWeight wt{word_ptr(weight_bits), pops.tap_pop.const_data_ptr<int32_t>(),
                            pops.row_pop.const_data_ptr<int32_t>()};
  SPARSECOMP_BINARY_DISPATCH(x.scalar_type(), "binary_xnor_cuda", [&] {
    using D = typename DeviceType<scalar_t>::type;
    const bk::Epilogue<D> e{device_ptr<scalar_t>(alpha), device_ptr<scalar_t>(bias), relu,
                            reinterpret_cast<D*>(out.mutable_data_ptr<scalar_t>())};
    C10_CUDA_CHECK(bk::launch_xnor_conv(xbits.numel() > 0 ? word_ptr(xbits) : nullptr, s, wt, e, kernel, stream));
  });
}

at::Tensor bitpack_cuda(const at::Tensor& x_in) {
  TORCH_CHECK(x_in.dim() >= 1, "bitpack: x must have at least one dimension, got a scalar");
  const at::ScalarType t = x_in.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble,
              "bitpack: on CUDA x must be float32, float16, bfloat16 or float64, got ", t);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const int64_t len = x_in.size(-1), words = packed_words(len);
  std::vector<int64_t> out_shape(x_in.sizes().begin(), x_in.sizes().end());
  out_shape.back() = words;
  at::Tensor out = at::empty(out_shape, x_in.options().dtype(at::kLong));
  const int64_t rows = len == 0 ? 0 : x_in.numel() / len;
  if (rows == 0 || words == 0) return out;
  const at::Tensor x = x_in.contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  SPARSECOMP_BITPACK_DISPATCH(t, "bitpack_cuda", [&] {
    C10_CUDA_CHECK(bk::launch_bitpack_rows(device_ptr<scalar_t>(x), rows, len, len, 1, mutable_word_ptr(out), stream));
  });
  return out;
}

at::Tensor bitunpack_cuda(const at::Tensor& packed_in, int64_t size) {
  TORCH_CHECK(packed_in.dim() >= 1, "bitunpack: packed must have at least one dimension, got a scalar");
  TORCH_CHECK(packed_in.scalar_type() == at::kLong, "bitunpack: packed must be int64, got ", packed_in.scalar_type());
  TORCH_CHECK(size >= 0 && packed_words(size) == packed_in.size(-1), "bitunpack: size=", size, " needs ",
              packed_words(std::max<int64_t>(size, 0)), " words in the last dim of packed, which has ",
              packed_in.size(-1));
  const c10::cuda::CUDAGuard guard(packed_in.device());
  std::vector<int64_t> out_shape(packed_in.sizes().begin(), packed_in.sizes().end());
  out_shape.back() = size;
  at::Tensor out = at::empty(out_shape, packed_in.options().dtype(at::kFloat));
  const int64_t words = packed_in.size(-1);
  const int64_t rows = words == 0 ? 0 : packed_in.numel() / words;
  if (rows == 0 || size == 0) return out;
  const at::Tensor packed = packed_in.contiguous();
  C10_CUDA_CHECK(bk::launch_bitunpack(word_ptr(packed), rows, words, size, out.mutable_data_ptr<float>(),
                                      c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor binary_linear_cuda(const at::Tensor& x, const at::Tensor& weight_bits_in, const at::Tensor& alpha_in,
                              const c10::optional<at::Tensor>& bias_in, int64_t in_features, bool binarize_input,
                              c10::string_view activation) {
  const char* op = "binary_linear";
  check_binary_linear_args(op, x, weight_bits_in, alpha_in, bias_in, in_features);
  check_cuda_dtype(op, x);
  const bool relu = parse_binary_activation(op, std::string(activation)) == 1;
  const ConvGeometry g = linear_geometry(x.size(0), in_features, weight_bits_in.size(0));
  check_kernel_limits(op, g.cw() * 64, g);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty({g.n, g.out_channels}, x.options());
  if (out.numel() == 0) return out;
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  run_binary(op, x, weight_bits_in.contiguous(), alpha_in.contiguous(), bias,
             conv_shape(g, /*pad_ones=*/false, /*out_channels_last=*/true), binarize_input, relu, out);
  return out;
}

at::Tensor binary_conv2d_cuda(const at::Tensor& x, const at::Tensor& weight_bits_in, const at::Tensor& alpha_in,
                              const c10::optional<at::Tensor>& bias_in, int64_t in_channels,
                              at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                              at::IntArrayRef dilation, int64_t groups, bool binarize_input,
                              c10::string_view padding_mode, c10::string_view activation) {
  const char* op = "binary_conv2d";
  const ConvGeometry g = check_binary_conv2d_args(op, x, weight_bits_in, alpha_in, bias_in, in_channels, kernel_size,
                                                  stride, padding, dilation, groups);
  check_cuda_dtype(op, x);
  const std::string mode(padding_mode);
  TORCH_CHECK(mode == "zeros" || mode == "ones", op, ": padding_mode must be 'zeros' or 'ones', got '", mode, "'");
  TORCH_CHECK(binarize_input || mode == "zeros", op,
              ": padding_mode='ones' needs binarize_input=True (real activations are zero-padded)");
  const bool relu = parse_binary_activation(op, std::string(activation)) == 1;
  check_kernel_limits(op, g.taps() * g.cw() * 64, g);
  const c10::cuda::CUDAGuard guard(x.device());
  const bool channels_last = binary_conv_channels_last(x);
  at::Tensor out = at::empty({g.n, g.out_channels, g.oh, g.ow},
                             x.options().memory_format(channels_last ? at::MemoryFormat::ChannelsLast
                                                                     : at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  run_binary(op, x, weight_bits_in.contiguous(), alpha_in.contiguous(), bias,
             conv_shape(g, mode == "ones", channels_last), binarize_input, relu, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsecomp, CUDA, m) {
  m.impl("bitpack", &bitpack_cuda);
  m.impl("bitunpack", &bitunpack_cuda);
  m.impl("binary_linear", &binary_linear_cuda);
  m.impl("binary_conv2d", &binary_conv2d_cuda);
}

}  // namespace sparsecomp
