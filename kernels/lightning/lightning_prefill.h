// Varlen chunked prefill of lightning attention (MiniMax decay) on tensor cores: reads
// q, k, v straight from strided bf16 views (e.g. the fused [T][H][3][d] qkv buffer),
// writes o and each sequence's final FP32 state into its slot of a state pool. Owns the
// kernels and their launch choices; it never allocates, syncs, or touches other slots.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace lightrl {

// A read-only [tokens, heads, d] bf16 view: element (t, h, i) is
// data[t * token_stride + h * head_stride + i]. Strides are in elements and multiples of
// 8, data is 16-byte aligned (the kernels move 16 bytes at a time).
struct LightningInputView {
  const __nv_bfloat16* data = nullptr;
  int64_t token_stride = 0;
  int64_t head_stride = 0;
};

// The writable counterpart of LightningInputView, same layout rules.
struct LightningOutputView {
  __nv_bfloat16* data = nullptr;
  int64_t token_stride = 0;
  int64_t head_stride = 0;
};

inline bool IsAligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; }

// Checks the layout rules above for the four views of a lightning kernel; nullptr when
// they hold, else what is wrong.
const char* ValidateLightningViews(const LightningInputView& q, const LightningInputView& k,
                                   const LightningInputView& v, const LightningOutputView& o);

// Per head h with lambda = exp(-slopes[h]), per sequence n (tokens cu_seqlens[n] ..
// cu_seqlens[n+1]-1, in reverse order when `reverse`):
//   S_t = lambda S_{t-1} + k_t^T v_t,  o_t = q_t S_t   (no 1/sqrt(d) scale)
// S_{-1} is state[slot] when use_initial_state, else zero; the last S_t goes to
// state[slot] when store_final_state. All pointers are device pointers.
struct LightningPrefillParams {
  LightningInputView q;
  LightningInputView k;
  LightningInputView v;
  LightningOutputView o;
  const int32_t* cu_seqlens = nullptr;   // [num_seqs + 1], int32 token offsets
  const int32_t* state_slots = nullptr;  // [num_seqs]; nullptr: sequence n uses slot n;
                                         // a negative slot reads and writes no state
  float* state = nullptr;                // [num_slots, H, d, d] FP32 pool, (i, j) = k_i v_j
  const float* slopes = nullptr;         // [H]
  int num_seqs = 0;
  int num_heads = 0;
  int head_dim = 0;                      // d_k == d_v: 64 or 128
  int max_seqlen = 0;                    // host-side bound on the longest sequence; 0: long
  int64_t num_tokens = 0;                // rows the q, k, v and o views hold (at least
                                         // cu_seqlens[num_seqs]); the sm_90a kernel moves
                                         // tiles by TMA within them and needs it (0: that
                                         // kernel is not used)
  bool use_initial_state = false;        // continue from state[slot] (chunked prefill)
  bool store_final_state = true;         // write the final state back to state[slot]
  bool reverse = false;                  // time runs backwards within each sequence
  bool exact_state = true;               // FP32-accurate stored state (~1e-6 relative):
                                         // decayed keys enter the state update as bf16
                                         // hi + lo, two tensor-core products per term;
                                         // false: one product, ~1e-3 state error, about a
                                         // quarter less tensor work. Ignored (one product)
                                         // when the final state is not stored.
  int block_size = 0;                    // tokens per block: 0 auto (32 if max_seqlen <= 32,
                                         // else 64), or 32 / 64
  int dv_split = 0;                      // value columns per CTA: 0 auto, or 32 / 64
  int warp_specialized = 0;              // sm_90a kernel form: 0 auto (warp-specialised
                                         // when the batch's 64-column slices fit one CTA
                                         // per multiprocessor), 1 never, 2 always
  bool warpgroup = true;                 // on sm_90a, the warpgroup (wgmma) kernel where
                                         // it serves (head_dim 128, 64-token blocks,
                                         // num_tokens set);
                                         // false: the mma.sync kernel everywhere

  // nullptr when the parameters are usable, else what is wrong with them.
  const char* Validate() const;
};

// Launches the prefill on `stream`. Returns cudaErrorInvalidValue for parameters that
// Validate() rejects, else the launch's error. Outputs of tokens and slots not named by
// the parameters are left untouched.
cudaError_t LaunchLightningPrefill(const LightningPrefillParams& params, cudaStream_t stream);

}  // namespace lightrl
