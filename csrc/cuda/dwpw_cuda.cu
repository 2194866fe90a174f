// CUDA binding of dwpw_conv2d (fused depthwise -> pointwise convolution): the argument checks shared with the CPU
// binding (ops/dwpw_checks.h), then the shared-memory tiled kernel of kernels/dwpw.cuh.
//
// Layouts: the kernel reads NCHW. A channels_last (or otherwise strided) x is first made NCHW-contiguous (one copy
// of the input), and the result is handed back channels_last when x was, so the caller's layout is preserved (one
// copy of the output). A channels_last kernel would save both copies; not written yet.
// Dtypes: float32, float16, bfloat16 (fp32 accumulation); the checks require every tensor to match x.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <string>

#include "../ops/dwpw_checks.h"
#include "kernels/dwpw.cuh"

namespace sparsecomp {
namespace {

namespace kern = sparsecomp::cuda;

template <typename T>
struct DwpwDeviceType {
  using type = T;
};
template <>
struct DwpwDeviceType<at::Half> {
  using type = __half;
};
template <>
struct DwpwDeviceType<at::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename T>
const typename DwpwDeviceType<T>::type* dptr(const at::Tensor& t) {
  return t.defined() ? reinterpret_cast<const typename DwpwDeviceType<T>::type*>(t.const_data_ptr<T>()) : nullptr;
}

at::Tensor opt_contiguous(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? t->contiguous() : at::Tensor();
}

at::Tensor dwpw_conv2d_cuda(const at::Tensor& x, const at::Tensor& dw_weight, const c10::optional<at::Tensor>& dw_scale,
                            const c10::optional<at::Tensor>& dw_shift, c10::string_view mid_activation,
                            const at::Tensor& pw_weight, const c10::optional<at::Tensor>& pw_bias,
                            c10::string_view activation, at::IntArrayRef stride, at::IntArrayRef padding) {
  constexpr const char* op = "sparsecomp::dwpw_conv2d";
  const cpu::DwpwShape s = check_dwpw_conv2d_args(op, x, dw_weight, dw_scale, dw_shift, std::string(mid_activation),
                                                  pw_weight, pw_bias, std::string(activation), stride, padding);
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, op,
              ": on CUDA x must be float32, float16 or bfloat16, got ", dtype);
  TORCH_CHECK(x.is_cuda(), op, ": x must be a CUDA tensor, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.size(0);
  at::Tensor out = at::empty({n, s.o, s.oh, s.ow}, x.options());
  if (out.numel() > 0) {
    const at::Tensor xc = x.contiguous();  // channels_last / strided -> NCHW (see the header comment)
    const at::Tensor dw = dw_weight.contiguous(), pw = pw_weight.reshape({s.o, s.c}).contiguous();
    const at::Tensor sc = opt_contiguous(dw_scale), sh = opt_contiguous(dw_shift), b = opt_contiguous(pw_bias);
    const kern::DwpwCudaShape ks{n,
                                 s.c,
                                 s.h,
                                 s.w,
                                 s.o,
                                 s.oh,
                                 s.ow,
                                 static_cast<int>(s.k),
                                 static_cast<int>(s.sh),
                                 static_cast<int>(s.sw),
                                 static_cast<int>(s.ph),
                                 static_cast<int>(s.pw),
                                 static_cast<int>(s.mid_act),
                                 static_cast<int>(s.act)};
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const auto launch = [&](auto tag) {
      using scalar_t = decltype(tag);
      using D = typename DwpwDeviceType<scalar_t>::type;
      C10_CUDA_CHECK(kern::launch_dwpw_conv2d<D>(ks, dptr<scalar_t>(xc), dptr<scalar_t>(dw), dptr<scalar_t>(sc),
                                                 dptr<scalar_t>(sh), dptr<scalar_t>(pw), dptr<scalar_t>(b),
                                                 reinterpret_cast<D*>(out.mutable_data_ptr<scalar_t>()), stream));
    };
    if (dtype == at::kFloat) {
      launch(float{});
    } else if (dtype == at::kHalf) {
      launch(at::Half{});
    } else {
      launch(at::BFloat16{});
    }
  }
  return s.channels_last ? out.contiguous(at::MemoryFormat::ChannelsLast) : out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsecomp, CUDA, m) { m.impl("dwpw_conv2d", &dwpw_conv2d_cuda); }

}  // namespace sparsecomp
