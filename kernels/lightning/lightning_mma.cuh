// Device-side building blocks of the lightning kernels: cp.async copies, ldmatrix loads,
// the bf16 m16n8k16 tensor-core mma and bf16 packing. Internal to kernels/lightning
// (included by .cu files only); owns no memory and launches nothing.
#pragma once

#include <cstdint>
#include <cstring>

#include <cuda_bf16.h>

namespace lightrl {
namespace lightning_mma {

__device__ __forceinline__ uint32_t SmemAddr(const void* ptr) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}

// 16-byte global -> shared copy; with valid == false nothing is read and the 16 shared
// bytes are zero-filled.
__device__ __forceinline__ void CpAsync16(uint32_t dst, const void* src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes)
               : "memory");
}

__device__ __forceinline__ void CpAsyncCommit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Waits until at most kPending committed groups of this thread are still in flight.
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// Four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i, and lane l
// receives (row l/4, columns 2(l%4), 2(l%4)+1) of each, transposed with the Trans form.
__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ void LdMatrixX4Trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// d += a * b for a 16x16 bf16 A (row-major fragment), a 16x8 bf16 B (column fragment)
// and a 16x8 FP32 accumulator.
__device__ __forceinline__ void Mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats as a bf16 pair, `lo` in the low half (the lower column of a fragment).
__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  uint32_t r;
  memcpy(&r, &v, sizeof(r));
  return r;
}

__device__ __forceinline__ float2 UnpackBf16(uint32_t r) {
  __nv_bfloat162 v;
  memcpy(&v, &r, sizeof(v));
  return __bfloat1622float2(v);
}

// Scales the bf16 pair `x` by (w_lo, w_hi) in FP32, rounded back to a bf16 pair.
__device__ __forceinline__ uint32_t ScaleBf16(uint32_t x, float w_lo, float w_hi) {
  const float2 f = UnpackBf16(x);
  return PackBf16(f.x * w_lo, f.y * w_hi);
}

// Scales the bf16 pair `x` by (w_lo, w_hi) in FP32 and splits the products into
// hi + lo bf16 pairs whose sum is within 2^-17 (relative) of the FP32 products.
__device__ __forceinline__ void SplitScaledBf16(uint32_t x, float w_lo, float w_hi,
                                                uint32_t& hi, uint32_t& lo) {
  const float2 f = UnpackBf16(x);
  const float p0 = f.x * w_lo;
  const float p1 = f.y * w_hi;
  hi = PackBf16(p0, p1);
  const float2 h = UnpackBf16(hi);
  lo = PackBf16(p0 - h.x, p1 - h.y);
}

}  // namespace lightning_mma
}  // namespace lightrl
