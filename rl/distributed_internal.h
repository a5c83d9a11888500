// The torch side of ProcessGroup, for the learner's gradient and parameter collectives.
// Includes c10d's Backend interface (no Gloo or NCCL header), so only torch-linking code
// of rl/ includes it; it owns nothing the public header does not.
#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/torch.h>

#include <map>
#include <memory>
#include <vector>

#include "rl/distributed.h"

namespace lightrl {

struct ProcessGroup::Impl {
  DistributedOptions options;
  std::string backend_name;
  torch::Device device = torch::kCPU;  // where collective tensors live
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  int64_t broadcasts = 0;  // BroadcastBytes calls so far, the same on every rank
  // Process groups over some of the ranks (expert parallelism), by their ranks.
  std::map<std::vector<int64_t>, c10::intrusive_ptr<c10d::Backend>> subgroups;

  // A process group of `ranks` (world ranks, ascending, this rank among them) on the
  // same engine; the whole group for all ranks. Every member must ask for it before
  // using it, non-members never; asked again, the same one. Throws on failure.
  c10::intrusive_ptr<c10d::Backend> Subgroup(const std::vector<int64_t>& ranks);

  // This rank's layout groups, once ProcessGroup::JoinLayoutGroups made them.
  std::unique_ptr<LayoutGroups> layout;
  // The ranks of this rank's `group` (layout must be set).
  const std::vector<int64_t>& LayoutRanks(LayoutGroup group) const;
  // The process group of this rank's `group`: made by JoinLayoutGroups, nullptr for a
  // group of this rank alone. Throws before JoinLayoutGroups.
  c10::intrusive_ptr<c10d::Backend> LayoutBackend(LayoutGroup group);
};

}  // namespace lightrl
