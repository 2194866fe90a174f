// CUDA binding of codebook_mm: checks (shared with the CPU binding), the small-batch GEMV kernel, and for larger
// batches dequantize-then-GEMM through cuBLAS (kernels in kernels/codebook.cuh).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>

#include "../ops/codebook_checks.h"
#include "kernels/codebook.cuh"

namespace sparsecomp {
namespace {

namespace kern = sparsecomp::cuda;

template <typename T>
struct CodebookDeviceType {
  using type = T;
};
template <>
struct CodebookDeviceType<at::Half> {
  using type = __half;
};
template <>
struct CodebookDeviceType<at::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename T>
const typename CodebookDeviceType<T>::type* cptr(const at::Tensor& t) {
  return t.defined() ? reinterpret_cast<const typename CodebookDeviceType<T>::type*>(t.const_data_ptr<T>()) : nullptr;
}

at::Tensor codebook_mm_cuda(const at::Tensor& x, const at::Tensor& packed_indices, const at::Tensor& codebook,
                            const c10::optional<at::Tensor>& bias, int64_t in_features, int64_t bits) {
  constexpr const char* op = "sparsecomp::codebook_mm";
  const CodebookShape s = check_codebook_mm_args(op, x, packed_indices, codebook, bias, in_features, bits);
  const auto dtype = codebook.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, op,
              ": on CUDA the codebook must be float32, float16 or bfloat16, got ", dtype);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t batch = x.size(0), rows = s.rows;
  at::Tensor out = at::empty({batch, rows}, x.options());
  if (out.numel() == 0) return out;
  if (in_features == 0) return bias.has_value() ? out.copy_(bias->unsqueeze(0).expand_as(out)) : out.zero_();
  const at::Tensor xc = x.contiguous(), pk = packed_indices.contiguous(), cb = codebook.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const kern::CodebookView w{reinterpret_cast<const uint32_t*>(pk.const_data_ptr<int32_t>()), s.row_words, rows,
                             in_features, static_cast<int>(bits), s.per_row ? (int64_t{1} << bits) : 0};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "codebook_mm_cuda", [&] {
    using D = typename CodebookDeviceType<scalar_t>::type;
    if (batch <= kern::kCodebookSmallBatchMax) {
      D* y = reinterpret_cast<D*>(out.mutable_data_ptr<scalar_t>());
      C10_CUDA_CHECK(kern::launch_codebook_gemv(cptr<scalar_t>(xc), in_features, batch, w, cptr<scalar_t>(cb),
                                                cptr<scalar_t>(b), y, rows, stream));
    } else {
      at::Tensor dense = at::empty({rows, in_features}, x.options());
      C10_CUDA_CHECK(kern::launch_codebook_dequant(w, cptr<scalar_t>(cb),
                                                   reinterpret_cast<D*>(dense.mutable_data_ptr<scalar_t>()), stream));
      out = b.defined() ? at::addmm(b, xc, dense.t()) : at::mm(xc, dense.t());
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsecomp, CUDA, m) { m.impl("codebook_mm", &codebook_mm_cuda); }

}  // namespace sparsecomp
