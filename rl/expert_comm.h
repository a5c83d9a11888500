// The expert-parallel collectives of policy/expert_parallel.h over a learner's process
// group: routing counts gathered over all ranks, token all-to-alls within the EP group and,
// under expert-TP, within the expert-TP group (the groups of rl/parallel_layout.h's
// GroupsOf). Torch-side, for the learner and its tests; it owns no process group, only
// the sub-group handles it asked the group for.
#pragma once

#include "policy/expert_parallel.h"
#include "rl/distributed_internal.h"

namespace lightrl {

class ProcessGroupExpertComm final : public ExpertParallelComm {
 public:
  // Joins this rank's EP group and, with expert_tp > 1, its expert-TP group (a collective
  // of their members: every rank of `group` creates its comm at the same point).
  // ep x expert_tp must divide the world size.
  ProcessGroupExpertComm(ProcessGroup* group, int64_t ep_size, int64_t expert_tp = 1);

  int64_t rank() const override { return group_->rank(); }
  int64_t world_size() const override { return group_->world_size(); }
  int64_t ep_size() const override { return ep_size_; }
  int64_t ep_rank() const override;
  std::vector<int64_t> EpGroupOf(int64_t rank) const override;
  int64_t expert_tp_size() const override { return expert_tp_; }
  int64_t expert_tp_rank() const override { return rank() % expert_tp_; }
  std::vector<int64_t> ExpertTpGroup() const override;
  torch::Tensor AllGather(const torch::Tensor& local) override;
  torch::Tensor AllToAll(const torch::Tensor& input, const std::vector<int64_t>& send,
                         const std::vector<int64_t>& recv) override;
  torch::Tensor ExpertTpAllToAll(const torch::Tensor& input, const std::vector<int64_t>& send,
                                 const std::vector<int64_t>& recv) override;

  // The ranks of `rank`'s EP group, and of the ranks that hold the same expert shard (its
  // expert-DP group), as GroupsOf gives them.
  static std::vector<int64_t> EpGroupRanks(int64_t rank, int64_t world, int64_t ep_size,
                                           int64_t expert_tp = 1);
  static std::vector<int64_t> ReplicaRanks(int64_t rank, int64_t world, int64_t ep_size,
                                           int64_t expert_tp = 1);

  c10d::Backend& ep_backend() { return *ep_; }

 private:
  ProcessGroup* group_;
  int64_t ep_size_, expert_tp_;
  c10::intrusive_ptr<c10d::Backend> ep_, expert_tp_group_;
};

// One rollout instance's expert ranks of a process group as a world of their own: the
// ep x expert_tp consecutive ranks that hold every expert's every block once (one EP group
// without expert-TP), ranks 0 .. ep x expert_tp - 1 in group order, EP and expert-TP groups
// as ProcessGroupExpertComm's. The comm of one of several rollout instances over a
// learner's ranks (data-parallel copies), whose collectives, the routing counts' gather
// included, stay within the instance while the other copies run other batches.
class InstanceExpertComm final : public ExpertParallelComm {
 public:
  // Joins this rank's EP group, expert-TP group and instance (a collective of all ranks of
  // `group`, as ProcessGroupExpertComm's constructor).
  InstanceExpertComm(ProcessGroup* group, int64_t ep_size, int64_t expert_tp = 1);

  int64_t rank() const override { return rank_; }
  int64_t world_size() const override { return ep_size_ * expert_tp_; }
  int64_t ep_size() const override { return ep_size_; }
  int64_t ep_rank() const override { return rank_ / expert_tp_; }
  std::vector<int64_t> EpGroupOf(int64_t rank) const override;
  int64_t expert_tp_size() const override { return expert_tp_; }
  int64_t expert_tp_rank() const override { return rank_ % expert_tp_; }
  std::vector<int64_t> ExpertTpGroup() const override;
  torch::Tensor AllGather(const torch::Tensor& local) override;
  torch::Tensor AllToAll(const torch::Tensor& input, const std::vector<int64_t>& send,
                         const std::vector<int64_t>& recv) override;
  torch::Tensor ExpertTpAllToAll(const torch::Tensor& input, const std::vector<int64_t>& send,
                                 const std::vector<int64_t>& recv) override;

 private:
  torch::Device device_;
  int64_t ep_size_, expert_tp_, rank_;
  c10::intrusive_ptr<c10d::Backend> ep_, expert_tp_group_, instance_;
};

}  // namespace lightrl
