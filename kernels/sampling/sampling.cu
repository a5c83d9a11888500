#include "kernels/sampling/sampling.h"

#include <climits>
#include <cmath>
#include <cstdint>

// One CTA of 512 threads per row; the row stays in global memory (L2) and is read once
// per pass. No sort: every decision asks for "the first token of the sampling order at
// which a running total reaches a target", where the total counts tokens (top-k) or sums
// their masses exp(z - max z) (top-p, the draw). A radix select over an order-preserving
// key of the logit answers it: each pass histograms one 8-bit digit of the key (counts
// and masses per bucket, among the tokens whose higher digits matched so far), and warp
// 0 scans the buckets from the highest digit down to find the one where the total is
// reached. Logits crowd into a few buckets of the first digit, so the lanes of a warp that
// share a bucket combine their tokens (match_any, then a warp reduce) before one of them
// updates it, and each warp keeps its own mass histogram: Hopper has no native 64-bit
// shared-memory add, and a contended compare-and-swap loop would serialise the pass. After 4 passes (2 for bf16) the key is exact, and tokens of equal key (equal
// logits, hence equal masses) are resolved by id: the lowest id comes from the last
// pass, any other from one ordered scan of the row.
//
// The masses are 64-bit fixed point (2^-40 of the largest), so every sum is exact and
// independent of the order of the atomics: the running mass at the top-k/top-p cut is the
// kept mass to the last unit, the draw's target never exceeds it, and so the drawn token
// can never lie past the cut. The FP32 exp per token is the only rounding (~1e-7).
//
// Passes per row: argmax, total mass, then a select of 4 passes (FP32) for each of top-k,
// top-p and the draw that is active; greedy rows stop after two.

namespace lightrl {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kDigitBits = 8;
constexpr int kBuckets = 1 << kDigitBits;
constexpr int kBucketsPerLane = kBuckets / 32;
constexpr int kMassBits = 40;
constexpr float kMassScale = 1099511627776.0f;  // 2^kMassBits
constexpr double kLn2 = 0.69314718055994530942;
constexpr unsigned kFullMask = 0xffffffffu;

using Mass = unsigned long long;

// Per element type: the logit as a float and an unsigned key in the same order (larger
// logit, larger key), with -0 folded into +0 so that equal logits have equal keys; the
// logit of a key; element j of a 16-byte chunk, taken from its words by value (no type
// punning through memory).

// Word i of a 16-byte chunk.
__device__ __forceinline__ uint32_t ChunkWord(const uint4& raw, int i) {
  return i == 0 ? raw.x : i == 1 ? raw.y : i == 2 ? raw.z : raw.w;
}

struct Fp32Logits {
  using Elem = float;
  static constexpr int kKeyBits = 32;
  static constexpr int kPerChunk = 4;  // elements per 16-byte load
  __device__ static void Decode(float v, float* x, uint32_t* key) {
    uint32_t b = __float_as_uint(v);
    if (b == 0x80000000u) b = 0u;
    *key = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
    *x = v;
  }
  __device__ static float ValueOfKey(uint32_t key) {
    return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
  }
  __device__ static float ChunkElement(const uint4& raw, int j) {
    return __uint_as_float(ChunkWord(raw, j));
  }
};

struct Bf16Logits {
  using Elem = uint16_t;  // the bf16 bits
  static constexpr int kKeyBits = 16;
  static constexpr int kPerChunk = 8;
  __device__ static void Decode(uint16_t v, float* x, uint32_t* key) {
    uint32_t b = v;
    if (b == 0x8000u) b = 0u;
    *key = (b & 0x8000u) ? (~b & 0xffffu) : (b | 0x8000u);
    *x = __uint_as_float(b << 16);
  }
  __device__ static float ValueOfKey(uint32_t key) {
    const uint32_t b = (key & 0x8000u) ? (key & 0x7fffu) : (~key & 0xffffu);
    return __uint_as_float(b << 16);
  }
  // Little-endian: the lower-addressed element is the low half of its word.
  __device__ static uint16_t ChunkElement(const uint4& raw, int j) {
    return static_cast<uint16_t>(ChunkWord(raw, j / 2) >> (16 * (j % 2)));
  }
};

static_assert(Fp32Logits::kKeyBits % kDigitBits == 0 && Bf16Logits::kKeyBits % kDigitBits == 0,
              "keys split into whole digits");

template <typename L>
struct Row {
  const typename L::Elem* data;
  int vocab;
  bool vectorized;  // data is 16-byte aligned: 16-byte loads, then the tail one by one

  // f(id, x, key) for the elements of this thread (a block-strided subset).
  template <typename F>
  __device__ __forceinline__ void ForEach(F&& f) const {
    int tail = 0;
    if (vectorized) {
      const int chunks = vocab / L::kPerChunk;
      const uint4* chunk_data = reinterpret_cast<const uint4*>(data);
      for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
        const uint4 raw = chunk_data[c];
#pragma unroll
        for (int j = 0; j < L::kPerChunk; ++j) {
          float x;
          uint32_t key;
          L::Decode(L::ChunkElement(raw, j), &x, &key);
          f(c * L::kPerChunk + j, x, key);
        }
      }
      tail = chunks * L::kPerChunk;
    }
    for (int i = tail + static_cast<int>(threadIdx.x); i < vocab; i += blockDim.x) {
      float x;
      uint32_t key;
      L::Decode(data[i], &x, &key);
      f(i, x, key);
    }
  }

  // f(valid, id, x, key) with the 32 lanes of each warp calling together (valid is false
  // past the end of the row), so that f may use warp-collective intrinsics.
  template <typename F>
  __device__ __forceinline__ void ForEachInWarpStep(F&& f) const {
    const int lane = threadIdx.x % 32;
    const int warp_first = static_cast<int>(threadIdx.x) - lane;
    int tail = 0;
    if (vectorized) {
      const int chunks = vocab / L::kPerChunk;
      const uint4* chunk_data = reinterpret_cast<const uint4*>(data);
      for (int base = warp_first; base < chunks; base += blockDim.x) {
        const int c = base + lane;
        const bool valid = c < chunks;
        const uint4 raw = valid ? chunk_data[c] : make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
        for (int j = 0; j < L::kPerChunk; ++j) {
          float x;
          uint32_t key;
          L::Decode(L::ChunkElement(raw, j), &x, &key);
          f(valid, c * L::kPerChunk + j, x, key);
        }
      }
      tail = chunks * L::kPerChunk;
    }
    for (int base = tail + warp_first; base < vocab; base += blockDim.x) {
      const int i = base + lane;
      const bool valid = i < vocab;
      float x = 0.0f;
      uint32_t key = 0;
      if (valid) L::Decode(data[i], &x, &key);
      f(valid, i, x, key);
    }
  }

  __device__ uint32_t KeyAt(int i) const {
    float x;
    uint32_t key;
    L::Decode(data[i], &x, &key);
    return key;
  }
};

// exp(x / T - z_max) in units of 2^-kMassBits, rounded to nearest: at most 2^kMassBits.
// Every step is an explicitly rounded FP32 op, so each pass computes the same bits.
__device__ __forceinline__ Mass Weight(float x, float temperature, float z_max) {
  const float z = __fdiv_rn(x, temperature);
  return __float2ull_rn(__fmul_rn(expf(__fsub_rn(z, z_max)), kMassScale));
}

struct SharedState {
  Mass warp_hist[kWarps][kBuckets];  // each warp's own mass histogram: no 64-bit atomics
  Mass mass[kBuckets];
  uint32_t count[kBuckets];
  uint32_t min_id[kBuckets];
  float warp_x[kWarps];
  int warp_id[kWarps];
  Mass warp_mass[kWarps];
  uint32_t warp_hits[kWarps];
  uint32_t digit;
  Mass mass_above;
  Mass count_above;
  int nth_found;
  int nth_last;
};

// The sampling order: larger logit first, equal logits by lower id.
__device__ __forceinline__ bool Precedes(float ax, int aid, float bx, int bid) {
  return ax > bx || (ax == bx && aid < bid);
}

// The first token of the sampling order over the block; every thread gets it.
__device__ void BlockArgMax(float* x, int* id, SharedState& s) {
  float bx = *x;
  int bid = *id;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float ox = __shfl_xor_sync(kFullMask, bx, off);
    const int oid = __shfl_xor_sync(kFullMask, bid, off);
    if (Precedes(ox, oid, bx, bid)) {
      bx = ox;
      bid = oid;
    }
  }
  const int warp = threadIdx.x / 32;
  if (threadIdx.x % 32 == 0) {
    s.warp_x[warp] = bx;
    s.warp_id[warp] = bid;
  }
  __syncthreads();
  bx = s.warp_x[0];
  bid = s.warp_id[0];
  for (int w = 1; w < kWarps; ++w) {
    if (Precedes(s.warp_x[w], s.warp_id[w], bx, bid)) {
      bx = s.warp_x[w];
      bid = s.warp_id[w];
    }
  }
  __syncthreads();
  *x = bx;
  *id = bid;
}

// Exact (integer) block sum; every thread gets it.
__device__ Mass BlockSum(Mass v, SharedState& s) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  if (threadIdx.x % 32 == 0) s.warp_mass[threadIdx.x / 32] = v;
  __syncthreads();
  Mass total = 0;
  for (int w = 0; w < kWarps; ++w) total += s.warp_mass[w];
  __syncthreads();
  return total;
}

// Warp 0, after a histogram pass: the digit whose bucket holds the token at which the
// running total (counts when by_count, else masses), taken over the buckets from the
// highest digit down, reaches `need` (> 0); stored with the masses and counts of the
// buckets above it.
__device__ void ChooseDigit(bool by_count, Mass need, SharedState& s) {
  const int lane = threadIdx.x;
  const int top = kBuckets - 1 - lane * kBucketsPerLane;  // this lane's digits: top, top - 1, ...
  auto metric = [&](int d) -> Mass { return by_count ? Mass{s.count[d]} : s.mass[d]; };
  Mass own = 0;
#pragma unroll
  for (int j = 0; j < kBucketsPerLane; ++j) own += metric(top - j);
  Mass inclusive = own;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const Mass from = __shfl_up_sync(kFullMask, inclusive, off);
    if (lane >= off) inclusive += from;
  }
  int pick = 0;
  int src = 0;
  const unsigned reached = __ballot_sync(kFullMask, inclusive >= need);
  if (reached != 0) {
    src = __ffs(reached) - 1;
    if (lane == src) {
      Mass running = inclusive - own;
      for (int j = 0; j < kBucketsPerLane; ++j) {
        running += metric(top - j);
        if (running >= need) {
          pick = top - j;
          break;
        }
      }
    }
  } else {
    // Unreachable with exact sums: fall back to the lowest digit that holds anything.
    const unsigned nonzero = __ballot_sync(kFullMask, own != 0);
    if (nonzero != 0) {
      src = 31 - __clz(nonzero);
      if (lane == src) {
        for (int j = kBucketsPerLane - 1; j >= 0; --j) {
          if (metric(top - j) != 0) {
            pick = top - j;
            break;
          }
        }
      }
    }
  }
  const int digit = __shfl_sync(kFullMask, pick, src);
  Mass mass_above = 0, count_above = 0;
#pragma unroll
  for (int j = 0; j < kBucketsPerLane; ++j) {
    if (top - j > digit) {
      mass_above += s.mass[top - j];
      count_above += s.count[top - j];
    }
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    mass_above += __shfl_xor_sync(kFullMask, mass_above, off);
    count_above += __shfl_xor_sync(kFullMask, count_above, off);
  }
  if (lane == 0) {
    s.digit = static_cast<uint32_t>(digit);
    s.mass_above = mass_above;
    s.count_above = count_above;
  }
}

// The n-th token (1-based, by ascending id) whose key is `key`: one ordered scan of the
// row, a CTA-wide count of hits per blockDim ids. The last such token when there are
// fewer than n, -1 when there is none (both unreachable with exact sums).
template <typename L>
__device__ int NthOfKey(const Row<L>& row, uint32_t key, Mass n, SharedState& s) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (threadIdx.x == 0) {
    s.nth_found = -1;
    s.nth_last = -1;
  }
  __syncthreads();
  Mass seen = 0;
  for (int base = 0; base < row.vocab; base += blockDim.x) {
    const int id = base + static_cast<int>(threadIdx.x);
    const bool hit = id < row.vocab && row.KeyAt(id) == key;
    const unsigned hits = __ballot_sync(kFullMask, hit);
    if (lane == 0) s.warp_hits[warp] = __popc(hits);
    __syncthreads();
    Mass before = seen, tile = 0;
    for (int w = 0; w < kWarps; ++w) {
      if (w < warp) before += s.warp_hits[w];
      tile += s.warp_hits[w];
    }
    if (hit) {
      const Mass rank = before + __popc(hits & ((1u << lane) - 1u)) + 1;
      if (rank == n) s.nth_found = id;
      atomicMax(&s.nth_last, id);
    }
    seen += tile;
    __syncthreads();
    if (s.nth_found >= 0) break;
  }
  const int found = s.nth_found >= 0 ? s.nth_found : s.nth_last;
  __syncthreads();
  return found;
}

// A token's place in the sampling order: its key, its rank among the tokens of that key,
// and the running mass through it.
struct Position {
  uint32_t key = 0;
  Mass tie = 1;           // 1-based, by ascending id among the tokens of this key
  Mass mass_through = 0;  // mass of every token up to and including this one
  int id = -1;            // filled when asked for
};

__device__ __forceinline__ bool Earlier(const Position& a, const Position& b) {
  return a.key > b.key || (a.key == b.key && a.tie < b.tie);
}

// The first token of the sampling order at which the running count (by_count) or mass
// reaches target (>= 1).
template <typename L>
__device__ Position Select(const Row<L>& row, bool by_count, Mass target, bool want_id,
                           float temperature, float z_max, SharedState& s) {
  constexpr int kPasses = L::kKeyBits / kDigitBits;
  uint32_t prefix = 0;
  Mass mass_above = 0, count_above = 0;
  for (int pass = 0; pass < kPasses; ++pass) {
    const int shift = L::kKeyBits - kDigitBits * (pass + 1);
    const bool last = pass == kPasses - 1;
    for (int b = threadIdx.x; b < kBuckets; b += blockDim.x) {
      s.count[b] = 0;
      s.min_id[b] = UINT32_MAX;
    }
    for (int i = threadIdx.x; i < kWarps * kBuckets; i += blockDim.x) {
      s.warp_hist[i / kBuckets][i % kBuckets] = 0;
    }
    __syncthreads();
    const uint32_t high = pass == 0 ? 0u : prefix >> (shift + kDigitBits);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    // The lanes that share a bucket combine their tokens first (their masses in two 32-bit
    // halves, which 32 lanes cannot overflow); one of them then updates the bucket.
    row.ForEachInWarpStep([&](bool valid, int id, float x, uint32_t key) {
      const bool candidate =
          valid && (pass == 0 || (key >> (shift + kDigitBits)) == high);
      const uint32_t d = candidate ? (key >> shift) & (kBuckets - 1) : kBuckets;
      const unsigned peers = __match_any_sync(kFullMask, d);
      const Mass w = candidate ? Weight(x, temperature, z_max) : 0;
      const unsigned hi = __reduce_add_sync(peers, static_cast<unsigned>(w >> 20));
      const unsigned lo = __reduce_add_sync(peers, static_cast<unsigned>(w & 0xfffffu));
      const unsigned first_id =
          last && want_id ? __reduce_min_sync(peers, static_cast<unsigned>(id)) : 0u;
      if (candidate && lane == __ffs(peers) - 1) {
        if (by_count) atomicAdd(&s.count[d], static_cast<uint32_t>(__popc(peers)));
        s.warp_hist[warp][d] += (Mass{hi} << 20) + lo;
        if (last && want_id) atomicMin(&s.min_id[d], first_id);
      }
      // The next step's leader of a bucket may be another lane: order its read after this
      // write.
      __syncwarp();
    });
    __syncthreads();
    for (int b = threadIdx.x; b < kBuckets; b += blockDim.x) {
      Mass sum = 0;
      for (int w = 0; w < kWarps; ++w) sum += s.warp_hist[w][b];
      s.mass[b] = sum;
    }
    __syncthreads();
    if (threadIdx.x < 32) {
      const Mass above = by_count ? count_above : mass_above;
      ChooseDigit(by_count, target > above ? target - above : 1, s);
    }
    __syncthreads();
    prefix |= s.digit << shift;
    mass_above += s.mass_above;
    count_above += s.count_above;
  }
  Position pos;
  pos.key = prefix;
  const Mass w = Weight(L::ValueOfKey(prefix), temperature, z_max);
  if (by_count) {
    pos.tie = target > count_above ? target - count_above : 1;
  } else if (target > mass_above && w > 0) {
    pos.tie = (target - mass_above + w - 1) / w;
  }
  pos.mass_through = mass_above + pos.tie * w;
  if (want_id) {
    const uint32_t first = s.min_id[s.digit];
    __syncthreads();  // everyone has read the last pass's shared state
    pos.id = pos.tie == 1 ? (first == UINT32_MAX ? -1 : static_cast<int>(first))
                          : NthOfKey(row, prefix, pos.tie, s);
  } else {
    __syncthreads();
  }
  return pos;
}

template <typename L>
__global__ void __launch_bounds__(kThreads)
    FusedSamplingKernel(const FusedSamplingParams p, const bool vectorized) {
  __shared__ SharedState s;
  const int r = blockIdx.x;
  const Row<L> row{static_cast<const typename L::Elem*>(p.logits) +
                       static_cast<int64_t>(r) * p.logits_row_stride,
                   p.vocab, vectorized};
  const SamplingRowOptions o = p.options[r];
  const bool greedy = !(o.temperature > 0.0f);
  const float temperature = greedy ? 1.0f : o.temperature;

  float best_x = -INFINITY;
  int best_id = INT_MAX;
  row.ForEach([&](int id, float x, uint32_t) {
    if (Precedes(x, id, best_x, best_id)) {
      best_x = x;
      best_id = id;
    }
  });
  BlockArgMax(&best_x, &best_id, s);
  // Division by T > 0 keeps the order, so the largest z is the largest logit's.
  const float z_max = __fdiv_rn(best_x, temperature);
  Mass partial = 0;
  row.ForEach([&](int, float x, uint32_t) { partial += Weight(x, temperature, z_max); });
  const Mass total = BlockSum(partial, s);

  int token = best_id < p.vocab ? best_id : 0;
  float z_token = z_max;
  if (!greedy && total > 0) {
    Position cut;
    bool has_cut = false;
    if (o.top_k >= 1.0f && o.top_k < static_cast<float>(p.vocab)) {
      cut = Select(row, /*by_count=*/true, static_cast<Mass>(o.top_k), /*want_id=*/false,
                   temperature, z_max, s);
      has_cut = true;
    }
    if (o.top_p < 1.0f) {
      // The last kept token is the first whose running mass reaches top_p of the total
      // (the mass before the next one is then not below top_p).
      const double t = ceil(static_cast<double>(o.top_p) * static_cast<double>(total));
      const Mass target = t >= 1.0 ? static_cast<Mass>(t) : Mass{1};
      const Position by_p = Select(row, /*by_count=*/false, target, /*want_id=*/false,
                                   temperature, z_max, s);
      if (!has_cut || Earlier(by_p, cut)) cut = by_p;
      has_cut = true;
    }
    const Mass kept = has_cut ? cut.mass_through : total;
    // The first token whose running mass exceeds uniform * kept, i.e. reaches
    // floor(uniform * kept) + 1; at most kept, so never past the cut.
    const float u = o.uniform >= 0.0f ? o.uniform : 0.0f;
    const double t = floor(static_cast<double>(u) * static_cast<double>(kept)) + 1.0;
    const Mass target = t < static_cast<double>(kept) ? static_cast<Mass>(t) : kept;
    const Position pick = Select(row, /*by_count=*/false, target, /*want_id=*/true,
                                 temperature, z_max, s);
    if (pick.id >= 0 && pick.id < p.vocab) {
      token = pick.id;
      z_token = __fdiv_rn(L::ValueOfKey(pick.key), temperature);
    }
  }
  if (threadIdx.x == 0) {
    p.tokens[r] = token;
    const double log_total = log(static_cast<double>(total)) - kMassBits * kLn2;
    p.logprobs[r] = total > 0 ? static_cast<float>(static_cast<double>(z_token) -
                                                   static_cast<double>(z_max) - log_total)
                              : __int_as_float(0x7fc00000);  // NaN
  }
}

}  // namespace

const char* FusedSamplingParams::Validate() const {
  if (rows < 0) return "rows must be >= 0";
  if (vocab < 1 || vocab > kSamplingMaxVocab) return "vocab must be in 1 .. kSamplingMaxVocab";
  if (logits_row_stride < vocab) return "logits_row_stride must be >= vocab";
  if (logits_type != SamplingLogitsType::kFloat32 && logits_type != SamplingLogitsType::kBFloat16) {
    return "logits_type is not a known type";
  }
  if (logits == nullptr || options == nullptr || tokens == nullptr || logprobs == nullptr) {
    return "logits, options, tokens and logprobs are required";
  }
  return nullptr;
}

cudaError_t LaunchFusedSampling(const FusedSamplingParams& params, cudaStream_t stream) {
  if (params.Validate() != nullptr) return cudaErrorInvalidValue;
  if (params.rows == 0) return cudaSuccess;
  const bool bf16 = params.logits_type == SamplingLogitsType::kBFloat16;
  const int64_t row_bytes = params.logits_row_stride * (bf16 ? 2 : 4);
  const bool vectorized = reinterpret_cast<uintptr_t>(params.logits) % 16 == 0 && row_bytes % 16 == 0;
  const unsigned grid = static_cast<unsigned>(params.rows);
  if (bf16) {
    FusedSamplingKernel<Bf16Logits><<<grid, kThreads, 0, stream>>>(params, vectorized);
  } else {
    FusedSamplingKernel<Fp32Logits><<<grid, kThreads, 0, stream>>>(params, vectorized);
  }
  return cudaGetLastError();
}

}  // namespace lightrl
