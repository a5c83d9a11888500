#include "kernels/rope/rope.h"

namespace lightrl {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ __nv_bfloat16 Mul(__nv_bfloat16 a, __nv_bfloat16 b) {
  return __float2bfloat16_rn(__bfloat162float(a) * __bfloat162float(b));
}

// One thread per (token, head, i) with i < head_dim.
__global__ void __launch_bounds__(kThreads) RopeKernel(const RopeParams p) {
  const int64_t n = int64_t{p.tokens} * p.heads * p.head_dim;
  const int64_t at = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (at >= n) return;
  const int i = static_cast<int>(at % p.head_dim);
  const int64_t row = at - i;  // the head's first element
  const int t = static_cast<int>(at / (int64_t{p.heads} * p.head_dim));
  const int64_t pos = p.positions[t];
  if (pos < 0 || pos >= p.max_positions) return;
  if (i >= p.rotary_dim) {
    p.y[at] = p.x[at];
    return;
  }
  const int half = p.rotary_dim / 2;
  const __nv_bfloat16 c = p.cos_table[pos * p.rotary_dim + i];
  const __nv_bfloat16 s = p.sin_table[pos * p.rotary_dim + i];
  const __nv_bfloat16 other = i < half ? __hneg(p.x[row + i + half]) : p.x[row + i - half];
  const float sum = __bfloat162float(Mul(p.x[at], c)) + __bfloat162float(Mul(other, s));
  p.y[at] = __float2bfloat16_rn(sum);
}

}  // namespace

const char* RopeParams::Validate() const {
  if (tokens < 0 || heads < 1 || head_dim < 1) return "tokens >= 0, heads and head_dim >= 1";
  if (rotary_dim < 2 || rotary_dim % 2 != 0 || rotary_dim > head_dim) {
    return "rotary_dim must be even and in 2 .. head_dim";
  }
  if (max_positions < 1) return "max_positions must be >= 1";
  if (x == nullptr || y == nullptr || positions == nullptr || cos_table == nullptr ||
      sin_table == nullptr) {
    return "x, y, positions and both tables are required";
  }
  if (x == y) return "y may not alias x";
  return nullptr;
}

cudaError_t LaunchRope(const RopeParams& params, cudaStream_t stream) {
  if (params.Validate() != nullptr) return cudaErrorInvalidValue;
  const int64_t n = int64_t{params.tokens} * params.heads * params.head_dim;
  if (n == 0) return cudaSuccess;
  const unsigned grid = static_cast<unsigned>((n + kThreads - 1) / kThreads);
  RopeKernel<<<grid, kThreads, 0, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace lightrl
