#include "policy/expert_parallel.h"

#include <algorithm>
#include <cmath>

namespace lightrl {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class AllToAllFunction : public torch::autograd::Function<AllToAllFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& input,
                               const std::vector<int64_t>& send, const std::vector<int64_t>& recv,
                               ExpertParallelComm* comm, int64_t group) {
    ctx->saved_data["send"] = send;
    ctx->saved_data["recv"] = recv;
    ctx->saved_data["group"] = group;
    // The comm outlives every graph built through it (the learner owns both); saved_data
    // holds IValues only, so it travels as an integer.
    ctx->saved_data["comm"] = static_cast<int64_t>(reinterpret_cast<intptr_t>(comm));
    return Run(*comm, group, input, send, recv);
  }

  static torch::Tensor Run(ExpertParallelComm& comm, int64_t group, const torch::Tensor& input,
                           const std::vector<int64_t>& send, const std::vector<int64_t>& recv) {
    return group == static_cast<int64_t>(ExpertGroup::kEp)
               ? comm.AllToAll(input, send, recv)
               : comm.ExpertTpAllToAll(input, send, recv);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto* comm = reinterpret_cast<ExpertParallelComm*>(
        static_cast<intptr_t>(ctx->saved_data["comm"].toInt()));
    const std::vector<int64_t> send = ctx->saved_data["send"].toIntVector();
    const std::vector<int64_t> recv = ctx->saved_data["recv"].toIntVector();
    return {Run(*comm, ctx->saved_data["group"].toInt(), grads[0].contiguous(), recv, send),
            torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

std::vector<int64_t> ExpertParallelComm::EpGroupOf(int64_t r) const {
  std::vector<int64_t> ranks(ep_size());
  for (int64_t i = 0; i < ep_size(); ++i) ranks[i] = r - r % ep_size() + i;
  return ranks;
}

torch::Tensor ExpertParallelComm::ExpertTpAllToAll(const torch::Tensor&,
                                                   const std::vector<int64_t>&,
                                                   const std::vector<int64_t>&) {
  TORCH_CHECK(false, "this expert-parallel comm has no expert-TP group");
}

torch::Tensor ExpertAllToAll(const torch::Tensor& input, const std::vector<int64_t>& send,
                             const std::vector<int64_t>& recv, ExpertParallelComm& comm,
                             ExpertGroup group) {
  return AllToAllFunction::apply(input, send, recv, &comm, static_cast<int64_t>(group));
}

torch::Tensor ExpertTpAllGather(const torch::Tensor& rows, const std::vector<int64_t>& sizes,
                                ExpertParallelComm& comm) {
  const int64_t n = comm.expert_tp_size();
  TORCH_CHECK(static_cast<int64_t>(sizes.size()) == n &&
                  sizes[comm.expert_tp_rank()] == rows.size(0),
              "expert-TP all-gather: ", rows.size(0), " rows here, sizes of ", sizes.size(),
              " members for a group of ", n);
  // Each member sends its rows to every member; the copies' gradients come back through
  // the reverse all-to-all and sum in repeat's backward.
  std::vector<int64_t> send(n, rows.size(0));
  std::vector<int64_t> repeat(rows.dim(), 1);
  repeat[0] = n;
  return ExpertAllToAll(rows.repeat(repeat), send, sizes, comm, ExpertGroup::kExpertTp);
}

torch::Tensor ExpertTpReduceScatter(const torch::Tensor& partial,
                                    const std::vector<int64_t>& sizes, ExpertParallelComm& comm) {
  const int64_t n = comm.expert_tp_size(), mine = sizes.at(comm.expert_tp_rank());
  std::vector<int64_t> recv(n, mine);
  auto got = ExpertAllToAll(partial, sizes, recv, comm, ExpertGroup::kExpertTp);
  std::vector<int64_t> shape = got.sizes().vec();
  shape[0] = mine;
  shape.insert(shape.begin(), n);
  return got.to(torch::kFloat32).view(shape).sum(0).to(partial.scalar_type());
}

ExpertDispatchPlan PlanExpertDispatch(const torch::Tensor& counts, int64_t top_k,
                                      double capacity_factor, int64_t rank, int64_t ep_size) {
  TORCH_CHECK(ep_size > 0 && counts.dim() == 2 && counts.size(0) % ep_size == 0,
              "expert dispatch: expert_parallel ", ep_size, " does not divide ",
              counts.size(0), " ranks");
  std::vector<int64_t> group(ep_size);
  for (int64_t i = 0; i < ep_size; ++i) group[i] = rank - rank % ep_size + i;
  return PlanExpertDispatch(counts, top_k, capacity_factor, rank, group);
}

ExpertDispatchPlan PlanExpertDispatch(const torch::Tensor& counts, int64_t top_k,
                                      double capacity_factor, int64_t rank,
                                      const std::vector<int64_t>& ep_group) {
  const int64_t ep_size = static_cast<int64_t>(ep_group.size());
  TORCH_CHECK(counts.dim() == 2 && counts.scalar_type() == torch::kInt64 && counts.is_cpu(),
              "expert dispatch: counts must be [world, E + 1] int64 on the CPU, got ",
              counts.sizes(), " ", counts.scalar_type());
  const int64_t world = counts.size(0), E = counts.size(1) - 1;
  TORCH_CHECK(E > 0 && ep_size > 0 && E % ep_size == 0 && world % ep_size == 0 && rank >= 0 &&
                  rank < world,
              "expert dispatch: ", E, " experts, ", world, " ranks and expert_parallel ", ep_size,
              " do not fit (rank ", rank, ")");
  auto c = counts.contiguous();
  const int64_t* a = c.data_ptr<int64_t>();
  auto count = [&](int64_t r, int64_t e) { return a[r * (E + 1) + e]; };

  ExpertDispatchPlan plan;
  plan.total_counts.assign(E, 0);
  for (int64_t r = 0; r < world; ++r) {
    plan.total_tokens += a[r * (E + 1) + E];
    for (int64_t e = 0; e < E; ++e) plan.total_counts[e] += count(r, e);
  }
  if (capacity_factor > 0 && plan.total_tokens > 0) {
    // The single-process expression, on all ranks' tokens.
    plan.capacity = static_cast<int64_t>(
        std::ceil(capacity_factor * static_cast<double>(plan.total_tokens * top_k) / E));
  }
  // kept[r][e] for every rank: each rank derives the whole plan from the same counts.
  std::vector<std::vector<int64_t>> kept(world, std::vector<int64_t>(E, 0));
  std::vector<int64_t> prefix(E, 0);
  for (int64_t r = 0; r < world; ++r) {
    for (int64_t e = 0; e < E; ++e) {
      kept[r][e] = plan.capacity < 0
                       ? count(r, e)
                       : std::clamp<int64_t>(plan.capacity - prefix[e], 0, count(r, e));
      if (r == rank) plan.prefix.push_back(prefix[e]);
      prefix[e] += count(r, e);
    }
  }
  plan.kept = kept[rank];
  const int64_t per_rank = E / ep_size;
  const int64_t me = std::find(ep_group.begin(), ep_group.end(), rank) - ep_group.begin();
  TORCH_CHECK(me < ep_size, "expert dispatch: rank ", rank, " is not in its EP group");
  plan.send.assign(ep_size, 0);
  plan.recv.assign(ep_size, 0);
  plan.recv_by_expert.assign(ep_size, std::vector<int64_t>(per_rank, 0));
  for (int64_t q = 0; q < ep_size; ++q) {
    for (int64_t j = 0; j < per_rank; ++j) {
      plan.send[q] += kept[rank][q * per_rank + j];
      plan.recv_by_expert[q][j] = kept[ep_group[q]][me * per_rank + j];
      plan.recv[q] += plan.recv_by_expert[q][j];
    }
  }
  return plan;
}

}  // namespace lightrl
