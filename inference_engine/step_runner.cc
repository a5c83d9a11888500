#include "inference_engine/step_runner.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "inference_engine/sampler.h"
#include "policy/invariant_ops.h"

namespace lightrl {
namespace {

uint64_t MixSeed(uint64_t seed, uint64_t sample) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (sample + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

SamplerRow Row(const SamplingParams& p, SampleState& s) {
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  return {p.temperature, p.top_p, p.top_k, uni(s.rng)};
}

// numerics.batch_invariant: each sampled token's logprob as the learner computes it in that
// mode (policy/invariant_ops.h), the same bits, at the row's temperature (1 when greedy).
void ReportInvariantLogprobs(const torch::Tensor& logits, const std::vector<SamplerRow>& rows,
                             const std::vector<absl::Status>& status, SampledTokens* out) {
  std::vector<double> temperature;
  std::vector<int64_t> tokens;
  for (size_t r = 0; r < rows.size(); ++r) {
    const bool greedy = !(static_cast<float>(rows[r].temperature) > 0.0f);
    temperature.push_back(greedy ? 1.0 : rows[r].temperature);
    tokens.push_back(status[r].ok() ? out->tokens[r] : 0);
  }
  torch::InferenceMode guard;
  auto logp = InvariantTokenLogprobs(logits, torch::tensor(tokens, torch::kInt64), temperature)
                  .to(torch::kCPU);
  const float* lp = logp.data_ptr<float>();
  for (size_t r = 0; r < rows.size(); ++r) {
    if (status[r].ok()) out->logprobs[r] = lp[r];
  }
}

// Samples every row. A batch the sampler throws on is sampled again row by row (a row's
// sample does not depend on its batch), so an error stays with its row. A row also fails
// when its logprob is not finite: the model gave NaN or infinite logits for that sequence.
std::vector<absl::Status> SampleRows(const torch::Tensor& logits,
                                     const std::vector<SamplerRow>& rows, bool batch_invariant,
                                     SampledTokens* out) {
  std::vector<absl::Status> status(rows.size());
  try {
    *out = SampleTokens(logits, rows);
  } catch (const c10::Error&) {
    out->tokens.assign(rows.size(), 0);
    out->logprobs.assign(rows.size(), 0.0f);
    for (size_t r = 0; r < rows.size(); ++r) {
      try {
        SampledTokens one = SampleTokens(logits.narrow(0, static_cast<int64_t>(r), 1), {rows[r]});
        out->tokens[r] = one.tokens[0];
        out->logprobs[r] = one.logprobs[0];
      } catch (const c10::Error& e) {
        status[r] = absl::InternalError(absl::StrCat("sampling failed: ", e.what_without_backtrace()));
      }
    }
  }
  if (batch_invariant) ReportInvariantLogprobs(logits, rows, status, out);
  for (size_t r = 0; r < rows.size(); ++r) {
    if (status[r].ok() && !std::isfinite(out->logprobs[r])) {
      status[r] = absl::InternalError(absl::StrCat("the model gave non-finite logits (token ",
                                                   out->tokens[r], " sampled with logprob ",
                                                   out->logprobs[r], ")"));
    }
  }
  return status;
}

}  // namespace

StepRunner::StepRunner(ModelRunner* runner, const Tokenizer* tokenizer, int64_t max_model_len,
                       EngineStats* stats)
    : runner_(runner), tokenizer_(tokenizer), max_model_len_(max_model_len), stats_(stats) {}

bool StepRunner::Stops(SampleState& s, const SamplingParams& p) const {
  const int32_t last = s.tokens.back();
  const double prob = std::exp(static_cast<double>(s.logprobs.back()));
  s.confident_run = prob > p.early_stop_prob ? s.confident_run + 1 : 0;
  if (std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), last) != p.stop_token_ids.end()) {
    s.reason = FinishReason::kStop;
    return true;
  }
  if (!p.stop_strings.empty() && tokenizer_ != nullptr) {
    // Only the tail can hold a stop string that was not there a token ago.
    const int64_t n = std::min<int64_t>(s.generated(), 64);
    std::vector<int32_t> tail(s.tokens.end() - n, s.tokens.end());
    auto text = tokenizer_->Decode(tail);
    if (text.ok()) {
      for (const auto& stop : p.stop_strings) {
        if (text->find(stop) != std::string::npos) {
          s.reason = FinishReason::kStop;
          return true;
        }
      }
    }
  }
  if (p.early_stop_window > 0 && s.confident_run >= p.early_stop_window) {
    s.reason = FinishReason::kEarlyStop;
    return true;
  }
  if (s.generated() >= p.max_new_tokens || static_cast<int64_t>(s.tokens.size()) >= max_model_len_) {
    s.reason = FinishReason::kLength;
    return true;
  }
  return false;
}

void StepRunner::Apply(SeqId id, int64_t group, const absl::Status& status, int64_t token,
                       float logprob, const SamplingParams& p, Scheduler& scheduler,
                       SampleState& s, std::vector<RowError>& errors) {
  if (!status.ok()) {
    errors.push_back({id, group, status});
    return;
  }
  s.tokens.push_back(static_cast<int32_t>(token));
  s.logprobs.push_back(logprob);
  scheduler.AppendToken(id);
  ++stats_->generated_tokens;
  s.finished = Stops(s, p);
}

std::vector<RowError> StepRunner::Run(const StepPlan& plan,
                                      const std::vector<GenerationRequest>& requests,
                                      Scheduler& scheduler,
                                      std::unordered_map<SeqId, SampleState>& samples,
                                      const StepForwards& forwards) {
  std::vector<RowError> errors;
  for (const Admission& a : plan.admit) {
    if (a.resumed) continue;
    for (SeqId id : a.seqs) {
      const SeqInfo& info = scheduler.sequence(id);
      const GenerationRequest& req = requests[info.group];
      SampleState& s = samples[id];
      s.tokens = req.prompt;
      s.prompt_len = info.num_tokens_prompt;
      s.rng.seed(MixSeed(req.params.seed, static_cast<uint64_t>(info.sample)));
    }
  }
  auto params = [&](SeqId id) -> const SamplingParams& {
    return requests[scheduler.sequence(id).group].params;
  };

  std::vector<RunnerSequence> decode_batch;
  std::vector<SamplerRow> decode_rows;
  for (SeqId id : plan.decode) {
    const SeqInfo& info = scheduler.sequence(id);
    SampleState& s = samples.at(id);
    const int64_t pos = static_cast<int64_t>(s.tokens.size()) - 1;
    decode_batch.push_back({info.slot, &info.pages, {s.tokens.back()}, pos});
    decode_rows.push_back(Row(params(id), s));
  }
  torch::Tensor decode_logits;
  // The prefill (below) is queued right after this decode, nothing in between, and the CUDA
  // backend runs it beside the decode on a stream of its own. That is safe because admitted
  // sequences hold slots and pages outside the decode batch and join it only at the next
  // step, whose decode the caller's stream runs after its wait on the prefill.
  if (!decode_batch.empty()) {
    decode_logits = runner_->Decode(decode_batch);
  } else if (forwards.decode) {
    runner_->Idle();
  }
  if (plan.admit.empty() && forwards.prefill) runner_->Idle();

  if (!plan.admit.empty()) {
    std::vector<RunnerSequence> batch;
    for (const Admission& a : plan.admit) {
      const SeqInfo& lead = scheduler.sequence(a.seqs[0]);
      const SampleState& s = samples.at(a.seqs[0]);
      std::vector<int32_t> input(s.tokens.begin(), s.tokens.end() - (a.resumed ? 1 : 0));
      batch.push_back({lead.slot, &lead.pages, std::move(input), 0});
    }
    auto logits = runner_->Prefill(batch);
    stats_->prefill_tokens += plan.num_tokens_prefill;
    ++stats_->prefill_steps;
    if (decode_logits.defined() && runner_->uses_prefill_stream()) {
      ++stats_->overlapped_prefill_steps;
    }
    // Fresh groups sample their first token from the prompt's logits; resumed samples
    // already hold theirs.
    std::vector<SamplerRow> rows;
    std::vector<SeqId> targets;
    std::vector<int64_t> logit_rows;
    for (size_t g = 0; g < plan.admit.size(); ++g) {
      const Admission& a = plan.admit[g];
      if (a.resumed) continue;
      const SeqInfo& lead = scheduler.sequence(a.seqs[0]);
      for (size_t k = 1; k < a.seqs.size(); ++k) {
        const SeqInfo& f = scheduler.sequence(a.seqs[k]);
        runner_->Fork(lead.slot, lead.pages, f.slot, f.pages, lead.num_tokens_prompt);
      }
      for (SeqId id : a.seqs) {
        rows.push_back(Row(params(id), samples.at(id)));
        targets.push_back(id);
        logit_rows.push_back(static_cast<int64_t>(g));
      }
    }
    if (!rows.empty()) {
      auto idx = torch::tensor(logit_rows, torch::kInt64).to(logits.device());
      SampledTokens sampled;
      const auto row_status = SampleRows(logits.index_select(0, idx), rows,
                                         runner_->batch_invariant(), &sampled);
      for (size_t r = 0; r < targets.size(); ++r) {
        const SeqId id = targets[r];
        Apply(id, scheduler.sequence(id).group, row_status[r], sampled.tokens[r],
              sampled.logprobs[r], params(id), scheduler, samples.at(id), errors);
      }
    }
  }

  if (decode_logits.defined()) {
    SampledTokens sampled;
    const auto row_status =
        SampleRows(decode_logits, decode_rows, runner_->batch_invariant(), &sampled);
    ++stats_->decode_steps;
    for (size_t i = 0; i < plan.decode.size(); ++i) {
      const SeqId id = plan.decode[i];
      Apply(id, scheduler.sequence(id).group, row_status[i], sampled.tokens[i],
            sampled.logprobs[i], params(id), scheduler, samples.at(id), errors);
    }
  }
  return errors;
}

}  // namespace lightrl
