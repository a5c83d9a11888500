// Expert parallelism for the MoE blocks: what a SparseMoe needs to run only its rank's
// shard of the experts on tokens from the other ranks. The collectives are an interface
// that the owner of the process group implements (the learner); policy/ knows no process
// groups. Torch header, for torch-linking targets only.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace lightrl {

// The collectives of one expert-parallel learner. Ranks form blocks of ep_size()
// consecutive ranks (EP groups); within a block rank i holds experts
// [i * E / ep_size(), (i + 1) * E / ep_size()). Routing statistics (capacity, aux loss)
// are counted over all world_size() ranks, whose tokens make up one batch.
class ExpertParallelComm {
 public:
  virtual ~ExpertParallelComm() = default;
  virtual int64_t rank() const = 0;
  virtual int64_t world_size() const = 0;
  virtual int64_t ep_size() const = 0;
  int64_t ep_rank() const { return rank() % ep_size(); }

  // Every rank's `local` (1-D int64, the same length on every rank) as [world, n] int64
  // on the CPU. A collective of all ranks.
  virtual torch::Tensor AllGather(const torch::Tensor& local) = 0;
  // Sends rows [sum(send[0..q)), +send[q]) of `input` [N, ...] to peer q of this EP group
  // and returns the rows received, recv[q] from peer q, in peer order. A collective of the
  // EP group, which every member joins even with nothing to send or receive.
  virtual torch::Tensor AllToAll(const torch::Tensor& input, const std::vector<int64_t>& send,
                                 const std::vector<int64_t>& recv) = 0;
};

// AllToAll that autograd sees through: the backward sends the gradient back the way the
// rows came, so it is itself a collective of the EP group, run by every member's backward.
torch::Tensor ExpertAllToAll(const torch::Tensor& input, const std::vector<int64_t>& send,
                             const std::vector<int64_t>& recv, ExpertParallelComm& comm);

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
// token count.
ExpertDispatchPlan PlanExpertDispatch(const torch::Tensor& counts, int64_t top_k,
                                      double capacity_factor, int64_t rank, int64_t ep_size);

}  // namespace lightrl
