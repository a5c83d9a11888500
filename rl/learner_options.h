// The learner's options: the optimizer (AdamW, its learning-rate schedule and the MoE
// training terms), how data-parallel ranks share the work, and the whole LearnerOptions.
// The run config embeds the first two as its `optimizer` and `distributed` sections, so
// each key is bound from the table here and validated once, by these Validate()s.
// Torch-free; it owns no training behaviour.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "common/config_table.h"
#include "rl/loss_options.h"

namespace lightrl {

// YAML section `optimizer`. Validate() messages start with the key ("lr must be > 0").
struct OptimizerOptions {
  // AdamW learning rate (peak, after warmup).
  double lr = 1e-6;
  // AdamW beta1, beta2 (M1: 0.9, 0.95); YAML `betas: [beta1, beta2]`.
  double beta1 = 0.9;
  double beta2 = 0.95;
  // AdamW epsilon; M1's 1e-15 keeps tiny-gradient updates from vanishing.
  double eps = 1e-15;
  double weight_decay = 0.0;
  // Global gradient-norm clip; 0 = off.
  double grad_clip = 1.0;
  // Learning-rate schedule after warmup: "constant", "cosine" or "linear".
  std::string schedule = "constant";
  int64_t warmup_steps = 0;
  // Where cosine/linear decay ends, as a fraction of lr.
  double min_lr_ratio = 0.1;
  // Weight of the MoE router's load-balancing loss.
  double aux_loss_coef = 0.001;
  // Expert capacity in training as a multiple of the even share, with token drop; 0 = no
  // capacity limit.
  double moe_capacity_factor = 0.0;
  // Activation checkpointing per decoder layer in training forwards: each layer keeps only
  // its input and runs again in backward (ForwardOptions::checkpoint_layers), about one
  // more forward's compute for the memory of every layer's activations. Same update.
  bool activation_checkpointing = false;
  // Optimizer steps the schedule spans; not a key: the trainer derives it from run.steps
  // and algorithm.minibatches.
  int64_t total_steps = 1;

  static const ConfigTable<OptimizerOptions>& Table();
  absl::Status Validate() const;
  double LearningRate(int64_t step) const;
};

// How the ranks of a data-parallel learner share the work; unused by a single process.
// The run config's `distributed` section extends it with the process-group keys.
struct DataParallelOptions {
  // Gradients are all-reduced in buckets of about this many MB (FP32), each launched from
  // the backward pass as soon as all its gradients are ready.
  double bucket_mb = 25;
  // ZeRO-1: each rank keeps the AdamW moments and FP32 master weights of 1/N of the
  // (flattened) parameters, updates that shard and all-gathers the parameters.
  bool zero1 = false;
  // The dtype gradients are summed over the ranks in: "float32" (the bf16 gradients are
  // widened first; exact to FP32 at any world size) or "bfloat16" (bf16 parameters only:
  // half the bytes on the wire, each reduction step rounds the partial sum to bf16, so the
  // error grows with the world size; with ZeRO-1 the shards step FP32 masters from the
  // bf16 sums and gather bf16 weights). docs/distributed.md.
  std::string grad_reduce_dtype = "float32";
  // Expert parallelism: blocks of this many consecutive ranks each hold every expert
  // once; rank i of a block computes 1/expert_parallel of each MoE layer's experts for
  // the whole block's tokens (all-to-all) and keeps their optimizer state. The MoE
  // capacity and aux loss are then counted over all ranks' tokens of a forward, and every
  // rank runs as many forwards as the rank with the most micro-batches. With a whole model
  // the weights stay replicated on every rank; with a model built for its shard
  // (PolicyModel::CreateShard, which also fixes expert_tp) each rank holds only its
  // experts (docs/distributed.md). Must divide the world size and the model's
  // num_local_experts; 1 = off.
  int64_t expert_parallel = 1;

  // Its rows, for the tables that embed it.
  static const ConfigTable<DataParallelOptions>& Table();
  absl::Status Validate() const;
};

struct LearnerOptions {
  PolicyLossOptions loss;
  OptimizerOptions optimizer;
  int64_t minibatches = 1;      // optimizer updates per generation batch
  int64_t max_tokens_per_forward = 16384;  // micro-batching of long batches
  // The temperature T the rollouts were sampled at: the learner's logprobs (old and
  // current) are log softmax(logits / T), the distribution the engine sampled from and
  // reported logprobs of. Must be > 0.
  double temperature = 1.0;
  // numerics.batch_invariant: the forward (old logprobs and training, with its exact
  // backward) runs the batch-invariant blocks (policy/invariant_model.h), so its logprobs
  // are the engine's in that mode bit for bit (CPU or CUDA; with expert parallelism, not
  // with sequence or expert-tensor parallelism).
  bool batch_invariant = false;
  // parallel.sequence_parallel: under tensor parallelism (tp > 1), norms, residuals and the
  // MoE run on each TP rank's block of the tokens (ForwardOptions::sequence_parallel), and
  // the replicated parameters' gradients are summed over the TP group after backward. No
  // token dropping (optimizer.moe_capacity_factor <= 0). Tensor parallelism with expert
  // parallelism needs it (each TP rank dispatches its own block of the tokens).
  bool sequence_parallel = false;
  DataParallelOptions data_parallel;
  // The parts' own Validate()s (messages "optimizer.lr ...", "data_parallel.bucket_mb
  // ...") and the learner's fields.
  absl::Status Validate() const;
};

}  // namespace lightrl
