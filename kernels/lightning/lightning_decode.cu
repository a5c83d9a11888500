#include "kernels/lightning/lightning_decode.h"

#include <cuda_bf16.h>

// One CTA of 256 threads per (sequence, head). The d x d state streams through once:
// each thread owns 4 adjacent columns of d/(256/(d/4)) rows, issues all of its 16-byte
// loads before the first use, updates them, stores them back with streaming hints (the
// state is not re-read before the next step) and keeps the partial q.S of its columns;
// the row groups' partial sums meet in shared memory.

namespace lightrl {
namespace {

constexpr int kThreads = 256;

template <int kD>
__global__ void __launch_bounds__(kThreads) LightningDecodeKernel(const LightningDecodeParams p) {
  constexpr int kColThreads = kD / 4;               // threads across one row, 4 columns each
  constexpr int kRowGroups = kThreads / kColThreads;
  constexpr int kRowsPerThread = kD / kRowGroups;
  __shared__ float s_q[kD];
  __shared__ float s_k[kD];
  __shared__ float s_part[kRowGroups][kD];

  const int h = blockIdx.x % p.num_heads;
  const int b = blockIdx.x / p.num_heads;
  const int slot = p.state_slots[b];
  if (slot < 0) return;  // uniform over the CTA, before any barrier

  const int tid = threadIdx.x;
  const int c4 = tid % kColThreads;
  const int rg = tid / kColThreads;
  float* state = p.state + (static_cast<int64_t>(slot) * p.num_heads + h) * kD * kD + 4 * c4;

  float4 s[kRowsPerThread];
#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i) {
    s[i] = __ldcs(reinterpret_cast<const float4*>(state + (rg + i * kRowGroups) * kD));
  }
  if (tid < kD) {
    s_q[tid] = __bfloat162float(p.q.data[b * p.q.token_stride + h * p.q.head_stride + tid]);
  } else if (tid < 2 * kD) {
    s_k[tid - kD] =
        __bfloat162float(p.k.data[b * p.k.token_stride + h * p.k.head_stride + tid - kD]);
  }
  const __nv_bfloat162* v2 = reinterpret_cast<const __nv_bfloat162*>(
      p.v.data + b * p.v.token_stride + h * p.v.head_stride + 4 * c4);
  const float2 v01 = __bfloat1622float2(v2[0]);
  const float2 v23 = __bfloat1622float2(v2[1]);
  const float lambda = expf(-p.slopes[h]);
  __syncthreads();

  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i) {
    const int row = rg + i * kRowGroups;
    const float kr = s_k[row];
    const float qr = s_q[row];
    s[i].x = fmaf(lambda, s[i].x, kr * v01.x);
    s[i].y = fmaf(lambda, s[i].y, kr * v01.y);
    s[i].z = fmaf(lambda, s[i].z, kr * v23.x);
    s[i].w = fmaf(lambda, s[i].w, kr * v23.y);
    __stcs(reinterpret_cast<float4*>(state + row * kD), s[i]);
    acc.x = fmaf(qr, s[i].x, acc.x);
    acc.y = fmaf(qr, s[i].y, acc.y);
    acc.z = fmaf(qr, s[i].z, acc.z);
    acc.w = fmaf(qr, s[i].w, acc.w);
  }
  *reinterpret_cast<float4*>(&s_part[rg][4 * c4]) = acc;
  __syncthreads();
  if (tid < kD) {
    float sum = 0.f;
#pragma unroll
    for (int r = 0; r < kRowGroups; ++r) sum += s_part[r][tid];
    p.o.data[b * p.o.token_stride + h * p.o.head_stride + tid] = __float2bfloat16_rn(sum);
  }
}

}  // namespace

const char* LightningDecodeParams::Validate() const {
  if (batch < 0 || num_heads <= 0) return "batch must be >= 0 and num_heads > 0";
  if (head_dim != 64 && head_dim != 128) return "head_dim must be 64 or 128";
  if (const char* bad = ValidateLightningViews(q, k, v, o)) return bad;
  if (state_slots == nullptr || slopes == nullptr) return "state_slots and slopes are required";
  if (state == nullptr || !IsAligned16(state)) return "state must be non-null and 16-byte aligned";
  return nullptr;
}

cudaError_t LaunchLightningDecode(const LightningDecodeParams& params, cudaStream_t stream) {
  if (params.Validate() != nullptr) return cudaErrorInvalidValue;
  if (params.batch == 0) return cudaSuccess;
  const int64_t num_ctas = int64_t{params.batch} * params.num_heads;
  if (num_ctas > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const unsigned grid = static_cast<unsigned>(num_ctas);
  if (params.head_dim == 64) {
    LightningDecodeKernel<64><<<grid, kThreads, 0, stream>>>(params);
  } else {
    LightningDecodeKernel<128><<<grid, kThreads, 0, stream>>>(params);
  }
  return cudaGetLastError();
}

}  // namespace lightrl
