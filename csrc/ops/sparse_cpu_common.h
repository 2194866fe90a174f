// Helpers shared by the CPU bindings of the sparse ops: views of the weight, row_ptr validation, nnz-balanced
// row chunks for threading, and the ISA dispatch of the kernels in csrc/cpu.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <type_traits>
#include <vector>

#include "../cpu/cpu_features.h"
#include "../cpu/spmm.h"
#include "sparse_linear_checks.h"

namespace sparsecomp::cpu_binding {

using cpu::Isa;
using cpu::SparseRows;

template <typename T>
SparseRows<T> view_of(const at::Tensor& values, const at::Tensor& col_idx, const at::Tensor& row_ptr,
                      const SparseShape& s, int64_t in_features) {
  return {values.data_ptr<T>(), reinterpret_cast<const uint16_t*>(col_idx.data_ptr<int16_t>()),
          row_ptr.data_ptr<int64_t>(), s.rows, in_features, s.tiles};
}

// row_ptr must start at 0, never decrease and end at nnz, or a kernel would read out of bounds. Checked on every
// call (the op may be given any tensors): measured at ~0.1 us for 300 rows, ~3% of a batch-1 call, so no cache
// of already-validated tensors (which an in-place write to row_ptr could silently invalidate).
inline void check_row_ptr_cpu(const char* op, const at::Tensor& row_ptr, int64_t nnz) {
  const int64_t* rp = row_ptr.data_ptr<int64_t>();
  const int64_t n = row_ptr.numel();
  TORCH_CHECK(rp[0] == 0 && rp[n - 1] == nnz, op, ": row_ptr must start at 0 and end at nnz=", nnz, ", got ", rp[0],
              " .. ", rp[n - 1]);
  for (int64_t i = 1; i < n; ++i)
    TORCH_CHECK(rp[i] >= rp[i - 1], op, ": row_ptr must be non-decreasing (entry ", i, ")");
}

// Splits rows into `chunks` contiguous ranges holding about the same number of nonzeros.
inline std::vector<int64_t> balanced_row_bounds(const int64_t* row_ptr, int64_t rows, int64_t tiles, int64_t chunks) {
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

// Below this many multiply-adds a call runs on the calling thread: waking the OpenMP team costs more than the
// work (and under CPU contention a pre-empted worker stalls a tiny call for milliseconds).
constexpr int64_t kSerialWork = 1 << 16;

// Grain for at::parallel_for over `items` work items: everything inline when the call is small.
inline int64_t parallel_grain(int64_t items, int64_t work) {
  return work < kSerialWork ? std::max<int64_t>(items, 1) : 1;
}

// One chunk of rows per thread (the chunks are nnz-balanced, so static scheduling is balanced too).
inline int64_t chunk_count(int64_t rows) {
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows));
}

// Row length of a packed batch tile: a multiple of the vector width (8-wide on AVX-512 too for bt <= 8,
// where the AVX-512 path runs the ymm kernel instead of padding to 16).
inline int64_t padded_width(Isa isa, int64_t bt) {
  const int64_t vec = isa == Isa::Avx512 ? (bt <= 8 ? 8 : 16) : (isa == Isa::Avx2 ? 8 : 1);
  return (bt + vec - 1) / vec * vec;
}

inline int64_t max_tile(Isa isa) {
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
void spmm(Isa isa, const SparseRows<T>& w, const cpu::DenseTile<T>& x, const T* bias, const cpu::OutTile<T>& y,
          int64_t r0, int64_t r1) {
  if constexpr (std::is_same_v<T, float>) {
    if (isa == Isa::Avx512) return cpu::spmm_rows_avx512(w, x, bias, y, r0, r1);
    if (isa == Isa::Avx2) return cpu::spmm_rows_avx2(w, x, bias, y, r0, r1);
  }
  cpu::spmm_rows_portable<T>(w, x, bias, y, r0, r1);
}

// The ISA the float32 kernels use now; other dtypes always run the portable kernels.
template <typename T>
Isa isa_for() {
  return std::is_same_v<T, float> ? cpu::active_isa() : Isa::Scalar;
}

// Dense F.linear computes 0 * x for every pruned weight, so a NaN or Inf in x[b, k] makes y[b, o] NaN for each
// row o with no nonzero in column k; the kernels skip those products. This restores the dense result. Cost when
// x is finite (the normal case): one isfinite pass over x. x: [batch, cols]; out: [batch, rows].
inline bool all_finite(const at::Tensor& x) {
  std::atomic<bool> finite{true};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "all_finite", [&] {
    const scalar_t* p = x.data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), 1 << 16, [&](int64_t begin, int64_t end) {
      if (!cpu::all_finite_portable<scalar_t>(p + begin, end - begin)) finite.store(false, std::memory_order_relaxed);
    });
  });
  return finite.load();
}

// x must be contiguous.
inline void propagate_nonfinite_like_dense(const at::Tensor& x, const at::Tensor& col_idx, const at::Tensor& row_ptr,
                                           int64_t rows, int64_t tiles, at::Tensor& out) {
  if (all_finite(x)) return;
  const at::Tensor bad = at::logical_not(at::isfinite(x));
  const at::Tensor bad_cols = std::get<0>(at::_unique(bad.any(0).nonzero().squeeze(1)));  // columns with any
  const int64_t cols = x.size(1);
  // Which of those columns each row stores: a [rows, n_bad] pattern built from the compressed structure.
  const at::Tensor seg = at::repeat_interleave(at::arange(rows * tiles, row_ptr.options()),
                                               row_ptr.narrow(0, 1, rows * tiles) - row_ptr.narrow(0, 0, rows * tiles));
  const at::Tensor nz_row = at::floor_divide(seg, tiles);
  const at::Tensor nz_col = at::remainder(seg, tiles) * kTileCols + at::bitwise_and(col_idx.to(at::kLong), 0xFFFF);
  at::Tensor slot = at::full({cols}, -1, row_ptr.options());
  slot.index_put_({bad_cols}, at::arange(bad_cols.numel(), row_ptr.options()));
  const at::Tensor nz_slot = slot.index_select(0, nz_col);
  const at::Tensor keep = nz_slot.ge(0);
  at::Tensor stored = at::zeros({rows, bad_cols.numel()}, x.options());
  stored.index_put_({nz_row.masked_select(keep), nz_slot.masked_select(keep)}, at::ones({}, x.options()));
  // y[b, o] is NaN where x[b, k] is non-finite for some k that row o does not store.
  const at::Tensor missing = (bad.index_select(1, bad_cols).to(x.scalar_type()))
                                 .matmul((1 - stored).t());
  out.masked_fill_(missing.gt(0), std::numeric_limits<double>::quiet_NaN());
}

}  // namespace sparsecomp::cpu_binding
