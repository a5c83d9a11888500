// A model-parallel learner's weights as whole tensors or checkpoint files: the collectives
// that gather every rank's shard (PolicyModel::CreateShard / LoadShard) into one whole
// model on rank 0, for the engine that generates there, and that write a sharded
// checkpoint (policy/sharded_checkpoint.h) from all ranks. Every rank's part is the
// slicing rule of policy/shard_spec.h applied to its ShardCoords, so any layout the model
// can be built for (experts, expert-TP, and TP once the model splits attention) goes
// through the same code. Torch-free.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/safetensors.h"
#include "policy/policy_model.h"
#include "policy/shard_spec.h"
#include "rl/distributed.h"

namespace lightrl {

// Every rank's ShardCoords (its model's shard()), on every rank: a collective.
absl::StatusOr<std::vector<ShardCoords>> AllShardCoords(ProcessGroup* group,
                                                        const PolicyModel& shard);

// A collective of all ranks: each rank sends the blocks of which it is the lowest holder
// (every block of the model once, whatever the ranks' coordinates) to rank 0, which
// assembles each tensor from them and replaces the weights of `whole` (rank 0's whole
// model; ignored elsewhere).
// Costs the whole model's bytes on rank 0; each rank's blocks go to rank 0 alone.
absl::Status GatherShards(ProcessGroup* group, const PolicyModel& shard, PolicyModel* whole);
// The same collective, rank 0 assembling the whole tensors in host memory only: `*whole`
// (rank 0's; ignored elsewhere) becomes every tensor of the model in FP32, sorted by name
// with its whole shape (ExportWeights' names, order and shapes). No device holds the whole
// model: how a sharded learner feeds a fleet's weight pushes.
absl::Status GatherShardsToHost(ProcessGroup* group, const PolicyModel& shard,
                                std::vector<PolicyModel::WeightTensor>* whole);

// A collective of all ranks: every file of the layout's coordinates (tp x ep x
// expert_tp) is written into `dir` by the lowest rank holding all of its blocks
// (WriteRankShards, tensors in `dtype`), then after a barrier rank 0 checks them and writes
// the index (WriteShardedIndex) and config.json. The checksum manifest is the caller's.
absl::Status SaveShards(ProcessGroup* group, const PolicyModel& shard, const std::string& dir,
                        DType dtype);

}  // namespace lightrl
