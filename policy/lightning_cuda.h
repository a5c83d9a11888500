// The policy's lightning attention on the GPU kernels (kernels/lightning/
// lightning_train.h): forward from zero states over a packed batch, with a backward that
// writes dq, dk and dv straight into one gradient of the fused projection. Used by the
// model's forward when the build has the kernels (LIGHTRL_POLICY_CUDA) and the tensors
// are CUDA bf16 with head_dim 64 or 128; internal (torch) header.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace lightrl {

// Whether LightningPackedCuda serves these tensors (always false without the kernels).
bool LightningCudaSupported(const torch::Device& device, torch::ScalarType dtype,
                            int64_t head_dim);

// qkv: [T, H, 3d] (q, k, v side by side per head, after the activation), documents packed
// back to back at `cu_seqlens` (host offsets, ending at T). slope: [H]. Returns o
// [T, H, d]: o_t = sum_{s <= t, same document} lambda^(t-s) (q_t . k_s) v_s. Differentiable
// with respect to qkv.
torch::Tensor LightningPackedCuda(const torch::Tensor& qkv, const std::vector<int64_t>& cu_seqlens,
                                  const torch::Tensor& slope);

}  // namespace lightrl
