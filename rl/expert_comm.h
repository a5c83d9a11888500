// The expert-parallel collectives of policy/expert_parallel.h over a learner's process
// group: routing counts gathered over all ranks, token all-to-alls within the EP group
// (ep_size consecutive ranks). Torch-side, for the learner and its tests; it owns no
// process group, only the sub-group handle it asked the group for.
#pragma once

#include "policy/expert_parallel.h"
#include "rl/distributed_internal.h"

namespace lightrl {

class ProcessGroupExpertComm final : public ExpertParallelComm {
 public:
  // Joins this rank's EP group (a collective of its members: every rank of `group`
  // creates its comm at the same point). `ep_size` must divide the world size.
  ProcessGroupExpertComm(ProcessGroup* group, int64_t ep_size);

  int64_t rank() const override { return group_->rank(); }
  int64_t world_size() const override { return group_->world_size(); }
  int64_t ep_size() const override { return ep_size_; }
  torch::Tensor AllGather(const torch::Tensor& local) override;
  torch::Tensor AllToAll(const torch::Tensor& input, const std::vector<int64_t>& send,
                         const std::vector<int64_t>& recv) override;

  // The ranks of this rank's EP group, and of the ranks that hold the same experts.
  static std::vector<int64_t> EpGroupRanks(int64_t rank, int64_t world, int64_t ep_size);
  static std::vector<int64_t> ReplicaRanks(int64_t rank, int64_t world, int64_t ep_size);

  c10d::Backend& ep_backend() { return *ep_; }

 private:
  ProcessGroup* group_;
  int64_t ep_size_;
  c10::intrusive_ptr<c10d::Backend> ep_;
};

}  // namespace lightrl
