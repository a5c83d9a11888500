#include "policy/lightning_cuda.h"

#ifdef LIGHTRL_POLICY_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/lightning/lightning_train.h"
#include "policy/cuda_views.h"
#endif

namespace lightrl {

#ifdef LIGHTRL_POLICY_CUDA
namespace {

// The packed batch as the kernels take it; built once per forward, kept for the backward.
struct PackedBatch {
  torch::Tensor cu_seqlens;  // [n + 1] int32 on the device
  torch::Tensor slopes;      // [H] FP32 on the device
  LightningTrainParams Params(int64_t max_seqlen, const torch::Tensor& view) const {
    LightningTrainParams p;
    p.cu_seqlens = cu_seqlens.data_ptr<int32_t>();
    p.slopes = slopes.data_ptr<float>();
    p.num_seqs = static_cast<int>(cu_seqlens.size(0) - 1);
    p.num_heads = static_cast<int>(view.size(1));
    p.head_dim = static_cast<int>(view.size(2));
    p.max_seqlen = static_cast<int>(max_seqlen);
    p.num_tokens = view.size(0);
    return p;
  }
};

// q, k and v of the fused [T, H, 3d] tensor.
std::vector<torch::Tensor> SplitQkv(const torch::Tensor& qkv) {
  return qkv.split(qkv.size(2) / 3, /*dim=*/2);
}

class LightningPackedFunction : public torch::autograd::Function<LightningPackedFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& qkv,
                               const torch::Tensor& cu_seqlens, const torch::Tensor& slopes,
                               int64_t max_seqlen) {
    ctx->save_for_backward({qkv, cu_seqlens, slopes});
    ctx->saved_data["max_seqlen"] = max_seqlen;
    auto parts = SplitQkv(qkv);
    for (int i = 0; i < 3; ++i) CheckLightningView(parts[i], "qkv part", parts[0]);
    c10::cuda::CUDAGuard guard(qkv.device());
    auto o = torch::empty(parts[0].sizes(), qkv.options().memory_format(torch::MemoryFormat::Contiguous));
    PackedBatch batch{cu_seqlens, slopes};
    auto p = batch.Params(max_seqlen, parts[0]);
    CheckCudaLaunch(LaunchLightningTrainForward(
                        p, MakeLightningView<LightningInputView>(parts[0]),
                        MakeLightningView<LightningInputView>(parts[1]),
                        MakeLightningView<LightningInputView>(parts[2]),
                        MakeLightningView<LightningOutputView>(o),
                        at::cuda::getCurrentCUDAStream().stream()),
                    "lightning training forward", nullptr);
    return o;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    const auto& qkv = saved[0];
    PackedBatch batch{saved[1], saved[2]};
    const int64_t max_seqlen = ctx->saved_data["max_seqlen"].toInt();
    auto d_o = grad_out[0].to(torch::kBFloat16).contiguous();
    auto parts = SplitQkv(qkv);
    CheckLightningView(d_o, "d_o", parts[0]);
    c10::cuda::CUDAGuard guard(qkv.device());
    // dq, dk, dv land side by side, as the forward's input was laid out.
    auto d_qkv = torch::empty(qkv.sizes(), qkv.options().memory_format(torch::MemoryFormat::Contiguous));
    auto d_parts = SplitQkv(d_qkv);
    auto p = batch.Params(max_seqlen, parts[0]);
    CheckCudaLaunch(LaunchLightningTrainBackward(
                        p, MakeLightningView<LightningInputView>(parts[0]),
                        MakeLightningView<LightningInputView>(parts[1]),
                        MakeLightningView<LightningInputView>(parts[2]),
                        MakeLightningView<LightningInputView>(d_o),
                        MakeLightningView<LightningOutputView>(d_parts[0]),
                        MakeLightningView<LightningOutputView>(d_parts[1]),
                        MakeLightningView<LightningOutputView>(d_parts[2]),
                        at::cuda::getCurrentCUDAStream().stream()),
                    "lightning training backward", nullptr);
    return {d_qkv, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

bool LightningCudaSupported(const torch::Device& device, torch::ScalarType dtype,
                            int64_t head_dim) {
  return device.is_cuda() && dtype == torch::kBFloat16 && (head_dim == 64 || head_dim == 128);
}

torch::Tensor LightningPackedCuda(const torch::Tensor& qkv, const std::vector<int64_t>& cu_seqlens,
                                  const torch::Tensor& slope) {
  TORCH_CHECK(qkv.dim() == 3 && qkv.size(2) % 3 == 0, "lightning cuda: qkv must be [T, H, 3d], got ",
              qkv.sizes());
  TORCH_CHECK(!cu_seqlens.empty() && cu_seqlens.front() == 0 && cu_seqlens.back() == qkv.size(0),
              "lightning cuda: cu_seqlens must run from 0 to ", qkv.size(0));
  int64_t max_seqlen = 0;
  std::vector<int32_t> offsets(cu_seqlens.size());
  for (size_t i = 0; i < cu_seqlens.size(); ++i) {
    offsets[i] = static_cast<int32_t>(cu_seqlens[i]);
    if (i > 0) max_seqlen = std::max(max_seqlen, cu_seqlens[i] - cu_seqlens[i - 1]);
  }
  auto cu = torch::tensor(offsets, torch::kInt32).to(qkv.device());
  auto slopes = slope.to(qkv.device(), torch::kFloat32).contiguous();
  return LightningPackedFunction::apply(qkv, cu, slopes, max_seqlen);
}

#else

bool LightningCudaSupported(const torch::Device&, torch::ScalarType, int64_t) { return false; }

torch::Tensor LightningPackedCuda(const torch::Tensor&, const std::vector<int64_t>&,
                                  const torch::Tensor&) {
  TORCH_CHECK(false, "lightning cuda: this build has no CUDA kernels");
}

#endif

}  // namespace lightrl
