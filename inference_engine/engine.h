// The inference engine: continuous batching of generation requests over the policy
// model, with lightning-state slots and a paged KV cache for the softmax layers, a memory
// budget that admits what fits and preempts (then resumes) rather than failing. Torch-free
// header; the same scheduler drives the CPU and CUDA backends. A rollout instance spanning
// several devices runs one engine per rank of its model-parallel group (EngineParallel).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "inference_engine/sampling_params.h"
#include "policy/policy_model.h"
#include "policy/tokenizer.h"

namespace lightrl {

class TensorParallelComm;   // policy/vocab_parallel.h
class ExpertParallelComm;   // policy/expert_parallel.h

// The model-parallel groups of a rollout instance this engine is one rank of. Each rank
// runs its own engine on its shard of the policy (PolicyModel::Load / Create with the
// rank's ShardCoords) with the same EngineOptions, and every rank's Generate gets the
// same requests in the same order: the scheduler is deterministic, so all ranks run the
// same steps on the same batches and their collectives line up. The comms are not owned
// and must outlive the engine; null: the model is not split that way.
struct EngineParallel {
  // The TP group (docs/distributed.md, "The engine"): attention by heads, the lightning
  // state slots and KV pages hold this rank's heads only, embedding and LM head by
  // vocabulary rows. Each step's logits are gathered over the group, so every rank
  // samples the same token from the same logits with the same per-sample RNG.
  TensorParallelComm* tensor_parallel = nullptr;
  // The EP group (an expert-parallel instance): each rank holds its experts only and every
  // token's MoE rows go to their experts' ranks and back (SparseMoeImpl::
  // ForwardReplicatedExpertParallel); every rank runs the same batch on the same tokens.
  // With tensor_parallel too the EP group is the TP group (each rank its heads, vocabulary
  // rows and experts), or several whole TP groups (attention data parallelism: each TP
  // group's engine generates its own batch, every MoE block dispatches all of their
  // tokens over the EP group, and the engines step together: every rank of the EP group
  // must be inside Generate at once, one with nothing to do with no requests). Under expert-TP (no tensor_parallel) the comm's ranks are its EP
  // groups over the expert-TP ranks, each rank its block of its experts' FFN width. The
  // torch path only.
  ExpertParallelComm* expert_parallel = nullptr;
};

struct EngineOptions {
  int64_t max_num_seqs = 64;          // sequences decoding at once (and state slots)
  int64_t max_prefill_tokens = 8192;  // prompt tokens per prefill step
  int64_t page_size = 64;             // tokens per KV page
  int64_t kv_cache_bytes = int64_t{1} << 30;  // memory for softmax-layer KV pages
  int64_t max_model_len = 0;          // prompt + generation; 0 = config's max positions
  // CUDA bf16 (kernel path): decode steps replay CUDA graphs captured per batch-size
  // bucket; false runs them eagerly (for debugging and comparison).
  bool cuda_graphs = true;
  // CUDA bf16 (kernel path): the prefill of newly admitted sequences runs on a stream of
  // its own, beside the running batch's decode step; false runs it after the decode on one
  // stream (the same outputs; for comparison).
  bool prefill_stream = true;
  // CUDA bf16 (kernel path): the decode step's lightning gate, norm and product run as one
  // kernel and its MoE weighted sum with the residual sum as another; false runs the
  // separate ops they replace (the same roundings but for the MoE sum's order; for
  // comparison).
  bool fuse_decode_epilogues = true;
  // numerics.batch_invariant: every token's logits and reported logprob are the same bits
  // whatever the batch (prefill chunks, decode batch sizes, preemption and re-prefill), and
  // the same as the learner's in that mode, on the CPU and on CUDA; slower (docs/config.md).
  bool batch_invariant = false;
  absl::Status Validate() const;
};

struct EngineProgress {
  int64_t requests_done = 0, requests_total = 0;
  int64_t tokens_generated = 0;
  int64_t active_seqs = 0;
  int64_t preemptions = 0;
};

struct EngineStats {
  int64_t prefill_tokens = 0;
  int64_t generated_tokens = 0;
  int64_t decode_steps = 0;
  int64_t prefill_steps = 0;
  // Prefill steps run on the prefill stream beside a decode step of the running batch.
  int64_t overlapped_prefill_steps = 0;
  int64_t preemptions = 0;
  int64_t num_pages = 0, num_slots = 0;
  int64_t slot_bytes = 0, page_bytes = 0, page_size = 0;
};

class Engine {
 public:
  // `policy` must outlive the engine; weight updates to it are seen by the next step.
  // `tokenizer` (optional, may be null) is needed for stop strings. A policy sharded over
  // TP needs `parallel.tensor_parallel`, a group of its shard's size in which it is the
  // shard's rank; creation is then a collective of that group (the ranks check that their
  // options agree). The CUDA kernel path (bf16 on CUDA) does not run sharded yet.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(PolicyModel* policy,
                                                        const EngineOptions& options,
                                                        const Tokenizer* tokenizer = nullptr,
                                                        const EngineParallel& parallel = {});
  ~Engine();

  // Runs every request to completion. Results are in request order; a request with bad
  // input, one whose sequence's sampling fails or whose logits turn non-finite (INTERNAL),
  // and one whose `cancelled` flag is raised (CANCELLED, seen at the next step) gets an
  // error status and no samples, its sequences free their slots and pages, and the rest
  // go on. Under TP every step is a collective of the group; a request cancelled on any
  // rank is cancelled on all of them at the same step.
  std::vector<GenerationResult> Generate(
      const std::vector<GenerationRequest>& requests,
      const std::function<void(const EngineProgress&)>& on_progress = {});

  const EngineStats& stats() const;

  struct Impl;

 private:
  explicit Engine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace lightrl
