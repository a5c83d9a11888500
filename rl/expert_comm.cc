#include "rl/expert_comm.h"

#include <numeric>

#include "rl/parallel_layout.h"

namespace lightrl {
namespace {

// The expert groups of `rank`: only ep and expert_tp matter to them.
LayoutGroups ExpertGroups(int64_t rank, int64_t world, int64_t ep_size, int64_t expert_tp) {
  ParallelLayout layout;
  layout.ep = ep_size;
  layout.expert_tp = expert_tp;
  auto groups = GroupsOf(layout, world, rank);
  TORCH_CHECK(groups.ok(), "expert parallel ", ep_size, " x expert-TP ", expert_tp, ": ",
              groups.status().message());
  return *std::move(groups);
}

torch::Tensor RunAllToAll(c10d::Backend& backend, int64_t size, const torch::Tensor& input,
                          const std::vector<int64_t>& send, const std::vector<int64_t>& recv,
                          const char* what) {
  TORCH_CHECK(static_cast<int64_t>(send.size()) == size && static_cast<int64_t>(recv.size()) == size,
              what, " all-to-all: ", send.size(), " send and ", recv.size(),
              " receive sizes for a group of ", size);
  auto in = input.contiguous();
  std::vector<int64_t> out_shape = in.sizes().vec();
  out_shape[0] = std::accumulate(recv.begin(), recv.end(), int64_t{0});
  auto out = torch::empty(out_shape, in.options());
  std::vector<int64_t> send_sizes = send, recv_sizes = recv;
  backend.alltoall_base(out, in, recv_sizes, send_sizes)->wait();
  return out;
}

}  // namespace

std::vector<int64_t> ProcessGroupExpertComm::EpGroupRanks(int64_t rank, int64_t world,
                                                          int64_t ep_size, int64_t expert_tp) {
  return ExpertGroups(rank, world, ep_size, expert_tp).ep;
}

std::vector<int64_t> ProcessGroupExpertComm::ReplicaRanks(int64_t rank, int64_t world,
                                                          int64_t ep_size, int64_t expert_tp) {
  return ExpertGroups(rank, world, ep_size, expert_tp).expert_dp;
}

ProcessGroupExpertComm::ProcessGroupExpertComm(ProcessGroup* group, int64_t ep_size,
                                               int64_t expert_tp)
    : group_(group), ep_size_(ep_size), expert_tp_(expert_tp) {
  const LayoutGroups g = ExpertGroups(group->rank(), group->world_size(), ep_size, expert_tp);
  // EP first, then expert-TP, on every rank (ProcessGroup::JoinLayoutGroups' order).
  ep_ = group->impl().Subgroup(g.ep);
  if (expert_tp > 1) expert_tp_group_ = group->impl().Subgroup(g.expert_tp);
}

int64_t ProcessGroupExpertComm::ep_rank() const { return (rank() % (ep_size_ * expert_tp_)) / expert_tp_; }

std::vector<int64_t> ProcessGroupExpertComm::EpGroupOf(int64_t r) const {
  return EpGroupRanks(r, world_size(), ep_size_, expert_tp_);
}

std::vector<int64_t> ProcessGroupExpertComm::ExpertTpGroup() const {
  std::vector<int64_t> ranks(expert_tp_);
  std::iota(ranks.begin(), ranks.end(), rank() - rank() % expert_tp_);
  return ranks;
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
  return RunAllToAll(*ep_, ep_size_, input, send, recv, "expert");
}

InstanceExpertComm::InstanceExpertComm(ProcessGroup* group, int64_t ep_size, int64_t expert_tp)
    : device_(group->impl().device), ep_size_(ep_size), expert_tp_(expert_tp) {
  const int64_t size = ep_size * expert_tp, first = group->rank() - group->rank() % size;
  rank_ = group->rank() - first;
  const LayoutGroups g = ExpertGroups(group->rank(), group->world_size(), ep_size, expert_tp);
  // EP, expert-TP, then the instance, on every rank (each kind's groups are disjoint).
  ep_ = group->impl().Subgroup(g.ep);
  if (expert_tp > 1) {
    expert_tp_group_ = group->impl().Subgroup(g.expert_tp);
    std::vector<int64_t> ranks(size);
    std::iota(ranks.begin(), ranks.end(), first);
    instance_ = group->impl().Subgroup(ranks);
  } else {
    instance_ = ep_;
  }
}

std::vector<int64_t> InstanceExpertComm::EpGroupOf(int64_t r) const {
  std::vector<int64_t> ranks;
  for (int64_t i = 0; i < ep_size_; ++i) ranks.push_back(i * expert_tp_ + r % expert_tp_);
  return ranks;
}

std::vector<int64_t> InstanceExpertComm::ExpertTpGroup() const {
  std::vector<int64_t> ranks(expert_tp_);
  std::iota(ranks.begin(), ranks.end(), rank_ - rank_ % expert_tp_);
  return ranks;
}

torch::Tensor InstanceExpertComm::AllGather(const torch::Tensor& local) {
  std::vector<at::Tensor> in{local.to(device_).contiguous()};
  std::vector<std::vector<at::Tensor>> out(1);
  for (int64_t r = 0; r < world_size(); ++r) out[0].push_back(torch::empty_like(in[0]));
  instance_->allgather(out, in)->wait();
  return torch::stack(out[0]).to(torch::kCPU);
}

torch::Tensor InstanceExpertComm::AllToAll(const torch::Tensor& input,
                                           const std::vector<int64_t>& send,
                                           const std::vector<int64_t>& recv) {
  return RunAllToAll(*ep_, ep_size_, input, send, recv, "expert");
}

torch::Tensor InstanceExpertComm::ExpertTpAllToAll(const torch::Tensor& input,
                                                   const std::vector<int64_t>& send,
                                                   const std::vector<int64_t>& recv) {
  TORCH_CHECK(expert_tp_group_, "expert-TP all-to-all without an expert-TP group");
  return RunAllToAll(*expert_tp_group_, expert_tp_, input, send, recv, "expert-TP");
}

torch::Tensor ProcessGroupExpertComm::ExpertTpAllToAll(const torch::Tensor& input,
                                                       const std::vector<int64_t>& send,
                                                       const std::vector<int64_t>& recv) {
  TORCH_CHECK(expert_tp_group_, "expert-TP all-to-all without an expert-TP group");
  return RunAllToAll(*expert_tp_group_, expert_tp_, input, send, recv, "expert-TP");
}

}  // namespace lightrl
