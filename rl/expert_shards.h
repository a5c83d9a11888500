// Expert-parallel state: which parameters are whose experts, this rank's experts' AdamW and
// masters, and their gradients summed over the ranks holding the same expert shard (the
// expert-DP group). Two layouts: sharded (the model holds only this rank's experts, under
// expert-TP their FFN blocks: policy/shard_spec.h), or replicated (every rank holds every
// expert; the owners update theirs and an all-gather levels all ranks after each step).
// It does not dispatch tokens (expert_comm.h) nor touch the replicated parameters'
// reduction or state.
#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "rl/adamw.h"
#include "rl/distributed.h"
#include "rl/expert_comm.h"
#include "rl/learner_options.h"

namespace lightrl {

// The model parameter's expert index when it belongs to an MoE expert
// ("...block_sparse_moe.experts.E...."), else -1.
int64_t ExpertOf(const std::string& name);

// Which parameters are replicated on every rank and which belong to which of `ep` expert
// shards: shard q holds experts [q * E / ep, (q + 1) * E / ep) of every MoE layer. Every
// shard must hold as many elements as the others.
struct ExpertShardPlan {
  std::vector<char> replicated;                   // by parameter
  std::vector<std::vector<size_t>> shard_params;  // [ep]: the shard's parameters, ascending
  int64_t shard_numel = 0;                        // elements of one shard

  static absl::StatusOr<ExpertShardPlan> Make(const std::vector<std::string>& names,
                                              const std::vector<int64_t>& numels,
                                              int64_t num_experts, int64_t ep);
};

class ExpertShards {
 public:
  // A collective of every rank of `group` (not owned): joins this rank's EP group, its
  // expert-TP group and the group of ranks that hold the same expert shard (GroupsOf of
  // ep x expert_tp). `sharded`: the model's parameters `names` hold only this rank's
  // experts (shard {ep, ep_rank, expert_tp, expert_tp_rank}); else every expert whole
  // (expert_tp must be 1), and the FP32 masters of other shards' experts are dropped
  // (their owners update them). Makes the AdamW of this rank's experts.
  static absl::StatusOr<std::unique_ptr<ExpertShards>> Create(
      ProcessGroup* group, int64_t ep, int64_t expert_tp, bool sharded, int64_t num_experts,
      const std::vector<std::string>& names, MasterWeights* masters,
      const OptimizerOptions& options, const torch::Device& device);

  const std::vector<char>& replicated() const { return replicated_; }
  // This rank's experts' parameters.
  const std::vector<size_t>& local() const { return local_; }
  int64_t ep() const { return ep_; }
  int64_t expert_tp() const { return expert_tp_; }
  bool sharded() const { return sharded_; }
  // This rank's expert shard, in [0, ep x expert_tp): EP rank x expert_tp + expert-TP rank.
  int64_t shard() const { return shard_; }
  // The model parameter `i`'s name.
  const std::string& name(size_t i) const { return names_[i]; }
  // The first ep x expert_tp ranks (one copy of the experts) write every shard's state once.
  bool writes_state() const { return group_->rank() < ep_ * expert_tp_; }
  ExpertParallelComm* comm() { return comm_.get(); }
  torch::optim::AdamW& optimizer() { return *optimizer_; }

  // After an update's last backward: this rank's experts' gradients (zero where no token
  // reached one) summed over their replicas; launched first, so that it overlaps the
  // replicated parameters' reduction, then awaited.
  void LaunchGradReduce(MasterWeights& masters);
  void WaitGradReduce();
  // Makes the reduced gradients those of the tensors this rank's AdamW updates, and drops
  // them after the update (they are views of a buffer the next update refills).
  void AttachGrads(MasterWeights& masters);
  void ReleaseGrads(MasterWeights& masters);
  // The squared norm of all experts' gradients, each shard counted once, the same on every
  // rank. A collective.
  double SquaredNorm();
  // Scales this rank's expert gradients by `factor` when it is below 1 (clipping).
  void ScaleGrads(double factor);
  // AdamW on this rank's experts; with replicated experts then the all-gather that brings
  // every rank's weights level (a collective of the EP group).
  void Step(double lr, MasterWeights& masters);

 private:
  ExpertShards() = default;
  void GatherExperts(MasterWeights& masters);

  ProcessGroup* group_ = nullptr;
  int64_t ep_ = 1, expert_tp_ = 1, shard_ = 0;
  bool sharded_ = false;
  ExpertShardPlan plan_;  // replicated experts: every shard's parameters
  std::vector<char> replicated_;
  std::vector<size_t> local_;
  int64_t local_numel_ = 0;
  std::vector<std::string> names_;
  std::unique_ptr<ProcessGroupExpertComm> comm_;
  c10::intrusive_ptr<c10d::Backend> replicas_;  // ranks holding this rank's experts; null: none
  // FP32: this rank's expert gradients (first local_numel_); with replicated experts
  // [ep * shard_numel] for the all-gather of the updated experts.
  torch::Tensor flat_;
  c10::intrusive_ptr<c10d::Work> grad_work_;
  std::unique_ptr<torch::optim::AdamW> optimizer_;
};

}  // namespace lightrl
