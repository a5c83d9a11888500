// Expert parallelism for the MoE blocks: what a SparseMoe needs to run only its rank's
// shard of the experts on tokens from the other ranks. The collectives are an interface
// that the owner of the process group implements (the learner); policy/ knows no process
// groups. Torch header, for torch-linking targets only.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace lightrl {

// The collectives of one expert-parallel learner. EP groups of ep_size() ranks each hold
// every expert once; the EP group's i-th member holds experts
// [i * E / ep_size(), (i + 1) * E / ep_size()). Under expert-TP each expert's FFN width is
// split over the expert_tp_size() members of an expert-TP group, who hold the same experts.
// The groups are rl/parallel_layout.h's (GroupsOf); without expert-TP an EP group is
// ep_size() consecutive ranks. Routing statistics (capacity, aux loss) are counted over
// all world_size() ranks, whose tokens make up one batch.
class ExpertParallelComm {
 public:
  virtual ~ExpertParallelComm() = default;
  virtual int64_t rank() const = 0;
  virtual int64_t world_size() const = 0;
  virtual int64_t ep_size() const = 0;
  // This rank's index in its EP group.
  virtual int64_t ep_rank() const { return rank() % ep_size(); }
  // The world ranks of the EP group of world rank `rank`, in EP order.
  virtual std::vector<int64_t> EpGroupOf(int64_t rank) const;
  virtual int64_t expert_tp_size() const { return 1; }
  // This rank's index in its expert-TP group, and the group's world ranks in that order.
  virtual int64_t expert_tp_rank() const { return 0; }
  virtual std::vector<int64_t> ExpertTpGroup() const { return {rank()}; }

  // Every rank's `local` (1-D int64, the same length on every rank) as [world, n] int64
  // on the CPU. A collective of all ranks.
  virtual torch::Tensor AllGather(const torch::Tensor& local) = 0;
  // Sends rows [sum(send[0..q)), +send[q]) of `input` [N, ...] to peer q of this EP group
  // and returns the rows received, recv[q] from peer q, in peer order. A collective of the
  // EP group, which every member joins even with nothing to send or receive.
  virtual torch::Tensor AllToAll(const torch::Tensor& input, const std::vector<int64_t>& send,
                                 const std::vector<int64_t>& recv) = 0;
  // AllToAll within the expert-TP group (peer q = its q-th member). Only called when
  // expert_tp_size() > 1.
  virtual torch::Tensor ExpertTpAllToAll(const torch::Tensor& input,
                                         const std::vector<int64_t>& send,
                                         const std::vector<int64_t>& recv);
};

// Which group an autograd-visible all-to-all runs in.
enum class ExpertGroup { kEp, kExpertTp };

// AllToAll that autograd sees through: the backward sends the gradient back the way the
// rows came, so it is itself a collective of the group, run by every member's backward.
torch::Tensor ExpertAllToAll(const torch::Tensor& input, const std::vector<int64_t>& send,
                             const std::vector<int64_t>& recv, ExpertParallelComm& comm,
                             ExpertGroup group = ExpertGroup::kEp);

// Every member's `rows` [n_q, ...] of the expert-TP group, concatenated in member order
// (`sizes` [expert_tp]: every member's n_q). Backward: each member's rows get the sum of
// the gradients of their copies on all members (a reduce-scatter).
torch::Tensor ExpertTpAllGather(const torch::Tensor& rows, const std::vector<int64_t>& sizes,
                                ExpertParallelComm& comm);
// The inverse pattern: `partial` holds every member's rows (sizes[q] for member q, in
// member order); returns this member's rows summed over the group's partial values
// (a reduce-scatter, FP32 sums in member order). Backward: an all-gather.
torch::Tensor ExpertTpReduceScatter(const torch::Tensor& partial,
                                    const std::vector<int64_t>& sizes, ExpertParallelComm& comm);

// Who sends how many token-expert assignments where, from every rank's per-expert
// assignment counts. Capacity is the single-process rule applied to all ranks' tokens
// laid end to end in rank order: capacity = ceil(factor * T * top_k / E) per expert with
// T the tokens of all ranks, and an assignment is kept while fewer than `capacity` earlier
// assignments (lower ranks first, then token order) went to its expert.
struct ExpertDispatchPlan {
  int64_t total_tokens = 0;           // T over all ranks
  int64_t capacity = -1;              // per expert over all ranks; -1 = no dropping
  std::vector<int64_t> total_counts;  // [E] assignments before dropping, all ranks
  std::vector<int64_t> prefix;        // [E] this rank's: assignments on lower ranks
  std::vector<int64_t> kept;          // [E] this rank's assignments that are kept
  std::vector<int64_t> send;          // [ep] kept assignments to each EP peer's experts
  std::vector<int64_t> recv;          // [ep] kept assignments from each peer to ours
  // [ep][E / ep]: from peer q, assignments to our j-th expert, in the order they arrive.
  std::vector<std::vector<int64_t>> recv_by_expert;
};

// `counts` [world, E + 1] int64 on the CPU: each rank's assignments per expert, then its
// token count. `ep_group`: the world ranks of `rank`'s EP group in EP order.
ExpertDispatchPlan PlanExpertDispatch(const torch::Tensor& counts, int64_t top_k,
                                      double capacity_factor, int64_t rank,
                                      const std::vector<int64_t>& ep_group);
// The same for EP groups of `ep_size` consecutive ranks (no expert-TP).
ExpertDispatchPlan PlanExpertDispatch(const torch::Tensor& counts, int64_t top_k,
                                      double capacity_factor, int64_t rank, int64_t ep_size);

}  // namespace lightrl
