// Executes the scheduler's step plans on the model: the running batch's decode and the
// admitted sequences' prefill (forked into each fresh group's samples), the sampling of
// every row, and the stop checks of what was sampled. Owns nothing across steps but the
// counters it adds to; each sample's tokens, logprobs, RNG and stop state are the caller's
// (SampleState), its slot and pages the scheduler's. Internal (torch) header.
#pragma once

#include <cstdint>
#include <random>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "inference_engine/engine.h"
#include "inference_engine/model_runner.h"
#include "inference_engine/sampling_params.h"
#include "inference_engine/scheduler.h"
#include "policy/tokenizer.h"

namespace lightrl {

// One sample being generated, beside its scheduler descriptor.
struct SampleState {
  std::vector<int32_t> tokens;  // prompt followed by what was generated
  int64_t prompt_len = 0;
  std::vector<float> logprobs;
  std::mt19937_64 rng;  // one uniform per token, seeded by (seed, sample index)
  int64_t confident_run = 0;  // consecutive tokens above early_stop_prob
  bool finished = false;
  FinishReason reason = FinishReason::kLength;
  int64_t generated() const { return static_cast<int64_t>(tokens.size()) - prompt_len; }
};

// A row whose sampling failed (the sampler threw, or the logits were not finite): its
// sequence took no token.
struct RowError {
  SeqId seq = 0;
  int64_t group = 0;
  absl::Status status;
};

// Which forwards a step runs: the plan's own, or under attention data parallelism those
// any runner of the instance runs (a runner without tokens for one runs it idle).
struct StepForwards {
  bool decode = false;
  bool prefill = false;
};

class StepRunner {
 public:
  // All must outlive the runner; `tokenizer` may be null (no stop strings then).
  StepRunner(ModelRunner* runner, const Tokenizer* tokenizer, int64_t max_model_len,
             EngineStats* stats);

  // Runs `plan`, the scheduler's last, for groups that are indices into `requests`: starts
  // the state of freshly admitted samples in `samples`, queues the decode and then the
  // prefill (which the CUDA backend runs beside it), samples the fresh groups' first tokens
  // and the decode batch's next ones, appends each token to its sample and to the scheduler
  // and marks the samples it finishes. A forward in `forwards` that the plan has nothing
  // for runs idle (ModelRunner::Idle). Returns the failed rows, the prefill's first. Throws
  // c10::Error when the model step fails.
  std::vector<RowError> Run(const StepPlan& plan, const std::vector<GenerationRequest>& requests,
                            Scheduler& scheduler,
                            std::unordered_map<SeqId, SampleState>& samples,
                            const StepForwards& forwards);

 private:
  // Whether the last appended token ends the sample; sets its reason.
  bool Stops(SampleState& s, const SamplingParams& p) const;
  // Appends one sampled row to its sample, or records why it failed.
  void Apply(SeqId id, int64_t group, const absl::Status& status, int64_t token, float logprob,
             const SamplingParams& p, Scheduler& scheduler, SampleState& s,
             std::vector<RowError>& errors);

  ModelRunner* runner_;
  const Tokenizer* tokenizer_;
  int64_t max_model_len_;
  EngineStats* stats_;
};

}  // namespace lightrl
