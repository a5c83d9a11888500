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
//       [--lose-sample] [--expert-tp 1] [--shard-experts] [--model tiny|parallel]
// --shard-experts (implied by --expert-tp > 1): each rank's model holds only its experts
// (PolicyModel::CreateShard at its place in GroupsOf of ep x expert_tp); the worker then
// also writes rank<r>.names.json: each parameter's name, local shape and its block of the
// whole tensor (ShardOf), so that the test can compare shards with one process.
// --mode grad: no learner; the ranks split `samples` random documents in rank order, run
// one forward (expert-parallel when --expert-parallel > 1) and a backward of
// sum(w * logprob) + aux_coef * aux with fresh weights w, and write rank<r>.logp.bin (the
// logprobs; weights scaled to std 0.3 first) and rank<r>.grad.bin (each parameter's gradient, module order, zeros when none).
// --model parallel: TinyParallelConfig (4 experts top-2, FFN 8) instead of TinyLearnerConfig.
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
#include "policy/expert_parallel.h"
#include "policy/shard_spec.h"
#include "rl/distributed.h"
#include "rl/expert_comm.h"
#include "rl/learner.h"
#include "rl/parallel_layout.h"
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
  // A batch of which no sample is kept has nothing to train: small batches (two samples,
  // one in 64 seeds) would then test an update of zero.
  if (std::none_of(batch.begin(), batch.end(), [](const TrainSample& s) { return s.keep; })) {
    batch.front().keep = true;
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

// Each parameter's name, local shape and block of the whole tensor, in module order.
absl::Status WriteNames(PolicyModel& policy, const std::string& file) {
  Json list = Json::MakeArray();
  for (auto& p : policy.module()->named_parameters()) {
    ASSIGN_OR_RETURN(TensorShard block, ShardOf(p.key(), policy.config(), policy.shard()));
    Json j = Json::MakeObject();
    j.set("name", Json(p.key()));
    Json shape = Json::MakeArray();
    for (int64_t d : p.value().sizes()) shape.push_back(Json(d));
    j.set("shape", shape);
    j.set("dim", Json(static_cast<int64_t>(block.dim)));
    j.set("parts", Json(block.parts));
    j.set("index", Json(block.index));
    list.push_back(j);
  }
  return WriteFileAtomic(file, list.Dump(1) + "\n");
}

void WriteFloats(const torch::Tensor& t, const std::string& file) {
  auto c = t.detach().to(torch::kCPU, torch::kFloat32).contiguous();
  std::ofstream f(file, std::ios::binary);
  f.write(reinterpret_cast<const char*>(c.data_ptr<float>()), static_cast<std::streamsize>(c.numel() * sizeof(float)));
}

// --mode grad: one forward and backward of this rank's documents (see the file comment).
absl::Status GradStep(PolicyModel& policy, ProcessGroup* group, int64_t ep, int64_t expert_tp,
                      uint64_t seed, int64_t samples, double capacity, double aux_coef,
                      const std::string& prefix) {
  const int64_t world = group ? group->world_size() : 1, rank = group ? group->rank() : 0;
  std::mt19937_64 rng(seed * 7919 + 11);
  std::vector<std::vector<int64_t>> docs(samples);
  for (auto& d : docs) {
    const int len = 2 + static_cast<int>(rng() % 9);
    for (int i = 0; i < len; ++i) d.push_back(static_cast<int64_t>(rng() % policy.config().vocab_size));
  }
  std::vector<int64_t> tokens, lengths;
  std::vector<float> weights;
  for (int64_t i = samples * rank / world; i < samples * (rank + 1) / world; ++i) {
    tokens.insert(tokens.end(), docs[i].begin(), docs[i].end());
    lengths.push_back(static_cast<int64_t>(docs[i].size()));
  }
  // The weights of all documents' tokens are drawn on every rank, so a rank's are its
  // documents' whatever the world size.
  std::vector<float> all_w;
  std::normal_distribution<float> normal;
  for (const auto& d : docs) for (size_t t = 0; t < d.size(); ++t) all_w.push_back(normal(rng));
  int64_t before = 0;
  for (int64_t i = 0; i < samples * rank / world; ++i) before += static_cast<int64_t>(docs[i].size());
  weights.assign(all_w.begin() + before, all_w.begin() + before + static_cast<int64_t>(tokens.size()));

  std::unique_ptr<ProcessGroupExpertComm> comm;
  if (ep > 1 || expert_tp > 1) comm = std::make_unique<ProcessGroupExpertComm>(group, ep, expert_tp);
  auto& model = policy.module();
  model->train();
  {
    // transformers' init (std 0.02) leaves the MoE blocks a small part of the logprobs;
    // std 0.3, as expert_parallel_test uses, makes routing and the experts (and so token
    // dropping) move them. A scale of every element is the same on slices and the whole.
    torch::NoGradGuard no_grad;
    for (auto& p : model->named_parameters()) {
      if (p.key().find("norm") == std::string::npos) p.value().mul_(15);
    }
  }
  ForwardOptions fopts;
  fopts.moe_capacity_factor = capacity;
  fopts.expert_parallel = comm.get();
  PackedLayout layout = PackedLayout::FromLengths(lengths);
  auto ids = torch::tensor(tokens, torch::kInt64);
  auto out = model->Forward(ids, layout, fopts);
  // Each token predicts itself from the hidden state: a logprob of every position, which is
  // all the check needs.
  auto logp = model->TokenLogprobs(out.hidden, ids);
  auto w = torch::tensor(weights, torch::kFloat32);
  ((logp * w).sum() + aux_coef * out.aux_loss).backward();
  WriteFloats(logp, prefix + ".logp.bin");
  std::vector<torch::Tensor> grads;
  for (auto& p : model->parameters()) {
    grads.push_back((p.grad().defined() ? p.grad() : torch::zeros_like(p)).flatten());
  }
  WriteFloats(torch::cat(grads), prefix + ".grad.bin");
  Json j = Json::MakeObject();
  j.set("aux_loss", Json(out.aux_loss.item<double>()));
  return WriteFileAtomic(prefix + ".json", j.Dump(2) + "\n");
}

absl::Status Main(const std::vector<std::string>& args) {
  ASSIGN_OR_RETURN(Flags flags, Flags::Parse(args,
                                             {"rank", "world", "port", "seed", "out", "mode", "samples",
                                              "minibatches", "steps", "max-tokens", "bucket-mb", "timeout", "dtype",
                                              "grad-reduce-dtype", "device", "experts", "expert-parallel", "aux-coef",
                                              "capacity", "top-k", "adam-eps", "expert-tp", "model"},
                                             {"zero1", "check-resume", "sorted", "lose-sample", "shard-experts"}));
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
  if (flags.Get("model", "tiny") == "parallel") model = TinyParallelConfig();
  ASSIGN_OR_RETURN(int64_t expert_tp, flags.GetInt("expert-tp", 1));
  std::unique_ptr<PolicyModel> policy;
  const bool sharded = flags.Has("shard-experts") || expert_tp > 1;
  ShardCoords coords;
  if (sharded) {
    ParallelLayout layout;
    layout.ep = opts.data_parallel.expert_parallel;
    layout.expert_tp = expert_tp;
    ASSIGN_OR_RETURN(LayoutGroups groups, GroupsOf(layout, dist.world_size, dist.rank));
    coords = ShardCoordsOf(layout, groups);
    ASSIGN_OR_RETURN(policy, PolicyModel::CreateShard(model, static_cast<uint64_t>(seed), coords, popts));
  } else {
    ASSIGN_OR_RETURN(policy, PolicyModel::Create(model, static_cast<uint64_t>(seed), popts));
  }
  const std::string prefix = JoinPath(out, absl::StrCat("rank", dist.rank));
  RETURN_IF_ERROR(WriteNames(*policy, prefix + ".names.json"));
  if (mode == "grad") {
    ASSIGN_OR_RETURN(double aux_coef, flags.GetDouble("aux-coef", 0));
    return GradStep(*policy, group.get(), opts.data_parallel.expert_parallel, expert_tp,
                    static_cast<uint64_t>(seed), samples, opts.optimizer.moe_capacity_factor,
                    aux_coef, prefix);
  }
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
    // A sharded model has no checkpoint format yet: its weights are kept in memory.
    std::vector<torch::Tensor> kept;
    if (sharded) {
      for (auto& p : policy->module()->parameters()) kept.push_back(p.detach().clone());
    } else if (dist.rank == 0) {
      RETURN_IF_ERROR(policy->Save(JoinPath(dir, "model")));
    }
    if (group) RETURN_IF_ERROR(group->Barrier());
    ASSIGN_OR_RETURN(stats, train(*learner, steps));
    const std::vector<float> continued = Flatten(*policy);
    std::unique_ptr<PolicyModel> restored;
    if (sharded) {
      ASSIGN_OR_RETURN(restored, PolicyModel::CreateShard(model, static_cast<uint64_t>(seed) + 1, coords, popts));
      torch::NoGradGuard no_grad;
      auto params = restored->module()->parameters();
      for (size_t i = 0; i < params.size(); ++i) params[i].copy_(kept[i]);
    } else {
      ASSIGN_OR_RETURN(restored, PolicyModel::Load(JoinPath(dir, "model"), popts));
    }
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
