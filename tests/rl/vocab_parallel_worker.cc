// One rank of the vocabulary-parallel LM head test (tests/python/vocab_parallel_test.py):
// joins a Gloo group of WORLD ranks with layout tp TP, draws the same random LM head,
// hidden states, targets and upstream gradient as every rank (from SEED), and compares
// its VocabParallelTokenLogprobs (this rank's vocab / TP rows of the head) and their
// gradients with the single-process LM head's logprob in FP32, at temperatures 1 and 0.7.
// Prints one JSON line per temperature; exits 1 when a difference exceeds the tolerance.
//
// Usage: vocab_parallel_worker RANK WORLD TP PORT SEED
#include <torch/torch.h>

#include <cstdio>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "policy/vocab_parallel.h"
#include "rl/distributed.h"
#include "rl/parallel_layout.h"
#include "rl/tp_comm.h"
#include "tests/loopback_group.h"
#include "tests/worker_args.h"

namespace lightrl {
namespace {

constexpr int64_t kVocab = 96, kHidden = 32, kTokens = 24;
constexpr double kTolerance = 2e-5;

double MaxDiff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

int Run(int64_t rank, int64_t world, int64_t tp, int64_t port, int64_t seed) {
  auto group = LoopbackGroup(rank, world, port, /*timeout_s=*/120);
  if (!group.ok()) {
    std::fprintf(stderr, "rank %ld: %s\n", static_cast<long>(rank),
                 std::string(group.status().message()).c_str());
    return 2;
  }
  ParallelLayout layout;
  layout.tp = tp;
  absl::Status joined = (*group)->JoinLayoutGroups(layout);
  if (!joined.ok()) {
    std::fprintf(stderr, "rank %ld: %s\n", static_cast<long>(rank), joined.ToString().c_str());
    return 2;
  }
  ProcessGroupTpComm comm(group->get());
  const int64_t rows = kVocab / tp, start = comm.tp_rank() * rows;

  torch::manual_seed(static_cast<uint64_t>(seed));
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  // Logits of a few units: a peaked distribution, not a flat one.
  const auto weight = torch::randn({kVocab, kHidden}, f32) * 0.5;
  const auto hidden = torch::randn({kTokens, kHidden}, f32);
  auto targets = torch::randint(0, kVocab, {kTokens}, torch::kInt64);
  targets[0] = 0;           // the first shard's first row
  targets[1] = kVocab - 1;  // the last shard's last row
  const auto upstream = torch::randn({kTokens}, f32);

  bool ok = true;
  for (double temperature : {1.0, 0.7}) {
    // The single-process LM head.
    auto h_ref = hidden.clone().requires_grad_(true);
    auto w_ref = weight.clone().requires_grad_(true);
    auto logits = torch::matmul(h_ref, w_ref.t()) / temperature;
    auto logp_ref = torch::log_softmax(logits, -1).gather(1, targets.unsqueeze(1)).squeeze(1);
    (logp_ref * upstream).sum().backward();

    // This rank's shard.
    auto h = hidden.clone().requires_grad_(true);
    auto w = weight.narrow(0, start, rows).clone().requires_grad_(true);
    auto logp = VocabParallelTokenLogprobs(h, w, targets, temperature, comm);
    (logp * upstream).sum().backward();

    const double d_logp = MaxDiff(logp, logp_ref);
    const double d_hidden = MaxDiff(h.grad(), h_ref.grad());
    const double d_weight = MaxDiff(w.grad(), w_ref.grad().narrow(0, start, rows));
    const double grad_scale = w_ref.grad().narrow(0, start, rows).abs().max().item<double>();
    std::printf("{\"rank\": %ld, \"tp_rank\": %ld, \"temperature\": %g, \"logp_diff\": %.3g, "
                "\"hidden_grad_diff\": %.3g, \"weight_grad_diff\": %.3g, "
                "\"weight_grad_max\": %.3g, \"logp_mean\": %.6f}\n",
                static_cast<long>(rank), static_cast<long>(comm.tp_rank()), temperature, d_logp,
                d_hidden, d_weight, grad_scale, logp_ref.mean().item<double>());
    ok = ok && d_logp <= kTolerance && d_hidden <= kTolerance && d_weight <= kTolerance;
  }
  std::fflush(stdout);
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace lightrl

int main(int argc, char** argv) {
  int64_t v[5];
  if (!lightrl::ParseWorkerArgs(argc, argv, 6, "RANK WORLD TP PORT SEED", 5, v)) return 2;
  try {
    return lightrl::Run(v[0], v[1], v[2], v[3], v[4]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %s: %s\n", argv[1], e.what());
    return 2;
  }
}
