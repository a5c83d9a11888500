// The learner's fused GPU kernels (kernels/train_ops/train_ops.h) as torch ops: the experts'
// SwiGLU and the FP32 LM head's token log-probabilities as autograd functions, and AdamW on
// FP32 master weights. Each has a *Supported check; without the kernels (CPU builds) the
// checks are false and callers keep their torch-op paths. Internal (torch) header.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

namespace lightrl {

// Whether this build has the kernels and `t` is a CUDA bf16 tensor they serve.
bool TrainKernelsSupported(const torch::Tensor& t);

// silu(a) * b for same-shaped contiguous bf16 CUDA tensors, rounded once; differentiable in
// both.
torch::Tensor SwiGluCuda(const torch::Tensor& a, const torch::Tensor& b);

// The MoE's combine from the experts' output rows y [R, D] (bf16, CUDA): out[t] =
// sum_j w[t, j] y[rows[t, j]] in FP32, rounded to bf16 once; rows [T, k] (every entry a
// valid row), readers [R] (the assignment t * k + j reading each row, T * k for none; one
// reader a row), w [T, k] FP32. Differentiable in y and w.
torch::Tensor MoeCombineCuda(const torch::Tensor& y, const torch::Tensor& rows,
                             const torch::Tensor& readers, const torch::Tensor& w);

// log softmax(x W^T)[r, targets[r]] for x [n, H] and W [V, H] (bf16, CUDA): the logits are
// an FP32-output GEMM of the bf16 operands, the log-softmax and pick one FP32 pass over
// them; the backward writes the logits' gradient in bf16 in one more pass. Returns [n] FP32,
// differentiable in x and W. A target outside [0, V) gives NaN.
torch::Tensor TokenLogprobsCuda(const torch::Tensor& x, const torch::Tensor& w,
                                const torch::Tensor& targets);

// One tensor of MasterAdamWCuda: FP32 master, moments, the gradient (bf16 or FP32, the
// master's shape), the bf16 weights to refresh (optional) and the step count of this update
// (1 for the first).
struct MasterAdamWEntry {
  torch::Tensor master, exp_avg, exp_avg_sq, grad, param_out;
  int64_t step = 1;
};

struct MasterAdamWHyper {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, weight_decay = 0.0, eps = 1e-8;
};

// Whether MasterAdamWCuda serves FP32 masters on `device`.
bool MasterAdamWSupported(const torch::Device& device);

// torch's AdamW over all entries in one launch, on the gradient times grad_scale (a device
// FP32 scalar, e.g. the clip factor; undefined: 1), writing each param_out from the
// updated master.
void MasterAdamWCuda(const std::vector<MasterAdamWEntry>& entries, const torch::Tensor& grad_scale,
                     const MasterAdamWHyper& hyper);

// Whether GatherToFp32Cuda serves `dst` (an FP32 CUDA tensor, in a build with the kernels).
bool GatherToFp32Supported(const torch::Tensor& dst);

// Writes each srcs[j] (contiguous bf16 on dst's device; undefined: zeros) converted to FP32
// into dst[offsets[j], offsets[j] + numels[j]) in one launch; dst is contiguous FP32.
void GatherToFp32Cuda(const std::vector<torch::Tensor>& srcs, const std::vector<int64_t>& offsets,
                      const std::vector<int64_t>& numels, const torch::Tensor& dst);

// A CUDA stream beside the current one, for work that may overlap the current stream's
// (the data-parallel learner's gradient copies into its reduction buffer). Without the
// kernels, or for a CPU device, every call runs on the current thread and stream.
class SideStream {
 public:
  explicit SideStream(const torch::Device& device);
  ~SideStream();
  SideStream(const SideStream&) = delete;
  SideStream& operator=(const SideStream&) = delete;

  // Runs fn with the side stream current, after all work queued so far on the current
  // stream: what fn queues runs beside what the current stream queues next.
  void Run(const std::function<void()>& fn);
  // Keeps t's memory from reuse until the side stream's work queued so far has run.
  void Keep(const torch::Tensor& t);

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace lightrl
