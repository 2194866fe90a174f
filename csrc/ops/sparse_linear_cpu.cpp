// CPU binding of the sparse_linear ops: checks, layout changes (batch transposes), threading over
// nnz-balanced row chunks, and the choice of kernel (GEMV vs. batch-tiled SpMM, ISA).
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "sparse_cpu_common.h"

namespace sparsecomp {
namespace {

using namespace cpu_binding;

// Batches up to this size run one GEMV per sample (weights are streamed once per sample; below this the
// batch-tiled kernel wastes most of each vector on padding).
constexpr int64_t kGemvMaxBatch = 2;
// Threads split the samples (each packing its own tiles) instead of rows once the whole packed input would
// outgrow the caches (measured: 24200x363 gains 30%, 3025x363 loses 25%) and every thread gets a few tiles.
constexpr int64_t kStreamTilesPerThread = 4;
constexpr int64_t kStreamPackedBytes = int64_t(8) << 20;

template <typename T>
void forward(const at::Tensor& x, const SparseRows<T>& w, const T* bias, at::Tensor& out) {
  const int64_t batch = x.size(0);
  const int64_t rows = w.rows;
  const Isa isa = isa_for<T>();
  const int64_t chunks = chunk_count(rows);
  const std::vector<int64_t> bounds = balanced_row_bounds(w.row_ptr, rows, w.tiles, chunks);
  const T* xp = x.data_ptr<T>();
  T* yp = out.data_ptr<T>();
  const int64_t work = batch * w.row_ptr[rows * w.tiles];

  if (batch <= kGemvMaxBatch) {
    at::parallel_for(0, batch * chunks, parallel_grain(batch * chunks, work), [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / chunks, c = item % chunks;
        spmv<T>(isa, w, xp + b * w.cols, bias, yp + b * rows, bounds[c], bounds[c + 1]);
      }
    });
    return;
  }

  // Batch-tiled SpMM: each tile of the input is transposed to [cols][ldx] so one nonzero multiplies a
  // contiguous vector of samples held in registers.
  const int64_t tile = max_tile(isa);
  const int64_t n_tiles = (batch + tile - 1) / tile;
  const int64_t cols = w.cols;
  auto tile_bt = [&](int64_t t) { return std::min(tile, batch - t * tile); };
  auto tile_ld = [&](int64_t t) { return padded_width(isa, tile_bt(t)); };
  if (n_tiles >= kStreamTilesPerThread * at::get_num_threads() &&
      n_tiles * cols * tile * static_cast<int64_t>(sizeof(T)) > kStreamPackedBytes) {
    // Many samples (a conv's im2col rows): each task packs its own tile into a per-thread buffer and runs every
    // row on it while the tile is hot in L1/L2. Packing the whole input first would write (and page-fault) a
    // buffer as large as x and read it back from memory: at 24200x363 that was 80% of the time.
    at::parallel_for(0, n_tiles, 1, [&](int64_t begin, int64_t end) {
      thread_local std::vector<T> scratch;
      if (static_cast<int64_t>(scratch.size()) < cols * tile) scratch.resize(cols * tile);
      for (int64_t t = begin; t < end; ++t) {
        cpu::pack_transposed_portable<T>(xp + t * tile * cols, cols, tile_bt(t), scratch.data(), tile_ld(t), 0, cols);
        const cpu::DenseTile<T> xs{scratch.data(), tile_ld(t), tile_ld(t), tile_bt(t)};
        spmm<T>(isa, w, xs, bias, cpu::OutTile<T>{yp + t * tile * rows, rows, 1}, 0, rows);
      }
    });
    return;
  }
  at::Tensor xt = at::empty({n_tiles * cols * tile}, x.options());
  T* xtp = xt.data_ptr<T>();
  constexpr int64_t kPackCols = 256;
  const int64_t col_blocks = std::max<int64_t>(1, (cols + kPackCols - 1) / kPackCols);
  const int64_t pack_items = n_tiles * col_blocks;
  at::parallel_for(0, pack_items, parallel_grain(pack_items, work), [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item / col_blocks, k0 = (item % col_blocks) * kPackCols;
      cpu::pack_transposed_portable<T>(xp + t * tile * cols, cols, tile_bt(t), xtp + t * cols * tile, tile_ld(t), k0,
                                       std::min(cols, k0 + kPackCols));
    }
  });
  at::parallel_for(0, n_tiles * chunks, parallel_grain(n_tiles * chunks, work), [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item / chunks, c = item % chunks;
      const cpu::DenseTile<T> xs{xtp + t * cols * tile, tile_ld(t), tile_ld(t), tile_bt(t)};
      spmm<T>(isa, w, xs, bias, cpu::OutTile<T>{yp + t * tile * rows, rows, 1}, bounds[c], bounds[c + 1]);
    }
  });
}

at::Tensor sparse_linear_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& col_idx,
                             const at::Tensor& row_ptr, const c10::optional<at::Tensor>& bias, int64_t in_features) {
  constexpr const char* op = "sparsecomp::sparse_linear";
  const SparseShape s = check_sparse_weight(op, values, col_idx, row_ptr, in_features);
  check_dense_operand(op, "x", x, in_features, values);
  check_bias(op, bias, s.rows, values);
  TORCH_CHECK(values.scalar_type() == at::kFloat || values.scalar_type() == at::kDouble, op,
              ": on CPU values must be float32 or float64, got ", values.scalar_type());
  const at::Tensor v = values.contiguous(), ci = col_idx.contiguous(), rp = row_ptr.contiguous();
  check_row_ptr_cpu(op, rp, s.nnz);
  at::Tensor out = at::empty({x.size(0), s.rows}, x.options());
  if (out.numel() == 0) return out;
  const at::Tensor xc = x.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "sparse_linear_cpu", [&] {
    forward<scalar_t>(xc, view_of<scalar_t>(v, ci, rp, s, in_features), b.defined() ? b.data_ptr<scalar_t>() : nullptr,
                      out);
  });
  propagate_nonfinite_like_dense(xc, ci, rp, s.rows, s.tiles, out);
  return out;
}

at::Tensor sparse_linear_backward_input_cpu(const at::Tensor& grad_out, const at::Tensor& values,
                                            const at::Tensor& col_idx, const at::Tensor& row_ptr,
                                            int64_t in_features) {
  constexpr const char* op = "sparsecomp::sparse_linear_backward_input";
  const SparseShape s = check_sparse_weight(op, values, col_idx, row_ptr, in_features);
  check_dense_operand(op, "grad_out", grad_out, s.rows, values);
  TORCH_CHECK(values.scalar_type() == at::kFloat || values.scalar_type() == at::kDouble, op,
              ": on CPU values must be float32 or float64, got ", values.scalar_type());
  const at::Tensor v = values.contiguous(), ci = col_idx.contiguous(), rp = row_ptr.contiguous();
  check_row_ptr_cpu(op, rp, s.nnz);
  const int64_t batch = grad_out.size(0);
  if (batch == 0 || in_features == 0) return at::zeros({batch, in_features}, grad_out.options());
  const at::Tensor gyt = grad_out.t().contiguous();  // [rows, batch]
  const int64_t chunks = chunk_count(s.rows);
  // Each chunk of rows scatters into its own [in_features, batch] partial sum: no atomics, no races.
  at::Tensor partial = at::zeros({chunks, in_features, batch}, grad_out.options());
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "sparse_linear_backward_input_cpu", [&] {
    const SparseRows<scalar_t> w = view_of<scalar_t>(v, ci, rp, s, in_features);
    const std::vector<int64_t> bounds = balanced_row_bounds(w.row_ptr, s.rows, s.tiles, chunks);
    scalar_t* pp = partial.data_ptr<scalar_t>();
    const scalar_t* g = gyt.data_ptr<scalar_t>();
    at::parallel_for(0, chunks, parallel_grain(chunks, batch * s.nnz), [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c)
        cpu::spmm_t_rows_portable<scalar_t>(w, g, batch, pp + c * in_features * batch, bounds[c], bounds[c + 1]);
    });
  });
  return partial.sum(0).t().contiguous();
}

at::Tensor sparse_linear_backward_values_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                             const at::Tensor& col_idx, const at::Tensor& row_ptr,
                                             int64_t in_features) {
  constexpr const char* op = "sparsecomp::sparse_linear_backward_values";
  const SparseShape s = check_backward_values_args(op, grad_out, x, col_idx, row_ptr, in_features);
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": on CPU x must be float32 or float64, got ", x.scalar_type());
  const at::Tensor ci = col_idx.contiguous(), rp = row_ptr.contiguous();
  check_row_ptr_cpu(op, rp, s.nnz);
  at::Tensor grad_values = at::empty({s.nnz}, x.options());
  if (s.nnz == 0) return grad_values;
  const int64_t batch = x.size(0);
  if (batch == 0) return grad_values.zero_();
  const at::Tensor gyt = grad_out.t().contiguous(), xt = x.t().contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sparse_linear_backward_values_cpu", [&] {
    const SparseRows<scalar_t> w{nullptr, reinterpret_cast<const uint16_t*>(ci.data_ptr<int16_t>()),
                                 rp.data_ptr<int64_t>(), s.rows, in_features, s.tiles};
    const int64_t chunks = chunk_count(s.rows);
    const std::vector<int64_t> bounds = balanced_row_bounds(w.row_ptr, s.rows, s.tiles, chunks);
    const scalar_t* g = gyt.data_ptr<scalar_t>();
    const scalar_t* xp = xt.data_ptr<scalar_t>();
    scalar_t* gv = grad_values.data_ptr<scalar_t>();
    at::parallel_for(0, chunks, parallel_grain(chunks, batch * s.nnz), [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c)
        cpu::sddmm_rows_portable<scalar_t>(w, g, xp, batch, gv, bounds[c], bounds[c + 1]);
    });
  });
  return grad_values;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsecomp, CPU, m) {
  m.impl("sparse_linear", &sparse_linear_cpu);
  m.impl("sparse_linear_backward_input", &sparse_linear_backward_input_cpu);
  m.impl("sparse_linear_backward_values", &sparse_linear_backward_values_cpu);
}

}  // namespace sparsecomp
