// CUDA binding of the sparse_linear ops: argument checks (shared with the CPU binding), layout changes (batch
// transposes, padding of the batch to the 16-byte vector width), the choice of kernel, and the launch on the
// current stream. Nothing here waits for the device: row_ptr contents are not validated on the host (that would
// need a copy back); the kernels clamp every row segment and skip out-of-range columns instead, so a malformed
// structure gives wrong numbers, never an illegal memory access.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>

#include "../ops/sparse_linear_checks.h"
#include "kernels/spmm.cuh"

namespace sparsecomp {
namespace {

namespace kern = sparsecomp::cuda;

static_assert(kern::kTileCols == kTileCols, "column tile width differs between the CUDA kernels and the checks");

// Rows at or above which the SpMM kernel runs rows longest-first (a sort per call; worth it once there are enough
// rows for load imbalance to matter).
constexpr int64_t kSwizzleMinRows = 128;

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

template <typename T>
typename DeviceType<T>::type* mutable_device_ptr(at::Tensor& t) {
  return reinterpret_cast<typename DeviceType<T>::type*>(t.mutable_data_ptr<T>());
}

// float32, float16 and bfloat16 (no float64 on CUDA: the kernels accumulate in fp32).
#define SPARSECOMP_DISPATCH_CUDA_FLOATS(TYPE, NAME, ...)              \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                      \
                     AT_DISPATCH_CASE(at::ScalarType::Float, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::ScalarType::Half, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::ScalarType::BFloat16, __VA_ARGS__))

void check_cuda_dtype(const char* op, const char* name, at::ScalarType t) {
  TORCH_CHECK(t == at::kFloat || t == at::kHalf || t == at::kBFloat16, op, ": on CUDA ", name,
              " must be float32, float16 or bfloat16, got ", t);
}

// The SpMM kernel stages global column indices as int32, and the row swizzle stores rows as int32.
void check_index_range(const char* op, const SparseShape& s, int64_t in_features) {
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  TORCH_CHECK(in_features <= kMax && s.rows <= kMax, op,
              ": on CUDA in_features and the number of rows must be < 2^31, got ", in_features, " and ", s.rows);
}

kern::SparseStructure structure_of(const at::Tensor& col_idx, const at::Tensor& row_ptr, const SparseShape& s,
                                   int64_t in_features) {
  return {reinterpret_cast<const uint16_t*>(col_idx.const_data_ptr<int16_t>()), row_ptr.const_data_ptr<int64_t>(),
          s.rows, in_features, s.tiles, s.nnz};
}

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// t [n, f] -> [f, ld] contiguous and 16-byte aligned, columns n..ld-1 zero (the kernels read whole vectors, and zero
// pads keep the padded outputs finite).
at::Tensor transpose_padded(const at::Tensor& t, int64_t ld) {
  const int64_t n = t.size(0);
  if (ld == n) {
    at::Tensor out = t.t().contiguous();  // may alias t (e.g. t already a transposed view) at any offset
    return reinterpret_cast<std::uintptr_t>(out.const_data_ptr()) % 16 == 0 ? out
                                                                             : out.clone(at::MemoryFormat::Contiguous);
  }
  at::Tensor out = at::zeros({t.size(1), ld}, t.options());
  out.narrow(1, 0, n).copy_(t.t());
  return out;
}

// Rows by decreasing nonzero count (Sputnik's row swizzle): long rows start first and the rows sharing a warp have
// similar lengths, so fewer lanes idle at the end of a row or of the grid.
at::Tensor row_swizzle(const at::Tensor& row_ptr, const SparseShape& s) {
  const at::Tensor starts = row_ptr.slice(0, 0, s.rows * s.tiles, s.tiles);
  const at::Tensor ends = row_ptr.slice(0, s.tiles, s.rows * s.tiles + 1, s.tiles);
  return at::argsort(ends - starts, /*stable=*/false, /*dim=*/0, /*descending=*/true).to(at::kInt);
}

// y [batch, rows] = x @ W^T + bias on validated, contiguous operands.
at::Tensor forward(const at::Tensor& x, const at::Tensor& values, const at::Tensor& col_idx, const at::Tensor& row_ptr,
                   const at::Tensor& bias, const SparseShape& s, int64_t in_features) {
  const int64_t batch = x.size(0);
  at::Tensor out = at::empty({batch, s.rows}, x.options());
  if (out.numel() == 0) return out;
  const kern::SparseStructure w = structure_of(col_idx, row_ptr, s, in_features);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  if (batch <= kern::kSmallBatchMax) {
    // Row-major x: each sample's gathers are independent; no transpose pass is worth it at this size.
    const at::Tensor xc = x.contiguous();
    SPARSECOMP_DISPATCH_CUDA_FLOATS(values.scalar_type(), "sparse_linear_cuda", [&] {
      C10_CUDA_CHECK(kern::launch_spmm_small_batch(device_ptr<scalar_t>(values), w, device_ptr<scalar_t>(xc), batch,
                                                   device_ptr<scalar_t>(bias), mutable_device_ptr<scalar_t>(out),
                                                   stream));
    });
    return out;
  }

  const at::Tensor order = s.rows >= kSwizzleMinRows ? row_swizzle(row_ptr, s) : at::Tensor();
  SPARSECOMP_DISPATCH_CUDA_FLOATS(values.scalar_type(), "sparse_linear_cuda", [&] {
    using D = typename DeviceType<scalar_t>::type;
    const int64_t ld = round_up(batch, kern::vector_width<D>());
    const at::Tensor xt = transpose_padded(x, ld);  // [in_features, ld]
    at::Tensor yt = at::empty({s.rows, ld}, x.options());
    C10_CUDA_CHECK(kern::launch_spmm_transposed(device_ptr<scalar_t>(values), w,
                                                order.defined() ? order.const_data_ptr<int32_t>() : nullptr,
                                                device_ptr<scalar_t>(xt), ld, device_ptr<scalar_t>(bias),
                                                mutable_device_ptr<scalar_t>(yt), stream));
    out.copy_(yt.narrow(1, 0, batch).t());
  });
  return out;
}

at::Tensor sparse_linear_cuda(const at::Tensor& x, const at::Tensor& values, const at::Tensor& col_idx,
                              const at::Tensor& row_ptr, const c10::optional<at::Tensor>& bias, int64_t in_features) {
  constexpr const char* op = "sparsecomp::sparse_linear";
  const SparseShape s = check_sparse_weight(op, values, col_idx, row_ptr, in_features);
  check_dense_operand(op, "x", x, in_features, values);
  check_bias(op, bias, s.rows, values);
  check_cuda_dtype(op, "values", values.scalar_type());
  check_index_range(op, s, in_features);
  const c10::cuda::CUDAGuard guard(values.device());
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  return forward(x, values.contiguous(), col_idx.contiguous(), row_ptr.contiguous(), b, s, in_features);
}

// out[n] = W @ x[n] + bias for k-major x [batch, in_features, columns]: run as sparse_linear on the samples
// (batch * columns rows). Correct and simple; a kernel reading x in place (as the CPU path does) is future work.
at::Tensor sparse_matmul_cuda(const at::Tensor& x, const at::Tensor& values, const at::Tensor& col_idx,
                              const at::Tensor& row_ptr, const c10::optional<at::Tensor>& bias, int64_t in_features) {
  constexpr const char* op = "sparsecomp::sparse_matmul";
  const SparseShape s = check_sparse_weight(op, values, col_idx, row_ptr, in_features);
  check_kmajor_operand(op, x, in_features, values);
  check_bias(op, bias, s.rows, values);
  check_cuda_dtype(op, "values", values.scalar_type());
  check_index_range(op, s, in_features);
  const c10::cuda::CUDAGuard guard(values.device());
  const int64_t batch = x.size(0), columns = x.size(2);
  const at::Tensor rows = x.transpose(1, 2).reshape({batch * columns, in_features});
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const at::Tensor y =
      forward(rows, values.contiguous(), col_idx.contiguous(), row_ptr.contiguous(), b, s, in_features);
  return y.view({batch, columns, s.rows}).transpose(1, 2).contiguous();
}

// W^T in tiled-CSR form, built on the device with sort / searchsorted (no host sync). A stable sort by column keeps
// the nonzeros of each new row in increasing original-row order, which is what makes the result deterministic.
struct TransposedWeight {
  at::Tensor values, col_idx, row_ptr;
  SparseShape shape;
};

TransposedWeight transpose_weight(const at::Tensor& values, const at::Tensor& col_idx, const at::Tensor& row_ptr,
                                  const SparseShape& s, int64_t in_features) {
  const at::TensorOptions idx = row_ptr.options();  // int64 on the device
  const int64_t segments = s.rows * s.tiles;
  // (row, tile) segment of each nonzero: the last segment starting at or before it. The clamp keeps a malformed
  // row_ptr in range.
  const at::Tensor seg = at::searchsorted(row_ptr, at::arange(s.nnz, idx), /*out_int32=*/false, /*right=*/true)
                             .sub_(1)
                             .clamp_(0, segments - 1);
  const at::Tensor row = at::div(seg, s.tiles, "trunc");
  at::Tensor col = (seg - row * s.tiles).mul_(kTileCols).add_(col_idx.to(at::kInt).bitwise_and_(0xFFFF));
  col.clamp_max_(in_features);  // invalid columns go to one row past the end, which row_ptr_t never reaches

  auto [sorted_col, perm] = at::sort(col, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const int64_t tiles_t = num_col_tiles(s.rows);
  const at::Tensor row_sorted = row.index_select(0, perm);
  const at::Tensor key = tiles_t == 1 ? sorted_col : sorted_col * tiles_t + at::div(row_sorted, kTileCols, "trunc");
  at::Tensor row_ptr_t = at::searchsorted(key, at::arange(in_features * tiles_t + 1, idx));
  const at::Tensor in_tile = row_sorted.remainder(kTileCols);
  at::Tensor col_idx_t = at::where(in_tile >= 32768, in_tile - 65536, in_tile).to(at::kShort);  // uint16 bits
  return {values.index_select(0, perm), std::move(col_idx_t), std::move(row_ptr_t), {in_features, tiles_t, s.nnz}};
}

at::Tensor sparse_linear_backward_input_cuda(const at::Tensor& grad_out, const at::Tensor& values,
                                             const at::Tensor& col_idx, const at::Tensor& row_ptr,
                                             int64_t in_features) {
  constexpr const char* op = "sparsecomp::sparse_linear_backward_input";
  const SparseShape s = check_sparse_weight(op, values, col_idx, row_ptr, in_features);
  check_dense_operand(op, "grad_out", grad_out, s.rows, values);
  check_cuda_dtype(op, "values", values.scalar_type());
  check_index_range(op, s, in_features);
  const c10::cuda::CUDAGuard guard(values.device());
  const int64_t batch = grad_out.size(0);
  if (batch == 0 || in_features == 0 || s.rows == 0 || s.nnz == 0)
    return at::zeros({batch, in_features}, grad_out.options());
  const at::Tensor v = values.contiguous(), ci = col_idx.contiguous(), rp = row_ptr.contiguous();

  if (at::globalContext().deterministicAlgorithms()) {
    // grad_x = grad_out @ W is the forward op on W^T: no atomics, fixed summation order.
    const TransposedWeight wt = transpose_weight(v, ci, rp, s, in_features);
    return forward(grad_out, wt.values, wt.col_idx, wt.row_ptr, at::Tensor(), wt.shape, s.rows);
  }

  // Scatter each row's gradient into an fp32 [in_features, batch] buffer with atomics, then transpose back.
  const at::Tensor gyt = grad_out.t().contiguous();  // [rows, batch]
  at::Tensor gxt = at::zeros({in_features, batch}, grad_out.options().dtype(at::kFloat));
  const kern::SparseStructure w = structure_of(ci, rp, s, in_features);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  SPARSECOMP_DISPATCH_CUDA_FLOATS(values.scalar_type(), "sparse_linear_backward_input_cuda", [&] {
    C10_CUDA_CHECK(kern::launch_spmm_t_scatter(device_ptr<scalar_t>(v), w, device_ptr<scalar_t>(gyt), batch,
                                               gxt.mutable_data_ptr<float>(), stream));
  });
  at::Tensor grad_x = at::empty({batch, in_features}, grad_out.options());
  grad_x.copy_(gxt.t());
  return grad_x;
}

at::Tensor sparse_linear_backward_values_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                              const at::Tensor& col_idx, const at::Tensor& row_ptr,
                                              int64_t in_features) {
  constexpr const char* op = "sparsecomp::sparse_linear_backward_values";
  const SparseShape s = check_backward_values_args(op, grad_out, x, col_idx, row_ptr, in_features);
  check_cuda_dtype(op, "x", x.scalar_type());
  check_index_range(op, s, in_features);
  const c10::cuda::CUDAGuard guard(x.device());
  // Zero-filled, so entries that a malformed row_ptr leaves uncovered read 0 rather than stale memory.
  at::Tensor grad_values = at::zeros({s.nnz}, x.options());
  const int64_t batch = x.size(0);
  if (s.nnz == 0 || batch == 0 || s.rows == 0) return grad_values;
  const at::Tensor ci = col_idx.contiguous(), rp = row_ptr.contiguous();
  const kern::SparseStructure w = structure_of(ci, rp, s, in_features);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  SPARSECOMP_DISPATCH_CUDA_FLOATS(x.scalar_type(), "sparse_linear_backward_values_cuda", [&] {
    using D = typename DeviceType<scalar_t>::type;
    const int64_t ld = round_up(batch, kern::vector_width<D>());
    const at::Tensor gyt = transpose_padded(grad_out, ld);  // [rows, ld]
    const at::Tensor xt = transpose_padded(x, ld);          // [in_features, ld]
    C10_CUDA_CHECK(kern::launch_sddmm(w, device_ptr<scalar_t>(gyt), device_ptr<scalar_t>(xt), ld,
                                      mutable_device_ptr<scalar_t>(grad_values), stream));
  });
  return grad_values;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsecomp, CUDA, m) {
  m.impl("sparse_linear", &sparse_linear_cuda);
  m.impl("sparse_matmul", &sparse_matmul_cuda);
  m.impl("sparse_linear_backward_input", &sparse_linear_backward_input_cuda);
  m.impl("sparse_linear_backward_values", &sparse_linear_backward_values_cuda);
}

}  // namespace sparsecomp
