// Decode-time attention of the softmax layers over a paged KV cache: appending each
// sequence's new key and value to its page, and one query token per sequence attending to
// every cached position (split along the context into partitions whose partial results a
// second kernel combines, so that a few long sequences still fill the GPU). Grouped-query
// attention: query head h reads KV head h / (num_heads / num_kv_heads). Nothing here
// allocates or syncs, and the launch shapes depend only on host-side sizes, so a captured
// CUDA graph replays them for any page tables, positions and context lengths.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/lightning/lightning_prefill.h"

namespace lightrl {

// The cache of one softmax layer. Position p of the sequence whose page-table row is r
// lives in cache row page_table[r * page_table_stride + p / page_size] * page_size +
// p % page_size of the pools; a pool is [rows, num_kv_heads, head_dim] contiguous bf16.
struct PagedKvCacheView {
  __nv_bfloat16* k_pool = nullptr;
  __nv_bfloat16* v_pool = nullptr;
  const int32_t* page_table = nullptr;
  int64_t page_table_stride = 0;  // entries per page-table row (the most pages a sequence has)
  int page_size = 0;
  int num_kv_heads = 0;
  int head_dim = 0;  // 64 or 128
};

// Writes k[b] and v[b] ([batch, num_kv_heads, d] views) at position positions[b] of the
// sequence with page-table row seq_rows[b]. A negative row skips b.
struct PagedKvAppendParams {
  PagedKvCacheView cache;
  LightningInputView k;
  LightningInputView v;
  const int32_t* seq_rows = nullptr;   // [batch]
  const int32_t* positions = nullptr;  // [batch]
  int batch = 0;

  const char* Validate() const;  // nullptr when usable, else what is wrong
};

// o[b, h] = softmax_t(scale * q[b, h] . K[t]) V[t] over the positions t = 0 ..
// positions[b] of sequence b (its new token included, so append first). Partition j
// covers positions [j * partition_tokens, (j + 1) * partition_tokens); the caller picks
// num_partitions * partition_tokens >= the longest context it may see. A negative row
// writes zeros. The workspace holds the partitions' partial results.
struct PagedDecodeAttentionParams {
  PagedKvCacheView cache;
  LightningInputView q;   // [batch, num_heads, d]
  LightningOutputView o;  // [batch, num_heads, d]
  const int32_t* seq_rows = nullptr;   // [batch]
  const int32_t* positions = nullptr;  // [batch]
  int batch = 0;
  int num_heads = 0;
  float scale = 0.f;
  int partition_tokens = 0;  // a multiple of 128
  int num_partitions = 0;
  float* workspace = nullptr;  // PagedDecodeWorkspaceFloats(...) floats

  const char* Validate() const;
};

// Floats of workspace a call with these sizes needs.
int64_t PagedDecodeWorkspaceFloats(int batch, int num_heads, int head_dim, int num_partitions);

// Launch on `stream`; cudaErrorInvalidValue for parameters that Validate() rejects, else
// the launch's error.
cudaError_t LaunchPagedKvAppend(const PagedKvAppendParams& params, cudaStream_t stream);
cudaError_t LaunchPagedDecodeAttention(const PagedDecodeAttentionParams& params,
                                       cudaStream_t stream);

}  // namespace lightrl
