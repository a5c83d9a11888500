// The MiniMax model's blocks in the batch-invariant numerics mode (numerics.batch_invariant,
// policy/invariant_ops.h): the same modules and weights as minimax_model.h, each block
// computed by the invariant ops, so that a token's hidden states, logits and logprob are
// the same bits in the learner's packed forward, the engine's prefill (any prompts beside
// it) and its decode steps (any batch). The learner's forward is InvariantForward; the
// engine composes the blocks around its cached attention (inference_engine/model_runner.cc).
// Internal (torch) header.
#pragma once

#include <torch/torch.h>

#include <tuple>
#include <utility>
#include <vector>

#include "policy/minimax_model.h"

namespace lightrl {

// The packed forward of MiniMaxForCausalLMImpl::Forward in the mode. Of `options`,
// moe_capacity_factor, expert_parallel (without expert-TP) and tensor_parallel (without
// sequence parallelism) are read. Under TP each rank computes its heads' projections,
// recurrences and attention (each value the whole model's), and every rank then computes
// the row-parallel steps whole (the lightning norm and gate, the output projections) on the
// heads' outputs and weights gathered over the group, so the hidden states are the
// one-process mode's bits on every rank.
ForwardOutput InvariantForward(MiniMaxForCausalLMImpl& model, const torch::Tensor& tokens,
                               const PackedLayout& layout, const ForwardOptions& options);

// One decoder layer around an attention block given the normalised input (the engine's
// cached attention, or the packed one). Returns (out, aux loss). `moe`, when set, replaces
// InvariantMoe (its aux loss then zero).
std::pair<torch::Tensor, torch::Tensor> InvariantDecoderLayer(
    DecoderLayerImpl& layer, const torch::Tensor& x, const DecoderLayerImpl::Block& attention,
    double moe_capacity_factor = 0, ExpertParallelComm* expert_parallel = nullptr,
    const DecoderLayerImpl::Block& moe = {});

// Lightning attention's fused projection: q, k, v [T, H, d] after SiLU; and the gate, norm
// and output projection of its output o [T, H * d]. With `tp` (the module a TP shard: its
// heads' o) the gate, the norm and the projection run whole on every rank over the
// gathered heads (a collective of the group); the output is the whole model's.
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> InvariantLightningProject(
    LightningAttentionImpl& attn, const torch::Tensor& x);
torch::Tensor InvariantLightningFinish(LightningAttentionImpl& attn, const torch::Tensor& x,
                                       const torch::Tensor& o, TensorParallelComm* tp = nullptr);

// o [T, K] times w^T [M, K] for a row-parallel projection: with `tp`, this rank's columns
// of o and of w, both gathered over the group and multiplied whole (a collective), so every
// rank gets the one-process product.
torch::Tensor InvariantRowParallelLinear(const torch::Tensor& o, const torch::Tensor& w,
                                         TensorParallelComm* tp = nullptr);

// Softmax attention's q [T, H, d], k, v [T, KVH, d] (q and k rotated at `positions`).
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> InvariantSoftmaxProject(
    SoftmaxAttentionImpl& attn, const torch::Tensor& x, const torch::Tensor& positions);
// The same with the rotary tables of those positions given (cos, sin [T, rotary_dim] FP32,
// as InvariantRopeTables makes them; rows of a table made once for every position serve).
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> InvariantSoftmaxProject(
    SoftmaxAttentionImpl& attn, const torch::Tensor& x, const torch::Tensor& cos,
    const torch::Tensor& sin);

// The MoE block: router, top-k, each expert on its tokens, the weighted sum over a token's
// k choices in order (FP32, rounded once). Returns (out, aux loss). With `expert_parallel`
// the experts run where they live (SparseMoeImpl::ForwardExpertParallel with these ops;
// under expert-TP each member gathers the down projection's blocks and computes whole
// rows): the output is the same bits, the aux loss this rank's part of it.
std::pair<torch::Tensor, torch::Tensor> InvariantMoe(SparseMoeImpl& moe, const torch::Tensor& x,
                                                     double capacity_factor,
                                                     ExpertParallelComm* expert_parallel = nullptr);

// The MoE block on tokens x that every member of comm's EP group holds alike (the ranks of
// an expert-parallel rollout instance): SparseMoeImpl::ForwardReplicatedExpertParallel with
// InvariantMoe's ops, no capacity rule (`rows_group` as there). Every member returns the
// one-process mode's bits.
torch::Tensor InvariantReplicatedMoe(SparseMoeImpl& moe, const torch::Tensor& x,
                                     ExpertParallelComm& comm,
                                     TensorParallelComm* rows_group = nullptr);

// FP32 logits [N, vocab] of hidden states [N, hidden], and log p(targets) at `temperature`
// (> 0). With `tp` (a vocabulary-parallel LM head) each rank's block of the vocabulary,
// gathered: every rank gets the whole logits (a collective).
torch::Tensor InvariantLogits(MiniMaxForCausalLMImpl& model, const torch::Tensor& hidden,
                              TensorParallelComm* tp = nullptr);
torch::Tensor InvariantLmHeadLogprobs(MiniMaxForCausalLMImpl& model, const torch::Tensor& hidden,
                                      const torch::Tensor& targets, double temperature);

}  // namespace lightrl
