// The learner's parallel layout (docs/distributed.md): how many ranks split each weight
// and which ranks form each group. One spec for the run config's `parallel:` section and
// `lightrl plan`, checked against the world size and the model, and the pure function
// that maps a rank to the ranks of its TP, DP, EP, expert-TP and expert-DP groups.
// Torch-free; rl/distributed.h creates the groups over Gloo or NCCL.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/config_table.h"
#include "policy/model_config.h"
#include "policy/shard_spec.h"

namespace lightrl {

// Dense weights (attention, norms, embedding, LM head) are split over `tp` consecutive
// ranks and replicated over `dp` = world / tp such groups. Experts are split over `ep`
// ranks (each holds num_local_experts / ep experts), each expert's FFN width over
// `expert_tp` ranks; ep x expert_tp ranks hold one copy of all experts, replicated
// world / (ep x expert_tp) times (the expert-DP group).
struct ParallelLayout {
  // Tensor parallel: attention heads (GQA by KV heads) and vocabulary rows per rank.
  int64_t tp = 1;
  // Data parallel: copies of the dense weights; 0 = world_size / tp.
  int64_t dp = 0;
  // Expert parallel: ranks that share one copy of the experts.
  int64_t ep = 1;
  // Each expert's FFN width split over this many ranks.
  int64_t expert_tp = 1;
  // Norms, residuals and the MoE input split along the sequence over the TP group
  // (reduce-scatter / all-gather in place of all-reduce); needs tp > 1.
  bool sequence_parallel = false;

  // YAML section `parallel` (tp, dp, ep, expert_tp, sequence_parallel).
  static const ConfigTable<ParallelLayout>& Table();
  // The values alone: sizes >= 1 (dp >= 0), sequence_parallel only with tp > 1.
  // Messages start with the key ("tp must be >= 1, got 0").
  absl::Status Validate() const;
  // Against `world_size` ranks: tp x dp = world_size (dp 0 taken as world_size / tp,
  // which tp must divide) and ep x expert_tp divides world_size. Messages name the
  // section's keys ("parallel.tp (3) must divide distributed.world_size (4)").
  absl::Status CheckWorld(int64_t world_size) const;
  // Against the model's shapes: tp divides num_attention_heads, num_key_value_heads and
  // vocab_size (no padding: the vocabulary is split in equal row blocks); ep divides
  // num_local_experts; expert_tp divides intermediate_size.
  absl::Status CheckModel(const ModelConfig& model) const;

  // dp for `world_size` ranks (dp itself when set).
  int64_t DataParallel(int64_t world_size) const { return dp > 0 ? dp : world_size / tp; }
  // Copies of each expert shard: world_size / (ep x expert_tp).
  int64_t ExpertDataParallel(int64_t world_size) const {
    return world_size / (ep * expert_tp);
  }
};

// One rank's groups, as world ranks in ascending order (each includes the rank).
// Dense: TP groups are blocks of tp consecutive ranks, DP groups take every tp-th rank
// (Megatron's order, TP innermost so that it stays inside a node). Experts: expert-TP
// groups are blocks of expert_tp consecutive ranks; an EP group is the ranks of one
// block of ep x expert_tp that share the position in their expert-TP group; expert-DP
// groups take every (ep x expert_tp)-th rank. With expert_tp 1, the EP and expert-DP
// groups are today's expert parallelism (rl/expert_comm.h: EpGroupRanks, ReplicaRanks).
struct LayoutGroups {
  std::vector<int64_t> tp;
  std::vector<int64_t> dp;
  std::vector<int64_t> ep;
  std::vector<int64_t> expert_tp;
  std::vector<int64_t> expert_dp;

  // This rank's index in each group.
  int64_t tp_rank = 0;
  int64_t dp_rank = 0;
  int64_t ep_rank = 0;
  int64_t expert_tp_rank = 0;
  int64_t expert_dp_rank = 0;
};

// The groups of `rank` in a world of `world_size` ranks; errors as CheckWorld, and for a
// rank outside [0, world_size).
absl::StatusOr<LayoutGroups> GroupsOf(const ParallelLayout& layout, int64_t world_size,
                                      int64_t rank);

// The rank's place in each model-parallel dimension, for policy/shard_spec.h.
ShardCoords ShardCoordsOf(const ParallelLayout& layout, const LayoutGroups& groups);

}  // namespace lightrl
