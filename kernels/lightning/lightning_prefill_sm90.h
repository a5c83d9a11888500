// The sm_90a (Hopper) form of the lightning prefill: one warpgroup per (sequence, head,
// value slice) on wgmma, for 128-dimensional heads and 64-token blocks. Internal to
// kernels/lightning: LaunchLightningPrefill picks it; the parameters are those of
// lightning_prefill.h, already validated.
#pragma once

#include <cuda_runtime.h>

#include "kernels/lightning/lightning_prefill.h"

namespace lightrl {

// Whether the warpgroup kernel serves these parameters (head_dim 128, 64-token blocks,
// num_tokens set) on the current device (compute capability 9.0).
bool LightningPrefillSm90Serves(const LightningPrefillParams& params, int block_size);

// Launches it, choosing its form (LightningPrefillParams::warp_specialized) and the value
// columns per CTA (dv_split, 0: auto) for a chip of `num_sms` multiprocessors;
// cudaErrorNotSupported, with nothing launched, for views TMA cannot describe.
cudaError_t LaunchLightningPrefillSm90(const LightningPrefillParams& params, int num_sms,
                                       cudaStream_t stream);

}  // namespace lightrl
