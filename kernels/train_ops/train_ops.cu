#include "kernels/train_ops/train_ops.h"

#include <cmath>

// Element-wise kernels (SwiGLU, AdamW) walk their arrays grid-stride, 16 bytes a thread
// where the arrays allow it. The token log-probability kernels give each logits row a CTA:
// the forward keeps a running (max, sum of exp) per thread over 16-byte loads and merges
// them across the CTA; the backward reads the row once more and writes its bf16 gradient.

namespace lightrl {
namespace {

constexpr int kThreads = 256;
constexpr int kVec = 8;  // bf16 elements in 16 bytes

__host__ __device__ inline bool Aligned(const void* p, int bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

unsigned GridFor(int64_t work) {
  constexpr int64_t kMaxCtas = 8192;  // grid-stride beyond this
  const int64_t ctas = (work + kThreads - 1) / kThreads;
  return static_cast<unsigned>(ctas < 1 ? 1 : (ctas < kMaxCtas ? ctas : kMaxCtas));
}

__device__ __forceinline__ float Sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

__device__ __forceinline__ __nv_bfloat16 SwiGluElement(__nv_bfloat16 a, __nv_bfloat16 b) {
  const float x = __bfloat162float(a);
  return __float2bfloat16_rn(x * Sigmoid(x) * __bfloat162float(b));
}

__device__ __forceinline__ void SwiGluGradElement(__nv_bfloat16 a, __nv_bfloat16 b,
                                                  __nv_bfloat16 dh, __nv_bfloat16* da,
                                                  __nv_bfloat16* db) {
  const float x = __bfloat162float(a), g = __bfloat162float(dh);
  const float s = Sigmoid(x);
  *da = __float2bfloat16_rn(g * __bfloat162float(b) * s * (1.f + x * (1.f - s)));
  *db = __float2bfloat16_rn(g * x * s);
}

__global__ void __launch_bounds__(kThreads) SwiGluVecKernel(const SwiGluParams p) {
  const int64_t chunks = p.n / kVec, step = int64_t{gridDim.x} * blockDim.x;
  for (int64_t c = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; c < chunks; c += step) {
    const uint4 a_raw = reinterpret_cast<const uint4*>(p.a)[c];
    const uint4 b_raw = reinterpret_cast<const uint4*>(p.b)[c];
    const auto* as = reinterpret_cast<const __nv_bfloat16*>(&a_raw);
    const auto* bs = reinterpret_cast<const __nv_bfloat16*>(&b_raw);
    uint4 h_raw;
    auto* hs = reinterpret_cast<__nv_bfloat16*>(&h_raw);
#pragma unroll
    for (int j = 0; j < kVec; ++j) hs[j] = SwiGluElement(as[j], bs[j]);
    reinterpret_cast<uint4*>(p.h)[c] = h_raw;
  }
}

__global__ void __launch_bounds__(kThreads) SwiGluScalarKernel(const SwiGluParams p) {
  const int64_t step = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < p.n; i += step) {
    p.h[i] = SwiGluElement(p.a[i], p.b[i]);
  }
}

__global__ void __launch_bounds__(kThreads) SwiGluBackwardVecKernel(const SwiGluBackwardParams p) {
  const int64_t chunks = p.n / kVec, step = int64_t{gridDim.x} * blockDim.x;
  for (int64_t c = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; c < chunks; c += step) {
    const uint4 a_raw = reinterpret_cast<const uint4*>(p.a)[c];
    const uint4 b_raw = reinterpret_cast<const uint4*>(p.b)[c];
    const uint4 g_raw = reinterpret_cast<const uint4*>(p.dh)[c];
    const auto* as = reinterpret_cast<const __nv_bfloat16*>(&a_raw);
    const auto* bs = reinterpret_cast<const __nv_bfloat16*>(&b_raw);
    const auto* gs = reinterpret_cast<const __nv_bfloat16*>(&g_raw);
    uint4 da_raw, db_raw;
    auto* das = reinterpret_cast<__nv_bfloat16*>(&da_raw);
    auto* dbs = reinterpret_cast<__nv_bfloat16*>(&db_raw);
#pragma unroll
    for (int j = 0; j < kVec; ++j) SwiGluGradElement(as[j], bs[j], gs[j], &das[j], &dbs[j]);
    reinterpret_cast<uint4*>(p.da)[c] = da_raw;
    reinterpret_cast<uint4*>(p.db)[c] = db_raw;
  }
}

__global__ void __launch_bounds__(kThreads)
    SwiGluBackwardScalarKernel(const SwiGluBackwardParams p) {
  const int64_t step = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < p.n; i += step) {
    SwiGluGradElement(p.a[i], p.b[i], p.dh[i], &p.da[i], &p.db[i]);
  }
}

// A running log-sum-exp: the largest value seen and the sum of exp(value - max).
struct MaxSum {
  float max = -INFINITY;
  float sum = 0.f;
};

__device__ __forceinline__ MaxSum Merge(MaxSum a, MaxSum b) {
  if (b.max == -INFINITY) return a;
  if (a.max == -INFINITY) return b;
  const float m = fmaxf(a.max, b.max);
  return {m, a.sum * expf(a.max - m) + b.sum * expf(b.max - m)};
}

__device__ __forceinline__ void Add(MaxSum& acc, float x) {
  if (x > acc.max) {
    acc.sum = acc.sum * expf(acc.max - x) + 1.f;
    acc.max = x;
  } else {
    acc.sum += expf(x - acc.max);
  }
}

// The (max, sum) of the whole CTA, in every thread.
__device__ MaxSum BlockMerge(MaxSum v) {
  __shared__ float s_max[kThreads / 32], s_sum[kThreads / 32];
  __shared__ MaxSum s_total;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    MaxSum o{__shfl_xor_sync(0xffffffffu, v.max, off), __shfl_xor_sync(0xffffffffu, v.sum, off)};
    v = Merge(v, o);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    s_max[warp] = v.max;
    s_sum[warp] = v.sum;
  }
  __syncthreads();
  if (warp == 0) {
    const int warps = blockDim.x / 32;
    MaxSum t = lane < warps ? MaxSum{s_max[lane], s_sum[lane]} : MaxSum{};
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      MaxSum o{__shfl_xor_sync(0xffffffffu, t.max, off), __shfl_xor_sync(0xffffffffu, t.sum, off)};
      t = Merge(t, o);
    }
    if (lane == 0) s_total = t;
  }
  __syncthreads();
  return s_total;
}

template <bool kVec4>
__global__ void __launch_bounds__(kThreads) TokenLogprobKernel(const TokenLogprobParams p) {
  const float* row = p.logits + blockIdx.x * p.logits_row_stride;
  MaxSum acc;
  if (kVec4) {
    const int quads = p.vocab / 4;
    for (int c = threadIdx.x; c < quads; c += blockDim.x) {
      const float4 v = reinterpret_cast<const float4*>(row)[c];
      const float m = fmaxf(fmaxf(v.x, v.y), fmaxf(v.z, v.w));
      if (m > acc.max) {
        acc.sum *= expf(acc.max - m);
        acc.max = m;
      }
      if (acc.max != -INFINITY) {
        acc.sum += expf(v.x - acc.max) + expf(v.y - acc.max) + expf(v.z - acc.max) +
                   expf(v.w - acc.max);
      }
    }
  } else {
    for (int i = threadIdx.x; i < p.vocab; i += blockDim.x) Add(acc, row[i]);
  }
  const MaxSum total = BlockMerge(acc);
  if (threadIdx.x == 0) {
    const float lse = total.max + logf(total.sum);
    const int64_t t = p.targets[blockIdx.x];
    p.lse[blockIdx.x] = lse;
    p.logp[blockIdx.x] = (t >= 0 && t < p.vocab) ? row[t] - lse : NAN;
  }
}

__device__ __forceinline__ float LogprobGrad(float logit, float lse, float g, bool target) {
  return g * ((target ? 1.f : 0.f) - expf(logit - lse));
}

template <bool kVec4>
__global__ void __launch_bounds__(kThreads)
    TokenLogprobBackwardKernel(const TokenLogprobBackwardParams p) {
  const float* row = p.logits + blockIdx.x * p.logits_row_stride;
  __nv_bfloat16* out = p.dlogits + blockIdx.x * p.dlogits_row_stride;
  const float lse = p.lse[blockIdx.x], g = p.grad[blockIdx.x];
  const int64_t t = p.targets[blockIdx.x];
  if (kVec4) {
    const int quads = p.vocab / 4;
    for (int c = threadIdx.x; c < quads; c += blockDim.x) {
      const float4 v = reinterpret_cast<const float4*>(row)[c];
      const int64_t v0 = int64_t{c} * 4;
      __nv_bfloat162 lo = __floats2bfloat162_rn(LogprobGrad(v.x, lse, g, v0 == t),
                                                LogprobGrad(v.y, lse, g, v0 + 1 == t));
      __nv_bfloat162 hi = __floats2bfloat162_rn(LogprobGrad(v.z, lse, g, v0 + 2 == t),
                                                LogprobGrad(v.w, lse, g, v0 + 3 == t));
      uint2 packed;
      packed.x = *reinterpret_cast<const uint32_t*>(&lo);
      packed.y = *reinterpret_cast<const uint32_t*>(&hi);
      reinterpret_cast<uint2*>(out)[c] = packed;
    }
  } else {
    for (int i = threadIdx.x; i < p.vocab; i += blockDim.x) {
      out[i] = __float2bfloat16_rn(LogprobGrad(row[i], lse, g, i == t));
    }
  }
}

// Threads per row of a per-row kernel over `dim` bf16 elements, 8 at a time: whole warps,
// at most kThreads.
int RowThreads(int dim) {
  const int warps = (dim / kVec + 31) / 32;
  return 32 * (warps < 1 ? 1 : (warps > kThreads / 32 ? kThreads / 32 : warps));
}

__device__ __forceinline__ void Load8(const __nv_bfloat16* p, float* f) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const auto* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float2 v = __bfloat1622float2(h[j]);
    f[2 * j] = v.x;
    f[2 * j + 1] = v.y;
  }
}

__device__ __forceinline__ void Store8(__nv_bfloat16* p, const float* f) {
  uint4 raw;
  auto* h = reinterpret_cast<__nv_bfloat162*>(&raw);
#pragma unroll
  for (int j = 0; j < 4; ++j) h[j] = __floats2bfloat162_rn(f[2 * j], f[2 * j + 1]);
  *reinterpret_cast<uint4*>(p) = raw;
}

// One CTA per token; dim % 8 == 0 and 16-byte rows (checked by the launcher).
__global__ void __launch_bounds__(kThreads) MoeCombineKernel(const MoeCombineParams p) {
  const int t = blockIdx.x;
  for (int c = threadIdx.x * kVec; c < p.dim; c += blockDim.x * kVec) {
    float acc[kVec] = {};
    for (int j = 0; j < p.top_k; ++j) {
      const float w = p.w[t * p.top_k + j];
      float y[kVec];
      Load8(p.y + p.rows[t * p.top_k + j] * p.dim + c, y);
#pragma unroll
      for (int i = 0; i < kVec; ++i) acc[i] = fmaf(w, y[i], acc[i]);
    }
    Store8(p.out + int64_t{t} * p.dim + c, acc);
  }
}

// One CTA per expert row: its reader's weighted gradient, or zeros.
__global__ void __launch_bounds__(kThreads) MoeCombineGradRowsKernel(const MoeCombineBackwardParams p) {
  const int64_t r = blockIdx.x;
  const int64_t a = p.readers[r];
  const bool read = a >= 0 && a < int64_t{p.tokens} * p.top_k;
  const float w = read ? p.w[a] : 0.f;
  const __nv_bfloat16* g = p.g + (read ? a / p.top_k : 0) * p.dim;
  for (int c = threadIdx.x * kVec; c < p.dim; c += blockDim.x * kVec) {
    float v[kVec] = {};
    if (read) {
      Load8(g + c, v);
#pragma unroll
      for (int i = 0; i < kVec; ++i) v[i] *= w;
    }
    Store8(p.dy + r * p.dim + c, v);
  }
}

__device__ float BlockSumFloat(float v) {
  __shared__ float s_warp[kThreads / 32];
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // s_warp may still be read from the previous call
  if (lane == 0) s_warp[warp] = v;
  __syncthreads();
  float t = 0.f;
  for (int i = 0; i < static_cast<int>(blockDim.x / 32); ++i) t += s_warp[i];
  return t;
}

// One CTA per token: the top_k dot products of its gradient with the rows it read.
__global__ void __launch_bounds__(kThreads) MoeCombineGradWeightsKernel(const MoeCombineBackwardParams p) {
  const int t = blockIdx.x;
  for (int j = 0; j < p.top_k; ++j) {
    const __nv_bfloat16* y = p.y + p.rows[t * p.top_k + j] * p.dim;
    float dot = 0.f;
    for (int c = threadIdx.x * kVec; c < p.dim; c += blockDim.x * kVec) {
      float a[kVec], b[kVec];
      Load8(p.g + int64_t{t} * p.dim + c, a);
      Load8(y + c, b);
#pragma unroll
      for (int i = 0; i < kVec; ++i) dot = fmaf(a[i], b[i], dot);
    }
    dot = BlockSumFloat(dot);
    if (threadIdx.x == 0) p.dw[t * p.top_k + j] = dot;
  }
}

template <bool kBf16Grad>
__device__ __forceinline__ float GradAt(const void* grad, int64_t i) {
  if (kBf16Grad) return __bfloat162float(static_cast<const __nv_bfloat16*>(grad)[i]);
  return static_cast<const float*>(grad)[i];
}

template <bool kBf16Grad>
__device__ __forceinline__ void AdamWRange(const AdamWTensor& t, int64_t begin, int64_t end,
                                           const MasterAdamWParams& p, float scale) {
  const float decay = 1.f - p.lr * p.weight_decay;
  const float step_size = p.lr / t.bias_correction1;
  const float bc2_sqrt = sqrtf(t.bias_correction2);
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const float g = GradAt<kBf16Grad>(t.grad, i) * scale;
    float w = t.master[i] * decay;
    float m = t.exp_avg[i], v = t.exp_avg_sq[i];
    m = fmaf(1.f - p.beta1, g - m, m);
    v = fmaf(p.beta2, v, (1.f - p.beta2) * g * g);
    w -= step_size * m / (sqrtf(v) / bc2_sqrt + p.eps);
    t.master[i] = w;
    t.exp_avg[i] = m;
    t.exp_avg_sq[i] = v;
    if (t.param_out != nullptr) t.param_out[i] = __float2bfloat16_rn(w);
  }
}

__global__ void __launch_bounds__(512) MasterAdamWKernel(const MasterAdamWParams p) {
  const AdamWChunk c = p.chunks[blockIdx.x];
  const AdamWTensor& t = p.tensors[c.tensor];
  const float scale = p.grad_scale != nullptr ? *p.grad_scale : 1.f;
  if (t.grad_bf16) {
    AdamWRange<true>(t, c.begin, c.end, p, scale);
  } else {
    AdamWRange<false>(t, c.begin, c.end, p, scale);
  }
}

// One chunk of one segment: 16-byte loads and two 16-byte stores per 8 elements where both
// sides are aligned for them, else element by element.
__global__ void __launch_bounds__(512) GatherToFp32Kernel(const GatherToFp32Params p) {
  const AdamWChunk c = p.chunks[blockIdx.x];
  const GatherSegment seg = p.segments[c.tensor];
  float* dst = p.dst + seg.dst_offset;
  int64_t i = c.begin;
  if (seg.src == nullptr) {
    if (Aligned(dst + i, 16)) {
      const int64_t vec_end = i + (c.end - i) / 4 * 4;
      for (int64_t j = i + 4 * int64_t{threadIdx.x}; j < vec_end; j += 4 * int64_t{blockDim.x}) {
        *reinterpret_cast<float4*>(dst + j) = make_float4(0.f, 0.f, 0.f, 0.f);
      }
      i = vec_end;
    }
    for (int64_t j = i + threadIdx.x; j < c.end; j += blockDim.x) dst[j] = 0.f;
    return;
  }
  if (Aligned(seg.src + i, 16) && Aligned(dst + i, 16)) {
    const int64_t vec_end = i + (c.end - i) / kVec * kVec;
    for (int64_t j = i + kVec * int64_t{threadIdx.x}; j < vec_end;
         j += kVec * int64_t{blockDim.x}) {
      const uint4 raw = *reinterpret_cast<const uint4*>(seg.src + j);
      const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
      const float2 a = __bfloat1622float2(h[0]), b = __bfloat1622float2(h[1]);
      const float2 c2 = __bfloat1622float2(h[2]), d = __bfloat1622float2(h[3]);
      *reinterpret_cast<float4*>(dst + j) = make_float4(a.x, a.y, b.x, b.y);
      *reinterpret_cast<float4*>(dst + j + 4) = make_float4(c2.x, c2.y, d.x, d.y);
    }
    i = vec_end;
  }
  for (int64_t j = i + threadIdx.x; j < c.end; j += blockDim.x) {
    dst[j] = __bfloat162float(seg.src[j]);
  }
}

}  // namespace

const char* SwiGluParams::Validate() const {
  if (n < 0) return "n must be >= 0";
  if (a == nullptr || b == nullptr || h == nullptr) return "a, b and h are required";
  return nullptr;
}

cudaError_t LaunchSwiGlu(const SwiGluParams& params, cudaStream_t stream) {
  if (params.Validate() != nullptr) return cudaErrorInvalidValue;
  if (params.n == 0) return cudaSuccess;
  if (params.n % kVec == 0 && Aligned(params.a, 16) && Aligned(params.b, 16) &&
      Aligned(params.h, 16)) {
    SwiGluVecKernel<<<GridFor(params.n / kVec), kThreads, 0, stream>>>(params);
  } else {
    SwiGluScalarKernel<<<GridFor(params.n), kThreads, 0, stream>>>(params);
  }
  return cudaGetLastError();
}

const char* SwiGluBackwardParams::Validate() const {
  if (n < 0) return "n must be >= 0";
  if (a == nullptr || b == nullptr || dh == nullptr || da == nullptr || db == nullptr) {
    return "a, b, dh, da and db are required";
  }
  return nullptr;
}

cudaError_t LaunchSwiGluBackward(const SwiGluBackwardParams& params, cudaStream_t stream) {
  if (params.Validate() != nullptr) return cudaErrorInvalidValue;
  if (params.n == 0) return cudaSuccess;
  if (params.n % kVec == 0 && Aligned(params.a, 16) && Aligned(params.b, 16) &&
      Aligned(params.dh, 16) && Aligned(params.da, 16) && Aligned(params.db, 16)) {
    SwiGluBackwardVecKernel<<<GridFor(params.n / kVec), kThreads, 0, stream>>>(params);
  } else {
    SwiGluBackwardScalarKernel<<<GridFor(params.n), kThreads, 0, stream>>>(params);
  }
  return cudaGetLastError();
}

const char* MoeCombineParams::Validate() const {
  if (tokens < 0 || top_k <= 0 || num_rows < 0) return "tokens, top_k and num_rows must be >= 0, top_k > 0";
  if (dim <= 0 || dim % kVec != 0) return "dim must be a positive multiple of 8";
  if (y == nullptr || rows == nullptr || w == nullptr || out == nullptr) {
    return "y, rows, w and out are required";
  }
  if (!Aligned(y, 16) || !Aligned(out, 16)) return "y and out must be 16-byte aligned";
  return nullptr;
}

cudaError_t LaunchMoeCombine(const MoeCombineParams& params, cudaStream_t stream) {
  if (params.Validate() != nullptr) return cudaErrorInvalidValue;
  if (params.tokens == 0) return cudaSuccess;
  MoeCombineKernel<<<params.tokens, RowThreads(params.dim), 0, stream>>>(params);
  return cudaGetLastError();
}

const char* MoeCombineBackwardParams::Validate() const {
  if (tokens < 0 || top_k <= 0 || num_rows < 0) return "tokens, top_k and num_rows must be >= 0, top_k > 0";
  if (dim <= 0 || dim % kVec != 0) return "dim must be a positive multiple of 8";
  if (y == nullptr || rows == nullptr || readers == nullptr || w == nullptr || g == nullptr ||
      dy == nullptr || dw == nullptr) {
    return "y, rows, readers, w, g, dy and dw are required";
  }
  if (!Aligned(y, 16) || !Aligned(g, 16) || !Aligned(dy, 16)) {
    return "y, g and dy must be 16-byte aligned";
  }
  return nullptr;
}

cudaError_t LaunchMoeCombineBackward(const MoeCombineBackwardParams& params, cudaStream_t stream) {
  if (params.Validate() != nullptr) return cudaErrorInvalidValue;
  const int threads = RowThreads(params.dim);
  if (params.num_rows > 0) {
    MoeCombineGradRowsKernel<<<static_cast<unsigned>(params.num_rows), threads, 0, stream>>>(params);
  }
  if (params.tokens > 0) {
    MoeCombineGradWeightsKernel<<<params.tokens, threads, 0, stream>>>(params);
  }
  return cudaGetLastError();
}

const char* TokenLogprobParams::Validate() const {
  if (rows < 0) return "rows must be >= 0";
  if (vocab <= 0) return "vocab must be > 0";
  if (logits_row_stride < vocab) return "logits_row_stride must be >= vocab";
  if (logits == nullptr || targets == nullptr || lse == nullptr || logp == nullptr) {
    return "logits, targets, lse and logp are required";
  }
  return nullptr;
}

cudaError_t LaunchTokenLogprob(const TokenLogprobParams& params, cudaStream_t stream) {
  if (params.Validate() != nullptr) return cudaErrorInvalidValue;
  if (params.rows == 0) return cudaSuccess;
  const bool vec = params.vocab % 4 == 0 && params.logits_row_stride % 4 == 0 &&
                   Aligned(params.logits, 16);
  if (vec) {
    TokenLogprobKernel<true><<<params.rows, kThreads, 0, stream>>>(params);
  } else {
    TokenLogprobKernel<false><<<params.rows, kThreads, 0, stream>>>(params);
  }
  return cudaGetLastError();
}

const char* TokenLogprobBackwardParams::Validate() const {
  if (rows < 0) return "rows must be >= 0";
  if (vocab <= 0) return "vocab must be > 0";
  if (logits_row_stride < vocab || dlogits_row_stride < vocab) {
    return "row strides must be >= vocab";
  }
  if (logits == nullptr || targets == nullptr || lse == nullptr || grad == nullptr ||
      dlogits == nullptr) {
    return "logits, targets, lse, grad and dlogits are required";
  }
  return nullptr;
}

cudaError_t LaunchTokenLogprobBackward(const TokenLogprobBackwardParams& params,
                                       cudaStream_t stream) {
  if (params.Validate() != nullptr) return cudaErrorInvalidValue;
  if (params.rows == 0) return cudaSuccess;
  const bool vec = params.vocab % 4 == 0 && params.logits_row_stride % 4 == 0 &&
                   params.dlogits_row_stride % 4 == 0 && Aligned(params.logits, 16) &&
                   Aligned(params.dlogits, 8);
  if (vec) {
    TokenLogprobBackwardKernel<true><<<params.rows, kThreads, 0, stream>>>(params);
  } else {
    TokenLogprobBackwardKernel<false><<<params.rows, kThreads, 0, stream>>>(params);
  }
  return cudaGetLastError();
}

const char* MasterAdamWParams::Validate() const {
  if (num_chunks < 0) return "num_chunks must be >= 0";
  if (num_chunks > 0 && (tensors == nullptr || chunks == nullptr)) {
    return "tensors and chunks are required";
  }
  if (!(beta1 >= 0.f && beta1 < 1.f) || !(beta2 >= 0.f && beta2 < 1.f)) {
    return "betas must be in [0, 1)";
  }
  if (!(eps >= 0.f) || !std::isfinite(lr) || !std::isfinite(weight_decay)) {
    return "eps must be >= 0 and lr, weight_decay finite";
  }
  return nullptr;
}

int64_t MakeAdamWChunks(const int64_t* sizes, int num_tensors, AdamWChunk* out,
                        int64_t capacity) {
  int64_t count = 0;
  for (int i = 0; i < num_tensors; ++i) {
    for (int64_t begin = 0; begin < sizes[i]; begin += kAdamWChunk) {
      if (count < capacity) {
        out[count] = {i, begin, begin + kAdamWChunk < sizes[i] ? begin + kAdamWChunk : sizes[i]};
      }
      ++count;
    }
  }
  return count;
}

const char* GatherToFp32Params::Validate() const {
  if (num_chunks < 0) return "num_chunks must be >= 0";
  if (num_chunks > 0 && (segments == nullptr || chunks == nullptr || dst == nullptr)) {
    return "segments, chunks and dst are required";
  }
  return nullptr;
}

cudaError_t LaunchGatherToFp32(const GatherToFp32Params& params, cudaStream_t stream) {
  if (params.Validate() != nullptr) return cudaErrorInvalidValue;
  if (params.num_chunks == 0) return cudaSuccess;
  GatherToFp32Kernel<<<params.num_chunks, 512, 0, stream>>>(params);
  return cudaGetLastError();
}

cudaError_t LaunchMasterAdamW(const MasterAdamWParams& params, cudaStream_t stream) {
  if (params.Validate() != nullptr) return cudaErrorInvalidValue;
  if (params.num_chunks == 0) return cudaSuccess;
  MasterAdamWKernel<<<params.num_chunks, 512, 0, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace lightrl
