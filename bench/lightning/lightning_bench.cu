// Benchmark of the lightning-attention kernels at the MiniMax-M1 head shape (64 heads x
// 128, bf16 inputs, FP32 state): prefill at T = 8K, 32K, 128K (B*T >= 32K tokens), the
// training forward + backward, and one decode step at 64 and 256 sequences, against a
// measured device-to-device copy bandwidth. Times are medians of CUDA-event-timed runs
// after warm-up, on random data. Usage: lightning_bench [--quick | --profile]; --profile
// runs each kernel once (4 x 8K and 1 x 32K prefill, a 256-sequence decode) for ncu.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/cuda_check.h"
#include "kernels/lightning/lightning_decode.h"
#include "kernels/lightning/lightning_prefill.h"
#include "kernels/lightning/lightning_train.h"
#include "kernels/lightning/lightning_reference.h"

namespace lightrl {
namespace {

constexpr int kHeads = 64;
constexpr int kDim = 128;

__device__ uint32_t Hash(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return static_cast<uint32_t>(x);
}

// Uniform values in [-scale, scale), never all zero.
__global__ void FillBf16(__nv_bfloat16* p, int64_t n, uint64_t seed, float scale) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float u = Hash(seed * 0x9E3779B97F4A7C15ULL + i) * (1.0f / 4294967296.0f);
    p[i] = __float2bfloat16_rn((2.0f * u - 1.0f) * scale);
  }
}

__global__ void FillF32(float* p, int64_t n, uint64_t seed, float scale) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float u = Hash(seed * 0x9E3779B97F4A7C15ULL + i) * (1.0f / 4294967296.0f);
    p[i] = (2.0f * u - 1.0f) * scale;
  }
}

template <typename T>
T* Alloc(size_t n) {
  T* p = nullptr;
  CUDA_CHECK(cudaMalloc(&p, n * sizeof(T)));
  return p;
}

template <typename T>
T* Upload(const std::vector<T>& host) {
  T* p = Alloc<T>(host.size());
  CUDA_CHECK(cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  return p;
}

// Median milliseconds of `iters` event-timed calls of fn after `warmup` untimed ones.
template <typename F>
float MedianMs(F&& fn, int warmup, int iters) {
  for (int i = 0; i < warmup; ++i) fn();
  CUDA_CHECK(cudaDeviceSynchronize());
  cudaEvent_t a, b;
  CUDA_CHECK(cudaEventCreate(&a));
  CUDA_CHECK(cudaEventCreate(&b));
  std::vector<float> ms(iters);
  for (int i = 0; i < iters; ++i) {
    CUDA_CHECK(cudaEventRecord(a));
    fn();
    CUDA_CHECK(cudaEventRecord(b));
    CUDA_CHECK(cudaEventSynchronize(b));
    CUDA_CHECK(cudaEventElapsedTime(&ms[i], a, b));
  }
  CUDA_CHECK(cudaEventDestroy(a));
  CUDA_CHECK(cudaEventDestroy(b));
  std::sort(ms.begin(), ms.end());
  return ms[iters / 2];
}

double CopyBandwidth(int iters) {
  const size_t bytes = size_t{1} << 30;
  char* src = Alloc<char>(bytes);
  char* dst = Alloc<char>(bytes);
  CUDA_CHECK(cudaMemset(src, 1, bytes));
  const float ms = MedianMs(
      [&] { CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice)); }, 3, iters);
  CUDA_CHECK(cudaFree(src));
  CUDA_CHECK(cudaFree(dst));
  return 2.0 * bytes / (ms * 1e-3);  // bytes read + written per second
}

void PrintRow(const char* what, const std::string& shape, const char* variant, float ms,
              double tokens, double bytes, double copy_bw) {
  const double floor_ms = bytes / copy_bw * 1e3;
  std::printf("| %-16s | %-12s | %-10s | %9.3f | %10.2f | %8.0f | %5.1f%% |\n", what,
              shape.c_str(), variant, ms, tokens / (ms * 1e-3) / 1e6, bytes / (ms * 1e-3) / 1e9,
              100.0 * floor_ms / ms);
}

void Run(bool quick, bool profile) {
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop;
  CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  int runtime = 0, driver = 0;
  CUDA_CHECK(cudaRuntimeGetVersion(&runtime));
  CUDA_CHECK(cudaDriverGetVersion(&driver));
  std::printf("device: %s, %d SMs, %.0f MiB, L2 %d MiB, runtime %d, driver %d\n", prop.name,
              prop.multiProcessorCount, prop.totalGlobalMem / 1048576.0,
              prop.l2CacheSize >> 20, runtime, driver);
  const int iters = profile ? 1 : quick ? 5 : 20;
  const int warmup = profile ? 0 : 3;
  const double copy_bw = CopyBandwidth(profile ? 3 : iters);
  std::printf("device-to-device copy: %.0f GB/s (bytes read + written)\n\n", copy_bw / 1e9);
  std::printf("H = %d, d = %d, bf16 q/k/v/o, FP32 state. Mtok/s = tokens (or sequences) per "
              "second; GB/s = the minimum bytes moved over the time; floor = share of the\n"
              "copy-bandwidth time for those bytes.\n\n",
              kHeads, kDim);
  std::printf("| %-16s | %-12s | %-10s | %9s | %10s | %8s | %6s |\n", "kernel", "B x T",
              "variant", "ms", "Mtok/s", "GB/s", "floor");
  std::printf("|------------------|--------------|------------|-----------|------------|----------|--------|\n");

  const std::vector<float> slopes = MiniMaxSlopes(kHeads, 10, 80);
  float* d_slopes = Upload(slopes);

  for (int T : {8192, 16384, 32768, 131072}) {
    if (profile && T > 32768) break;
    if (profile && T == 16384) continue;
    const int B = std::max(1, 32768 / T);
    const int64_t tokens = int64_t{B} * T;
    const int64_t n = tokens * kHeads * kDim;
    // Separate q, k, v (as flash-linear-attention takes them) and a fused [T][H][3][d].
    __nv_bfloat16* qkv = Alloc<__nv_bfloat16>(3 * n);
    __nv_bfloat16* o = Alloc<__nv_bfloat16>(n);
    __nv_bfloat16* grads = Alloc<__nv_bfloat16>(4 * n);  // d_o, dq, dk, dv
    FillBf16<<<4096, 256>>>(qkv, 3 * n, 1 + T, 0.5f);
    FillBf16<<<4096, 256>>>(grads, n, 7 + T, 0.5f);
    CUDA_CHECK(cudaGetLastError());
    float* state = Alloc<float>(size_t{static_cast<size_t>(B)} * kHeads * kDim * kDim);
    std::vector<int32_t> cu(B + 1);
    for (int b = 0; b <= B; ++b) cu[b] = b * T;
    int32_t* d_cu = Upload(cu);

    LightningPrefillParams p;
    p.q = {qkv, int64_t{kHeads} * kDim, kDim};
    p.k = {qkv + n, int64_t{kHeads} * kDim, kDim};
    p.v = {qkv + 2 * n, int64_t{kHeads} * kDim, kDim};
    p.o = {o, int64_t{kHeads} * kDim, kDim};
    p.cu_seqlens = d_cu;
    p.state = state;
    p.slopes = d_slopes;
    p.num_seqs = B;
    p.num_heads = kHeads;
    p.head_dim = kDim;
    p.max_seqlen = T;
    p.num_tokens = tokens;
    const double bytes = 4.0 * n * 2 + double(B) * kHeads * kDim * kDim * 4;
    const std::string shape = std::to_string(B) + " x " + std::to_string(T / 1024) + "K";
    for (int dv : {0, 32, 64}) {
      if (profile && dv != 0) continue;
      p.dv_split = dv;
      const float ms =
          MedianMs([&] { CUDA_CHECK(LaunchLightningPrefill(p, nullptr)); }, warmup, iters);
      const char* variant = dv == 0 ? "auto" : dv == 32 ? "dv32" : "dv64";
      PrintRow("prefill", shape, variant, ms, double(tokens), bytes, copy_bw);
    }
    p.dv_split = 0;
    if (!profile) {
      // Both sm_90a forms at the automatic value slices (auto picks one of them).
      for (int form : {1, 2}) {
        p.warp_specialized = form;
        const float ms =
            MedianMs([&] { CUDA_CHECK(LaunchLightningPrefill(p, nullptr)); }, warmup, iters);
        PrintRow("prefill", shape, form == 1 ? "one wg" : "warp-spec", ms, double(tokens), bytes,
                 copy_bw);
      }
      p.warp_specialized = 0;
    }
    {
      LightningPrefillParams mma = p;
      mma.warpgroup = false;
      const float mma_ms =
          MedianMs([&] { CUDA_CHECK(LaunchLightningPrefill(mma, nullptr)); }, warmup, iters);
      PrintRow("prefill", shape, "mma.sync", mma_ms, double(tokens), bytes, copy_bw);
    }
    if (profile) {
      CUDA_CHECK(cudaFree(qkv));
      CUDA_CHECK(cudaFree(o));
      CUDA_CHECK(cudaFree(grads));
      CUDA_CHECK(cudaFree(state));
      CUDA_CHECK(cudaFree(d_cu));
      continue;
    }
    LightningPrefillParams fast = p;
    fast.exact_state = false;
    const float fast_ms =
        MedianMs([&] { CUDA_CHECK(LaunchLightningPrefill(fast, nullptr)); }, 3, iters);
    PrintRow("prefill", shape, "fast state", fast_ms, double(tokens), bytes, copy_bw);
    LightningPrefillParams fused = p;
    fused.q = {qkv, int64_t{3} * kHeads * kDim, 3 * kDim};
    fused.k = {qkv + kDim, int64_t{3} * kHeads * kDim, 3 * kDim};
    fused.v = {qkv + 2 * kDim, int64_t{3} * kHeads * kDim, 3 * kDim};
    const float fused_ms =
        MedianMs([&] { CUDA_CHECK(LaunchLightningPrefill(fused, nullptr)); }, 3, iters);
    PrintRow("prefill", shape, "fused qkv", fused_ms, double(tokens), bytes, copy_bw);

    // Training: forward + backward (three more passes), no state.
    LightningTrainParams tp;
    tp.cu_seqlens = d_cu;
    tp.slopes = d_slopes;
    tp.num_seqs = B;
    tp.num_heads = kHeads;
    tp.head_dim = kDim;
    tp.max_seqlen = T;
    tp.num_tokens = tokens;
    const LightningInputView gi{grads, p.o.token_stride, kDim};
    const LightningOutputView dq{grads + n, p.o.token_stride, kDim};
    const LightningOutputView dk{grads + 2 * n, p.o.token_stride, kDim};
    const LightningOutputView dv{grads + 3 * n, p.o.token_stride, kDim};
    const float train_ms = MedianMs(
        [&] {
          CUDA_CHECK(LaunchLightningTrainForward(tp, p.q, p.k, p.v, p.o, nullptr));
          CUDA_CHECK(LaunchLightningTrainBackward(tp, p.q, p.k, p.v, gi, dq, dk, dv, nullptr));
        },
        2, std::max(3, iters / 2));
    // Minimum traffic of forward + backward: read q, k, v, d_o; write o, dq, dk, dv.
    PrintRow("train fwd+bwd", shape, "4 passes", train_ms, double(tokens), 8.0 * n * 2, copy_bw);

    CUDA_CHECK(cudaFree(qkv));
    CUDA_CHECK(cudaFree(o));
    CUDA_CHECK(cudaFree(grads));
    CUDA_CHECK(cudaFree(state));
    CUDA_CHECK(cudaFree(d_cu));
  }

  for (int nseq : {64, 256}) {
    if (profile && nseq != 256) continue;
    const int64_t state_elems = int64_t{nseq} * kHeads * kDim * kDim;
    float* pool = Alloc<float>(state_elems);
    FillF32<<<4096, 256>>>(pool, state_elems, 99, 0.5f);
    __nv_bfloat16* qkv = Alloc<__nv_bfloat16>(size_t{3} * nseq * kHeads * kDim);
    __nv_bfloat16* o = Alloc<__nv_bfloat16>(size_t{static_cast<size_t>(nseq)} * kHeads * kDim);
    FillBf16<<<256, 256>>>(qkv, int64_t{3} * nseq * kHeads * kDim, 5, 0.5f);
    CUDA_CHECK(cudaGetLastError());
    std::vector<int32_t> slots(nseq);
    std::iota(slots.begin(), slots.end(), 0);
    std::shuffle(slots.begin(), slots.end(), std::mt19937(1));
    int32_t* d_slots = Upload(slots);
    LightningDecodeParams dp;
    dp.q = {qkv, int64_t{3} * kHeads * kDim, 3 * kDim};
    dp.k = {qkv + kDim, int64_t{3} * kHeads * kDim, 3 * kDim};
    dp.v = {qkv + 2 * kDim, int64_t{3} * kHeads * kDim, 3 * kDim};
    dp.o = {o, int64_t{kHeads} * kDim, kDim};
    dp.state_slots = d_slots;
    dp.state = pool;
    dp.slopes = d_slopes;
    dp.batch = nseq;
    dp.num_heads = kHeads;
    dp.head_dim = kDim;
    const float ms = MedianMs([&] { CUDA_CHECK(LaunchLightningDecode(dp, nullptr)); },
                              profile ? 0 : 5, profile ? 1 : quick ? 10 : 50);
    const double bytes = 2.0 * state_elems * 4;  // state read + written
    PrintRow("decode step", std::to_string(nseq) + " seqs", "fused", ms, double(nseq), bytes,
             copy_bw);
    CUDA_CHECK(cudaFree(pool));
    CUDA_CHECK(cudaFree(qkv));
    CUDA_CHECK(cudaFree(o));
    CUDA_CHECK(cudaFree(d_slots));
  }
  CUDA_CHECK(cudaFree(d_slopes));
}

}  // namespace
}  // namespace lightrl

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const bool profile = argc > 1 && std::strcmp(argv[1], "--profile") == 0;
  lightrl::Run(quick, profile);
  return 0;
}
