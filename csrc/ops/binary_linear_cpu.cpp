// CPU binding of binary_linear: y = act(alpha * (s(x) @ sign(W)^T) + bias).
// binarize_input: x is packed to sign bits (part of the op's time) and multiplied by XNOR-popcount, with a
// GEMV path for batch <= 4 that streams the weights in their stored order and a panel GEMM above that.
// BinaryConnect (binarize_input=false): masked sums of the real x over the +1 weights.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "binary_checks.h"
#include "binary_cpu_common.h"

namespace sparsecomp {
namespace {

using cpu::kPanelCols;

void binary_linear_packed(const cpu_binding::BinaryKernels& kern, const at::Tensor& x, const at::Tensor& weight_bits,
                          const cpu::BinaryEpilogue& ep, int64_t k_words) {
  const int64_t m = x.size(0), k = x.size(1), rows = weight_bits.size(0);
  const uint64_t* w = cpu_binding::words_of(weight_bits);
  at::Tensor xp_t = cpu_binding::word_buffer(m * k_words);
  uint64_t* xp = cpu_binding::words_of(xp_t);
  const float* xd = x.data_ptr<float>();
  at::parallel_for(0, m, cpu_binding::binary_grain(m, m * k_words * 8), [&](int64_t b, int64_t e) {
    kern.bitpack_rows(xd + b * k, e - b, k, k, xp + b * k_words, k_words);
  });
  const int64_t threads = at::get_num_threads();
  const int64_t word_ops = m * rows * k_words;
  if (m <= cpu::kGemvMaxBatch) {
    const int64_t chunk = cpu_binding::row_chunk_size(rows, 1, threads);
    const int64_t chunks = (rows + chunk - 1) / chunk;
    at::parallel_for(0, chunks, cpu_binding::binary_grain(chunks, word_ops), [&](int64_t b, int64_t e) {
      for (int64_t c = b; c < e; ++c) {
        const int64_t r0 = c * chunk, r1 = std::min(rows, r0 + chunk);
        kern.gemv(w + r0 * k_words, k_words, r0, r1 - r0, xp, k_words, m, k_words, ep);
      }
    });
    return;
  }
  const int64_t n_panels = (m + kPanelCols - 1) / kPanelCols;
  at::Tensor panels_t = cpu_binding::word_buffer(n_panels * k_words * kPanelCols);
  uint64_t* panels = cpu_binding::words_of(panels_t);
  cpu_binding::rows_to_panels(xp, m, k_words, panels);
  const int64_t chunk = cpu_binding::row_chunk_size(rows, n_panels, threads);
  const int64_t chunks = (rows + chunk - 1) / chunk;
  const int64_t tasks = chunks * n_panels;
  at::parallel_for(0, tasks, cpu_binding::binary_grain(tasks, word_ops), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t p = t % n_panels, c = t / n_panels;
      const int64_t r0 = c * chunk, r1 = std::min(rows, r0 + chunk);
      const int64_t col0 = p * kPanelCols;
      kern.gemm_panel(w + r0 * k_words, k_words, r0, r1 - r0, panels + p * k_words * kPanelCols, k_words, col0,
                      std::min(kPanelCols, m - col0), ep);
    }
  });
}

void binary_linear_connect(const cpu_binding::BinaryKernels& kern, const at::Tensor& x, const at::Tensor& weight_bits,
                           const at::Tensor& alpha, const c10::optional<at::Tensor>& bias, bool relu, at::Tensor& out,
                           int64_t k_words) {
  const int64_t m = x.size(0), k = x.size(1), rows = weight_bits.size(0);
  const uint64_t* w = cpu_binding::words_of(weight_bits);
  const float* xd = x.data_ptr<float>();
  float* o = out.data_ptr<float>();
  // o first holds the sums over +1 weights; sum(x * s) = 2 * pos_sum - sum(x).
  const int64_t threads = at::get_num_threads();
  const int64_t chunk = cpu_binding::row_chunk_size(rows, 1, threads);
  const int64_t chunks = (rows + chunk - 1) / chunk;
  at::parallel_for(0, chunks, cpu_binding::binary_grain(chunks, m * rows * k_words * 4), [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      const int64_t r0 = c * chunk, r1 = std::min(rows, r0 + chunk);
      kern.connect(w + r0 * k_words, k_words, r1 - r0, xd, k, m, k, o + r0, rows);
    }
  });
  const at::Tensor row_sums = x.sum(1);
  const float* rs = row_sums.data_ptr<float>();
  const float* al = alpha.data_ptr<float>();
  const float* bi = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  at::parallel_for(0, m, cpu_binding::binary_grain(m, m * rows), [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j)
      for (int64_t r = 0; r < rows; ++r) {
        float v = al[r] * (2.0f * o[j * rows + r] - rs[j]) + (bi ? bi[r] : 0.0f);
        o[j * rows + r] = relu ? std::max(v, 0.0f) : v;
      }
  });
}

at::Tensor binary_linear_cpu(const at::Tensor& x_in, const at::Tensor& weight_bits_in, const at::Tensor& alpha_in,
                             const c10::optional<at::Tensor>& bias_in, int64_t in_features, bool binarize_input,
                             c10::string_view activation) {
  const char* op = "binary_linear";
  TORCH_CHECK(x_in.scalar_type() == at::kFloat, op, ": x must be float32 on CPU, got ", x_in.scalar_type());
  check_binary_linear_args(op, x_in, weight_bits_in, alpha_in, bias_in, in_features);
  const bool relu = parse_binary_activation(op, std::string(activation)) == 1;
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight_bits = weight_bits_in.contiguous();
  const at::Tensor alpha = alpha_in.contiguous();
  c10::optional<at::Tensor> bias;
  if (bias_in.has_value()) bias = bias_in->contiguous();
  const int64_t m = x.size(0), rows = weight_bits.size(0), k_words = weight_bits.size(1);
  check_tail_bits_zero(op, cpu_binding::words_of(weight_bits), rows, k_words, in_features);
  at::Tensor out = at::empty({m, rows}, x.options());
  if (m == 0 || rows == 0) return out;
  const auto kern = cpu_binding::binary_kernels();
  if (!binarize_input) {
    binary_linear_connect(kern, x, weight_bits, alpha, bias, relu, out, k_words);
    return out;
  }
  const int32_t base = static_cast<int32_t>(in_features);
  cpu::BinaryEpilogue ep{alpha.data_ptr<float>(),
                         bias.has_value() ? bias->data_ptr<float>() : nullptr,
                         relu ? cpu::Activation::Relu : cpu::Activation::None,
                         nullptr, &base, nullptr, 0,
                         out.data_ptr<float>(), /*row_stride=*/1, /*col_stride=*/rows};
  binary_linear_packed(kern, x, weight_bits, ep, k_words);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsecomp, CPU, m) { m.impl("binary_linear", &binary_linear_cpu); }

}  // namespace sparsecomp
