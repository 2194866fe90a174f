// Pieces shared by the CPU bindings of the binary ops: the kernel set for the active ISA, word-aligned scratch,
// threading grain and the packing of activations into B panels.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "../cpu/binary.h"
#include "../cpu/cpu_features.h"

namespace sparsecomp::cpu_binding {

struct BinaryKernels {
  decltype(&cpu::bitpack_rows_portable) bitpack_rows;
  decltype(&cpu::bitpack_planes_portable) bitpack_planes;
  decltype(&cpu::binary_gemm_panel_portable) gemm_panel;
  decltype(&cpu::binary_gemv_portable) gemv;
  decltype(&cpu::binary_connect_portable) connect;
  decltype(&cpu::popcount_rows_portable) popcount_rows;
};

// The popcount GEMM uses AVX-512 only with VPOPCNTQ; without it the AVX2 nibble-table kernels are faster.
inline BinaryKernels binary_kernels() {
  switch (cpu::active_isa()) {
    case cpu::Isa::Avx512:
      if (cpu::has_avx512_vpopcntdq())
        return {cpu::bitpack_rows_avx512, cpu::bitpack_planes_avx512, cpu::binary_gemm_panel_avx512,
                cpu::binary_gemv_avx512, cpu::binary_connect_avx512, cpu::popcount_rows_avx512};
      return {cpu::bitpack_rows_avx512, cpu::bitpack_planes_avx512, cpu::binary_gemm_panel_avx2,
              cpu::binary_gemv_avx2, cpu::binary_connect_avx512, cpu::popcount_rows_avx512};
    case cpu::Isa::Avx2:
      return {cpu::bitpack_rows_avx2, cpu::bitpack_planes_avx2, cpu::binary_gemm_panel_avx2, cpu::binary_gemv_avx2,
              cpu::binary_connect_avx2, cpu::popcount_rows_avx2};
    default:
      return {cpu::bitpack_rows_portable, cpu::bitpack_planes_portable, cpu::binary_gemm_panel_portable,
              cpu::binary_gemv_portable, cpu::binary_connect_portable, cpu::popcount_rows_portable};
  }
}

// Words of scratch as an int64 tensor (64-byte aligned by the CPU allocator), viewed as uint64_t.
inline at::Tensor word_buffer(int64_t words) { return at::empty({std::max<int64_t>(words, 1)}, at::kLong); }
inline uint64_t* words_of(const at::Tensor& t) { return reinterpret_cast<uint64_t*>(t.data_ptr<int64_t>()); }

// Below this many 64-bit word operations a call stays on the calling thread (waking the team costs more).
constexpr int64_t kSerialWords = 1 << 15;

inline int64_t binary_grain(int64_t tasks, int64_t word_ops) {
  return word_ops < kSerialWords ? std::max<int64_t>(tasks, 1) : 1;
}

// Splits `rows` into chunks of a multiple of 8 rows so that there are about `want` tasks overall.
inline int64_t row_chunk_size(int64_t rows, int64_t other_tasks, int64_t threads) {
  const int64_t want_chunks = std::max<int64_t>(1, (4 * threads + other_tasks - 1) / std::max<int64_t>(other_tasks, 1));
  int64_t size = (rows + want_chunks - 1) / want_chunks;
  size = (size + 7) / 8 * 8;
  return std::max<int64_t>(8, std::min<int64_t>(size, (rows + 7) / 8 * 8));
}

// Packed rows xp [m][k_words] -> panels [ceil(m / kPanelCols)][k_words][kPanelCols], zero columns past m.
inline void rows_to_panels(const uint64_t* xp, int64_t m, int64_t k_words, uint64_t* panels) {
  const int64_t n_panels = (m + cpu::kPanelCols - 1) / cpu::kPanelCols;
  at::parallel_for(0, n_panels, binary_grain(n_panels, m * k_words), [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p) {
      uint64_t* panel = panels + p * k_words * cpu::kPanelCols;
      for (int64_t c = 0; c < cpu::kPanelCols; ++c) {
        const int64_t j = p * cpu::kPanelCols + c;
        const uint64_t* src = j < m ? xp + j * k_words : nullptr;
        for (int64_t k = 0; k < k_words; ++k) panel[k * cpu::kPanelCols + c] = src ? src[k] : 0;
      }
    }
  });
}

}  // namespace sparsecomp::cpu_binding

namespace sparsecomp {
// The CPU kernel of bitunpack (csrc/ops/bitpack_cpu.cpp): int64 [..., W] -> float32 [..., size] of +1/-1.
at::Tensor bitunpack_cpu(const at::Tensor& packed, int64_t size);
}  // namespace sparsecomp
