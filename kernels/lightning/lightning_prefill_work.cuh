// The (sequence, head, value slice) a lightning prefill CTA owns, from its block index
// (slices fastest, then heads), and where that sequence's tokens and state are. Internal
// to the prefill kernels (included by .cu files only).
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

#include "kernels/lightning/lightning_prefill.h"

namespace lightrl {

struct PrefillWork {
  int slice = 0, head = 0, seq = 0;
  int64_t begin = 0;  // the sequence's first token
  int len = 0;        // its tokens
  int slot = 0;       // its state slot; negative: none
};

__device__ __forceinline__ PrefillWork PrefillWorkOf(const LightningPrefillParams& p, int num_slices) {
  PrefillWork w;
  int work = blockIdx.x;
  w.slice = work % num_slices;
  work /= num_slices;
  w.head = work % p.num_heads;
  w.seq = work / p.num_heads;
  w.begin = p.cu_seqlens[w.seq];
  w.len = p.cu_seqlens[w.seq + 1] - static_cast<int>(w.begin);
  w.slot = p.state_slots ? p.state_slots[w.seq] : w.seq;
  return w;
}

// Launches a prefill kernel (taking (params, num_slices, extra...)) with one CTA per
// (sequence, head, slice) and `smem_bytes` of dynamic shared memory.
template <typename Kernel, typename... Extra>
cudaError_t LaunchPrefillGrid(Kernel kernel, int threads, size_t smem_bytes,
                              const LightningPrefillParams& p, int num_slices,
                              cudaStream_t stream, const Extra&... extra) {
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem_bytes));
  if (err != cudaSuccess) return err;
  const int64_t num_ctas = int64_t{p.num_seqs} * p.num_heads * num_slices;
  if (num_ctas > 0x7fffffff) return cudaErrorInvalidConfiguration;
  kernel<<<static_cast<unsigned>(num_ctas), threads, smem_bytes, stream>>>(p, num_slices, extra...);
  return cudaGetLastError();
}

}  // namespace lightrl
