// The torch side of ProcessGroup, for the learner's gradient and parameter collectives.
// Includes c10d's Backend interface (no Gloo or NCCL header), so only torch-linking code
// of rl/ includes it; it owns nothing the public header does not.
#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/torch.h>

#include "rl/distributed.h"

namespace lightrl {

struct ProcessGroup::Impl {
  DistributedOptions options;
  std::string backend_name;
  torch::Device device = torch::kCPU;  // where collective tensors live
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  int64_t broadcasts = 0;  // BroadcastBytes calls so far, the same on every rank
};

}  // namespace lightrl
