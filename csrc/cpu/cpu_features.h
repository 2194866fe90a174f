// Run-time choice of the x86 vector code path. The shipped build never assumes an ISA: every vectorized
// kernel is compiled for its own target (see the #pragma GCC target blocks) and picked here from CPUID.
#pragma once
#include <string>

namespace sparsecomp::cpu {

enum class Isa { Scalar = 0, Avx2 = 1, Avx512 = 2 };

// Best ISA this CPU supports (AVX-512 needs F+BW+VL+DQ; AVX2 needs AVX2+FMA+F16C).
Isa detect_isa();
// ISA the kernels use now: the detected one, lowered by SPARSECOMP_CPU_ISA or set_active_isa().
Isa active_isa();
// Lowers (or restores) the ISA in use; asking for more than the CPU has raises std::invalid_argument.
void set_active_isa(const std::string& name);
const char* isa_name(Isa isa);
// AVX512_VPOPCNTDQ (vector popcount, Ice Lake and later): the AVX-512 binary GEMM needs it on top of Avx512.
bool has_avx512_vpopcntdq();

}  // namespace sparsecomp::cpu
