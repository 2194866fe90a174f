#include "cpu_features.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

namespace sparsecomp::cpu {
namespace {

Isa parse_isa(const std::string& name) {
  if (name == "scalar" || name == "portable") return Isa::Scalar;
  if (name == "avx2") return Isa::Avx2;
  if (name == "avx512") return Isa::Avx512;
  throw std::invalid_argument("sparsecomp: unknown CPU ISA '" + name + "' (expected scalar, avx2 or avx512)");
}

Isa initial_isa() {
  Isa best = detect_isa();
  if (const char* forced = std::getenv("SPARSECOMP_CPU_ISA")) {
    Isa want = parse_isa(forced);
    if (static_cast<int>(want) < static_cast<int>(best)) return want;
  }
  return best;
}

std::atomic<int>& active_slot() {
  static std::atomic<int> slot{static_cast<int>(initial_isa())};
  return slot;
}

}  // namespace

Isa detect_isa() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return Isa::Avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::Avx2;
#endif
  return Isa::Scalar;
}

bool has_avx512_vpopcntdq() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return detect_isa() == Isa::Avx512 && __builtin_cpu_supports("avx512vpopcntdq");
#else
  return false;
#endif
}

Isa active_isa() { return static_cast<Isa>(active_slot().load(std::memory_order_relaxed)); }

void set_active_isa(const std::string& name) {
  Isa want = parse_isa(name);
  if (static_cast<int>(want) > static_cast<int>(detect_isa()))
    throw std::invalid_argument(std::string("sparsecomp: this CPU does not support ISA '") + name + "'");
  active_slot().store(static_cast<int>(want), std::memory_order_relaxed);
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "scalar";
  }
}

}  // namespace sparsecomp::cpu
