// Argument checks of codebook_mm, shared by every backend. Each message names the argument.
#pragma once
#include <ATen/ATen.h>

namespace sparsecomp {

struct CodebookShape {
  int64_t rows;
  int64_t row_words;
  bool per_row;  // one table per output row
};

inline CodebookShape check_codebook_mm_args(const char* op, const at::Tensor& x, const at::Tensor& packed,
                                            const at::Tensor& codebook, const c10::optional<at::Tensor>& bias,
                                            int64_t in_features, int64_t bits) {
  TORCH_CHECK(bits >= 1 && bits <= 8, op, ": bits must be in 1..8, got ", bits);
  TORCH_CHECK(in_features >= 0, op, ": in_features must be >= 0, got ", in_features);
  const int64_t entries = int64_t{1} << bits;
  const int64_t row_words = (in_features * bits + 31) / 32;
  TORCH_CHECK(packed.dim() == 2, op, ": packed_indices must be 2-D [out_features, ", row_words, "], got shape ",
              packed.sizes());
  TORCH_CHECK(packed.scalar_type() == at::kInt, op, ": packed_indices must be int32, got ", packed.scalar_type());
  TORCH_CHECK(packed.size(1) == row_words, op, ": packed_indices must have ceil(in_features * bits / 32) = ",
              row_words, " words per row for in_features=", in_features, ", bits=", bits, ", got shape ",
              packed.sizes());
  const int64_t rows = packed.size(0);
  const bool per_row = codebook.dim() == 2;
  TORCH_CHECK(codebook.dim() == 1 || per_row, op, ": codebook must be 1-D [2^bits] or 2-D [out_features, 2^bits], "
              "got shape ", codebook.sizes());
  TORCH_CHECK(codebook.size(-1) == entries, op, ": codebook must have 2^bits = ", entries, " entries for bits=", bits,
              ", got shape ", codebook.sizes());
  TORCH_CHECK(!per_row || codebook.size(0) == rows, op, ": a per-row codebook must have ", rows,
              " rows (one per output row), got shape ", codebook.sizes());
  TORCH_CHECK(x.dim() == 2 && x.size(1) == in_features, op, ": x must be 2-D [batch, ", in_features, "], got shape ",
              x.sizes());
  TORCH_CHECK(x.scalar_type() == codebook.scalar_type(), op, ": x dtype ", x.scalar_type(),
              " does not match codebook dtype ", codebook.scalar_type());
  TORCH_CHECK(x.device() == codebook.device() && packed.device() == codebook.device(), op,
              ": x, packed_indices and codebook must be on one device, got ", x.device(), ", ", packed.device(),
              " and ", codebook.device());
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->numel() == rows, op, ": bias must have shape [", rows, "], got ",
                bias->sizes());
    TORCH_CHECK(bias->scalar_type() == codebook.scalar_type(), op, ": bias dtype ", bias->scalar_type(),
                " does not match codebook dtype ", codebook.scalar_type());
    TORCH_CHECK(bias->device() == codebook.device(), op, ": bias is on ", bias->device(), " but codebook is on ",
                codebook.device());
  }
  return {rows, row_words, per_row};
}

}  // namespace sparsecomp
