#include "rl/expert_comm.h"

#include <numeric>

namespace lightrl {

std::vector<int64_t> ProcessGroupExpertComm::EpGroupRanks(int64_t rank, int64_t world,
                                                          int64_t ep_size) {
  TORCH_CHECK(ep_size >= 1 && world % ep_size == 0, "expert_parallel ", ep_size,
              " does not divide the world size ", world);
  std::vector<int64_t> ranks(ep_size);
  std::iota(ranks.begin(), ranks.end(), rank - rank % ep_size);
  return ranks;
}

std::vector<int64_t> ProcessGroupExpertComm::ReplicaRanks(int64_t rank, int64_t world,
                                                          int64_t ep_size) {
  TORCH_CHECK(ep_size >= 1 && world % ep_size == 0, "expert_parallel ", ep_size,
              " does not divide the world size ", world);
  std::vector<int64_t> ranks;
  for (int64_t r = rank % ep_size; r < world; r += ep_size) ranks.push_back(r);
  return ranks;
}

ProcessGroupExpertComm::ProcessGroupExpertComm(ProcessGroup* group, int64_t ep_size)
    : group_(group), ep_size_(ep_size) {
  ep_ = group->impl().Subgroup(EpGroupRanks(group->rank(), group->world_size(), ep_size));
}

torch::Tensor ProcessGroupExpertComm::AllGather(const torch::Tensor& local) {
  auto& g = group_->impl();
  std::vector<at::Tensor> in{local.to(g.device).contiguous()};
  std::vector<std::vector<at::Tensor>> out(1);
  for (int64_t r = 0; r < world_size(); ++r) out[0].push_back(torch::empty_like(in[0]));
  g.backend->allgather(out, in)->wait();
  return torch::stack(out[0]).to(torch::kCPU);
}

torch::Tensor ProcessGroupExpertComm::AllToAll(const torch::Tensor& input,
                                               const std::vector<int64_t>& send,
                                               const std::vector<int64_t>& recv) {
  TORCH_CHECK(static_cast<int64_t>(send.size()) == ep_size_ &&
                  static_cast<int64_t>(recv.size()) == ep_size_,
              "expert all-to-all: ", send.size(), " send and ", recv.size(),
              " receive sizes for an EP group of ", ep_size_);
  auto in = input.contiguous();
  std::vector<int64_t> out_shape = in.sizes().vec();
  out_shape[0] = std::accumulate(recv.begin(), recv.end(), int64_t{0});
  auto out = torch::empty(out_shape, in.options());
  std::vector<int64_t> send_sizes = send, recv_sizes = recv;
  ep_->alltoall_base(out, in, recv_sizes, send_sizes)->wait();
  return out;
}

}  // namespace lightrl
