// CPU binding of the sparse_linear ops: checks, layout changes (batch transposes), threading over
// nnz-balanced row chunks, and the choice of kernel (GEMV vs. batch-tiled SpMM, ISA).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../cpu/cpu_features.h"
#include "../cpu/spmm.h"
#include "sparse_linear_checks.h"

namespace sparsecomp {
namespace {

using cpu::Isa;
using cpu::SparseRows;

// Batches up to this size run one GEMV per sample (weights are streamed once per sample; below this the
// batch-tiled kernel wastes most of each vector on padding).
constexpr int64_t kGemvMaxBatch = 2;

template <typename T>
SparseRows<T> view_of(const at::Tensor& values, const at::Tensor& col_idx, const at::Tensor& row_ptr,
                      const SparseShape& s, int64_t in_features) {
  return {values.data_ptr<T>(), reinterpret_cast<const uint16_t*>(col_idx.data_ptr<int16_t>()),
          row_ptr.data_ptr<int64_t>(), s.rows, in_features, s.tiles};
}

// row_ptr must start at 0, never decrease and end at nnz, or a kernel would read out of bounds.
void check_row_ptr_cpu(const char* op, const at::Tensor& row_ptr, int64_t nnz) {
  const int64_t* rp = row_ptr.data_ptr<int64_t>();
  const int64_t n = row_ptr.numel();
  TORCH_CHECK(rp[0] == 0 && rp[n - 1] == nnz, op, ": row_ptr must start at 0 and end at nnz=", nnz, ", got ", rp[0],
              " .. ", rp[n - 1]);
  for (int64_t i = 1; i < n; ++i)
    TORCH_CHECK(rp[i] >= rp[i - 1], op, ": row_ptr must be non-decreasing (entry ", i, ")");
}

// Splits rows into `chunks` contiguous ranges holding about the same number of nonzeros.
std::vector<int64_t> balanced_row_bounds(const int64_t* row_ptr, int64_t rows, int64_t tiles, int64_t chunks) {
  std::vector<int64_t> bounds(chunks + 1, rows);
  bounds[0] = 0;
  const int64_t nnz = row_ptr[rows * tiles];
  for (int64_t c = 1; c < chunks; ++c) {
    const int64_t target = nnz * c / chunks;
    int64_t lo = bounds[c - 1], hi = rows;  // first row whose start is >= target
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (row_ptr[mid * tiles] < target) lo = mid + 1; else hi = mid;
    }
    bounds[c] = lo;
  }
  return bounds;
}

int64_t chunk_count(int64_t rows) { return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows)); }

// Row length of a packed batch tile: a multiple of the vector width (8-wide on AVX-512 too for bt <= 8,
// where the AVX-512 path runs the ymm kernel instead of padding to 16).
int64_t padded_width(Isa isa, int64_t bt) {
  const int64_t vec = isa == Isa::Avx512 ? (bt <= 8 ? 8 : 16) : (isa == Isa::Avx2 ? 8 : 1);
  return (bt + vec - 1) / vec * vec;
}

int64_t max_tile(Isa isa) {
  return isa == Isa::Avx512 ? cpu::kMaxTileAvx512 : (isa == Isa::Avx2 ? cpu::kMaxTileAvx2 : cpu::kMaxTilePortable);
}

template <typename T>
void spmv(Isa isa, const SparseRows<T>& w, const T* x, const T* bias, T* y, int64_t r0, int64_t r1) {
  if constexpr (std::is_same_v<T, float>) {
    if (isa == Isa::Avx512) return cpu::spmv_rows_avx512(w, x, bias, y, r0, r1);
    if (isa == Isa::Avx2) return cpu::spmv_rows_avx2(w, x, bias, y, r0, r1);
  }
  cpu::spmv_rows_portable<T>(w, x, bias, y, r0, r1);
}

template <typename T>
void spmm(Isa isa, const SparseRows<T>& w, const T* xt, int64_t ldx, int64_t bt, const T* bias, T* y, int64_t ldy,
          int64_t r0, int64_t r1) {
  if constexpr (std::is_same_v<T, float>) {
    if (isa == Isa::Avx512) return cpu::spmm_rows_avx512(w, xt, ldx, bt, bias, y, ldy, r0, r1);
    if (isa == Isa::Avx2) return cpu::spmm_rows_avx2(w, xt, ldx, bt, bias, y, ldy, r0, r1);
  }
  cpu::spmm_rows_portable<T>(w, xt, ldx, bt, bias, y, ldy, r0, r1);
}

template <typename T>
void forward(const at::Tensor& x, const SparseRows<T>& w, const T* bias, at::Tensor& out) {
  const int64_t batch = x.size(0);
  const int64_t rows = w.rows;
  const Isa isa = std::is_same_v<T, float> ? cpu::active_isa() : Isa::Scalar;
  const int64_t chunks = chunk_count(rows);
  const std::vector<int64_t> bounds = balanced_row_bounds(w.row_ptr, rows, w.tiles, chunks);
  const T* xp = x.data_ptr<T>();
  T* yp = out.data_ptr<T>();

  if (batch <= kGemvMaxBatch) {
    at::parallel_for(0, batch * chunks, 1, [&](int64_t begin, int64_t end) {
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
  at::Tensor xt = at::empty({n_tiles * cols * tile}, x.options());
  T* xtp = xt.data_ptr<T>();
  constexpr int64_t kPackCols = 256;
  const int64_t col_blocks = std::max<int64_t>(1, (cols + kPackCols - 1) / kPackCols);
  at::parallel_for(0, n_tiles * col_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item / col_blocks, k0 = (item % col_blocks) * kPackCols;
      cpu::pack_transposed_portable<T>(xp + t * tile * cols, cols, tile_bt(t), xtp + t * cols * tile, tile_ld(t), k0,
                                       std::min(cols, k0 + kPackCols));
    }
  });
  at::parallel_for(0, n_tiles * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item / chunks, c = item % chunks;
      spmm<T>(isa, w, xtp + t * cols * tile, tile_ld(t), tile_bt(t), bias, yp + t * tile * rows, rows, bounds[c],
              bounds[c + 1]);
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
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
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
  const SparseShape s = check_sparse_structure(op, col_idx, row_ptr, in_features);
  check_dense_operand(op, "x", x, in_features, grad_out, "grad_out");
  check_dense_operand(op, "grad_out", grad_out, s.rows, x, "x");
  TORCH_CHECK(x.device() == col_idx.device(), op, ": x is on ", x.device(), " but col_idx is on ", col_idx.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": on CPU x must be float32 or float64, got ", x.scalar_type());
  const at::Tensor ci = col_idx.contiguous(), rp = row_ptr.contiguous();
  check_row_ptr_cpu(op, rp, s.nnz);
  TORCH_CHECK(grad_out.size(0) == x.size(0), op, ": grad_out has ", grad_out.size(0), " rows but x has ", x.size(0));
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
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
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
