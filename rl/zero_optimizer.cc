#include "rl/zero_optimizer.h"

#include <algorithm>

#include "policy/train_ops_cuda.h"
#include "rl/adamw.h"

namespace lightrl {

ZeroPartition ZeroPartition::Of(int64_t total, int64_t world, int64_t rank) {
  ZeroPartition p;
  p.shard_size = (total + world - 1) / world;
  p.begin = std::min(rank * p.shard_size, total);
  p.end = std::min(p.begin + p.shard_size, total);
  return p;
}

std::pair<int64_t, int64_t> ZeroPartition::Overlap(int64_t offset, int64_t numel) const {
  return {std::max(offset, begin), std::min(offset + numel, end)};
}

ZeroOptimizer::ZeroOptimizer(GradientReducer* reducer, std::vector<torch::Tensor> params,
                             c10::intrusive_ptr<c10d::Backend> backend, int64_t rank, int64_t world,
                             const OptimizerOptions& options, const torch::Device& device)
    : reducer_(reducer),
      params_(std::move(params)),
      backend_(std::move(backend)),
      world_(world),
      options_(options),
      device_(device),
      partition_(ZeroPartition::Of(reducer->plan().total, world, rank)) {
  auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(device);
  master_ = torch::zeros({partition_.shard_size}, f32);
  avg_ = torch::zeros({partition_.shard_size}, f32);
  avg_sq_ = torch::zeros({partition_.shard_size}, f32);
  steps_.assign(params_.size(), 0);
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!reducer_->reduced(i)) continue;
    const auto& slot = reducer_->plan().slots[i];
    const auto [lo, hi] = partition_.Overlap(slot.offset, slot.numel);
    if (lo >= hi) continue;
    master_.narrow(0, lo - partition_.begin, hi - lo)
        .copy_(params_[i].detach().reshape({-1}).narrow(0, lo - slot.offset, hi - lo));
  }
}

bool ZeroOptimizer::any_used() const {
  for (size_t i = 0; i < params_.size(); ++i) {
    if (reducer_->reduced(i) && reducer_->used(i)) return true;
  }
  return false;
}

torch::Tensor ZeroOptimizer::ShardGrad() const {
  return reducer_->flat().narrow(0, partition_.begin, partition_.end - partition_.begin);
}

void ZeroOptimizer::Step(double lr, const torch::Tensor& grad_scale) {
  torch::NoGradGuard no_grad;
  const torch::Tensor& flat = reducer_->flat();
  AdamWLists lists;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!reducer_->reduced(i)) continue;
    const auto& slot = reducer_->plan().slots[i];
    const auto [lo, hi] = partition_.Overlap(slot.offset, slot.numel);
    if (!reducer_->used(i) || lo >= hi) continue;
    // bf16-reduced gradients: the AdamW kernel reads them as they are; torch's AdamW wants
    // the masters' dtype.
    torch::Tensor grad = flat.narrow(0, lo, hi - lo);
    if (grad.scalar_type() != master_.scalar_type() && !MasterAdamWSupported(device_)) {
      grad = grad.to(master_.scalar_type());
    }
    const int64_t at = lo - partition_.begin;
    lists.Add(master_.narrow(0, at, hi - lo), grad, avg_.narrow(0, at, hi - lo),
              avg_sq_.narrow(0, at, hi - lo), ++steps_[i]);
  }
  FusedAdamW(lists, lr, grad_scale, options_);
  // In the buffer's dtype: with bf16 reduction the weights are bf16 too, and rounding the
  // masters before the gather gives the bits the copy after it would.
  std::vector<at::Tensor> in{flat.scalar_type() == master_.scalar_type() ? master_
                                                                          : master_.to(flat.scalar_type())};
  std::vector<std::vector<at::Tensor>> out(1);
  for (int64_t r = 0; r < world_; ++r) {
    out[0].push_back(flat.narrow(0, r * partition_.shard_size, partition_.shard_size));
  }
  backend_->allgather(out, in)->wait();
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!reducer_->reduced(i)) continue;
    const auto& slot = reducer_->plan().slots[i];
    params_[i].copy_(flat.narrow(0, slot.offset, slot.numel).view(params_[i].sizes()));
  }
}

}  // namespace lightrl
