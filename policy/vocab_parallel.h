// The vocabulary-parallel LM head's chosen-token logprob: each tensor-parallel rank holds
// a block of vocab / tp rows of the LM head, and log p(target | hidden) is computed in
// FP32 across the ranks without gathering the [N, vocab] logits: the log-softmax takes an
// all-reduce of the row maxima and one of the sums of exp, the chosen token's logit comes
// from the rank owning it (an all-reduce of a masked value). The collectives are an
// interface that the owner of the process group implements (rl/tp_comm.h); policy/ knows
// no process groups. Torch header, for torch-linking targets only.
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace lightrl {

// The all-reduces of one tensor-parallel group.
class TensorParallelComm {
 public:
  enum class Op { kSum, kMax };
  virtual ~TensorParallelComm() = default;
  virtual int64_t tp_size() const = 0;
  virtual int64_t tp_rank() const = 0;
  // In place, over the TP group; every member calls it with the same shape.
  virtual void AllReduce(torch::Tensor& t, Op op) = 0;
  // Sequence parallelism's collectives along dim 0 (the tokens), members in rank order:
  // the ranks' blocks [n, ...] joined into [tp n, ...], and the sum of the ranks' [tp n,
  // ...] with this rank's block of n rows kept. By default one all-reduce each (exact:
  // the other ranks' rows are zeros, or the block of the same sum); a process group with
  // native all-gather and reduce-scatter moves 1/tp of that.
  virtual torch::Tensor AllGather(const torch::Tensor& local);
  virtual torch::Tensor ReduceScatter(const torch::Tensor& full);
};

// log softmax(hidden @ W^T / temperature)[i, targets[i]] in FP32, for W [vocab, H] split
// in tp_size() equal row blocks: `weight_shard` [vocab / tp, H] is block tp_rank(), rows
// [tp_rank() * vocab / tp, ...). hidden [N, H] (the same on every member), targets [N]
// int64 in [0, vocab). Returns [N] FP32, the same on every member; a collective of the
// TP group. Differentiable: the backward gives `weight_shard` the gradient of its rows
// (no communication) and `hidden` its whole gradient (the shards' parts all-reduced), so
// every member's backward joins one all-reduce. `comm` must outlive the backward.
torch::Tensor VocabParallelTokenLogprobs(const torch::Tensor& hidden,
                                         const torch::Tensor& weight_shard,
                                         const torch::Tensor& targets, double temperature,
                                         TensorParallelComm& comm);

}  // namespace lightrl
