// CPU binding of sparse_matmul: out[n] = W @ x[n] (+ bias per row) for a k-major x [batch, in_features, columns].
// This is the im2col form of a convolution: x[n] is the unfolded image and out[n] is already the NCHW output,
// so samples are contiguous on both sides and no transposes are needed (tiles of full vector width are read in
// place; only a ragged last tile is copied into a zero-padded buffer).
#include <torch/library.h>

#include "sparse_cpu_common.h"

namespace sparsecomp {
namespace {

using namespace cpu_binding;

template <typename T>
void matmul(const at::Tensor& x, const SparseRows<T>& w, const T* bias, at::Tensor& out) {
  const int64_t batch = x.size(0), cols = w.cols, len = x.size(2), rows = w.rows;
  const Isa isa = isa_for<T>();
  const int64_t tile = max_tile(isa);
  const int64_t n_tiles = (len + tile - 1) / tile;
  const int64_t last_bt = len - (n_tiles - 1) * tile;
  const int64_t last_ld = padded_width(isa, last_bt);
  const bool pack_last = last_ld != last_bt;
  const T* xp = x.data_ptr<T>();
  T* yp = out.data_ptr<T>();
  const int64_t work = batch * len * w.row_ptr[rows * w.tiles];

  at::Tensor tail;
  if (pack_last) {
    tail = at::empty({batch * cols * last_ld}, x.options());
    T* tp = tail.data_ptr<T>();
    const int64_t first = (n_tiles - 1) * tile;
    at::parallel_for(0, batch, parallel_grain(batch, work), [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n)
        cpu::pack_rows_portable<T>(xp + n * cols * len + first, len, last_bt, tp + n * cols * last_ld, last_ld, 0,
                                   cols);
    });
  }
  const T* tp = pack_last ? tail.data_ptr<T>() : nullptr;
  const int64_t chunks = chunk_count(rows);
  const std::vector<int64_t> bounds = balanced_row_bounds(w.row_ptr, rows, w.tiles, chunks);
  const int64_t items = batch * n_tiles * chunks;
  at::parallel_for(0, items, parallel_grain(items, work), [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / (n_tiles * chunks), t = (item / chunks) % n_tiles, c = item % chunks;
      const bool last = t + 1 == n_tiles;
      const int64_t bt = last ? last_bt : tile;
      const cpu::DenseTile<T> xs = last && pack_last
                                       ? cpu::DenseTile<T>{tp + n * cols * last_ld, last_ld, last_ld, bt}
                                       : cpu::DenseTile<T>{xp + n * cols * len + t * tile, len, bt, bt};
      const cpu::OutTile<T> ys{yp + n * rows * len + t * tile, 1, len};
      spmm<T>(isa, w, xs, bias, ys, bounds[c], bounds[c + 1]);
    }
  });
}

at::Tensor sparse_matmul_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& col_idx,
                             const at::Tensor& row_ptr, const c10::optional<at::Tensor>& bias, int64_t in_features) {
  constexpr const char* op = "sparsecomp::sparse_matmul";
  const SparseShape s = check_sparse_weight(op, values, col_idx, row_ptr, in_features);
  check_kmajor_operand(op, x, in_features, values);
  check_bias(op, bias, s.rows, values);
  TORCH_CHECK(values.scalar_type() == at::kFloat || values.scalar_type() == at::kDouble, op,
              ": on CPU values must be float32 or float64, got ", values.scalar_type());
  const at::Tensor v = values.contiguous(), ci = col_idx.contiguous(), rp = row_ptr.contiguous();
  check_row_ptr_cpu(op, rp, s.nnz);
  at::Tensor out = at::empty({x.size(0), s.rows, x.size(2)}, x.options());
  if (out.numel() == 0) return out;
  const at::Tensor xc = x.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "sparse_matmul_cpu", [&] {
    matmul<scalar_t>(xc, view_of<scalar_t>(v, ci, rp, s, in_features), b.defined() ? b.data_ptr<scalar_t>() : nullptr,
                     out);
  });
  if (!all_finite(xc)) {
    // Dense semantics for non-finite inputs, applied to the samples as rows ([batch * columns, in_features]).
    at::Tensor out_rows = out.transpose(1, 2).reshape({-1, s.rows});
    const at::Tensor x_rows = xc.transpose(1, 2).reshape({-1, in_features}).contiguous();
    propagate_nonfinite_like_dense(x_rows, ci, rp, s.rows, s.tiles, out_rows);
    out.copy_(out_rows.view({x.size(0), x.size(2), s.rows}).transpose(1, 2));
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsecomp, CPU, m) { m.impl("sparse_matmul", &sparse_matmul_cpu); }

}  // namespace sparsecomp
