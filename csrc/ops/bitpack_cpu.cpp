// CPU bindings of bitpack / bitunpack (layout: csrc/cpu/binary.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <cstring>

#include "binary_checks.h"
#include "binary_cpu_common.h"

namespace sparsecomp {
namespace {

at::Tensor bitpack_cpu(const at::Tensor& x_in) {
  TORCH_CHECK(x_in.dim() >= 1, "bitpack: x must have at least one dimension, got a scalar");
  TORCH_CHECK(at::isFloatingType(x_in.scalar_type()), "bitpack: x must be a floating-point tensor, got ",
              x_in.scalar_type());
  const int64_t len = x_in.size(-1);
  const int64_t words = packed_words(len);
  std::vector<int64_t> out_shape(x_in.sizes().begin(), x_in.sizes().end());
  out_shape.back() = words;
  at::Tensor out = at::empty(out_shape, x_in.options().dtype(at::kLong));
  const int64_t rows = len == 0 ? 0 : x_in.numel() / len;
  if (rows == 0 || words == 0) return out;
  uint64_t* o = cpu_binding::words_of(out);
  if (x_in.scalar_type() == at::kFloat) {
    const at::Tensor x = x_in.contiguous();
    const float* xp = x.data_ptr<float>();
    const auto pack = cpu_binding::binary_kernels().bitpack_rows;
    at::parallel_for(0, rows, cpu_binding::binary_grain(rows, rows * words * 8), [&](int64_t b, int64_t e) {
      pack(xp + b * len, e - b, len, len, o + b * words, words);
    });
    return out;
  }
  // Other float dtypes: compare in the input's own precision (a cast to float32 could round -1e-50 to -0.0).
  const at::Tensor ge = x_in.ge(0).contiguous();
  const bool* g = ge.data_ptr<bool>();
  at::parallel_for(0, rows, cpu_binding::binary_grain(rows, rows * words * 8), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r)
      for (int64_t w = 0; w < words; ++w) {
        uint64_t bits = 0;
        const int64_t n = std::min<int64_t>(64, len - w * 64);
        for (int64_t i = 0; i < n; ++i) bits |= static_cast<uint64_t>(g[r * len + w * 64 + i]) << i;
        o[r * words + w] = bits;
      }
  });
  return out;
}

}  // namespace

at::Tensor bitunpack_cpu(const at::Tensor& packed_in, int64_t size) {
  TORCH_CHECK(packed_in.dim() >= 1, "bitunpack: packed must have at least one dimension, got a scalar");
  TORCH_CHECK(packed_in.scalar_type() == at::kLong, "bitunpack: packed must be int64, got ", packed_in.scalar_type());
  TORCH_CHECK(size >= 0, "bitunpack: size must be >= 0, got ", size);
  TORCH_CHECK(packed_words(size) == packed_in.size(-1), "bitunpack: size=", size, " needs exactly ",
              packed_words(size), " words in the last dim of packed, which has ", packed_in.size(-1));
  std::vector<int64_t> out_shape(packed_in.sizes().begin(), packed_in.sizes().end());
  out_shape.back() = size;
  at::Tensor out = at::empty(out_shape, packed_in.options().dtype(at::kFloat));
  const int64_t words = packed_in.size(-1);
  const int64_t rows = words == 0 ? 0 : packed_in.numel() / words;
  if (rows == 0 || size == 0) return out;
  const at::Tensor packed = packed_in.contiguous();
  const uint64_t* p = cpu_binding::words_of(packed);
  float* o = out.data_ptr<float>();
  // One 8-float row of a 256-entry table per byte of bits (little-endian: byte j holds elements 8j..8j+7).
  static const auto table = [] {
    std::array<std::array<float, 8>, 256> t{};
    for (int b = 0; b < 256; ++b)
      for (int i = 0; i < 8; ++i) t[b][i] = ((b >> i) & 1) ? 1.0f : -1.0f;
    return t;
  }();
  at::parallel_for(0, rows, cpu_binding::binary_grain(rows, rows * words * 8), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const uint8_t* bytes = reinterpret_cast<const uint8_t*>(p + r * words);
      float* dst = o + r * size;
      const int64_t full = size / 8;
      for (int64_t j = 0; j < full; ++j) std::memcpy(dst + 8 * j, table[bytes[j]].data(), 8 * sizeof(float));
      for (int64_t i = full * 8; i < size; ++i) dst[i] = table[bytes[full]][i - full * 8];
    }
  });
  return out;
}

TORCH_LIBRARY_IMPL(sparsecomp, CPU, m) {
  m.impl("bitpack", &bitpack_cpu);
  m.impl("bitunpack", &bitunpack_cpu);
}

}  // namespace sparsecomp
