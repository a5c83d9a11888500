// The tensor-parallel all-reduces of policy/vocab_parallel.h over a learner's process
// group: this rank's TP group of the layout the group joined (ProcessGroup::
// JoinLayoutGroups). Torch-side, for the learner and its tests; it owns no process group.
#pragma once

#include "policy/vocab_parallel.h"
#include "rl/distributed_internal.h"

namespace lightrl {

class ProcessGroupTpComm final : public TensorParallelComm {
 public:
  // `group` must have joined its layout groups; it must outlive this comm.
  explicit ProcessGroupTpComm(ProcessGroup* group);

  int64_t tp_size() const override { return size_; }
  int64_t tp_rank() const override { return rank_; }
  void AllReduce(torch::Tensor& t, Op op) override;
  // The backend's all-gather and reduce-scatter (Gloo and NCCL have both), each moving
  // 1/tp of the all-reduce's bytes. A backend without reduce-scatter falls back to the
  // base class's all-reduce, once and for good.
  torch::Tensor AllGather(const torch::Tensor& local) override;
  torch::Tensor ReduceScatter(const torch::Tensor& full) override;
  // Whether ReduceScatter runs the backend's own (false after a fallback).
  bool native_reduce_scatter() const { return native_reduce_scatter_; }

 private:
  bool native_reduce_scatter_ = true;
  ProcessGroup* group_;
  int64_t size_ = 1;
  int64_t rank_ = 0;
  c10::intrusive_ptr<c10d::Backend> tp_;  // null for a TP group of one
};

}  // namespace lightrl
