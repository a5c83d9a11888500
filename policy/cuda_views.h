// Torch tensors as the views the lightning CUDA kernels read (kernels/lightning/
// lightning_prefill.h): the checks that make a tensor usable as one, and the view itself.
// Shared by the policy's training op and the engine's CUDA backend; internal (torch)
// header, for CUDA builds only.
#pragma once

#include <torch/torch.h>

#include <cstdint>

#include "kernels/lightning/lightning_prefill.h"

namespace lightrl {

// A [tokens, H, d] bf16 view the kernels can read: unit stride on d, strides multiples of
// 8 elements, 16-byte aligned data, on `like`'s device with `like`'s sizes.
inline void CheckLightningView(const torch::Tensor& t, const char* name,
                               const torch::Tensor& like) {
  TORCH_CHECK(t.dim() == 3, "lightning cuda: ", name, " must be [tokens, H, d], got ", t.sizes());
  TORCH_CHECK(t.sizes() == like.sizes(), "lightning cuda: ", name, " ", t.sizes(),
              " differs from q ", like.sizes());
  TORCH_CHECK(t.scalar_type() == torch::kBFloat16, "lightning cuda: ", name,
              " must be bfloat16, got ", t.scalar_type());
  TORCH_CHECK(t.is_cuda() && t.device() == like.device(), "lightning cuda: ", name,
              " must be on ", like.device(), ", got ", t.device());
  TORCH_CHECK(t.stride(2) == 1 && t.stride(1) % 8 == 0 && t.stride(0) % 8 == 0,
              "lightning cuda: ", name, " strides ", t.strides(),
              " need unit stride on d and multiples of 8 elsewhere");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, "lightning cuda: ", name,
              " data is not 16-byte aligned");
}

template <typename View>
View MakeLightningView(const torch::Tensor& t) {
  View view;
  view.data = reinterpret_cast<decltype(view.data)>(t.data_ptr());
  view.token_stride = t.stride(0);
  view.head_stride = t.stride(1);
  return view;
}

// Turns a launcher's error into an exception naming the op, and the parameter check's
// complaint when there is one.
inline void CheckCudaLaunch(cudaError_t err, const char* what, const char* invalid) {
  TORCH_CHECK(err == cudaSuccess, "lightrl cuda: ", what, " failed: ", cudaGetErrorName(err),
              " (", cudaGetErrorString(err), ")", invalid != nullptr ? ": " : "",
              invalid != nullptr ? invalid : "");
}

}  // namespace lightrl
