#include "kernels/lightning/lightning_train.h"

namespace lightrl {
namespace {

cudaError_t Pass(const LightningTrainParams& params, LightningInputView q,
                 LightningInputView k, LightningInputView v, LightningOutputView o,
                 bool reverse, cudaStream_t stream) {
  LightningPrefillParams p;
  p.q = q;
  p.k = k;
  p.v = v;
  p.o = o;
  p.cu_seqlens = params.cu_seqlens;
  p.slopes = params.slopes;
  p.num_seqs = params.num_seqs;
  p.num_heads = params.num_heads;
  p.head_dim = params.head_dim;
  p.max_seqlen = params.max_seqlen;
  p.num_tokens = params.num_tokens;
  p.use_initial_state = false;
  p.store_final_state = false;
  p.reverse = reverse;
  return LaunchLightningPrefill(p, stream);
}

}  // namespace

cudaError_t LaunchLightningTrainForward(const LightningTrainParams& params,
                                        LightningInputView q, LightningInputView k,
                                        LightningInputView v, LightningOutputView o,
                                        cudaStream_t stream) {
  return Pass(params, q, k, v, o, /*reverse=*/false, stream);
}

// With o_t = sum_{s<=t} lambda^(t-s) (q_t . k_s) v_s and g = d_o:
//   dq_t = sum_{s<=t} lambda^(t-s) (g_t . v_s) k_s   -> forward time, (q, k, v) = (g, v, k)
//   dk_s = sum_{t>=s} lambda^(t-s) (v_s . g_t) q_t   -> reverse time, (q, k, v) = (v, g, q)
//   dv_s = sum_{t>=s} lambda^(t-s) (k_s . q_t) g_t   -> reverse time, (q, k, v) = (k, q, g)
cudaError_t LaunchLightningTrainBackward(const LightningTrainParams& params,
                                         LightningInputView q, LightningInputView k,
                                         LightningInputView v, LightningInputView d_o,
                                         LightningOutputView dq, LightningOutputView dk,
                                         LightningOutputView dv, cudaStream_t stream) {
  cudaError_t err = Pass(params, d_o, v, k, dq, /*reverse=*/false, stream);
  if (err != cudaSuccess) return err;
  err = Pass(params, v, d_o, q, dk, /*reverse=*/true, stream);
  if (err != cudaSuccess) return err;
  return Pass(params, k, q, d_o, dv, /*reverse=*/true, stream);
}

}  // namespace lightrl
