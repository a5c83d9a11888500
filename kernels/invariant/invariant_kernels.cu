// The batch-invariant mode's kernels (invariant_kernels.h). Every arithmetic operation goes
// through inv:: (single roundings, never fused), and each output's sums run in the order
// the CPU op writes them; the parallelism is only ever across outputs, except the max of a
// row (exact in any order) and the LM head's lane sums (an order fixed by the row length).
#include "kernels/invariant/invariant_kernels.h"

#include <cuda_bf16.h>
#include <mma.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kernels/invariant/invariant_math.h"

namespace lightrl {
namespace {

using inv::Add;
using inv::Div;
using inv::Mul;
using inv::Sub;

__device__ const float kInf = __builtin_huge_valf();


int Blocks(int64_t n, int threads) {
  return static_cast<int>(std::min<int64_t>((n + threads - 1) / threads, 1 << 30));
}

// --- linear: 64 x 64 output tiles, 16-deep slices of K through shared memory, 4 x 4 outputs
// a thread; each output's products added in k order, k < K only.
constexpr int kTile = 64, kDepth = 16, kLinearThreads = 256;

template <typename T>
__global__ void LinearKernel(const T* __restrict__ x, const T* __restrict__ w,
                             float* __restrict__ out, int64_t N, int64_t K, int64_t M) {
  __shared__ float xs[kDepth][kTile];
  __shared__ float ws[kDepth][kTile];
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int tid = threadIdx.x, tr = tid / 16, tc = tid % 16;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < K; k0 += kDepth) {
    for (int e = tid; e < kDepth * kTile; e += kLinearThreads) {
      const int row = e / kDepth, kk = e % kDepth;
      const int64_t k = k0 + kk;
      xs[kk][row] = (n0 + row < N && k < K) ? x[(n0 + row) * K + k] : 0.0f;
      ws[kk][row] = (m0 + row < M && k < K) ? w[(m0 + row) * K + k] : 0.0f;
    }
    __syncthreads();
    const int depth = static_cast<int>(K - k0 < kDepth ? K - k0 : kDepth);
    for (int kk = 0; kk < depth; ++kk) {
      float a[4], b[4];
      for (int i = 0; i < 4; ++i) a[i] = xs[kk][tr * 4 + i];
      for (int j = 0; j < 4; ++j) b[j] = ws[kk][tc * 4 + j];
      for (int i = 0; i < 4; ++i) {
        for (int j = 0; j < 4; ++j) acc[i][j] = Add(acc[i][j], Mul(a[i], b[j]));
      }
    }
    __syncthreads();
  }
  for (int i = 0; i < 4; ++i) {
    const int64_t n = n0 + tr * 4 + i;
    if (n >= N) continue;
    for (int j = 0; j < 4; ++j) {
      const int64_t m = m0 + tc * 4 + j;
      if (m < M) out[n * M + m] = acc[i][j];
    }
  }
}

// --- bf16 linear on the tensor cores: 64 x 64 output tiles of 4 warps (32 x 32 each, 2 x 2
// wmma 16x16x16 fragments, FP32 accumulators), K in 32-deep slices through shared memory,
// zero-filled past N, M and K. Every tile runs the same instruction sequence over the same
// K slices whatever N is, and the tensor cores never mix rows, so a row's outputs do not
// depend on the batch it came in (they are not the CPU loop's bits: the mma sums its 16
// products its own way).
constexpr int kTcTile = 64, kTcDepth = 32, kTcPad = 8, kTcThreads = 128;

// One 64 x 64 tile: rows n0 .. n0 + 63 of x (those < N) times rows m0 .. m0 + 63 of w.
__device__ __forceinline__ void LinearTcTile(const __nv_bfloat16* __restrict__ x,
                                             const __nv_bfloat16* __restrict__ w,
                                             float* __restrict__ out, int64_t N, int64_t K,
                                             int64_t M, int64_t n0, int64_t m0, bool vec) {
  using namespace nvcuda;
  __shared__ __align__(32) __nv_bfloat16 xs[kTcTile][kTcDepth + kTcPad];
  __shared__ __align__(32) __nv_bfloat16 ws[kTcTile][kTcDepth + kTcPad];
  __shared__ __align__(32) float cs[kTcTile][kTcTile + 4];
  const int tid = threadIdx.x, warp = tid / 32;
  const int wr = (warp / 2) * 32, wc = (warp % 2) * 32;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  }
  const __nv_bfloat16 zero = __float2bfloat16(0.0f);
  for (int64_t k0 = 0; k0 < K; k0 += kTcDepth) {
    if (vec) {  // K % 8 == 0 and 16-byte aligned rows: 8 values a load
      for (int e = tid; e < kTcTile * kTcDepth / 8; e += kTcThreads) {
        const int row = e / (kTcDepth / 8), kk = (e % (kTcDepth / 8)) * 8;
        const int64_t k = k0 + kk;
        uint4 xv = make_uint4(0, 0, 0, 0), wv = make_uint4(0, 0, 0, 0);
        if (n0 + row < N && k < K) xv = *reinterpret_cast<const uint4*>(x + (n0 + row) * K + k);
        if (m0 + row < M && k < K) wv = *reinterpret_cast<const uint4*>(w + (m0 + row) * K + k);
        *reinterpret_cast<uint4*>(&xs[row][kk]) = xv;
        *reinterpret_cast<uint4*>(&ws[row][kk]) = wv;
      }
    } else {
      for (int e = tid; e < kTcTile * kTcDepth; e += kTcThreads) {
        const int row = e / kTcDepth, kk = e % kTcDepth;
        const int64_t k = k0 + kk;
        xs[row][kk] = (n0 + row < N && k < K) ? x[(n0 + row) * K + k] : zero;
        ws[row][kk] = (m0 + row < M && k < K) ? w[(m0 + row) * K + k] : zero;
      }
    }
    __syncthreads();
    for (int kk = 0; kk < kTcDepth; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b[2];
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], &xs[wr + 16 * i][kk], kTcDepth + kTcPad);
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], &ws[wc + 16 * j][kk], kTcDepth + kTcPad);
      for (int i = 0; i < 2; ++i) {
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
      }
    }
    __syncthreads();
  }
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) {
      wmma::store_matrix_sync(&cs[wr + 16 * i][wc + 16 * j], acc[i][j], kTcTile + 4,
                              wmma::mem_row_major);
    }
  }
  __syncthreads();
  for (int e = tid; e < kTcTile * kTcTile; e += kTcThreads) {
    const int r = e / kTcTile, c = e % kTcTile;
    if (n0 + r < N && m0 + c < M) out[(n0 + r) * M + m0 + c] = cs[r][c];
  }
}

__global__ void LinearTcKernel(const __nv_bfloat16* __restrict__ x,
                               const __nv_bfloat16* __restrict__ w, float* __restrict__ out,
                               int64_t N, int64_t K, int64_t M, bool vec) {
  LinearTcTile(x, w, out, N, K, M, static_cast<int64_t>(blockIdx.y) * kTcTile,
               static_cast<int64_t>(blockIdx.x) * kTcTile, vec);
}

// The experts' linears in one launch: tile t (blockIdx.y) is rows tiles[3t + 1] ..
// tiles[3t + 2] of x and out, all routed to expert tiles[3t], whose weight is w[expert].
// The same tile code as LinearTcKernel, so a row gets the bits its expert alone gives it.
__global__ void GroupedLinearTcKernel(const __nv_bfloat16* __restrict__ x,
                                      const __nv_bfloat16* const* __restrict__ w,
                                      const int64_t* __restrict__ tiles, float* __restrict__ out,
                                      int64_t K, int64_t M, bool vec) {
  const int64_t* t = tiles + 3 * static_cast<int64_t>(blockIdx.y);
  const int64_t row0 = t[1], rows = t[2] - t[1];
  LinearTcTile(x + row0 * K, w[t[0]], out + row0 * M, rows, K, M, 0,
               static_cast<int64_t>(blockIdx.x) * kTcTile, vec);
}

// Tile blockIdx.y of the groups of offsets (E + 1 entries): the experts' row ranges cut in
// 64-row tiles, expert by expert; a tile past the last does nothing.
__global__ void ExpertLinearTcKernel(const __nv_bfloat16* __restrict__ x,
                                     const __nv_bfloat16* const* __restrict__ w,
                                     const int64_t* __restrict__ offsets, int64_t E,
                                     float* __restrict__ out, int64_t K, int64_t M, bool vec) {
  int64_t t = blockIdx.y;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t begin = offsets[e], rows = offsets[e + 1] - begin;
    const int64_t tiles = (rows + kTcTile - 1) / kTcTile;
    if (t < tiles) {
      const int64_t row0 = begin + t * kTcTile;
      const int64_t n = rows - t * kTcTile < kTcTile ? rows - t * kTcTile : kTcTile;
      LinearTcTile(x + row0 * K, w[e], out + row0 * M, n, K, M, 0,
                   static_cast<int64_t>(blockIdx.x) * kTcTile, vec);
      return;
    }
    t -= tiles;
  }
}

// --- MoE dispatch: a block per expert. Counts first (a block's sum over the assignments);
// then block e places its assignments in token order: each chunk of blockDim assignments
// ranked by the ballots of its warps, after the chunks before it.
constexpr int kDispatchThreads = 256;

__global__ void MoeCountKernel(const int64_t* __restrict__ expert, int64_t A,
                               int64_t* __restrict__ counts) {
  __shared__ int64_t warp_sums[kDispatchThreads / 32];
  const int64_t e = blockIdx.x;
  int64_t n = 0;
  for (int64_t a = threadIdx.x; a < A; a += blockDim.x) n += expert[a] == e ? 1 : 0;
  for (int off = 16; off > 0; off /= 2) n += __shfl_xor_sync(0xffffffffu, n, off);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = n;
  __syncthreads();
  if (threadIdx.x == 0) {
    int64_t total = 0;
    for (int w = 0; w < kDispatchThreads / 32; ++w) total += warp_sums[w];
    counts[e] = total;
  }
}

__global__ void MoePlaceKernel(const int64_t* __restrict__ expert, int64_t A, int64_t E,
                               int64_t capacity, const int64_t* __restrict__ counts,
                               int64_t* __restrict__ offsets, int64_t* __restrict__ order,
                               int64_t* __restrict__ position, float* __restrict__ kept) {
  __shared__ int64_t base;
  __shared__ int warp_counts[kDispatchThreads / 32];
  const int64_t e = blockIdx.x;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  if (tid == 0) {
    int64_t b = 0;
    for (int64_t i = 0; i < e; ++i) b += counts[i];
    base = b;
    offsets[e] = b;
    if (e == E - 1) offsets[E] = b + counts[e];
  }
  __syncthreads();
  int64_t rank0 = 0;  // assignments of e in the chunks before this one
  for (int64_t c0 = 0; c0 < A; c0 += kDispatchThreads) {
    const int64_t a = c0 + tid;
    const bool mine = a < A && expert[a] == e;
    const unsigned ballot = __ballot_sync(0xffffffffu, mine);
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    int before = 0, total = 0;
    for (int w = 0; w < kDispatchThreads / 32; ++w) {
      before += w < warp ? warp_counts[w] : 0;
      total += warp_counts[w];
    }
    if (mine) {
      const int64_t rank = rank0 + before + __popc(ballot & ((1u << lane) - 1u));
      order[base + rank] = a;
      position[a] = base + rank;
      kept[a] = capacity < 0 || rank < capacity ? 1.0f : 0.0f;
    }
    rank0 += total;
    __syncthreads();
  }
}

bool CheckLinear(int64_t N, int64_t K, int64_t M) {
  return N >= 0 && K >= 0 && M >= 0 && (N + kTile - 1) / kTile <= 65535;
}

template <typename T>
cudaError_t LaunchLinear(const T* x, const T* w, float* out, int64_t N, int64_t K, int64_t M,
                         cudaStream_t stream) {
  if (!CheckLinear(N, K, M)) return cudaErrorInvalidValue;
  if (N == 0 || M == 0) return cudaSuccess;
  if (K == 0) return cudaMemsetAsync(out, 0, sizeof(float) * N * M, stream);
  const dim3 grid(static_cast<unsigned>((M + kTile - 1) / kTile),
                  static_cast<unsigned>((N + kTile - 1) / kTile));
  LinearKernel<T><<<grid, kLinearThreads, 0, stream>>>(x, w, out, N, K, M);
  return cudaGetLastError();
}

// --- row statistics: a thread per row, its elements in order.

__global__ void RowRsqrtKernel(const float* __restrict__ x, float* __restrict__ r, int64_t N,
                               int64_t D, float eps) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  const float* row = x + n * D;
  float ss = 0.0f;
  for (int64_t i = 0; i < D; ++i) ss = Add(ss, Mul(row[i], row[i]));
  r[n] = Div(1.0f, inv::Sqrt(Add(Div(ss, static_cast<float>(D)), eps)));
}

__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ T FromFloat(float v);
template <>
__device__ __forceinline__ float FromFloat<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

template <typename T>
__global__ void UnaryKernel(const T* __restrict__ x, T* __restrict__ out, int64_t n, bool silu) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float xf = ToFloat(x[i]);
  const float s = inv::InvSigmoid(xf);
  out[i] = FromFloat<T>(silu ? Mul(xf, s) : s);
}

// A block per row: thread 0 sums the squares in order (RowRsqrtKernel's sum), then every
// thread writes its columns.
template <typename T>
__global__ void RmsNormKernel(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                              int64_t D, float eps) {
  __shared__ float r;
  const int64_t n = blockIdx.x;
  const T* row = x + n * D;
  if (threadIdx.x == 0) {
    float ss = 0.0f;
    for (int64_t i = 0; i < D; ++i) ss = Add(ss, Mul(ToFloat(row[i]), ToFloat(row[i])));
    r = Div(1.0f, inv::Sqrt(Add(Div(ss, static_cast<float>(D)), eps)));
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    const float normed = ToFloat(FromFloat<T>(Mul(ToFloat(row[i]), r)));
    y[n * D + i] = FromFloat<T>(Mul(ToFloat(w[i]), normed));
  }
}

template <typename T>
cudaError_t LaunchRmsNorm(const T* x, const T* w, T* y, int64_t N, int64_t D, float eps,
                          cudaStream_t stream) {
  if (N < 0 || D <= 0 || N > (int64_t{1} << 31) - 1) return cudaErrorInvalidValue;
  if (N == 0) return cudaSuccess;
  RmsNormKernel<T><<<static_cast<unsigned>(N), 128, 0, stream>>>(x, w, y, D, eps);
  return cudaGetLastError();
}

__global__ void SoftmaxKernel(const float* __restrict__ x, float* __restrict__ p, int64_t N,
                              int64_t E) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  const float* row = x + n * E;
  float* out = p + n * E;
  float m = -kInf;
  for (int64_t e = 0; e < E; ++e) m = inv::Max(m, row[e]);
  float sum = 0.0f;
  for (int64_t e = 0; e < E; ++e) {
    out[e] = inv::InvExp(Sub(row[e], m));
    sum = Add(sum, out[e]);
  }
  for (int64_t e = 0; e < E; ++e) out[e] = Div(out[e], sum);
}

__global__ void TopKKernel(const float* __restrict__ x, int64_t* __restrict__ idx, int64_t N,
                           int64_t E, int64_t k) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  const float* row = x + n * E;
  unsigned taken[kInvariantTopKMaxEntries / 32] = {};
  for (int64_t j = 0; j < k; ++j) {
    int64_t best = -1;
    for (int64_t e = 0; e < E; ++e) {
      if ((taken[e / 32] >> (e % 32)) & 1u) continue;
      if (best < 0 || row[e] > row[best]) best = e;
    }
    taken[best / 32] |= 1u << (best % 32);
    idx[n * k + j] = best;
  }
}

// --- lightning: a block per (document, head), thread j owning column j of the state (in
// shared memory, S[i * d + j]); per token the update and o_j = sum_i q_i S_ij in i order.

__global__ void LightningKernel(InvariantLightningArgs a, float* __restrict__ o,
                                float* __restrict__ last) {
  extern __shared__ float smem[];
  const int64_t d = a.d, H = a.H;
  float* S = smem;
  float* qs = S + d * d;
  float* ks = qs + d;
  float* vs = ks + d;
  const int64_t doc = blockIdx.x / H, h = blockIdx.x % H;
  const int j = threadIdx.x;
  const float lambda = inv::InvExp(-a.slope[h]);
  const int64_t sd = a.state_index != nullptr ? a.state_index[doc] : doc;
  for (int64_t i = 0; i < d; ++i) {
    S[i * d + j] = a.init != nullptr ? a.init[((sd * H + h) * d + i) * d + j] : 0.0f;
  }
  for (int64_t t = a.cu[doc]; t < a.cu[doc + 1]; ++t) {
    const int64_t at = (t * H + h) * d;
    qs[j] = a.q[at + j];
    ks[j] = a.k[at + j];
    vs[j] = a.v[at + j];
    __syncthreads();
    const float vj = vs[j];
    float acc = 0.0f;
    for (int64_t i = 0; i < d; ++i) {
      const float s = Add(Mul(lambda, S[i * d + j]), Mul(ks[i], vj));
      S[i * d + j] = s;
      acc = Add(acc, Mul(qs[i], s));
    }
    o[at + j] = acc;
    __syncthreads();
  }
  if (last != nullptr) {
    for (int64_t i = 0; i < d; ++i) last[((sd * H + h) * d + i) * d + j] = S[i * d + j];
  }
}

// The gradient as the CPU op's backward: dq_t = S_t g_t with S rebuilt forward (thread i
// owning row i), then G_t = lambda G_{t+1} + q_t g_t^T backward with dk_t = G_t v_t (thread
// i, row i) and dv_t = G_t^T k_t (thread j, column j). Rows padded to d + 1 floats.
__global__ void LightningBackwardKernel(InvariantLightningArgs a, const float* __restrict__ g,
                                        float* __restrict__ dq, float* __restrict__ dk,
                                        float* __restrict__ dv) {
  extern __shared__ float smem[];
  const int64_t d = a.d, H = a.H, ld = d + 1;
  float* S = smem;
  float* qs = S + d * ld;
  float* ks = qs + d;
  float* vs = ks + d;
  float* gs = vs + d;
  const int64_t doc = blockIdx.x / H, h = blockIdx.x % H;
  const int64_t b = a.cu[doc], e = a.cu[doc + 1];
  const int i = threadIdx.x;
  const float lambda = inv::InvExp(-a.slope[h]);
  const int64_t sd = a.state_index != nullptr ? a.state_index[doc] : doc;
  for (int64_t jj = 0; jj < d; ++jj) {
    S[i * ld + jj] = a.init != nullptr ? a.init[((sd * H + h) * d + i) * d + jj] : 0.0f;
  }
  for (int64_t t = b; t < e; ++t) {
    const int64_t at = (t * H + h) * d;
    ks[i] = a.k[at + i];
    vs[i] = a.v[at + i];
    gs[i] = g[at + i];
    __syncthreads();
    const float ki = ks[i];
    float acc = 0.0f;
    for (int64_t jj = 0; jj < d; ++jj) {
      const float s = Add(Mul(lambda, S[i * ld + jj]), Mul(ki, vs[jj]));
      S[i * ld + jj] = s;
      acc = Add(acc, Mul(s, gs[jj]));
    }
    dq[at + i] = acc;
    __syncthreads();
  }
  float* G = S;
  for (int64_t jj = 0; jj < d; ++jj) G[i * ld + jj] = 0.0f;
  for (int64_t t = e - 1; t >= b; --t) {
    const int64_t at = (t * H + h) * d;
    qs[i] = a.q[at + i];
    ks[i] = a.k[at + i];
    vs[i] = a.v[at + i];
    gs[i] = g[at + i];
    __syncthreads();
    const float qi = qs[i];
    float acc = 0.0f;
    for (int64_t jj = 0; jj < d; ++jj) {
      const float gv = Add(Mul(lambda, G[i * ld + jj]), Mul(qi, gs[jj]));
      G[i * ld + jj] = gv;
      acc = Add(acc, Mul(gv, vs[jj]));
    }
    dk[at + i] = acc;
    __syncthreads();
    float col = 0.0f;
    for (int64_t ii = 0; ii < d; ++ii) col = Add(col, Mul(G[ii * ld + i], ks[ii]));
    dv[at + i] = col;
    __syncthreads();
  }
}

// --- softmax attention: a block per (query, head). Keys in chunks of blockDim: pass 1 the
// scores (a thread a key, its dot product in order) for the max; pass 2 the same scores
// again, then thread i < d adds each key's exponential to the sum and p v_i to o_i in key
// order (every thread the same sum, the same bits).

template <typename T>
__device__ __forceinline__ float Load(const T* p, int64_t i) {
  if constexpr (std::is_same_v<T, float>) {
    return p[i];
  } else {
    return __bfloat162float(p[i]);
  }
}

template <typename T>
__device__ __forceinline__ float Score(const InvariantAttentionArgs& a, const T* k,
                                       const float* qs, int64_t row, int64_t kvh) {
  const T* kr = k + (row * a.KVH + kvh) * a.d;
  float dot = 0.0f;
  for (int64_t i = 0; i < a.d; ++i) dot = Add(dot, Mul(qs[i], Load(kr, i)));
  return Mul(dot, a.scale);
}

template <typename T>
__global__ void AttentionKernel(InvariantAttentionArgs a, const T* __restrict__ k,
                                const T* __restrict__ v, float* __restrict__ o) {
  extern __shared__ float smem[];
  float* qs = smem;
  float* sc = qs + a.d;
  __shared__ float maxes[32];
  const int64_t qi = blockIdx.x / a.H, h = blockIdx.x % a.H;
  const int64_t kvh = h / (a.H / a.KVH);
  const int tid = threadIdx.x, chunk = blockDim.x;
  const int64_t start = a.page_table == nullptr ? a.start[qi] : 0, n = a.count[qi];
  const int32_t* pages =
      a.page_table != nullptr ? a.page_table + a.page_row[qi] * a.max_pages : nullptr;
  auto row_of = [&](int64_t j) -> int64_t {
    if (pages != nullptr) return static_cast<int64_t>(pages[j / a.page_size]) * a.page_size + j % a.page_size;
    return a.index != nullptr ? a.index[start + j] : start + j;
  };
  for (int64_t i = tid; i < a.d; i += chunk) qs[i] = a.q[(qi * a.H + h) * a.d + i];
  __syncthreads();
  float m = -kInf;
  for (int64_t j = tid; j < n; j += chunk) m = inv::Max(m, Score(a, k, qs, row_of(j), kvh));
  for (int off = 16; off > 0; off /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
  if (tid % 32 == 0) maxes[tid / 32] = m;
  __syncthreads();
  m = maxes[0];
  for (int w = 1; w < chunk / 32; ++w) m = fmaxf(m, maxes[w]);
  float sum = 0.0f, acc = 0.0f;
  for (int64_t c0 = 0; c0 < n; c0 += chunk) {
    if (c0 + tid < n) sc[tid] = Score(a, k, qs, row_of(c0 + tid), kvh);
    __syncthreads();
    if (tid < a.d) {
      const int64_t len = n - c0 < chunk ? n - c0 : chunk;
      for (int64_t jj = 0; jj < len; ++jj) {
        const float p = inv::InvExp(Sub(sc[jj], m));
        sum = Add(sum, p);
        acc = Add(acc, Mul(p, Load(v, (row_of(c0 + jj) * a.KVH + kvh) * a.d + tid)));
      }
    }
    __syncthreads();
  }
  if (tid < a.d) o[(qi * a.H + h) * a.d + tid] = Div(acc, sum);
}

// --- the LM head's logprob: a block of inv::kSumLanes threads per row.

__global__ void TokenLogprobsKernel(const float* __restrict__ logits,
                                    const int64_t* __restrict__ targets,
                                    const float* __restrict__ temperature,
                                    float* __restrict__ out, int64_t V) {
  constexpr int L = inv::kSumLanes;
  __shared__ float lanes[L];
  const int64_t n = blockIdx.x;
  const int l = threadIdx.x;
  const float* row = logits + n * V;
  const float t = temperature[n];
  float m = -kInf;
  for (int64_t i = l; i < V; i += L) m = inv::Max(m, Div(row[i], t));
  lanes[l] = m;
  __syncthreads();
  for (int s = L / 2; s > 0; s /= 2) {
    if (l < s) lanes[l] = inv::Max(lanes[l], lanes[l + s]);
    __syncthreads();
  }
  m = lanes[0];
  __syncthreads();
  float sum = 0.0f;
  for (int64_t i = l; i < V; i += L) sum = Add(sum, inv::InvExp(Sub(Div(row[i], t), m)));
  lanes[l] = sum;
  __syncthreads();
  for (int s = L / 2; s > 0; s /= 2) {
    if (l < s) lanes[l] = Add(lanes[l], lanes[l + s]);
    __syncthreads();
  }
  if (l == 0) {
    const int64_t target = targets[n];
    out[n] = target >= 0 && target < V ? Sub(Sub(Div(row[target], t), m), inv::InvLog(lanes[0]))
                                       : __int_as_float(0x7fc00000);
  }
}

}  // namespace

cudaError_t LaunchInvariantLinear(const float* x, const float* w, float* out, int64_t N, int64_t K,
                                  int64_t M, cudaStream_t stream) {
  return LaunchLinear(x, w, out, N, K, M, stream);
}

cudaError_t LaunchInvariantLinearTc(const __nv_bfloat16* x, const __nv_bfloat16* w, float* out,
                                    int64_t N, int64_t K, int64_t M, cudaStream_t stream) {
  if (!CheckLinear(N, K, M)) return cudaErrorInvalidValue;
  if (N == 0 || M == 0) return cudaSuccess;
  if (K == 0) return cudaMemsetAsync(out, 0, sizeof(float) * N * M, stream);
  const bool vec = K % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(w) % 16 == 0;
  const dim3 grid(static_cast<unsigned>((M + kTcTile - 1) / kTcTile),
                  static_cast<unsigned>((N + kTcTile - 1) / kTcTile));
  LinearTcKernel<<<grid, kTcThreads, 0, stream>>>(x, w, out, N, K, M, vec);
  return cudaGetLastError();
}

cudaError_t LaunchInvariantGroupedLinearTc(const __nv_bfloat16* x,
                                           const __nv_bfloat16* const* w, const int64_t* tiles,
                                           int64_t num_tiles, float* out, int64_t K, int64_t M,
                                           bool vec, cudaStream_t stream) {
  if (num_tiles < 0 || num_tiles > 65535 || K <= 0 || M <= 0) return cudaErrorInvalidValue;
  if (num_tiles == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>((M + kTcTile - 1) / kTcTile),
                  static_cast<unsigned>(num_tiles));
  GroupedLinearTcKernel<<<grid, kTcThreads, 0, stream>>>(x, w, tiles, out, K, M, vec);
  return cudaGetLastError();
}

cudaError_t LaunchInvariantExpertLinearTc(const __nv_bfloat16* x,
                                          const __nv_bfloat16* const* w, const int64_t* offsets,
                                          int64_t E, float* out, int64_t A, int64_t K, int64_t M,
                                          bool vec, cudaStream_t stream) {
  const int64_t max_tiles = (A + kTcTile - 1) / kTcTile + E;
  if (A < 0 || E <= 0 || K <= 0 || M <= 0 || max_tiles > 65535) return cudaErrorInvalidValue;
  if (A == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>((M + kTcTile - 1) / kTcTile),
                  static_cast<unsigned>(max_tiles));
  ExpertLinearTcKernel<<<grid, kTcThreads, 0, stream>>>(x, w, offsets, E, out, K, M, vec);
  return cudaGetLastError();
}

cudaError_t LaunchInvariantMoeDispatch(const int64_t* expert, int64_t A, int64_t E,
                                       int64_t capacity, int64_t* counts, int64_t* offsets,
                                       int64_t* order, int64_t* position, float* kept,
                                       cudaStream_t stream) {
  if (A < 0 || E <= 0 || E > (int64_t{1} << 31) - 1) return cudaErrorInvalidValue;
  MoeCountKernel<<<static_cast<unsigned>(E), kDispatchThreads, 0, stream>>>(expert, A, counts);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  MoePlaceKernel<<<static_cast<unsigned>(E), kDispatchThreads, 0, stream>>>(
      expert, A, E, capacity, counts, offsets, order, position, kept);
  return cudaGetLastError();
}

cudaError_t LaunchInvariantRowRsqrt(const float* x, float* r, int64_t N, int64_t D, float eps,
                                    cudaStream_t stream) {
  if (N < 0 || D <= 0) return cudaErrorInvalidValue;
  if (N == 0) return cudaSuccess;
  RowRsqrtKernel<<<Blocks(N, 128), 128, 0, stream>>>(x, r, N, D, eps);
  return cudaGetLastError();
}

cudaError_t LaunchInvariantUnary(const float* x, float* out, int64_t n, bool silu,
                                 cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  UnaryKernel<float><<<Blocks(n, 256), 256, 0, stream>>>(x, out, n, silu);
  return cudaGetLastError();
}

cudaError_t LaunchInvariantUnary(const __nv_bfloat16* x, __nv_bfloat16* out, int64_t n, bool silu,
                                 cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  UnaryKernel<__nv_bfloat16><<<Blocks(n, 256), 256, 0, stream>>>(x, out, n, silu);
  return cudaGetLastError();
}

cudaError_t LaunchInvariantRmsNorm(const float* x, const float* w, float* y, int64_t N,
                                   int64_t D, float eps, cudaStream_t stream) {
  return LaunchRmsNorm(x, w, y, N, D, eps, stream);
}

cudaError_t LaunchInvariantRmsNorm(const __nv_bfloat16* x, const __nv_bfloat16* w,
                                   __nv_bfloat16* y, int64_t N, int64_t D, float eps,
                                   cudaStream_t stream) {
  return LaunchRmsNorm(x, w, y, N, D, eps, stream);
}

cudaError_t LaunchInvariantSoftmax(const float* x, float* p, int64_t N, int64_t E,
                                   cudaStream_t stream) {
  if (N < 0 || E <= 0) return cudaErrorInvalidValue;
  if (N == 0) return cudaSuccess;
  SoftmaxKernel<<<Blocks(N, 128), 128, 0, stream>>>(x, p, N, E);
  return cudaGetLastError();
}

cudaError_t LaunchInvariantTopK(const float* x, int64_t* idx, int64_t N, int64_t E, int64_t k,
                                cudaStream_t stream) {
  if (N < 0 || E <= 0 || E > kInvariantTopKMaxEntries || k < 1 || k > E) {
    return cudaErrorInvalidValue;
  }
  if (N == 0) return cudaSuccess;
  TopKKernel<<<Blocks(N, 128), 128, 0, stream>>>(x, idx, N, E, k);
  return cudaGetLastError();
}

namespace {

cudaError_t CheckLightning(const InvariantLightningArgs& a, size_t smem, const void* kernel) {
  if (a.num_docs < 0 || a.H <= 0 || a.d <= 0 || a.d > kInvariantLightningMaxDim ||
      a.num_docs * a.H > (int64_t{1} << 31) - 1) {
    return cudaErrorInvalidValue;
  }
  if (smem > 48 * 1024) {
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                static_cast<int>(smem));
  }
  return cudaSuccess;
}

}  // namespace

cudaError_t LaunchInvariantLightning(const InvariantLightningArgs& a, float* o, float* last,
                                     cudaStream_t stream) {
  const size_t smem = sizeof(float) * static_cast<size_t>(a.d * a.d + 3 * a.d);
  cudaError_t err = CheckLightning(a, smem, reinterpret_cast<const void*>(LightningKernel));
  if (err != cudaSuccess || a.num_docs == 0) return err;
  LightningKernel<<<static_cast<unsigned>(a.num_docs * a.H), static_cast<unsigned>(a.d), smem,
                    stream>>>(a, o, last);
  return cudaGetLastError();
}

cudaError_t LaunchInvariantLightningBackward(const InvariantLightningArgs& a, const float* g,
                                             float* dq, float* dk, float* dv,
                                             cudaStream_t stream) {
  const size_t smem = sizeof(float) * static_cast<size_t>(a.d * (a.d + 1) + 4 * a.d);
  cudaError_t err =
      CheckLightning(a, smem, reinterpret_cast<const void*>(LightningBackwardKernel));
  if (err != cudaSuccess || a.num_docs == 0) return err;
  LightningBackwardKernel<<<static_cast<unsigned>(a.num_docs * a.H), static_cast<unsigned>(a.d),
                            smem, stream>>>(a, g, dq, dk, dv);
  return cudaGetLastError();
}

cudaError_t LaunchInvariantAttention(const InvariantAttentionArgs& a, float* o,
                                     cudaStream_t stream) {
  if (a.Q < 0 || a.H <= 0 || a.KVH <= 0 || a.H % a.KVH != 0 || a.d <= 0 || a.d > 1024 ||
      a.Q * a.H > (int64_t{1} << 31) - 1) {
    return cudaErrorInvalidValue;
  }
  if (a.Q == 0) return cudaSuccess;
  const int threads = static_cast<int>(std::max<int64_t>(128, (a.d + 31) / 32 * 32));
  const size_t smem = sizeof(float) * static_cast<size_t>(a.d + threads);
  if (a.page_table != nullptr && (a.page_row == nullptr || a.page_size <= 0 || a.max_pages <= 0)) {
    return cudaErrorInvalidValue;
  }
  const dim3 grid(static_cast<unsigned>(a.Q * a.H));
  if (a.k16 != nullptr) {
    if (a.v16 == nullptr) return cudaErrorInvalidValue;
    AttentionKernel<__nv_bfloat16><<<grid, threads, smem, stream>>>(a, a.k16, a.v16, o);
  } else {
    AttentionKernel<float><<<grid, threads, smem, stream>>>(a, a.k, a.v, o);
  }
  return cudaGetLastError();
}

cudaError_t LaunchInvariantTokenLogprobs(const float* logits, const int64_t* targets,
                                         const float* temperature, float* out, int64_t N,
                                         int64_t V, cudaStream_t stream) {
  if (N < 0 || V <= 0 || N > (int64_t{1} << 31) - 1) return cudaErrorInvalidValue;
  if (N == 0) return cudaSuccess;
  TokenLogprobsKernel<<<static_cast<unsigned>(N), inv::kSumLanes, 0, stream>>>(
      logits, targets, temperature, out, V);
  return cudaGetLastError();
}

}  // namespace lightrl
