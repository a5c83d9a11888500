// The scalar arithmetic of the batch-invariant numerics mode, one definition for the CPU
// ops (policy/invariant_ops.cc) and the CUDA kernels (invariant_kernels.cu), so that both
// give the same bits: every operation is a single IEEE-754 FP32 operation rounded to
// nearest (on the device the _rn intrinsics, which are never fused into an FMA; on the host
// the translation unit is built with -ffp-contract=off), and exp and log are computed here
// from those operations rather than by libm or CUDA's math library, whose results differ
// in the last bit between the two (and between library versions).
//
// InvExp and InvLog are within a few units in the last place of the exact value (measured
// by tests/kernels/invariant_math_test.cc). Torch-free, header-only.
#pragma once

#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define LIGHTRL_INV_HD __host__ __device__ __forceinline__
#else
#define LIGHTRL_INV_HD inline
#endif

namespace lightrl {
namespace inv {

LIGHTRL_INV_HD float Add(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

LIGHTRL_INV_HD float Sub(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

LIGHTRL_INV_HD float Mul(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

LIGHTRL_INV_HD float Div(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

// Correctly rounded square root (IEEE-754 requires it of both).
LIGHTRL_INV_HD float Sqrt(float a) {
#ifdef __CUDA_ARCH__
  return __fsqrt_rn(a);
#else
  return __builtin_sqrtf(a);
#endif
}

// std::max's rule, (a < b) ? b : a, with its behaviour on NaN and signed zeros.
LIGHTRL_INV_HD float Max(float a, float b) { return (a < b) ? b : a; }

LIGHTRL_INV_HD float BitsToFloat(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

LIGHTRL_INV_HD uint32_t FloatToBits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

// 2^k for -126 <= k <= 127, exactly.
LIGHTRL_INV_HD float Pow2(int k) { return BitsToFloat(static_cast<uint32_t>(k + 127) << 23); }

// Rounds an integral-valued-or-not float down; exact (no rounding happens in a floor).
LIGHTRL_INV_HD float Floor(float a) {
#ifdef __CUDA_ARCH__
  return floorf(a);
#else
  return __builtin_floorf(a);
#endif
}

// e^x: x = k ln2 + r with |r| <= ln2 / 2 (ln2 split in two so k ln2_hi is exact), e^r by
// its Taylor series to r^7 in Horner form, times 2^k (in two steps where 2^k is not a
// normal float, so the subnormal results round once, as IEEE multiplication does).
LIGHTRL_INV_HD float InvExp(float x) {
  if (x != x) return x;                                  // NaN
  if (x > 88.72283935546875f) return BitsToFloat(0x7f800000u);  // overflows: +inf
  if (x < -104.0f) return 0.0f;                          // below half the smallest subnormal
  const float kLog2e = 1.44269502162933349609375f;
  const float kLn2Hi = 0.693359375f;                     // 355 / 512: k * kLn2Hi is exact
  const float kLn2Lo = -2.12194440e-4f;                  // ln2 - kLn2Hi
  const float k = Floor(Add(Mul(x, kLog2e), 0.5f));
  const float r = Sub(Sub(x, Mul(k, kLn2Hi)), Mul(k, kLn2Lo));
  float p = 1.0f / 5040.0f;
  p = Add(Mul(p, r), 1.0f / 720.0f);
  p = Add(Mul(p, r), 1.0f / 120.0f);
  p = Add(Mul(p, r), 1.0f / 24.0f);
  p = Add(Mul(p, r), 1.0f / 6.0f);
  p = Add(Mul(p, r), 0.5f);
  p = Add(Mul(p, r), 1.0f);
  p = Add(Mul(p, r), 1.0f);
  const int ki = static_cast<int>(k);
  if (ki > 127) return Mul(Mul(p, Pow2(127)), Pow2(ki - 127));
  if (ki < -126) return Mul(Mul(p, Pow2(ki + 100)), Pow2(-100));
  return Mul(p, Pow2(ki));
}

// ln x: x = m 2^e with m in [sqrt(1/2), sqrt(2)), ln m = 2 atanh(s) for s = f / (2 + f),
// f = m - 1 (exact), as f - f^2/2 + s (f^2/2 + R(s^2)); then e ln2 added in two parts.
LIGHTRL_INV_HD float InvLog(float x) {
  if (x != x) return x;                                  // NaN
  if (x < 0.0f) return BitsToFloat(0x7fc00000u);         // NaN
  if (x == 0.0f) return BitsToFloat(0xff800000u);        // -inf
  uint32_t bits = FloatToBits(x);
  if ((bits & 0x7f800000u) == 0x7f800000u) return x;     // +inf
  int e = 0;
  if ((bits & 0x7f800000u) == 0) {                       // subnormal: scale by 2^23 first
    bits = FloatToBits(Mul(x, 8388608.0f));
    e = -23;
  }
  e += static_cast<int>((bits >> 23) & 0xffu) - 127;
  float m = BitsToFloat((bits & 0x007fffffu) | 0x3f800000u);  // [1, 2)
  if (m > 1.41421353816986083984375f) {
    m = Mul(m, 0.5f);
    e += 1;
  }
  const float f = Sub(m, 1.0f);
  const float s = Div(f, Add(2.0f, f));
  const float z = Mul(s, s);
  float R = 2.0f / 9.0f;
  R = Add(Mul(R, z), 2.0f / 7.0f);
  R = Add(Mul(R, z), 2.0f / 5.0f);
  R = Add(Mul(R, z), 2.0f / 3.0f);
  R = Mul(R, z);
  const float hfsq = Mul(Mul(0.5f, f), f);
  const float log_m = Sub(f, Sub(hfsq, Mul(s, Add(hfsq, R))));
  const float ef = static_cast<float>(e);
  const float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  return Add(Mul(ef, kLn2Hi), Add(Mul(ef, kLn2Lo), log_m));
}

// The logistic function 1 / (1 + e^-x).
LIGHTRL_INV_HD float InvSigmoid(float x) { return Div(1.0f, Add(1.0f, InvExp(-x))); }

// The lanes of the mode's long row sums (the LM head's sum of exponentials): lane l sums
// the elements l, l + kLanes, l + 2 kLanes, ... in order, then the lanes are added as a
// tree, lane[l] += lane[l + s] for s = kLanes/2, ..., 1. The CPU and a CUDA block of
// kLanes threads both follow it.
constexpr int kSumLanes = 256;

}  // namespace inv
}  // namespace lightrl
