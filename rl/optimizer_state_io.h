// Checkpoint IO of the optimizer state: the update clock, the replicated parameters' state (one
// file, or one ZeRO-1 shard per rank) and the expert shards' (one file per shard), written
// atomically, with errors that say how a checkpoint was written. Owns the file names and
// archive keys; it reads and writes the parts' state and changes nothing else.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "rl/adamw.h"
#include "rl/distributed.h"
#include "rl/expert_shards.h"
#include "rl/zero_optimizer.h"

namespace lightrl {

// The parts whose state a checkpoint holds; none is owned.
struct OptimizerStateParts {
  UpdateClock* clock = nullptr;
  MasterWeights* masters = nullptr;
  // By parameter: replicated on every rank (the rest are experts, whose state `experts` holds).
  const std::vector<char>* replicated = nullptr;
  AdamW* adamw = nullptr;          // the replicated parameters' state; null under ZeRO-1
  ZeroOptimizer* zero = nullptr;   // ZeRO-1's shard of it; null without
  ExpertShards* experts = nullptr;  // null without expert parallelism
  ProcessGroup* group = nullptr;   // null for one process
  // This rank's data-parallel coordinates (its DP group's, under tensor parallelism).
  int64_t rank = 0, world = 1;
  // Tensor parallelism: each TP rank holds the state of its own parameter shards.
  int64_t tp = 1, tp_rank = 0;
};

// With N ranks both are collectives: without ZeRO-1 rank 0 writes `path` (every rank holds
// the same state); with ZeRO-1 rank r writes its shard to `path`.rank<r>-of-<N>, and loading
// needs the same N. With expert_parallel E, ranks 0..E-1 also write their experts' state to
// `path`.experts<r>-of-<E>, and loading needs the same E. Under tensor parallelism T, TP
// rank t does all of the above with `path`.tp<t>-of-<T> in place of `path`, and loading
// needs the same T.
absl::Status SaveOptimizerState(const std::string& path, const OptimizerStateParts& parts);
absl::Status LoadOptimizerState(const std::string& path, const OptimizerStateParts& parts);

}  // namespace lightrl
