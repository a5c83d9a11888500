// sm_90a warpgroup tensor-core building blocks of the lightning kernels: shared-memory
// matrix descriptors, the bf16 wgmma instructions the prefill uses (m64n64k16 and
// m64n32k16, FP32 accumulators, operands from shared memory or A from registers) and the
// fences around them. Internal to kernels/lightning (included by .cu files compiled
// for sm_90a only); owns no memory and launches nothing.
//
// Layouts (PTX ISA, "Shared Memory Matrix Layout"): every tile is stored in rows of 64 or
// 32 bf16 (128 or 64 bytes) with the matching swizzle: the 16-byte chunk c of row r sits
// at chunk c ^ (r % 8) (128-byte rows) or c ^ ((r / 2) % 4) (64-byte rows), and each tile
// starts on a 1024-byte boundary. A tile whose contiguous dimension is the reduction (K)
// dimension is "K-major"; one whose contiguous dimension is M or N is "MN-major" and is
// fed with the transpose flag set. Either way the stride between groups of 8 rows is
// 8 x the row bytes (the descriptor's stride byte offset).
#pragma once

#include <cstdint>

namespace lightrl {
namespace lightning_wgmma {

enum class Swizzle : uint64_t { k128B = 1, k64B = 2 };

// Byte offset of the 16-byte chunk `chunk` of row `row` in a swizzled tile of rows of
// `kRowBytes` (128 or 64).
template <int kRowBytes>
__device__ __forceinline__ uint32_t SwizzledOffset(int row, int chunk) {
  static_assert(kRowBytes == 128 || kRowBytes == 64, "128- or 64-byte rows");
  const int x = kRowBytes == 128 ? (row & 7) : ((row >> 1) & 3);
  return static_cast<uint32_t>(row * kRowBytes + ((chunk ^ x) << 4));
}

template <int kRowBytes>
__host__ __device__ constexpr Swizzle SwizzleFor() {
  return kRowBytes == 128 ? Swizzle::k128B : Swizzle::k64B;
}

// Descriptor of the operand starting at shared address `addr` (bytes) in a swizzled tile of
// rows of kRowBytes: 8-row groups are 8 * kRowBytes apart. The leading byte offset is
// not used by these shapes (one swizzle atom across the contiguous dimension); it is set to
// the atom size.
template <int kRowBytes>
__device__ __forceinline__ uint64_t Desc(uint32_t addr) {
  constexpr uint64_t kGroup = 8 * kRowBytes;
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | ((kGroup >> 4) << 16) |
         ((kGroup >> 4) << 32) | (static_cast<uint64_t>(SwizzleFor<kRowBytes>()) << 62);
}

// The same descriptor moved by `bytes` (a multiple of 16 within the same tile).
__device__ __forceinline__ uint64_t Advance(uint64_t desc, uint32_t bytes) {
  return desc + (bytes >> 4);
}

// x, opaque to the compiler: values computed from it are not hoisted out of a loop (a
// shared address from which many descriptors are made would otherwise hold one register
// pair per descriptor for the whole loop).
__device__ __forceinline__ uint32_t Opaque(uint32_t x) {
  asm volatile("mov.b32 %0, %0;\n" : "+r"(x));
  return x;
}

// Orders this thread's earlier register writes before the next wgmma reads them.
__device__ __forceinline__ void Fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }

__device__ __forceinline__ void Commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

// Waits until at most kPending committed wgmma groups of this warpgroup are in flight.
template <int kPending>
__device__ __forceinline__ void Wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}

// Makes this thread's generic-proxy shared-memory writes (st.shared, cp.async) visible to
// the async proxy that wgmma reads shared memory through; a barrier must follow.
__device__ __forceinline__ void FenceProxyAsync() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// Keeps the compiler from moving reads or writes of accumulator registers across a wgmma
// wait or fence: the asm statements that issue wgmma name the registers, the waits do not.
template <int N>
__device__ __forceinline__ void Pin(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// Accumulator layout of an m64nN FP32 result (N / 2 registers per thread): warp w of the
// warpgroup holds rows 16w + lane / 4 and that + 8; register 4j + e holds column
// 8j + 2(lane % 4) + (e & 1) of row (e < 2 ? 16w + lane/4 : 16w + lane/4 + 8).

// d (+)= A B, m64n64k16, A and B from shared memory; kTransA / kTransB: MN-major operand.
template <int kTransA, int kTransB>
__device__ __forceinline__ void MmaSS64(float (&d)[32], uint64_t a, uint64_t b, bool accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "%32, %33, p, 1, 1, %35, %36;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]),
        "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]),
        "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(a), "l"(b), "r"(static_cast<int>(accumulate)), "n"(kTransA), "n"(kTransB));
}

// d (+)= A B, m64n32k16, A and B from shared memory.
template <int kTransA, int kTransB>
__device__ __forceinline__ void MmaSS32(float (&d)[16], uint64_t a, uint64_t b, bool accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
      "%16, %17, p, 1, 1, %19, %20;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15])
      : "l"(a), "l"(b), "r"(static_cast<int>(accumulate)), "n"(kTransA), "n"(kTransB));
}

// d += A B, m64n64k16, A (64 x 16 bf16) from registers in the m16n8k16 A-fragment layout per
// warp (warp w: rows 16w..16w+15), B from shared memory.
template <int kTransB>
__device__ __forceinline__ void MmaRS64(float (&d)[32], const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "{%32, %33, %34, %35}, %36, 1, 1, 1, %37;\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]),
        "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]),
        "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "n"(kTransB));
}

// d += A B, m64n32k16, A from registers.
template <int kTransB>
__device__ __forceinline__ void MmaRS32(float (&d)[16], const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
      "{%16, %17, %18, %19}, %20, 1, 1, 1, %21;\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "n"(kTransB));
}

// N-generic front ends: kN is 64 or 32.
template <int kN, int kTransA, int kTransB>
__device__ __forceinline__ void MmaSS(float (&d)[kN / 2], uint64_t a, uint64_t b, bool accumulate) {
  if constexpr (kN == 64) {
    MmaSS64<kTransA, kTransB>(d, a, b, accumulate);
  } else {
    static_assert(kN == 32, "n = 64 or 32");
    MmaSS32<kTransA, kTransB>(d, a, b, accumulate);
  }
}

template <int kN, int kTransB>
__device__ __forceinline__ void MmaRS(float (&d)[kN / 2], const uint32_t (&a)[4], uint64_t b) {
  if constexpr (kN == 64) {
    MmaRS64<kTransB>(d, a, b);
  } else {
    static_assert(kN == 32, "n = 64 or 32");
    MmaRS32<kTransB>(d, a, b);
  }
}

}  // namespace lightning_wgmma
}  // namespace lightrl
