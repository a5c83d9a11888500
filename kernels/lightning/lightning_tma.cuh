// sm_90a bulk tensor copies (TMA) and shared-memory barriers for the lightning prefill:
// tiles of a strided [tokens, heads, d] bf16 view move between global and shared memory
// in one instruction, completion counted in bytes on an mbarrier. Internal to
// kernels/lightning (device half included by sm_90a .cu files only); the host half
// encodes the tensor maps and owns nothing else.
#pragma once

#include <cstdint>

#include <cuda.h>
#include <cuda_runtime.h>

namespace lightrl {
namespace lightning_tma {

// Host: whether this process can encode tensor maps (the driver exports the encoder).
bool Available();

// Host: the map of `rows` tokens of a [tokens, heads, head_dim] bf16 view read or written in
// boxes of `box_rows` tokens x `box_cols` columns of one head, swizzled 128 B (box_cols 64)
// or 64 B (box_cols 32) as the wgmma tiles are. Returns the driver's error as a runtime
// error (cudaErrorInvalidValue for a view TMA cannot describe).
cudaError_t EncodeView(CUtensorMap* map, const void* data, int64_t token_stride,
                       int64_t head_stride, int64_t rows, int num_heads, int head_dim,
                       int box_rows, int box_cols);

#if defined(__CUDACC__)

__device__ __forceinline__ void BarrierInit(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}

// Makes barrier initialisation visible to the async proxy; a CTA barrier must follow.
__device__ __forceinline__ void FenceBarrierInit() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

// One arrival that also expects `bytes` of copies to complete on the barrier.
__device__ __forceinline__ void BarrierExpect(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}

// One arrival (release: this thread's earlier shared-memory accesses happen before a
// waiter's later ones).
__device__ __forceinline__ void BarrierArrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}

// A barrier among `threads` threads (whole warps) of the CTA; id 0 is __syncthreads'.
__device__ __forceinline__ void NamedBarrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// Waits until the barrier's phase with parity `parity` has completed.
__device__ __forceinline__ void BarrierWait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}

// Copies the box at (col, head, row) of `map` into shared memory at `dst`, counted on `bar`.
// Rows outside [0, rows) of the map arrive as zeros.
__device__ __forceinline__ void Load(uint32_t dst, const CUtensorMap* map, int col, int head,
                                     int row, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes "
      "[%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(col), "r"(head), "r"(row), "r"(bar)
      : "memory");
}

// Copies shared memory at `src` to the box at (col, head, row) of `map`; completes with the
// bulk group this thread commits next.
__device__ __forceinline__ void Store(const CUtensorMap* map, int col, int head, int row,
                                      uint32_t src) {
  asm volatile(
      "cp.async.bulk.tensor.3d.global.shared::cta.tile.bulk_group [%0, {%1, %2, %3}], [%4];\n" ::"l"(
          reinterpret_cast<uint64_t>(map)),
      "r"(col), "r"(head), "r"(row), "r"(src)
      : "memory");
}

__device__ __forceinline__ void StoreCommit() {
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
}

// Waits until this thread's committed stores have read their shared memory (kRead) or are
// complete in global memory.
template <bool kRead>
__device__ __forceinline__ void StoreWait() {
  if constexpr (kRead) {
    asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
  } else {
    asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
  }
}

__device__ __forceinline__ void Prefetch(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

#endif  // __CUDACC__

}  // namespace lightning_tma
}  // namespace lightrl
