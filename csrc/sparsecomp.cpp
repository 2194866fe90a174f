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
