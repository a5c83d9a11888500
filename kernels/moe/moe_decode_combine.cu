#include "kernels/moe/moe_decode_combine.h"

// One CTA per token row; each thread owns 8-element (16-byte) chunks of the row when the
// width and pointers allow, single elements otherwise. The combine weights of the row are
// read once per thread (few experts) and the experts' rows stream through once each.

namespace lightrl {
namespace {

constexpr int kThreads = 128;
constexpr int kVec = 8;

bool IsAligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

__device__ __forceinline__ __nv_bfloat16 Finish(float moe, __nv_bfloat16 residual, float alpha,
                                                float beta) {
  const float rounded = __bfloat162float(__float2bfloat16_rn(moe));
  return __float2bfloat16_rn(fmaf(alpha, __bfloat162float(residual), beta * rounded));
}

__global__ void __launch_bounds__(kThreads) MoeDecodeCombineVecKernel(const MoeDecodeCombineParams p) {
  const int t = blockIdx.x;
  const int64_t row = int64_t{t} * p.hidden;
  const int64_t plane = int64_t{p.tokens} * p.hidden;  // one expert's rows
  const float* w = p.combine + int64_t{t} * p.experts;
  for (int c = threadIdx.x; c < p.hidden / kVec; c += blockDim.x) {
    float acc[kVec] = {};
    for (int e = 0; e < p.experts; ++e) {
      const float we = w[e];
      const uint4 raw = *reinterpret_cast<const uint4*>(p.y + e * plane + row + c * kVec);
      const __nv_bfloat16* ys = reinterpret_cast<const __nv_bfloat16*>(&raw);
#pragma unroll
      for (int j = 0; j < kVec; ++j) acc[j] = fmaf(we, __bfloat162float(ys[j]), acc[j]);
    }
    const uint4 r_raw = *reinterpret_cast<const uint4*>(p.residual + row + c * kVec);
    const __nv_bfloat16* rs = reinterpret_cast<const __nv_bfloat16*>(&r_raw);
    uint4 o_raw;
    __nv_bfloat16* os = reinterpret_cast<__nv_bfloat16*>(&o_raw);
#pragma unroll
    for (int j = 0; j < kVec; ++j) os[j] = Finish(acc[j], rs[j], p.alpha, p.beta);
    *reinterpret_cast<uint4*>(p.out + row + c * kVec) = o_raw;
  }
}

__global__ void __launch_bounds__(kThreads) MoeDecodeCombineScalarKernel(const MoeDecodeCombineParams p) {
  const int t = blockIdx.x;
  const int64_t row = int64_t{t} * p.hidden;
  const int64_t plane = int64_t{p.tokens} * p.hidden;
  const float* w = p.combine + int64_t{t} * p.experts;
  for (int i = threadIdx.x; i < p.hidden; i += blockDim.x) {
    float acc = 0.f;
    for (int e = 0; e < p.experts; ++e) acc = fmaf(w[e], __bfloat162float(p.y[e * plane + row + i]), acc);
    p.out[row + i] = Finish(acc, p.residual[row + i], p.alpha, p.beta);
  }
}

}  // namespace

const char* MoeDecodeCombineParams::Validate() const {
  if (tokens < 0) return "tokens must be >= 0";
  if (experts < 1 || hidden < 1) return "experts and hidden must be >= 1";
  if (y == nullptr || combine == nullptr || residual == nullptr || out == nullptr) {
    return "y, combine, residual and out are required";
  }
  return nullptr;
}

cudaError_t LaunchMoeDecodeCombine(const MoeDecodeCombineParams& params, cudaStream_t stream) {
  if (params.Validate() != nullptr) return cudaErrorInvalidValue;
  if (params.tokens == 0) return cudaSuccess;
  const bool vec = params.hidden % kVec == 0 && IsAligned16(params.y) &&
                   IsAligned16(params.residual) && IsAligned16(params.out);
  const unsigned grid = static_cast<unsigned>(params.tokens);
  if (vec) {
    MoeDecodeCombineVecKernel<<<grid, kThreads, 0, stream>>>(params);
  } else {
    MoeDecodeCombineScalarKernel<<<grid, kThreads, 0, stream>>>(params);
  }
  return cudaGetLastError();
}

}  // namespace lightrl
