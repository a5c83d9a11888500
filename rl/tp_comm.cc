#include "rl/tp_comm.h"

#include "rl/parallel_layout.h"

namespace lightrl {

ProcessGroupTpComm::ProcessGroupTpComm(ProcessGroup* group) : group_(group) {
  const LayoutGroups* groups = group->layout_groups();
  TORCH_CHECK(groups != nullptr,
              "tensor-parallel comm: the process group has not joined its layout groups");
  size_ = static_cast<int64_t>(groups->tp.size());
  rank_ = groups->tp_rank;
  tp_ = group->impl().LayoutBackend(LayoutGroup::kTp);
}

void ProcessGroupTpComm::AllReduce(torch::Tensor& t, Op op) {
  if (!tp_) return;
  auto& g = group_->impl();
  std::vector<at::Tensor> ts{t.to(g.device).contiguous()};
  c10d::AllreduceOptions ao;
  ao.reduceOp = op == Op::kSum ? c10d::ReduceOp::SUM : c10d::ReduceOp::MAX;
  tp_->allreduce(ts, ao)->wait();
  t = ts[0].to(t.device());
}

torch::Tensor ProcessGroupTpComm::AllGather(const torch::Tensor& local) {
  if (!tp_) return local.clone();
  auto& g = group_->impl();
  std::vector<at::Tensor> in{local.to(g.device).contiguous()};
  std::vector<std::vector<at::Tensor>> out(1);
  for (int64_t r = 0; r < size_; ++r) out[0].push_back(torch::empty_like(in[0]));
  tp_->allgather(out, in)->wait();
  return torch::cat(out[0]).to(local.device());
}

torch::Tensor ProcessGroupTpComm::ReduceScatter(const torch::Tensor& full) {
  TORCH_CHECK(full.dim() >= 1 && full.size(0) % size_ == 0, "ReduceScatter: ", full.sizes(),
              " rows do not split over ", size_, " ranks");
  if (!tp_) return full.clone();
  if (!native_reduce_scatter_) return TensorParallelComm::ReduceScatter(full);
  auto& g = group_->impl();
  const auto on = full.to(g.device).contiguous();
  std::vector<std::vector<at::Tensor>> in(1);
  for (const auto& block : on.chunk(size_, 0)) in[0].push_back(block.contiguous());
  std::vector<at::Tensor> out{torch::empty_like(in[0][0])};
  try {
    tp_->reduce_scatter(out, in)->wait();
  } catch (const c10::Error& e) {
    const std::string what = e.what_without_backtrace();
    if (what.find("not support") == std::string::npos) throw;
    native_reduce_scatter_ = false;
    return TensorParallelComm::ReduceScatter(full);
  }
  return out[0].to(full.device());
}

}  // namespace lightrl
