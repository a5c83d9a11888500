// Runs the policy's MiniMax module for inference over cached sequences: packed prefill
// that leaves each sequence's lightning states in its slot and its softmax-layer K/V in
// its pages, and a batched one-token decode step. Owns the state and KV pools (tensors);
// the scheduler owns which slot and pages belong to whom. Under tensor parallelism it runs
// one rank's shard: its slots and pages hold this rank's heads, its steps are collectives
// of the TP group and return the whole vocabulary's logits. Internal (torch) header.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <optional>
#include <vector>

#include "inference_engine/kv_cache.h"
#include "policy/minimax_model.h"
#include "policy/vocab_parallel.h"

namespace lightrl {

struct RunnerSequence {
  int64_t slot = 0;           // lightning-state slot
  const PageTable* pages = nullptr;
  std::vector<int32_t> tokens;  // prefill: the whole prompt; decode: the one new token
  int64_t position = 0;         // decode: position of that token
};

struct ModelRunnerOptions {
  int64_t num_slots = 1;  // lightning-state slots: the most sequences decoding at once
  int64_t num_pages = 1;  // KV pages of the softmax layers
  int64_t page_size = 64;
  // The longest sequence (prompt + generation) a slot may hold: sizes the device page
  // table of the kernel path. 0: the model's max_position_embeddings.
  int64_t max_model_len = 0;
  // On CUDA with bf16 weights (and a build with LIGHTRL_ENGINE_CUDA) the lightning layers
  // run the CUDA prefill and fused decode kernels and the softmax layers decode with the
  // paged-attention kernels; false keeps the torch ops, the reference path, everywhere.
  bool allow_cuda_kernels = true;
  // Kernel path only: a decode step replays a CUDA graph captured once per batch-size
  // bucket (the batch padded up to the bucket) instead of launching its ops one by one.
  bool cuda_graphs = true;
  // Kernel path only: prefills run on a stream of their own, beside the decode step queued
  // before them (see Prefill); false runs them on the caller's stream, after it.
  bool prefill_stream = true;
  // Kernel path only: EngineOptions::fuse_decode_epilogues.
  bool fuse_decode_epilogues = true;
  // numerics.batch_invariant: prefill and decode run the blocks of policy/invariant_model.h
  // (a token's logits the same bits whatever shares its step, and the same as the learner's
  // in that mode), not the kernel path. The decode step reads staged inputs and a page
  // table on the device as the kernel path's does; on CUDA with bf16 weights it replays a
  // CUDA graph per batch bucket (cuda_graphs), whose padding rows decode in a slot and a
  // page of their own.
  bool batch_invariant = false;
  // The TP group of a module sharded over TP (not owned; its size and rank the module's
  // shard), null for the whole model. The kernel path does not run sharded.
  TensorParallelComm* tensor_parallel = nullptr;
  // The EP group of a module whose experts are sharded over EP (not owned), null for the
  // whole model: every rank runs the same tokens, each token's experts on their ranks.
  ExpertParallelComm* expert_parallel = nullptr;
};

class ModelRunner {
 public:
  ModelRunner(MiniMaxForCausalLM module, const ModelRunnerOptions& options);
  ~ModelRunner();

  // Prefills each sequence from an empty state; returns FP32 logits of each sequence's last
  // token, [n, vocab]. With a prefill stream (uses_prefill_stream) it runs there: after the
  // work queued on the caller's stream before the last Decode, beside that decode step,
  // when Decode was the runner's last call (else after all of it); work queued on the
  // caller's stream after this call waits for it on the device. The sequences' slots and
  // pages must not be in that decode step's batch.
  torch::Tensor Prefill(const std::vector<RunnerSequence>& seqs);
  // Feeds one token per sequence at its position; returns FP32 logits [n, vocab].
  torch::Tensor Decode(const std::vector<RunnerSequence>& seqs);
  // Copies a sequence's cached context (states and the KV of its first `num_tokens`
  // positions) to another slot and pages: n samples share one prompt prefill.
  void Fork(int64_t from_slot, const PageTable& from, int64_t to_slot, const PageTable& to,
            int64_t num_tokens);

  // Bytes of one lightning-state slot and one KV page on a rank of a TP group of `tp` (its
  // share of the heads), for memory budgeting.
  static int64_t SlotBytes(const ModelConfig& config, int64_t tp = 1);
  static int64_t PageBytes(const ModelConfig& config, int64_t page_size, torch::ScalarType dtype,
                           int64_t tp = 1);

  torch::Device device() const { return device_; }
  // Whether the lightning layers run the CUDA kernels (else the torch ops).
  bool uses_cuda_kernels() const { return cuda_kernels_; }
  bool batch_invariant() const { return options_.batch_invariant; }
  // Whether decode steps replay CUDA graphs, and how many graphs are captured so far.
  bool uses_cuda_graphs() const {
    return options_.cuda_graphs &&
           (cuda_kernels_ || (staged_invariant_ && device_.is_cuda() &&
                              dtype_ == torch::kBFloat16 && ep_ == nullptr && tp_ == nullptr));
  }
  int64_t num_cuda_graphs() const;
  // Whether prefills run on a stream of their own, and the one the last prefill ran on
  // (none before the first).
  bool uses_prefill_stream() const { return cuda_kernels_ && options_.prefill_stream; }
  std::optional<c10::Stream> prefill_stream() const;

  // Whether a runner of a module on `device` in `dtype` with heads of `head_dim` would run
  // the CUDA kernels (the build has them, the shapes suit them, `allow_cuda_kernels`).
  static bool KernelPath(const torch::Device& device, torch::ScalarType dtype, int64_t head_dim,
                         bool allow_cuda_kernels);

  // Batch size a decode step of `batch` sequences runs at under CUDA graphs.
  static int64_t GraphBatch(int64_t batch, int64_t max_batch);

  // Attention data parallelism: the expert-parallel group spans several TP groups, each
  // generating its own sequences, so every forward's MoE blocks are collectives of all of
  // them and the runners step together (Engine::Generate).
  bool lockstep() const;
  // The largest value of each of `flags` over the expert-parallel group's ranks (a
  // collective of them): how the runners agree on a step's forwards.
  std::vector<int64_t> AnyRank(const std::vector<int64_t>& flags);
  // A forward of no tokens for a step this rank has nothing to run in: each layer's MoE
  // block on zero rows, joining the other runners' dispatches.
  void Idle();

 private:
  // Prefill's work on the current stream (Prefill picks the stream).
  torch::Tensor RunPrefill(const std::vector<RunnerSequence>& seqs);
  torch::Tensor PageIndex(const std::vector<RunnerSequence>& seqs, bool whole_prompt) const;
  // The embedding of `tokens`, the vocabulary-parallel one under TP.
  torch::Tensor Embed(const torch::Tensor& tokens);
  // FP32 logits [n, vocab] of final hidden states: under TP each rank's block of the
  // vocabulary, gathered over the group (an all-reduce of the blocks in place among
  // zeros, exact: every entry has one nonzero term), so every rank holds the same bits.
  torch::Tensor Logits(const torch::Tensor& hidden);
  // The partial sums of a row-parallel projection summed over the TP group (under TP).
  torch::Tensor ReduceRowParallel(const torch::Tensor& partial);
  torch::Tensor DecodeTorch(const std::vector<RunnerSequence>& seqs);
  // The batch-invariant mode's prefill, and its decode step over the first `batch` rows of
  // the staged inputs (the kernel path's buffers), capturable on CUDA as DecodeStep is
  // (model_runner_invariant.cc).
  torch::Tensor PrefillInvariant(const std::vector<RunnerSequence>& seqs);
  torch::Tensor DecodeStepInvariant(int64_t batch);
  // Inputs staged in fixed device buffers, page tables mirrored on the device.
  void StageInputs(const std::vector<RunnerSequence>* seqs, int64_t batch);
  void SyncPageTables(const std::vector<RunnerSequence>& seqs);
  // The kernel path and the mode on CUDA (defined in CUDA builds only): the step run
  // eagerly or replayed from a graph.
  torch::Tensor DecodeKernels(const std::vector<RunnerSequence>& seqs);
  torch::Tensor DecodeStep(int64_t batch);
  // The device arrays of expert weight addresses for the grouped expert GEMMs, rebuilt (and
  // the captured graphs dropped) whenever a parameter's storage has moved.
  void TrackWeights();

  MiniMaxForCausalLM module_;
  ModelRunnerOptions options_;
  ModelConfig config_;
  torch::Device device_;
  torch::ScalarType dtype_;
  int64_t page_size_;
  bool cuda_kernels_ = false;
  // The batch-invariant mode on CUDA: decode through the staged buffers (see
  // ModelRunnerOptions::batch_invariant); states_ and the pools hold one slot and one page
  // more, page_table_ one row more (num_slots: the padding rows', every entry the padding
  // page), and rope_cos_ / rope_sin_ are the mode's FP32 tables.
  bool staged_invariant_ = false;
  TensorParallelComm* tp_ = nullptr;
  ExpertParallelComm* ep_ = nullptr;
  // The MoE block of `layer` for the torch path: the block's own (null) or, under EP, the
  // replicated-token dispatch over ep_ (rows held alike by the TP group alone under
  // attention data parallelism: RowsGroup).
  DecoderLayerImpl::Block Moe(DecoderLayerImpl& layer) const;
  TensorParallelComm* RowsGroup() const;
  // The same in the batch-invariant mode (model_runner_invariant.cc).
  DecoderLayerImpl::Block InvariantExperts(DecoderLayerImpl& layer) const;
  // Per layer: lightning layers [slots, H, d, d] FP32; softmax layers K and V pools
  // [pages * page_size, KVH, d] in the compute dtype.
  std::vector<torch::Tensor> states_, k_pool_, v_pool_;

  // Kernel path and the mode. page_table_: [num_slots, max_pages] int32 on the device (row
  // = slot), with its host mirror (pinned for CUDA); mirrored_pages_[slot]: entries of that row already on the
  // device (reset when a slot gets a new sequence). step_inputs_: [3, num_slots] int64
  // (token, slot or -1 for padding, position) on the device, with a pinned host copy.
  torch::Tensor page_table_, page_table_host_, step_inputs_, step_inputs_host_;
  // The softmax layers' RoPE cos / sin rows for every position a slot may hold
  // ([max_len, rotary_dim] in the compute dtype), for the decode step's fused rotation;
  // undefined without softmax layers, rotary dims or fused epilogues.
  torch::Tensor rope_cos_, rope_sin_;
  std::vector<int64_t> mirrored_pages_;
  int64_t partition_tokens_ = 0, num_partitions_ = 0;
  // Per layer: [2E] int64 addresses of w1_0..w1_E-1, w3_0..w3_E-1 and [E] of w2_*; and the
  // data pointers of every parameter when they were taken.
  std::vector<torch::Tensor> expert_w13_, expert_w2_;
  std::vector<const void*> weight_addresses_;
  struct Graphs;
  std::unique_ptr<Graphs> graphs_;
};

}  // namespace lightrl
