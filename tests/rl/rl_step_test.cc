// The RL step's parts without a model: scoring generated groups with a real built-in
// reward, the trained records (penalties, dynamic sampling, advantages, masks), the
// learner's batch and the step's metrics.
#include "rl/rl_step.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "reward/reward_registry.h"

namespace lightrl {
namespace {

// Token t decodes as the character ('0' + t), so a response's tokens spell its text.
absl::StatusOr<std::string> Decode(const std::vector<int32_t>& tokens) {
  std::string text;
  for (int32_t t : tokens) {
    if (t < 0 || t > 9) return absl::InvalidArgumentError(absl::StrCat("token ", t));
    text += static_cast<char>('0' + t);
  }
  return text;
}

Example Ex(const std::string& id, const std::string& prompt, const std::string& answer) {
  Example ex;
  ex.id = id;
  ex.prompt = prompt;
  ex.answer = answer;
  return ex;
}

GeneratedSample Sample(std::vector<int32_t> tokens, FinishReason finish = FinishReason::kStop) {
  GeneratedSample s;
  s.tokens = std::move(tokens);
  s.logprobs.assign(s.tokens.size(), -0.5f);
  s.finish_reason = finish;
  return s;
}

// The math kind scores "\boxed{answer}" responses; this rewards responses whose text is
// the answer itself through the same kind, by wrapping it.
struct MathScorer {
  RewardFunctionPtr math;
  int calls = 0;
  std::vector<size_t> batch_sizes;
  absl::StatusOr<BatchRewards> operator()(const std::vector<RewardInput>& inputs) {
    ++calls;
    batch_sizes.push_back(inputs.size());
    BatchRewards out;
    out.sources = {"math", "length"};
    out.by_source.resize(2);
    for (RewardInput in : inputs) {
      in.response = absl::StrCat("\\boxed{", in.response, "}");
      absl::StatusOr<RewardResult> r = math->Score(in);
      if (!r.ok()) return r.status();
      out.by_source[0].push_back(*r);
      RewardResult length;
      length.score = -0.1 * static_cast<double>(in.response.size());
      out.by_source[1].push_back(length);
      out.rewards.push_back(*std::move(r));
    }
    return out;
  }
};

MathScorer MakeMathScorer() {
  absl::StatusOr<RewardFunctionPtr> math = MakeRewardFunction("math");
  EXPECT_TRUE(math.ok()) << math.status();
  MathScorer scorer;
  scorer.math = *std::move(math);
  return scorer;
}

TEST(ScoreGroups, ScoresEveryGroupInOneBatchInSampleOrder) {
  std::vector<Example> examples = {Ex("a:1", "one plus one", "2"), Ex("a:2", "two times two", "4")};
  std::vector<const Example*> ptrs = {&examples[0], &examples[1]};
  std::vector<GenerationRequest> reqs(2);
  reqs[0].prompt = {1, 2};
  reqs[1].prompt = {3};
  std::vector<GroupGeneration> gens(2);
  gens[0].weight_version = 3;
  gens[0].samples = {Sample({2}), Sample({3}), Sample({2, 2})};
  gens[1].weight_version = 4;
  gens[1].samples = {Sample({4}), Sample({5})};
  MathScorer scorer = MakeMathScorer();
  std::vector<RewardInput> seen;
  auto score = [&](const std::vector<RewardInput>& inputs) {
    seen = inputs;
    return scorer(inputs);
  };
  auto groups = ScoreGroups(ptrs, reqs, gens, Decode, score);
  ASSERT_TRUE(groups.ok()) << groups.status();
  EXPECT_EQ(scorer.calls, 1);
  ASSERT_EQ(seen.size(), 5u);
  EXPECT_EQ(seen[2].response, "22");
  EXPECT_EQ(seen[2].prompt, "one plus one");
  EXPECT_EQ(seen[2].ground_truth, "2");
  EXPECT_EQ(seen[2].metadata.at("response_tokens"), "2");
  EXPECT_EQ(seen[3].ground_truth, "4");
  ASSERT_EQ(groups->size(), 2u);
  const ScoredGroup& g0 = (*groups)[0];
  EXPECT_EQ(g0.example, &examples[0]);
  EXPECT_EQ(g0.request.prompt, (std::vector<int32_t>{1, 2}));
  EXPECT_EQ(g0.texts, (std::vector<std::string>{"2", "3", "22"}));
  ASSERT_EQ(g0.rewards.size(), 3u);
  EXPECT_EQ(g0.rewards[0].score, 1.0);
  EXPECT_EQ(g0.rewards[1].score, 0.0);
  EXPECT_EQ(g0.rewards[2].score, 0.0);
  const ScoredGroup& g1 = (*groups)[1];
  EXPECT_EQ(g1.generation.weight_version, 4);
  ASSERT_EQ(g1.rewards.size(), 2u);
  EXPECT_EQ(g1.rewards[0].score, 1.0);
  EXPECT_EQ(g1.rewards[1].score, 0.0);
  // Each source's rows are cut to the group's samples.
  EXPECT_EQ(g1.sources, (std::vector<std::string>{"math", "length"}));
  ASSERT_EQ(g1.source_rewards.size(), 2u);
  ASSERT_EQ(g1.source_rewards[1].size(), 2u);
  EXPECT_DOUBLE_EQ(g1.source_rewards[1][0].score, -0.1 * 9);  // the 9 characters of \boxed{4}
  ASSERT_EQ(g0.source_rewards[0].size(), 3u);
  EXPECT_EQ(g0.source_rewards[0][2].score, 0.0);
}

TEST(ScoreGroups, AFailedGenerationOrADecodeErrorFailsBeforeScoring) {
  std::vector<Example> examples = {Ex("a:1", "p", "2"), Ex("a:2", "q", "4")};
  std::vector<const Example*> ptrs = {&examples[0], &examples[1]};
  std::vector<GroupGeneration> gens(2);
  gens[0].samples = {Sample({2})};
  gens[1].status = absl::UnavailableError("rollout worker 127.0.0.1:9 is down");
  MathScorer scorer = MakeMathScorer();
  auto score = [&](const std::vector<RewardInput>& inputs) { return scorer(inputs); };
  auto groups = ScoreGroups(ptrs, std::vector<GenerationRequest>(2), gens, Decode, score);
  ASSERT_FALSE(groups.ok());
  EXPECT_EQ(groups.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(scorer.calls, 0);

  gens[1].status = absl::OkStatus();
  gens[1].samples = {Sample({42})};
  groups = ScoreGroups(ptrs, std::vector<GenerationRequest>(2), gens, Decode, score);
  ASSERT_FALSE(groups.ok());
  EXPECT_EQ(groups.status().message(), "token 42");
  EXPECT_EQ(scorer.calls, 0);
}

TEST(ScoreGroups, ARewardOfTheWrongSizeIsAnInternalError) {
  std::vector<Example> examples = {Ex("a:1", "p", "2")};
  std::vector<GroupGeneration> gens(1);
  gens[0].samples = {Sample({2}), Sample({3})};
  auto short_reward = [](const std::vector<RewardInput>&) {
    BatchRewards out;
    out.rewards.resize(1);
    return absl::StatusOr<BatchRewards>(out);
  };
  auto groups = ScoreGroups({&examples[0]}, std::vector<GenerationRequest>(1), gens, Decode, short_reward);
  ASSERT_FALSE(groups.ok());
  EXPECT_EQ(groups.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(groups.status().message().find("1 results for 2 responses"), std::string::npos)
      << groups.status();
  auto short_source = [](const std::vector<RewardInput>&) {
    BatchRewards out;
    out.rewards.resize(2);
    out.sources = {"judge"};
    out.by_source = {std::vector<RewardResult>(3)};
    return absl::StatusOr<BatchRewards>(out);
  };
  groups = ScoreGroups({&examples[0]}, std::vector<GenerationRequest>(1), gens, Decode, short_source);
  ASSERT_FALSE(groups.ok());
  EXPECT_NE(groups.status().message().find("reward source \"judge\" returned 3 results for 2"),
            std::string::npos)
      << groups.status();
}

ScoredGroup MakeScored(const Example* ex, std::vector<GeneratedSample> samples,
                       std::vector<RewardResult> rewards, int64_t version) {
  ScoredGroup g;
  g.example = ex;
  g.request.prompt = {7, 8};
  g.generation.weight_version = version;
  g.generation.samples = std::move(samples);
  for (const GeneratedSample& s : g.generation.samples) g.texts.push_back(*Decode(s.tokens));
  g.rewards = std::move(rewards);
  return g;
}

RewardResult Reward(double score, std::vector<std::pair<std::string, double>> components = {}) {
  RewardResult r;
  r.score = score;
  r.components = std::move(components);
  return r;
}

TEST(Correctness, TheCorrectComponentElseTheScore) {
  EXPECT_EQ(Correctness(Reward(0.7)), 0.7);
  EXPECT_EQ(Correctness(Reward(0.7, {{"format", 1}, {"correct", 0}})), 0.0);
  EXPECT_EQ(Correctness(Reward(0.7, {{"math", 0.5}, {"math/correct", 1}})), 1.0);
  EXPECT_EQ(Correctness(Reward(0.7, {{"incorrect", 1}})), 0.7);
}

TEST(BuildTrainGroup, AdvantagesFromTheRewardsAndTheRecordForTheLog) {
  const Example ex = Ex("d:3", "prompt", "5");
  ScoredGroup scored = MakeScored(&ex, {Sample({5}), Sample({1, 1}), Sample({5, 5, 5})},
                                  {Reward(1, {{"correct", 1}}), Reward(0, {{"correct", 0}}),
                                   Reward(0.5, {{"correct", 1}})},
                                  /*version=*/6);
  TrainGroupOptions options;
  RewardMetricNames names;
  RlStepMetrics metrics(&names);
  auto group = BuildTrainGroup(scored, 4, "step-4-0-1", /*learner_version=*/7, options, &metrics);
  ASSERT_TRUE(group.ok()) << group.status();
  ASSERT_TRUE(group->has_value());
  const RolloutGroup& g = (*group)->record;
  EXPECT_EQ(g.step, 4);
  EXPECT_EQ(g.policy_version, 6);
  EXPECT_EQ(g.group_id, "step-4-0-1");
  EXPECT_EQ(g.prompt_text, "prompt");
  EXPECT_EQ(g.prompt_tokens, (std::vector<int32_t>{7, 8}));
  EXPECT_EQ(g.ground_truth, "5");
  ASSERT_EQ(g.samples.size(), 3u);
  auto expected = GroupAdvantages(std::vector<double>{1, 0, 0.5});
  ASSERT_TRUE(expected.ok());
  for (size_t k = 0; k < 3; ++k) EXPECT_EQ(g.samples[k].advantage, (*expected)[k]) << k;
  EXPECT_EQ(g.samples[1].text, "11");
  EXPECT_EQ(g.samples[1].finish_reason, "stop");
  EXPECT_EQ(g.samples[2].reward, 0.5);
  EXPECT_EQ((*group)->keep, (std::vector<float>{1, 1, 1}));
  // Correctness is the "correct" component: 2 of 3.
  EXPECT_DOUBLE_EQ(metrics.accuracy(), 2.0 / 3);
  EXPECT_DOUBLE_EQ(metrics.reward_mean(), 0.5);
  EXPECT_DOUBLE_EQ(metrics.length_mean(), 2.0);
  EXPECT_EQ(metrics.groups_trained(), 1);
}

TEST(BuildTrainGroup, DynamicSamplingDropsAGroupOfEqualCorrectnessButCountsItsSamples) {
  const Example ex = Ex("d:1", "p", "5");
  // Rewards differ only by a format bonus; the answers are all wrong.
  ScoredGroup scored = MakeScored(&ex, {Sample({1}), Sample({2})},
                                  {Reward(0.2, {{"correct", 0}}), Reward(0, {{"correct", 0}})}, 0);
  TrainGroupOptions options;
  options.signal.dynamic_sampling = true;
  RewardMetricNames names;
  RlStepMetrics metrics(&names);
  auto group = BuildTrainGroup(scored, 0, "g", 0, options, &metrics);
  ASSERT_TRUE(group.ok()) << group.status();
  EXPECT_FALSE(group->has_value());
  EXPECT_EQ(metrics.groups_trained(), 0);
  EXPECT_DOUBLE_EQ(metrics.reward_mean(), 0.1);
  LearnerStats st;
  const Scalars scalars = metrics.ToScalars(st, 1.0, {}, std::nullopt, std::nullopt);
  std::map<std::string, double> by_name(scalars.begin(), scalars.end());
  EXPECT_EQ(by_name.at("rollout/groups_dropped"), 1);
  EXPECT_EQ(by_name.at("rollout/groups_trained"), 0);

  options.signal.dynamic_sampling = false;
  group = BuildTrainGroup(scored, 0, "g", 0, options, &metrics);
  ASSERT_TRUE(group.ok()) << group.status();
  EXPECT_TRUE(group->has_value());
}

TEST(BuildTrainGroup, SoftOverlongPenaltyAndFilterApplyAfterCorrectness) {
  const Example ex = Ex("d:1", "p", "5");
  ScoredGroup scored = MakeScored(
      &ex, {Sample({5}), Sample({5, 5, 5, 5}, FinishReason::kLength), Sample({1, 1, 1})},
      {Reward(1, {{"correct", 1}}), Reward(1, {{"correct", 1}}), Reward(0, {{"correct", 0}})}, 0);
  TrainGroupOptions options;
  options.signal.overlong_filter = true;
  options.signal.overlong.max_response_length = 4;
  options.signal.overlong.buffer = 2;
  options.soft_overlong_penalty = true;
  RewardMetricNames names;
  RlStepMetrics metrics(&names);
  auto group = BuildTrainGroup(scored, 0, "g", 0, options, &metrics);
  ASSERT_TRUE(group.ok()) << group.status();
  ASSERT_TRUE(group->has_value());
  const RolloutGroup& g = (*group)->record;
  // 4 tokens at a limit of 4 with a buffer of 2: the whole penalty; 3 tokens: half.
  EXPECT_DOUBLE_EQ(g.samples[0].reward, 1.0);
  EXPECT_DOUBLE_EQ(g.samples[1].reward, 0.0);
  EXPECT_DOUBLE_EQ(g.samples[2].reward, -0.5);
  ASSERT_EQ(g.samples[2].reward_components.size(), 2u);
  EXPECT_EQ(g.samples[2].reward_components[1].first, "overlong_penalty");
  EXPECT_DOUBLE_EQ(g.samples[2].reward_components[1].second, -0.5);
  // The truncated response is masked out; the one that stopped at 3 tokens is not.
  EXPECT_EQ((*group)->keep, (std::vector<float>{1, 0, 1}));
  // Accuracy reads correctness before the penalty.
  EXPECT_DOUBLE_EQ(metrics.accuracy(), 2.0 / 3);
  EXPECT_DOUBLE_EQ(metrics.reward_mean(), 0.5 / 3);
}

TEST(BuildTrainGroup, EachRewardSourceIsLoggedWithItsComponents) {
  const Example ex = Ex("d:1", "p", "5");
  ScoredGroup scored = MakeScored(&ex, {Sample({5}), Sample({1}), Sample({5, 5})},
                                  {Reward(1), Reward(0), Reward(2)}, 0);
  scored.sources = {"judge", "math"};
  scored.source_rewards = {
      {Reward(0.5, {{"style", 1}, {"correct", 1}}), Reward(0.25, {{"style", 0}}),
       Reward(1, {{"style", 1}, {"correct", 0}})},
      {Reward(1, {{"correct", 1}}), Reward(0, {{"correct", 0}}), Reward(1, {{"correct", 1}})}};
  RewardMetricNames names;
  RlStepMetrics metrics(&names);
  auto group = BuildTrainGroup(scored, 0, "g", 0, TrainGroupOptions(), &metrics);
  ASSERT_TRUE(group.ok()) << group.status();
  const Scalars scalars = metrics.ToScalars(LearnerStats(), 1.0, {}, std::nullopt, std::nullopt);
  std::vector<std::string> source_names;
  std::map<std::string, double> by_name;
  for (const auto& [name, value] : scalars) {
    by_name[name] = value;
    if (name.rfind("reward/judge", 0) == 0 || name.rfind("reward/math", 0) == 0) {
      source_names.push_back(name);
    }
  }
  // In the order first seen, right after the step's own reward metrics.
  EXPECT_EQ(absl::StrJoin(source_names, ","),
            "reward/judge,reward/judge/style,reward/judge/correct,reward/math,reward/math/correct");
  EXPECT_DOUBLE_EQ(by_name.at("reward/judge"), 1.75 / 3);
  EXPECT_DOUBLE_EQ(by_name.at("reward/judge/style"), 2.0 / 3);
  // A component is averaged over the samples that returned it.
  EXPECT_DOUBLE_EQ(by_name.at("reward/judge/correct"), 0.5);
  EXPECT_DOUBLE_EQ(by_name.at("reward/math"), 2.0 / 3);
  EXPECT_DOUBLE_EQ(by_name.at("reward/mean"), 1.0);
  // Rows that do not match the group are an error, not a misattribution.
  scored.source_rewards[1].pop_back();
  group = BuildTrainGroup(scored, 0, "g", 0, TrainGroupOptions(), &metrics);
  ASSERT_FALSE(group.ok());
  EXPECT_EQ(group.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(group.status().message().find("reward source \"math\" has 2 results for 3 samples"),
            std::string::npos)
      << group.status();
}

TEST(RewardMetricNames, ARunLogsABoundedSetOfBoundedNames) {
  RewardMetricNames names;
  RewardSourceMeans means(&names);
  // A server that returns a new component name for every sample.
  for (size_t i = 0; i < RewardMetricNames::kMaxNames + 50; ++i) {
    means.Add("judge", Reward(1, {{absl::StrCat("c", i), 1}}));
  }
  means.Add("judge", Reward(1, {{std::string(RewardMetricNames::kMaxNameBytes + 1, 'x'), 1}}));
  const Scalars scalars = means.ToScalars("eval/reward/");
  EXPECT_EQ(scalars.size(), RewardMetricNames::kMaxNames);
  EXPECT_EQ(scalars[0].first, "eval/reward/judge");
  EXPECT_DOUBLE_EQ(scalars[0].second, 1.0);
  // Names admitted before stay admitted, in later steps too.
  RewardSourceMeans later(&names);
  later.Add("judge", Reward(3, {{"c0", 2}, {"c9999", 1}}));
  const Scalars again = later.ToScalars("reward/");
  ASSERT_EQ(again.size(), 2u);
  EXPECT_EQ(again[1].first, "reward/judge/c0");
  EXPECT_TRUE(IsReservedRewardSourceName("accuracy"));
  EXPECT_TRUE(IsReservedRewardSourceName("mean"));
  EXPECT_TRUE(IsReservedRewardSourceName("length_corr"));
  EXPECT_FALSE(IsReservedRewardSourceName("math"));
}

TEST(BuildTrainBatch, EveryResponseOfEveryGroupInOrder) {
  const Example ex = Ex("d:1", "p", "5");
  TrainGroupOptions options;
  options.signal.overlong_filter = true;
  options.signal.overlong.max_response_length = 2;
  RewardMetricNames names;
  RlStepMetrics metrics(&names);
  std::vector<TrainGroup> groups;
  for (int i = 0; i < 2; ++i) {
    ScoredGroup scored = MakeScored(&ex, {Sample({5}), Sample({1, 1}, FinishReason::kLength)},
                                    {Reward(1), Reward(0)}, i);
    auto group = BuildTrainGroup(scored, 0, absl::StrCat("step-0-0-", i), 1, options, &metrics);
    ASSERT_TRUE(group.ok() && group->has_value());
    groups.push_back(**group);
  }
  const std::vector<TrainSample> batch = BuildTrainBatch(groups);
  ASSERT_EQ(batch.size(), 4u);
  std::vector<std::string> ids;
  for (const TrainSample& s : batch) ids.push_back(s.id);
  EXPECT_EQ(absl::StrJoin(ids, ","), "step-0-0-0/0,step-0-0-0/1,step-0-0-1/0,step-0-0-1/1");
  EXPECT_EQ(batch[3].prompt, (std::vector<int32_t>{7, 8}));
  EXPECT_EQ(batch[3].response, (std::vector<int32_t>{1, 1}));
  EXPECT_EQ(batch[3].rollout_logprobs, (std::vector<float>{-0.5f, -0.5f}));
  EXPECT_FALSE(batch[3].keep);
  EXPECT_TRUE(batch[2].keep);
  EXPECT_DOUBLE_EQ(batch[2].advantage, groups[1].record.samples[0].advantage);
  EXPECT_GT(batch[2].advantage, 0);
  EXPECT_LT(batch[3].advantage, 0);
  // Staleness: versions 0 and 1 against learner version 1.
  LearnerStats st;
  AsyncRolloutStats ahead;
  ahead.in_flight = 2;
  ahead.ready_ahead = 1;
  AsyncRolloutStats after = ahead;
  after.stale_requeued = 5;
  const Scalars scalars = metrics.ToScalars(st, 2.0, {{"fleet/workers", 3}}, ahead, after);
  std::map<std::string, double> by_name(scalars.begin(), scalars.end());
  EXPECT_DOUBLE_EQ(by_name.at("async/staleness_mean"), 0.5);
  EXPECT_EQ(by_name.at("async/staleness_max"), 1);
  EXPECT_EQ(by_name.at("async/groups_ahead"), 3);
  EXPECT_EQ(by_name.at("async/stale_requeued"), 5);
  EXPECT_EQ(by_name.at("fleet/workers"), 3);
}

TEST(RlStepMetrics, RewardStatisticsAndTheLoggingOrder) {
  RewardMetricNames names;
  RlStepMetrics metrics(&names);
  const double rewards[] = {1.0, -0.5, 0.25, 0.0};
  for (int i = 0; i < 4; ++i) metrics.AddSample(rewards[i], i % 2, 10 * (i + 1));
  metrics.AddGenerateSeconds(2.0);
  metrics.AddGenerateSeconds(3.0);
  metrics.SetTrainSeconds(4.0);
  metrics.SetWeightSyncSeconds(0.5);
  LearnerStats st;
  st.loss = 0.125;
  st.tokens = 80;
  const Scalars scalars = metrics.ToScalars(st, 10.0, {}, std::nullopt, std::nullopt);
  std::vector<std::string> logged;
  for (const auto& [name, value] : scalars) logged.push_back(name);
  ASSERT_GE(logged.size(), 8u);
  EXPECT_EQ(absl::StrJoin(logged.begin(), logged.begin() + 7, ","),
            "reward/mean,reward/std,reward/accuracy,response/length_mean,rollout/groups_trained,"
            "rollout/groups_dropped,rollout/tokens_per_s");
  // Then any further reward/ metrics, then the learner's.
  size_t learner = 7;
  while (learner < logged.size() && logged[learner].rfind("reward/", 0) == 0) ++learner;
  ASSERT_LT(learner, logged.size());
  EXPECT_EQ(logged[learner], "loss/total");
  std::map<std::string, double> by_name(scalars.begin(), scalars.end());
  const double mean = 0.75 / 4;
  double var = 0;
  for (double r : rewards) var += (r - mean) * (r - mean);
  EXPECT_DOUBLE_EQ(by_name.at("reward/mean"), mean);
  EXPECT_NEAR(by_name.at("reward/std"), std::sqrt(var / 4), 1e-12);
  EXPECT_DOUBLE_EQ(by_name.at("reward/accuracy"), 0.5);
  EXPECT_DOUBLE_EQ(by_name.at("response/length_mean"), 25);
  // Without async generation the rate is over the time spent generating.
  EXPECT_DOUBLE_EQ(by_name.at("rollout/tokens_per_s"), 100.0 / 5.0);
  EXPECT_DOUBLE_EQ(by_name.at("time/generate_s"), 5.0);
  EXPECT_DOUBLE_EQ(by_name.at("time/step_s"), 10.0);
  EXPECT_DOUBLE_EQ(by_name.at("train/tokens_per_s"), 20.0);
  EXPECT_DOUBLE_EQ(by_name.at("loss/total"), 0.125);
  EXPECT_EQ(by_name.count("async/staleness_mean"), 0u);
  // A step without samples logs zeros, not NaN.
  RlStepMetrics empty(&names);
  for (const auto& [name, value] : empty.ToScalars(st, 1.0, {}, std::nullopt, std::nullopt)) {
    EXPECT_TRUE(std::isfinite(value)) << name;
  }
}

TEST(RlStepMetrics, LengthCorrelationOfTheRewardAndOfEachJudgesScore) {
  RewardMetricNames names;
  RlStepMetrics metrics(&names);
  const double lengths[] = {1, 2, 3, 4};
  const double judged[] = {1, 3, 2, 5};
  for (int i = 0; i < 4; ++i) {
    RewardResult r;
    r.score = -0.5 * i;  // falls with length
    r.components = {{"genrm/judge", judged[i]}, {"judge", 1.0}, {"math/correct", i % 2}};
    metrics.AddRewardLength(r, static_cast<int64_t>(lengths[i]));
  }
  LearnerStats st;
  const Scalars scalars = metrics.ToScalars(st, 1.0, {}, std::nullopt, std::nullopt);
  std::map<std::string, double> by_name(scalars.begin(), scalars.end());
  // Pearson's r by its two-pass definition.
  double mx = 0, my = 0;
  for (int i = 0; i < 4; ++i) mx += lengths[i] / 4, my += judged[i] / 4;
  double sxy = 0, sxx = 0, syy = 0;
  for (int i = 0; i < 4; ++i) {
    sxy += (lengths[i] - mx) * (judged[i] - my);
    sxx += (lengths[i] - mx) * (lengths[i] - mx);
    syy += (judged[i] - my) * (judged[i] - my);
  }
  EXPECT_NEAR(by_name.at("reward/genrm/judge/length_corr"), sxy / std::sqrt(sxx * syy), 1e-12);
  EXPECT_NEAR(by_name.at("reward/length_corr"), -1.0, 1e-12);
  // A constant score correlates with nothing: 0, not NaN.
  EXPECT_EQ(by_name.at("reward/judge/length_corr"), 0.0);
  // Only the total and the judges' scores are watched.
  EXPECT_EQ(by_name.count("reward/math/correct/length_corr"), 0u);
}

}  // namespace
}  // namespace lightrl
