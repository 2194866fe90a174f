// Argument checks shared by the CPU and CUDA bindings of the sparse_linear ops. Each message names the
// argument, so a bad call from Python says what to fix instead of crashing inside a kernel.
#pragma once
#include <ATen/ATen.h>

namespace sparsecomp {

constexpr int64_t kTileCols = 65536;  // must match csrc/cpu/spmm.h and sparsecomp/formats/sparse.py

inline int64_t num_col_tiles(int64_t in_features) {
  return in_features <= kTileCols ? 1 : (in_features + kTileCols - 1) / kTileCols;
}

struct SparseShape {
  int64_t rows;
  int64_t tiles;
  int64_t nnz;
};

// Checks the sparsity structure (col_idx, row_ptr) and returns the shape it describes.
inline SparseShape check_sparse_structure(const char* op, const at::Tensor& col_idx, const at::Tensor& row_ptr,
                                          int64_t in_features) {
  TORCH_CHECK(in_features >= 0, op, ": in_features must be >= 0, got ", in_features);
  TORCH_CHECK(col_idx.dim() == 1, op, ": col_idx must be 1-D, got shape ", col_idx.sizes());
  TORCH_CHECK(row_ptr.dim() == 1, op, ": row_ptr must be 1-D, got shape ", row_ptr.sizes());
  TORCH_CHECK(col_idx.scalar_type() == at::kShort, op, ": col_idx must be int16 (uint16 bits), got ",
              col_idx.scalar_type());
  TORCH_CHECK(row_ptr.scalar_type() == at::kLong, op, ": row_ptr must be int64, got ", row_ptr.scalar_type());
  TORCH_CHECK(col_idx.device() == row_ptr.device(), op, ": col_idx and row_ptr must be on one device, got ",
              col_idx.device(), " and ", row_ptr.device());
  const int64_t tiles = num_col_tiles(in_features);
  TORCH_CHECK(row_ptr.numel() >= 1 && (row_ptr.numel() - 1) % tiles == 0, op, ": row_ptr must have rows * ",
              tiles, " + 1 entries for in_features=", in_features, ", got ", row_ptr.numel());
  return {(row_ptr.numel() - 1) / tiles, tiles, col_idx.numel()};
}

// Checks values/col_idx/row_ptr together and returns the shape they describe.
inline SparseShape check_sparse_weight(const char* op, const at::Tensor& values, const at::Tensor& col_idx,
                                       const at::Tensor& row_ptr, int64_t in_features) {
  const SparseShape s = check_sparse_structure(op, col_idx, row_ptr, in_features);
  TORCH_CHECK(values.dim() == 1, op, ": values must be 1-D, got shape ", values.sizes());
  TORCH_CHECK(col_idx.numel() == values.numel(), op, ": col_idx has ", col_idx.numel(),
              " entries but values has ", values.numel());
  TORCH_CHECK(values.device() == col_idx.device(), op, ": values is on ", values.device(),
              " but col_idx and row_ptr are on ", col_idx.device());
  return s;
}

// Checks a dense [batch, features] operand; `ref` (named ref_name) gives the expected dtype and device.
inline void check_dense_operand(const char* op, const char* name, const at::Tensor& t, int64_t features,
                                const at::Tensor& ref, const char* ref_name = "values") {
  TORCH_CHECK(t.dim() == 2, op, ": ", name, " must be 2-D [batch, ", features, "], got shape ", t.sizes());
  TORCH_CHECK(t.size(1) == features, op, ": ", name, " must have ", features, " columns, got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " dtype ", t.scalar_type(), " does not match ",
              ref_name, " dtype ", ref.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name, " is on ",
              ref.device());
}

// Checks a k-major [batch, features, columns] operand (sparse_matmul's x).
inline void check_kmajor_operand(const char* op, const at::Tensor& x, int64_t features, const at::Tensor& values) {
  TORCH_CHECK(x.dim() == 3 && x.size(1) == features, op, ": x must be 3-D [batch, ", features,
              ", columns], got shape ", x.sizes());
  TORCH_CHECK(x.scalar_type() == values.scalar_type(), op, ": x dtype ", x.scalar_type(),
              " does not match values dtype ", values.scalar_type());
  TORCH_CHECK(x.device() == values.device(), op, ": x is on ", x.device(), " but values is on ", values.device());
}

inline void check_bias(const char* op, const c10::optional<at::Tensor>& bias, int64_t rows, const at::Tensor& values) {
  if (!bias.has_value()) return;
  TORCH_CHECK(bias->dim() == 1 && bias->numel() == rows, op, ": bias must have shape [", rows, "], got ",
              bias->sizes());
  TORCH_CHECK(bias->scalar_type() == values.scalar_type(), op, ": bias dtype ", bias->scalar_type(),
              " does not match values dtype ", values.scalar_type());
  TORCH_CHECK(bias->device() == values.device(), op, ": bias is on ", bias->device(), " but the weight is on ",
              values.device());
}

// Checks the operands of sparse_linear_backward_values and returns the weight's shape.
inline SparseShape check_backward_values_args(const char* op, const at::Tensor& grad_out, const at::Tensor& x,
                                              const at::Tensor& col_idx, const at::Tensor& row_ptr,
                                              int64_t in_features) {
  const SparseShape s = check_sparse_structure(op, col_idx, row_ptr, in_features);
  check_dense_operand(op, "x", x, in_features, grad_out, "grad_out");
  check_dense_operand(op, "grad_out", grad_out, s.rows, x, "x");
  TORCH_CHECK(x.device() == col_idx.device(), op, ": x is on ", x.device(), " but col_idx is on ", col_idx.device());
  TORCH_CHECK(grad_out.size(0) == x.size(0), op, ": grad_out has ", grad_out.size(0), " rows but x has ", x.size(0));
  return s;
}

}  // namespace sparsecomp
