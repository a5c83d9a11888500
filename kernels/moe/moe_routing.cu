#include "kernels/moe/moe_routing.h"

// One warp per token: lane l holds experts l, l + 32, ... in registers (at most 8 each), so
// the softmax's max and sum and each of the k argmax rounds are warp shuffles.

namespace lightrl {
namespace {

constexpr int kWarpsPerCta = 4;
constexpr int kPerLane = kMoeRoutingMaxExperts / 32;

__global__ void __launch_bounds__(32 * kWarpsPerCta) MoeRoutingKernel(const MoeRoutingParams p) {
  const int lane = threadIdx.x % 32;
  const int t = blockIdx.x * kWarpsPerCta + threadIdx.x / 32;
  if (t >= p.tokens) return;
  const float* row = p.logits + t * p.logits_row_stride;
  float prob[kPerLane];
  float m = -INFINITY;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int e = lane + 32 * i;
    prob[i] = e < p.experts ? row[e] : -INFINITY;
    m = fmaxf(m, prob[i]);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    prob[i] = lane + 32 * i < p.experts ? expf(prob[i] - m) : 0.f;
    sum += prob[i];
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  const float inv = 1.f / sum;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) prob[i] *= inv;

  // k rounds of a warp argmax over the experts not yet chosen (-1 marks chosen or absent).
  float chosen_p[kMoeRoutingMaxTopK];
  int chosen_e[kMoeRoutingMaxTopK];
  float picked_sum = 0.f;
  float cand[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) cand[i] = lane + 32 * i < p.experts ? prob[i] : -1.f;
  for (int j = 0; j < p.top_k; ++j) {
    float best = -1.f;
    int best_e = INT32_MAX;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      if (cand[i] > best) {  // i ascending: the lower expert wins a tie within the lane
        best = cand[i];
        best_e = lane + 32 * i;
      }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const float ob = __shfl_xor_sync(0xffffffffu, best, off);
      const int oe = __shfl_xor_sync(0xffffffffu, best_e, off);
      if (ob > best || (ob == best && oe < best_e)) {
        best = ob;
        best_e = oe;
      }
    }
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      if (lane + 32 * i == best_e) cand[i] = -1.f;
    }
    chosen_p[j] = best;
    chosen_e[j] = best_e;
    picked_sum += best;
  }
  const float norm = 1.f / picked_sum;
  if (lane == 0) {
    const int64_t first = int64_t{t} * p.top_k;
    for (int j = 0; j < p.top_k; ++j) {
      if (p.ids != nullptr) p.ids[first + j] = chosen_e[j];
      if (p.weights != nullptr) p.weights[first + j] = chosen_p[j] * norm;
    }
  }
  if (p.combine != nullptr) {
    float* out = p.combine + int64_t{t} * p.experts;
    for (int e = lane; e < p.experts; e += 32) {
      float w = 0.f;
      for (int j = 0; j < p.top_k; ++j) {
        if (chosen_e[j] == e) w = chosen_p[j] * norm;
      }
      out[e] = w;
    }
  }
}

}  // namespace

const char* MoeRoutingParams::Validate() const {
  if (tokens < 0) return "tokens must be >= 0";
  if (experts < 1 || experts > kMoeRoutingMaxExperts) return "experts must be in 1 .. 256";
  if (top_k < 1 || top_k > experts || top_k > kMoeRoutingMaxTopK) {
    return "top_k must be in 1 .. min(experts, 8)";
  }
  if (logits_row_stride < experts) return "logits_row_stride must be >= experts";
  if (logits == nullptr) return "logits are required";
  if (ids == nullptr && weights == nullptr && combine == nullptr) {
    return "at least one of ids, weights and combine is required";
  }
  return nullptr;
}

cudaError_t LaunchMoeRouting(const MoeRoutingParams& params, cudaStream_t stream) {
  if (params.Validate() != nullptr) return cudaErrorInvalidValue;
  if (params.tokens == 0) return cudaSuccess;
  const unsigned grid = static_cast<unsigned>((params.tokens + kWarpsPerCta - 1) / kWarpsPerCta);
  MoeRoutingKernel<<<grid, 32 * kWarpsPerCta, 0, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace lightrl
