#include "inference_engine/cuda/lightning_prefill_sm90.h"

#include <cudaTypedefs.h>

#include <climits>

#include "inference_engine/cuda/lightning_mma.cuh"
#include "inference_engine/cuda/lightning_prefill_work.cuh"
#include "inference_engine/cuda/lightning_tma.cuh"
#include "inference_engine/cuda/lightning_wgmma.cuh"

// One CTA is one warpgroup (4 warps) and owns one (sequence, head, slice of kDv value
// columns); it walks the sequence in blocks of 64 tokens with the FP32 state slice
// [128 x kDv] in wgmma accumulators. Per block of m <= 64 tokens, S the state before it:
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
constexpr int kDk = 128;
constexpr int kBlock = 64;
constexpr int kQkRowBytes = 128;  // q and k rows are stored as two 64-column halves
constexpr int kTableSize = 2 * kBlock + 1;  // lambda^d for d = -64..64, zero below 0

// The views' tensor maps: q and k in 64 x 64 boxes, v and o in 64 x kDv boxes.
struct Sm90Maps {
  CUtensorMap q, k, v, o;
};

template <int kDv>
struct Sm90Tile {
  static_assert(kDv == 64 || kDv == 32, "value slices of 64 or 32 columns");
  static constexpr int kVRowBytes = kDv * 2;
  static constexpr uint32_t kQkHalf = kBlock * kQkRowBytes;  // 8 KB: one 64-column half
  static constexpr uint32_t kQkTile = 2 * kQkHalf;
  static constexpr uint32_t kVTile = kBlock * kVRowBytes;
  static constexpr uint32_t kStateTile = kDk * kVRowBytes;
  static constexpr uint32_t kQ = 0;
  static constexpr uint32_t kK = kQ + kQkTile;            // two stages
  static constexpr uint32_t kV = kK + 2 * kQkTile;        // two stages
  static constexpr uint32_t kVdHi = kV + 2 * kVTile;
  static constexpr uint32_t kVdLo = kVdHi + kVTile;
  static constexpr uint32_t kS = kVdLo + kVTile;
  static constexpr uint32_t kO = kS + kStateTile;         // an output block on its way out
  static constexpr uint32_t kBars = kO + kVTile;          // k/v stages 0 and 1, then q
  static constexpr uint32_t kTable = kBars + 32;
  static constexpr size_t kSmemBytes = kTable + kTableSize * 4 + 1024;  // + base alignment
  static constexpr int kVChunks = kDv / 8;                // 16-byte chunks per value row
  static constexpr int kVRowsPerThread = kBlock * kVChunks / kThreads;
  static constexpr int kAcc = kDv / 2;                    // accumulator registers per m64
};

template <int kDv, bool kExactState, bool kReverse>
__global__ void __launch_bounds__(kThreads, 2)
    LightningPrefillSm90Kernel(const LightningPrefillParams p, int num_slices,
                               const __grid_constant__ Sm90Maps maps) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();  // built without sm_90a: LightningPrefillSm90Serves says no before a launch
#else
  using Tile = Sm90Tile<kDv>;
  extern __shared__ unsigned char smem_raw[];
  const uint32_t base = (SmemAddr(smem_raw) + 1023) & ~1023u;
  unsigned char* smem = smem_raw + (base - SmemAddr(smem_raw));

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const bool leader = tid == 0;

  const PrefillWork work = PrefillWorkOf(p, num_slices);
  const int slice = work.slice;
  const int h = work.head;
  const int64_t begin = work.begin;
  const int len = work.len;
  const int num_blocks = (len + kBlock - 1) / kBlock;
  const int slot = work.slot;
  const int v_col0 = slice * kDv;
  // pow_of[d] = lambda^d for d in [0, 64] and 0 for d in [-64, 0): one table read gives a
  // causal weight and its mask (a table rather than registers: the block loop keeps every
  // register it can for accumulators).
  float* table = reinterpret_cast<float*>(smem + Tile::kTable);
  for (int i = tid; i < kTableSize; i += kThreads) {
    table[i] = i >= kBlock ? expf(-p.slopes[h] * static_cast<float>(i - kBlock)) : 0.f;
  }
  const float* pow_of = table + kBlock;
  const uint32_t bar_kv = base + Tile::kBars;
  const uint32_t bar_q = bar_kv + 16;
  if (leader) {
    tma::BarrierInit(bar_kv, 1);
    tma::BarrierInit(bar_kv + 8, 1);
    tma::BarrierInit(bar_q, 1);
    tma::FenceBarrierInit();
    tma::Prefetch(&maps.q);
    tma::Prefetch(&maps.k);
    tma::Prefetch(&maps.v);
    tma::Prefetch(&maps.o);
  }
  __syncthreads();

  // The first token of block c's box, and the block position of box row r.
  auto box_row = [&](int c) {
    return static_cast<int>(kReverse ? begin + len - int64_t{kBlock} * (c + 1)
                                     : begin + int64_t{kBlock} * c);
  };
  auto pos = [](int r) { return kReverse ? kBlock - 1 - r : r; };
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

  float* state_head = nullptr;
  if (slot >= 0 && p.state != nullptr) {
    state_head = p.state + (static_cast<int64_t>(slot) * p.num_heads + h) * kDk * kDk + v_col0;
  }
  const bool load_state = p.use_initial_state && state_head != nullptr;

  // The state slice: s[half][...] holds rows 64 half + (accumulator rows), kDv columns.
  float s[2][Tile::kAcc];
  auto state_row = [&](int half, int e) { return 64 * half + 16 * warp + g + (e >= 2 ? 8 : 0); };
  auto state_col = [&](int j, int e) { return 8 * j + 2 * t + (e & 1); };
  // f(half, j, e) for each pair of adjacent columns (registers 4j + e, 4j + e + 1) of the
  // thread's share of the state.
  auto for_each_state_pair = [&](auto&& f) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
#pragma unroll
      for (int j = 0; j < kDv / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; e += 2) f(half, j, e);
      }
    }
  };
  for_each_state_pair([&](int half, int j, int e) {
    float2 x = make_float2(0.f, 0.f);
    if (load_state) {
      x = *reinterpret_cast<const float2*>(state_head + state_row(half, e) * kDk + state_col(j, e));
    }
    s[half][4 * j + e] = x.x;
    s[half][4 * j + e + 1] = x.y;
  });
  auto write_state_tile = [&] {
    for_each_state_pair([&](int half, int j, int e) {
      *reinterpret_cast<uint32_t*>(smem + Tile::kS +
                                   wg::SwizzledOffset<Tile::kVRowBytes>(state_row(half, e), j) +
                                   4 * t) = PackBf16(s[half][4 * j + e], s[half][4 * j + e + 1]);
    });
  };
  // Without an initial state the tile holds zeros, so the first block's Q S is zero too and
  // every block issues the same wgmma sequence (no accumulator merges across branches).
  write_state_tile();

  const int row_lo = 16 * warp + g;  // this thread's two rows of a 64-row result
  const int row_hi = row_lo + 8;
  // Value rows: thread copies chunk tid % kVChunks of rows tid / kVChunks + kVRowStep i.
  const int v_chunk = tid % Tile::kVChunks;
  const int v_row = tid / Tile::kVChunks;
  constexpr int kVRowStep = kThreads / Tile::kVChunks;
  float o[Tile::kAcc];
  float pacc[32];
  int stored_row = -1;  // box row of a full output block waiting in the o tile, or -1

  for (int c = 0; c < num_blocks; ++c) {
    const int stage = c & 1;
    const uint32_t b0 = wg::Opaque(base);
    const uint32_t sk = b0 + Tile::kK + stage * Tile::kQkTile;
    const uint32_t sv = b0 + Tile::kV + stage * Tile::kVTile;
    const int m = min(kBlock, len - c * kBlock);

    tma::BarrierWait(bar_kv + 8 * stage, (c >> 1) & 1);
    if (m < kBlock) {
      // A short block: rows past the sequence hold other tokens (or zeros); zero their keys so
      // that only exact zeros meet them in the products.
      const int chunk = tid % 16;
#pragma unroll
      for (int i = 0; i < kBlock / 8; ++i) {
        const int r = tid / 16 + 8 * i;
        if (pos(r) >= m) {
          *reinterpret_cast<uint4*>(smem + (sk - base) + (chunk / 8) * Tile::kQkHalf +
                                    wg::SwizzledOffset<kQkRowBytes>(r, chunk % 8)) =
              make_uint4(0, 0, 0, 0);
        }
      }
    }
    // The decayed values w . V from this thread's own chunks (rows past the sequence: zero,
    // in the value tile too).
#pragma unroll
    for (int i = 0; i < Tile::kVRowsPerThread; ++i) {
      const int r = v_row + kVRowStep * i;
      const uint32_t off = wg::SwizzledOffset<Tile::kVRowBytes>(r, v_chunk);
      uint4* src = reinterpret_cast<uint4*>(smem + (sv - base) + off);
      uint4 x = *src;
      const float w = pow_of[m - 1 - pos(r)];
      if (pos(r) >= m) {
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
      *reinterpret_cast<uint4*>(smem + Tile::kVdHi + off) = hi;
      if (kExactState) *reinterpret_cast<uint4*>(smem + Tile::kVdLo + off) = lo;
    }
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

    const float decay_m = pow_of[m];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
#pragma unroll
      for (int i = 0; i < Tile::kAcc; ++i) s[half][i] *= decay_m;
    }
    wg::Fence();
    // Group 1: O = Q S and P = Q K^T, over the 128 key dimensions in steps of 16.
    const uint32_t sq = b0 + Tile::kQ;
    const uint64_t q_desc = wg::Desc<kQkRowBytes>(sq);
    const uint64_t k_desc = wg::Desc<kQkRowBytes>(sk);
    const uint64_t s_desc = wg::Desc<Tile::kVRowBytes>(b0 + Tile::kS);
    // k-step ks of a q or k operand: half ks / 4, 32 bytes per 16 columns within it.
    auto qk_step = [](int ks) { return (ks / 4) * Tile::kQkHalf + (ks % 4) * 32; };
#pragma unroll
    for (int ks = 0; ks < kDk / 16; ++ks) {
      wg::MmaSS<kDv, 0, 1>(o, wg::Advance(q_desc, qk_step(ks)),
                           wg::Advance(s_desc, ks * 16 * Tile::kVRowBytes), ks > 0);
    }
#pragma unroll
    for (int ks = 0; ks < kDk / 16; ++ks) {
      wg::MmaSS<64, 0, 0>(pacc, wg::Advance(q_desc, qk_step(ks)), wg::Advance(k_desc, qk_step(ks)),
                          ks > 0);
    }
    wg::Commit();
    // Group 2: S += K^T (w . V), K^T as the transposed (MN-major) k tile, 64 rows a half.
    const uint64_t vd_desc = wg::Desc<Tile::kVRowBytes>(b0 + Tile::kVdHi);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
#pragma unroll
      for (int ks = 0; ks < kBlock / 16; ++ks) {
        const uint64_t a = wg::Advance(k_desc, half * Tile::kQkHalf + ks * 16 * kQkRowBytes);
        const uint32_t rows = ks * 16 * Tile::kVRowBytes;
        wg::MmaSS<kDv, 1, 1>(s[half], a, wg::Advance(vd_desc, rows), true);
        if (kExactState) {
          wg::MmaSS<kDv, 1, 1>(s[half], a, wg::Advance(vd_desc, Tile::kVTile + rows), true);
        }
      }
    }
    wg::Commit();
    wg::Wait<1>();
    wg::Pin(o);
    wg::Pin(pacc);
    // The output tile is read out before anyone writes this block's outputs into it.
    if (leader && stored_row >= 0) tma::StoreWait<true>();
    // Every warp's Q S and Q K^T are done: the q tile takes the next block.
    __syncthreads();
    if (leader && c + 1 < num_blocks) load_q(c + 1);

    // Inter-block rows carry lambda^(pos(i)+1); intra-block weights lambda^(pos(i)-pos(j)),
    // zero where that power is negative.
    const float decay_lo = pow_of[pos(row_lo) + 1];
    const float decay_hi = pow_of[pos(row_hi) + 1];
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
    const uint64_t v_desc = wg::Desc<Tile::kVRowBytes>(sv);
    wg::Fence();
    // Group 3: O += P V.
#pragma unroll
    for (int kk = 0; kk < kBlock / 16; ++kk) {
      wg::MmaRS<kDv, 1>(o, pf[kk], wg::Advance(v_desc, kk * 16 * Tile::kVRowBytes));
    }
    wg::Commit();
    wg::Wait<0>();
    wg::Pin(o);
    wg::Pin(s[0]);
    wg::Pin(s[1]);

    // A full block goes out through the o tile (the store is issued past the next barrier);
    // a short one, row by row.
    stored_row = m == kBlock ? box_row(c) : -1;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = half == 0 ? row_lo : row_hi;
      if (m == kBlock) {
#pragma unroll
        for (int j = 0; j < kDv / 8; ++j) {
          *reinterpret_cast<uint32_t*>(smem + Tile::kO +
                                       wg::SwizzledOffset<Tile::kVRowBytes>(r, j) + 4 * t) =
              PackBf16(o[4 * j + 2 * half], o[4 * j + 2 * half + 1]);
        }
      } else if (pos(r) < m) {
        __nv_bfloat16* out = p.o.data + (box_row(c) + int64_t{r}) * p.o.token_stride +
                             h * p.o.head_stride + v_col0 + 2 * t;
#pragma unroll
        for (int j = 0; j < kDv / 8; ++j) {
          *reinterpret_cast<uint32_t*>(out + 8 * j) =
              PackBf16(o[4 * j + 2 * half], o[4 * j + 2 * half + 1]);
        }
      }
    }
    // The next block's Q S reads the new state; this block's Q S finished before the
    // barrier above.
    if (c + 1 < num_blocks) write_state_tile();
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

  if (p.store_final_state && state_head != nullptr) {
    for_each_state_pair([&](int half, int j, int e) {
      *reinterpret_cast<float2*>(state_head + state_row(half, e) * kDk + state_col(j, e)) =
          make_float2(s[half][4 * j + e], s[half][4 * j + e + 1]);
    });
  }
#endif
}

template <int kDv, bool kExactState, bool kReverse>
cudaError_t Launch(const LightningPrefillParams& p, const Sm90Maps& maps, cudaStream_t stream) {
  return LaunchPrefillGrid(LightningPrefillSm90Kernel<kDv, kExactState, kReverse>, kThreads,
                           Sm90Tile<kDv>::kSmemBytes, p, kDk / kDv, stream, maps);
}

template <int kDv, bool kExactState>
cudaError_t LaunchForDirection(const LightningPrefillParams& p, const Sm90Maps& maps,
                               cudaStream_t stream) {
  return p.reverse ? Launch<kDv, kExactState, true>(p, maps, stream)
                   : Launch<kDv, kExactState, false>(p, maps, stream);
}

template <int kDv>
cudaError_t LaunchForDv(const LightningPrefillParams& p, cudaStream_t stream) {
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
  return exact ? LaunchForDirection<kDv, true>(p, maps, stream)
               : LaunchForDirection<kDv, false>(p, maps, stream);
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

cudaError_t LaunchLightningPrefillSm90(const LightningPrefillParams& p, int dv,
                                       cudaStream_t stream) {
  return dv == 32 ? LaunchForDv<32>(p, stream) : LaunchForDv<64>(p, stream);
}

}  // namespace lightrl
