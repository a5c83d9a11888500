// The optimizer step: AdamW as torch computes it over FP32 master copies of low-precision
// weights, the global-norm clip factor and the update clock the LR schedule reads. Owns the
// masters and the replicated parameters' moments; never reduces gradients, shards state
// over ranks or knows experts. Torch-side: only the learner's sources include it.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "rl/learner_options.h"

namespace lightrl {

// Updates made, counted as checkpoints save them.
struct UpdateClock {
  int64_t version = 0;  // every optimizer update; samples record the version that made them
  int64_t steps = 0;    // the same count, as optimizer_steps()
  // RL updates only: the clock of the LR schedule, so that SFT warm-up updates neither use
  // up the warmup nor advance the decay of the RL run.
  int64_t rl_steps = 0;

  void Advance() {
    ++steps;
    ++version;
  }
};

// The model's parameters and, when any is not FP32 (bf16 on GPU), an FP32 master copy of
// each, which the optimizer updates instead: bf16 cannot hold small updates to large weights.
class MasterWeights {
 public:
  explicit MasterWeights(std::vector<torch::Tensor> params);

  size_t size() const { return params_.size(); }
  bool has_masters() const { return !masters_.empty(); }
  bool has_master(size_t i) const { return has_masters() && masters_[i].defined(); }
  torch::Tensor& param(size_t i) { return params_[i]; }
  const std::vector<torch::Tensor>& params() const { return params_; }
  torch::Tensor& master(size_t i) { return masters_[i]; }
  // The tensor the optimizer updates for parameter i: its master where it has one.
  torch::Tensor& Updated(size_t i) { return has_master(i) ? masters_[i] : params_[i]; }
  // Another part (a ZeRO-1 shard, another rank's experts) owns parameter i's master.
  void Drop(size_t i) {
    if (has_masters()) masters_[i] = torch::Tensor();
  }
  void DropAll() { masters_.clear(); }
  // Copies parameter i's master into its weights, where it has one.
  void Refresh(size_t i);

 private:
  std::vector<torch::Tensor> params_, masters_;
};

// The tensors of one fused AdamW update, each with its own step count (after this update's
// increment) and, optionally, the bf16 weights to refresh from it.
struct AdamWLists {
  std::vector<torch::Tensor> params, grads, avgs, avg_sqs, outs;
  std::vector<int64_t> steps;
  void Add(torch::Tensor p, torch::Tensor g, torch::Tensor m, torch::Tensor v, int64_t step,
           torch::Tensor out = {});
};

// AdamW on the gradients times grad_scale (undefined: 1): the CUDA kernel on the GPU
// (policy/train_ops_cuda.h), else torch's fused multi-tensor AdamW after a multi-tensor scale.
void FusedAdamW(const AdamWLists& lists, double lr, const torch::Tensor& grad_scale,
                const OptimizerOptions& options);

// sqrt of the sum of squares of `grads` (bf16 or FP32, summed in FP32), on their device.
torch::Tensor GlobalNorm(const std::vector<torch::Tensor>& grads);
// What gradients of global norm `norm` are scaled by: torch's clip_grad_norm_ rule.
torch::Tensor ClipFactor(const torch::Tensor& norm, double grad_clip);
double ClipFactor(double norm, double grad_clip);

// torch's AdamW over `tensors` with the options' hyper-parameters, and its learning rate.
std::unique_ptr<torch::optim::AdamW> MakeTorchAdamW(std::vector<torch::Tensor> tensors,
                                                    const OptimizerOptions& options);
void SetLr(torch::optim::Optimizer& optimizer, double lr);

// AdamW over the tensors it was made with, stepped by FusedAdamW. The moments and step
// counts stay in torch's AdamW state, so checkpoints read and write them as torch does.
class AdamW {
 public:
  AdamW(std::vector<torch::Tensor> tensors, const OptimizerOptions& options);

  // One update of the entries' tensors (each one of the tensors it was made with) that have
  // a gradient, as torch's AdamW, which skips the others; `out` (optional) are the weights
  // that follow a master.
  struct Entry {
    torch::Tensor tensor, grad, out;
  };
  void Step(const std::vector<Entry>& entries, double lr, const torch::Tensor& grad_scale);

  torch::optim::AdamW& state() { return *optimizer_; }

 private:
  OptimizerOptions options_;
  std::unique_ptr<torch::optim::AdamW> optimizer_;
};

}  // namespace lightrl
