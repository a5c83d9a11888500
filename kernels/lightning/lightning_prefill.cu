#include "kernels/lightning/lightning_prefill.h"

#include "kernels/lightning/lightning_mma.cuh"
#include "kernels/lightning/lightning_prefill_work.cuh"
#include "kernels/lightning/lightning_prefill_sm90.h"

// One CTA of 4 warps owns one (sequence, head, slice of kDv value columns) and walks the
// sequence block by block, keeping the FP32 state slice in mma accumulators. Per block of
// m <= kChunk tokens, with S the state before the block:
//   O = (Q K^T . D) V + diag(lambda^(i+1)) Q S,   D_ij = lambda^(i-j) for j <= i, else 0
//   S = lambda^m S + (K . w)^T V,                  w_j = lambda^(m-1-j)
// Q S reads a bf16 copy of S from shared memory. The stored final state keeps FP32
// accuracy (kExactState) by splitting the decayed keys into bf16 hi + lo parts, two mma per
// product with an error of about 2^-17 relative, and by summing each block's update in
// fresh accumulators before one FP32 add into S.
// Slicing the value columns across CTAs gives one long sequence enough CTAs to fill the
// chip; the slices of one head read the same q and k at the same time, so the repeat reads
// mostly hit L2. The next block's q, k, v stream in with cp.async while this one computes.
// Measurements and the versions before this one: bench/lightning/RESULTS.md.

namespace lightrl {
namespace {

using lightning_mma::CpAsync16;
using lightning_mma::CpAsyncCommit;
using lightning_mma::CpAsyncWait;
using lightning_mma::LdMatrixX4;
using lightning_mma::LdMatrixX4Trans;
using lightning_mma::Mma16816;
using lightning_mma::PackBf16;
using lightning_mma::ScaleBf16;
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

template <int kDk, int kDv, int kChunk, bool kExactState>
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

  const PrefillWork work = PrefillWorkOf(p, num_slices);
  const int slice = work.slice;
  const int h = work.head;
  const int64_t begin = work.begin;
  const int len = work.len;
  const int num_chunks = (len + kChunk - 1) / kChunk;
  const int slot = work.slot;
  const int v_col0 = slice * kDv;
  const bool reverse = p.reverse;

  // Each thread copies fixed 16-byte columns of every kQkRowStep-th (kVRowStep-th) row.
  constexpr int kQkVecs = kDk / 8;
  constexpr int kQkRowStep = kThreads / kQkVecs;
  constexpr int kVVecs = kDv / 8;
  constexpr int kVRowStep = kThreads / kVVecs;
  const int qk_row = tid / kQkVecs;
  const int qk_col = (tid % kQkVecs) * 8;
  const int v_row = tid / kVVecs;
  const int v_col = (tid % kVVecs) * 8;
  const __nv_bfloat16* q_src = p.q.data + h * p.q.head_stride + qk_col;
  const __nv_bfloat16* k_src = p.k.data + h * p.k.head_stride + qk_col;
  const __nv_bfloat16* v_src = p.v.data + h * p.v.head_stride + v_col0 + v_col;
  const uint32_t smem_base = SmemAddr(smem);
  auto load_chunk = [&](int c, int stage) {
    const uint32_t sq = smem_base + stage * Tile::kStage * 2;
    const uint32_t sk = sq + Tile::kQTile * 2;
    const uint32_t sv = sk + Tile::kQTile * 2;
    const int rows = min(kChunk, len - c * kChunk);
    const int64_t tok0 = reverse ? begin + len - 1 - c * kChunk : begin + c * kChunk;
#pragma unroll
    for (int i = 0; i < kChunk / kQkRowStep; ++i) {
      const int r = qk_row + i * kQkRowStep;
      const bool valid = r < rows;
      const int64_t tok = valid ? (reverse ? tok0 - r : tok0 + r) : 0;
      const uint32_t dst = (r * Tile::kQkStride + qk_col) * 2;
      CpAsync16(sq + dst, q_src + tok * p.q.token_stride, valid);
      CpAsync16(sk + dst, k_src + tok * p.k.token_stride, valid);
    }
#pragma unroll
    for (int i = 0; i < kChunk / kVRowStep; ++i) {
      const int r = v_row + i * kVRowStep;
      const bool valid = r < rows;
      const int64_t tok = valid ? (reverse ? tok0 - r : tok0 + r) : 0;
      CpAsync16(sv + (r * Tile::kVStride + v_col) * 2, v_src + tok * p.v.token_stride, valid);
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
  // Per-lane parts of the ldmatrix addresses (bytes): A and non-transposed B tiles, and
  // transposed B tiles (V and the bf16 state) and the transposed A tile of K^T.
  const uint32_t a_lane = ((lane % 16) * Tile::kQkStride + (lane / 16) * 8) * 2;
  const uint32_t bk_lane = ((lane % 8 + (lane / 16) * 8) * Tile::kQkStride + ((lane / 8) % 2) * 8) * 2;
  const uint32_t bt_lane = ((lane % 8 + ((lane / 8) % 2) * 8) * Tile::kVStride + (lane / 16) * 8) * 2;
  const uint32_t at_lane = ((lane % 8 + (lane / 16) * 8) * Tile::kQkStride + ((lane / 8) % 2) * 8) * 2;
  const uint32_t s_state_base = SmemAddr(s_state);

  for (int c = 0; c < num_chunks; ++c) {
    const int stage = c & 1;
    // Every warp passed the previous block's second barrier, so the other stage is free.
    if (c + 1 < num_chunks) load_chunk(c + 1, stage ^ 1);
    CpAsyncCommit();
    CpAsyncWait<1>();
    __syncthreads();

    const uint32_t sq = smem_base + stage * Tile::kStage * 2;
    const uint32_t sk = sq + Tile::kQTile * 2;
    const uint32_t sv = sk + Tile::kQTile * 2;
    const int m = min(kChunk, len - c * kChunk);
    const bool have_state = load_state || c > 0;

    // P = Q K^T over key tiles up to the diagonal and O = Q S, k-steps outermost so that
    // up to 16 independent accumulators are in flight. Rows and keys past m are zero
    // because their q and k rows were zero-filled.
    float pacc[kChunk / 8][4];
    float oacc[Tile::kONt][4];
#pragma unroll
    for (int nt = 0; nt < kChunk / 8; ++nt) {
      pacc[nt][0] = pacc[nt][1] = pacc[nt][2] = pacc[nt][3] = 0.f;
    }
#pragma unroll
    for (int nt = 0; nt < Tile::kONt; ++nt) {
      oacc[nt][0] = oacc[nt][1] = oacc[nt][2] = oacc[nt][3] = 0.f;
    }
#pragma unroll
    for (int ks = 0; ks < kDk / 16; ++ks) {
      uint32_t qf[4];
      LdMatrixX4(qf, sq + row0 * Tile::kQkStride * 2 + ks * 32 + a_lane);
#pragma unroll
      for (int np = 0; np < kChunk / 16; ++np) {
        if (np <= rt) {
          uint32_t b[4];
          LdMatrixX4(b, sk + np * 16 * Tile::kQkStride * 2 + ks * 32 + bk_lane);
          Mma16816(pacc[2 * np], qf, b[0], b[1]);
          Mma16816(pacc[2 * np + 1], qf, b[2], b[3]);
        }
      }
      if (have_state) {
#pragma unroll
        for (int np = 0; np < Tile::kONt / 2; ++np) {
          uint32_t b[4];
          LdMatrixX4Trans(b, s_state_base + ks * 16 * Tile::kVStride * 2 + (ocol0 + np * 16) * 2 +
                                 bt_lane);
          Mma16816(oacc[2 * np], qf, b[0], b[1]);
          Mma16816(oacc[2 * np + 1], qf, b[2], b[3]);
        }
      }
    }
    // Inter-block rows carry lambda^(i+1); intra-block weights lambda^(i-j) for j <= i.
    const float decay_lo = s_pow[row0 + g + 1];
    const float decay_hi = s_pow[row0 + g + 9];
#pragma unroll
    for (int nt = 0; nt < Tile::kONt; ++nt) {
      oacc[nt][0] *= decay_lo;
      oacc[nt][1] *= decay_lo;
      oacc[nt][2] *= decay_hi;
      oacc[nt][3] *= decay_hi;
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
    // O += P V.
#pragma unroll
    for (int kk = 0; kk < kChunk / 16; ++kk) {
      if (kk <= rt) {
#pragma unroll
        for (int np = 0; np < Tile::kONt / 2; ++np) {
          uint32_t b[4];
          LdMatrixX4Trans(b, sv + kk * 16 * Tile::kVStride * 2 + (ocol0 + np * 16) * 2 + bt_lane);
          Mma16816(oacc[2 * np], pf[kk], b[0], b[1]);
          Mma16816(oacc[2 * np + 1], pf[kk], b[2], b[3]);
        }
      }
    }
#pragma unroll
    for (int rh = 0; rh < 2; ++rh) {  // rows g and g + 8
      const int r = row0 + g + 8 * rh;
      if (r < m) {
        const int64_t tok = reverse ? begin + len - 1 - (c * kChunk + r) : begin + c * kChunk + r;
        __nv_bfloat16* out = p.o.data + tok * p.o.token_stride + h * p.o.head_stride + v_col0 +
                             ocol0 + 2 * t;
#pragma unroll
        for (int nt = 0; nt < Tile::kONt; ++nt) {
          *reinterpret_cast<uint32_t*>(out + nt * 8) =
              PackBf16(oacc[nt][2 * rh], oacc[nt][2 * rh + 1]);
        }
      }
    }

    // S = lambda^m S + U with U = (K . w)^T V on this warp's state rows. U is summed in
    // fresh accumulators and added to S with one rounding, so the tensor cores' own
    // accumulation rounding stays relative to one block's U instead of building up over
    // the sequence in S. With kExactState the decayed keys are split into bf16 hi + lo.
    float u[Tile::kSMt][Tile::kSNt][4];
#pragma unroll
    for (int mt = 0; mt < Tile::kSMt; ++mt) {
#pragma unroll
      for (int nt = 0; nt < Tile::kSNt; ++nt) {
        u[mt][nt][0] = u[mt][nt][1] = u[mt][nt][2] = u[mt][nt][3] = 0.f;
      }
    }
#pragma unroll
    for (int kk = 0; kk < kChunk / 16; ++kk) {
      if (kk * 16 < m) {
        const int j0 = kk * 16 + 2 * t;  // tokens j0, j0+1 (a0, a1) and j0+8, j0+9 (a2, a3)
        const float w0 = j0 < m ? s_pow[m - 1 - j0] : 0.f;
        const float w1 = j0 + 1 < m ? s_pow[m - 2 - j0] : 0.f;
        const float w8 = j0 + 8 < m ? s_pow[m - 9 - j0] : 0.f;
        const float w9 = j0 + 9 < m ? s_pow[m - 10 - j0] : 0.f;
        uint32_t a_hi[Tile::kSMt][4];
        uint32_t a_lo[Tile::kSMt][4];
#pragma unroll
        for (int mt = 0; mt < Tile::kSMt; ++mt) {
          uint32_t a[4];
          LdMatrixX4Trans(a, sk + kk * 16 * Tile::kQkStride * 2 + (state_row0 + mt * 16) * 2 +
                                 at_lane);
          if (kExactState) {
            SplitScaledBf16(a[0], w0, w1, a_hi[mt][0], a_lo[mt][0]);
            SplitScaledBf16(a[1], w0, w1, a_hi[mt][1], a_lo[mt][1]);
            SplitScaledBf16(a[2], w8, w9, a_hi[mt][2], a_lo[mt][2]);
            SplitScaledBf16(a[3], w8, w9, a_hi[mt][3], a_lo[mt][3]);
          } else {
            a_hi[mt][0] = ScaleBf16(a[0], w0, w1);
            a_hi[mt][1] = ScaleBf16(a[1], w0, w1);
            a_hi[mt][2] = ScaleBf16(a[2], w8, w9);
            a_hi[mt][3] = ScaleBf16(a[3], w8, w9);
          }
        }
#pragma unroll
        for (int np = 0; np < Tile::kSNt / 2; ++np) {
          uint32_t b[4];
          LdMatrixX4Trans(b, sv + kk * 16 * Tile::kVStride * 2 + np * 32 + bt_lane);
#pragma unroll
          for (int mt = 0; mt < Tile::kSMt; ++mt) {
            Mma16816(u[mt][2 * np], a_hi[mt], b[0], b[1]);
            Mma16816(u[mt][2 * np + 1], a_hi[mt], b[2], b[3]);
            if (kExactState) {
              Mma16816(u[mt][2 * np], a_lo[mt], b[0], b[1]);
              Mma16816(u[mt][2 * np + 1], a_lo[mt], b[2], b[3]);
            }
          }
        }
      }
    }
    const float decay_m = s_pow[m];
#pragma unroll
    for (int mt = 0; mt < Tile::kSMt; ++mt) {
#pragma unroll
      for (int nt = 0; nt < Tile::kSNt; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) sacc[mt][nt][e] = fmaf(decay_m, sacc[mt][nt][e], u[mt][nt][e]);
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

template <int kDk, int kDv, int kChunk, bool kExactState>
cudaError_t Launch(const LightningPrefillParams& p, cudaStream_t stream) {
  return LaunchPrefillGrid(LightningPrefillKernel<kDk, kDv, kChunk, kExactState>, kThreads,
                           PrefillTile<kDk, kDv, kChunk>::kSmemBytes, p, kDk / kDv, stream);
}

template <int kDk, int kDv, int kChunk>
cudaError_t LaunchForExact(const LightningPrefillParams& p, cudaStream_t stream) {
  // The state needs FP32 accuracy only where it is stored.
  const bool exact = p.exact_state && p.store_final_state;
  return exact ? Launch<kDk, kDv, kChunk, true>(p, stream)
               : Launch<kDk, kDv, kChunk, false>(p, stream);
}

template <int kDk, int kDv>
cudaError_t LaunchForChunk(const LightningPrefillParams& p, int chunk, cudaStream_t stream) {
  return chunk == 32 ? LaunchForExact<kDk, kDv, 32>(p, stream)
                     : LaunchForExact<kDk, kDv, 64>(p, stream);
}

template <int kDk>
cudaError_t LaunchForDv(const LightningPrefillParams& p, int chunk, int dv,
                        cudaStream_t stream) {
  return dv == 32 ? LaunchForChunk<kDk, 32>(p, chunk, stream)
                  : LaunchForChunk<kDk, 64>(p, chunk, stream);
}

}  // namespace

const char* ValidateLightningViews(const LightningInputView& q, const LightningInputView& k,
                                   const LightningInputView& v, const LightningOutputView& o) {
  auto ok = [](const void* data, int64_t token_stride, int64_t head_stride) {
    return data != nullptr && IsAligned16(data) && token_stride % 8 == 0 && head_stride % 8 == 0;
  };
  if (!ok(q.data, q.token_stride, q.head_stride) || !ok(k.data, k.token_stride, k.head_stride) ||
      !ok(v.data, v.token_stride, v.head_stride) || !ok(o.data, o.token_stride, o.head_stride)) {
    return "q, k, v, o need non-null 16-byte aligned data and strides that are multiples of 8";
  }
  return nullptr;
}

const char* LightningPrefillParams::Validate() const {
  if (num_seqs < 0 || num_heads <= 0) return "num_seqs must be >= 0 and num_heads > 0";
  if (head_dim != 64 && head_dim != 128) return "head_dim must be 64 or 128";
  if (const char* bad = ValidateLightningViews(q, k, v, o)) return bad;
  if (cu_seqlens == nullptr || slopes == nullptr) return "cu_seqlens and slopes are required";
  if ((use_initial_state || store_final_state) && state == nullptr) {
    return "state is required when use_initial_state or store_final_state is set";
  }
  if (state != nullptr && !IsAligned16(state)) return "state must be 16-byte aligned";
  if (block_size != 0 && block_size != 32 && block_size != 64) {
    return "block_size must be 0 (auto), 32 or 64";
  }
  if (dv_split != 0 && dv_split != 32 && dv_split != 64) return "dv_split must be 0, 32 or 64";
  if (warp_specialized < 0 || warp_specialized > 2) {
    return "warp_specialized must be 0 (auto), 1 or 2";
  }
  if (max_seqlen < 0) return "max_seqlen must be >= 0";
  if (num_tokens < 0) return "num_tokens must be >= 0";
  return nullptr;
}

cudaError_t LaunchLightningPrefill(const LightningPrefillParams& params, cudaStream_t stream) {
  if (params.Validate() != nullptr) return cudaErrorInvalidValue;
  if (params.num_seqs == 0) return cudaSuccess;
  const int chunk = params.block_size != 0                              ? params.block_size
                    : (params.max_seqlen > 0 && params.max_seqlen <= 32) ? 32
                                                                         : 64;
  int device = 0;
  int num_sms = 132;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) {
    err = cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device);
  }
  if (err != cudaSuccess) return err;
  if (params.warpgroup && LightningPrefillSm90Serves(params, chunk)) {
    // Not supported: views TMA cannot describe; the mma.sync kernel takes them.
    err = LaunchLightningPrefillSm90(params, num_sms, stream);
    if (err != cudaErrorNotSupported) return err;
  }
  // Slices of 64 columns recompute Q K^T half as often as slices of 32; take them when they
  // already give every multiprocessor two CTAs.
  const int64_t ctas64 = int64_t{params.num_seqs} * params.num_heads * (params.head_dim / 64);
  const int dv = params.dv_split != 0 ? params.dv_split : ctas64 >= 2 * num_sms ? 64 : 32;
  if (params.head_dim == 64) return LaunchForDv<64>(params, chunk, dv, stream);
  return LaunchForDv<128>(params, chunk, dv, stream);
}

}  // namespace lightrl
