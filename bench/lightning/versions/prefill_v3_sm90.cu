#include "kernels/lightning/lightning_prefill_sm90.h"

#include "kernels/lightning/lightning_mma.cuh"
#include "kernels/lightning/lightning_prefill_work.cuh"
#include "kernels/lightning/lightning_wgmma.cuh"

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
// K and V are double-buffered with cp.async one block ahead; Q is single-buffered and the
// next block's Q streams in as soon as this block's Q S and Q K^T are done.

namespace lightrl {
namespace {

namespace wg = lightning_wgmma;
using lightning_mma::CpAsync16;
using lightning_mma::CpAsyncCommit;
using lightning_mma::CpAsyncWait;
using lightning_mma::PackBf16;
using lightning_mma::SmemAddr;

constexpr int kThreads = 128;
constexpr int kDk = 128;
constexpr int kBlock = 64;
constexpr int kQkRowBytes = 128;  // q and k rows are stored as two 64-column halves

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
  static constexpr uint32_t kBytes = kS + kStateTile;
  static constexpr uint32_t kPow = kBytes;                // lambda^n, n = 0..64, FP32
  static constexpr size_t kSmemBytes = kPow + (kBlock + 1) * 4 + 1024;  // + base alignment
  static constexpr int kVChunks = kDv / 8;                // 16-byte chunks per value row
  static constexpr int kVRowsPerThread = kBlock * kVChunks / kThreads;
  static constexpr int kAcc = kDv / 2;                    // accumulator registers per m64
};


template <int kDv, bool kExactState>
__global__ void __launch_bounds__(kThreads, 2)
    LightningPrefillSm90Kernel(const LightningPrefillParams p, int num_slices) {
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

  const PrefillWork work = PrefillWorkOf(p, num_slices);
  const int slice = work.slice;
  const int h = work.head;
  const int64_t begin = work.begin;
  const int len = work.len;
  const int num_blocks = (len + kBlock - 1) / kBlock;
  const int slot = work.slot;
  const int v_col0 = slice * kDv;
  const bool reverse = p.reverse;
  // lambda^n for n = 0..64, read where the kernel needs a power (a table rather than
  // registers: the block loop keeps every register it can for accumulators).
  const float* pow_table = reinterpret_cast<const float*>(smem + Tile::kPow);
  if (tid <= kBlock) {
    reinterpret_cast<float*>(smem + Tile::kPow)[tid] = expf(-p.slopes[h] * static_cast<float>(tid));
  }
  __syncthreads();

  auto token = [&](int c, int r) -> int64_t {
    return reverse ? begin + len - 1 - (int64_t{c} * kBlock + r) : begin + int64_t{c} * kBlock + r;
  };
  // q and k: thread copies 16-byte column chunk tid % 16 of rows tid / 16 + 8i.
  const int qk_chunk = tid % 16;
  const int qk_row = tid / 16;
  const uint32_t qk_dst_col = (qk_chunk / 8) * Tile::kQkHalf;
  const __nv_bfloat16* q_src = p.q.data + h * p.q.head_stride + qk_chunk * 8;
  const __nv_bfloat16* k_src = p.k.data + h * p.k.head_stride + qk_chunk * 8;
  auto load_qk = [&](const __nv_bfloat16* src, int64_t stride, uint32_t dst, int c) {
    const int rows = min(kBlock, len - c * kBlock);
#pragma unroll
    for (int i = 0; i < kBlock / 8; ++i) {
      const int r = qk_row + 8 * i;
      const bool valid = r < rows;
      const int64_t tok = valid ? token(c, r) : 0;
      CpAsync16(dst + qk_dst_col + wg::SwizzledOffset<kQkRowBytes>(r, qk_chunk % 8),
                src + tok * stride, valid);
    }
  };
  // v: thread copies chunk tid % kVChunks of rows tid / kVChunks + (128 / kVChunks) i; it
  // also turns its own chunks into the decayed tiles, so no barrier sits in between.
  const int v_chunk = tid % Tile::kVChunks;
  const int v_row = tid / Tile::kVChunks;
  constexpr int kVRowStep = kThreads / Tile::kVChunks;
  const __nv_bfloat16* v_src = p.v.data + h * p.v.head_stride + v_col0 + v_chunk * 8;
  auto load_v = [&](uint32_t dst, int c) {
    const int rows = min(kBlock, len - c * kBlock);
#pragma unroll
    for (int i = 0; i < Tile::kVRowsPerThread; ++i) {
      const int r = v_row + kVRowStep * i;
      const bool valid = r < rows;
      const int64_t tok = valid ? token(c, r) : 0;
      CpAsync16(dst + wg::SwizzledOffset<Tile::kVRowBytes>(r, v_chunk), v_src + tok * p.v.token_stride,
                valid);
    }
  };

  if (num_blocks > 0) {
    load_qk(k_src, p.k.token_stride, base + Tile::kK, 0);
    load_v(base + Tile::kV, 0);
    load_qk(q_src, p.q.token_stride, base + Tile::kQ, 0);
  }
  CpAsyncCommit();

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
  float o[Tile::kAcc];
  float pacc[32];

  for (int c = 0; c < num_blocks; ++c) {
    const int stage = c & 1;
    const uint32_t b0 = wg::Opaque(base);
    const uint32_t sk = b0 + Tile::kK + stage * Tile::kQkTile;
    const uint32_t sv = b0 + Tile::kV + stage * Tile::kVTile;
    const int m = min(kBlock, len - c * kBlock);

    // This block's q, k, v are in. The decayed values w . V from this thread's own chunks.
    CpAsyncWait<0>();
#pragma unroll
    for (int i = 0; i < Tile::kVRowsPerThread; ++i) {
      const int r = v_row + kVRowStep * i;
      const uint32_t off = wg::SwizzledOffset<Tile::kVRowBytes>(r, v_chunk);
      const uint4 x = *reinterpret_cast<const uint4*>(smem + (sv - base) + off);
      const float w = r < m ? pow_table[m - 1 - r] : 0.f;
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
    // Every thread is past the previous block's last wgmma wait: the other stage is free.
    if (c + 1 < num_blocks) {
      load_qk(k_src, p.k.token_stride, base + Tile::kK + (stage ^ 1) * Tile::kQkTile, c + 1);
      load_v(base + Tile::kV + (stage ^ 1) * Tile::kVTile, c + 1);
    }
    CpAsyncCommit();

    const float decay_m = pow_table[m];
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
    // Every warp's Q S and Q K^T are done: the q tile takes the next block.
    __syncthreads();
    if (c + 1 < num_blocks) load_qk(q_src, p.q.token_stride, sq, c + 1);
    CpAsyncCommit();

    // Inter-block rows carry lambda^(i+1); intra-block weights lambda^(i-j) for j <= i.
    const float decay_lo = pow_table[row_lo + 1];
    const float decay_hi = pow_table[row_hi + 1];
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
        pacc[4 * j + e] =
            col <= i ? pacc[4 * j + e] * pow_table[i - col] : 0.f;
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

#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = half == 0 ? row_lo : row_hi;
      if (r < m) {
        __nv_bfloat16* out = p.o.data + token(c, r) * p.o.token_stride + h * p.o.head_stride +
                             v_col0 + 2 * t;
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
  CpAsyncWait<0>();

  if (p.store_final_state && state_head != nullptr) {
    for_each_state_pair([&](int half, int j, int e) {
      *reinterpret_cast<float2*>(state_head + state_row(half, e) * kDk + state_col(j, e)) =
          make_float2(s[half][4 * j + e], s[half][4 * j + e + 1]);
    });
  }
#endif
}

template <int kDv, bool kExactState>
cudaError_t Launch(const LightningPrefillParams& p, cudaStream_t stream) {
  return LaunchPrefillGrid(LightningPrefillSm90Kernel<kDv, kExactState>, kThreads,
                           Sm90Tile<kDv>::kSmemBytes, p, kDk / kDv, stream);
}

}  // namespace

bool LightningPrefillSm90Serves(const LightningPrefillParams& params, int block_size) {
  if (params.head_dim != kDk || block_size != kBlock) return false;
  int device = 0;
  int major = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
    return false;
  }
  if (major != 9) return false;
  // The kernels carry sm_90a code only when the build targets it: asked once.
  static const bool built_for_sm90 = [] {
    cudaFuncAttributes attr{};
    return cudaFuncGetAttributes(&attr, LightningPrefillSm90Kernel<64, true>) == cudaSuccess &&
           attr.binaryVersion == 90;
  }();
  return built_for_sm90;
}

cudaError_t LaunchLightningPrefillSm90(const LightningPrefillParams& p, int dv,
                                       cudaStream_t stream) {
  // The state needs FP32 accuracy only where it is stored.
  const bool exact = p.exact_state && p.store_final_state;
  if (dv == 32) return exact ? Launch<32, true>(p, stream) : Launch<32, false>(p, stream);
  return exact ? Launch<64, true>(p, stream) : Launch<64, false>(p, stream);
}

}  // namespace lightrl
