#include "kernels/rms_norm/rms_norm.h"

// RMSNorm: one CTA per row, at most 256 threads, each owning a strided set of 8-element
// (16-byte) chunks or single elements. The row is read twice, once for the sum of squares
// and once to write y; the second read hits L1/L2 (a row is at most 128 KiB), which costs
// less than holding rows of every width in registers. The sum meets in a warp-shuffle tree
// and then across warps in shared memory, so the kernel works for any block size.

namespace lightrl {
namespace {

constexpr int kMaxThreads = 256;
constexpr int kVec = 8;  // bf16 elements per 16-byte chunk

bool IsAligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

__device__ float BlockSum(float v) {
  __shared__ float s_warp[kMaxThreads / 32];
  __shared__ float s_total;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (lane == 0) s_warp[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int num_warps = blockDim.x / 32;
    float t = lane < num_warps ? s_warp[lane] : 0.f;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) t += __shfl_xor_sync(0xffffffffu, t, off);
    if (lane == 0) s_total = t;
  }
  __syncthreads();
  return s_total;
}

// The policy's two roundings: normed to bf16, then weight * normed to bf16.
__device__ __forceinline__ __nv_bfloat16 NormElement(float x, float inv, __nv_bfloat16 w) {
  const float normed = __bfloat162float(__float2bfloat16_rn(x * inv));
  return __float2bfloat16_rn(__bfloat162float(w) * normed);
}

// The gated norm's factor: ATen's sigmoid of a bf16 value (1 / (1 + exp(-x)) in FP32,
// rounded to bf16), times the normed element, rounded to bf16.
__device__ __forceinline__ __nv_bfloat16 GateElement(__nv_bfloat16 g, __nv_bfloat16 y) {
  const float s = __bfloat162float(__float2bfloat16_rn(1.0f / (1.0f + expf(-__bfloat162float(g)))));
  return __float2bfloat16_rn(s * __bfloat162float(y));
}

// ATen's mean multiplies the FP32 sum by 1/dim; rsqrt is the FP32 rsqrtf.
__device__ __forceinline__ float InvRms(float sum_sq, int dim, float eps) {
  return rsqrtf(sum_sq * (1.0f / static_cast<float>(dim)) + eps);
}

__global__ void __launch_bounds__(kMaxThreads) RmsNormVecKernel(const RmsNormParams p) {
  const __nv_bfloat16* x = p.x + blockIdx.x * p.x_row_stride;
  __nv_bfloat16* y = p.y + blockIdx.x * p.y_row_stride;
  const int chunks = p.dim / kVec;
  float sum_sq = 0.f;
  for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
    const uint4 raw = *reinterpret_cast<const uint4*>(x + c * kVec);
    const __nv_bfloat162* x2 = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
    for (int j = 0; j < kVec / 2; ++j) {
      const float2 f = __bfloat1622float2(x2[j]);
      sum_sq = fmaf(f.x, f.x, sum_sq);
      sum_sq = fmaf(f.y, f.y, sum_sq);
    }
  }
  const float inv = InvRms(BlockSum(sum_sq), p.dim, p.eps);
  for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
    const uint4 x_raw = *reinterpret_cast<const uint4*>(x + c * kVec);
    const uint4 w_raw = *reinterpret_cast<const uint4*>(p.weight + c * kVec);
    const __nv_bfloat16* xs = reinterpret_cast<const __nv_bfloat16*>(&x_raw);
    const __nv_bfloat16* ws = reinterpret_cast<const __nv_bfloat16*>(&w_raw);
    uint4 y_raw;
    __nv_bfloat16* ys = reinterpret_cast<__nv_bfloat16*>(&y_raw);
#pragma unroll
    for (int j = 0; j < kVec; ++j) ys[j] = NormElement(__bfloat162float(xs[j]), inv, ws[j]);
    if (p.gate != nullptr) {
      const uint4 g_raw =
          *reinterpret_cast<const uint4*>(p.gate + blockIdx.x * p.gate_row_stride + c * kVec);
      const __nv_bfloat16* gs = reinterpret_cast<const __nv_bfloat16*>(&g_raw);
#pragma unroll
      for (int j = 0; j < kVec; ++j) ys[j] = GateElement(gs[j], ys[j]);
    }
    *reinterpret_cast<uint4*>(y + c * kVec) = y_raw;
  }
}

__global__ void __launch_bounds__(kMaxThreads) RmsNormScalarKernel(const RmsNormParams p) {
  const __nv_bfloat16* x = p.x + blockIdx.x * p.x_row_stride;
  __nv_bfloat16* y = p.y + blockIdx.x * p.y_row_stride;
  float sum_sq = 0.f;
  for (int i = threadIdx.x; i < p.dim; i += blockDim.x) {
    const float f = __bfloat162float(x[i]);
    sum_sq = fmaf(f, f, sum_sq);
  }
  const float inv = InvRms(BlockSum(sum_sq), p.dim, p.eps);
  const __nv_bfloat16* gate = p.gate != nullptr ? p.gate + blockIdx.x * p.gate_row_stride : nullptr;
  for (int i = threadIdx.x; i < p.dim; i += blockDim.x) {
    const __nv_bfloat16 v = NormElement(__bfloat162float(x[i]), inv, p.weight[i]);
    y[i] = gate != nullptr ? GateElement(gate[i], v) : v;
  }
}

__device__ __forceinline__ __nv_bfloat16 ScaledAddElement(__nv_bfloat16 a, __nv_bfloat16 b,
                                                          float alpha, float beta) {
  return __float2bfloat16_rn(fmaf(alpha, __bfloat162float(a), beta * __bfloat162float(b)));
}

// Grid-stride over 16-byte chunks; each element is read and written by one thread only,
// so out may alias a or b.
__global__ void __launch_bounds__(kMaxThreads) ScaledAddVecKernel(const ScaledAddParams p) {
  const int64_t chunks = p.n / kVec;
  const int64_t step = int64_t{gridDim.x} * blockDim.x;
  for (int64_t c = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; c < chunks; c += step) {
    const uint4 a_raw = reinterpret_cast<const uint4*>(p.a)[c];
    const uint4 b_raw = reinterpret_cast<const uint4*>(p.b)[c];
    const __nv_bfloat16* as = reinterpret_cast<const __nv_bfloat16*>(&a_raw);
    const __nv_bfloat16* bs = reinterpret_cast<const __nv_bfloat16*>(&b_raw);
    uint4 o_raw;
    __nv_bfloat16* os = reinterpret_cast<__nv_bfloat16*>(&o_raw);
#pragma unroll
    for (int j = 0; j < kVec; ++j) os[j] = ScaledAddElement(as[j], bs[j], p.alpha, p.beta);
    reinterpret_cast<uint4*>(p.out)[c] = o_raw;
  }
}

__global__ void __launch_bounds__(kMaxThreads) ScaledAddScalarKernel(const ScaledAddParams p) {
  const int64_t step = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < p.n; i += step) {
    p.out[i] = ScaledAddElement(p.a[i], p.b[i], p.alpha, p.beta);
  }
}

// Threads for `work` items per CTA: whole warps, at most kMaxThreads.
int ThreadsFor(int64_t work) {
  const int64_t warps = (work + 31) / 32;
  return static_cast<int>(32 * (warps < 1 ? 1 : (warps > kMaxThreads / 32 ? kMaxThreads / 32
                                                                          : warps)));
}

}  // namespace

const char* RmsNormParams::Validate() const {
  if (rows < 0) return "rows must be >= 0";
  if (dim <= 0 || dim > kRmsNormMaxDim) return "dim must be in 1 .. kRmsNormMaxDim";
  if (x_row_stride < dim || y_row_stride < dim) return "row strides must be >= dim";
  if (x == nullptr || weight == nullptr || y == nullptr) return "x, weight and y are required";
  if (!(eps >= 0.f)) return "eps must be >= 0";
  if (gate != nullptr && gate_row_stride < dim) return "gate_row_stride must be >= dim";
  return nullptr;
}

cudaError_t LaunchRmsNorm(const RmsNormParams& params, cudaStream_t stream) {
  if (params.Validate() != nullptr) return cudaErrorInvalidValue;
  if (params.rows == 0) return cudaSuccess;
  const bool vec = params.dim % kVec == 0 && params.x_row_stride % kVec == 0 &&
                   params.y_row_stride % kVec == 0 && IsAligned16(params.x) &&
                   IsAligned16(params.weight) && IsAligned16(params.y) &&
                   (params.gate == nullptr ||
                    (params.gate_row_stride % kVec == 0 && IsAligned16(params.gate)));
  const unsigned grid = static_cast<unsigned>(params.rows);
  if (vec) {
    RmsNormVecKernel<<<grid, ThreadsFor(params.dim / kVec), 0, stream>>>(params);
  } else {
    RmsNormScalarKernel<<<grid, ThreadsFor(params.dim), 0, stream>>>(params);
  }
  return cudaGetLastError();
}

const char* ScaledAddParams::Validate() const {
  if (n < 0) return "n must be >= 0";
  if (a == nullptr || b == nullptr || out == nullptr) return "a, b and out are required";
  return nullptr;
}

cudaError_t LaunchScaledAdd(const ScaledAddParams& params, cudaStream_t stream) {
  if (params.Validate() != nullptr) return cudaErrorInvalidValue;
  if (params.n == 0) return cudaSuccess;
  const bool vec = params.n % kVec == 0 && IsAligned16(params.a) && IsAligned16(params.b) &&
                   IsAligned16(params.out);
  const int64_t work = vec ? params.n / kVec : params.n;
  constexpr int64_t kMaxCtas = 4096;  // grid-stride beyond this
  const int64_t ctas = (work + kMaxThreads - 1) / kMaxThreads;
  const unsigned grid = static_cast<unsigned>(ctas < kMaxCtas ? ctas : kMaxCtas);
  if (vec) {
    ScaledAddVecKernel<<<grid, kMaxThreads, 0, stream>>>(params);
  } else {
    ScaledAddScalarKernel<<<grid, kMaxThreads, 0, stream>>>(params);
  }
  return cudaGetLastError();
}

}  // namespace lightrl
