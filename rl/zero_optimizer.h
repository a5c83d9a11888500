// ZeRO-1: the optimizer state of the parameters replicated on every data-parallel rank, sharded
// over those ranks: each steps its 1/N of gradient_reducer.h's buffer and all-gathers the
// weights. Owns the shard's masters and moments; parameters the model shards (experts) keep
// their state with their owner. It computes no norm: the caller passes the clip factor.
#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/torch.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "rl/gradient_reducer.h"
#include "rl/learner_options.h"

namespace lightrl {

// Rank `rank`'s range of a buffer of `total` elements split over `world` ranks: shards of
// ceil(total / world) elements, the last ones short or empty (the buffer is padded to
// world * shard_size).
struct ZeroPartition {
  int64_t shard_size = 0, begin = 0, end = 0;

  static ZeroPartition Of(int64_t total, int64_t world, int64_t rank);
  // The part [lo, hi) of the elements [offset, offset + numel) in this shard; empty: lo >= hi.
  std::pair<int64_t, int64_t> Overlap(int64_t offset, int64_t numel) const;
};

class ZeroOptimizer {
 public:
  // `reducer` (not owned, it outlives this) holds the reduced gradients of `params`, which
  // `backend`'s `world` ranks hold alike; the shard's masters start from the weights.
  ZeroOptimizer(GradientReducer* reducer, std::vector<torch::Tensor> params,
                c10::intrusive_ptr<c10d::Backend> backend, int64_t rank, int64_t world,
                const OptimizerOptions& options, const torch::Device& device);

  // Whether some rank produced a gradient for some parameter of the buffer.
  bool any_used() const;
  // This rank's shard of the reduced gradients (a view of the reducer's buffer).
  torch::Tensor ShardGrad() const;
  // AdamW on this rank's shard from the reduced gradients times grad_scale (undefined: 1),
  // skipping parameters no rank used, then the all-gather that brings every rank's weights
  // level. A collective.
  void Step(double lr, const torch::Tensor& grad_scale);

  // The shard's state, as checkpoints save it: masters and moments (shard_size long, the
  // last shard padded) and, by parameter, its step count as torch's AdamW counts them.
  const ZeroPartition& partition() const { return partition_; }
  int64_t total() const { return reducer_->plan().total; }
  torch::Tensor& master() { return master_; }
  torch::Tensor& exp_avg() { return avg_; }
  torch::Tensor& exp_avg_sq() { return avg_sq_; }
  std::vector<int64_t>& steps() { return steps_; }

 private:
  GradientReducer* reducer_;
  std::vector<torch::Tensor> params_;
  c10::intrusive_ptr<c10d::Backend> backend_;
  int64_t world_;
  OptimizerOptions options_;
  torch::Device device_;
  ZeroPartition partition_;
  torch::Tensor master_, avg_, avg_sq_;
  std::vector<int64_t> steps_;
};

}  // namespace lightrl
