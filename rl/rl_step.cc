#include "rl/rl_step.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace lightrl {

double Correctness(const RewardResult& r) {
  for (const auto& [name, value] : r.components) {
    if (name == "correct" || absl::EndsWith(name, "/correct")) return value;
  }
  return r.score;
}

absl::StatusOr<std::vector<ScoredGroup>> ScoreGroups(const std::vector<const Example*>& examples,
                                                     std::vector<GenerationRequest> requests,
                                                     std::vector<GroupGeneration> generations,
                                                     const ResponseDecodeFn& decode,
                                                     const RewardBatchFn& score) {
  if (examples.size() != requests.size() || examples.size() != generations.size()) {
    return absl::InternalError(absl::StrCat("ScoreGroups: ", examples.size(), " examples, ",
                                            requests.size(), " requests and ", generations.size(),
                                            " generations"));
  }
  std::vector<ScoredGroup> groups(examples.size());
  std::vector<RewardInput> inputs;
  for (size_t i = 0; i < groups.size(); ++i) {
    if (!generations[i].status.ok()) return generations[i].status;
    ScoredGroup& g = groups[i];
    g.example = examples[i];
    g.request = std::move(requests[i]);
    g.generation = std::move(generations[i]);
    for (const GeneratedSample& s : g.generation.samples) {
      RewardInput in;
      in.prompt = g.example->prompt;
      ASSIGN_OR_RETURN(in.response, decode(s.tokens));
      in.ground_truth = g.example->answer;
      in.metadata = g.example->metadata;
      in.metadata["response_tokens"] = absl::StrCat(s.tokens.size());
      g.texts.push_back(in.response);
      inputs.push_back(std::move(in));
    }
  }
  ASSIGN_OR_RETURN(BatchRewards batch, score(inputs));
  if (batch.rewards.size() != inputs.size()) {
    return absl::InternalError(absl::StrCat("ScoreGroups: the reward returned ", batch.rewards.size(),
                                            " results for ", inputs.size(), " responses"));
  }
  if (batch.by_source.size() != batch.sources.size()) {
    return absl::InternalError(absl::StrCat("ScoreGroups: ", batch.sources.size(), " reward sources but ",
                                            batch.by_source.size(), " rows of their results"));
  }
  for (size_t s = 0; s < batch.sources.size(); ++s) {
    if (batch.by_source[s].size() != inputs.size()) {
      return absl::InternalError(absl::StrCat("ScoreGroups: reward source \"", batch.sources[s], "\" returned ",
                                              batch.by_source[s].size(), " results for ", inputs.size(),
                                              " responses"));
    }
  }
  size_t begin = 0;
  for (ScoredGroup& g : groups) {
    const size_t end = begin + g.generation.samples.size();
    for (size_t i = begin; i < end; ++i) g.rewards.push_back(std::move(batch.rewards[i]));
    g.sources = batch.sources;
    for (const std::vector<RewardResult>& row : batch.by_source) {
      g.source_rewards.emplace_back(row.begin() + begin, row.begin() + end);
    }
    begin = end;
  }
  return groups;
}

absl::StatusOr<std::optional<TrainGroup>> BuildTrainGroup(const ScoredGroup& scored, int64_t step,
                                                          const std::string& group_id,
                                                          int64_t learner_version,
                                                          const TrainGroupOptions& options,
                                                          RlStepMetrics* metrics) {
  const std::vector<GeneratedSample>& samples = scored.generation.samples;
  if (scored.rewards.size() != samples.size() || scored.texts.size() != samples.size()) {
    return absl::InternalError(absl::StrCat("group ", group_id, ": ", samples.size(), " samples but ",
                                            scored.rewards.size(), " rewards and ",
                                            scored.texts.size(), " texts"));
  }
  if (scored.source_rewards.size() != scored.sources.size()) {
    return absl::InternalError(absl::StrCat("group ", group_id, ": ", scored.sources.size(),
                                            " reward sources but ", scored.source_rewards.size(),
                                            " rows of their results"));
  }
  for (size_t s = 0; s < scored.sources.size(); ++s) {
    if (scored.source_rewards[s].size() != samples.size()) {
      return absl::InternalError(absl::StrCat("group ", group_id, ": reward source \"", scored.sources[s],
                                              "\" has ", scored.source_rewards[s].size(),
                                              " results for ", samples.size(), " samples"));
    }
  }
  TrainGroup out;
  RolloutGroup& g = out.record;
  g.step = step;
  g.policy_version = scored.generation.weight_version;
  g.group_id = group_id;
  g.prompt_text = scored.example->prompt;
  g.prompt_tokens = scored.request.prompt;
  g.ground_truth = scored.example->answer;
  std::vector<ScoredResponse> responses;
  for (size_t k = 0; k < samples.size(); ++k) {
    const GeneratedSample& s = samples[k];
    RolloutSample rs;
    rs.tokens = s.tokens;
    rs.logprobs = s.logprobs;
    rs.finish_reason = FinishReasonName(s.finish_reason);
    rs.text = scored.texts[k];
    RewardResult r = scored.rewards[k];
    ScoredResponse sr;
    sr.correctness = Correctness(r);  // before any penalty
    sr.end.num_tokens = static_cast<int64_t>(s.tokens.size());
    sr.end.stopped = s.finish_reason != FinishReason::kLength;
    if (options.soft_overlong_penalty) {
      ASSIGN_OR_RETURN(double pen, SoftOverlongPenalty(static_cast<int64_t>(s.tokens.size()),
                                                       options.signal.overlong));
      r.score += pen;
      r.components.push_back({"overlong_penalty", pen});
    }
    // Before the components move into the record.
    metrics->AddRewardLength(r, static_cast<int64_t>(s.tokens.size()));
    rs.reward = r.score;
    rs.reward_components = std::move(r.components);
    sr.reward = r.score;
    responses.push_back(sr);
    metrics->AddSample(r.score, sr.correctness, static_cast<int64_t>(s.tokens.size()));
    for (size_t source = 0; source < scored.sources.size(); ++source) {
      metrics->AddSourceReward(scored.sources[source], scored.source_rewards[source][k]);
    }
    g.samples.push_back(std::move(rs));
  }
  ASSIGN_OR_RETURN(GroupSignal signal, ComputeGroupSignal(responses, options.signal));
  if (signal.dropped) {
    metrics->AddDroppedGroup();
    return std::nullopt;
  }
  for (size_t k = 0; k < signal.advantages.size(); ++k) g.samples[k].advantage = signal.advantages[k];
  metrics->AddTrainedGroup(learner_version - g.policy_version);
  out.keep = std::move(signal.keep);
  return out;
}

std::vector<TrainSample> BuildTrainBatch(const std::vector<TrainGroup>& groups) {
  std::vector<TrainSample> batch;
  for (const TrainGroup& group : groups) {
    const RolloutGroup& g = group.record;
    for (size_t k = 0; k < g.samples.size(); ++k) {
      const RolloutSample& rs = g.samples[k];
      TrainSample ts;
      ts.id = absl::StrCat(g.group_id, "/", k);
      ts.prompt = g.prompt_tokens;
      ts.response = rs.tokens;
      ts.rollout_logprobs = rs.logprobs;
      ts.advantage = rs.advantage;
      ts.keep = group.keep[k] != 0;
      batch.push_back(std::move(ts));
    }
  }
  return batch;
}

}  // namespace lightrl
