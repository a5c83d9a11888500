#include "rl/plan.h"

#include <stdlib.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "rl/run_config.h"

namespace lightrl {
namespace {

using ::testing::HasSubstr;

namespace fs = std::filesystem;

std::string SourcePath(const std::string& rel) { return JoinPath(LIGHTRL_SOURCE_DIR, rel); }

ModelConfig LoadModel(const std::string& rel) {
  absl::StatusOr<ModelConfig> c = ModelConfig::FromFile(SourcePath(rel));
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : ModelConfig{};
}

// The term of a role whose name starts with `prefix`.
double Term(const RoleMemory& m, const std::string& prefix) {
  for (const Figure& f : m.terms) {
    if (absl::StartsWith(f.name, prefix)) return f.value;
  }
  ADD_FAILURE() << "no memory term starting with " << prefix;
  return 0;
}

TEST(PlanParams, MiniMaxM1MatchesPublishedTotals) {
  const ModelConfig m1 = LoadModel("configs/models/minimax-m1/config.json");
  const ParamCounts p = CountParameters(m1);
  // MiniMax-M1 / MiniMax-01: 456B parameters, 45.9B activated per token.
  EXPECT_NEAR(p.total() / 456e9, 1.0, 0.01) << p.total();
  EXPECT_NEAR(p.active_non_embedding() / 45.9e9, 1.0, 0.01) << p.active_non_embedding();
  EXPECT_GT(p.active(), p.active_non_embedding());
  EXPECT_EQ(p.expert_active * 16, p.experts);  // top-2 of 32
}

// Tensor shapes of the tiny hybrid (configs/models/tiny-hybrid.json) written out by hand,
// with checkpoint names, and summed here; no formula of the plan is used.
TEST(PlanParams, TinyConfigMatchesHandCount) {
  const ModelConfig tiny = LoadModel("configs/models/tiny-hybrid.json");
  using Shape = std::vector<int64_t>;
  auto numel = [](const Shape& s) {
    int64_t n = 1;
    for (int64_t d : s) n *= d;
    return n;
  };
  // vocab 512, hidden 128, 4 heads x 32 (inner 128), 2 KV heads (64), 4 experts of 256,
  // top-2; layers 0-6 lightning, layer 7 softmax.
  std::vector<std::pair<std::string, Shape>> lightning_layer = {
      {"self_attn.qkv_proj.weight", {384, 128}},
      {"self_attn.output_gate.weight", {128, 128}},
      {"self_attn.out_proj.weight", {128, 128}},
      {"self_attn.norm.weight", {128}},
  };
  std::vector<std::pair<std::string, Shape>> softmax_layer = {
      {"self_attn.q_proj.weight", {128, 128}},
      {"self_attn.k_proj.weight", {64, 128}},
      {"self_attn.v_proj.weight", {64, 128}},
      {"self_attn.o_proj.weight", {128, 128}},
  };
  std::vector<std::pair<std::string, Shape>> expert = {
      {"w1.weight", {256, 128}}, {"w2.weight", {128, 256}}, {"w3.weight", {256, 128}}};
  int64_t lightning = 0, softmax = 0, experts = 0, router = 0, norms = 0;
  for (int layer = 0; layer < 8; ++layer) {
    for (const auto& [name, shape] : layer < 7 ? lightning_layer : softmax_layer) {
      (layer < 7 ? lightning : softmax) += numel(shape);
    }
    norms += numel({128}) + numel({128});  // input_layernorm, post_attention_layernorm
    router += numel({4, 128});             // block_sparse_moe.gate
    for (int e = 0; e < 4; ++e) {
      for (const auto& [name, shape] : expert) experts += numel(shape);
    }
  }
  norms += numel({128});  // model.norm
  const int64_t embedding = numel({512, 128}), lm_head = numel({512, 128});
  const int64_t one_expert = numel({256, 128}) * 3;

  const ParamCounts p = CountParameters(tiny);
  EXPECT_EQ(p.lightning_attention, lightning);
  EXPECT_EQ(p.softmax_attention, softmax);
  EXPECT_EQ(p.experts, experts);
  EXPECT_EQ(p.router, router);
  EXPECT_EQ(p.norms, norms);
  EXPECT_EQ(p.embedding, embedding);
  EXPECT_EQ(p.lm_head, lm_head);
  EXPECT_EQ(p.total(), lightning + softmax + experts + router + norms + embedding + lm_head);
  EXPECT_EQ(p.active(),
            lightning + softmax + 8 * 2 * one_expert + router + norms + embedding + lm_head);
}

TEST(PlanMemory, StateAndKvSizesByHand) {
  const ModelConfig m1 = LoadModel("configs/models/minimax-m1/config.json");
  // 70 lightning layers x 64 heads x 128 x 128 x 4 B.
  EXPECT_EQ(LightningStateBytesPerSequence(m1), int64_t{70} * 64 * 128 * 128 * 4);
  // 10 softmax layers x 8 KV heads x 128 x (K, V) x 2 B.
  EXPECT_EQ(KvBytesPerToken(m1), int64_t{10} * 8 * 128 * 2 * 2);
}

PlanOptions M1Options() {
  PlanOptions o;
  o.prompts_per_step = 128;
  o.group_size = 16;
  o.max_new_tokens = 80000;
  o.prompt_tokens = 1920;
  o.max_num_seqs = 256;
  o.minibatches = 16;
  o.layout.rollout_instance_gpus = 32;
  o.layout.learner_tp = 8;
  o.layout.learner_ep = 32;
  o.layout.learner_expert_tp = 4;
  return o;
}

TEST(PlanMemory, LightningStateIsConstantInLengthAndKvLinear) {
  const ModelConfig m1 = LoadModel("configs/models/minimax-m1/config.json");
  PlanOptions o = M1Options();
  o.layout.rollout_gpus = 256;
  o.prompt_tokens = 1000;
  o.max_new_tokens = 9000;
  absl::StatusOr<Plan> short_plan = MakePlan(m1, o, 512);
  ASSERT_TRUE(short_plan.ok()) << short_plan.status();
  o.prompt_tokens = 2000;
  o.max_new_tokens = 18000;
  absl::StatusOr<Plan> long_plan = MakePlan(m1, o, 512);
  ASSERT_TRUE(long_plan.ok()) << long_plan.status();
  EXPECT_DOUBLE_EQ(Term(short_plan->rollout_memory, "lightning states"),
                   Term(long_plan->rollout_memory, "lightning states"));
  EXPECT_DOUBLE_EQ(Term(long_plan->rollout_memory, "softmax KV") /
                       Term(short_plan->rollout_memory, "softmax KV"),
                   2.0);
  // 64 sequences per node (256 over 4 attention replicas), heads split over TP 8.
  EXPECT_DOUBLE_EQ(Term(short_plan->rollout_memory, "lightning states"),
                   64.0 * 70 * (64 / 8) * 128 * 128 * 4);
  EXPECT_DOUBLE_EQ(Term(short_plan->rollout_memory, "softmax KV"),
                   64.0 * 10000 * 10 * (8 / 8) * 128 * 2 * 2);
}

TEST(PlanMemory, ZeroOneOptimizerShrinksWithDataParallel) {
  const ModelConfig m1 = LoadModel("configs/models/minimax-m1/config.json");
  PlanOptions o = M1Options();
  o.layout.rollout_gpus = 256;
  absl::StatusOr<Plan> a = MakePlan(m1, o, 512);   // 256 learner GPUs
  absl::StatusOr<Plan> b = MakePlan(m1, o, 768);   // 512 learner GPUs
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->layout.learner_dp * 2, b->layout.learner_dp);
  EXPECT_EQ(a->layout.learner_expert_dp * 2, b->layout.learner_expert_dp);
  const double opt_a = Term(a->learner_memory, "optimizer");
  const double opt_b = Term(b->learner_memory, "optimizer");
  EXPECT_NEAR(opt_a / opt_b, 2.0, 1e-12);
  // Weights are sharded by TP/EP/expert-TP only, so they do not change with DP.
  EXPECT_DOUBLE_EQ(Term(a->learner_memory, "weights"), Term(b->learner_memory, "weights"));
  // Activations: checkpointing keeps a fraction of the full set.
  EXPECT_LT(Term(a->learner_memory, "activations"),
            0.1 * a->learner_activations_no_checkpointing_bytes);
}

TEST(PlanLayoutTest, M1On512H800sFitsWithAValidLayout) {
  const ModelConfig m1 = LoadModel("configs/models/minimax-m1/config.json");
  absl::StatusOr<Plan> p = MakePlan(m1, M1Options(), 512);
  ASSERT_TRUE(p.ok()) << p.status();
  const PlanLayout& l = p->layout;
  EXPECT_TRUE(p->fits()) << FormatPlan(*p);
  EXPECT_EQ(l.rollout_gpus + l.learner_gpus, 512);
  EXPECT_EQ(l.learner_tp * l.learner_dp, l.learner_gpus);
  EXPECT_EQ(l.learner_ep * l.learner_expert_tp * l.learner_expert_dp, l.learner_gpus);
  EXPECT_EQ(32 % l.learner_ep, 0);
  EXPECT_EQ(64 % l.learner_tp, 0);
  EXPECT_EQ(l.rollout_instances * l.rollout_instance_gpus, l.rollout_gpus);
  EXPECT_LE(p->learner_memory.total_bytes, 80e9);
  EXPECT_LE(p->rollout_memory.total_bytes, 80e9);
  EXPECT_GT(p->step_s, 0);
  EXPECT_GE(p->step_s_measured_engine_overhead, p->step_s);
  // 2048 responses of 1920 + 80000 tokens are trained each step.
  EXPECT_EQ(p->tokens_per_step, int64_t{2048} * 81920);
}

TEST(PlanLayoutTest, SearchesExpertTensorParallelWhenZero) {
  const ModelConfig m1 = LoadModel("configs/models/minimax-m1/config.json");
  PlanOptions o = M1Options();
  o.layout.learner_expert_tp = 0;
  absl::StatusOr<Plan> p = MakePlan(m1, o, 512);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->fits());
  EXPECT_THAT(p->layout.chosen_by, HasSubstr("learner_expert_tp"));
  // Every searched size that fits is no faster than the one chosen.
  for (int64_t etp : {1, 2, 4, 8}) {
    o.layout.learner_expert_tp = etp;
    absl::StatusOr<Plan> q = MakePlan(m1, o, 512);
    ASSERT_TRUE(q.ok()) << q.status();
    if (q->fits()) {
      EXPECT_GE(q->step_s, p->step_s) << "expert-TP " << etp;
    }
  }
}

TEST(PlanLayoutTest, DefaultsPlanATinyModelOnTwoNodes) {
  const ModelConfig tiny = LoadModel("configs/models/tiny-hybrid.json");
  absl::StatusOr<Plan> p = MakePlan(tiny, PlanOptions{}, 16);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->fits());
  // learner_tp 0: the largest size dividing 8 GPUs, 4 heads, 2 KV heads and vocab 512.
  EXPECT_EQ(p->layout.learner_tp, 2);
  EXPECT_EQ(p->layout.rollout_gpus + p->layout.learner_gpus, 16);
}

TEST(PlanLayoutTest, TooFewGpusDoNotFit) {
  const ModelConfig m1 = LoadModel("configs/models/minimax-m1/config.json");
  absl::StatusOr<Plan> p = MakePlan(m1, M1Options(), 160);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_FALSE(p->fits());
  EXPECT_FALSE(p->warnings.empty());
}

TEST(PlanErrors, BadGpuCountsAndLayoutsNameTheKey) {
  const ModelConfig m1 = LoadModel("configs/models/minimax-m1/config.json");
  absl::StatusOr<Plan> p = MakePlan(m1, M1Options(), 500);
  ASSERT_FALSE(p.ok());
  EXPECT_THAT(p.status().message(), HasSubstr("--gpus must be a positive multiple of "
                                              "plan.hardware.gpus_per_node (8), got 500"));
  PlanOptions o = M1Options();
  o.layout.learner_ep = 5;
  p = MakePlan(m1, o, 512);
  ASSERT_FALSE(p.ok());
  EXPECT_THAT(p.status().message(),
              HasSubstr("plan.layout.learner_ep must divide num_local_experts (32), got 5"));
  o = M1Options();
  o.layout.learner_tp = 3;
  p = MakePlan(m1, o, 512);
  ASSERT_FALSE(p.ok());
  EXPECT_THAT(p.status().message(), HasSubstr("plan.layout.learner_tp must divide"));
  p = MakePlan(m1, M1Options(), 128);
  ASSERT_FALSE(p.ok());
  EXPECT_THAT(p.status().message(),
              HasSubstr("--gpus 128 has no rollout/learner split: the learner needs a "
                        "multiple of 128 GPUs"));
  o = M1Options();
  o.layout.rollout_gpus = 192;
  p = MakePlan(m1, o, 512);
  ASSERT_FALSE(p.ok());
  EXPECT_THAT(p.status().message(), HasSubstr("plan.layout.rollout_gpus leaves 320 learner GPUs"));
}

// Config files in a scratch directory.
class PlanConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = JoinPath(::testing::TempDir(), "plan_test.XXXXXX");
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    root_ = fs::path(tmpl).lexically_normal().string();
    ASSERT_TRUE(MakeDirs(Path("models/minimax-m1")).ok());
    fs::copy_file(SourcePath("configs/models/minimax-m1/config.json"),
                  Path("models/minimax-m1/config.json"));
  }
  void TearDown() override { fs::remove_all(root_); }
  std::string Path(const std::string& rel) const { return JoinPath(root_, rel); }
  void Write(const std::string& rel, const std::string& text) {
    ASSERT_TRUE(WriteFileAtomic(Path(rel), text).ok()) << rel;
  }
  std::string root_;
};

constexpr char kPlanYaml[] =
    "model:\n"
    "  path: models/minimax-m1\n"
    "rollout:\n"
    "  group_size: 16\n"
    "  prompts_per_step: 128\n"
    "  max_new_tokens: 80000\n"
    "  max_num_seqs: 256\n"
    "plan:\n"
    "  layout:\n"
    "    rollout_instance_gpus: 32\n"
    "    learner_expert_tp: 4\n";

TEST_F(PlanConfigTest, LoadsWorkloadAndPlanSection) {
  Write("x.yaml", absl::StrCat(kPlanYaml, "  mfu: 0.4\n  hardware:\n    hbm_tb_s: 3.0\n"));
  absl::StatusOr<PlanInput> in = LoadPlanInput(Path("x.yaml"));
  ASSERT_TRUE(in.ok()) << in.status();
  EXPECT_EQ(in->model.hidden_size, 6144);
  EXPECT_EQ(in->options.group_size, 16);
  EXPECT_EQ(in->options.max_new_tokens, 80000);
  EXPECT_EQ(in->options.layout.learner_expert_tp, 4);
  EXPECT_DOUBLE_EQ(in->options.mfu, 0.4);
  EXPECT_EQ(in->options.hardware.profile, "h800");
  EXPECT_DOUBLE_EQ(in->options.hardware.hbm_tb_s, 3.0);
  EXPECT_DOUBLE_EQ(in->options.hardware.nvlink_gb_s, 400);
  EXPECT_THAT(in->options.hardware.source, HasSubstr("overridden"));
}

TEST_F(PlanConfigTest, BadPlanKeysNameFileLineAndKey) {
  Write("x.yaml", absl::StrCat(kPlanYaml, "  mfu: 2\n"));
  absl::StatusOr<PlanInput> in = LoadPlanInput(Path("x.yaml"));
  ASSERT_FALSE(in.ok());
  EXPECT_EQ(in.status().message(),
            absl::StrCat(Path("x.yaml"), ":12: plan.mfu must be in (0, 1], got 2"));

  Write("x.yaml", absl::StrCat(kPlanYaml, "    learner_pp: 2\n"));
  in = LoadPlanInput(Path("x.yaml"));
  ASSERT_FALSE(in.ok());
  EXPECT_THAT(in.status().message(),
              HasSubstr(absl::StrCat(Path("x.yaml"), ":12: plan.layout.learner_pp is not a "
                                                     "known key")));

  Write("x.yaml", absl::StrCat(kPlanYaml, "  hardware:\n    profile: a100\n"));
  in = LoadPlanInput(Path("x.yaml"));
  ASSERT_FALSE(in.ok());
  EXPECT_THAT(in.status().message(),
              HasSubstr(":13: plan.hardware.profile must be h800, h100 or h200, got \"a100\""));

  Write("x.yaml", "model:\n  path: nowhere\n");
  in = LoadPlanInput(Path("x.yaml"));
  ASSERT_FALSE(in.ok());
  EXPECT_THAT(in.status().message(), HasSubstr(":2: model.path: "));
}

TEST_F(PlanConfigTest, LayoutErrorsPointAtTheirLine) {
  Write("x.yaml", absl::StrCat(kPlanYaml, "    learner_ep: 5\n"));
  absl::StatusOr<PlanInput> in = LoadPlanInput(Path("x.yaml"));
  ASSERT_TRUE(in.ok()) << in.status();
  absl::StatusOr<Plan> p = MakePlan(in->model, in->options, 512);
  ASSERT_FALSE(p.ok());
  EXPECT_THAT(LocateInConfig(in->doc, p.status()).message(),
              HasSubstr(absl::StrCat(Path("x.yaml"), ":12: plan.layout.learner_ep must divide "
                                                     "num_local_experts (32), got 5")));
}

// The run config's parallel: section is the learner layout the plan uses and prints.
TEST_F(PlanConfigTest, ReadsAndPrintsTheParallelSection) {
  Write("x.yaml", absl::StrCat("parallel:\n  tp: 4\n  ep: 16\n", kPlanYaml));
  absl::StatusOr<PlanInput> in = LoadPlanInput(Path("x.yaml"));
  ASSERT_TRUE(in.ok()) << in.status();
  EXPECT_EQ(in->options.layout.learner_tp, 4);
  EXPECT_EQ(in->options.layout.learner_ep, 16);
  EXPECT_EQ(in->options.layout.learner_expert_tp, 4);  // plan.layout, not in parallel:
  absl::StatusOr<Plan> p = MakePlan(in->model, in->options, 512);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->layout.learner_tp, 4);
  EXPECT_EQ(p->layout.learner_ep, 16);
  const ParallelLayout printed = LearnerParallelLayout(p->layout);
  EXPECT_EQ(printed.tp, 4);
  EXPECT_EQ(printed.ep, 16);
  EXPECT_EQ(printed.expert_tp, 4);
  EXPECT_EQ(printed.dp, p->layout.learner_gpus / 4);
  EXPECT_TRUE(printed.sequence_parallel);
  // What the plan prints, read back as a run config's parallel: section, is that layout,
  // and it fits the learner's world.
  Json json = PlanToJson(*p);
  const Json* section = json.find("layout")->find("parallel");
  ASSERT_NE(section, nullptr);
  ParallelLayout back;
  ConfigSource source;
  ASSERT_TRUE(BindTable(ParallelLayout::Table(), section, "parallel", source, back).ok());
  EXPECT_EQ(back.tp, 4);
  EXPECT_EQ(back.dp, printed.dp);
  EXPECT_EQ(back.ep, 16);
  EXPECT_EQ(back.expert_tp, 4);
  EXPECT_TRUE(back.sequence_parallel);
  EXPECT_TRUE(back.CheckWorld(p->layout.learner_gpus).ok());
  EXPECT_TRUE(back.CheckModel(in->model).ok());
  EXPECT_THAT(FormatPlan(*p),
              HasSubstr(absl::StrCat("learner as run config keys: parallel: {tp: 4, dp: ",
                                     printed.dp, ", ep: 16, expert_tp: 4, "
                                     "sequence_parallel: true}")));

  // The older spelling of ep counts too.
  Write("x.yaml", absl::StrCat("distributed:\n  expert_parallel: 8\n", kPlanYaml));
  in = LoadPlanInput(Path("x.yaml"));
  ASSERT_TRUE(in.ok()) << in.status();
  EXPECT_EQ(in->options.layout.learner_ep, 8);
}

TEST_F(PlanConfigTest, ParallelSectionErrorsNameTheKey) {
  // M1: 64 heads, 8 KV heads, vocab 200064, 32 experts.
  Write("x.yaml", absl::StrCat("parallel:\n  tp: 16\n", kPlanYaml));
  absl::StatusOr<PlanInput> in = LoadPlanInput(Path("x.yaml"));
  ASSERT_FALSE(in.ok());
  EXPECT_EQ(in.status().message(),
            absl::StrCat(Path("x.yaml"), ":2: parallel.tp (16) must divide the model's "
                                         "num_key_value_heads (8): softmax attention is split "
                                         "by KV heads"));
  Write("x.yaml", absl::StrCat("parallel:\n  ep: 3\n", kPlanYaml));
  in = LoadPlanInput(Path("x.yaml"));
  ASSERT_FALSE(in.ok());
  EXPECT_EQ(in.status().message(),
            absl::StrCat(Path("x.yaml"), ":2: parallel.ep (3) must divide the model's "
                                         "num_local_experts (32)"));
  Write("x.yaml", absl::StrCat("parallel:\n  expert_tp: 2\n", kPlanYaml));
  in = LoadPlanInput(Path("x.yaml"));
  ASSERT_FALSE(in.ok());
  EXPECT_EQ(in.status().message(),
            absl::StrCat(Path("x.yaml"), ":2: parallel.expert_tp (2) and "
                                         "plan.layout.learner_expert_tp (4) differ; give the "
                                         "learner's layout once, in parallel:"));
  Write("x.yaml", absl::StrCat("parallel:\n  tp: 0\n", kPlanYaml));
  in = LoadPlanInput(Path("x.yaml"));
  ASSERT_FALSE(in.ok());
  EXPECT_EQ(in.status().message(),
            absl::StrCat(Path("x.yaml"), ":2: parallel.tp must be >= 1, got 0"));
}

// `lightrl run` reads the same file and leaves `plan:` to `lightrl plan`.
TEST_F(PlanConfigTest, RunLoaderAcceptsTheShippedM1Config) {
  ASSERT_TRUE(MakeDirs(Path("data")).ok());
  ASSERT_TRUE(MakeDirs(Path("secrets")).ok());
  Write("data/math-rl-train.jsonl", "{\"prompt\": \"1+1\", \"answer\": \"2\"}\n");
  Write("data/math-rl-eval.jsonl", "{\"prompt\": \"2+2\", \"answer\": \"4\"}\n");
  Write("secrets/fleet-token", "token\n");
  fs::copy_file(SourcePath("configs/minimax-m1-512xh800.yaml"), Path("m1.yaml"));
  absl::StatusOr<RunConfig> run = LoadRunConfig(Path("m1.yaml"));
  ASSERT_TRUE(run.ok()) << run.status();
  EXPECT_EQ(run->rollout.max_new_tokens, 80000);
  absl::StatusOr<PlanInput> plan = LoadPlanInput(Path("m1.yaml"));
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->options.max_new_tokens, run->rollout.max_new_tokens);
  EXPECT_EQ(plan->options.minibatches, run->algorithm.minibatches);
}

}  // namespace
}  // namespace lightrl
