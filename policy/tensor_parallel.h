// The Megatron operators of the tensor-parallel model (policy/minimax_model.h): the
// autograd functions that join a rank's column- and row-parallel layers, the RMSNorm over
// channels split across the TP group and the vocabulary-parallel embedding. Each is a
// collective of the TP group of `comm` (policy/vocab_parallel.h), in forward or backward
// as its comment says; every member calls it at the same point with the same shapes.
// Torch header, for torch-linking targets only; owns no parameters.
#pragma once

#include <torch/torch.h>

#include "policy/vocab_parallel.h"

namespace lightrl {

// Before a column-parallel layer: identity forward, all-reduce (sum) of the gradient in
// backward, since every rank's heads read the same replicated input.
torch::Tensor CopyToTensorParallel(const torch::Tensor& x, TensorParallelComm& comm);

// After a row-parallel layer: the all-reduce (sum) of the ranks' partial outputs forward,
// identity backward (the replicated output's gradient is already whole on every rank).
torch::Tensor ReduceFromTensorParallel(const torch::Tensor& x, TensorParallelComm& comm);

// Sequence parallelism (ForwardOptions::sequence_parallel): between the TP regions each
// rank holds a block of the tokens. Before a column-parallel layer, the ranks' blocks
// [n, H] joined into [tp n, H] in rank order; backward, the reduce-scatter of the
// gradient (the ranks' heads each give part of every token's) when `reduce_grad`, else
// (a gradient already whole and alike on every rank, as the vocabulary-parallel LM head
// gives its input) this rank's block of it.
torch::Tensor GatherSequence(const torch::Tensor& x, TensorParallelComm& comm, bool reduce_grad);

// The ranks' column blocks of x [N, c] joined into [N, tp c] in rank order (a 1-D x:
// its blocks [c] into [tp c]), each value exact; backward, this rank's block of a gradient
// already whole and alike on every rank (what follows is computed alike everywhere).
torch::Tensor GatherColumns(const torch::Tensor& x, TensorParallelComm& comm);

// Sequence parallelism after a computation every rank ran alike on all tokens [tp n, ...]:
// this rank's block of n rows; backward, the all-gather of the blocks' gradients (so the
// computation before it gets the same whole gradient on every rank).
torch::Tensor ScatterSequence(const torch::Tensor& x, TensorParallelComm& comm);

// After a row-parallel layer: the sum of the ranks' partial outputs [tp n, H], this
// rank's block of n tokens kept; backward, the all-gather of the blocks' gradients.
torch::Tensor ReduceScatterSequence(const torch::Tensor& x, TensorParallelComm& comm);

// RMSNorm over `full_dim` channels of which this rank holds x's last dimension and the
// matching block of `weight`: the mean of squares sums over the TP group in forward, and
// its gradient does in backward. FP32 statistics, as RMSNormImpl computes them.
torch::Tensor ShardedRmsNorm(const torch::Tensor& x, const torch::Tensor& weight, double eps,
                             int64_t full_dim, TensorParallelComm& comm);

// Embedding rows of `tokens` [T] from a vocabulary split in equal row blocks: `weight_shard`
// [vocab / tp, H] is block tp_rank(). Tokens of other blocks read zeros here; the
// all-reduce of the ranks' rows gives every rank the whole embedding (identity backward:
// each rank's rows get the gradient of their own tokens). With `sequence_parallel` the
// sum is reduce-scattered instead: this rank's block of T / tp tokens.
torch::Tensor VocabParallelEmbedding(const torch::Tensor& tokens, const torch::Tensor& weight_shard,
                                     TensorParallelComm& comm, bool sequence_parallel = false);

// The entropy of softmax(hidden @ W^T / temperature) [N] in FP32 for the vocabulary-
// parallel LM head of VocabParallelTokenLogprobs (same arguments but the targets). No
// gradient: statistics only.
torch::Tensor VocabParallelEntropy(const torch::Tensor& hidden, const torch::Tensor& weight_shard,
                                   double temperature, TensorParallelComm& comm);

}  // namespace lightrl
