// CPU binding of codebook_mm: checks, the choice between the decode-once GEMV (small batch) and
// dequantize-a-tile + GEMM (large batch), ISA dispatch and threading over rows.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "../cpu/codebook.h"
#include "../cpu/cpu_features.h"
#include "codebook_checks.h"

namespace sparsecomp {
namespace {

using cpu::Isa;

// Batches above this run dequantize + GEMM: by then the GEMM's arithmetic dominates and decoding the weight
// again for every group of kCodebookMaxBatch samples costs more than one dequantization. Measured (1 thread,
// 4096x4096, AVX-512): the decode-once GEMV wins up to batch 32 at 2 and 4 bits (11.1-11.6 ms vs ~15 ms) and
// loses from 48; at 8 bits (gathered table) it stops winning after 16.
inline int64_t gemv_max_batch(int64_t bits) { return bits <= 5 ? 32 : 16; }

// Rows per dequantized tile: about 8 MiB of floats. Smaller tiles stay in cache but make the GEMMs too
// narrow (measured 1 thread, 4096x4096, batch 64: 2 MiB tiles 0.72x of F.linear).
constexpr int64_t kTileBytes = int64_t{8} << 20;
constexpr int64_t kSerialWork = 1 << 16;

void gemv(Isa isa, const cpu::CodebookWeight& w, const float* x, int64_t ldx, int64_t m, const float* bias, float* y,
          int64_t ldy, int64_t r0, int64_t r1) {
  switch (isa) {
    case Isa::Avx512: return cpu::codebook_gemv_avx512(w, x, ldx, m, bias, y, ldy, r0, r1);
    case Isa::Avx2: return cpu::codebook_gemv_avx2(w, x, ldx, m, bias, y, ldy, r0, r1);
    default: return cpu::codebook_gemv_portable(w, x, ldx, m, bias, y, ldy, r0, r1);
  }
}

void dequant(Isa isa, const cpu::CodebookWeight& w, int64_t r0, int64_t r1, float* out) {
  switch (isa) {
    case Isa::Avx512: return cpu::codebook_dequant_avx512(w, r0, r1, out);
    case Isa::Avx2: return cpu::codebook_dequant_avx2(w, r0, r1, out);
    default: return cpu::codebook_dequant_portable(w, r0, r1, out);
  }
}

// Grain giving each thread one contiguous block of rows (and everything inline for tiny calls).
int64_t row_grain(int64_t rows, int64_t work) {
  if (work < kSerialWork) return std::max<int64_t>(rows, 1);
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  return std::max<int64_t>(1, (rows + threads - 1) / threads);
}

at::Tensor codebook_mm_cpu(const at::Tensor& x, const at::Tensor& packed_indices, const at::Tensor& codebook,
                           const c10::optional<at::Tensor>& bias, int64_t in_features, int64_t bits) {
  constexpr const char* op = "sparsecomp::codebook_mm";
  const CodebookShape s = check_codebook_mm_args(op, x, packed_indices, codebook, bias, in_features, bits);
  TORCH_CHECK(codebook.scalar_type() == at::kFloat, op, ": on CPU the codebook must be float32, got ",
              codebook.scalar_type());
  const int64_t batch = x.size(0), rows = s.rows;
  at::Tensor out = at::empty({batch, rows}, x.options());
  if (out.numel() == 0) return out;
  if (in_features == 0) return bias.has_value() ? out.copy_(bias->unsqueeze(0).expand_as(out)) : out.zero_();
  const at::Tensor xc = x.contiguous(), pk = packed_indices.contiguous(), cb = codebook.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const cpu::CodebookWeight w{reinterpret_cast<const uint8_t*>(pk.data_ptr<int32_t>()), 4 * s.row_words,
                              cb.data_ptr<float>(), s.per_row ? (int64_t{1} << bits) : 0, in_features,
                              static_cast<int>(bits), rows};
  const Isa isa = cpu::active_isa();
  const float* xp = xc.data_ptr<float>();
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  float* yp = out.data_ptr<float>();

  if (batch <= gemv_max_batch(bits)) {
    at::parallel_for(0, rows, row_grain(rows, batch * rows * in_features), [&](int64_t r0, int64_t r1) {
      for (int64_t j0 = 0; j0 < batch; j0 += cpu::kCodebookMaxBatch) {
        const int64_t m = std::min(cpu::kCodebookMaxBatch, batch - j0);
        gemv(isa, w, xp + j0 * in_features, in_features, m, bp, yp + j0 * rows, rows, r0, r1);
      }
    });
    return out;
  }

  // Large batch: dequantize a tile of rows (in parallel), then one GEMM per tile into the output columns.
  const int64_t tile_rows = std::clamp<int64_t>(kTileBytes / (4 * in_features) / 16 * 16, 16, rows);
  at::Tensor tile = at::empty({tile_rows, in_features}, x.options());
  for (int64_t r0 = 0; r0 < rows; r0 += tile_rows) {
    const int64_t n = std::min(tile_rows, rows - r0);
    float* tp = tile.data_ptr<float>();
    at::parallel_for(0, n, row_grain(n, n * in_features), [&](int64_t a, int64_t e) {
      dequant(isa, w, r0 + a, r0 + e, tp + a * in_features);
    });
    const at::Tensor wt = tile.narrow(0, 0, n).t();
    at::Tensor y = b.defined() ? at::addmm(b.narrow(0, r0, n), xc, wt) : at::mm(xc, wt);
    out.narrow(1, r0, n).copy_(y);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsecomp, CPU, m) { m.impl("codebook_mm", &codebook_mm_cpu); }

}  // namespace sparsecomp
