#include "rl/run_config.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "reward/reward_registry.h"

namespace lightrl {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

namespace fs = std::filesystem;

// A scratch tree:  root/configs/models/tiny.json, root/data/{train,eval}.jsonl,
// root/ckpt/{config.json,tokenizer.json}; configs are written to root/configs/.
class RunConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = JoinPath(::testing::TempDir(), "run_config_test.XXXXXX");
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    root_ = fs::path(tmpl).lexically_normal().string();
    ASSERT_TRUE(MakeDirs(Path("configs/models")).ok());
    ASSERT_TRUE(MakeDirs(Path("data")).ok());
    ASSERT_TRUE(MakeDirs(Path("ckpt")).ok());
    Write("configs/models/tiny.json", "{}");
    Write("data/train.jsonl", "{\"prompt\": \"1+1\", \"answer\": \"2\"}\n");
    Write("data/eval.jsonl", "{\"prompt\": \"2+2\", \"answer\": \"4\"}\n");
    Write("ckpt/config.json", "{}");
    Write("ckpt/tokenizer.json", "{}");
  }
  void TearDown() override { fs::remove_all(root_); }

  std::string Path(const std::string& rel) const { return JoinPath(root_, rel); }
  void Write(const std::string& rel, const std::string& text) {
    ASSERT_TRUE(WriteFileAtomic(Path(rel), text).ok()) << rel;
  }

  // The smallest valid config, with room to add keys to run, model and data.
  static std::string Minimal(const std::string& run_extra = "",
                             const std::string& data_extra = "",
                             const std::string& model = "  init_config: models/tiny.json\n") {
    return absl::StrCat("run:\n  output_dir: out\n  steps: 3\n", run_extra, "model:\n", model,
                        "data:\n  train: ../data/train.jsonl\n", data_extra);
  }

  absl::StatusOr<RunConfig> Load(const std::string& yaml) {
    Write("configs/x.yaml", yaml);
    return LoadRunConfig(Path("configs/x.yaml"));
  }

  std::string LoadError(const std::string& yaml) {
    absl::StatusOr<RunConfig> config = Load(yaml);
    EXPECT_FALSE(config.ok()) << "loaded:\n" << yaml;
    return config.ok() ? std::string() : std::string(config.status().message());
  }

  // "<config path>:<line of the first line containing needle>: ".
  std::string At(const std::string& yaml, const std::string& needle) const {
    size_t pos = yaml.find(needle);
    EXPECT_NE(pos, std::string::npos) << needle;
    int line = 1;
    for (size_t i = 0; i < pos && i < yaml.size(); ++i) line += yaml[i] == '\n';
    return absl::StrCat(Path("configs/x.yaml"), ":", line, ": ");
  }

  std::string root_;
};

constexpr char kFullConfig[] = R"(# every key, none at its default
run:
  name: full
  output_dir: runs/full
  seed: 7
  steps: 12
  device: "cuda:1"
  dtype: bfloat16
  eval_every: 4
  eval_samples: 32
model:
  path: ../ckpt
  init_seed: 3
data:
  train: ../data/train.jsonl
  eval: ../data/eval.jsonl
  prompt_key: question
  answer_key: solution
  shuffle: false
rollout:
  group_size: 4
  prompts_per_step: 6
  max_new_tokens: 256
  temperature: 0.7
  top_p: 0.9
  top_k: 40
  stop_strings: ["</answer>", "\n\n"]
  stop_token_ids: [2, 7]
  early_stop_window: 100
  early_stop_prob: 0.95
  max_num_seqs: 12
  max_staleness: 1
reward:
  kind: countdown
  weights:
    countdown: 1.0
    format: 0.25
  format_pattern: '^<answer>.*</answer>$'
  timeout_s: 5
  max_request_mb: 16
  server_wait_s: 7.5
algorithm:
  loss: cispo
  eps_low: 0.5
  eps_high: 2.5
  ppo_eps: 0.1
  dapo_eps_low: 0.15
  dapo_eps_high: 0.3
  unified_mask: true
  truncated_is_cap: 2
  kl_coef: 0
  dynamic_sampling: false
  max_refill_rounds: 2
  minibatches: 3
  overlong:
    filter: true
    soft_buffer: 64
optimizer:
  lr: 2e-6
  betas: [0.8, 0.99]
  eps: 1e-12
  weight_decay: 0.1
  grad_clip: 0.5
  schedule: cosine
  warmup_steps: 2
  min_lr_ratio: 0.2
  aux_loss_coef: 0.002
  moe_capacity_factor: 1.25
sft:
  steps: 5
  batch_size: 8
  lr: 5e-4
  data: ../data/eval.jsonl
checkpoint:
  every: 3
  keep: 4
  dtype: bfloat16
logging:
  jsonl: false
  tensorboard: false
  progress: false
distributed:
  world_size: 4
  rank: 3
  master_addr: learner-0
  master_port: 29511
  backend: gloo
  timeout_s: 60
  bucket_mb: 50
  zero1: true
  grad_reduce_dtype: bfloat16
  expert_parallel: 2
)";

TEST_F(RunConfigTest, BindsEveryFieldOfAFullConfig) {
  absl::StatusOr<RunConfig> loaded = Load(kFullConfig);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const RunConfig& c = *loaded;
  EXPECT_EQ(c.source, Path("configs/x.yaml"));
  EXPECT_EQ(c.run.name, "full");
  EXPECT_EQ(c.run.output_dir, (fs::current_path() / "runs/full").lexically_normal().string());
  EXPECT_EQ(c.run.seed, 7);
  EXPECT_EQ(c.run.steps, 12);
  EXPECT_EQ(c.run.device, "cuda:1");
  EXPECT_EQ(c.run.dtype, "bfloat16");
  EXPECT_EQ(c.run.eval_every, 4);
  EXPECT_EQ(c.run.eval_samples, 32);
  EXPECT_EQ(c.model.path, Path("ckpt"));
  EXPECT_EQ(c.model.init_config, "");
  EXPECT_EQ(c.model.init_seed, 3);
  EXPECT_EQ(c.model.tokenizer, Path("ckpt/tokenizer.json"));  // found beside the weights
  EXPECT_EQ(c.data.train, Path("data/train.jsonl"));
  EXPECT_EQ(c.data.eval, Path("data/eval.jsonl"));
  EXPECT_EQ(c.data.prompt_key, "question");
  EXPECT_EQ(c.data.answer_key, "solution");
  EXPECT_FALSE(c.data.shuffle);
  EXPECT_EQ(c.rollout.group_size, 4);
  EXPECT_EQ(c.rollout.prompts_per_step, 6);
  EXPECT_EQ(c.rollout.max_new_tokens, 256);
  EXPECT_EQ(c.rollout.temperature, 0.7);
  EXPECT_EQ(c.rollout.top_p, 0.9);
  EXPECT_EQ(c.rollout.top_k, 40);
  EXPECT_EQ(c.rollout.stop_strings, (std::vector<std::string>{"</answer>", "\n\n"}));
  EXPECT_EQ(c.rollout.stop_token_ids, (std::vector<int64_t>{2, 7}));
  EXPECT_EQ(c.rollout.early_stop_window, 100);
  EXPECT_EQ(c.rollout.early_stop_prob, 0.95);
  EXPECT_EQ(c.rollout.max_num_seqs, 12);
  EXPECT_EQ(c.rollout.max_staleness, 1);
  EXPECT_EQ(c.reward.kind, "countdown");
  EXPECT_EQ(c.reward.weights, (std::map<std::string, double>{{"countdown", 1.0}, {"format", 0.25}}));
  EXPECT_EQ(c.reward.OptionsFor("format").Dump(), R"({"pattern":"^<answer>.*</answer>$"})");
  EXPECT_EQ(c.reward.timeout_s, 5.0);
  EXPECT_EQ(c.reward.max_request_mb, 16);
  EXPECT_EQ(c.reward.server_wait_s, 7.5);
  EXPECT_EQ(c.algorithm.loss.kind, PolicyLossKind::kCispo);
  EXPECT_EQ(c.algorithm.loss.eps_low, 0.5);
  EXPECT_EQ(c.algorithm.loss.eps_high, 2.5);
  EXPECT_EQ(c.algorithm.loss.ppo_eps, 0.1);
  EXPECT_EQ(c.algorithm.loss.dapo_eps_low, 0.15);
  EXPECT_EQ(c.algorithm.loss.dapo_eps_high, 0.3);
  EXPECT_TRUE(c.algorithm.loss.unified_mask);
  EXPECT_EQ(c.algorithm.loss.truncated_is_cap, 2.0);
  EXPECT_EQ(c.algorithm.loss.kl_coef, 0.0);
  EXPECT_FALSE(c.algorithm.dynamic_sampling);
  EXPECT_EQ(c.algorithm.max_refill_rounds, 2);
  EXPECT_EQ(c.algorithm.minibatches, 3);
  EXPECT_TRUE(c.algorithm.overlong_filter);
  EXPECT_EQ(c.algorithm.overlong_soft_buffer, 64);
  EXPECT_EQ(c.optimizer.lr, 2e-6);
  EXPECT_EQ(c.optimizer.beta1, 0.8);
  EXPECT_EQ(c.optimizer.beta2, 0.99);
  EXPECT_EQ(c.optimizer.eps, 1e-12);
  EXPECT_EQ(c.optimizer.weight_decay, 0.1);
  EXPECT_EQ(c.optimizer.grad_clip, 0.5);
  EXPECT_EQ(c.optimizer.schedule, "cosine");
  EXPECT_EQ(c.optimizer.warmup_steps, 2);
  EXPECT_EQ(c.optimizer.min_lr_ratio, 0.2);
  EXPECT_EQ(c.optimizer.aux_loss_coef, 0.002);
  EXPECT_EQ(c.optimizer.moe_capacity_factor, 1.25);
  EXPECT_EQ(c.sft.steps, 5);
  EXPECT_EQ(c.sft.batch_size, 8);
  EXPECT_EQ(c.sft.lr, 5e-4);
  EXPECT_EQ(c.sft.data, Path("data/eval.jsonl"));
  EXPECT_EQ(c.checkpoint.every, 3);
  EXPECT_EQ(c.checkpoint.keep, 4);
  EXPECT_EQ(c.checkpoint.dtype, "bfloat16");
  EXPECT_FALSE(c.logging.jsonl);
  EXPECT_FALSE(c.logging.tensorboard);
  EXPECT_FALSE(c.logging.progress);
  EXPECT_EQ(c.distributed.world_size, 4);
  EXPECT_EQ(c.distributed.rank, 3);
  EXPECT_EQ(c.distributed.master_addr, "learner-0");
  EXPECT_EQ(c.distributed.master_port, 29511);
  EXPECT_EQ(c.distributed.backend, "gloo");
  EXPECT_EQ(c.distributed.timeout_s, 60);
  EXPECT_EQ(c.distributed.bucket_mb, 50);
  EXPECT_TRUE(c.distributed.zero1);
  EXPECT_EQ(c.distributed.grad_reduce_dtype, "bfloat16");
  EXPECT_EQ(c.distributed.expert_parallel, 2);

  SamplingParams p = c.rollout.ToSamplingParams();
  EXPECT_EQ(p.n, 4);
  EXPECT_EQ(p.temperature, 0.7);
  EXPECT_EQ(p.top_p, 0.9);
  EXPECT_EQ(p.top_k, 40);
  EXPECT_EQ(p.max_new_tokens, 256);
  EXPECT_EQ(p.stop_strings, c.rollout.stop_strings);
  EXPECT_EQ(p.stop_token_ids, c.rollout.stop_token_ids);
  EXPECT_EQ(p.early_stop_window, 100);
  EXPECT_EQ(p.early_stop_prob, 0.95);
  EXPECT_TRUE(p.Validate().ok());
  OverlongOptions o = c.ToOverlongOptions();
  EXPECT_EQ(o.max_response_length, 256);
  EXPECT_EQ(o.buffer, 64);
  EXPECT_TRUE(o.Validate().ok());
}

TEST_F(RunConfigTest, DescriptionLoadsBackToTheSameConfig) {
  absl::StatusOr<RunConfig> first = Load(kFullConfig);
  ASSERT_TRUE(first.ok()) << first.status();
  const std::string described = DescribeRunConfig(*first);
  // Resolved paths are absolute, so the description loads from anywhere.
  ASSERT_TRUE(MakeDirs(Path("elsewhere/deeper")).ok());
  Write("elsewhere/deeper/resolved.yaml", described);
  absl::StatusOr<RunConfig> second = LoadRunConfig(Path("elsewhere/deeper/resolved.yaml"));
  ASSERT_TRUE(second.ok()) << second.status() << "\n" << described;
  EXPECT_EQ(DescribeRunConfig(*second), described);
  EXPECT_EQ(second->data.train, first->data.train);
  EXPECT_EQ(second->optimizer.eps, first->optimizer.eps);
  EXPECT_EQ(second->reward.weights, first->reward.weights);
}

TEST_F(RunConfigTest, RewardOptionsAreOneObjectPerKind) {
  absl::StatusOr<RunConfig> loaded = Load(Minimal() +
                                          "reward:\n  kind: length\n  options:\n    length:\n"
                                          "      max_length: 100\n      buffer: 20\n");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->reward.OptionsFor("length").Dump(), R"({"max_length":100,"buffer":20})");
  EXPECT_TRUE(loaded->reward.OptionsFor("math").is_null());
  // The in-process reward is built from that object: 90 of 100 with a 20-wide ramp.
  absl::StatusOr<RewardFunctionPtr> length =
      MakeRewardFunction("length", loaded->reward.OptionsFor("length"));
  ASSERT_TRUE(length.ok()) << length.status();
  RewardInput input;
  input.response = std::string(90, 'x');
  EXPECT_DOUBLE_EQ((*length)->Score(input)->score, -0.5);

  // The resolved config shows every option of the kinds in use, defaults included.
  loaded = Load(Minimal() + "reward:\n  weights: {length: 1, format: 0.5}\n  options:\n"
                            "    length: {max_length: 8192}\n");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const std::string described = DescribeRunConfig(*loaded);
  EXPECT_THAT(described, HasSubstr("max_length: 8192")) << described;
  EXPECT_THAT(described, HasSubstr("buffer: 4096")) << described;
  EXPECT_THAT(described, HasSubstr("pattern: \"\"")) << described;
}

TEST_F(RunConfigTest, MinimalConfigTakesTheDefaults) {
  absl::StatusOr<RunConfig> loaded = Load(Minimal() + "rollout:\n  top_k:\n");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const RunConfig& c = *loaded;
  const RunConfig defaults;
  EXPECT_EQ(c.run.name, defaults.run.name);
  EXPECT_EQ(c.model.init_config, Path("configs/models/tiny.json"));
  EXPECT_EQ(c.model.tokenizer, "");
  EXPECT_EQ(c.rollout.group_size, defaults.rollout.group_size);
  EXPECT_EQ(c.rollout.top_k, defaults.rollout.top_k);  // "top_k:" (null) keeps the default
  EXPECT_EQ(c.algorithm.loss.kind, PolicyLossKind::kCispo);
  EXPECT_EQ(c.algorithm.loss.eps_high, PolicyLossOptions{}.eps_high);
  // Truncated IS is "auto": off for on-policy samples, on when samples can be stale.
  EXPECT_EQ(c.algorithm.loss.truncated_is_cap, kTruncatedIsCapAuto);
  EXPECT_EQ(c.ToLossOptions().truncated_is_cap, 0.0);
  EXPECT_EQ(c.algorithm.loss.dual_clip, 0.0);
  EXPECT_EQ(c.optimizer.beta1, defaults.optimizer.beta1);
  EXPECT_EQ(c.optimizer.beta2, defaults.optimizer.beta2);
  EXPECT_EQ(c.sft.data, c.data.train);  // sft.data defaults to data.train
  EXPECT_TRUE(c.logging.tensorboard);
}

TEST_F(RunConfigTest, InputPathsResolveAgainstTheConfigsDirectory) {
  // A relative config path, loaded from a working directory where "train.jsonl" exists
  // but configs/train.jsonl does not: the config's directory wins.
  Write("train.jsonl", "{}\n");
  Write("configs/rel.yaml", "run: {output_dir: o, steps: 1}\n"
                            "model: {init_config: ./models/../models/tiny.json}\n"
                            "data: {train: train.jsonl}\n");
  const fs::path old_cwd = fs::current_path();
  fs::current_path(root_);
  absl::StatusOr<RunConfig> loaded = LoadRunConfig("configs/rel.yaml");
  Write("configs/data.yaml", "run: {output_dir: o, steps: 1}\n"
                             "model: {init_config: models/tiny.json}\n"
                             "data: {train: ../train.jsonl}\n");
  absl::StatusOr<RunConfig> fixed = LoadRunConfig("configs/data.yaml");
  fs::current_path(old_cwd);

  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().message(),
            absl::StrCat("configs/rel.yaml:3: data.train: file train.jsonl does not exist "
                         "(looked for ", Path("configs/train.jsonl"), ")"));
  ASSERT_TRUE(fixed.ok()) << fixed.status();
  EXPECT_EQ(fixed->data.train, Path("train.jsonl"));
  EXPECT_EQ(fixed->model.init_config, Path("configs/models/tiny.json"));
  // output_dir is an output: relative to where the run starts, not to the config.
  EXPECT_EQ(fixed->run.output_dir, Path("o"));
}

struct ErrorCase {
  std::string yaml;
  std::string needle;  // text on the line the error must point at
  std::string message;
};

TEST_F(RunConfigTest, ErrorsNameFileLineAndKey) {
  const std::string m = Minimal();
  const std::vector<ErrorCase> cases = {
      // Unknown keys and sections, with suggestions.
      {m + "rollout:\n  grup_size: 4\n", "grup_size",
       "rollout.grup_size is not a known key (did you mean group_size?)"},
      {m + "rollot:\n  group_size: 4\n", "rollot", "rollot is not a known section (did you "
                                                   "mean rollout?)"},
      {m + "algorithm:\n  overlong:\n    soft_bufer: 3\n", "soft_bufer",
       "algorithm.overlong.soft_bufer is not a known key (did you mean soft_buffer?)"},
      {Minimal("  zzzzzzzz: 1\n"), "zzzzzzzz",
       "run.zzzzzzzz is not a known key; known: name, output_dir, seed, steps, device, dtype, "
       "eval_every, eval_samples, eval_sampled"},
      // Wrong types.
      {m + "optimizer:\n  lr: fast\n", "lr: fast", "optimizer.lr must be a number, got \"fast\""},
      {m + "rollout:\n  group_size: 2.5\n", "group_size",
       "rollout.group_size must be an integer, got 2.5"},
      {Minimal("", "  shuffle: yes\n"), "shuffle",
       "data.shuffle must be true or false, got \"yes\""},
      {Minimal("  name: 2024\n"), "name", "run.name must be a string, got 2024 (quote it)"},
      {m + "rollout:\n  stop_strings:\n    - ok\n    - 3\n", "- 3",
       "rollout.stop_strings[1] must be a string, got 3"},
      {m + "rollout:\n  stop_token_ids: 5\n", "stop_token_ids",
       "rollout.stop_token_ids must be a list of integers, got 5"},
      {m + "rollout: 8\n", "rollout", "rollout must be a mapping, got 8"},
      {m + "optimizer:\n  betas: [0.9]\n", "betas",
       "optimizer.betas must be a list of 2 numbers [beta1, beta2], got [0.9]"},
      {m + "reward:\n  weights: {format: high}\n", "weights",
       "reward.weights.format must be a number, got \"high\""},
      // Out of range.
      {m + "rollout:\n  group_size: 1\n", "group_size", "rollout.group_size must be >= 2, got 1"},
      {m + "rollout:\n  top_p: 0\n", "top_p", "rollout.top_p must be in (0, 1], got 0"},
      {m + "rollout:\n  stop_token_ids:\n    - 1\n    - -4\n", "- -4",
       "rollout.stop_token_ids[1] must be >= 0, got -4"},
      {m + "rollout:\n  early_stop_prob: 1\n", "early_stop_prob",
       "rollout.early_stop_prob must be in (0, 1), got 1"},
      {m + "optimizer:\n  betas:\n    - 0.9\n    - 1.0\n", "- 1.0",
       "optimizer.betas[1] must be in [0, 1), got 1"},
      {m + "optimizer:\n  schedule: step\n", "schedule",
       "optimizer.schedule must be constant, cosine or linear, got \"step\""},
      {m + "optimizer:\n  min_lr_ratio: 1.5\n", "min_lr_ratio",
       "optimizer.min_lr_ratio must be in [0, 1], got 1.5"},
      {Minimal("  device: gpu\n"), "device", "run.device must be cpu, cuda or cuda:N, got \"gpu\""},
      {Minimal("  dtype: fp16\n"), "dtype", "run.dtype must be float32 or bfloat16, got \"fp16\""},
      {Minimal("  steps: 0\n").replace(Minimal().find("  steps: 3\n"), 11, ""), "steps: 0",
       "run.steps must be >= 1, got 0"},
      {m + "checkpoint:\n  keep: 0\n", "keep", "checkpoint.keep must be >= 1, got 0"},
      {m + "reward:\n  kind: arithmetc\n", "kind",
       "reward.kind must be one of arithmetic, countdown, math, format, length, code, got "
       "\"arithmetc\" (did you mean arithmetic?)"},
      {m + "reward:\n  weights:\n    math: 1\n    formt: 0.5\n", "formt",
       "reward.weights.formt is not a known reward kind (did you mean format?)"},
      {m + "reward:\n  options:\n    length:\n      max_lenght: 5\n", "max_lenght",
       "reward.options.length.max_lenght is not a known option of reward kind length (did you "
       "mean max_length?)"},
      {m + "reward:\n  options:\n    lenght:\n      buffer: 1\n", "lenght",
       "reward.options.lenght is not a known reward kind (did you mean length?)"},
      {m + "reward:\n  options:\n    length:\n      buffer: lots\n", "buffer",
       "reward.options.length.buffer must be an integer, got \"lots\""},
      {m + "reward:\n  options:\n    math:\n      strict: true\n", "strict",
       "reward.options.math.strict is not a known option of reward kind math; it takes no "
       "options"},
      {m + "reward:\n  options:\n    length: {max_length: 10, buffer: 20}\n", "length",
       "reward.options.length: length reward: need max_length > 0 and 0 <= buffer <= "
       "max_length, got max_length 10, buffer 20"},
      {m + "reward:\n  format_pattern: x\n  options:\n    format: {pattern: y}\n",
       "format_pattern",
       "reward.format_pattern and reward.options.format.pattern are both set; keep the latter"},
      {m + "reward:\n  timeout_s: 0\n", "timeout_s", "reward.timeout_s must be > 0, got 0"},
      {m + "reward:\n  max_request_mb: 0\n", "max_request_mb",
       "reward.max_request_mb must be in [1, 1024] (MiB of one Score request), got 0"},
      {m + "reward:\n  max_request_mb: 4096\n", "max_request_mb",
       "reward.max_request_mb must be in [1, 1024] (MiB of one Score request), got 4096"},
      {m + "reward:\n  max_request_mb: 1.5\n", "max_request_mb",
       "reward.max_request_mb must be an integer, got 1.5"},
      {m + "reward:\n  server_wait_s: -1\n", "server_wait_s",
       "reward.server_wait_s must be >= 0, got -1"},
      {m + "fleet:\n  mode: spawn\n  reward_worker_restarts: -1\n", "reward_worker_restarts",
       "fleet.reward_worker_restarts must be >= 0, got -1"},
      // PolicyLossOptions's own checks, renamed into this section.
      {m + "algorithm:\n  loss: dapo\n  eps_low: 2\n", "eps_low",
       "algorithm.eps_low must be in [0, 1], got 2"},
      {m + "algorithm:\n  loss: grpo\n  unified_mask: true\n", "unified_mask",
       "algorithm.unified_mask applies to kind cispo only"},
      {m + "algorithm:\n  loss: reinforce\n", "loss",
       "algorithm.loss must be one of cispo, grpo, ppo_clip, dapo, got \"reinforce\""},
      // Missing files and required keys.
      {Minimal().replace(Minimal().find("../data/train.jsonl"), 19, "../data/missing.jsonl"),
       "missing", absl::StrCat("data.train: file ../data/missing.jsonl does not exist (looked for ",
                               "DATA_MISSING)")},
      {Minimal("", "", "  path: models/tiny.json\n"), "path",
       "model.path: models/tiny.json is not a directory, expected a directory"},
      {Minimal("", "  eval: /nonexistent/eval.jsonl\n"), "eval",
       "data.eval: file /nonexistent/eval.jsonl does not exist"},
      {"run:\n  output_dir: out\nmodel:\n  init_config: models/tiny.json\n"
       "data:\n  train: ../data/train.jsonl\n",
       "run:", "run.steps is required"},
      {m + "distributed:\n  world_size: 2\n  rank: 2\n", "rank",
       "distributed.rank must be in [0, world_size) = [0, 2), got 2"},
      {m + "distributed:\n  backend: mpi\n", "backend",
       "distributed.backend must be auto, gloo or nccl, got \"mpi\""},
      {m + "distributed:\n  master_port: 70000\n", "master_port",
       "distributed.master_port must be in [1, 65535], got 70000"},
      {m + "distributed:\n  bucket_mb: 0\n", "bucket_mb",
       "distributed.bucket_mb must be > 0, got 0"},
      {m + "distributed:\n  grad_reduce_dtype: fp8\n", "grad_reduce_dtype",
       "distributed.grad_reduce_dtype must be float32 or bfloat16, got \"fp8\""},
      {m + "distributed:\n  expert_parallel: 0\n", "expert_parallel",
       "distributed.expert_parallel must be >= 1, got 0"},
      {m + "distributed:\n  world_size: 4\n  expert_parallel: 3\n", "expert_parallel",
       "distributed.expert_parallel must divide world_size (4), got 3"},
      // Across sections.
      {Minimal("", "", "  path: ../ckpt\n  init_config: models/tiny.json\n"), "path",
       "model.path and init_config are both set"},
      {Minimal("", "", "  init_seed: 1\n"), "model:", "model.path is required unless init_config "
                                                      "is given"},
      {Minimal("  eval_every: 10\n"), "eval_every",
       "run.eval_every is 10 but data.eval is not set"},
      {Minimal("", "  answer_key: ''\n") + "sft:\n  steps: 5\n", "steps: 5",
       "sft.steps is 5 but data.answer_key is empty"},
      {m + "rollout:\n  max_new_tokens: 100\nalgorithm:\n  overlong: {soft_buffer: 200}\n",
       "soft_buffer", "algorithm.overlong.soft_buffer must be <= rollout.max_new_tokens (100), "
                      "got 200"},
      {m + "algorithm:\n  minibatches: 32\n", "minibatches",
       "algorithm.minibatches must be <= rollout.prompts_per_step (16)"},
  };
  for (const ErrorCase& c : cases) {
    std::string expected = c.message;
    if (size_t at = expected.find("DATA_MISSING"); at != std::string::npos) {
      expected.replace(at, 12, Path("data/missing.jsonl"));
    }
    const std::string message = LoadError(c.yaml);
    EXPECT_THAT(message, StartsWith(At(c.yaml, c.needle) + expected)) << c.yaml;
  }
}

// A port past 65535 (99999) used to pass and fail only when the coordinator tried to bind.
TEST_F(RunConfigTest, FleetAndServerAddressesAreHostPort) {
  const std::string m = Minimal();
  auto fleet = [&](const std::string& address) {
    return m + "fleet:\n  mode: spawn\n  coordinator_address: \"" + address + "\"\n";
  };
  auto server = [&](const std::string& address) {
    return m + "reward:\n  servers:\n    judge:\n      address: \"" + address + "\"\n";
  };
  for (const std::string bad :
       {"127.0.0.1:99999", "127.0.0.1:65536", "localhost", ":5000", "127.0.0.1:", "host:-1",
        "host:8o", "a b:80", "[::1:0", "[]:0", "host:1:2", "127.0.0.1:0000080"}) {
    const std::string yaml = fleet(bad);
    EXPECT_THAT(LoadError(yaml),
                StartsWith(At(yaml, "coordinator_address") +
                           "fleet.coordinator_address must be host:port with a port in [0, "
                           "65535] (0 picks a free one), got \"" + bad + "\""))
        << bad;
  }
  for (const std::string good :
       {"127.0.0.1:0", "localhost:65535", "[::1]:0", "node-3.cluster:29500"}) {
    absl::StatusOr<RunConfig> loaded = Load(fleet(good));
    EXPECT_TRUE(loaded.ok()) << good << ": " << loaded.status();
  }
  // A server the controller dials needs a real port.
  for (const std::string bad : {"127.0.0.1:0", "127.0.0.1:70000", "judge.internal"}) {
    const std::string yaml = server(bad);
    EXPECT_THAT(LoadError(yaml),
                StartsWith(At(yaml, "address:") +
                           "reward.servers.judge.address must be host:port with a port in [1, "
                           "65535], got \"" + bad + "\""))
        << bad;
  }
  EXPECT_TRUE(Load(server("judge.internal:8080")).ok());
}

TEST_F(RunConfigTest, OutputDirMustBeCreatable) {
  auto with_output = [&](const std::string& dir) {
    std::string yaml = Minimal();
    return yaml.replace(yaml.find("output_dir: out"), 15, "output_dir: " + dir);
  };
  // Under a regular file: nothing can create it.
  const std::string under_file = Path("data/train.jsonl/out");
  std::string yaml = with_output(under_file);
  EXPECT_EQ(LoadError(yaml), At(yaml, "output_dir") + "run.output_dir: cannot create " +
                                 under_file + ": " + Path("data/train.jsonl") +
                                 " is not a directory");
  // Is a regular file.
  yaml = with_output(Path("data/eval.jsonl"));
  EXPECT_EQ(LoadError(yaml), At(yaml, "output_dir") + "run.output_dir: " +
                                 Path("data/eval.jsonl") + " exists and is not a directory");
  // Creatable several levels down, and existing: both fine, and nothing is created.
  absl::StatusOr<RunConfig> deep = Load(with_output(Path("runs/a/b/c")));
  ASSERT_TRUE(deep.ok()) << deep.status();
  EXPECT_FALSE(FileExists(Path("runs")));
  ASSERT_TRUE(Load(with_output(Path("data"))).ok());

  if (::geteuid() == 0) GTEST_SKIP() << "root may write any directory";
  ASSERT_TRUE(MakeDirs(Path("locked")).ok());
  ASSERT_EQ(::chmod(Path("locked").c_str(), 0500), 0);
  yaml = with_output(Path("locked/run"));
  EXPECT_THAT(LoadError(yaml), StartsWith(At(yaml, "output_dir") + "run.output_dir: cannot create " +
                                          Path("locked/run") + ": " + Path("locked") +
                                          " is not writable"));
  ::chmod(Path("locked").c_str(), 0700);
}

TEST_F(RunConfigTest, AsyncNeedsAStepOfStaleness) {
  const std::string m = Minimal();
  const std::string fleet = "fleet:\n  mode: spawn\n";
  absl::StatusOr<RunConfig> loaded =
      Load(m + "rollout:\n  async: true\n  max_staleness: 2\nalgorithm:\n  minibatches: 2\n" + fleet);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(loaded->rollout.async);
  EXPECT_FALSE(RunConfig().rollout.async);
  // The resolved description keeps it.
  Write("configs/resolved.yaml", DescribeRunConfig(*loaded));
  absl::StatusOr<RunConfig> again = LoadRunConfig(Path("configs/resolved.yaml"));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->rollout.async);

  // Local mode too (its engine gets a copy of the weights).
  absl::StatusOr<RunConfig> local = Load(m + "rollout:\n  async: true\n  max_staleness: 1\n");
  ASSERT_TRUE(local.ok()) << local.status();
  EXPECT_FALSE(local->fleet.enabled());

  const std::vector<ErrorCase> cases = {
      {m + "rollout:\n  async: true\n", "rollout:",
       "rollout.max_staleness must be >= algorithm.minibatches (1) when rollout.async is on"},
      {m + "rollout:\n  async: true\n  max_staleness: 1\nalgorithm:\n  minibatches: 2\n" + fleet,
       "max_staleness", "rollout.max_staleness must be >= algorithm.minibatches (2) when "
                        "rollout.async is on"},
      {m + "rollout:\n  async: 1\n", "async", "rollout.async must be true or false, got 1"},
  };
  for (const ErrorCase& c : cases) {
    EXPECT_THAT(LoadError(c.yaml), StartsWith(At(c.yaml, c.needle) + c.message)) << c.yaml;
  }
}

TEST_F(RunConfigTest, ShardedEngineNeedsOneShardedGroupAndTheLocalEngine) {
  const std::string m = Minimal();
  EXPECT_FALSE(RunConfig().rollout.sharded_engine);
  for (const char* layout : {"parallel:\n  tp: 2\n", "parallel:\n  ep: 2\n",
                             "parallel:\n  tp: 2\n  ep: 2\n  sequence_parallel: true\n",
                             "parallel:\n  ep: 2\n  expert_tp: 2\n",
                             "parallel:\n  tp: 2\n  ep: 4\n  sequence_parallel: true\n"}) {
    absl::StatusOr<RunConfig> loaded = Load(m + layout + "rollout:\n  sharded_engine: true\n");
    ASSERT_TRUE(loaded.ok()) << layout << loaded.status();
    EXPECT_TRUE(loaded->rollout.sharded_engine);
  }
  const std::string on = "rollout:\n  sharded_engine: true\n";
  const std::vector<ErrorCase> cases = {
      {m + on, "sharded_engine",
       "rollout.sharded_engine needs a sharded learner (parallel.tp or parallel.ep > 1)"},
      {m + "parallel:\n  tp: 4\n  ep: 2\n  sequence_parallel: true\n" + on, "sharded_engine",
       "rollout.sharded_engine needs parallel.ep a multiple of parallel.tp when both are > 1"},
      {m + "parallel:\n  tp: 2\n  ep: 2\n  expert_tp: 2\n  sequence_parallel: true\n" + on,
       "sharded_engine", "rollout.sharded_engine needs parallel.tp 1 when parallel.expert_tp > 1"},
      {m + "parallel:\n  ep: 2\nfleet:\n  mode: spawn\n" + on, "sharded_engine",
       "rollout.sharded_engine needs the local engine"},
      {m + "parallel:\n  tp: 2\nrollout:\n  sharded_engine: true\n  async: true\n"
           "  max_staleness: 1\n",
       "sharded_engine", "rollout.sharded_engine needs rollout.async off"},
  };
  for (const ErrorCase& c : cases) {
    EXPECT_THAT(LoadError(c.yaml), StartsWith(At(c.yaml, c.needle) + c.message)) << c.yaml;
  }
}

TEST_F(RunConfigTest, BatchInvariantNumericsBindsAndRefusesWhatItCannotRun) {
  const std::string m = Minimal();
  EXPECT_FALSE(RunConfig().numerics.batch_invariant);
  absl::StatusOr<RunConfig> loaded = Load(m + "numerics:\n  batch_invariant: true\n");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(loaded->numerics.batch_invariant);
  Write("configs/resolved.yaml", DescribeRunConfig(*loaded));
  absl::StatusOr<RunConfig> again = LoadRunConfig(Path("configs/resolved.yaml"));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->numerics.batch_invariant);
  Write("configs/x.yaml", m);
  absl::StatusOr<RunConfig> set = LoadRunConfig(Path("configs/x.yaml"), {"numerics.batch_invariant=true"});
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_TRUE(set->numerics.batch_invariant);

  RunConfig c = *loaded;
  c.run.device = "cuda";  // the mode's CUDA kernels
  EXPECT_TRUE(c.Validate().ok()) << c.Validate();
  // Rollout workers take the mode with the weights: spawned or in a cluster, with weights
  // sent in the learner's dtype.
  for (const char* mode : {"spawn", "cluster"}) {
    c = *loaded;
    c.fleet.mode = mode;
    EXPECT_TRUE(c.Validate().ok()) << mode << ": " << c.Validate();
    c.fleet.weight_dtype = "bfloat16";
    EXPECT_EQ(std::string(c.Validate().message()),
              "numerics.batch_invariant needs the workers' weights in the learner's dtype: "
              "fleet.weight_dtype is bfloat16, run.dtype float32") << mode;
  }
  c = *loaded;
  c.fleet.mode = "spawn";
  c.fleet.rollout_tp = 2;  // tensor-parallel instances run the mode
  EXPECT_TRUE(c.Validate().ok()) << c.Validate();
  c.fleet.rollout_tp = 1;
  c.fleet.rollout_ep = 2;  // expert-parallel instances run the mode
  EXPECT_TRUE(c.Validate().ok()) << c.Validate();
  c.fleet.rollout_tp = 2;
  c.numerics.batch_invariant = false;
  EXPECT_TRUE(c.Validate().ok()) << c.Validate();
  c.fleet.mode = "cluster";
  EXPECT_THAT(std::string(c.Validate().message()),
              HasSubstr("rollout_tp needs mode spawn (start the instances of a cluster with "
                        "`lightrl rollout-worker --tp N`), got \"cluster\""));
  c.fleet.rollout_tp = 1;
  c.fleet.rollout_ep = 2;
  EXPECT_THAT(std::string(c.Validate().message()),
              HasSubstr("rollout_ep needs mode spawn (start the instances of a cluster with "
                        "`lightrl rollout-worker --ep N`), got \"cluster\""));
  c.fleet.mode = "spawn";
  c.fleet.rollout_tp = 2;
  EXPECT_TRUE(c.Validate().ok()) << c.Validate();  // TP and EP over the same ranks
  c.fleet.rollout_ep = 4;
  EXPECT_TRUE(c.Validate().ok()) << c.Validate();  // two TP groups sharing their experts
  c.fleet.rollout_ep = 3;
  EXPECT_THAT(std::string(c.Validate().message()),
              HasSubstr("rollout_tp 2 with rollout_ep 3: rollout_ep must be a multiple of "
                        "rollout_tp"));
  c = *loaded;
  c.fleet.mode = "spawn";
  c.fleet.worker_device = "cpu,cuda:1";  // CPU and CUDA workers give the same bits
  EXPECT_TRUE(c.Validate().ok()) << c.Validate();
  c = *loaded;
  c.parallel.tp = 2;  // a tensor-parallel learner runs the mode
  EXPECT_TRUE(c.Validate().ok()) << c.Validate();
  c.parallel.sequence_parallel = true;
  EXPECT_THAT(std::string(c.Validate().message()),
              StartsWith("numerics.batch_invariant runs parallel.sequence_parallel only with the "
                         "experts sharded"));
  c.parallel.ep = 2;  // tp x ep (sequence-parallel) runs the mode
  EXPECT_TRUE(c.Validate().ok()) << c.Validate();
  c = *loaded;
  c.parallel.ep = 2;
  EXPECT_TRUE(c.Validate().ok()) << c.Validate();
  c.parallel.expert_tp = 2;  // expert-TP runs the mode too
  EXPECT_TRUE(c.Validate().ok()) << c.Validate();
  EXPECT_THAT(LoadError(m + "numerics:\n  batch_invariant: 2\n"),
              HasSubstr("numerics.batch_invariant must be true or false, got 2"));
}

TEST_F(RunConfigTest, ErrorsWithoutALine) {
  // A missing section has no line: the message names the file alone.
  EXPECT_EQ(LoadError("run:\n  output_dir: out\n  steps: 3\nmodel:\n"
                      "  init_config: models/tiny.json\n"),
            absl::StrCat(Path("configs/x.yaml"), ": data.train is required"));
  EXPECT_EQ(LoadError("[1, 2]\n"),
            absl::StrCat(Path("configs/x.yaml"), ":1: the run config must be a mapping, got a "
                                                 "list"));
  // YAML errors keep their line:column.
  EXPECT_THAT(LoadError(Minimal() + "run:\n  steps: 4\n"),
              StartsWith(absl::StrCat(Path("configs/x.yaml"), ":8:1: duplicate key \"run\"")));
  absl::StatusOr<RunConfig> missing = LoadRunConfig(Path("configs/none.yaml"));
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(std::string(missing.status().message()),
              StartsWith(absl::StrCat(Path("configs/none.yaml"), ": cannot read the run config")));
}

TEST(RunConfigInCodeTest, ValidateChecksStructsBuiltInCode) {
  RunConfig c;
  c.run.output_dir = "/tmp/out";
  c.run.steps = 1;
  c.model.init_config = "/tmp/model.json";
  c.data.train = "/tmp/train.jsonl";
  EXPECT_TRUE(c.Validate().ok()) << c.Validate();
  c.rollout.group_size = 1;
  EXPECT_EQ(c.Validate().message(), "rollout.group_size must be >= 2, got 1");
  c.rollout.group_size = 2;
  c.optimizer.lr = 0;
  EXPECT_EQ(c.Validate().message(), "optimizer.lr must be > 0, got 0");
  EXPECT_EQ(c.optimizer.Validate().message(), "lr must be > 0, got 0");
}

TEST_F(RunConfigTest, SetOverridesKeysAndItsErrorsNameTheFlag) {
  Write("configs/x.yaml", Minimal("", "", "  init_config: models/tiny.json\n") +
                              "rollout:\n  group_size: 8\n");
  const std::string path = Path("configs/x.yaml");
  absl::StatusOr<RunConfig> config = LoadRunConfig(
      path, {"rollout.group_size=4", "optimizer.lr=1e-5", "rollout.stop_strings=[\"</a>\", x]",
             "sft.steps=2", "run.steps=7"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->rollout.group_size, 4);
  EXPECT_DOUBLE_EQ(config->optimizer.lr, 1e-5);
  EXPECT_EQ(config->rollout.stop_strings, (std::vector<std::string>{"</a>", "x"}));
  EXPECT_EQ(config->sft.steps, 2);  // a section the file does not have
  EXPECT_EQ(config->run.steps, 7);
  // The resolved config holds the overrides, and reads back to them.
  const std::string resolved = DescribeRunConfig(*config);
  EXPECT_THAT(resolved, HasSubstr("group_size: 4\n"));
  Write("configs/resolved.yaml", resolved);
  absl::StatusOr<RunConfig> again = LoadRunConfig(Path("configs/resolved.yaml"));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->rollout.group_size, 4);

  auto error = [&](const std::string& assignment) {
    absl::StatusOr<RunConfig> c = LoadRunConfig(path, {assignment});
    EXPECT_FALSE(c.ok()) << assignment;
    return c.ok() ? std::string() : std::string(c.status().message());
  };
  EXPECT_EQ(error("rollout.grop_size=4"),
            "--set rollout.grop_size=4: rollout.grop_size is not a known key (did you mean "
            "group_size?)");
  EXPECT_THAT(error("rollout.group_size=1"),
              StartsWith("--set rollout.group_size=1: rollout.group_size must be >= 2, got 1"));
  EXPECT_THAT(error("rollout.group_size=four"),
              StartsWith("--set rollout.group_size=four: rollout.group_size must be an integer"));
  EXPECT_THAT(error("rollotu.group_size=4"), HasSubstr("(did you mean rollout?)"));
  EXPECT_THAT(error("rollout.group_size"), HasSubstr("expected KEY=VALUE"));
  EXPECT_THAT(error("rollout..x=1"), HasSubstr("expected KEY=VALUE"));
  EXPECT_THAT(error("run.steps.x=1"),
              StartsWith("--set run.steps.x=1: run.steps is 3 in " + path + ":3, not a mapping"));
  EXPECT_THAT(error("optimizer.lr=[1"), StartsWith("--set optimizer.lr:"));
  // A key the file sets wrongly still points at its line when a --set is elsewhere.
  Write("configs/y.yaml", Minimal() + "rollout:\n  group_size: 1\n");
  absl::StatusOr<RunConfig> bad = LoadRunConfig(Path("configs/y.yaml"), {"optimizer.lr=1e-5"});
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), StartsWith(Path("configs/y.yaml") + ":9: "));
}

TEST_F(RunConfigTest, SetInputPathsAreRelativeToTheWorkingDirectory) {
  Write("configs/x.yaml", Minimal());
  const fs::path before = fs::current_path();
  fs::current_path(root_);
  absl::StatusOr<RunConfig> config =
      LoadRunConfig(Path("configs/x.yaml"), {"data.eval=data/eval.jsonl"});
  absl::StatusOr<RunConfig> missing =
      LoadRunConfig(Path("configs/x.yaml"), {"data.eval=../data/eval.jsonl"});
  fs::current_path(before);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->data.eval, Path("data/eval.jsonl"));
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(std::string(missing.status().message()),
              StartsWith("--set data.eval=../data/eval.jsonl: data.eval: file "));
}

TEST_F(RunConfigTest, AnchorsAndMergeKeysBindAndErrorsKeepTheirLines) {
  const std::string yaml = "sampling: &s\n  temperature: 0.7\n  top_p: 0.9\n" + Minimal() +
                           "rollout:\n  <<: *s\n  group_size: 4\n";
  absl::StatusOr<RunConfig> config = Load(yaml);
  // `sampling` is not a section: the unknown-key error points at its line.
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(std::string(config.status().message()),
              StartsWith(At(yaml, "sampling") + "sampling is not a known section"));
  const std::string good = "run: &r\n  output_dir: out\n  steps: 3\nmodel:\n"
                           "  init_config: models/tiny.json\ndata:\n  train: ../data/train.jsonl\n"
                           "rollout:\n  <<: {temperature: 0.7, top_p: 0.9}\n  group_size: 4\n"
                           "  stop_strings:\n    - \"</answer>\"\n    - |-\n      two\n      lines\n";
  config = Load(good);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_DOUBLE_EQ(config->rollout.temperature, 0.7);
  EXPECT_DOUBLE_EQ(config->rollout.top_p, 0.9);
  EXPECT_EQ(config->rollout.group_size, 4);
  EXPECT_EQ(config->rollout.stop_strings, (std::vector<std::string>{"</answer>", "two\nlines"}));
  const std::string bad = good + "  max_staleness: -1\n";
  EXPECT_THAT(LoadError(bad), StartsWith(At(bad, "max_staleness") + "rollout.max_staleness"));
}

TEST_F(RunConfigTest, TlsSectionBindsItsFilesAndAppliesOffLoopbackOnly) {
  Write("configs/ca.pem", "-----BEGIN CERTIFICATE-----\n");
  Write("configs/me.pem", "-----BEGIN CERTIFICATE-----\n");
  Write("configs/me.key", "-----BEGIN PRIVATE KEY-----\n");
  absl::StatusOr<RunConfig> config = Load(absl::StrCat(
      Minimal(), "reward:\n  metadata_fields: [difficulty, source]\n  metadata_max_kb: 8\n",
      "tls:\n  ca: ca.pem\n  cert: me.pem\n  key: me.key\n  client_auth: true\n"));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->reward.metadata_fields, (std::vector<std::string>{"difficulty", "source"}));
  EXPECT_EQ(config->reward.metadata_max_kb, 8);
  EXPECT_EQ(config->tls.ca_file, Path("configs/ca.pem"));
  EXPECT_EQ(config->tls.cert_file, Path("configs/me.pem"));
  EXPECT_EQ(config->tls.key_file, Path("configs/me.key"));
  EXPECT_TRUE(config->tls.client_auth);
  const TlsOptions remote = config->tls.For("10.1.2.3:50051");
  EXPECT_EQ(remote.cert_file, Path("configs/me.pem"));
  EXPECT_TRUE(remote.client_auth);
  EXPECT_FALSE(config->tls.For("127.0.0.1:50051").client_enabled());
  EXPECT_FALSE(config->tls.For("localhost:1").server_enabled());
  // The default: no TLS anywhere, and every extra field of a row as metadata.
  absl::StatusOr<RunConfig> plain = Load(Minimal());
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_FALSE(plain->tls.For("10.1.2.3:50051").client_enabled());
  EXPECT_EQ(plain->reward.metadata_fields, (std::vector<std::string>{"*"}));

  const std::string no_key = absl::StrCat(Minimal(), "tls:\n  cert: me.pem\n");
  EXPECT_THAT(LoadError(no_key), HasSubstr("tls.cert is set without key"));
  const std::string no_ca =
      absl::StrCat(Minimal(), "tls:\n  cert: me.pem\n  key: me.key\n  client_auth: true\n");
  EXPECT_THAT(LoadError(no_ca), HasSubstr("tls.client_auth needs ca"));
  const std::string missing = absl::StrCat(Minimal(), "tls:\n  ca: nowhere.pem\n");
  EXPECT_THAT(LoadError(missing), HasSubstr("tls.ca"));
  const std::string big = absl::StrCat(Minimal(), "reward:\n  metadata_max_kb: 99999\n");
  EXPECT_THAT(LoadError(big), HasSubstr("reward.metadata_max_kb"));
}

}  // namespace
}  // namespace lightrl
