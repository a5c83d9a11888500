// A CPU (Gloo) process group whose ranks rendezvous on a loopback port: how the
// multi-rank tests make theirs, whether the ranks are processes or threads.
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "rl/distributed.h"

namespace lightrl {

inline absl::StatusOr<std::unique_ptr<ProcessGroup>> LoopbackGroup(int64_t rank, int64_t world,
                                                                   int64_t port,
                                                                   double timeout_s = 60) {
  DistributedOptions o;
  o.rank = rank;
  o.world_size = world;
  o.master_port = static_cast<int>(port);
  o.timeout_s = timeout_s;
  return ProcessGroup::Create(o, "cpu");
}

}  // namespace lightrl
