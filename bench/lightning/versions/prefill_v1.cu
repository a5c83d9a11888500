// Version 1 of kernels/lightning/lightning_prefill.cu, kept as the record of what
// bench/lightning/RESULTS.md measured as v1. Not built; the library holds the current one.
#include "kernels/lightning/lightning_prefill.h"

#include <cstring>

#include "kernels/lightning/lightning_mma.cuh"

// One CTA of 4 warps owns one (sequence, head, slice of kDv value columns) and walks the
// sequence block by block, keeping the FP32 state slice in mma accumulators. Per block of
// m <= kChunk tokens, with S the state before the block:
//   O = (Q K^T . D) V + diag(lambda^(i+1)) Q S,   D_ij = lambda^(i-j) for j <= i, else 0
//   S = lambda^m S + (K . w)^T V,                  w_j = lambda^(m-1-j)
// Q S reads a bf16 copy of S from shared memory; the state update keeps FP32 accuracy by
// splitting the decayed keys into bf16 hi + lo parts (two mma per product, error about
// 2^-17 relative), so the stored final state matches the recurrence to ~1e-6.
// Slicing the value columns across CTAs gives one long sequence enough CTAs to fill the
// chip; the slices of one head read the same q and k at the same time, so the repeat reads
// mostly hit L2. The next block's q, k, v stream in with cp.async while this one computes.

namespace lightrl {
namespace {

using lightning_mma::CpAsync16;
using lightning_mma::CpAsyncCommit;
using lightning_mma::CpAsyncWait;
using lightning_mma::LdMatrixX4;
using lightning_mma::LdMatrixX4Trans;
using lightning_mma::Mma16816;
using lightning_mma::PackBf16;
using lightning_mma::SmemAddr;
using lightning_mma::SplitScaledBf16;

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;

template <int kDk, int kDv, int kChunk>
struct PrefillTile {
  static_assert(kDk % 64 == 0, "the state rows split over 4 warps in 16-row tiles");
  static_assert(kChunk == 32 || kChunk == 64, "blocks of 32 or 64 tokens");
  static constexpr int kPad = 8;                  // bf16 per row: rows 16 B off banks
  static constexpr int kQkStride = kDk + kPad;    // shared row of q and k, elements
  static constexpr int kVStride = kDv + kPad;     // shared row of v and of the bf16 state
  static constexpr int kQTile = kChunk * kQkStride;
  static constexpr int kVTile = kChunk * kVStride;
  static constexpr int kStage = 2 * kQTile + kVTile;
  static constexpr int kStateTile = kDk * kVStride;
  static constexpr size_t kSmemBytes =
      size_t{2 * kStage + kStateTile} * sizeof(__nv_bfloat16) + (kChunk + 1) * sizeof(float);
  static constexpr int kRowTiles = kChunk / 16;   // 16-row tiles of a block
  static constexpr int kColSplit = kWarps / kRowTiles;  // warps sharing a row tile
  static constexpr int kDvWarp = kDv / kColSplit;  // output columns per warp
  static constexpr int kONt = kDvWarp / 8;         // output n-tiles per warp
  static constexpr int kSMt = kDk / 16 / kWarps;   // state m-tiles (rows of 16) per warp
  static constexpr int kSNt = kDv / 8;             // state n-tiles
  static_assert(kDvWarp % 16 == 0, "ldmatrix.x4 covers 16 value columns");
};

template <int kDk, int kDv, int kChunk>
__global__ void __launch_bounds__(kThreads, 2)
    LightningPrefillKernel(const LightningPrefillParams p, int num_slices) {
  using Tile = PrefillTile<kDk, kDv, kChunk>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __nv_bfloat16* smem = reinterpret_cast<__nv_bfloat16*>(smem_raw);
  __nv_bfloat16* s_state = smem + 2 * Tile::kStage;
  float* s_pow = reinterpret_cast<float*>(s_state + Tile::kStateTile);  // lambda^n

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int g = lane / 4;  // accumulator row within a 16-row tile (and +8)
  const int t = lane % 4;  // accumulator column pair within an 8-column tile

  int work = blockIdx.x;
  const int slice = work % num_slices;
  work /= num_slices;
  const int h = work % p.num_heads;
  const int seq = work / p.num_heads;
  const int64_t begin = p.cu_seqlens[seq];
  const int len = p.cu_seqlens[seq + 1] - static_cast<int>(begin);
  const int num_chunks = (len + kChunk - 1) / kChunk;
  const int slot = p.state_slots ? p.state_slots[seq] : seq;
  const int v_col0 = slice * kDv;
  const bool reverse = p.reverse;

  const __nv_bfloat16* q_head = p.q.data + h * p.q.head_stride;
  const __nv_bfloat16* k_head = p.k.data + h * p.k.head_stride;
  const __nv_bfloat16* v_head = p.v.data + h * p.v.head_stride + v_col0;
  auto token_of = [&](int tau) -> int64_t {
    return reverse ? begin + len - 1 - tau : begin + tau;
  };

  auto load_chunk = [&](int c, int stage) {
    __nv_bfloat16* sq = smem + stage * Tile::kStage;
    __nv_bfloat16* sk = sq + Tile::kQTile;
    __nv_bfloat16* sv = sk + Tile::kQTile;
    const int rows = min(kChunk, len - c * kChunk);
    constexpr int kQkVecs = kDk / 8;
    for (int i = tid; i < kChunk * kQkVecs; i += kThreads) {
      const int r = i / kQkVecs;
      const int col = (i % kQkVecs) * 8;
      const bool valid = r < rows;
      const int64_t tok = valid ? token_of(c * kChunk + r) : 0;
      CpAsync16(SmemAddr(sq + r * Tile::kQkStride + col),
                q_head + tok * p.q.token_stride + col, valid);
      CpAsync16(SmemAddr(sk + r * Tile::kQkStride + col),
                k_head + tok * p.k.token_stride + col, valid);
    }
    constexpr int kVVecs = kDv / 8;
    for (int i = tid; i < kChunk * kVVecs; i += kThreads) {
      const int r = i / kVVecs;
      const int col = (i % kVVecs) * 8;
      const bool valid = r < rows;
      const int64_t tok = valid ? token_of(c * kChunk + r) : 0;
      CpAsync16(SmemAddr(sv + r * Tile::kVStride + col), v_head + tok * p.v.token_stride + col,
                valid);
    }
  };

  load_chunk(0, 0);
  CpAsyncCommit();

  const float slope = p.slopes[h];
  for (int n = tid; n <= kChunk; n += kThreads) s_pow[n] = expf(-slope * static_cast<float>(n));

  // The warp's rows of the state slice: m-tiles [state_row0, state_row0 + 16 * kSMt).
  const int state_row0 = warp * Tile::kSMt * 16;
  float* state_head = nullptr;
  if (slot >= 0 && p.state != nullptr) {
    state_head = p.state + (static_cast<int64_t>(slot) * p.num_heads + h) * kDk * kDk + v_col0;
  }
  const bool load_state = p.use_initial_state && state_head != nullptr;
  float sacc[Tile::kSMt][Tile::kSNt][4];
#pragma unroll
  for (int mt = 0; mt < Tile::kSMt; ++mt) {
#pragma unroll
    for (int nt = 0; nt < Tile::kSNt; ++nt) {
      const int row = state_row0 + mt * 16 + g;
      const int col = nt * 8 + 2 * t;
      float2 lo = make_float2(0.f, 0.f);
      float2 hi = make_float2(0.f, 0.f);
      if (load_state) {
        lo = *reinterpret_cast<const float2*>(state_head + row * kDk + col);
        hi = *reinterpret_cast<const float2*>(state_head + (row + 8) * kDk + col);
        *reinterpret_cast<uint32_t*>(s_state + row * Tile::kVStride + col) = PackBf16(lo.x, lo.y);
        *reinterpret_cast<uint32_t*>(s_state + (row + 8) * Tile::kVStride + col) =
            PackBf16(hi.x, hi.y);
      }
      sacc[mt][nt][0] = lo.x;
      sacc[mt][nt][1] = lo.y;
      sacc[mt][nt][2] = hi.x;
      sacc[mt][nt][3] = hi.y;
    }
  }

  const int rt = warp % Tile::kRowTiles;  // this warp's 16-row tile of the block
  const int cs = warp / Tile::kRowTiles;  // and its share of the output columns
  const int row0 = rt * 16;
  const int ocol0 = cs * Tile::kDvWarp;

  for (int c = 0; c < num_chunks; ++c) {
    const int stage = c & 1;
    // Every warp passed the previous block's second barrier, so the other stage is free.
    if (c + 1 < num_chunks) load_chunk(c + 1, stage ^ 1);
    CpAsyncCommit();
    CpAsyncWait<1>();
    __syncthreads();

    const __nv_bfloat16* sq = smem + stage * Tile::kStage;
    const __nv_bfloat16* sk = sq + Tile::kQTile;
    const __nv_bfloat16* sv = sk + Tile::kQTile;
    const int m = min(kChunk, len - c * kChunk);
    const bool have_state = load_state || c > 0;

    uint32_t qf[kDk / 16][4];
#pragma unroll
    for (int ks = 0; ks < kDk / 16; ++ks) {
      LdMatrixX4(qf[ks], SmemAddr(sq + (row0 + lane % 16) * Tile::kQkStride + ks * 16 +
                                  (lane / 16) * 8));
    }

    // P = (Q K^T) . D for key tiles up to the diagonal; rows and keys past m are zero
    // because their q and k rows were zero-filled.
    float pacc[kChunk / 8][4];
#pragma unroll
    for (int nt = 0; nt < kChunk / 8; ++nt) {
      pacc[nt][0] = pacc[nt][1] = pacc[nt][2] = pacc[nt][3] = 0.f;
    }
#pragma unroll
    for (int np = 0; np < kChunk / 16; ++np) {
      if (np <= rt) {
#pragma unroll
        for (int ks = 0; ks < kDk / 16; ++ks) {
          uint32_t b[4];
          LdMatrixX4(b, SmemAddr(sk + (np * 16 + lane % 8 + (lane / 16) * 8) * Tile::kQkStride +
                                 ks * 16 + ((lane / 8) % 2) * 8));
          Mma16816(pacc[2 * np], qf[ks], b[0], b[1]);
          Mma16816(pacc[2 * np + 1], qf[ks], b[2], b[3]);
        }
      }
    }
    uint32_t pf[kChunk / 16][4];
#pragma unroll
    for (int kk = 0; kk < kChunk / 16; ++kk) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int nt = 2 * kk + half;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = row0 + g + (e >= 2 ? 8 : 0);
          const int j = nt * 8 + 2 * t + (e & 1);
          pacc[nt][e] = j <= i ? pacc[nt][e] * s_pow[i - j] : 0.f;
        }
      }
      pf[kk][0] = PackBf16(pacc[2 * kk][0], pacc[2 * kk][1]);
      pf[kk][1] = PackBf16(pacc[2 * kk][2], pacc[2 * kk][3]);
      pf[kk][2] = PackBf16(pacc[2 * kk + 1][0], pacc[2 * kk + 1][1]);
      pf[kk][3] = PackBf16(pacc[2 * kk + 1][2], pacc[2 * kk + 1][3]);
    }

    // O = diag(lambda^(i+1)) Q S + P V over this warp's output columns, 16 at a time.
    const float decay_lo = s_pow[row0 + g + 1];
    const float decay_hi = s_pow[row0 + g + 9];
#pragma unroll
    for (int np = 0; np < Tile::kONt / 2; ++np) {
      const int col = ocol0 + np * 16;
      float oacc[2][4];
#pragma unroll
      for (int e = 0; e < 4; ++e) oacc[0][e] = oacc[1][e] = 0.f;
      if (have_state) {
#pragma unroll
        for (int ks = 0; ks < kDk / 16; ++ks) {
          uint32_t b[4];
          LdMatrixX4Trans(b, SmemAddr(s_state +
                                      (ks * 16 + lane % 8 + ((lane / 8) % 2) * 8) * Tile::kVStride +
                                      col + (lane / 16) * 8));
          Mma16816(oacc[0], qf[ks], b[0], b[1]);
          Mma16816(oacc[1], qf[ks], b[2], b[3]);
        }
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          oacc[half][0] *= decay_lo;
          oacc[half][1] *= decay_lo;
          oacc[half][2] *= decay_hi;
          oacc[half][3] *= decay_hi;
        }
      }
#pragma unroll
      for (int kk = 0; kk < kChunk / 16; ++kk) {
        if (kk <= rt) {
          uint32_t b[4];
          LdMatrixX4Trans(b, SmemAddr(sv + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * Tile::kVStride +
                                      col + (lane / 16) * 8));
          Mma16816(oacc[0], pf[kk], b[0], b[1]);
          Mma16816(oacc[1], pf[kk], b[2], b[3]);
        }
      }
#pragma unroll
      for (int rh = 0; rh < 2; ++rh) {  // rows g and g + 8
        const int r = row0 + g + 8 * rh;
        if (r < m) {
          __nv_bfloat16* out = p.o.data + token_of(c * kChunk + r) * p.o.token_stride +
                               h * p.o.head_stride + v_col0 + col + 2 * t;
          *reinterpret_cast<uint32_t*>(out) = PackBf16(oacc[0][2 * rh], oacc[0][2 * rh + 1]);
          *reinterpret_cast<uint32_t*>(out + 8) = PackBf16(oacc[1][2 * rh], oacc[1][2 * rh + 1]);
        }
      }
    }

    // S = lambda^m S + U with U = (K . w)^T V on this warp's state rows. U is summed in
    // fresh accumulators, 16 x 16 at a time, and added to S with one rounding: the tensor
    // cores' own accumulation rounding then stays relative to one block's U instead of
    // building up over the whole sequence in S.
    const float decay_m = s_pow[m];
#pragma unroll
    for (int mt = 0; mt < Tile::kSMt; ++mt) {
      uint32_t a_hi[kChunk / 16][4];
      uint32_t a_lo[kChunk / 16][4];
#pragma unroll
      for (int kk = 0; kk < kChunk / 16; ++kk) {
        const int j0 = kk * 16 + 2 * t;  // tokens j0, j0+1 (a0, a1) and j0+8, j0+9 (a2, a3)
        const float w0 = j0 < m ? s_pow[m - 1 - j0] : 0.f;
        const float w1 = j0 + 1 < m ? s_pow[m - 2 - j0] : 0.f;
        const float w8 = j0 + 8 < m ? s_pow[m - 9 - j0] : 0.f;
        const float w9 = j0 + 9 < m ? s_pow[m - 10 - j0] : 0.f;
        uint32_t a[4];
        LdMatrixX4Trans(a, SmemAddr(sk + (kk * 16 + lane % 8 + (lane / 16) * 8) * Tile::kQkStride +
                                    state_row0 + mt * 16 + ((lane / 8) % 2) * 8));
        SplitScaledBf16(a[0], w0, w1, a_hi[kk][0], a_lo[kk][0]);
        SplitScaledBf16(a[1], w0, w1, a_hi[kk][1], a_lo[kk][1]);
        SplitScaledBf16(a[2], w8, w9, a_hi[kk][2], a_lo[kk][2]);
        SplitScaledBf16(a[3], w8, w9, a_hi[kk][3], a_lo[kk][3]);
      }
#pragma unroll
      for (int np = 0; np < Tile::kSNt / 2; ++np) {
        float u[2][4];
#pragma unroll
        for (int e = 0; e < 4; ++e) u[0][e] = u[1][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < kChunk / 16; ++kk) {
          if (kk * 16 < m) {
            uint32_t b[4];
            LdMatrixX4Trans(b, SmemAddr(sv + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * Tile::kVStride +
                                        np * 16 + (lane / 16) * 8));
            Mma16816(u[0], a_hi[kk], b[0], b[1]);
            Mma16816(u[0], a_lo[kk], b[0], b[1]);
            Mma16816(u[1], a_hi[kk], b[2], b[3]);
            Mma16816(u[1], a_lo[kk], b[2], b[3]);
          }
        }
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          sacc[mt][2 * np][e] = fmaf(decay_m, sacc[mt][2 * np][e], u[0][e]);
          sacc[mt][2 * np + 1][e] = fmaf(decay_m, sacc[mt][2 * np + 1][e], u[1][e]);
        }
      }
    }

    // Every warp is done reading this stage and the bf16 state; publish the new state.
    __syncthreads();
    if (c + 1 < num_chunks) {
#pragma unroll
      for (int mt = 0; mt < Tile::kSMt; ++mt) {
#pragma unroll
        for (int nt = 0; nt < Tile::kSNt; ++nt) {
          const int row = state_row0 + mt * 16 + g;
          const int col = nt * 8 + 2 * t;
          *reinterpret_cast<uint32_t*>(s_state + row * Tile::kVStride + col) =
              PackBf16(sacc[mt][nt][0], sacc[mt][nt][1]);
          *reinterpret_cast<uint32_t*>(s_state + (row + 8) * Tile::kVStride + col) =
              PackBf16(sacc[mt][nt][2], sacc[mt][nt][3]);
        }
      }
    }
  }
  CpAsyncWait<0>();

  if (p.store_final_state && state_head != nullptr) {
#pragma unroll
    for (int mt = 0; mt < Tile::kSMt; ++mt) {
#pragma unroll
      for (int nt = 0; nt < Tile::kSNt; ++nt) {
        const int row = state_row0 + mt * 16 + g;
        const int col = nt * 8 + 2 * t;
        *reinterpret_cast<float2*>(state_head + row * kDk + col) =
            make_float2(sacc[mt][nt][0], sacc[mt][nt][1]);
        *reinterpret_cast<float2*>(state_head + (row + 8) * kDk + col) =
            make_float2(sacc[mt][nt][2], sacc[mt][nt][3]);
      }
    }
  }
}

template <int kDk, int kDv, int kChunk>
cudaError_t Launch(const LightningPrefillParams& p, cudaStream_t stream) {
  using Tile = PrefillTile<kDk, kDv, kChunk>;
  auto kernel = LightningPrefillKernel<kDk, kDv, kChunk>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(Tile::kSmemBytes));
  if (err != cudaSuccess) return err;
  const int num_slices = kDk / kDv;
  const int64_t num_ctas = int64_t{p.num_seqs} * p.num_heads * num_slices;
  if (num_ctas > 0x7fffffff) return cudaErrorInvalidConfiguration;
  kernel<<<static_cast<unsigned>(num_ctas), kThreads, Tile::kSmemBytes, stream>>>(p, num_slices);
  return cudaGetLastError();
}

template <int kDk, int kDv>
cudaError_t LaunchForChunk(const LightningPrefillParams& p, int chunk, cudaStream_t stream) {
  return chunk == 32 ? Launch<kDk, kDv, 32>(p, stream) : Launch<kDk, kDv, 64>(p, stream);
}

template <int kDk>
cudaError_t LaunchForDv(const LightningPrefillParams& p, int chunk, int dv,
                        cudaStream_t stream) {
  return dv == 32 ? LaunchForChunk<kDk, 32>(p, chunk, stream)
                  : LaunchForChunk<kDk, 64>(p, chunk, stream);
}

bool Aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; }

bool ViewOk(const void* data, int64_t token_stride, int64_t head_stride) {
  return data != nullptr && Aligned16(data) && token_stride % 8 == 0 && head_stride % 8 == 0;
}

}  // namespace

const char* LightningPrefillParams::Validate() const {
  if (num_seqs < 0 || num_heads <= 0) return "num_seqs must be >= 0 and num_heads > 0";
  if (head_dim != 64 && head_dim != 128) return "head_dim must be 64 or 128";
  if (!ViewOk(q.data, q.token_stride, q.head_stride) ||
      !ViewOk(k.data, k.token_stride, k.head_stride) ||
      !ViewOk(v.data, v.token_stride, v.head_stride) ||
      !ViewOk(o.data, o.token_stride, o.head_stride)) {
    return "q, k, v, o need non-null 16-byte aligned data and strides that are multiples of 8";
  }
  if (cu_seqlens == nullptr || slopes == nullptr) return "cu_seqlens and slopes are required";
  if ((use_initial_state || store_final_state) && state == nullptr) {
    return "state is required when use_initial_state or store_final_state is set";
  }
  if (state != nullptr && !Aligned16(state)) return "state must be 16-byte aligned";
  if (block_size != 0 && block_size != 32 && block_size != 64) {
    return "block_size must be 0 (auto), 32 or 64";
  }
  if (dv_split != 0 && dv_split != 32 && dv_split != 64) return "dv_split must be 0, 32 or 64";
  if (max_seqlen < 0) return "max_seqlen must be >= 0";
  return nullptr;
}

cudaError_t LaunchLightningPrefill(const LightningPrefillParams& params, cudaStream_t stream) {
  if (params.Validate() != nullptr) return cudaErrorInvalidValue;
  if (params.num_seqs == 0) return cudaSuccess;
  const int chunk = params.block_size != 0                              ? params.block_size
                    : (params.max_seqlen > 0 && params.max_seqlen <= 32) ? 32
                                                                         : 64;
  int dv = params.dv_split;
  if (dv == 0) {
    // Slices of 64 columns recompute Q K^T half as often as slices of 32; take them when
    // they already give every multiprocessor two CTAs.
    int device = 0;
    int num_sms = 132;
    cudaError_t err = cudaGetDevice(&device);
    if (err == cudaSuccess) {
      err = cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device);
    }
    if (err != cudaSuccess) return err;
    const int64_t ctas64 = int64_t{params.num_seqs} * params.num_heads * (params.head_dim / 64);
    dv = ctas64 >= 2 * num_sms ? 64 : 32;
  }
  if (params.head_dim == 64) return LaunchForDv<64>(params, chunk, dv, stream);
  return LaunchForDv<128>(params, chunk, dv, stream);
}

}  // namespace lightrl
