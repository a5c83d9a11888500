#include "kernels/paged_attention/paged_attention.h"

#include <cmath>

// Decode attention, flash-decoding style. The partition kernel runs one CTA of 128 threads
// per (sequence, KV head, partition of the context) and serves all the query heads of that
// KV head's group at once, so each cached key and value is read once per group. It walks
// its partition in tiles of 128 positions: thread i scores position i of the tile against
// every query head of the group (its key row read with 16-byte loads; the scaled queries
// sit in shared memory), the tile's maximum and sum meet in a block reduction (an online
// softmax across tiles), then the threads turn to the values: thread i owns column i % d
// and accumulates p * v over the tile's positions. The partial (o, max, sum) of every
// partition go to the workspace, and the combine kernel weighs them into o.

namespace lightrl {
namespace {

constexpr int kThreads = 128;
constexpr int kTile = 128;  // positions scored per pass, one per thread
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ float WarpMax(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

__device__ __forceinline__ float WarpSum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Workspace: partial o [batch, heads, partitions, d], then (max, sum) [batch, heads,
// partitions, 2].
__device__ __forceinline__ float* MaxSum(const PagedDecodeAttentionParams& p, int head_dim) {
  return p.workspace + int64_t{p.batch} * p.num_heads * p.num_partitions * head_dim;
}

template <int kD, int kG>
__global__ void __launch_bounds__(kThreads)
    PagedDecodePartitionKernel(const PagedDecodeAttentionParams p) {
  constexpr int kSub = kThreads / kD;  // position subsets of the value pass (1 or 2)
  __shared__ float s_q[kG][kD];
  __shared__ float s_p[kG][kTile];
  __shared__ int64_t s_row[kTile];
  __shared__ float s_max[kG][kWarps];
  __shared__ float s_sum[kG][kWarps];
  __shared__ float s_part[kSub > 1 ? kSub - 1 : 1][kG][kD];

  const int num_kv = p.cache.num_kv_heads;
  const int kvh = blockIdx.x % num_kv;
  const int b = blockIdx.x / num_kv;
  const int part = blockIdx.y;
  const int tid = threadIdx.x;
  const int lane = tid % 32, warp = tid / 32;
  const int h0 = kvh * kG;
  const int row = p.seq_rows[b];
  const int context = row >= 0 ? p.positions[b] + 1 : 0;
  const int begin = part * p.partition_tokens;
  const int end = min(context, begin + p.partition_tokens);
  float* max_sum = MaxSum(p, kD);
  const int64_t first = (int64_t{b} * p.num_heads + h0) * p.num_partitions + part;
  if (begin >= end) {  // uniform over the CTA
    if (tid < kG) {
      max_sum[2 * (first + int64_t{tid} * p.num_partitions)] = -INFINITY;
      max_sum[2 * (first + int64_t{tid} * p.num_partitions) + 1] = 0.f;
    }
    return;
  }

  for (int i = tid; i < kG * kD; i += kThreads) {
    const int g = i / kD, c = i % kD;
    s_q[g][c] = p.scale * __bfloat162float(
                              p.q.data[b * p.q.token_stride + (h0 + g) * p.q.head_stride + c]);
  }
  const int64_t kv_row_stride = int64_t{num_kv} * kD;
  const int32_t* pages = p.cache.page_table + int64_t{row} * p.cache.page_table_stride;
  const int page_size = p.cache.page_size;
  const int col = tid % kD, sub = tid / kD;

  float run_max[kG], run_sum[kG], acc[kG];
#pragma unroll
  for (int g = 0; g < kG; ++g) {
    run_max[g] = -INFINITY;
    run_sum[g] = 0.f;
    acc[g] = 0.f;
  }
  __syncthreads();

  for (int t0 = begin; t0 < end; t0 += kTile) {
    const int t = t0 + tid;
    float s[kG];
    if (t < end) {
      const int64_t cache_row = int64_t{pages[t / page_size]} * page_size + t % page_size;
      s_row[tid] = cache_row;
      const uint4* key =
          reinterpret_cast<const uint4*>(p.cache.k_pool + cache_row * kv_row_stride + kvh * kD);
#pragma unroll
      for (int g = 0; g < kG; ++g) s[g] = 0.f;
#pragma unroll 4
      for (int c8 = 0; c8 < kD / 8; ++c8) {
        const uint4 raw = key[c8];
        const __nv_bfloat162* k2 = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float2 kf = __bfloat1622float2(k2[j]);
#pragma unroll
          for (int g = 0; g < kG; ++g) {
            s[g] = fmaf(s_q[g][c8 * 8 + 2 * j], kf.x, s[g]);
            s[g] = fmaf(s_q[g][c8 * 8 + 2 * j + 1], kf.y, s[g]);
          }
        }
      }
    } else {
#pragma unroll
      for (int g = 0; g < kG; ++g) s[g] = -INFINITY;
    }
#pragma unroll
    for (int g = 0; g < kG; ++g) {
      const float m = WarpMax(s[g]);
      if (lane == 0) s_max[g][warp] = m;
    }
    __syncthreads();
#pragma unroll
    for (int g = 0; g < kG; ++g) {
      float tile_max = s_max[g][0];
#pragma unroll
      for (int w = 1; w < kWarps; ++w) tile_max = fmaxf(tile_max, s_max[g][w]);
      const float new_max = fmaxf(run_max[g], tile_max);  // finite: the tile has a position
      const float rescale = __expf(run_max[g] - new_max);
      run_max[g] = new_max;
      run_sum[g] *= rescale;
      acc[g] *= rescale;
      const float prob = t < end ? __expf(s[g] - new_max) : 0.f;
      s_p[g][tid] = prob;
      const float sum = WarpSum(prob);
      if (lane == 0) s_sum[g][warp] = sum;
    }
    __syncthreads();
#pragma unroll
    for (int g = 0; g < kG; ++g) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) run_sum[g] += s_sum[g][w];
    }
    const int n = min(kTile, end - t0);
    const __nv_bfloat16* values = p.cache.v_pool + kvh * kD + col;
    for (int j = sub; j < n; j += kSub) {
      const float v = __bfloat162float(values[s_row[j] * kv_row_stride]);
#pragma unroll
      for (int g = 0; g < kG; ++g) acc[g] = fmaf(s_p[g][j], v, acc[g]);
    }
    __syncthreads();  // s_p, s_row, s_max and s_sum are rewritten by the next tile
  }

  if (kSub > 1) {
    if (sub > 0) {
#pragma unroll
      for (int g = 0; g < kG; ++g) s_part[sub - 1][g][col] = acc[g];
    }
    __syncthreads();
    if (sub > 0) return;
#pragma unroll
    for (int g = 0; g < kG; ++g) {
      for (int i = 0; i < kSub - 1; ++i) acc[g] += s_part[i][g][col];
    }
  }
#pragma unroll
  for (int g = 0; g < kG; ++g) {
    const int64_t at = first + int64_t{g} * p.num_partitions;
    p.workspace[at * kD + col] = acc[g];
    if (col == g) {
      max_sum[2 * at] = run_max[g];
      max_sum[2 * at + 1] = run_sum[g];
    }
  }
}

// One CTA of d threads per (sequence, query head): weighs the partitions' partial outputs
// by exp(max_j - max) and divides by the total sum. Empty partitions are skipped (their
// partial output was never written); a sequence with no positions gets zeros.
template <int kD>
__global__ void __launch_bounds__(kD) PagedDecodeCombineKernel(const PagedDecodeAttentionParams p) {
  const int bh = blockIdx.x;
  const int b = bh / p.num_heads, h = bh % p.num_heads;
  const int col = threadIdx.x;
  const int parts = p.num_partitions;
  const float* max_sum = MaxSum(p, kD) + int64_t{bh} * parts * 2;
  float top = -INFINITY;
  for (int j = 0; j < parts; ++j) top = fmaxf(top, max_sum[2 * j]);
  float total = 0.f, acc = 0.f;
  if (top > -INFINITY) {
    for (int j = 0; j < parts; ++j) {
      const float m = max_sum[2 * j];
      if (m == -INFINITY) continue;
      const float w = __expf(m - top);
      total = fmaf(max_sum[2 * j + 1], w, total);
      acc = fmaf(p.workspace[(int64_t{bh} * parts + j) * kD + col], w, acc);
    }
  }
  p.o.data[b * p.o.token_stride + h * p.o.head_stride + col] =
      __float2bfloat16_rn(total > 0.f ? acc / total : 0.f);
}

__global__ void PagedKvAppendKernel(const PagedKvAppendParams p) {
  const int b = blockIdx.x;
  const int row = p.seq_rows[b];
  if (row < 0) return;
  const PagedKvCacheView& c = p.cache;
  const int pos = p.positions[b];
  const int64_t cache_row =
      int64_t{c.page_table[int64_t{row} * c.page_table_stride + pos / c.page_size]} * c.page_size +
      pos % c.page_size;
  const int chunks = c.head_dim / 8;
  const int kvh = threadIdx.x / chunks, c8 = threadIdx.x % chunks;
  const int64_t dst = (cache_row * c.num_kv_heads + kvh) * c.head_dim + c8 * 8;
  *reinterpret_cast<uint4*>(c.k_pool + dst) = *reinterpret_cast<const uint4*>(
      p.k.data + b * p.k.token_stride + kvh * p.k.head_stride + c8 * 8);
  *reinterpret_cast<uint4*>(c.v_pool + dst) = *reinterpret_cast<const uint4*>(
      p.v.data + b * p.v.token_stride + kvh * p.v.head_stride + c8 * 8);
}

const char* ValidateCache(const PagedKvCacheView& c) {
  if (c.k_pool == nullptr || c.v_pool == nullptr || !IsAligned16(c.k_pool) ||
      !IsAligned16(c.v_pool)) {
    return "k_pool and v_pool must be non-null and 16-byte aligned";
  }
  if (c.page_table == nullptr || c.page_table_stride <= 0) {
    return "page_table must be non-null with a positive stride";
  }
  if (c.page_size <= 0) return "page_size must be > 0";
  if (c.head_dim != 64 && c.head_dim != 128) return "head_dim must be 64 or 128";
  if (c.num_kv_heads <= 0 || c.num_kv_heads * c.head_dim / 8 > 1024) {
    return "num_kv_heads must be in [1, 8192 / head_dim]";
  }
  return nullptr;
}

bool ViewOk(const void* data, int64_t token_stride, int64_t head_stride) {
  return data != nullptr && IsAligned16(data) && token_stride % 8 == 0 && head_stride % 8 == 0;
}

template <int kD, int kG>
void LaunchPartitions(const PagedDecodeAttentionParams& p, dim3 grid, cudaStream_t stream) {
  PagedDecodePartitionKernel<kD, kG><<<grid, kThreads, 0, stream>>>(p);
}

template <int kD>
bool LaunchForGroup(const PagedDecodeAttentionParams& p, int group, dim3 grid,
                    cudaStream_t stream) {
  switch (group) {
    case 1: LaunchPartitions<kD, 1>(p, grid, stream); return true;
    case 2: LaunchPartitions<kD, 2>(p, grid, stream); return true;
    case 4: LaunchPartitions<kD, 4>(p, grid, stream); return true;
    case 8: LaunchPartitions<kD, 8>(p, grid, stream); return true;
    case 16: LaunchPartitions<kD, 16>(p, grid, stream); return true;
    default: return false;
  }
}

}  // namespace

const char* PagedKvAppendParams::Validate() const {
  if (const char* bad = ValidateCache(cache)) return bad;
  if (!ViewOk(k.data, k.token_stride, k.head_stride) ||
      !ViewOk(v.data, v.token_stride, v.head_stride)) {
    return "k and v need non-null 16-byte aligned data and strides that are multiples of 8";
  }
  if (seq_rows == nullptr || positions == nullptr) return "seq_rows and positions are required";
  if (batch < 0) return "batch must be >= 0";
  return nullptr;
}

const char* PagedDecodeAttentionParams::Validate() const {
  if (const char* bad = ValidateCache(cache)) return bad;
  if (!ViewOk(q.data, q.token_stride, q.head_stride) ||
      !ViewOk(o.data, o.token_stride, o.head_stride)) {
    return "q and o need non-null 16-byte aligned data and strides that are multiples of 8";
  }
  if (seq_rows == nullptr || positions == nullptr) return "seq_rows and positions are required";
  if (batch < 0) return "batch must be >= 0";
  if (num_heads <= 0 || num_heads % cache.num_kv_heads != 0) {
    return "num_heads must be a positive multiple of num_kv_heads";
  }
  const int group = num_heads / cache.num_kv_heads;
  if (group != 1 && group != 2 && group != 4 && group != 8 && group != 16) {
    return "num_heads / num_kv_heads must be 1, 2, 4, 8 or 16";
  }
  if (!std::isfinite(scale)) return "scale must be finite";
  if (partition_tokens <= 0 || partition_tokens % kTile != 0) {
    return "partition_tokens must be a positive multiple of 128";
  }
  if (num_partitions <= 0 || num_partitions > 65535) return "num_partitions must be in [1, 65535]";
  if (workspace == nullptr) return "workspace is required";
  if (int64_t{batch} * num_heads > 0x7fffffff) return "batch * num_heads exceeds a grid";
  return nullptr;
}

int64_t PagedDecodeWorkspaceFloats(int batch, int num_heads, int head_dim, int num_partitions) {
  return int64_t{batch} * num_heads * num_partitions * (head_dim + 2);
}

cudaError_t LaunchPagedKvAppend(const PagedKvAppendParams& params, cudaStream_t stream) {
  if (params.Validate() != nullptr) return cudaErrorInvalidValue;
  if (params.batch == 0) return cudaSuccess;
  const int threads = params.cache.num_kv_heads * params.cache.head_dim / 8;
  PagedKvAppendKernel<<<params.batch, threads, 0, stream>>>(params);
  return cudaGetLastError();
}

cudaError_t LaunchPagedDecodeAttention(const PagedDecodeAttentionParams& params,
                                       cudaStream_t stream) {
  if (params.Validate() != nullptr) return cudaErrorInvalidValue;
  if (params.batch == 0) return cudaSuccess;
  const int group = params.num_heads / params.cache.num_kv_heads;
  const dim3 grid(static_cast<unsigned>(params.batch * params.cache.num_kv_heads),
                  static_cast<unsigned>(params.num_partitions));
  const unsigned combine_grid = static_cast<unsigned>(params.batch * params.num_heads);
  if (params.cache.head_dim == 64) {
    LaunchForGroup<64>(params, group, grid, stream);
    PagedDecodeCombineKernel<64><<<combine_grid, 64, 0, stream>>>(params);
  } else {
    LaunchForGroup<128>(params, group, grid, stream);
    PagedDecodeCombineKernel<128><<<combine_grid, 128, 0, stream>>>(params);
  }
  return cudaGetLastError();
}

}  // namespace lightrl
