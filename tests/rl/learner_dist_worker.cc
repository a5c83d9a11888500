// One rank of a data-parallel learner on a tiny random model, for
// tests/python/distributed_test.py: trains `steps` updates on batches drawn from `seed`
// (the same global batches on every rank and at every world size) and writes its
// parameters (raw FP32, module order) and the last step's stats (JSON) to --out.
//   learner_dist_worker --rank R --world N --port P --seed S --out DIR
//       [--mode rl|sft] [--zero1] [--samples 7] [--minibatches 2] [--steps 2]
//       [--max-tokens 16384] [--bucket-mb 0.0005] [--timeout 60] [--dtype float32]
//       [--grad-reduce-dtype float32]
//       [--device cpu|cuda] [--check-resume] [--experts 4] [--expert-parallel 1]
//       [--top-k 1] [--aux-coef 0] [--capacity 0] [--sorted] [--adam-eps 1e-6]
//       [--lose-sample]
// --device cuda puts rank r on cuda:r and reduces with NCCL (CUDA builds).
// --sorted orders each batch by falling length, so that a minibatch of as many samples
// as ranks gives rank r its r-th sample: the ranks' tokens laid end to end are then the
// minibatch in order, as one process packs it (what MoE token dropping depends on).
// --lose-sample drops the first sample of each batch that the loss counts, as a learner
// that lost one would: a yardstick for how far a real error moves the weights.
// --check-resume: after the steps, saves optimizer state and weights, trains one more
// batch, then restores both into a fresh learner, trains the same batch again and fails
// unless the parameters are bitwise equal.
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <random>

#include "common/file_util.h"
#include "common/json.h"
#include "common/status.h"
#include "absl/strings/str_cat.h"
#include "policy/minimax_model.h"
#include "rl/distributed.h"
#include "rl/learner.h"
#include "rl/tools/flags.h"
#include "tests/test_models.h"

namespace lightrl {
namespace {


std::vector<TrainSample> RandomBatch(uint64_t seed, int64_t n, bool sorted) {
  std::mt19937_64 rng(seed);
  std::vector<TrainSample> batch(n);
  for (auto& s : batch) {
    const int prompt = 2 + static_cast<int>(rng() % 6), response = 1 + static_cast<int>(rng() % 9);
    for (int i = 0; i < prompt; ++i) s.prompt.push_back(static_cast<int32_t>(rng() % 40));
    for (int i = 0; i < response; ++i) {
      s.response.push_back(static_cast<int32_t>(rng() % 40));
      s.rollout_logprobs.push_back(-1.f - static_cast<float>(rng() % 1000) / 1000.f);
    }
    s.advantage = std::normal_distribution<double>()(rng);
    s.keep = rng() % 8 != 0;
  }
  if (sorted) {
    std::stable_sort(batch.begin(), batch.end(), [](const TrainSample& a, const TrainSample& b) {
      return a.prompt.size() + a.response.size() > b.prompt.size() + b.response.size();
    });
  }
  return batch;
}

std::vector<float> Flatten(PolicyModel& policy) {
  std::vector<float> out;
  for (auto& p : policy.module()->parameters()) {
    auto t = p.detach().to(torch::kCPU, torch::kFloat32).contiguous().flatten();
    out.insert(out.end(), t.data_ptr<float>(), t.data_ptr<float>() + t.numel());
  }
  return out;
}

absl::Status Main(const std::vector<std::string>& args) {
  ASSIGN_OR_RETURN(Flags flags, Flags::Parse(args,
                                             {"rank", "world", "port", "seed", "out", "mode", "samples",
                                              "minibatches", "steps", "max-tokens", "bucket-mb", "timeout", "dtype",
                                              "grad-reduce-dtype", "device", "experts", "expert-parallel", "aux-coef",
                                              "capacity", "top-k", "adam-eps"},
                                             {"zero1", "check-resume", "sorted", "lose-sample"}));
  DistributedOptions dist;
  ASSIGN_OR_RETURN(dist.rank, flags.GetInt("rank", 0));
  ASSIGN_OR_RETURN(dist.world_size, flags.GetInt("world", 1));
  ASSIGN_OR_RETURN(dist.master_port, flags.GetInt("port", 29500));
  ASSIGN_OR_RETURN(dist.timeout_s, flags.GetDouble("timeout", 60));
  dist.backend = "auto";
  const bool cuda = flags.Get("device", "cpu") == "cuda";
  const std::string device = cuda ? absl::StrCat("cuda:", dist.rank) : "cpu";
  ASSIGN_OR_RETURN(int64_t seed, flags.GetInt("seed", 1));
  ASSIGN_OR_RETURN(std::string out, flags.Required("out"));
  const std::string mode = flags.Get("mode", "rl");
  ASSIGN_OR_RETURN(int64_t samples, flags.GetInt("samples", 7));
  ASSIGN_OR_RETURN(int64_t steps, flags.GetInt("steps", 2));

  LearnerOptions opts;
  opts.optimizer.lr = 1e-2;
  // Adam's first steps are lr * g / (|g| + eps): a larger eps than M1's keeps gradients
  // at rounding level (summed in another order by the all-reduce) from becoming full steps.
  ASSIGN_OR_RETURN(opts.optimizer.eps, flags.GetDouble("adam-eps", 1e-6));
  opts.optimizer.grad_clip = 0.5;
  opts.optimizer.weight_decay = 0.01;
  // The load-balancing loss is per forward, so with plain data parallelism it depends on
  // how samples are grouped into forwards; without it the update does not. Expert
  // parallelism counts it over all ranks' forwards together.
  ASSIGN_OR_RETURN(opts.optimizer.aux_loss_coef, flags.GetDouble("aux-coef", 0));
  ASSIGN_OR_RETURN(opts.optimizer.moe_capacity_factor, flags.GetDouble("capacity", 0));
  ASSIGN_OR_RETURN(opts.data_parallel.expert_parallel, flags.GetInt("expert-parallel", 1));
  ASSIGN_OR_RETURN(opts.minibatches, flags.GetInt("minibatches", 2));
  ASSIGN_OR_RETURN(opts.max_tokens_per_forward, flags.GetInt("max-tokens", 16384));
  ASSIGN_OR_RETURN(opts.data_parallel.bucket_mb, flags.GetDouble("bucket-mb", 0.0005));
  opts.data_parallel.zero1 = flags.Has("zero1");
  opts.data_parallel.grad_reduce_dtype = flags.Get("grad-reduce-dtype", "float32");

  ProcessGroupPtr group;
  if (dist.world_size > 1) {
    ASSIGN_OR_RETURN(group, ProcessGroup::Create(dist, device));
  } else {
    RETURN_IF_ERROR(dist.Validate());
  }
  PolicyOptions popts;
  popts.dtype = flags.Get("dtype", "float32");
  popts.device = device;
  ASSIGN_OR_RETURN(int64_t experts, flags.GetInt("experts", 4));
  ModelConfig model = TinyLearnerConfig(experts);
  // Top-1 renormalises the one routing weight to 1, so the router then learns from the aux
  // loss alone; top-2 carries the task loss's gradient into it too.
  ASSIGN_OR_RETURN(model.num_experts_per_tok, flags.GetInt("top-k", 1));
  ASSIGN_OR_RETURN(auto policy, PolicyModel::Create(model, static_cast<uint64_t>(seed), popts));
  ASSIGN_OR_RETURN(auto learner, Learner::Create(policy.get(), opts, group.get()));

  auto train = [&](Learner& l, int64_t step) -> absl::StatusOr<LearnerStats> {
    auto batch = RandomBatch(static_cast<uint64_t>(seed) * 1000 + static_cast<uint64_t>(step), samples,
                             flags.Has("sorted"));
    if (flags.Has("lose-sample")) {
      auto kept = std::find_if(batch.begin(), batch.end(), [](const TrainSample& s) { return s.keep; });
      if (kept != batch.end()) batch.erase(kept);
    }
    return mode == "sft" ? l.TrainSft(batch) : l.TrainRl(batch);
  };
  LearnerStats stats;
  for (int64_t step = 0; step < steps; ++step) {
    ASSIGN_OR_RETURN(stats, train(*learner, step));
  }
  const std::string prefix = JoinPath(out, absl::StrCat("rank", dist.rank));
  {
    std::vector<float> flat = Flatten(*policy);
    std::ofstream f(prefix + ".bin", std::ios::binary);
    f.write(reinterpret_cast<const char*>(flat.data()), static_cast<std::streamsize>(flat.size() * sizeof(float)));
  }
  Json j = Json::MakeObject();
  j.set("loss", Json(stats.loss));
  j.set("aux_loss", Json(stats.aux_loss));
  j.set("policy_loss", Json(stats.policy_loss));
  j.set("grad_norm", Json(stats.grad_norm));
  j.set("clip_fraction", Json(stats.clip_fraction));
  j.set("ratio_mean", Json(stats.ratio_mean));
  j.set("ratio_min", Json(stats.ratio_min));
  j.set("ratio_max", Json(stats.ratio_max));
  j.set("approx_kl", Json(stats.approx_kl));
  j.set("entropy", Json(stats.entropy));
  j.set("rollout_logprob_abs_diff", Json(stats.rollout_logprob_abs_diff));
  j.set("tokens", Json(stats.tokens));
  j.set("updates", Json(stats.updates));
  j.set("version", Json(learner->version()));
  j.set("grad_buckets", Json(stats.grad_buckets));
  j.set("grad_buckets_in_backward", Json(stats.grad_buckets_in_backward));
  RETURN_IF_ERROR(WriteFileAtomic(prefix + ".json", j.Dump(2) + "\n"));

  if (flags.Has("check-resume")) {
    const std::string dir = JoinPath(out, "resume");
    RETURN_IF_ERROR(MakeDirs(dir));
    RETURN_IF_ERROR(learner->SaveState(JoinPath(dir, "optimizer.pt")));
    if (dist.rank == 0) RETURN_IF_ERROR(policy->Save(JoinPath(dir, "model")));
    if (group) RETURN_IF_ERROR(group->Barrier());
    ASSIGN_OR_RETURN(stats, train(*learner, steps));
    const std::vector<float> continued = Flatten(*policy);
    ASSIGN_OR_RETURN(auto restored, PolicyModel::Load(JoinPath(dir, "model"), popts));
    ASSIGN_OR_RETURN(auto relearner, Learner::Create(restored.get(), opts, group.get()));
    RETURN_IF_ERROR(relearner->LoadState(JoinPath(dir, "optimizer.pt")));
    ASSIGN_OR_RETURN(stats, train(*relearner, steps));
    if (Flatten(*restored) != continued) {
      return absl::InternalError("a resumed learner's update differs from the uninterrupted one");
    }
    std::fprintf(stderr, "rank %lld: resumed update identical\n", static_cast<long long>(dist.rank));
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace lightrl

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  absl::Status status = lightrl::Main(args);
  if (!status.ok()) {
    std::cerr << "learner_dist_worker: " << status.message() << "\n";
    return 1;
  }
  return 0;
}
