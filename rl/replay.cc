// `lightrl replay`: the Trainer's phase that trains from a rollout log into its own folder,
// from the source run's checkpoint of the log's first policy version. Owns the replay's
// output checks, reading the log and choosing the start; the steps themselves go through
// the learner as in RunRl, and the source run's folder is never written.
#include <algorithm>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "common/json.h"
#include "common/log.h"
#include "common/status.h"
#include "rl/checkpoint_dir.h"
#include "rl/run_progress.h"
#include "rl/trainer_internal.h"

namespace lightrl {
namespace trainer_internal {
namespace {

using Clock = RunClock;

}  // namespace

std::string CanonicalPath(const std::string& path) {
  std::error_code error;
  std::filesystem::path p = std::filesystem::weakly_canonical(std::filesystem::absolute(path, error), error);
  std::string s = p.lexically_normal().string();
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  return s;
}

// The run folder a rollout log belongs to: the folder holding `rollouts/`.
std::string SourceRunDir(const std::string& log_dir) {
  return std::filesystem::path(CanonicalPath(log_dir)).parent_path().string();
}

absl::Status Trainer::CheckReplayOutput() const {
  const std::string out = CanonicalPath(config_.run.output_dir);
  const std::string source = SourceRunDir(options_.replay_dir);
  const std::string rel = std::filesystem::path(out).lexically_relative(source).string();
  if (!rel.empty() && rel.rfind("..", 0) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the replay's output folder ", out, " lies in ", source, ", the run that holds the log ",
        options_.replay_dir, "; a replay never writes there: pass --output with another folder"));
  }
  const std::string marker = JoinPath(out, kReplayMarkerName);
  const bool holds_run = FileExists(JoinPath(ckpt_root_, "latest")) ||
                         FileExists(JoinPath(out, "metrics.jsonl")) ||
                         IsDirectory(JoinPath(out, "rollouts")) || FileExists(marker);
  if (!holds_run) return absl::OkStatus();
  if (!options_.resume) {
    return absl::FailedPreconditionError(absl::StrCat(
        out, " already holds a run; pass --resume to continue the replay written there, or "
        "--output with another folder"));
  }
  if (!FileExists(marker)) {
    return absl::FailedPreconditionError(absl::StrCat(
        out, " holds a run that is not a replay (no ", kReplayMarkerName, "); --resume continues "
        "only a replay of the same log: pass --output with another folder"));
  }
  ASSIGN_OR_RETURN(std::string text, ReadFile(marker));
  absl::StatusOr<Json> json = Json::Parse(text);
  const Json* logged = json.ok() ? json->find("rollouts") : nullptr;
  const std::string log = CanonicalPath(options_.replay_dir);
  if (logged == nullptr || !logged->is_string() || logged->as_string() != log) {
    return absl::FailedPreconditionError(absl::StrCat(
        out, " holds a replay of another log (", marker, ": ", text.substr(0, 200),
        "), not of ", log, "; pass --output with another folder"));
  }
  return absl::OkStatus();
}

absl::Status Trainer::LoadReplayLog() {
  RolloutLogReadOptions read_options;
  read_options.skip_corrupt = options_.replay_skip_corrupt;
  int64_t corrupt_skipped = 0;
  ASSIGN_OR_RETURN(replay_log_,
                   RolloutLogReader::ReadAll(options_.replay_dir, read_options, &corrupt_skipped));
  if (corrupt_skipped > 0) {
    LogInfo("lightrl replay: --skip-corrupt: skipped %lld corrupt records of %s",
            static_cast<long long>(corrupt_skipped), options_.replay_dir.c_str());
  }
  if (replay_log_.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(options_.replay_dir, ": the rollout log holds no records"));
  }
  // A crashed and resumed run logs its interrupted step twice; the later copy wins.
  std::map<std::pair<int64_t, std::string>, size_t> last;
  for (size_t i = 0; i < replay_log_.size(); ++i) last[{replay_log_[i].step, replay_log_[i].group_id}] = i;
  // Groups in log order, which is the order the run trained them in (it sets the
  // minibatch split); group ids do not sort that way ("step-0-0-10" < "step-0-0-2").
  std::vector<size_t> kept;
  for (const auto& [key, i] : last) kept.push_back(i);
  std::sort(kept.begin(), kept.end());
  int64_t min_step = INT64_MAX, max_step = 0, min_version = INT64_MAX, max_version = 0;
  for (size_t i : kept) {
    const RolloutGroup& g = replay_log_[i];
    // Steps as metrics.jsonl numbers them: the record's step is the one before it.
    const int64_t step = g.step + 1;
    min_step = std::min(min_step, step);
    max_step = std::max(max_step, step);
    min_version = std::min(min_version, g.policy_version);
    max_version = std::max(max_version, g.policy_version);
    if (step < options_.replay_first_step || step > options_.replay_last_step) continue;
    if (g.policy_version < options_.replay_first_version || g.policy_version > options_.replay_last_version) continue;
    replay_steps_[g.step].push_back(i);
  }
  if (replay_steps_.empty()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--steps/--versions select none of the %d groups of %s, which hold steps %d:%d and policy "
        "versions %d:%d",
        kept.size(), options_.replay_dir, min_step, max_step, min_version, max_version));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<std::string>> Trainer::ReplayStart() const {
  const RolloutGroup& first = replay_log_[replay_steps_.begin()->second.front()];
  const std::string root = JoinPath(SourceRunDir(options_.replay_dir), "checkpoints");
  // Checkpoint names sort in training order, so the last match is the newest: with SFT
  // before RL, the end of SFT rather than an earlier SFT step of the same RL step.
  std::optional<std::string> by_version, by_step;
  for (const std::string& name : CheckpointNames(root)) {
    const std::string dir = JoinPath(root, name);
    absl::StatusOr<std::string> text = ReadFile(JoinPath(dir, "trainer_state.json"));
    if (!text.ok()) continue;
    absl::StatusOr<Json> json = Json::Parse(*text);
    if (!json.ok()) continue;
    absl::StatusOr<TrainerState> state = TrainerState::FromJson(*json, dir);
    if (!state.ok()) continue;
    if (state->policy_version == first.policy_version) by_version = dir;
    // Checkpoints from before versions were recorded: the one taken before the step.
    if (state->policy_version < 0 && state->step == first.step) by_step = dir;
  }
  std::optional<std::string> found = by_version ? by_version : by_step;
  if (found) RETURN_IF_ERROR(VerifyCheckpoint(*found).status());
  return found;
}

absl::Status Trainer::RunReplay() {
  int64_t replayed = 0;
  size_t groups_trained = 0;
  const int64_t last_step = replay_steps_.rbegin()->first + 1;
  int64_t total = 0, done = 0;  // selected steps, and those a resumed replay has done
  for (const auto& entry : replay_steps_) {
    ++total;
    if (entry.first < state_.step) ++done;
  }
  const PhaseClock clock(done, total);
  for (const auto& [step, indices] : replay_steps_) {
    if (step < state_.step) continue;
    std::vector<TrainSample> batch;
    for (size_t i : indices) {
      const RolloutGroup* g = &replay_log_[i];
      // The live loop's overlong filter, so that a replay trains on what the run did.
      std::vector<ResponseEnd> ends;
      for (const RolloutSample& rs : g->samples) {
        ends.push_back({static_cast<int64_t>(rs.tokens.size()),
                        rs.finish_reason != FinishReasonName(FinishReason::kLength)});
      }
      std::vector<float> keep(ends.size(), 1.0f);
      if (config_.algorithm.overlong_filter) {
        ASSIGN_OR_RETURN(keep, OverlongFilterMask(ends, config_.ToOverlongOptions()));
      }
      for (size_t k = 0; k < g->samples.size(); ++k) {
        const RolloutSample& rs = g->samples[k];
        TrainSample ts;
        ts.id = absl::StrCat(g->group_id, "/", k);
        ts.prompt = g->prompt_tokens;
        ts.response = rs.tokens;
        // The engine's logprobs as logged: the off-policy correction the run applied.
        ts.rollout_logprobs = rs.logprobs;
        ts.advantage = rs.advantage;
        ts.keep = keep[k] != 0;
        batch.push_back(std::move(ts));
      }
    }
    ASSIGN_OR_RETURN(LearnerStats st, learners_->TrainRl(batch));
    state_.step = step + 1;
    ++replayed;
    ++done;
    groups_trained += indices.size();
    RETURN_IF_ERROR(WriteMetrics(state_.step, LearnerScalars(st)));
    Progress(absl::StrFormat("[replay] step %d/%d  groups %d  loss %.4f  grad %.3f  %s", state_.step,
                             last_step, indices.size(), st.loss, st.grad_norm, clock.Line(done)));
    // Evaluated like the run: every run.eval_every steps (0 = never), and at the end.
    if (config_.run.eval_every > 0 && state_.step % config_.run.eval_every == 0) {
      ASSIGN_OR_RETURN(EvalResult e, EvaluateWithProgress(state_.step));
      std::fprintf(stderr, "eval at step %lld: held-out accuracy %s (%s)\n",
                   static_cast<long long>(state_.step), EvalLine(e).c_str(),
                   Duration(eval_seconds_).c_str());
    }
    if (config_.checkpoint.every > 0 && state_.step % config_.checkpoint.every == 0) {
      RETURN_IF_ERROR(Checkpoint());
    }
    if (done < total) RETURN_IF_ERROR(StopIfAsked("the replay"));
  }
  if (tty_ && options_.progress) std::fprintf(stderr, "\n");
  LogInfo("lightrl replay: trained on %lld logged steps (%zu groups)",
          static_cast<long long>(replayed), groups_trained);
  return Checkpoint();
}


}  // namespace trainer_internal
}  // namespace lightrl
