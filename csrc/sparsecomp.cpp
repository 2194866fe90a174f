// The one place where op schemas are declared, plus the pybind11 module that exposes build information.
// Backends register implementations with TORCH_LIBRARY_IMPL in csrc/ops/*.cpp (CPU) and csrc/cuda/*.cu.
#include <torch/extension.h>
#include <torch/library.h>

#include "cpu/cpu_features.h"

TORCH_LIBRARY(sparsecomp, m) {
  // y = x @ W^T + bias with W in tiled-CSR form (csrc/cpu/spmm.h). x: [batch, in_features].
  m.def("sparse_linear(Tensor x, Tensor values, Tensor col_idx, Tensor row_ptr, Tensor? bias, int in_features)"
        " -> Tensor");
  // out[n] = W @ x[n] + bias[:, None] for x [batch, in_features, columns]: the im2col form of a convolution.
  m.def("sparse_matmul(Tensor x, Tensor values, Tensor col_idx, Tensor row_ptr, Tensor? bias, int in_features)"
        " -> Tensor");
  // grad_x = grad_out @ W: [batch, in_features].
  m.def("sparse_linear_backward_input(Tensor grad_out, Tensor values, Tensor col_idx, Tensor row_ptr,"
        " int in_features) -> Tensor");
  // grad of the stored nonzeros only: grad_values[p] = sum_b grad_out[b, row(p)] * x[b, col(p)].
  m.def("sparse_linear_backward_values(Tensor grad_out, Tensor x, Tensor col_idx, Tensor row_ptr,"
        " int in_features) -> Tensor");

  // Binary (1-bit) layers. Packed layout (csrc/cpu/bitpack.h): sign bits along the last dim, bit i of int64
  // word w = element 64w+i (little-endian, so also bit i of int32 word v = element 32v+i), 1 means +1
  // (x >= 0, NaN -> -1) and 0 means -1; tail bits past the last element are 0.
  // bitpack: float [..., C] -> int64 [..., ceil(C/64)].
  m.def("bitpack(Tensor x) -> Tensor");
  // bitunpack: int64 [..., W] -> float32 [..., size] of +1/-1, W == ceil(size/64).
  m.def("bitunpack(Tensor packed, int size) -> Tensor");
  // y[m, o] = act(alpha[o] * sum_k s(x[m, k]) * sign(W[o, k]) + bias[o]), weight_bits [O, ceil(K/64)];
  // s = sign (+1 for v >= 0) when binarize_input, else identity (BinaryConnect). activation: 'none' | 'relu'.
  m.def("binary_linear(Tensor x, Tensor weight_bits, Tensor alpha, Tensor? bias, int in_features,"
        " bool binarize_input=True, str activation='none') -> Tensor");
  // y = act(alpha[o] * conv2d(s(x), sign(W), stride, padding, dilation, groups) + bias[o]) for NCHW x (or
  // channels_last; the output keeps x's memory format). weight_bits [O, kh, kw, ceil((C/groups)/64)].
  // padding_mode 'zeros': padded taps contribute 0, as in torch's zero-padded conv of s(x); 'ones': they
  // count as +1 (Larq style; binarize_input only).
  m.def("binary_conv2d(Tensor x, Tensor weight_bits, Tensor alpha, Tensor? bias, int in_channels,"
        " int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, int groups,"
        " bool binarize_input=True, str padding_mode='zeros', str activation='none') -> Tensor");

  // Codebook (weight-clustering) layers. y = x @ W^T + bias with W[o][k] = codebook[idx(o, k)] (codebook
  // [2^bits], one table per layer) or codebook[o][idx(o, k)] ([out_features, 2^bits], one per row).
  // packed_indices int32 [out_features, ceil(in_features * bits / 32)]: per row a little-endian bit stream,
  // index k at stream bits [k * bits, (k + 1) * bits), stream bit i = bit i % 32 of word i / 32 (csrc/cpu/codebook.h).
  m.def("codebook_mm(Tensor x, Tensor packed_indices, Tensor codebook, Tensor? bias, int in_features, int bits)"
        " -> Tensor");

  // Fused depthwise -> pointwise convolution (depthwise-separable block):
  //   mid = mid_activation(conv2d(x, dw_weight, stride, padding, groups=C) * dw_scale[c] + dw_shift[c])
  //   out = activation(conv2d(mid, pw_weight) + pw_bias)
  // x [N, C, H, W] (NCHW or channels_last; the output keeps the format), dw_weight [C, 1, k, k] with k in
  // {3, 5, 7}, dilation 1, stride in {1, 2}, padding in [0, k - 1]; dw_scale / dw_shift [C] (None: 1 / 0; a
  // depthwise bias is a shift, folded BN a scale and a shift); pw_weight [O, C, 1, 1] or [O, C]; pw_bias [O].
  // Activations: 'none' | 'relu' | 'relu6' | 'hardswish' (x * relu6(x + 3) / 6).
  m.def("dwpw_conv2d(Tensor x, Tensor dw_weight, Tensor? dw_scale, Tensor? dw_shift, str mid_activation,"
        " Tensor pw_weight, Tensor? pw_bias, str activation, int[2] stride, int[2] padding) -> Tensor");
}

namespace {

bool built_with_cuda() {
#ifdef SPARSECOMP_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "sparsecomp native library: build information (ops live in torch.ops.sparsecomp)";
  m.def("cpu_isa_detected", [] { return std::string(sparsecomp::cpu::isa_name(sparsecomp::cpu::detect_isa())); });
  m.def("cpu_isa", [] { return std::string(sparsecomp::cpu::isa_name(sparsecomp::cpu::active_isa())); });
  m.def("set_cpu_isa", &sparsecomp::cpu::set_active_isa,
        "Lower (or restore) the x86 code path used by CPU kernels: 'scalar', 'avx2' or 'avx512'.");
  m.def("built_with_cuda", &built_with_cuda);
#ifdef _OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
}
