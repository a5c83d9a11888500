// The cluster plan behind `lightrl plan`: for a MiniMax hybrid model, a run config and a
// GPU count, the parallel layout (rollout vs learner GPUs, TP/EP/DP sizes), memory per GPU
// per role and an estimated time per RL step, every figure labelled as computed, measured
// (with its source) or assumed. Torch-free arithmetic on plain structs; it launches
// nothing and must not depend on the trainer, the engine or any device code.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/config_table.h"
#include "common/json.h"
#include "common/yaml.h"
#include "policy/model_config.h"
#include "rl/parallel_layout.h"
#include "rl/run_config.h"

namespace lightrl {

// One GPU kind and its interconnect. Built-in profiles carry their vendor source; YAML
// `plan.hardware` picks one and may override any field.
struct HardwareProfile {
  // Built-in profile name: "h800", "h100" or "h200".
  std::string profile = "h800";
  // HBM per GPU, decimal GB (1e9 bytes).
  double memory_gb = 80;
  // Dense bf16 tensor-core peak, TFLOP/s.
  double bf16_tflops = 989;
  // HBM bandwidth (vendor spec), TB/s.
  double hbm_tb_s = 3.35;
  // NVLink bandwidth per GPU (vendor spec, both directions summed), GB/s; ring
  // collectives inside a node move data at half of it per direction.
  double nvlink_gb_s = 400;
  int64_t gpus_per_node = 8;
  // Inter-node network per node, GB/s per direction (8 x 400 Gb/s InfiniBand = 400 GB/s).
  double ib_gb_s_per_node = 400;
  // Where the figures come from; printed beside them.
  std::string source;

  // A built-in profile by name.
  static absl::StatusOr<HardwareProfile> BuiltIn(const std::string& name);
  // YAML `plan.hardware`: `profile` first (it loads the built-in), then the overrides.
  static const ConfigTable<HardwareProfile>& Table();
  absl::Status Validate() const;
  // Per-direction bandwidth one GPU has for collectives, bytes/s.
  double nvlink_bytes_per_s() const { return nvlink_gb_s * 1e9 / 2; }
  double ib_bytes_per_s_per_gpu() const { return ib_gb_s_per_node * 1e9 / gpus_per_node; }
};

// Layout sizes; 0 means "let the plan choose".
struct PlanLayoutOptions {
  // GPUs that generate; the rest train. 0 = search multiples of the instance size for the
  // shortest step.
  int64_t rollout_gpus = 0;
  // GPUs serving one copy of the weights for generation (attention TP inside a node,
  // experts spread over all of them). 0 = search the sizes that divide the expert count.
  int64_t rollout_instance_gpus = 0;
  // Learner tensor parallel for attention, norms and the vocabulary (inside a node).
  // 0 = the largest size dividing gpus_per_node, heads, KV heads and vocab.
  int64_t learner_tp = 0;
  // Learner expert parallel: experts spread over this many ranks. 0 = the expert count.
  int64_t learner_ep = 0;
  // Each expert's FFN split along its width over this many GPUs (inside a node).
  int64_t learner_expert_tp = 1;

  static const ConfigTable<PlanLayoutOptions>& Table();
};

// Everything the plan reads besides the model. The workload fields mirror the run
// config's (rollout.*, algorithm.minibatches, optimizer.moe_capacity_factor); the rest is
// YAML `plan.*`.
struct PlanOptions {
  HardwareProfile hardware;
  PlanLayoutOptions layout;
  // From the run config.
  int64_t prompts_per_step = 16;
  int64_t group_size = 8;
  int64_t max_new_tokens = 1024;
  // Sequences one rollout instance decodes at once (rollout.max_num_seqs).
  int64_t max_num_seqs = 64;
  int64_t minibatches = 1;
  int64_t max_staleness = 0;
  // 0 = no capacity limit, counted as 1 (perfect balance).
  double moe_capacity_factor = 0;
  // Mean prompt length, tokens.
  int64_t prompt_tokens = 1024;
  // Mean response length; 0 = max_new_tokens (every response runs to the budget).
  int64_t mean_response_tokens = 0;
  // Tokens of one training micro-batch per tensor-parallel group (one long sequence).
  int64_t micro_batch_tokens = 81920;
  // Full per-layer activation checkpointing in the learner.
  bool activation_checkpointing = true;
  // Fraction of bf16 peak the learner's matmuls reach (assumed).
  double mfu = 0.35;
  // Per GPU: CUDA context, NCCL buffers, allocator slack, decode workspace (assumed), GB.
  double memory_reserve_gb = 4;
  // Host-side cost of one decode step beyond its memory traffic (assumed; a CUDA-graph
  // step), ms.
  double decode_step_overhead_ms = 2;
  // Tokens per chunk of the FP32 LM head + logprob in training.
  int64_t logits_chunk_tokens = 8192;
  // Latency of one small collective inside a node / across nodes, us: graph-captured NCCL
  // measured 12 us between two H200s (bench/plan/RESULTS.md); InfiniBand assumed.
  double nvlink_latency_us = 12;
  double ib_latency_us = 25;

  int64_t response_tokens() const {
    return mean_response_tokens > 0 ? mean_response_tokens : max_new_tokens;
  }
  // The keys of YAML `plan:` (the workload fields above are the run config's and are
  // read through its loader).
  static const ConfigTable<PlanOptions>& Table();
  // Messages start with the YAML key they concern ("plan.mfu must be in (0, 1], got 2").
  absl::Status Validate() const;
};

// Parameter counts by component, from the config's shapes.
struct ParamCounts {
  int64_t embedding = 0;
  int64_t lm_head = 0;
  int64_t lightning_attention = 0;  // qkv, output gate, out proj, norm of lightning layers
  int64_t softmax_attention = 0;    // q, k, v, o of softmax layers
  int64_t norms = 0;                // per-layer RMSNorm weights and the final norm
  int64_t router = 0;
  int64_t experts = 0;              // all experts of all layers
  int64_t expert_active = 0;        // the top-k experts one token runs, all layers

  int64_t attention() const { return lightning_attention + softmax_attention; }
  int64_t total() const;
  // Per token, embedding lookup and LM head included.
  int64_t active() const;
  // Per token without embedding and LM head (the convention of the published 45.9B).
  int64_t active_non_embedding() const;
  // Weights a token multiplies with (active minus embedding lookup and norms): 2x this is
  // the forward FLOPs per token outside attention scores.
  int64_t active_matmul() const;
};

ParamCounts CountParameters(const ModelConfig& config);

// Per-sequence decode memory of the whole model (no parallelism).
// Lightning state: lightning layers x heads x head_dim x head_dim x 4 B (FP32).
int64_t LightningStateBytesPerSequence(const ModelConfig& config);
// Softmax KV: softmax layers x KV heads x head_dim x (K, V) x 2 B (bf16), per token.
int64_t KvBytesPerToken(const ModelConfig& config);

// How a figure was obtained.
enum class Basis { kComputed, kMeasured, kExtrapolated, kAssumed };
const char* BasisName(Basis basis);

// One labelled number of the plan.
struct Figure {
  std::string name;
  double value = 0;
  std::string unit;
  Basis basis = Basis::kComputed;
  // The formula, or the file a measurement comes from and how it was scaled.
  std::string note;
};

struct PlanLayout {
  int64_t gpus = 0;
  int64_t nodes = 0;
  int64_t rollout_gpus = 0;
  int64_t rollout_instance_gpus = 0;
  int64_t rollout_instances = 0;
  int64_t rollout_tp = 0;           // attention TP inside a rollout instance
  int64_t rollout_attention_dp = 0; // attention replicas inside an instance (one per node)
  int64_t rollout_ep = 0;
  int64_t learner_gpus = 0;
  int64_t learner_tp = 0;
  int64_t learner_ep = 0;
  int64_t learner_expert_tp = 0;
  int64_t learner_dp = 0;           // replicas of attention/dense weights (ZeRO-1 group)
  int64_t learner_expert_dp = 0;    // replicas of each expert shard (its ZeRO-1 group)
  int64_t pipeline = 1;             // not used: see docs/scale.md
  // Why the rollout split is what it is ("searched", "plan.layout.rollout_gpus").
  std::string chosen_by;
};

struct RoleMemory {
  std::vector<Figure> terms;  // bytes per GPU
  double total_bytes = 0;
  double capacity_bytes = 0;
  bool fits() const { return total_bytes <= capacity_bytes; }
};

struct Plan {
  std::string model_source;
  HardwareProfile hardware;
  ParamCounts params;
  PlanLayout layout;
  RoleMemory learner_memory;
  // The learner's activations without checkpointing, for comparison (bytes per GPU).
  double learner_activations_no_checkpointing_bytes = 0;
  RoleMemory rollout_memory;
  // Sequences at full context one rollout instance can hold beside its weights.
  int64_t rollout_max_seqs_that_fit = 0;
  // The rates the estimate uses, with where they come from.
  std::vector<Figure> rates;
  std::vector<Figure> generation;  // seconds, parts of the generation phase
  std::vector<Figure> training;    // seconds, parts of the training phase
  std::vector<Figure> sync;        // seconds, weight broadcast
  double generation_s = 0;
  double training_s = 0;
  double sync_s = 0;
  double step_s = 0;
  // Step time with the per-decode-step overhead today's engine measured instead.
  double step_s_measured_engine_overhead = 0;
  int64_t tokens_per_step = 0;
  std::vector<std::string> warnings;

  bool fits() const { return learner_memory.fits() && rollout_memory.fits(); }
};

// The plan for `gpus` GPUs. Errors name the flag or YAML key and the value
// ("--gpus must be a multiple of plan.hardware.gpus_per_node (8), got 500").
absl::StatusOr<Plan> MakePlan(const ModelConfig& model, const PlanOptions& options,
                              int64_t gpus);

// A run config YAML read for planning: the run config's sections through the run loader
// (BindRunConfig, not strict: input files need not exist here), from which the model's
// config.json (model.path/config.json or model.init_config) and the workload keys of
// rollout/algorithm/optimizer come, and the `plan:` section through PlanOptions' table.
// The run config's `parallel:` tp, ep and expert_tp (ep also as the older
// distributed.expert_parallel), where given, fix learner_tp, learner_ep and
// learner_expert_tp (plan.layout giving another value is an error) and are checked
// against the model; parallel.dp is not read (the plan derives it from --gpus).
// Unknown keys anywhere are errors.
struct PlanInput {
  ModelConfig model;
  std::string model_source;
  PlanOptions options;
  YamlDocument doc;
};
absl::StatusOr<PlanInput> LoadPlanInput(const std::string& path);

// Every key of the `plan:` section ("plan.hardware.profile", "plan.mfu"): what
// docs/config.md must list.
std::vector<std::string> PlanConfigKeys();

// `status` with "file:line: " put in front when its message starts with a YAML key
// ("plan.layout.learner_ep ...") that `doc` has a line for.
absl::Status LocateInConfig(const YamlDocument& doc, const absl::Status& status);

// The plan's learner layout as the run config's `parallel:` section holds it (the keys
// `lightrl run` reads): tp, dp, ep and expert_tp, and sequence_parallel on with TP, as the
// plan's figures assume. Printed by PlanToJson (layout.parallel) and FormatPlan.
ParallelLayout LearnerParallelLayout(const PlanLayout& layout);

Json PlanToJson(const Plan& plan);
std::string FormatPlan(const Plan& plan);

}  // namespace lightrl
