// The generative reward model (reward kind `genrm`): a judge model run by lightrl's own
// engine reads a prompt built from a template (the prompt, the response, the reference
// answer), and a bounded parser reads a verdict or a score from what it writes; the
// judge's text is the result's note. Owns the options, the template, the parser and the
// function that batches concurrent Score calls into engine batches with per-item
// deadlines. It sits above reward/ and inference_engine/ (it needs both), so the reward
// registry learns of it at start-up (RegisterGenrmRewardKind), not by including it.
// Torch-free header.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "reward/reward_function.h"
#include "reward/reward_registry.h"

namespace lightrl {

// Most bytes of the judge's text a result's note carries, over all votes.
inline constexpr size_t kMaxGenrmNoteBytes = 4096;
// Most bytes of one vote's text the parser reads.
inline constexpr size_t kMaxGenrmParseBytes = 4096;
// Items of one engine batch at most; a reward worker serving genrm hands it this many
// items of a Score call at once.
inline constexpr int kMaxGenrmBatch = 64;

struct GenrmOptions {
  // Checkpoint folder of the judge: config.json, safetensors, tokenizer.json (required).
  std::string model;
  // The judge's prompt: {prompt}, {response} and {reference} are replaced by the sample's
  // prompt, response and reference answer (once, not recursively); "{{" and "}}" are
  // literal braces. Must contain {response}.
  std::string prompt_template =
      "You grade answers.\nQuestion: {prompt}\nReference answer: {reference}\n"
      "Answer to grade: {response}\nIs the answer correct? Reply yes or no.\nVerdict:";
  // "verdict": the first of `positive` / `negative` in the judge's text (case-insensitive)
  // scores 1 / 0; "score": the first number in it, in [0, max_score], scores number /
  // max_score.
  std::string parse = "verdict";
  std::string positive = "yes";
  std::string negative = "no";
  double max_score = 10.0;
  // Score of a vote the parser finds nothing in; in [0, 1].
  double unparsed_score = 0.0;
  // Judgements per item; the score is their mean. > 1 needs temperature > 0.
  int64_t votes = 1;
  // 0 = greedy; sampled votes draw from (seed, the item's text), so a score does not
  // depend on the batch it was judged in.
  double temperature = 0.0;
  double top_p = 1.0;
  int64_t top_k = 0;
  int64_t seed = 0;
  // Tokens the judge may write per vote.
  int64_t max_new_tokens = 32;
  // Tokens of one judge prompt at most; a longer one fails that item.
  int64_t max_prompt_tokens = 4096;
  // Seconds one item may take from its Score call to its verdict, queueing included; past
  // it the item's generation is cancelled and its Score fails DEADLINE_EXCEEDED.
  double timeout_s = 120.0;
  // Items judged in one engine batch at most, in [1, kMaxGenrmBatch].
  int64_t max_batch = 16;
  // Where the judge runs: "cpu" or "cuda[:N]", and its dtype.
  std::string device = "cpu";
  std::string dtype = "float32";
  // Memory for the judge's KV pages.
  int64_t kv_cache_mb = 256;

  absl::Status Validate() const;
};

// The judge's prompt for `input` under `prompt_template`. INVALID_ARGUMENT naming the
// placeholder for an unknown "{name}" or an unmatched brace.
absl::StatusOr<std::string> FillGenrmTemplate(absl::string_view prompt_template,
                                              const RewardInput& input);
// Checks a template as FillGenrmTemplate reads it, and that it has {response}.
absl::Status CheckGenrmTemplate(absl::string_view prompt_template);

// What the parser read from one vote: the vote's score in [0, 1], or nullopt when the
// text holds no verdict or no number in range. Reads at most kMaxGenrmParseBytes.
std::optional<double> ParseGenrmVote(absl::string_view text, const GenrmOptions& options);

// The kind as the registry lists it: options bound from JSON, the function loading the
// judge (which needs `model`).
RewardKind GenrmRewardKind();
// Adds `genrm` to the reward registry (AddRewardKind); idempotent. Programs call it at
// start-up, before reading the registry from several threads.
void RegisterGenrmRewardKind();

}  // namespace lightrl
