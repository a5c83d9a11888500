#include "kernels/lightning/lightning_prefill_sm90.h"

#include <cudaTypedefs.h>

#include <climits>

#include "kernels/lightning/lightning_mma.cuh"
#include "kernels/lightning/lightning_prefill_work.cuh"
#include "kernels/lightning/lightning_tma.cuh"
#include "kernels/lightning/lightning_wgmma.cuh"

// A CTA owns one (sequence, head, slice of kDv value columns) and walks the sequence in
// blocks of 64 tokens with the FP32 state slice [128 x kDv] in wgmma accumulators. Two
// forms share the block arithmetic (BlockMath): one warpgroup per CTA, two CTAs per
// multiprocessor, described here; and a warp-specialised form for batches too small to
// fill the chip that way, described above its kernel. Per block of m <= 64 tokens, S the state before it:
//   O = diag(lambda^(i+1)) Q S + (Q K^T . D) V,   D_ij = lambda^(i-j) for j <= i, else 0
//   S = lambda^m S + K^T (w . V),                 w_j = lambda^(m-1-j)
// as four groups of wgmma: Q S (B = a bf16 copy of S in shared memory) and Q K^T first,
// the state update beside them, then P V with P from registers once Q S and Q K^T are in.
// The decay weights go on the value rows (w . V), so K^T is read from shared memory as it
// was loaded; the exact-state form splits w . V into bf16 hi + lo tiles, two products per
// term (about 2^-17 relative), and the state accumulates in FP32 in the tensor cores.
// Tiles move by TMA, issued by one thread: k and v double-buffered one block ahead, q
// single-buffered and refilled as soon as this block's Q S and Q K^T are done, and full
// output blocks leave through a shared-memory tile and one bulk store. A box always holds
// 64 consecutive tokens; in reverse time row r of a box is position 63 - r of the block,
// and a short last block reads rows beyond the sequence, which are zeroed before use.

namespace lightrl {

namespace lightning_tma {
namespace {

PFN_cuTensorMapEncodeTiled_v12000 Encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 encoder = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault,
                                         &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      (void)cudaGetLastError();
      fn = nullptr;
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  return encoder;
}

}  // namespace

bool Available() { return Encoder() != nullptr; }

cudaError_t EncodeView(CUtensorMap* map, const void* data, int64_t token_stride,
                       int64_t head_stride, int64_t rows, int num_heads, int head_dim,
                       int box_rows, int box_cols) {
  const PFN_cuTensorMapEncodeTiled_v12000 encode = Encoder();
  if (encode == nullptr) return cudaErrorNotSupported;
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(head_dim),
                              static_cast<cuuint64_t>(num_heads), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(head_stride) * 2,
                                 static_cast<cuuint64_t>(token_stride) * 2};
  const cuuint32_t box[3] = {static_cast<cuuint32_t>(box_cols), 1,
                             static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t unit[3] = {1, 1, 1};
  const CUtensorMapSwizzle swizzle =
      box_cols * 2 == 128 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_64B;
  const CUresult r = encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<void*>(data),
                            dims, strides, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

}  // namespace lightning_tma

namespace {

namespace wg = lightning_wgmma;
namespace tma = lightning_tma;
using lightning_mma::PackBf16;
using lightning_mma::SmemAddr;

constexpr int kThreads = 128;
constexpr int kWsThreads = 416;  // warp-specialised: three warpgroups and a producer warp
constexpr int kWsStages = 4;
constexpr int kDk = 128;
constexpr int kBlock = 64;
constexpr int kQkRowBytes = 128;  // q and k rows are stored as two 64-column halves
constexpr int kTableSize = 2 * kBlock + 1;  // lambda^d for d = -64..64, zero below 0

// The views' tensor maps: q and k in 64 x 64 boxes, v and o in 64 x kDv boxes.
struct Sm90Maps {
  CUtensorMap q, k, v, o;
};

// Shared-memory layout: kQBufs q tiles, kStages k and v tiles, kVdBufs pairs of decayed
// value tiles (hi, lo), kSBufs bf16 state tiles, the output tile, the barriers and the
// power table.
template <int kDv, int kQBufs, int kStages, int kVdBufs, int kSBufs>
struct Sm90Layout {
  static_assert(kDv == 64 || kDv == 32, "value slices of 64 or 32 columns");
  static constexpr int kVRowBytes = kDv * 2;
  static constexpr uint32_t kQkHalf = kBlock * kQkRowBytes;  // 8 KB: one 64-column half
  static constexpr uint32_t kQkTile = 2 * kQkHalf;
  static constexpr uint32_t kVTile = kBlock * kVRowBytes;
  static constexpr uint32_t kStateTile = kDk * kVRowBytes;
  static constexpr uint32_t kQ = 0;
  static constexpr uint32_t kK = kQ + kQBufs * kQkTile;
  static constexpr uint32_t kV = kK + kStages * kQkTile;
  static constexpr uint32_t kVd = kV + kStages * kVTile;  // hi at + 2 b kVTile, lo after it
  static constexpr uint32_t kS = kVd + kVdBufs * 2 * kVTile;
  static constexpr uint32_t kO = kS + kSBufs * kStateTile;  // an output block on its way out
  static constexpr uint32_t kBars = kO + kVTile;
  static constexpr uint32_t kTable = kBars + 256;            // room for 32 barriers
  static constexpr size_t kSmemBytes = kTable + kTableSize * 4 + 1024;  // + base alignment
  static constexpr int kVChunks = kDv / 8;                // 16-byte chunks per value row
  static constexpr int kVRowsPerThread = kBlock * kVChunks / kThreads;
  static constexpr int kAcc = kDv / 2;                    // accumulator registers per m64
};

// What every form of the kernel does to one block, for one warpgroup (threads 0..127 of it:
// `lt`, warp `warp`); `smem` is the 1024-aligned base, `pow_of` the power table.
template <int kDv, bool kExactState, bool kReverse, typename Layout>
struct BlockMath {
  static constexpr int kAcc = kDv / 2;

  __device__ static int Pos(int r) { return kReverse ? kBlock - 1 - r : r; }

  // The decayed values w . V of a block of m tokens into the Vd tile pair at vd_off, from
  // this thread's own chunks (rows past the sequence: zero, in the value tile too).
  __device__ static void DecayValues(unsigned char* smem, uint32_t v_off, uint32_t vd_off, int m,
                                     int lt, const float* pow_of) {
    const int v_chunk = lt % Layout::kVChunks;
    const int v_row = lt / Layout::kVChunks;
    constexpr int kVRowStep = kThreads / Layout::kVChunks;
#pragma unroll
    for (int i = 0; i < Layout::kVRowsPerThread; ++i) {
      const int r = v_row + kVRowStep * i;
      const uint32_t off = wg::SwizzledOffset<Layout::kVRowBytes>(r, v_chunk);
      uint4* src = reinterpret_cast<uint4*>(smem + v_off + off);
      uint4 x = *src;
      const float w = pow_of[m - 1 - Pos(r)];
      if (Pos(r) >= m) {
        x = make_uint4(0, 0, 0, 0);
        *src = x;
      }
      uint4 hi, lo;
      const uint32_t* xs = &x.x;
      uint32_t* his = &hi.x;
      uint32_t* los = &lo.x;
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        if (kExactState) {
          lightning_mma::SplitScaledBf16(xs[q], w, w, his[q], los[q]);
        } else {
          his[q] = lightning_mma::ScaleBf16(xs[q], w, w);
        }
      }
      *reinterpret_cast<uint4*>(smem + vd_off + off) = hi;
      if (kExactState) *reinterpret_cast<uint4*>(smem + vd_off + Layout::kVTile + off) = lo;
    }
  }

  // Rows of a short block's k tile past the sequence: zeroed, so that only exact zeros
  // meet them in the products.
  __device__ static void ZeroKeyRows(unsigned char* smem, uint32_t k_off, int m, int lt) {
    const int chunk = lt % 16;
#pragma unroll
    for (int i = 0; i < kBlock / 8; ++i) {
      const int r = lt / 16 + 8 * i;
      if (Pos(r) >= m) {
        *reinterpret_cast<uint4*>(smem + k_off + (chunk / 8) * Layout::kQkHalf +
                                  wg::SwizzledOffset<kQkRowBytes>(r, chunk % 8)) =
            make_uint4(0, 0, 0, 0);
      }
    }
  }

  // f(half, j, e) for each pair of adjacent columns (registers 4j + e, 4j + e + 1) of the
  // thread's share of the [128 x kDv] state: s[half] holds rows 64 half + accumulator rows.
  template <typename F>
  __device__ static void ForEachStatePair(F&& f) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
#pragma unroll
      for (int j = 0; j < kDv / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; e += 2) f(half, j, e);
      }
    }
  }
  __device__ static int StateRow(int warp, int lane, int half, int e) {
    return 64 * half + 16 * warp + lane / 4 + (e >= 2 ? 8 : 0);
  }
  __device__ static int StateCol(int lane, int j, int e) { return 8 * j + 2 * (lane % 4) + (e & 1); }

  // The state slice from (or to) global memory; zeros when `from` is null.
  __device__ static void LoadState(float (&s)[2][kAcc], const float* from, int warp, int lane) {
    ForEachStatePair([&](int half, int j, int e) {
      float2 x = make_float2(0.f, 0.f);
      if (from != nullptr) {
        x = *reinterpret_cast<const float2*>(from + StateRow(warp, lane, half, e) * kDk +
                                             StateCol(lane, j, e));
      }
      s[half][4 * j + e] = x.x;
      s[half][4 * j + e + 1] = x.y;
    });
  }
  __device__ static void StoreState(const float (&s)[2][kAcc], float* to, int warp, int lane) {
    ForEachStatePair([&](int half, int j, int e) {
      *reinterpret_cast<float2*>(to + StateRow(warp, lane, half, e) * kDk + StateCol(lane, j, e)) =
          make_float2(s[half][4 * j + e], s[half][4 * j + e + 1]);
    });
  }
  // The bf16 copy of the state that Q S reads, at tile offset `s_off`.
  __device__ static void WriteStateTile(unsigned char* smem, uint32_t s_off,
                                        const float (&s)[2][kAcc], int warp, int lane) {
    ForEachStatePair([&](int half, int j, int e) {
      *reinterpret_cast<uint32_t*>(
          smem + s_off + wg::SwizzledOffset<Layout::kVRowBytes>(StateRow(warp, lane, half, e), j) +
          4 * (lane % 4)) = PackBf16(s[half][4 * j + e], s[half][4 * j + e + 1]);
    });
  }

  // S *= lambda^m, ahead of UpdateState (and ahead of any wgmma group in flight, which
  // would otherwise have to finish before the registers change).
  __device__ static void DecayState(float (&s)[2][kAcc], int m, const float* pow_of) {
    const float decay_m = pow_of[m];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
#pragma unroll
      for (int i = 0; i < kAcc; ++i) s[half][i] *= decay_m;
    }
  }

  // S += K^T (w . V) with w . V the Vd tile pair at shared address vd, K^T as the
  // transposed (MN-major) k tile, 64 rows a half; one committed wgmma group.
  __device__ static void UpdateState(float (&s)[2][kAcc], uint32_t vd, uint64_t k_desc) {
    wg::Fence();
    const uint64_t vd_desc = wg::Desc<Layout::kVRowBytes>(vd);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
#pragma unroll
      for (int ks = 0; ks < kBlock / 16; ++ks) {
        const uint64_t a = wg::Advance(k_desc, half * Layout::kQkHalf + ks * 16 * kQkRowBytes);
        const uint32_t rows = ks * 16 * Layout::kVRowBytes;
        wg::MmaSS<kDv, 1, 1>(s[half], a, wg::Advance(vd_desc, rows), true);
        if (kExactState) {
          wg::MmaSS<kDv, 1, 1>(s[half], a, wg::Advance(vd_desc, Layout::kVTile + rows), true);
        }
      }
    }
    wg::Commit();
  }

  // O = Q S and P = Q K^T over the 128 key dimensions in steps of 16; one committed group.
  __device__ static void QueryProducts(float (&o)[kAcc], float (&pacc)[32], uint32_t sq,
                                       uint64_t k_desc, uint32_t s_tile) {
    wg::Fence();
    const uint64_t q_desc = wg::Desc<kQkRowBytes>(sq);
    const uint64_t s_desc = wg::Desc<Layout::kVRowBytes>(s_tile);
    // k-step ks of a q or k operand: half ks / 4, 32 bytes per 16 columns within it.
    auto qk_step = [](int ks) { return (ks / 4) * Layout::kQkHalf + (ks % 4) * 32; };
#pragma unroll
    for (int ks = 0; ks < kDk / 16; ++ks) {
      wg::MmaSS<kDv, 0, 1>(o, wg::Advance(q_desc, qk_step(ks)),
                           wg::Advance(s_desc, ks * 16 * Layout::kVRowBytes), ks > 0);
    }
#pragma unroll
    for (int ks = 0; ks < kDk / 16; ++ks) {
      wg::MmaSS<64, 0, 0>(pacc, wg::Advance(q_desc, qk_step(ks)), wg::Advance(k_desc, qk_step(ks)),
                          ks > 0);
    }
    wg::Commit();
  }

  // Inter-block rows carry lambda^(pos(i)+1); intra-block weights are lambda^(pos(i)-pos(j)),
  // zero where that power is negative. Then O += P V (one committed group).
  __device__ static void CausalValues(float (&o)[kAcc], float (&pacc)[32], uint32_t sv,
                                      int warp, int lane, const float* pow_of) {
    const int row_lo = 16 * warp + lane / 4;
    const int row_hi = row_lo + 8;
    const int t = lane % 4;
    const float decay_lo = pow_of[Pos(row_lo) + 1];
    const float decay_hi = pow_of[Pos(row_hi) + 1];
#pragma unroll
    for (int j = 0; j < kDv / 8; ++j) {
      o[4 * j] *= decay_lo;
      o[4 * j + 1] *= decay_lo;
      o[4 * j + 2] *= decay_hi;
      o[4 * j + 3] *= decay_hi;
    }
    uint32_t pf[kBlock / 16][4];
#pragma unroll
    for (int j = 0; j < kBlock / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = e < 2 ? row_lo : row_hi;
        const int col = 8 * j + 2 * t + (e & 1);
        pacc[4 * j + e] *= pow_of[kReverse ? col - i : i - col];
      }
    }
#pragma unroll
    for (int kk = 0; kk < kBlock / 16; ++kk) {
      pf[kk][0] = PackBf16(pacc[8 * kk], pacc[8 * kk + 1]);
      pf[kk][1] = PackBf16(pacc[8 * kk + 2], pacc[8 * kk + 3]);
      pf[kk][2] = PackBf16(pacc[8 * kk + 4], pacc[8 * kk + 5]);
      pf[kk][3] = PackBf16(pacc[8 * kk + 6], pacc[8 * kk + 7]);
    }
    const uint64_t v_desc = wg::Desc<Layout::kVRowBytes>(sv);
    wg::Fence();
#pragma unroll
    for (int kk = 0; kk < kBlock / 16; ++kk) {
      wg::MmaRS<kDv, 1>(o, pf[kk], wg::Advance(v_desc, kk * 16 * Layout::kVRowBytes));
    }
    wg::Commit();
  }

  // A full block's outputs into the o tile (for one bulk store), or a short block's valid
  // rows straight to global memory (row r of the box is token row0 + r).
  __device__ static void WriteOutputs(unsigned char* smem, const float (&o)[kAcc], bool full,
                                      int m, const LightningOutputView& out, int64_t row0, int h,
                                      int v_col0, int warp, int lane) {
    const int t = lane % 4;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = 16 * warp + lane / 4 + 8 * half;
      if (full) {
#pragma unroll
        for (int j = 0; j < kDv / 8; ++j) {
          *reinterpret_cast<uint32_t*>(smem + Layout::kO +
                                       wg::SwizzledOffset<Layout::kVRowBytes>(r, j) + 4 * t) =
              PackBf16(o[4 * j + 2 * half], o[4 * j + 2 * half + 1]);
        }
      } else if (Pos(r) < m) {
        __nv_bfloat16* dst =
            out.data + (row0 + r) * out.token_stride + h * out.head_stride + v_col0 + 2 * t;
#pragma unroll
        for (int j = 0; j < kDv / 8; ++j) {
          *reinterpret_cast<uint32_t*>(dst + 8 * j) =
              PackBf16(o[4 * j + 2 * half], o[4 * j + 2 * half + 1]);
        }
      }
    }
  }
};

// Per-CTA setup shared by both forms: the CTA's work, its first value column, the power
// table (pow_of[d] = lambda^d for d in [0, 64], 0 for d in [-64, 0): one read gives a causal
// weight and its mask) and where the block boxes start.
struct Sm90Setup {
  PrefillWork work;
  int v_col0;
  const float* pow_of;
  int num_blocks;

  template <bool kReverse>
  __device__ int BoxRow(int c) const {
    return static_cast<int>(kReverse ? work.begin + work.len - int64_t{kBlock} * (c + 1)
                                     : work.begin + int64_t{kBlock} * c);
  }
};

__device__ __forceinline__ Sm90Setup SetUpCta(const LightningPrefillParams& p, int num_slices,
                                              int dv, float* table, int threads) {
  const PrefillWork work = PrefillWorkOf(p, num_slices);
  for (int i = threadIdx.x; i < kTableSize; i += threads) {
    table[i] = i >= kBlock ? expf(-p.slopes[work.head] * static_cast<float>(i - kBlock)) : 0.f;
  }
  return {work, work.slice * dv, table + kBlock, (work.len + kBlock - 1) / kBlock};
}

__device__ __forceinline__ void PrefetchMaps(const Sm90Maps& maps) {
  tma::Prefetch(&maps.q);
  tma::Prefetch(&maps.k);
  tma::Prefetch(&maps.v);
  tma::Prefetch(&maps.o);
}

__device__ __forceinline__ float* StateHead(const LightningPrefillParams& p, const PrefillWork& w,
                                            int v_col0) {
  if (w.slot < 0 || p.state == nullptr) return nullptr;
  return p.state + (static_cast<int64_t>(w.slot) * p.num_heads + w.head) * kDk * kDk + v_col0;
}

// The one-warpgroup form: the CTA walks its blocks in lockstep, two CTAs per multiprocessor.
template <int kDv, bool kExactState, bool kReverse>
__global__ void __launch_bounds__(kThreads, 2)
    LightningPrefillSm90Kernel(const LightningPrefillParams p, int num_slices,
                               const __grid_constant__ Sm90Maps maps) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();  // built without sm_90a: LightningPrefillSm90Serves says no before a launch
#else
  using Tile = Sm90Layout<kDv, 1, 2, 1, 1>;
  using Math = BlockMath<kDv, kExactState, kReverse, Tile>;
  extern __shared__ unsigned char smem_raw[];
  const uint32_t base = (SmemAddr(smem_raw) + 1023) & ~1023u;
  unsigned char* smem = smem_raw + (base - SmemAddr(smem_raw));

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const bool leader = tid == 0;

  const Sm90Setup cta =
      SetUpCta(p, num_slices, kDv, reinterpret_cast<float*>(smem + Tile::kTable), kThreads);
  const int h = cta.work.head;
  const int v_col0 = cta.v_col0;
  const float* pow_of = cta.pow_of;
  const int num_blocks = cta.num_blocks;
  const uint32_t bar_kv = base + Tile::kBars;
  const uint32_t bar_q = bar_kv + 16;
  if (leader) {
    tma::BarrierInit(bar_kv, 1);
    tma::BarrierInit(bar_kv + 8, 1);
    tma::BarrierInit(bar_q, 1);
    tma::FenceBarrierInit();
    PrefetchMaps(maps);
  }
  __syncthreads();

  auto box_row = [&](int c) { return cta.BoxRow<kReverse>(c); };
  auto load_kv = [&](int c, int stage) {
    const uint32_t bar = bar_kv + 8 * stage;
    const uint32_t sk = base + Tile::kK + stage * Tile::kQkTile;
    tma::BarrierExpect(bar, Tile::kQkTile + Tile::kVTile);
    tma::Load(sk, &maps.k, 0, h, box_row(c), bar);
    tma::Load(sk + Tile::kQkHalf, &maps.k, 64, h, box_row(c), bar);
    tma::Load(base + Tile::kV + stage * Tile::kVTile, &maps.v, v_col0, h, box_row(c), bar);
  };
  auto load_q = [&](int c) {
    tma::BarrierExpect(bar_q, Tile::kQkTile);
    tma::Load(base + Tile::kQ, &maps.q, 0, h, box_row(c), bar_q);
    tma::Load(base + Tile::kQ + Tile::kQkHalf, &maps.q, 64, h, box_row(c), bar_q);
  };
  if (leader && num_blocks > 0) {
    load_kv(0, 0);
    load_q(0);
  }

  float* state_head = StateHead(p, cta.work, v_col0);
  float s[2][Tile::kAcc];
  Math::LoadState(s, p.use_initial_state ? state_head : nullptr, warp, lane);
  // Without an initial state the tile holds zeros, so the first block's Q S is zero too and
  // every block issues the same wgmma sequence (no accumulator merges across branches).
  Math::WriteStateTile(smem, Tile::kS, s, warp, lane);

  float o[Tile::kAcc];
  float pacc[32];
  int stored_row = -1;  // box row of a full output block waiting in the o tile, or -1

  for (int c = 0; c < num_blocks; ++c) {
    const int stage = c & 1;
    const uint32_t b0 = wg::Opaque(base);
    const uint32_t sk = b0 + Tile::kK + stage * Tile::kQkTile;
    const uint32_t sv = b0 + Tile::kV + stage * Tile::kVTile;
    const int m = min(kBlock, cta.work.len - c * kBlock);

    tma::BarrierWait(bar_kv + 8 * stage, (c >> 1) & 1);
    if (m < kBlock) Math::ZeroKeyRows(smem, sk - b0, m, tid);
    Math::DecayValues(smem, sv - b0, Tile::kVd, m, tid, pow_of);
    wg::FenceProxyAsync();
    __syncthreads();
    // Every thread is past the previous block's last wgmma wait (the other stage is free) and
    // has written its share of the previous output block.
    if (leader) {
      if (c + 1 < num_blocks) load_kv(c + 1, stage ^ 1);
      if (stored_row >= 0) {
        tma::Store(&maps.o, v_col0, h, stored_row, b0 + Tile::kO);
        tma::StoreCommit();
      }
    }
    tma::BarrierWait(bar_q, c & 1);

    // Group 1: Q S and Q K^T; group 2: the state update beside it.
    const uint64_t k_desc = wg::Desc<kQkRowBytes>(sk);
    Math::DecayState(s, m, pow_of);
    Math::QueryProducts(o, pacc, b0 + Tile::kQ, k_desc, b0 + Tile::kS);
    Math::UpdateState(s, b0 + Tile::kVd, k_desc);
    wg::Wait<1>();
    wg::Pin(o);
    wg::Pin(pacc);
    // The output tile is read out before anyone writes this block's outputs into it.
    if (leader && stored_row >= 0) tma::StoreWait<true>();
    // Every warp's Q S and Q K^T are done: the q tile takes the next block.
    __syncthreads();
    if (leader && c + 1 < num_blocks) load_q(c + 1);

    // Group 3: O += P V.
    Math::CausalValues(o, pacc, sv, warp, lane, pow_of);
    wg::Wait<0>();
    wg::Pin(o);
    wg::Pin(s[0]);
    wg::Pin(s[1]);

    // A full block goes out through the o tile (the store is issued past the next barrier);
    // a short one, row by row.
    Math::WriteOutputs(smem, o, m == kBlock, m, p.o, box_row(c), h, v_col0, warp, lane);
    stored_row = m == kBlock ? box_row(c) : -1;
    // The next block's Q S reads the new state; this block's Q S finished before the
    // barrier above.
    if (c + 1 < num_blocks) Math::WriteStateTile(smem, Tile::kS, s, warp, lane);
  }
  if (stored_row >= 0) {
    wg::FenceProxyAsync();
    __syncthreads();
    if (leader) {
      tma::Store(&maps.o, v_col0, h, stored_row, base + Tile::kO);
      tma::StoreCommit();
    }
  }
  if (leader) tma::StoreWait<false>();
  if (p.store_final_state && state_head != nullptr) Math::StoreState(s, state_head, warp, lane);
#endif
}

// The warp-specialised form, for batches that leave multiprocessors without a second CTA
// (one long sequence): one CTA per (sequence, head, value slice) with four roles that run
// side by side over its blocks, one CTA per multiprocessor.
//  - A producer warp issues the TMA loads up to kWsStages blocks ahead.
//  - The value warpgroup forms w . V (hi + lo) into one of two tile pairs, and zeroes a
//    short block's rows past the sequence.
//  - The state warpgroup updates the FP32 state from them and writes the block's bf16 state
//    tile into one of two buffers.
//  - The output warpgroup computes Q S from the state tile of the block before, Q K^T and
//    P V, and stores the outputs.
// The state update of block c thus overlaps the output work of block c (which needs only
// the state before c) and the decayed values of block c + 1. Mbarriers carry every
// hand-off: full and empty per k/v stage and q buffer, ready and free per Vd pair and per
// state tile, and one for a short block's zeroed rows.
template <int kDv>
using WsLayout = Sm90Layout<kDv, 2, kWsStages, 2, 2>;

template <int kDv, bool kExactState, bool kReverse>
__global__ void __launch_bounds__(kWsThreads, 1)
    LightningPrefillSm90WsKernel(const LightningPrefillParams p, int num_slices,
                                 const __grid_constant__ Sm90Maps maps) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();
#else
  constexpr int kStages = kWsStages;
  using Tile = WsLayout<kDv>;
  using Math = BlockMath<kDv, kExactState, kReverse, Tile>;
  extern __shared__ unsigned char smem_raw[];
  const uint32_t base = (SmemAddr(smem_raw) + 1023) & ~1023u;
  unsigned char* smem = smem_raw + (base - SmemAddr(smem_raw));

  const int tid = threadIdx.x;
  const int lt = tid % 128;  // thread within its warpgroup
  const int warp = lt / 32;  // warp within its warpgroup
  const int lane = tid % 32;

  const Sm90Setup cta =
      SetUpCta(p, num_slices, kDv, reinterpret_cast<float*>(smem + Tile::kTable), kWsThreads);
  const int h = cta.work.head;
  const float* pow_of = cta.pow_of;
  const int num_blocks = cta.num_blocks;
  const int v_col0 = cta.v_col0;
  const uint32_t bars = base + Tile::kBars;
  auto kv_full = [&](int st) { return bars + 8 * st; };
  auto kv_empty = [&](int st) { return bars + 8 * (kStages + st); };
  auto q_full = [&](int b) { return bars + 8 * (2 * kStages + b); };
  auto q_empty = [&](int b) { return bars + 8 * (2 * kStages + 2 + b); };
  auto s_ready = [&](int b) { return bars + 8 * (2 * kStages + 4 + b); };
  auto s_free = [&](int b) { return bars + 8 * (2 * kStages + 6 + b); };
  auto vd_ready = [&](int b) { return bars + 8 * (2 * kStages + 8 + b); };
  auto vd_free = [&](int b) { return bars + 8 * (2 * kStages + 10 + b); };
  const uint32_t short_ready = bars + 8 * (2 * kStages + 12);
  static_assert(8 * (2 * kStages + 13) <= 256, "the barriers fit their room");
  if (tid == 0) {
    for (int st = 0; st < kStages; ++st) {
      tma::BarrierInit(kv_full(st), 1);
      tma::BarrierInit(kv_empty(st), 256);
    }
    for (int b = 0; b < 2; ++b) {
      tma::BarrierInit(q_full(b), 1);
      tma::BarrierInit(q_empty(b), 128);
      tma::BarrierInit(s_ready(b), 128);
      tma::BarrierInit(s_free(b), 128);
      tma::BarrierInit(vd_ready(b), 128);
      tma::BarrierInit(vd_free(b), 128);
    }
    tma::BarrierInit(short_ready, 128);
    tma::FenceBarrierInit();
  }
  __syncthreads();
  auto box_row = [&](int c) { return cta.BoxRow<kReverse>(c); };
  auto block_tokens = [&](int c) { return min(kBlock, cta.work.len - c * kBlock); };
  auto vd_tiles = [&](int c) { return Tile::kVd + (c & 1) * 2 * Tile::kVTile; };

  if (tid >= 384) {
    // Producer.
    if (tid == 384) {
      PrefetchMaps(maps);
      for (int c = 0; c < num_blocks; ++c) {
        const int st = c % kStages;
        if (c >= kStages) tma::BarrierWait(kv_empty(st), ((c / kStages) - 1) & 1);
        const uint32_t sk = base + Tile::kK + st * Tile::kQkTile;
        tma::BarrierExpect(kv_full(st), Tile::kQkTile + Tile::kVTile);
        tma::Load(sk, &maps.k, 0, h, box_row(c), kv_full(st));
        tma::Load(sk + Tile::kQkHalf, &maps.k, 64, h, box_row(c), kv_full(st));
        tma::Load(base + Tile::kV + st * Tile::kVTile, &maps.v, v_col0, h, box_row(c),
                  kv_full(st));
        const int qb = c & 1;
        if (c >= 2) tma::BarrierWait(q_empty(qb), ((c >> 1) - 1) & 1);
        const uint32_t sq = base + Tile::kQ + qb * Tile::kQkTile;
        tma::BarrierExpect(q_full(qb), Tile::kQkTile);
        tma::Load(sq, &maps.q, 0, h, box_row(c), q_full(qb));
        tma::Load(sq + Tile::kQkHalf, &maps.q, 64, h, box_row(c), q_full(qb));
      }
    }
    return;
  }

  if (tid >= 256) {
    // Value warpgroup: its reads of a stage happen before the state warpgroup's release of
    // it (vd_ready precedes that), so it does not count on kv_empty.
    for (int c = 0; c < num_blocks; ++c) {
      const int st = c % kStages;
      const int m = block_tokens(c);
      tma::BarrierWait(kv_full(st), (c / kStages) & 1);
      if (c >= 2) tma::BarrierWait(vd_free(c & 1), ((c >> 1) - 1) & 1);
      if (m < kBlock) Math::ZeroKeyRows(smem, Tile::kK + st * Tile::kQkTile, m, lt);
      Math::DecayValues(smem, Tile::kV + st * Tile::kVTile, vd_tiles(c), m, lt, pow_of);
      wg::FenceProxyAsync();
      tma::BarrierArrive(vd_ready(c & 1));
      if (m < kBlock) tma::BarrierArrive(short_ready);
    }
    return;
  }

  if (tid >= 128) {
    // State warpgroup. The state before block c sits in tile buffer (c - 1) & 1.
    float* state_head = StateHead(p, cta.work, v_col0);
    float s[2][Tile::kAcc];
    Math::LoadState(s, p.use_initial_state ? state_head : nullptr, warp, lane);
    Math::WriteStateTile(smem, Tile::kS + Tile::kStateTile, s, warp, lane);
    wg::FenceProxyAsync();
    tma::BarrierArrive(s_ready(1));
    for (int c = 0; c < num_blocks; ++c) {
      const int st = c % kStages;
      const uint32_t b0 = wg::Opaque(base);
      tma::BarrierWait(kv_full(st), (c / kStages) & 1);
      Math::DecayState(s, block_tokens(c), pow_of);
      tma::BarrierWait(vd_ready(c & 1), (c >> 1) & 1);
      Math::UpdateState(s, b0 + vd_tiles(c), wg::Desc<kQkRowBytes>(b0 + Tile::kK + st * Tile::kQkTile));
      wg::Wait<0>();
      wg::Pin(s[0]);
      wg::Pin(s[1]);
      tma::BarrierArrive(vd_free(c & 1));
      tma::BarrierArrive(kv_empty(st));
      if (c + 1 < num_blocks) {
        // Buffer c & 1 last held the state before block c - 1, read by that block's Q S.
        if (c >= 1) tma::BarrierWait(s_free(c & 1), ((c - 1) >> 1) & 1);
        Math::WriteStateTile(smem, Tile::kS + (c & 1) * Tile::kStateTile, s, warp, lane);
        wg::FenceProxyAsync();
        tma::BarrierArrive(s_ready(c & 1));
      }
    }
    if (p.store_final_state && state_head != nullptr) Math::StoreState(s, state_head, warp, lane);
    return;
  }

  // Output warpgroup.
  float o[Tile::kAcc];
  float pacc[32];
  for (int c = 0; c < num_blocks; ++c) {
    const int st = c % kStages;
    const int qb = c & 1;
    const int sb = (c - 1) & 1;
    const uint32_t b0 = wg::Opaque(base);
    const uint32_t sk = b0 + Tile::kK + st * Tile::kQkTile;
    const int m = block_tokens(c);
    tma::BarrierWait(kv_full(st), (c / kStages) & 1);
    tma::BarrierWait(q_full(qb), (c >> 1) & 1);
    if (m < kBlock) tma::BarrierWait(short_ready, 0);
    tma::BarrierWait(s_ready(sb), (c >> 1) & 1);
    Math::QueryProducts(o, pacc, b0 + Tile::kQ + qb * Tile::kQkTile, wg::Desc<kQkRowBytes>(sk),
                        b0 + Tile::kS + sb * Tile::kStateTile);
    wg::Wait<0>();
    wg::Pin(o);
    wg::Pin(pacc);
    tma::BarrierArrive(s_free(sb));
    tma::BarrierArrive(q_empty(qb));
    Math::CausalValues(o, pacc, b0 + Tile::kV + st * Tile::kVTile, warp, lane, pow_of);
    wg::Wait<0>();
    wg::Pin(o);
    tma::BarrierArrive(kv_empty(st));
    const bool full = m == kBlock;
    if (full) {
      // The o tile is free once the previous bulk store has read it.
      if (tid == 0) tma::StoreWait<true>();
      tma::NamedBarrier(2, 128);
    }
    Math::WriteOutputs(smem, o, full, m, p.o, box_row(c), h, v_col0, warp, lane);
    if (full) {
      wg::FenceProxyAsync();
      tma::NamedBarrier(2, 128);
      if (tid == 0) {
        tma::Store(&maps.o, v_col0, h, box_row(c), b0 + Tile::kO);
        tma::StoreCommit();
      }
    }
  }
  if (tid == 0) tma::StoreWait<false>();
#endif
}

template <int kDv, bool kExactState, bool kReverse>
cudaError_t Launch(const LightningPrefillParams& p, bool warp_specialized, const Sm90Maps& maps,
                   cudaStream_t stream) {
  if (warp_specialized) {
    return LaunchPrefillGrid(LightningPrefillSm90WsKernel<kDv, kExactState, kReverse>,
                             kWsThreads, WsLayout<kDv>::kSmemBytes, p, kDk / kDv,
                             stream, maps);
  }
  return LaunchPrefillGrid(LightningPrefillSm90Kernel<kDv, kExactState, kReverse>, kThreads,
                           Sm90Layout<kDv, 1, 2, 1, 1>::kSmemBytes, p, kDk / kDv, stream, maps);
}

template <int kDv, bool kExactState>
cudaError_t LaunchForDirection(const LightningPrefillParams& p, bool warp_specialized,
                               const Sm90Maps& maps, cudaStream_t stream) {
  return p.reverse ? Launch<kDv, kExactState, true>(p, warp_specialized, maps, stream)
                   : Launch<kDv, kExactState, false>(p, warp_specialized, maps, stream);
}

template <int kDv>
cudaError_t LaunchForDv(const LightningPrefillParams& p, bool warp_specialized,
                        cudaStream_t stream) {
  Sm90Maps maps;
  const int64_t rows = p.num_tokens;
  if (tma::EncodeView(&maps.q, p.q.data, p.q.token_stride, p.q.head_stride, rows, p.num_heads,
                      kDk, kBlock, 64) != cudaSuccess ||
      tma::EncodeView(&maps.k, p.k.data, p.k.token_stride, p.k.head_stride, rows, p.num_heads,
                      kDk, kBlock, 64) != cudaSuccess ||
      tma::EncodeView(&maps.v, p.v.data, p.v.token_stride, p.v.head_stride, rows, p.num_heads,
                      kDk, kBlock, kDv) != cudaSuccess ||
      tma::EncodeView(&maps.o, p.o.data, p.o.token_stride, p.o.head_stride, rows, p.num_heads,
                      kDk, kBlock, kDv) != cudaSuccess) {
    return cudaErrorNotSupported;
  }
  // The state needs FP32 accuracy only where it is stored.
  const bool exact = p.exact_state && p.store_final_state;
  return exact ? LaunchForDirection<kDv, true>(p, warp_specialized, maps, stream)
               : LaunchForDirection<kDv, false>(p, warp_specialized, maps, stream);
}

}  // namespace

bool LightningPrefillSm90Serves(const LightningPrefillParams& params, int block_size) {
  if (params.head_dim != kDk || block_size != kBlock) return false;
  if (params.num_tokens <= 0 || params.num_tokens > INT_MAX) return false;
  int device = 0;
  int major = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
    return false;
  }
  if (major != 9) return false;
  // The kernels carry sm_90a code only when the build targets it, and TMA needs the
  // driver's tensor-map encoder: asked once.
  static const bool usable = [] {
    cudaFuncAttributes attr{};
    return cudaFuncGetAttributes(&attr, LightningPrefillSm90Kernel<64, true, false>) ==
               cudaSuccess &&
           attr.binaryVersion == 90 && tma::Available();
  }();
  return usable;
}

cudaError_t LaunchLightningPrefillSm90(const LightningPrefillParams& p, int num_sms,
                                       cudaStream_t stream) {
  // The one-warpgroup form runs two CTAs per multiprocessor in lockstep phases; the
  // warp-specialised form runs one with its phases overlapped, about 1.8x as fast per CTA.
  // The latter takes batches whose 64-column slices fit in one wave at one CTA per
  // multiprocessor (one long sequence), with 32-column slices when even those fit; the
  // former takes the rest in 64-column slices (one wave at two per multiprocessor, or more).
  const int64_t ctas64 = int64_t{p.num_seqs} * p.num_heads * 2;
  const bool warp_specialized =
      p.warp_specialized == 2 || (p.warp_specialized == 0 && ctas64 <= num_sms);
  int dv = p.dv_split;
  if (dv == 0) {
    dv = warp_specialized ? (2 * ctas64 <= num_sms ? 32 : 64) : (ctas64 > num_sms ? 64 : 32);
  }
  return dv == 32 ? LaunchForDv<32>(p, warp_specialized, stream)
                  : LaunchForDv<64>(p, warp_specialized, stream);
}

}  // namespace lightrl
