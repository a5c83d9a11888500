// The run configuration: one plain struct per section of the run's YAML file, with
// defaults, one comment per field, one table of its keys (common/config_table.h: key,
// member, doc, check) and a Validate() that runs the table's checks. The table is the
// only list of a section's keys: LoadRunConfig binds a file through it (resolving input
// paths against the file's directory, errors as "configs/x.yaml:14: rollout.group_size
// must be >= 2, got 1"), DescribeRunConfig writes it back, RunConfigKeys() lists it for
// the docs. Sections that are a library's options embed its struct (SamplingParams,
// OptimizerOptions, DataParallelOptions) rather than copying it. Torch-free; it owns no
// training, rollout or reward behaviour, only what the file says.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/config_table.h"
#include "common/json.h"
#include "common/tls_options.h"
#include "common/yaml.h"
#include "inference_engine/sampling_params.h"
#include "rl/advantages.h"
#include "rl/learner_options.h"
#include "rl/loss_options.h"
#include "rl/parallel_layout.h"

namespace lightrl {

// Validate() messages of the sections start with the field's name ("group_size must be
// >= 2, got 1"), RunConfig::Validate()'s with "section.field", so the loader can find the
// line the field came from. Each section's Table() is its list of keys: adding a key is a
// member, a row there (with its check) and a row in docs/config.md.

struct RunSection {
  // Shown in logs and metrics.
  std::string name = "run";
  // Where checkpoints, metrics and the rollout log go (required). The loader makes it
  // absolute against the working directory (not the YAML's directory: outputs belong
  // where the run is launched, inputs beside the config).
  std::string output_dir;
  // Seeds prompt order, sampling and initialisation unless those have their own.
  int64_t seed = 0;
  // RL optimizer steps (required, >= 1).
  int64_t steps = 0;
  // "cpu", "cuda" or "cuda:N".
  std::string device = "cpu";
  // Policy parameter dtype: "float32" or "bfloat16".
  std::string dtype = "float32";
  // Evaluate every this many steps; 0 = never (> 0 needs data.eval).
  int64_t eval_every = 0;
  // Prompts per evaluation; 0 = all of data.eval.
  int64_t eval_samples = 0;
  // Besides greedy decoding, sample this many responses per eval prompt the way rollouts
  // are sampled (rollout.temperature, top_p, top_k; fixed seeds) and report their mean
  // accuracy (eval/accuracy_sampled): the expected reward RL raises. 0 = greedy only.
  int64_t eval_sampled = 0;

  static const ConfigTable<RunSection>& Table();
  absl::Status Validate() const;
};

struct ModelSection {
  // A HuggingFace-format checkpoint directory (config.json + safetensors). Exactly one of
  // path and init_config is set.
  std::string path;
  // A config.json to build a randomly initialised model from (toy runs, tests).
  std::string init_config;
  // Seed of that random initialisation.
  int64_t init_seed = 0;
  // tokenizer.json; the loader defaults it to path/tokenizer.json when that exists.
  // Empty: no tokenizer configured.
  std::string tokenizer;

  static const ConfigTable<ModelSection>& Table();
  absl::Status Validate() const;
};

struct DataSection {
  // Training prompts, JSONL (required).
  std::string train;
  // Evaluation prompts, JSONL; empty = none.
  std::string eval;
  // JSON field of each line holding the prompt text.
  std::string prompt_key = "prompt";
  // JSON field holding the reference answer the reward checks; empty = no answers.
  std::string answer_key = "answer";
  // Shuffle prompt order each epoch (seeded by run.seed).
  bool shuffle = true;

  static const ConfigTable<DataSection>& Table();
  absl::Status Validate() const;
};

// The sampling keys (temperature, top_p, top_k, max_new_tokens, stop_strings,
// stop_token_ids, early_stop_window, early_stop_prob) are the engine's SamplingParams
// fields, embedded; its n and seed are not keys (n = group_size, the controller seeds).
struct RolloutSection : SamplingParams {
  RolloutSection() { max_new_tokens = 1024; }  // also DAPO's overlong L_max
  // Responses sampled per prompt (G in the advantage formula); >= 2 for a nonzero std.
  int64_t group_size = 8;
  // Prompt groups per optimizer step.
  int64_t prompts_per_step = 16;
  // Sequences the engine decodes at once.
  int64_t max_num_seqs = 64;
  // How many policy versions old a sample may be when trained on; 0 = on-policy.
  // Versions count optimizer updates: a step adds algorithm.minibatches of them.
  int64_t max_staleness = 0;
  // Generate the next steps' groups while the learner trains (in local mode on an engine
  // with its own copy of the weights). Needs max_staleness >= algorithm.minibatches;
  // max_staleness / minibatches steps of groups are generated ahead.
  bool async = false;
  // Under a sharded learner (parallel.tp, parallel.ep or both), generation runs on the
  // ranks' own shards: each TP (or EP) group an instance of engines, data-parallel copies
  // each their share of the batch (docs/distributed.md). No rank holds the whole model and
  // nothing is gathered after an update. Off: rank 0 keeps a whole model and gathers the
  // shards into it.
  bool sharded_engine = false;

  // The engine's options for one prompt: the embedded SamplingParams with n = group_size
  // and seed 0 (the controller sets a per-step seed).
  SamplingParams ToSamplingParams() const;
  static const ConfigTable<RolloutSection>& Table();
  // The sampling fields' checks are SamplingParams::Validate()'s.
  absl::Status Validate() const;
};

// A built-in reward kind (reward/reward_registry.h lists them).
bool IsRewardKind(const std::string& kind);

struct RewardSection;
// The built-in kinds a run scores with: `weights`' keys, else `kind` unless reward
// servers replace it.
std::vector<std::string> BuiltinRewardKinds(const RewardSection& reward);

// A reward server the router calls (YAML: reward.servers.NAME): one at `address`, or a
// Python function that the run serves itself (`python`, `function`).
struct RewardServerSection {
  // "host:port" of a lightrl.v1.RewardService server; required unless `python` is set.
  std::string address;
  // A Python file whose `function`(prompt, response, metadata) returns the score (a
  // number, or a dict with "score" and components); `lightrl run` serves it over
  // RewardService on loopback (reward/python/function_server.py), health-checks it
  // before the first step, restarts it up to `restarts` times when it dies and stops it
  // with the run. Excludes `address`.
  std::string python;
  std::string function = "score";
  // The interpreter that runs `python`; empty: the Python lightrl was built with.
  std::string interpreter;
  // Restarts of the managed server over the run; one more death fails the step.
  int64_t restarts = 3;
  // Its score's weight in the sum.
  double weight = 1.0;
  // Sent as the request's reward_kind hint; empty = the server's default.
  std::string reward_kind;
  // File holding the server's shared token; required off loopback.
  std::string auth_token_file;

  static const ConfigTable<RewardServerSection>& Table();
};

struct RewardSection {
  // The built-in reward when `weights` is empty.
  std::string kind = "arithmetic";
  // Combines several built-ins as sum(weight * reward); keys are reward kinds.
  std::map<std::string, double> weights;
  // Options of built-in kinds: kind -> a JSON object of that kind's options (YAML:
  // reward.options.KIND, e.g. length: {max_length: 4096, buffer: 1024}); kinds absent
  // here use their defaults. Checked against the kind's options in the reward registry.
  // The older key reward.format_pattern sets options.format.pattern.
  std::map<std::string, Json> options;
  // Seconds one attempt of a reward server call may take.
  double timeout_s = 30.0;
  // Attempts per reward server call (with backoff) before the step fails.
  int64_t max_attempts = 3;
  // Async mode: groups scored at once, each as soon as its generation returns, on threads
  // beside the trainer; 0 = the trainer scores a step's groups when it takes them.
  int64_t max_concurrent_groups = 4;
  // MiB of one Score request at most: the router splits a reward server's batch into calls
  // under it. Keep it at or below the servers' own limit (`lightrl reward-worker
  // --max-request-mb`, default 64; spawned reward workers get this value). In [1, 1024].
  int64_t max_request_mb = 64;
  // Seconds a reward server (reward.servers, or a spawned reward worker being restarted)
  // may stay unavailable before the step fails naming its address; while it is down,
  // attempts are retried without counting against max_attempts. 0 = no wait.
  double server_wait_s = 60.0;
  // Reward servers combined with the weighted built-ins: score = sum(weight * reward).
  std::map<std::string, RewardServerSection> servers;
  // Fields of each dataset row sent to reward servers as ScoreItem.metadata; "*" = every
  // field but data.prompt_key and data.answer_key, [] = none.
  std::vector<std::string> metadata_fields = {"*"};
  // KiB of one row's metadata at most; a bigger row fails the load naming file:line.
  int64_t metadata_max_kb = 64;

  // The options object of built-in kind `kind` (null when the config gives none: the
  // kind's defaults); what the in-process reward and a spawned worker are built from.
  Json OptionsFor(const std::string& kind) const;
  static const ConfigTable<RewardSection>& Table();
  absl::Status Validate() const;
};

// algorithm.truncated_is_cap's default: truncated IS against the engine's logprobs at
// kStaleTruncatedIsCap when samples can be stale (rollout.max_staleness > 0: async
// rollouts or fleet workers a version behind), off otherwise. RunConfig::ToLossOptions()
// resolves it.
inline constexpr double kTruncatedIsCapAuto = -1.0;
inline constexpr double kStaleTruncatedIsCap = 2.0;

PolicyLossOptions DefaultRunLossOptions();

struct AlgorithmSection {
  // The policy loss (YAML: loss, eps_low, eps_high, ppo_eps, dapo_eps_low, dapo_eps_high,
  // unified_mask, truncated_is_cap, kl_coef, dual_clip); see rl/loss_options.h. Here
  // truncated_is_cap defaults to kTruncatedIsCapAuto and kl_coef must stay 0.
  PolicyLossOptions loss = DefaultRunLossOptions();
  // Drop prompt groups whose rewards are all equal (they carry no gradient) and refill.
  bool dynamic_sampling = true;
  // Extra rollout rounds to refill a step's groups after dynamic sampling drops some.
  int64_t max_refill_rounds = 4;
  // Optimizer updates per generation batch (M1 used 16 off-policy minibatches).
  int64_t minibatches = 1;
  // DAPO's overlong filter (YAML: overlong.filter): mask out responses cut off at
  // rollout.max_new_tokens.
  bool overlong_filter = false;
  // DAPO's soft overlong penalty ramp, in tokens before rollout.max_new_tokens (YAML:
  // overlong.soft_buffer); 0 = off. RunConfig::ToOverlongOptions() combines the two.
  int64_t overlong_soft_buffer = 0;

  static const ConfigTable<AlgorithmSection>& Table();
  absl::Status Validate() const;
};

struct SftSection {
  // Supervised warm-up steps before RL; 0 = none.
  int64_t steps = 0;
  int64_t batch_size = 32;
  // Peak learning rate; warmup_steps ramp up to it linearly, then `schedule` (constant,
  // cosine or linear) decays it to min_lr_ratio * lr at the last SFT step.
  double lr = 1e-3;
  std::string schedule = "constant";
  int64_t warmup_steps = 0;
  double min_lr_ratio = 0.1;
  // JSONL of prompt/answer pairs; the loader defaults it to data.train.
  std::string data;

  static const ConfigTable<SftSection>& Table();
  absl::Status Validate() const;
};

struct CheckpointSection {
  // Save every this many steps; 0 = only at the end.
  int64_t every = 0;
  // Checkpoints kept on disk, the newest ones.
  int64_t keep = 2;
  // Saved weight dtype: "float32" or "bfloat16".
  std::string dtype = "float32";

  static const ConfigTable<CheckpointSection>& Table();
  absl::Status Validate() const;
};

// How the policy's numbers are computed.
struct NumericsSection {
  // The batch-invariant mode: the engine's per-token logprobs equal the learner's bit for
  // bit, whatever the batch composition (prompt lengths, decode batch sizes, prefill
  // steps, preemption), in FP32 and bf16: every op reduces in one fixed order per token
  // (policy/invariant_ops.h), on the CPU and on CUDA; slower (docs/config.md gives the cost).
  bool batch_invariant = false;

  static const ConfigTable<NumericsSection>& Table();
  absl::Status Validate() const;
};

struct LoggingSection {
  // metrics.jsonl in the run directory.
  bool jsonl = true;
  // TensorBoard event files in the run directory.
  bool tensorboard = true;
  // A progress line on the terminal.
  bool progress = true;

  static const ConfigTable<LoggingSection>& Table();
  absl::Status Validate() const;
};

// Where rollouts are generated. YAML section `fleet`.
struct FleetSection {
  // "local": the controller's own engine; "spawn": `rollout_workers` worker processes the
  // run starts on this machine; "cluster": workers started elsewhere (Slurm, Kubernetes)
  // register with the coordinator at coordinator_address.
  std::string mode = "local";
  // Worker processes in spawn mode.
  int64_t rollout_workers = 2;
  // Where the controller's coordinator listens; port 0 picks one (spawn mode).
  std::string coordinator_address = "127.0.0.1:0";
  // File holding the shared token for the coordinator and the workers; required when
  // coordinator_address is not loopback.
  std::string auth_token_file;
  // Rollout workers that must be registered before the first step, and how long to wait.
  int64_t min_workers = 1;
  double worker_wait_s = 300;
  // Prompt groups in flight per spawned worker.
  int64_t worker_capacity = 8;
  // Workers a prompt group may be tried on before the step fails.
  int64_t max_group_attempts = 3;
  // Weights pushed to the workers: "float32" or "bfloat16".
  std::string weight_dtype = "float32";
  // How new weights reach the workers: "grpc" (a chunked stream, anywhere) or "nccl"
  // (broadcast from the learner's GPU to GPU workers, in the policy's dtype; gRPC for
  // workers that join later and when a broadcast fails).
  std::string weight_sync = "grpc";
  // Spawn mode: also start one `lightrl reward-worker` process per built-in reward kind in
  // use; they register with the coordinator (role reward) and the controller scores
  // through them over gRPC instead of in its own process.
  bool spawn_reward_workers = false;
  // Restarts of each spawned reward worker over the run: one that dies is restarted on
  // its address, and the next death past this many fails the step naming the worker.
  int64_t reward_worker_restarts = 3;
  // Device of spawned workers: "cpu", "cuda" or "cuda:N".
  std::string worker_device = "cpu";
  // Spawn mode: each rollout worker is a tensor-parallel instance of this many processes
  // (`lightrl rollout-worker --tp N`; rank 0 serves, the others follow), rank t of worker k
  // on worker_device's entry k * N + t. They load the model the run starts from, which it
  // saves to OUTPUT_DIR/rollout-model first.
  int64_t rollout_tp = 1;
  // The same for an expert-parallel instance (`--ep N`: each rank holds 1/N of the
  // experts); with rollout_tp > 1, equal to it (`--tp N --ep N`).
  int64_t rollout_ep = 1;

  bool enabled() const { return mode != "local"; }
  static const ConfigTable<FleetSection>& Table();
  absl::Status Validate() const;
};

// The learner's processes (docs/distributed.md). YAML section `distributed`: the
// process group's keys here, the data-parallel ones of DataParallelOptions. RANK,
// WORLD_SIZE, MASTER_ADDR and MASTER_PORT, when set (torchrun, `lightrl run --nproc`,
// Slurm or Kubernetes), override rank, world_size, master_addr and master_port.
struct DistributedSection : DataParallelOptions {
  // Learner processes, one per GPU; rank 0 is also the controller. 1 = one process.
  int64_t world_size = 1;
  // This process's rank in [0, world_size).
  int64_t rank = 0;
  // Host and port of rank 0's rendezvous store.
  std::string master_addr = "127.0.0.1";
  int64_t master_port = 29500;
  // "auto" (nccl on CUDA, gloo on CPU), "gloo" or "nccl".
  std::string backend = "auto";
  // Seconds to wait for the other ranks at start-up and in any one collective.
  double timeout_s = 1800;
  // bucket_mb, zero1, grad_reduce_dtype and expert_parallel are the learner's
  // DataParallelOptions, embedded; expert_parallel must also divide world_size. It is
  // the older spelling of parallel.ep: the loader makes the two equal (docs/distributed.md).

  static const ConfigTable<DistributedSection>& Table();
  absl::Status Validate() const;
};

// TLS between the run's processes (YAML section `tls`; docs/security.md): used by every
// listener and connection of the controller whose address is not loopback (the cluster
// coordinator, the channels to rollout workers and to reward.servers), with the shared
// token still checked on top. Loopback ones (spawned workers, a local reward server) stay
// plaintext. Workers started elsewhere take the same files as --tls-cert, --tls-key,
// --tls-ca and --tls-client-auth. YAML keys: ca, cert, key, client_auth.
struct TlsSection : TlsOptions {
  // What the controller uses toward `address`: this section off loopback, none on it.
  TlsOptions For(const std::string& address) const;
  static const ConfigTable<TlsSection>& Table();
  absl::Status Validate() const;
};

struct RunConfig {
  RunSection run;
  ModelSection model;
  DataSection data;
  RolloutSection rollout;
  RewardSection reward;
  AlgorithmSection algorithm;
  OptimizerOptions optimizer;
  SftSection sft;
  CheckpointSection checkpoint;
  NumericsSection numerics;
  LoggingSection logging;
  FleetSection fleet;
  DistributedSection distributed;
  // YAML section `parallel`: the learner's layout (rl/parallel_layout.h), the keys
  // `lightrl plan` reads and prints. Only ep runs today; tp, expert_tp and
  // sequence_parallel are checked and planned but rejected by Validate().
  ParallelLayout parallel;
  TlsSection tls;
  // The YAML file this was loaded from; empty when built in code.
  std::string source;

  // The sections, one row each.
  static const ConfigTable<RunConfig>& Table();
  // Every section, then the checks across sections; messages start with "section.field".
  absl::Status Validate() const;
  // The learner's loss options: algorithm.loss with truncated_is_cap's auto resolved.
  PolicyLossOptions ToLossOptions() const;
  // The advantage code's overlong options: L_max = rollout.max_new_tokens, buffer =
  // algorithm.overlong_soft_buffer, DAPO's penalty 1.
  OverlongOptions ToOverlongOptions() const;
};

// Reads, binds and validates a run config. Rejects unknown keys (suggesting the closest
// known one), wrong types, out-of-range values, missing required keys and input files
// that do not exist; relative input paths are resolved against the YAML file's directory
// and stored absolute. Every error names the file, the line when known, and the key.
// `overrides` ("rollout.group_size=4", `lightrl run --set`) are applied over the file in
// order before binding (ApplyConfigOverride); errors about them name the --set.
absl::StatusOr<RunConfig> LoadRunConfig(const std::string& path,
                                        const std::vector<std::string>& overrides = {});

// Binds a parsed config (doc.source names its file) through the tables without
// validating it. Strict (LoadRunConfig) as ConfigSource::strict; not strict, required
// keys may be missing and input paths need not exist (`lightrl plan`).
absl::StatusOr<RunConfig> BindRunConfig(const YamlDocument& doc, bool strict);

// Every key of every section's table ("rollout.group_size", "algorithm.overlong.filter",
// "reward.servers.NAME.address"): what docs/config.md must list.
std::vector<std::string> RunConfigKeys();

// The resolved config as YAML (every field, defaults included) for the run directory;
// LoadRunConfig reads it back to the same config.
std::string DescribeRunConfig(const RunConfig& config);

}  // namespace lightrl
