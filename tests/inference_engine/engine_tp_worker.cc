// One rank of the tensor- and expert-parallel engine test (tests/python/engine_tp_test.py):
// joins a Gloo group of WORLD ranks that is one TP group (MODE tp: tp = WORLD, attention
// and vocabulary split), one EP group (MODE ep: ep = WORLD, the experts split) or both
// (MODE tpep: tp = ep = WORLD; a MODE ending in -invariant: that layout with
// numerics.batch_invariant, every logprob the whole model's bit for bit), loads its shard of
// TinyParallelConfig with random weights of SEED (rank 0 writes the whole model as an HF
// checkpoint under DIR once), and runs the engine on the shard and, in this process, on
// the whole model, on the same requests (prompts of mixed lengths, small
// max_prefill_tokens and max_num_seqs, so that admissions, prefills and decodes interleave
// over many steps, and a KV cache small enough to preempt):
//   greedy:    the same tokens as the whole model's engine, logprobs within kLogprobTolerance;
//   sampled:   temperature, top-p and n = 2 with fixed seeds: the same tokens as every
//              other rank (and logprobs bitwise alike), and as the whole model's engine;
//   cancelled: a request whose cancelled flag only rank WORLD - 1 raises is cancelled on
//              every rank, and the others still complete alike;
//   errors:    the shard without its group is refused, naming both;
//   options:   engine options that differ across the ranks are refused on every rank;
//   instance:  the ranks as a rollout instance (rl/rollout_instance.h): rank 0 serves a
//              RolloutWorkerCore on its shard whose batches the others Follow; the groups
//              submitted to it get the whole model's greedy and sampled tokens.
// Prints one JSON line per check; exits 1 when one fails.
//
// Usage: engine_tp_worker RANK WORLD PORT SEED DIR MODE
#include <torch/torch.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <mutex>
#include <cstdio>
#include <memory>
#include <random>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "inference_engine/engine.h"
#include "policy/minimax_model.h"
#include "policy/policy_model.h"
#include "rl/distributed.h"
#include "rl/distributed_internal.h"
#include "rl/expert_comm.h"
#include "rl/parallel_layout.h"
#include "rl/rollout_instance.h"
#include "rl/tp_comm.h"
#include "rollout/rollout_worker_core.h"
#include "tests/loopback_group.h"
#include "tests/test_models.h"
#include "tests/worker_args.h"

namespace lightrl {
namespace {

// FP32 logprobs of the sharded engine against the whole model's: the same math summed in
// another order (the row-parallel projections' all-reduces, the sharded norm), so a few
// ulps of the logits; a wrong head, block or state shows as differences near 1.
constexpr double kLogprobTolerance = 2e-5;

// A MODE ending in -invariant: the engines run numerics.batch_invariant, where the sharded
// instance must give the whole model's logprobs bit for bit (tolerance 0, no ties).
bool g_invariant = false;
double Tolerance() { return g_invariant ? 0.0 : kLogprobTolerance; }

// `tp`: the TP group's size. A rank's KV page holds its share of the KV heads, so a page
// of the shard costs 1 / tp of the whole model's; both get 12 pages, so that the whole
// model's engine schedules the same steps.
EngineOptions Options(int64_t tp) {
  const ModelConfig c = TinyParallelConfig();
  EngineOptions o;
  o.batch_invariant = g_invariant;
  o.max_num_seqs = 3;
  o.max_prefill_tokens = 12;  // a step admits one long prompt or a few short ones
  o.page_size = 4;
  // One softmax layer: K and V of (KV heads / tp) x head_dim FP32 per token. Room for 48
  // tokens of context: the running batch outgrows it and preempts.
  const int64_t page_bytes = o.page_size * (c.num_key_value_heads / tp) * c.head_dim * 2 * 4;
  o.kv_cache_bytes = page_bytes * 12;
  return o;
}

// Prompts of mixed lengths (6 to 19 tokens) and 10 to 15 new tokens, the same for one
// seed on every rank: three running sequences outgrow the 12 pages of Options and preempt.
std::vector<GenerationRequest> Requests(uint64_t seed, const SamplingParams& params, int count) {
  std::mt19937_64 rng(seed);
  std::vector<GenerationRequest> reqs(count);
  for (int i = 0; i < count; ++i) {
    reqs[i].id = absl::StrCat("r", i);
    const int len = 6 + static_cast<int>(rng() % 14);
    for (int t = 0; t < len; ++t) reqs[i].prompt.push_back(static_cast<int32_t>(rng() % 48));
    reqs[i].params = params;
    reqs[i].params.seed = rng();
    reqs[i].params.max_new_tokens = 10 + static_cast<int64_t>(rng() % 6);
  }
  return reqs;
}

struct Comparison {
  bool tokens_equal = true;
  double logprob_diff = 0;
  int64_t tokens = 0, distinct = 0, ties = 0;
  std::string first_mismatch;
};

// `got` (the sharded engine's results) against `want` (the whole model's). Logits a few ulps
// apart can swap two tokens whose probabilities tie (the sampler orders tokens by
// probability; greedy takes the first): a sample may go on with the other token where the
// two engines' sampled tokens have logprobs within kLogprobTolerance. That is counted as a
// tie and the rest of the sample not compared; any other difference is a mismatch.
Comparison Compare(const std::vector<GenerationResult>& got, const std::vector<GenerationResult>& want) {
  Comparison c;
  std::vector<char> seen(48, 0);
  for (size_t r = 0; r < want.size(); ++r) {
    Check(got[r].status, "sharded engine request");
    Check(want[r].status, "whole-model engine request");
    for (size_t s = 0; s < want[r].samples.size(); ++s) {
      const auto& g = got[r].samples[s];
      const auto& w = want[r].samples[s];
      bool tie = false;
      for (size_t t = 0; t < std::min(g.tokens.size(), w.tokens.size()); ++t) {
        if (g.tokens[t] != w.tokens[t]) {
          tie = !g_invariant &&
                std::abs(static_cast<double>(g.logprobs[t]) - w.logprobs[t]) <= Tolerance();
          break;
        }
        c.logprob_diff = std::max(c.logprob_diff, std::abs(static_cast<double>(g.logprobs[t]) - w.logprobs[t]));
        seen[w.tokens[t]] = 1;
        ++c.tokens;
      }
      if (tie) {
        ++c.ties;
      } else if (g.tokens != w.tokens && c.tokens_equal) {
        c.tokens_equal = false;
        c.first_mismatch = absl::StrCat(want[r].id, " sample ", s);
      }
    }
  }
  for (char s : seen) c.distinct += s;
  return c;
}

// Whether every rank of the instance's group holds the same tokens and logprobs, bit for
// bit: a fingerprint of each request's, reduced MIN and MAX over the group.
bool AlikeOnAllRanks(ProcessGroup& group, LayoutGroup which,
                     const std::vector<GenerationResult>& results) {
  std::vector<double> lo;
  for (const auto& r : results) {
    double f = r.status.ok() ? 0 : 1e9 + static_cast<double>(r.status.code());
    double k = 1;
    for (const auto& s : r.samples) {
      for (size_t t = 0; t < s.tokens.size(); ++t, ++k) {
        f += k * s.tokens[t] + std::fmod(k, 7.0) * static_cast<double>(s.logprobs[t]);
      }
    }
    lo.push_back(f);
  }
  std::vector<double> hi = lo;
  Check(group.AllReduce(which, &lo, ReduceOp::kMin), "fingerprint min");
  Check(group.AllReduce(which, &hi, ReduceOp::kMax), "fingerprint max");
  return lo == hi;
}

void Print(const char* check, int64_t rank, const Comparison& c, bool alike, int64_t preemptions,
           int64_t steps) {
  std::printf("{\"check\": \"%s\", \"rank\": %ld, \"tokens_equal\": %s, \"first_mismatch\": \"%s\", "
              "\"logprob_diff\": %.3g, \"tokens\": %ld, \"ties\": %ld, \"distinct\": %ld, "
              "\"alike\": %s, \"preemptions\": %ld, \"steps\": %ld}\n",
              check, static_cast<long>(rank), c.tokens_equal ? "true" : "false",
              c.first_mismatch.c_str(), c.logprob_diff, static_cast<long>(c.tokens),
              static_cast<long>(c.ties), static_cast<long>(c.distinct), alike ? "true" : "false",
              static_cast<long>(preemptions), static_cast<long>(steps));
}

// Rank 0 serves `requests` through a RolloutWorkerCore on its shard over `instance`; the
// other ranks follow. Returns rank 0's results and engine batches (none elsewhere).
std::vector<GenerationResult> ServeAsInstance(RolloutInstance& instance, PolicyModel* shard,
                                              const std::string& ckpt, int64_t tp,
                                              const std::vector<GenerationRequest>& requests,
                                              int64_t* batches) {
  if (instance.rank() != 0) {
    Check(instance.Follow(shard, Options(tp)), "following rank 0");
    return {};
  }
  RolloutWorkerCoreOptions o;
  o.engine = Options(tp);
  o.parallel = instance.parallel();
  o.fanout = &instance;
  auto policy = Value(PolicyModel::Load(ckpt, {}, instance.shard()), "loading rank 0's shard");
  auto core = Value(RolloutWorkerCore::Create(o, std::move(policy)), "rollout worker core");
  std::mutex mu;
  std::condition_variable cv;
  std::vector<GenerationResult> results(requests.size());
  size_t done = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    results[i].id = requests[i].id;
    Check(core->Submit(requests[i], 0, [&, i](absl::Status s, int64_t, std::vector<GeneratedSample> out) {
            std::lock_guard<std::mutex> lock(mu);
            results[i].status = std::move(s);
            results[i].samples = std::move(out);
            ++done;
            cv.notify_all();
          }), "submitting");
  }
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait_for(lock, std::chrono::seconds(120), [&] { return done == requests.size(); });
  }
  core->Shutdown();  // after the batch's bookkeeping, which follows its deliveries
  *batches = core->stats().engine_batches;
  Check(instance.Stop(), "stopping the followers");
  if (done != requests.size()) throw std::runtime_error("the instance's groups did not finish");
  return results;
}

int Run(int64_t rank, int64_t world, int64_t port, uint64_t seed, const std::string& dir,
        bool split_heads, bool split_experts) {
  auto group = Value(LoopbackGroup(rank, world, port, /*timeout_s=*/120), "process group");
  ParallelLayout layout;
  if (split_heads) layout.tp = world;
  if (split_experts) layout.ep = world;
  Check(group->JoinLayoutGroups(layout), "layout groups");
  const ShardCoords coords = ShardCoordsOf(layout, *group->layout_groups());
  ProcessGroupTpComm comm(group.get());
  std::unique_ptr<ProcessGroupExpertComm> experts;
  if (split_experts) experts = std::make_unique<ProcessGroupExpertComm>(group.get(), world);
  const LayoutGroup which = split_heads ? LayoutGroup::kTp : LayoutGroup::kEp;
  const int64_t tp = split_heads ? world : 1;  // the KV heads split over

  const ModelConfig config = TinyParallelConfig();
  const std::string ckpt = JoinPath(dir, "model");
  if (rank == 0) {
    auto whole = Value(PolicyModel::Create(config, seed), "whole model");
    // Larger weights than the init, so that generation visits many tokens.
    torch::NoGradGuard no_grad;
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed + 1);
    for (auto& t : whole->module()->parameters()) t.normal_(0, 0.4, gen);
    Check(whole->Save(ckpt), "saving the whole model");
  }
  Check(group->Barrier(), "barrier");
  auto whole = Value(PolicyModel::Load(ckpt), "loading the whole model");
  auto shard = Value(PolicyModel::Load(ckpt, {}, coords), "loading the shard");

  bool ok = true;
  // errors: no collective runs before these are refused.
  {
    auto none = Engine::Create(shard.get(), Options(tp));
    const bool named = !none.ok() &&
                       absl::StrContains(none.status().message(),
                                         split_experts ? "holds the experts of" : "is TP shard") &&
                       absl::StrContains(none.status().message(), "not set");
    std::printf("{\"check\": \"errors\", \"rank\": %ld, \"ok\": %s, \"message\": \"%s\"}\n",
                static_cast<long>(rank), named ? "true" : "false",
                none.ok() ? "" : std::string(none.status().message()).c_str());
    ok = ok && named;
  }
  EngineParallel parallel;
  if (split_experts) parallel.expert_parallel = experts.get();
  if (split_heads) parallel.tensor_parallel = &comm;
  // Options that differ across the ranks are refused on every rank (a collective).
  {
    EngineOptions odd = Options(tp);
    odd.max_num_seqs += rank;
    auto differs = Engine::Create(shard.get(), odd, nullptr, parallel);
    const bool named = !differs.ok() &&
                       absl::StrContains(differs.status().message(),
                                         absl::StrCat("max_num_seqs differs across the ",
                                                      split_heads ? "TP" : "EP", " group (from 3 to ",
                                                      2 + world));
    std::printf("{\"check\": \"options\", \"rank\": %ld, \"ok\": %s, \"message\": \"%s\"}\n",
                static_cast<long>(rank), named ? "true" : "false",
                differs.ok() ? "" : std::string(differs.status().message()).c_str());
    ok = ok && named;
  }
  auto reference = Value(Engine::Create(whole.get(), Options(1)), "whole-model engine");
  auto engine = Value(Engine::Create(shard.get(), Options(tp), nullptr, parallel), "sharded engine");

  SamplingParams greedy;
  greedy.temperature = 0;
  auto reqs = Requests(seed * 3 + 1, greedy, 7);
  auto want = reference->Generate(reqs);
  auto got = engine->Generate(reqs);
  Comparison c = Compare(got, want);
  bool alike = AlikeOnAllRanks(*group, which, got);
  Print("greedy", rank, c, alike, engine->stats().preemptions, engine->stats().decode_steps);
  ok = ok && c.tokens_equal && c.logprob_diff <= Tolerance() && alike && c.tokens > 40;

  SamplingParams sampled;
  sampled.temperature = 0.9;
  sampled.top_p = 0.95;
  sampled.n = 2;
  reqs = Requests(seed * 3 + 2, sampled, 5);
  want = reference->Generate(reqs);
  got = engine->Generate(reqs);
  c = Compare(got, want);
  alike = AlikeOnAllRanks(*group, which, got);
  Print("sampled", rank, c, alike, engine->stats().preemptions, engine->stats().decode_steps);
  ok = ok && c.tokens_equal && c.logprob_diff <= Tolerance() && alike && c.tokens > 40;

  // cancelled: only the last rank raises request r1's flag, before the first step.
  reqs = Requests(seed * 3 + 3, greedy, 4);
  auto flag = std::make_shared<std::atomic<bool>>(rank == world - 1);
  reqs[1].cancelled = flag;
  got = engine->Generate(reqs);
  const bool cancelled = got[1].status.code() == absl::StatusCode::kCancelled && got[1].samples.empty();
  bool others_ok = true;
  for (size_t r = 0; r < got.size(); ++r) others_ok = others_ok && (r == 1 || got[r].status.ok());
  alike = AlikeOnAllRanks(*group, which, got);
  std::printf("{\"check\": \"cancelled\", \"rank\": %ld, \"cancelled\": %s, \"others_ok\": %s, "
              "\"alike\": %s}\n", static_cast<long>(rank), cancelled ? "true" : "false",
              others_ok ? "true" : "false", alike ? "true" : "false");
  ok = ok && cancelled && others_ok && alike;

  // instance: greedy and sampled groups through rank 0's core.
  auto instance = Value(RolloutInstance::Create(group.get()), "rollout instance");
  reqs = Requests(seed * 3 + 4, greedy, 3);
  auto more = Requests(seed * 3 + 5, sampled, 3);
  for (auto& r : more) r.id += "s", reqs.push_back(r);
  int64_t batches = 0;
  got = ServeAsInstance(*instance, shard.get(), ckpt, tp, reqs, &batches);
  if (rank == 0) {
    want = reference->Generate(reqs);
    c = Compare(got, want);
    std::printf("{\"check\": \"instance\", \"rank\": 0, \"tokens_equal\": %s, \"first_mismatch\": \"%s\", "
                "\"logprob_diff\": %.3g, \"tokens\": %ld, \"batches\": %ld}\n",
                c.tokens_equal ? "true" : "false", c.first_mismatch.c_str(), c.logprob_diff,
                static_cast<long>(c.tokens), static_cast<long>(batches));
    ok = ok && c.tokens_equal && c.logprob_diff <= Tolerance() && c.tokens > 20;
  } else {
    std::printf("{\"check\": \"instance\", \"rank\": %ld, \"followed\": true}\n",
                static_cast<long>(rank));
  }
  std::fflush(stdout);
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace lightrl

int main(int argc, char** argv) {
  int64_t v[4];
  if (!lightrl::ParseWorkerArgs(argc, argv, 7,
                               "RANK WORLD PORT SEED DIR tp|ep|tpep[-invariant]", 4, v)) {
    return 2;
  }
  const std::string mode = argv[6];
  const std::string suffix = "-invariant";
  lightrl::g_invariant = mode.size() > suffix.size() &&
                         mode.compare(mode.size() - suffix.size(), suffix.size(), suffix) == 0;
  const std::string layout = lightrl::g_invariant ? mode.substr(0, mode.size() - suffix.size()) : mode;
  if (layout != "tp" && layout != "ep" && layout != "tpep") {
    std::fprintf(stderr, "MODE must be tp, ep or tpep, each optionally with -invariant, got \"%s\"\n",
                 mode.c_str());
    return 2;
  }
  const bool tp = layout != "ep";
  const bool ep = layout != "tp";
  try {
    return lightrl::Run(v[0], v[1], v[2], static_cast<uint64_t>(v[3]), argv[5], tp, ep);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %s: %s\n", argv[1], e.what());
    return 2;
  }
}
