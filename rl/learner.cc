#include "rl/learner.h"

#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/log.h"
#include "common/status.h"
#include "policy/minimax_model.h"
#include "policy/train_ops_cuda.h"
#include "rl/distributed_internal.h"
#include "rl/expert_comm.h"
#include "rl/losses.h"

namespace lightrl {

namespace {

// A packed forward's view of some samples: which hidden row predicts which response token.
struct Packed {
  // rollout: the engine's logprobs (0 where a sample has none); has_rollout: 1 where it has.
  torch::Tensor tokens, predict_rows, targets, advantages, mask, rollout, has_rollout;
  PackedLayout layout;
  std::vector<int64_t> response_offsets;  // start of each sample's response tokens
  int64_t num_response_tokens = 0;
};

Packed Pack(const std::vector<const TrainSample*>& samples, const torch::Device& device) {
  Packed p;
  std::vector<int64_t> flat, rows, targets, lengths;
  std::vector<float> adv, mask, rollout, has_rollout;
  int64_t offset = 0;
  for (const TrainSample* s : samples) {
    const int64_t P = static_cast<int64_t>(s->prompt.size());
    const int64_t R = static_cast<int64_t>(s->response.size());
    flat.insert(flat.end(), s->prompt.begin(), s->prompt.end());
    flat.insert(flat.end(), s->response.begin(), s->response.end());
    lengths.push_back(P + R);
    p.response_offsets.push_back(static_cast<int64_t>(targets.size()));
    for (int64_t j = 0; j < R; ++j) {
      rows.push_back(offset + P + j - 1);
      targets.push_back(s->response[j]);
      adv.push_back(static_cast<float>(s->advantage));
      mask.push_back(s->keep ? 1.f : 0.f);
      const bool has = static_cast<int64_t>(s->rollout_logprobs.size()) == R;
      rollout.push_back(has ? s->rollout_logprobs[j] : 0.f);
      has_rollout.push_back(has ? 1.f : 0.f);
    }
    offset += P + R;
  }
  auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  p.tokens = torch::tensor(flat, i64).to(device);
  p.predict_rows = torch::tensor(rows, i64).to(device);
  p.targets = torch::tensor(targets, i64).to(device);
  p.advantages = torch::tensor(adv, f32).to(device);
  p.mask = torch::tensor(mask, f32).to(device);
  p.rollout = torch::tensor(rollout, f32).to(device);
  p.has_rollout = torch::tensor(has_rollout, f32).to(device);
  p.layout = PackedLayout::FromLengths(lengths);
  p.num_response_tokens = static_cast<int64_t>(targets.size());
  return p;
}

// Splits samples into forward-sized chunks (whole samples, at least one each).
std::vector<std::vector<const TrainSample*>> MicroBatches(const std::vector<const TrainSample*>& samples,
                                                          int64_t max_tokens) {
  std::vector<std::vector<const TrainSample*>> out;
  int64_t tokens = 0;
  for (const TrainSample* s : samples) {
    const int64_t n = static_cast<int64_t>(s->prompt.size() + s->response.size());
    if (out.empty() || tokens + n > max_tokens) {
      out.emplace_back();
      tokens = 0;
    }
    out.back().push_back(s);
    tokens += n;
  }
  return out;
}

int64_t SampleTokens(const TrainSample* s) {
  return static_cast<int64_t>(s->prompt.size() + s->response.size());
}

// The samples of `mini` each rank trains on, by rank: longest first, each to the rank
// with the fewest tokens so far (lowest rank on ties), then back in batch order. Every
// rank computes the same split; a rank may get none.
std::vector<std::vector<const TrainSample*>> ShardAll(const std::vector<const TrainSample*>& mini,
                                                      int64_t world) {
  if (world == 1) return {mini};
  std::vector<size_t> order(mini.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return SampleTokens(mini[a]) > SampleTokens(mini[b]);
  });
  std::vector<int64_t> load(world, 0);
  std::vector<int64_t> owner(mini.size(), 0);
  for (size_t i : order) {
    const int64_t r = std::min_element(load.begin(), load.end()) - load.begin();
    load[r] += SampleTokens(mini[i]);
    owner[i] = r;
  }
  std::vector<std::vector<const TrainSample*>> out(world);
  for (size_t i = 0; i < mini.size(); ++i) out[owner[i]].push_back(mini[i]);
  return out;
}

// Response tokens of `samples` that the loss counts (kept ones only when `kept_only`).
double ResponseTokens(const std::vector<const TrainSample*>& samples, bool kept_only) {
  double n = 0;
  for (const TrainSample* s : samples) {
    if (!kept_only || s->keep) n += static_cast<double>(s->response.size());
  }
  return n;
}

// Expert parallel: every rank must run as many forwards (and backwards) as the rank with
// the most micro-batches, the missing ones empty, so that all meet in every MoE block's
// collectives. `by_rank` is every rank's micro-batches; the k-th forwards of all ranks
// together act as one forward of one process (the aux loss and the capacity are counted
// over them), and `shares`[k] is their part of the `total` loss tokens.
struct LockStep {
  int64_t forwards = 0;
  std::vector<double> shares;
};

LockStep PlanLockStep(const std::vector<std::vector<std::vector<const TrainSample*>>>& by_rank,
                      double total, bool kept_only) {
  LockStep plan;
  for (const auto& micros : by_rank) {
    plan.forwards = std::max<int64_t>(plan.forwards, static_cast<int64_t>(micros.size()));
  }
  plan.shares.assign(plan.forwards, 0.0);
  for (const auto& micros : by_rank) {
    for (size_t k = 0; k < micros.size(); ++k) plan.shares[k] += ResponseTokens(micros[k], kept_only);
  }
  for (double& share : plan.shares) share = total > 0 ? share / total : 0;
  return plan;
}

// The model parameter's expert index when it belongs to an MoE expert, else -1.
int64_t ExpertOf(const std::string& name) {
  static const std::string kMarker = "block_sparse_moe.experts.";
  const size_t at = name.find(kMarker);
  if (at == std::string::npos) return -1;
  return std::stoll(name.substr(at + kMarker.size()));
}

// A fingerprint of a batch, to check that every rank was handed the same one.
uint64_t BatchHash(const std::vector<TrainSample>& batch) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  };
  for (const TrainSample& s : batch) {
    const uint64_t sizes[4] = {s.id.size(), s.prompt.size(), s.response.size(),
                               s.rollout_logprobs.size()};
    mix(sizes, sizeof(sizes));
    mix(s.id.data(), s.id.size());
    mix(s.prompt.data(), s.prompt.size() * sizeof(int32_t));
    mix(s.response.data(), s.response.size() * sizeof(int32_t));
    mix(s.rollout_logprobs.data(), s.rollout_logprobs.size() * sizeof(float));
    mix(&s.advantage, sizeof(double));
    const char keep = s.keep;
    mix(&keep, 1);
  }
  return h;
}

}  // namespace

struct Learner::Impl {
  PolicyModel* policy = nullptr;
  LearnerOptions options;
  torch::Device device = torch::kCPU;
  std::unique_ptr<torch::optim::AdamW> optimizer;
  // The model's parameters and, when they are not FP32 (bf16 on GPU), the FP32 master
  // copies the optimizer updates: bf16 cannot hold small updates to large weights.
  std::vector<torch::Tensor> params, master;
  int64_t version = 0;
  int64_t steps = 0;
  // RL updates only: the clock of the LR schedule, so that SFT warm-up updates neither
  // use up the warmup nor advance the decay of the RL run.
  int64_t rl_steps = 0;

  // --- data parallel (world > 1), unused by a single process ---
  // Every parameter has a slot in `flat`, in reverse module order (roughly the order
  // backward produces gradients); slots are grouped into buckets that are all-reduced
  // in index order (the same order on every rank, as collectives must be), each as soon
  // as its gradients and those of the buckets before it are in.
  ProcessGroup* group = nullptr;
  int64_t rank = 0, world = 1;
  bool zero1 = false;
  struct Slot {
    int64_t offset = 0, numel = 0, bucket = 0;
  };
  struct Bucket {
    int64_t begin = 0, end = 0, num_params = 0, ready = 0;
    c10::intrusive_ptr<c10d::Work> work;
  };
  std::vector<Slot> slots;  // by parameter index
  std::vector<Bucket> buckets;
  size_t next_bucket = 0;
  std::vector<char> copied;  // by parameter: counted ready for its bucket in this update
  std::vector<std::vector<size_t>> bucket_params;  // by bucket: its parameters
  std::unique_ptr<SideStream> side;  // where the buckets' copies and all-reduces are queued
  // Every dense parameter is bf16 on a CUDA device with the kernels: each bucket is filled
  // by one gather kernel, which also zeroes the slots of gradients nobody produced, so
  // `flat` needs no zeroing pass (but for its padding).
  bool gather_kernel = false;
  // grad_reduce_dtype bfloat16: `flat` is bf16, each bucket filled by one concatenation.
  bool reduce_bf16 = false;
  bool armed = false;        // the backward under way is the update's last one
  int64_t total = 0;         // parameter elements
  // The gradients of every parameter (FP32; bf16 with grad_reduce_dtype bfloat16), padded
  // to world * shard_size; ZeRO-1 then reuses it to all-gather the updated parameters.
  // grad_views[i]: parameter i's slot, shaped as the parameter (made once: FinishSync
  // hands them out every update).
  torch::Tensor flat;
  std::vector<torch::Tensor> grad_views;
  // By parameter: 1 where some rank's backward gave it a gradient in this update. A
  // single process's AdamW skips parameters without a gradient (an expert no token
  // reached), so every rank must skip exactly those.
  torch::Tensor used;
  // ZeRO-1: this rank's range of `flat` and its AdamW state, shard_size long (the last
  // shard is padded).
  int64_t shard_size = 0, shard_begin = 0, shard_end = 0;
  torch::Tensor z_master, z_avg, z_avg_sq;
  std::vector<int64_t> z_steps;  // by parameter, as torch's AdamW counts them

  // --- expert parallel (expert_parallel > 1) ---
  // The buckets, `flat` and ZeRO-1 hold the dense parameters only (all but the experts).
  // This rank's experts have their own AdamW, their gradients are summed over the ranks
  // that hold the same experts, and after every update each EP group all-gathers the
  // experts so that every rank holds all weights again.
  int64_t ep = 1, ep_rank = 0;
  std::unique_ptr<ProcessGroupExpertComm> ep_comm;
  c10::intrusive_ptr<c10d::Backend> replicas;  // ranks holding this rank's experts; null: none
  std::vector<char> dense;                     // by parameter; all when ep == 1
  std::vector<std::vector<size_t>> shard_params;  // [ep]: parameters of shard q, module order
  int64_t expert_numel = 0;                    // elements of one shard
  // FP32 [ep * expert_numel]: this rank's expert gradients (first expert_numel), then the
  // all-gather of the updated experts.
  torch::Tensor expert_flat;
  std::unique_ptr<torch::optim::AdamW> expert_optimizer;

  bool dp() const { return world > 1; }
  c10d::Backend& backend() { return *group->impl().backend; }
  const std::vector<size_t>& local_experts() const { return shard_params[ep_rank]; }
  // The tensor the optimizer updates for parameter i: its FP32 master where it has one.
  torch::Tensor& Updated(size_t i) {
    return master.empty() || !master[i].defined() ? params[i] : master[i];
  }

  ~Impl() {
    if (dp()) {
      for (auto& p : params) torch::autograd::impl::set_post_acc_grad_hooks(p, nullptr);
    }
  }

  // Bucket b's gradients into `flat` (bf16 -> FP32 where the model is bf16; one gather
  // kernel for the whole bucket on CUDA), then its all-reduce, both on the side stream: they
  // run beside the rest of the backward instead of between its kernels. The gradients'
  // memory is kept until the copies have run.
  void Launch(size_t b) {
    const Bucket& bucket = buckets[b];
    auto range = flat.narrow(0, bucket.begin, bucket.end - bucket.begin);
    bool one_kernel = gather_kernel;
    for (size_t i : bucket_params[b]) {
      if (params[i].grad().defined() && !params[i].grad().is_contiguous()) one_kernel = false;
    }
    side->Run([&] {
      if (reduce_bf16) {
        std::vector<torch::Tensor> parts;
        for (size_t i : bucket_params[b]) {
          const auto& g = params[i].grad();
          parts.push_back(g.defined() ? g.reshape({-1}) : torch::zeros({slots[i].numel}, range.options()));
        }
        // Slots are laid out in bucket_params' reverse order (see SetUpDataParallel).
        std::reverse(parts.begin(), parts.end());
        at::cat_out(range, parts);
      } else if (one_kernel) {
        std::vector<torch::Tensor> srcs;
        std::vector<int64_t> offsets, numels;
        for (size_t i : bucket_params[b]) {
          srcs.push_back(params[i].grad());
          offsets.push_back(slots[i].offset - bucket.begin);
          numels.push_back(slots[i].numel);
        }
        GatherToFp32Cuda(srcs, offsets, numels, range);
      } else {
        for (size_t i : bucket_params[b]) {
          if (params[i].grad().defined()) {
            grad_views[i].copy_(params[i].grad());
          } else if (gather_kernel) {
            grad_views[i].zero_();
          }
        }
      }
      std::vector<at::Tensor> t{range};
      buckets[b].work = backend().allreduce(t);
    });
    for (size_t i : bucket_params[b]) side->Keep(params[i].grad());
  }

  void LaunchReady() {
    while (next_bucket < buckets.size() &&
           buckets[next_bucket].ready == buckets[next_bucket].num_params) {
      Launch(next_bucket++);
    }
  }

  // From autograd, once parameter i's gradient is accumulated.
  void OnGradReady(size_t i) {
    if (!armed || !dense[i] || copied[i] || !params[i].grad().defined()) return;
    torch::NoGradGuard no_grad;
    copied[i] = 1;
    if (++buckets[slots[i].bucket].ready == buckets[slots[i].bucket].num_params) LaunchReady();
  }

  // Before an update's first backward.
  void BeginSync() {
    if (gather_kernel || reduce_bf16) {
      flat.narrow(0, total, flat.numel() - total).zero_();  // ZeRO-1 gathers into it
    } else {
      flat.zero_();
    }
    std::fill(copied.begin(), copied.end(), 0);
    for (auto& b : buckets) {
      b.ready = 0;
      b.work.reset();
    }
    next_bucket = 0;
    armed = false;
  }

  // After an update's last backward (or none, for a rank without samples): reduces what
  // the hooks have not, waits for every bucket, and leaves the global gradient in place
  // of each used parameter's (ZeRO-1 reads `flat` directly).
  void FinishSync(LearnerStats& stats) {
    armed = false;
    stats.grad_buckets += static_cast<int64_t>(buckets.size());
    stats.grad_buckets_in_backward += static_cast<int64_t>(next_bucket);
    torch::NoGradGuard no_grad;
    c10::intrusive_ptr<c10d::Work> expert_work;
    if (ep > 1) {
      // Launched first: it overlaps the dense buckets' reduction.
      int64_t offset = 0;
      for (size_t i : local_experts()) {
        const int64_t n = params[i].numel();
        auto slot = expert_flat.narrow(0, offset, n);
        if (params[i].grad().defined()) {
          slot.copy_(params[i].grad().reshape({-1}));
        } else {
          slot.zero_();
        }
        offset += n;
      }
      if (replicas) {
        std::vector<at::Tensor> t{expert_flat.narrow(0, 0, expert_numel)};
        expert_work = replicas->allreduce(t);
      }
    }
    std::vector<float> local(params.size(), 0.f);
    for (size_t i = 0; i < params.size(); ++i) {
      local[i] = params[i].grad().defined() ? 1.f : 0.f;
      if (!dense[i] || copied[i]) continue;
      // Unused in the last micro-batch, or by this rank altogether.
      copied[i] = 1;
      ++buckets[slots[i].bucket].ready;
    }
    LaunchReady();
    used = torch::tensor(local).to(device);
    std::vector<at::Tensor> u{used};
    c10d::AllreduceOptions max;
    max.reduceOp = c10d::ReduceOp::MAX;
    auto used_work = backend().allreduce(u, max);
    for (auto& b : buckets) b.work->wait();
    used_work->wait();
    if (expert_work) expert_work->wait();
    used = used.cpu();
    const float* any = used.data_ptr<float>();
    for (size_t i = 0; i < params.size(); ++i) {
      params[i].mutable_grad() = torch::Tensor();
      if (!dense[i] || zero1 || any[i] == 0) continue;
      auto& t = Updated(i);
      // bf16-reduced gradients: the AdamW kernel reads them as they are; torch's AdamW
      // wants its parameter's dtype.
      const bool widen = t.scalar_type() != grad_views[i].scalar_type() && !KernelAdamW();
      t.mutable_grad() = widen ? grad_views[i].to(t.scalar_type()) : grad_views[i];
    }
    if (ep > 1) {
      // Every expert of this rank has a gradient, zero where no token reached it, as
      // with one process's dense MoE path; its replicas all step it alike.
      int64_t offset = 0;
      for (size_t i : local_experts()) {
        const int64_t n = params[i].numel();
        Updated(i).mutable_grad() = expert_flat.narrow(0, offset, n).view(params[i].sizes());
        offset += n;
      }
    }
  }

  // Expert parallel: the squared norm of all experts' gradients, each shard counted once
  // (from the first EP group), the same on every rank. A collective.
  double ExpertSquaredNorm() {
    std::vector<double> per_shard(ep, 0.0);
    if (rank < ep) {
      per_shard[ep_rank] = expert_flat.narrow(0, 0, expert_numel).to(torch::kFloat64).pow(2).sum().item<double>();
    }
    auto status = group->AllReduce(&per_shard, ReduceOp::kSum);
    TORCH_CHECK(status.ok(), status.message());
    double sq = 0;
    for (double v : per_shard) sq += v;
    return sq;
  }

  // After an update: every EP group all-gathers its experts, so that all ranks hold the
  // same full weights again (replicas of a shard updated theirs identically).
  void GatherExperts() {
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> mine;
    for (size_t i : local_experts()) mine.push_back(Updated(i).detach().reshape({-1}).to(torch::kFloat32));
    std::vector<at::Tensor> in{torch::cat(mine)};
    std::vector<std::vector<at::Tensor>> out(1);
    for (int64_t q = 0; q < ep; ++q) out[0].push_back(expert_flat.narrow(0, q * expert_numel, expert_numel));
    ep_comm->ep_backend().allgather(out, in)->wait();
    for (int64_t q = 0; q < ep; ++q) {
      if (q == ep_rank) continue;
      int64_t offset = q * expert_numel;
      for (size_t i : shard_params[q]) {
        const int64_t n = params[i].numel();
        params[i].copy_(expert_flat.narrow(0, offset, n).view(params[i].sizes()));
        offset += n;
      }
    }
  }

  // Scales this rank's expert gradients (clipping).
  void ScaleExpertGrads(double factor) {
    if (factor < 1) expert_flat.narrow(0, 0, expert_numel).mul_(factor);
  }

  // ZeRO-1's update: the global norm and clip from the (all-reduced, full) gradients,
  // the fused AdamW on this rank's shard (as the plain update runs it), then an all-gather of the
  // parameters.
  double ZeroStep(double lr, LearnerStats& stats) {
    torch::NoGradGuard no_grad;
    const float* any = used.data_ptr<float>();
    bool any_used = false;
    for (size_t i = 0; i < params.size(); ++i) any_used = any_used || (dense[i] && any[i] > 0);
    double norm = 0;
    torch::Tensor scale;  // the clip factor, applied inside AdamW
    torch::Tensor shard_grad = flat.narrow(0, shard_begin, shard_end - shard_begin);
    if (ep > 1) {
      norm = std::sqrt(DenseSquaredNorm() + ExpertSquaredNorm());
      if (options.optimizer.grad_clip > 0 && std::isfinite(norm)) {
        const double factor = options.optimizer.grad_clip / (norm + 1e-6);
        if (factor < 1) {
          // bf16-reduced gradients are scaled inside AdamW, in FP32, as the plain path
          // scales its widened copies (scaling the bf16 buffer would round once more).
          if (shard_grad.scalar_type() == torch::kFloat32) {
            shard_grad.mul_(factor);
          } else {
            scale = torch::full({}, factor, shard_grad.options().dtype(torch::kFloat32));
          }
        }
        ScaleExpertGrads(factor);
      }
    } else if (any_used) {
      // The same norm and factor as ClipAndStep, so ZeRO-1 and plain data parallelism
      // update bit for bit alike.
      auto total_norm = FlatNorm();
      if (options.optimizer.grad_clip > 0) scale = ClipFactor(total_norm);
      norm = total_norm.item<double>();
    }
    if (std::isfinite(norm)) {
      AdamWLists lists;
      for (size_t i = 0; i < params.size(); ++i) {
        if (!dense[i]) continue;
        const int64_t lo = std::max(slots[i].offset, shard_begin);
        const int64_t hi = std::min(slots[i].offset + slots[i].numel, shard_end);
        if (any[i] == 0 || lo >= hi) continue;
        // bf16-reduced gradients: the AdamW kernel reads them as they are; torch's AdamW
        // wants the masters' dtype.
        torch::Tensor grad = flat.narrow(0, lo, hi - lo);
        if (grad.scalar_type() != z_master.scalar_type() && !MasterAdamWSupported(device)) {
          grad = grad.to(z_master.scalar_type());
        }
        lists.Add(z_master.narrow(0, lo - shard_begin, hi - lo), grad,
                  z_avg.narrow(0, lo - shard_begin, hi - lo),
                  z_avg_sq.narrow(0, lo - shard_begin, hi - lo), ++z_steps[i]);
      }
      FusedAdamW(lists, lr, scale);
      // In `flat`'s dtype: with bf16 reduction the weights are bf16 too, and rounding the
      // masters before the gather gives the bits the copy after it would.
      std::vector<at::Tensor> in{flat.scalar_type() == z_master.scalar_type()
                                     ? z_master
                                     : z_master.to(flat.scalar_type())};
      std::vector<std::vector<at::Tensor>> out(1);
      for (int64_t r = 0; r < world; ++r) out[0].push_back(flat.narrow(0, r * shard_size, shard_size));
      backend().allgather(out, in)->wait();
      for (size_t i = 0; i < params.size(); ++i) {
        if (dense[i]) params[i].copy_(flat.narrow(0, slots[i].offset, slots[i].numel).view(params[i].sizes()));
      }
      if (ep > 1) StepExperts(lr);
    } else {
      LogWarning("learner: non-finite gradient norm at update %lld, update skipped",
                 static_cast<long long>(steps));
    }
    ++steps;
    ++version;
    ++stats.updates;
    stats.lr = lr;
    return norm;
  }

  double Step(double lr, LearnerStats& stats) {
    const double norm = zero1 ? ZeroStep(lr, stats) : ClipAndStep(lr, stats);
    if (ep > 1) {
      // Views of expert_flat, which the next update refills.
      for (size_t i : local_experts()) Updated(i).mutable_grad().reset();
    }
    return norm;
  }

  // Expert parallel: AdamW on this rank's experts (gradients reduced and clipped), then
  // the all-gather that brings every rank's weights level.
  void StepExperts(double lr) {
    SetLr(*expert_optimizer, lr);
    expert_optimizer->step();
    torch::NoGradGuard no_grad;
    for (size_t i : local_experts()) {
      if (!master.empty() && master[i].defined()) params[i].copy_(master[i]);
    }
    GatherExperts();
  }

  static void SetLr(torch::optim::Optimizer& opt, double lr) {
    for (auto& group : opt.param_groups()) {
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
    }
  }
  void SetLr(double lr) { SetLr(*optimizer, lr); }

  // Logprobs of the packed response tokens (and their entropy when asked).
  std::pair<torch::Tensor, torch::Tensor> Logprobs(const Packed& p, bool train, torch::Tensor* entropy) {
    auto& module = policy->module();
    ForwardOptions fopts;
    fopts.train_lightning = train;
    fopts.moe_capacity_factor = train ? options.optimizer.moe_capacity_factor : 0;
    fopts.expert_parallel = ep_comm.get();
    auto out = module->Forward(p.tokens, p.layout, fopts);
    auto hidden = out.hidden.index_select(0, p.predict_rows);
    if (entropy != nullptr) {
      std::vector<torch::Tensor> lps, ents;
      const int64_t chunk = module->LogitChunkRows();
      for (int64_t start = 0; start < hidden.size(0); start += chunk) {
        const int64_t n = std::min<int64_t>(chunk, hidden.size(0) - start);
        auto logits = module->Logits(hidden.narrow(0, start, n));
        if (options.temperature != 1.0) logits = logits / options.temperature;
        auto logp = torch::log_softmax(logits, -1);
        lps.push_back(logp.gather(1, p.targets.narrow(0, start, n).unsqueeze(1)).squeeze(1));
        ents.push_back(-(logp.exp() * logp).sum(-1));
      }
      // A forward without response tokens (a lock-step expert-parallel one) gives empty
      // results on the model's device.
      auto none = torch::zeros({0}, hidden.options().dtype(torch::kFloat32));
      *entropy = ents.empty() ? none : torch::cat(ents);
      return {lps.empty() ? none : torch::cat(lps), out.aux_loss};
    }
    return {module->TokenLogprobs(hidden, p.targets, 0, options.temperature), out.aux_loss};
  }

  // sqrt of the sum of squares of `grads` (bf16 or FP32, summed in FP32), on the device.
  static torch::Tensor GlobalNorm(const std::vector<torch::Tensor>& grads) {
    return torch::stack(at::_foreach_norm(grads, 2, torch::kFloat32)).norm();
  }

  // Under expert parallelism: the squared norm of the reduced dense gradients (those some
  // rank produced), in float64 from `flat`, which plain data parallelism and ZeRO-1 both
  // read, so that they clip by the same factor to the bit; one read-back.
  double DenseSquaredNorm() const {
    const float* any = used.data_ptr<float>();
    std::vector<torch::Tensor> sums;
    for (size_t i = 0; i < params.size(); ++i) {
      if (!dense[i] || any[i] == 0) continue;
      sums.push_back(flat.narrow(0, slots[i].offset, slots[i].numel).to(torch::kFloat64).pow(2).sum());
    }
    return sums.empty() ? 0.0 : torch::stack(sums).sum().item<double>();
  }

  // Data parallel: the global norm of the reduced gradients, all in `flat` (a parameter no
  // rank used holds zeros there), in one reduction.
  torch::Tensor FlatNorm() const {
    return at::linalg_vector_norm(flat, 2, c10::nullopt, false, torch::kFloat32);
  }

  // What gradients of global norm `norm` are scaled by: torch's clip_grad_norm_ rule.
  torch::Tensor ClipFactor(const torch::Tensor& norm) const {
    return (options.optimizer.grad_clip / (norm + 1e-6)).clamp_max(1.0);
  }

  // Whether the dense update runs on the CUDA AdamW kernel (policy/train_ops_cuda.h): it
  // reads bf16 gradients as they are, applies the clip factor, and writes the bf16 weights
  // from the updated FP32 masters, so the update needs no FP32 gradient copies, no clip
  // pass and no copy-back pass.
  bool KernelAdamW() const { return ep == 1 && MasterAdamWSupported(device); }

  // The gradient the update of dense parameter i reads, undefined when it has none: its
  // master's (reduced or converted) or, with the kernel, the parameter's own.
  torch::Tensor UpdateGrad(size_t i) {
    auto& t = Updated(i);
    if (t.grad().defined() || &t == &params[i]) return t.grad();
    return KernelAdamW() ? params[i].grad() : torch::Tensor();
  }

  // The tensors of one fused AdamW update, each with its own step count (after this
  // update's increment) and, optionally, the bf16 weights to refresh from it.
  struct AdamWLists {
    std::vector<torch::Tensor> params, grads, avgs, avg_sqs, outs;
    std::vector<int64_t> steps;
    void Add(torch::Tensor p, torch::Tensor g, torch::Tensor m, torch::Tensor v, int64_t step,
             torch::Tensor out = {}) {
      params.push_back(std::move(p));
      grads.push_back(std::move(g));
      avgs.push_back(std::move(m));
      avg_sqs.push_back(std::move(v));
      steps.push_back(step);
      outs.push_back(std::move(out));
    }
  };

  // AdamW (torch's: decoupled weight decay, bias-corrected moments) on the gradients times
  // grad_scale (undefined: 1): the CUDA kernel on the GPU, else torch's fused multi-tensor
  // AdamW after a multi-tensor scale.
  void FusedAdamW(const AdamWLists& l, double lr, const torch::Tensor& grad_scale) {
    if (l.params.empty()) return;
    torch::NoGradGuard no_grad;
    const auto& o = options.optimizer;
    if (MasterAdamWSupported(l.params.front().device())) {
      std::vector<MasterAdamWEntry> entries;
      for (size_t i = 0; i < l.params.size(); ++i) {
        entries.push_back({l.params[i], l.avgs[i], l.avg_sqs[i], l.grads[i], l.outs[i], l.steps[i]});
      }
      MasterAdamWCuda(entries, grad_scale, {lr, o.beta1, o.beta2, o.weight_decay, o.eps});
      return;
    }
    if (grad_scale.defined()) at::_foreach_mul_(l.grads, grad_scale);
    // The kernel reads each tensor's step count from a tensor on its device.
    std::vector<float> counts(l.steps.begin(), l.steps.end());
    auto steps = torch::tensor(counts).to(l.params.front().device()).unbind(0);
    at::_fused_adamw_(l.params, l.grads, l.avgs, l.avg_sqs, /*max_exp_avg_sqs=*/{}, steps, lr,
                      o.beta1, o.beta2, o.weight_decay, o.eps, /*amsgrad=*/false,
                      /*maximize=*/false);
    std::vector<torch::Tensor> to, from;
    for (size_t i = 0; i < l.params.size(); ++i) {
      if (!l.outs[i].defined()) continue;
      to.push_back(l.outs[i]);
      from.push_back(l.params[i]);
    }
    if (!to.empty()) at::_foreach_copy_(to, from);
  }

  // One AdamW update of the dense parameters that have a gradient (as torch's AdamW, which
  // skips the others). The moments and step counts stay in the optimizer's own state, so
  // checkpoints read and write them unchanged.
  void FusedAdamWStep(double lr, const torch::Tensor& grad_scale) {
    AdamWLists lists;
    for (size_t i = 0; i < params.size(); ++i) {
      if (!dense[i]) continue;
      auto g = UpdateGrad(i);
      if (!g.defined()) continue;
      auto& p = Updated(i);
      auto& slot = optimizer->state()[p.unsafeGetTensorImpl()];
      if (!slot) {
        auto fresh = std::make_unique<torch::optim::AdamWParamState>();
        fresh->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        fresh->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        slot = std::move(fresh);
      }
      auto& st = static_cast<torch::optim::AdamWParamState&>(*slot);
      st.step(st.step() + 1);
      const bool refresh = &p != &params[i];  // a master: the weights follow it
      lists.Add(p, g, st.exp_avg(), st.exp_avg_sq(), st.step(), refresh ? params[i] : torch::Tensor());
    }
    FusedAdamW(lists, lr, grad_scale);
  }

  double ClipAndStep(double lr, LearnerStats& stats) {
    const bool kernel = KernelAdamW();
    if (!master.empty() && !kernel) {
      torch::NoGradGuard no_grad;
      for (size_t i = 0; i < params.size(); ++i) {
        if (params[i].grad().defined() && master[i].defined()) {
          master[i].mutable_grad() = params[i].grad().to(torch::kFloat32);
        }
        params[i].mutable_grad() = torch::Tensor();
      }
    }
    const std::vector<torch::Tensor>& updated = master.empty() ? params : master;
    double norm = 0;
    torch::Tensor scale;
    if (ep > 1) {
      // The dense gradients are the same on every rank; the experts' are spread.
      torch::NoGradGuard no_grad;
      norm = std::sqrt(DenseSquaredNorm() + ExpertSquaredNorm());
      if (options.optimizer.grad_clip > 0 && std::isfinite(norm)) {
        const double factor = options.optimizer.grad_clip / (norm + 1e-6);
        if (factor < 1) {
          for (size_t i = 0; i < params.size(); ++i) {
            if (dense[i] && Updated(i).grad().defined()) Updated(i).mutable_grad().mul_(factor);
          }
        }
        ScaleExpertGrads(factor);
      }
    } else {
      // The global norm and clip factor stay on the device; one read-back for the norm.
      torch::NoGradGuard no_grad;
      std::vector<torch::Tensor> grads;
      for (size_t i = 0; i < params.size(); ++i) {
        auto g = UpdateGrad(i);
        if (g.defined()) grads.push_back(g);
      }
      if (!grads.empty()) {
        auto total = dp() ? FlatNorm() : GlobalNorm(grads);
        if (options.optimizer.grad_clip > 0) scale = ClipFactor(total);
        norm = total.item<double>();
      }
    }
    SetLr(lr);
    if (std::isfinite(norm)) {
      FusedAdamWStep(lr, scale);
      if (ep > 1) StepExperts(lr);
    } else {
      LogWarning("learner: non-finite gradient norm at update %lld, update skipped",
                 static_cast<long long>(steps));
    }
    if (dp()) {
      // Views of the reduction buffer, which zero_grad() cannot detach in place.
      for (auto& t : updated) {
        if (t.defined()) t.mutable_grad().reset();
      }
    }
    optimizer->zero_grad();
    if (kernel) {
      for (auto& p : params) p.mutable_grad().reset();
    }
    ++steps;
    ++version;
    ++stats.updates;
    stats.lr = lr;
    return norm;
  }
};

namespace {

class GradReadyHook : public torch::autograd::PostAccumulateGradHook {
 public:
  GradReadyHook(Learner::Impl* impl, size_t index) : impl_(impl), index_(index) {}
  void operator()(const torch::autograd::Variable&) override { impl_->OnGradReady(index_); }

 private:
  Learner::Impl* impl_;
  size_t index_;
};

// Expert parallel: which parameters are whose experts, this rank's EP group and
// replicas, and the optimizers: the dense one over the dense parameters only, another
// over this rank's experts. The other experts' FP32 masters are dropped: their owners
// update them.
void SetUpExpertParallel(Learner::Impl& m) {
  const int64_t num_experts = m.policy->config().num_local_experts;
  const int64_t per_rank = num_experts / m.ep;
  m.ep_rank = m.rank % m.ep;
  m.shard_params.assign(m.ep, {});
  const auto names = m.policy->module()->named_parameters().keys();
  for (size_t i = 0; i < m.params.size(); ++i) {
    const int64_t e = ExpertOf(names[i]);
    m.dense[i] = e < 0;
    if (e >= 0) m.shard_params[e / per_rank].push_back(i);
  }
  for (int64_t q = 0; q < m.ep; ++q) {
    int64_t numel = 0;
    for (size_t i : m.shard_params[q]) numel += m.params[i].numel();
    TORCH_CHECK(q == 0 || numel == m.expert_numel, "expert shard ", q, " has ", numel,
                " elements, shard 0 ", m.expert_numel);
    m.expert_numel = numel;
  }
  m.ep_comm = std::make_unique<ProcessGroupExpertComm>(m.group, m.ep);
  const auto replica_ranks = ProcessGroupExpertComm::ReplicaRanks(m.rank, m.world, m.ep);
  if (replica_ranks.size() > 1) m.replicas = m.group->impl().Subgroup(replica_ranks);
  m.expert_flat = torch::zeros({m.ep * m.expert_numel},
                               torch::TensorOptions().dtype(torch::kFloat32).device(m.device));
  std::vector<torch::Tensor> dense_updated, expert_updated;
  std::vector<char> mine(m.params.size(), 0);
  for (size_t i : m.local_experts()) mine[i] = 1;
  for (size_t i = 0; i < m.params.size(); ++i) {
    if (!m.dense[i] && !mine[i] && !m.master.empty()) m.master[i] = torch::Tensor();
    if (m.dense[i]) dense_updated.push_back(m.Updated(i));
    if (mine[i]) expert_updated.push_back(m.Updated(i));
  }
  const OptimizerOptions& o = m.options.optimizer;
  auto adamw = [&](std::vector<torch::Tensor> tensors) {
    return std::make_unique<torch::optim::AdamW>(
        std::move(tensors), torch::optim::AdamWOptions(o.lr).betas({o.beta1, o.beta2}).eps(o.eps).weight_decay(o.weight_decay));
  };
  m.optimizer = adamw(dense_updated);
  m.expert_optimizer = adamw(expert_updated);
}

// Sets up the buckets, the hooks and (ZeRO-1) the optimizer shard; checks that every
// rank starts from the same weights.
absl::Status SetUpDataParallel(Learner::Impl& m, ProcessGroup* group) {
  m.group = group;
  m.rank = group->rank();
  m.world = group->world_size();
  m.zero1 = m.options.data_parallel.zero1;
  const size_t n = m.params.size();
  if (m.ep > 1) SetUpExpertParallel(m);
  const int64_t bucket_elems =
      std::max<int64_t>(1, static_cast<int64_t>(m.options.data_parallel.bucket_mb * 1e6 / 4));
  m.slots.resize(n);
  m.copied.assign(n, 0);
  for (size_t k = n; k-- > 0;) {
    if (!m.dense[k]) {
      m.slots[k].bucket = -1;
      continue;
    }
    if (m.buckets.empty() || m.buckets.back().end - m.buckets.back().begin >= bucket_elems) {
      Learner::Impl::Bucket b;
      b.begin = b.end = m.total;
      m.buckets.push_back(b);
    }
    Learner::Impl::Slot& slot = m.slots[k];
    slot.offset = m.total;
    slot.numel = m.params[k].numel();
    slot.bucket = static_cast<int64_t>(m.buckets.size()) - 1;
    m.total += slot.numel;
    m.buckets.back().end = m.total;
    ++m.buckets.back().num_params;
  }
  m.bucket_params.assign(m.buckets.size(), {});
  for (size_t k = 0; k < n; ++k) {
    if (m.dense[k]) m.bucket_params[m.slots[k].bucket].push_back(k);
  }
  m.side = std::make_unique<SideStream>(m.device);
  m.gather_kernel = m.total > 0;
  for (size_t k = 0; k < n; ++k) {
    if (m.dense[k] && m.params[k].scalar_type() != torch::kBFloat16) m.gather_kernel = false;
  }
  m.shard_size = (m.total + m.world - 1) / m.world;
  auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(m.device);
  m.reduce_bf16 = m.options.data_parallel.grad_reduce_dtype == "bfloat16";
  if (m.reduce_bf16) {
    for (size_t k = 0; k < n; ++k) {
      if (m.dense[k] && m.params[k].scalar_type() != torch::kBFloat16) {
        return absl::InvalidArgumentError(absl::StrCat(
            "data_parallel.grad_reduce_dtype bfloat16 needs bf16 parameters; ",
            m.policy->module()->named_parameters().keys()[k], " is ",
            c10::toString(m.params[k].scalar_type())));
      }
    }
  }
  m.flat = torch::zeros({m.world * m.shard_size}, f32.dtype(m.reduce_bf16 ? torch::kBFloat16 : torch::kFloat32));
  m.gather_kernel = !m.reduce_bf16 && m.gather_kernel && GatherToFp32Supported(m.flat);
  m.grad_views.resize(n);
  for (size_t i = 0; i < n; ++i) {
    if (m.dense[i]) {
      m.grad_views[i] = m.flat.narrow(0, m.slots[i].offset, m.slots[i].numel).view(m.params[i].sizes());
    }
  }

  // Identical starting weights: a per-parameter fingerprint, reduced MIN and MAX.
  std::vector<double> lo, hi;
  {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < n; ++i) {
      auto p = m.params[i].detach().to(torch::kFloat64).flatten();
      const double v = (p * torch::arange(1, p.numel() + 1, p.options()).remainder(7).add(1)).sum().item<double>();
      lo.push_back(v);
    }
  }
  hi = lo;
  RETURN_IF_ERROR(group->AllReduce(&lo, ReduceOp::kMin));
  RETURN_IF_ERROR(group->AllReduce(&hi, ReduceOp::kMax));
  auto names = m.policy->module()->named_parameters().keys();
  for (size_t i = 0; i < n; ++i) {
    if (lo[i] != hi[i]) {
      return absl::FailedPreconditionError(absl::StrCat(
          "learner rank ", m.rank, " of ", m.world, ": the ranks start from different weights (",
          i < names.size() ? names[i] : std::to_string(i),
          " differs); every rank must load the same checkpoint or init seed"));
    }
  }

  if (m.zero1) {
    m.shard_begin = std::min(m.rank * m.shard_size, m.total);
    m.shard_end = std::min(m.shard_begin + m.shard_size, m.total);
    m.z_master = torch::zeros({m.shard_size}, f32);
    m.z_avg = torch::zeros({m.shard_size}, f32);
    m.z_avg_sq = torch::zeros({m.shard_size}, f32);
    m.z_steps.assign(n, 0);
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < n; ++i) {
      if (!m.dense[i]) continue;
      const int64_t lo_i = std::max(m.slots[i].offset, m.shard_begin);
      const int64_t hi_i = std::min(m.slots[i].offset + m.slots[i].numel, m.shard_end);
      if (lo_i >= hi_i) continue;
      m.z_master.narrow(0, lo_i - m.shard_begin, hi_i - lo_i)
          .copy_(m.params[i].detach().reshape({-1}).narrow(0, lo_i - m.slots[i].offset, hi_i - lo_i));
    }
    // The shard holds the FP32 master weights and the moments of the dense parameters;
    // nothing else does. This rank's experts keep theirs (expert parallel).
    if (m.ep > 1 && !m.master.empty()) {
      for (size_t i = 0; i < n; ++i) {
        if (m.dense[i]) m.master[i] = torch::Tensor();
      }
    } else {
      m.master.clear();
    }
    m.optimizer.reset();
  }
  // The hooks launch each bucket's all-reduce from backward. Expert parallel leaves them
  // out: its backward runs the experts' all-to-alls, and a bucket launched between them
  // could start on one rank before an all-to-all that another rank has already started,
  // an order of collectives on two communicators that NCCL may never complete.
  if (m.ep == 1) {
    for (size_t i = 0; i < n; ++i) {
      torch::autograd::impl::set_post_acc_grad_hooks(m.params[i], std::make_unique<GradReadyHook>(&m, i));
    }
  }
  return absl::OkStatus();
}

}  // namespace

Learner::Learner(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Learner::~Learner() = default;
int64_t Learner::version() const { return impl_->version; }
int64_t Learner::optimizer_steps() const { return impl_->steps; }

absl::StatusOr<std::unique_ptr<Learner>> Learner::Create(PolicyModel* policy,
                                                         const LearnerOptions& options,
                                                         ProcessGroup* group) {
  RETURN_IF_ERROR(options.Validate());
  auto impl = std::make_unique<Impl>();
  impl->policy = policy;
  impl->options = options;
  auto& module = policy->module();
  impl->device = module->lm_head->weight.device();
  for (auto& p : module->parameters()) {
    impl->params.push_back(p);
    if (p.scalar_type() != torch::kFloat32) impl->master.push_back({});
  }
  impl->dense.assign(impl->params.size(), 1);
  impl->ep = options.data_parallel.expert_parallel;
  if (impl->ep > 1) {
    const int64_t world = group != nullptr ? group->world_size() : 1;
    const int64_t experts = policy->config().num_local_experts;
    if (world % impl->ep != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "data_parallel.expert_parallel = ", impl->ep, " must divide the learner's world size ", world));
    }
    if (experts % impl->ep != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "data_parallel.expert_parallel = ", impl->ep, " must divide the model's num_local_experts ",
          experts));
    }
  }
  if (!impl->master.empty()) {
    impl->master.clear();
    for (auto& p : impl->params) impl->master.push_back(p.detach().to(torch::kFloat32).clone());
  }
  impl->optimizer = std::make_unique<torch::optim::AdamW>(
      impl->master.empty() ? impl->params : impl->master, torch::optim::AdamWOptions(options.optimizer.lr)
                  .betas({options.optimizer.beta1, options.optimizer.beta2})
                  .eps(options.optimizer.eps)
                  .weight_decay(options.optimizer.weight_decay));
  if (group != nullptr && group->world_size() > 1) {
    try {
      RETURN_IF_ERROR(SetUpDataParallel(*impl, group));
    } catch (const std::exception& e) {
      return absl::InternalError(absl::StrCat("learner: data-parallel set-up failed: ", e.what()));
    }
  }
  return std::unique_ptr<Learner>(new Learner(std::move(impl)));
}

namespace {

// Checks, on a data-parallel learner, that every rank was handed the same batch.
absl::Status CheckSameBatch(ProcessGroup* group, const std::vector<TrainSample>& batch) {
  const uint64_t h = BatchHash(batch);
  const double hi = static_cast<double>(h >> 32), lo = static_cast<double>(h & 0xffffffffu);
  std::vector<double> v{hi, lo, -hi, -lo};
  RETURN_IF_ERROR(group->AllReduce(&v, ReduceOp::kMax));
  if (v[0] != hi || v[1] != lo || v[2] != -hi || v[3] != -lo) {
    return absl::InvalidArgumentError(absl::StrCat(
        "learner rank ", group->rank(), " of ", group->world_size(),
        ": the ranks were handed different batches; every rank must pass the same global batch"));
  }
  return absl::OkStatus();
}

}  // namespace

namespace {

// The engine's logprobs of a sample: none, or one finite log-probability per response
// token; a loss that reads them (truncated IS) needs them on every kept sample. A missing
// logprob is never read as 0 (probability 1).
absl::Status CheckRolloutLogprobs(const TrainSample& s, const PolicyLossOptions& loss) {
  const std::string name = s.id.empty() ? std::string("a train sample") : absl::StrCat("train sample ", s.id);
  if (s.rollout_logprobs.empty()) {
    if (loss.truncated_is_cap > 0 && s.keep && !s.response.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          name, " has no engine logprobs, but truncated importance sampling (truncated_is_cap ",
          loss.truncated_is_cap, ") weights every token by them"));
    }
    return absl::OkStatus();
  }
  if (s.rollout_logprobs.size() != s.response.size()) {
    return absl::InvalidArgumentError(absl::StrCat(name, " has ", s.rollout_logprobs.size(),
                                                   " engine logprobs for ", s.response.size(),
                                                   " response tokens"));
  }
  for (size_t j = 0; j < s.rollout_logprobs.size(); ++j) {
    const float lp = s.rollout_logprobs[j];
    // A sampled token has probability > 0; a little above 0 is FP32 rounding of log 1.
    if (!std::isfinite(lp) || lp > 1e-3f) {
      return absl::InvalidArgumentError(absl::StrCat(name, ": engine logprob of response token ", j,
                                                     " is ", lp, ", not a log-probability"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<LearnerStats> Learner::TrainRl(const std::vector<TrainSample>& batch) {
  Impl& m = *impl_;
  LearnerStats stats;
  std::vector<const TrainSample*> samples;
  for (const auto& s : batch) {
    if (s.prompt.empty()) return absl::InvalidArgumentError("train sample with an empty prompt");
    RETURN_IF_ERROR(CheckTokenIds(s.prompt, m.policy->config().vocab_size, "train sample prompt"));
    RETURN_IF_ERROR(CheckTokenIds(s.response, m.policy->config().vocab_size, "train sample response"));
    RETURN_IF_ERROR(CheckRolloutLogprobs(s, m.options.loss));
    if (!s.response.empty()) samples.push_back(&s);
  }
  if (m.dp()) RETURN_IF_ERROR(CheckSameBatch(m.group, batch));
  if (samples.empty()) return stats;
  try {
    m.policy->module()->train();
    const int64_t M = std::min<int64_t>(m.options.minibatches, static_cast<int64_t>(samples.size()));
    const int64_t max_tokens = m.options.max_tokens_per_forward;
    // Every rank's samples of each minibatch ([minibatch][rank]); all of them with one
    // process. This rank's are local[mb] and, over all minibatches, mine[rank].
    std::vector<std::vector<std::vector<const TrainSample*>>> by_rank(M);
    std::vector<std::vector<const TrainSample*>> local(M), mine(m.world);
    for (int64_t mb = 0; mb < M; ++mb) {
      const size_t begin = samples.size() * mb / M, end = samples.size() * (mb + 1) / M;
      by_rank[mb] = ShardAll({samples.begin() + begin, samples.begin() + end}, m.world);
      local[mb] = by_rank[mb][m.rank];
      for (int64_t r = 0; r < m.world; ++r) mine[r].insert(mine[r].end(), by_rank[mb][r].begin(), by_rank[mb][r].end());
    }
    // pi_old: the policy before this batch's updates, computed once.
    std::unordered_map<const TrainSample*, torch::Tensor> old;
    double entropy_sum = 0, mismatch_sum = 0, mismatch_max = 0, mismatch_kl_sum = 0, counted = 0,
           with_rollout = 0;
    {
      torch::NoGradGuard no_grad;
      auto micros = MicroBatches(mine[m.rank], max_tokens);
      if (m.ep > 1) {
        std::vector<std::vector<std::vector<const TrainSample*>>> all;
        for (const auto& r : mine) all.push_back(MicroBatches(r, max_tokens));
        micros.resize(PlanLockStep(all, 0, false).forwards);
      }
      // The pass's statistics stay on the device and are read back once, after it.
      torch::Tensor sums, max_abs_diff;
      for (const auto& micro : micros) {
        Packed p = Pack(micro, m.device);
        torch::Tensor entropy;
        auto lp = m.Logprobs(p, /*train=*/false, &entropy).first;
        // The train/inference mismatch over kept tokens the engine reported logprobs of;
        // k3 of KL(pi_rollout || pi_old) on samples of pi_rollout.
        const auto w = p.mask * p.has_rollout;
        const auto d = (lp - p.rollout) * w;
        auto micro_sums = torch::stack({(entropy * p.mask).sum(), p.mask.sum(), d.abs().sum(),
                                        ((d.exp() - 1 - d) * w).sum(), w.sum()})
                              .to(torch::kFloat64);
        auto micro_max = d.numel() > 0 ? d.abs().max() : torch::zeros({}, d.options());
        sums = sums.defined() ? sums + micro_sums : micro_sums;
        max_abs_diff = max_abs_diff.defined() ? torch::maximum(max_abs_diff, micro_max) : micro_max;
        for (size_t i = 0; i < micro.size(); ++i) {
          old[micro[i]] = lp.narrow(0, p.response_offsets[i], static_cast<int64_t>(micro[i]->response.size()));
        }
      }
      if (sums.defined()) {
        auto host = torch::cat({sums, max_abs_diff.to(torch::kFloat64).reshape({1})}).to(torch::kCPU);
        const double* v = host.data_ptr<double>();
        entropy_sum = v[0], counted = v[1], mismatch_sum = v[2], mismatch_kl_sum = v[3];
        with_rollout = v[4], mismatch_max = v[5];
      }
    }

    double weight_total = 0, clip_sum = 0, ratio_sum = 0, clipped_sum = 0, kl_sum = 0, tokens = 0;
    double tis_sum = 0;
    double ratio_min = std::numeric_limits<double>::infinity(), ratio_max = 0;
    for (int64_t mb = 0; mb < M; ++mb) {
      const size_t begin = samples.size() * mb / M, end = samples.size() * (mb + 1) / M;
      // The normaliser is the token count of the whole (global) minibatch.
      double n_tokens = 0;
      for (size_t j = begin; j < end; ++j) {
        n_tokens += samples[j]->keep ? static_cast<double>(samples[j]->response.size()) : 0;
      }
      if (n_tokens == 0) continue;
      double loss_sum = 0, policy_sum = 0, aux_sum = 0;
      auto micros = MicroBatches(local[mb], max_tokens);
      LockStep lock;
      if (m.ep > 1) {
        std::vector<std::vector<std::vector<const TrainSample*>>> all;
        for (const auto& r : by_rank[mb]) all.push_back(MicroBatches(r, max_tokens));
        lock = PlanLockStep(all, n_tokens, /*kept_only=*/true);
        micros.resize(lock.forwards);
      }
      if (m.dp()) m.BeginSync();
      for (size_t k = 0; k < micros.size(); ++k) {
        const auto& micro = micros[k];
        Packed p = Pack(micro, m.device);
        m.armed = m.dp() && k + 1 == micros.size();
        auto [lp, aux] = m.Logprobs(p, /*train=*/true, nullptr);
        if (micro.empty()) {
          // Expert parallel, a rank short of micro-batches: nothing to learn from, but its
          // backward must reach every MoE block's all-to-all.
          auto total = lp.sum() + m.options.optimizer.aux_loss_coef * lock.shares[k] * aux;
          total.backward();
          loss_sum += total.item<double>();
          aux_sum += lock.shares[k] * aux.item<double>();
          continue;
        }
        std::vector<torch::Tensor> olds;
        for (const TrainSample* s : micro) olds.push_back(old.at(s));
        PolicyLossInputs in;
        in.logprobs = lp;
        in.old_logprobs = torch::cat(olds);
        in.rollout_logprobs = p.rollout;
        in.advantages = p.advantages;
        in.mask = p.mask;
        in.num_tokens_global = n_tokens;
        PolicyLossOutput out = ComputePolicyLoss(in, m.options.loss);
        // The aux loss is per forward; weight it by this forward's share of the tokens
        // (expert parallel: the share of the k-th forwards of all ranks, whose aux loss
        // this rank's is a part of).
        const double share = m.ep > 1 ? lock.shares[k] : p.mask.sum().item<double>() / n_tokens;
        auto total = out.loss + m.options.optimizer.aux_loss_coef * share * aux;
        // Gradients are reduced once, from the hooks of the update's last backward.
        total.backward();
        loss_sum += total.item<double>();
        policy_sum += out.policy_loss;
        aux_sum += share * aux.item<double>();
        const double w = out.num_tokens;
        weight_total += w;
        clip_sum += w * out.clip_fraction;
        ratio_sum += w * out.ratio_mean;
        clipped_sum += w * out.clipped_weight_mean;
        kl_sum += w * out.approx_kl;
        tis_sum += w * out.truncated_is_weight_mean;
        if (w > 0) {
          ratio_min = std::min(ratio_min, out.ratio_min);
          ratio_max = std::max(ratio_max, out.ratio_max);
        }
        tokens += w;
      }
      if (m.dp()) m.FinishSync(stats);
      stats.loss += loss_sum / M;
      stats.policy_loss += policy_sum / M;
      stats.aux_loss += aux_sum / M;
      stats.grad_norm += m.Step(m.options.optimizer.LearningRate(m.rl_steps), stats) / M;
      ++m.rl_steps;
    }
    if (m.dp()) {
      // Every rank's sums, element by element; the names say which is which.
      double* const summed[] = {&entropy_sum, &mismatch_sum, &mismatch_kl_sum, &with_rollout,
                                &counted, &stats.loss, &stats.policy_loss, &stats.aux_loss,
                                &weight_total, &clip_sum, &ratio_sum, &clipped_sum, &kl_sum,
                                &tis_sum, &tokens};
      std::vector<double> sums;
      for (double* v : summed) sums.push_back(*v);
      RETURN_IF_ERROR(m.group->AllReduce(&sums, ReduceOp::kSum));
      for (size_t i = 0; i < sums.size(); ++i) *summed[i] = sums[i];
      std::vector<double> extremes{-ratio_min, ratio_max, mismatch_max};
      RETURN_IF_ERROR(m.group->AllReduce(&extremes, ReduceOp::kMax));
      ratio_min = -extremes[0], ratio_max = extremes[1], mismatch_max = extremes[2];
    }
    stats.entropy = counted > 0 ? entropy_sum / counted : 0;
    stats.rollout_logprob_abs_diff = with_rollout > 0 ? mismatch_sum / with_rollout : 0;
    stats.rollout_logprob_abs_diff_max = mismatch_max;
    stats.rollout_kl = with_rollout > 0 ? mismatch_kl_sum / with_rollout : 0;
    stats.tokens = static_cast<int64_t>(tokens);
    stats.ratio_min = std::isfinite(ratio_min) ? ratio_min : 0;
    stats.ratio_max = ratio_max;
    if (weight_total > 0) {
      stats.clip_fraction = clip_sum / weight_total;
      stats.ratio_mean = ratio_sum / weight_total;
      stats.clipped_weight_mean = clipped_sum / weight_total;
      stats.approx_kl = kl_sum / weight_total;
      stats.truncated_is_weight_mean = tis_sum / weight_total;
    }
    m.policy->module()->eval();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("learner step failed: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("learner step failed: ", e.what()));
  }
  return stats;
}

absl::StatusOr<LearnerStats> Learner::TrainSft(const std::vector<TrainSample>& batch, double lr) {
  Impl& m = *impl_;
  LearnerStats stats;
  std::vector<const TrainSample*> samples;
  double n_tokens = 0;
  for (const auto& s : batch) {
    RETURN_IF_ERROR(CheckTokenIds(s.prompt, m.policy->config().vocab_size, "sft sample prompt"));
    RETURN_IF_ERROR(CheckTokenIds(s.response, m.policy->config().vocab_size, "sft sample answer"));
    if (s.prompt.empty() || s.response.empty()) continue;
    samples.push_back(&s);
    n_tokens += static_cast<double>(s.response.size());
  }
  if (m.dp()) RETURN_IF_ERROR(CheckSameBatch(m.group, batch));
  if (samples.empty()) return stats;
  try {
    m.policy->module()->train();
    const int64_t max_tokens = m.options.max_tokens_per_forward;
    const auto by_rank = ShardAll(samples, m.world);
    auto micros = MicroBatches(by_rank[m.rank], max_tokens);
    LockStep lock;
    if (m.ep > 1) {
      // Empty forwards for a rank short of micro-batches; see TrainRl.
      std::vector<std::vector<std::vector<const TrainSample*>>> all;
      for (const auto& r : by_rank) all.push_back(MicroBatches(r, max_tokens));
      lock = PlanLockStep(all, n_tokens, /*kept_only=*/false);
      micros.resize(lock.forwards);
    }
    if (m.dp()) m.BeginSync();
    // The losses stay on the device until the update is queued: reading them here would
    // make the host wait for each backward before it can queue the reduction and the step.
    torch::Tensor loss_sum, aux_sum;
    for (size_t k = 0; k < micros.size(); ++k) {
      Packed p = Pack(micros[k], m.device);
      auto [lp, aux] = m.Logprobs(p, /*train=*/true, nullptr);
      const double share =
          m.ep > 1 ? lock.shares[k] : static_cast<double>(p.num_response_tokens) / n_tokens;
      auto loss = -lp.sum() / n_tokens + m.options.optimizer.aux_loss_coef * share * aux;
      m.armed = m.dp() && k + 1 == micros.size();
      loss.backward();
      auto l = loss.detach(), a = share * aux.detach();
      loss_sum = loss_sum.defined() ? loss_sum + l : l;
      aux_sum = aux_sum.defined() ? aux_sum + a : a;
    }
    if (m.dp()) m.FinishSync(stats);
    stats.tokens = static_cast<int64_t>(n_tokens);
    stats.grad_norm = m.Step(lr > 0 ? lr : m.options.optimizer.LearningRate(m.steps), stats);
    if (loss_sum.defined()) {
      stats.loss += loss_sum.item<double>();
      stats.aux_loss += aux_sum.item<double>();
    }
    if (m.dp()) {
      std::vector<double> sums{stats.loss, stats.aux_loss};
      RETURN_IF_ERROR(m.group->AllReduce(&sums, ReduceOp::kSum));
      stats.loss = sums[0], stats.aux_loss = sums[1];
    }
    m.policy->module()->eval();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("sft step failed: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("sft step failed: ", e.what()));
  }
  return stats;
}

namespace {

std::string ShardPath(const std::string& path, int64_t rank, int64_t world) {
  return absl::StrCat(path, ".rank", rank, "-of-", world);
}

std::string ExpertStatePath(const std::string& path, int64_t shard, int64_t ep) {
  return absl::StrCat(path, ".experts", shard, "-of-", ep);
}

absl::Status SaveArchive(torch::serialize::OutputArchive& archive, const std::string& path) {
  const std::string tmp = path + ".tmp";
  archive.save_to(tmp);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InternalError(absl::StrCat(path, ": cannot rename optimizer state into place"));
  }
  return absl::OkStatus();
}

// What a checkpoint directory holds, for an error that says how it was written.
std::string DescribeSavedState(const std::string& path) {
  if (FileExists(path)) return "one optimizer state file (written without ZeRO-1)";
  for (int64_t n = 2; n <= 4096; ++n) {
    if (FileExists(ShardPath(path, 0, n))) {
      return absl::StrCat("ZeRO-1 shards of world_size ", n, " (", ShardPath(path, 0, n), ", ...)");
    }
  }
  return "no optimizer state";
}

}  // namespace

absl::Status Learner::SaveState(const std::string& path) const {
  const Impl& m = *impl_;
  try {
    torch::serialize::OutputArchive archive;
    archive.write("lightrl.version", torch::tensor(m.version));
    archive.write("lightrl.steps", torch::tensor(m.steps));
    archive.write("lightrl.rl_steps", torch::tensor(m.rl_steps));
    archive.write("lightrl.expert_parallel", torch::tensor(m.ep));
    if (m.ep > 1 && m.rank < m.ep) {
      // The first EP group writes every shard of the experts' state once.
      torch::serialize::OutputArchive experts;
      experts.write("lightrl.expert_parallel", torch::tensor(m.ep));
      experts.write("lightrl.expert_shard", torch::tensor(m.ep_rank));
      m.expert_optimizer->save(experts);
      for (size_t i : m.local_experts()) {
        if (!m.master.empty()) experts.write("lightrl.master." + std::to_string(i), m.master[i]);
      }
      RETURN_IF_ERROR(SaveArchive(experts, ExpertStatePath(path, m.ep_rank, m.ep)));
    }
    if (m.zero1) {
      archive.write("lightrl.zero1.world_size", torch::tensor(m.world));
      archive.write("lightrl.zero1.rank", torch::tensor(m.rank));
      archive.write("lightrl.zero1.total", torch::tensor(m.total));
      archive.write("lightrl.zero1.master", m.z_master);
      archive.write("lightrl.zero1.exp_avg", m.z_avg);
      archive.write("lightrl.zero1.exp_avg_sq", m.z_avg_sq);
      archive.write("lightrl.zero1.steps", torch::tensor(m.z_steps));
      RETURN_IF_ERROR(SaveArchive(archive, ShardPath(path, m.rank, m.world)));
    } else if (m.rank == 0) {
      m.optimizer->save(archive);
      for (size_t i = 0; i < m.master.size(); ++i) {
        if (m.dense[i]) archive.write("lightrl.master." + std::to_string(i), m.master[i]);
      }
      RETURN_IF_ERROR(SaveArchive(archive, path));
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(path, ": saving optimizer state: ", e.what_without_backtrace()));
  }
  // Rank 0 moves the checkpoint into place next; every shard must be in it by then.
  if (m.dp()) RETURN_IF_ERROR(m.group->Barrier());
  return absl::OkStatus();
}

absl::Status Learner::LoadState(const std::string& path) {
  Impl& m = *impl_;
  const std::string file = m.zero1 ? ShardPath(path, m.rank, m.world) : path;
  if (!FileExists(file)) {
    return absl::FailedPreconditionError(absl::StrCat(
        file, " does not exist: this learner ",
        m.zero1 ? absl::StrCat("runs ZeRO-1 with world_size ", m.world) : std::string("runs without ZeRO-1"),
        " and the checkpoint holds ", DescribeSavedState(path),
        "; resume with the world size and ZeRO-1 setting it was written with"));
  }
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(file);
    torch::Tensor v, s, r, ep;
    archive.read("lightrl.version", v);
    archive.read("lightrl.steps", s);
    const int64_t saved_ep = archive.try_read("lightrl.expert_parallel", ep) ? ep.item<int64_t>() : 1;
    if (saved_ep != m.ep) {
      return absl::FailedPreconditionError(absl::StrCat(
          file, ": optimizer state written with expert_parallel ", saved_ep,
          ", but this learner runs expert_parallel ", m.ep,
          "; resume with the expert_parallel it was written with"));
    }
    if (m.ep > 1) {
      const std::string experts_file = ExpertStatePath(path, m.ep_rank, m.ep);
      if (!FileExists(experts_file)) {
        return absl::FailedPreconditionError(absl::StrCat(
            experts_file, " does not exist: this learner runs expert_parallel ", m.ep,
            " and needs the state of expert shard ", m.ep_rank));
      }
      torch::serialize::InputArchive experts;
      experts.load_from(experts_file);
      torch::Tensor shard;
      experts.read("lightrl.expert_shard", shard);
      if (shard.item<int64_t>() != m.ep_rank) {
        return absl::FailedPreconditionError(absl::StrCat(
            experts_file, ": holds expert shard ", shard.item<int64_t>(), ", expected ", m.ep_rank));
      }
      m.expert_optimizer->load(experts);
      for (size_t i : m.local_experts()) {
        if (m.master.empty()) continue;
        torch::Tensor t;
        experts.read("lightrl.master." + std::to_string(i), t);
        m.master[i].copy_(t);
      }
    }
    if (m.zero1) {
      torch::Tensor world, rank, total, steps;
      archive.read("lightrl.zero1.world_size", world);
      archive.read("lightrl.zero1.rank", rank);
      archive.read("lightrl.zero1.total", total);
      if (world.item<int64_t>() != m.world || rank.item<int64_t>() != m.rank ||
          total.item<int64_t>() != m.total) {
        return absl::FailedPreconditionError(absl::StrCat(
            file, ": a shard of rank ", rank.item<int64_t>(), " of ", world.item<int64_t>(), " over ",
            total.item<int64_t>(), " parameters, but this is rank ", m.rank, " of ", m.world, " over ",
            m.total));
      }
      torch::Tensor master, avg, avg_sq;
      archive.read("lightrl.zero1.master", master);
      archive.read("lightrl.zero1.exp_avg", avg);
      archive.read("lightrl.zero1.exp_avg_sq", avg_sq);
      archive.read("lightrl.zero1.steps", steps);
      torch::NoGradGuard no_grad;
      m.z_master.copy_(master);
      m.z_avg.copy_(avg);
      m.z_avg_sq.copy_(avg_sq);
      auto st = steps.to(torch::kInt64).contiguous();
      m.z_steps.assign(st.data_ptr<int64_t>(), st.data_ptr<int64_t>() + st.numel());
    } else {
      m.optimizer->load(archive);
      for (size_t i = 0; i < m.master.size(); ++i) {
        if (!m.dense[i]) continue;
        torch::Tensor t;
        archive.read("lightrl.master." + std::to_string(i), t);
        m.master[i].copy_(t);
      }
    }
    m.version = v.item<int64_t>();
    m.steps = s.item<int64_t>();
    // Checkpoints from before the RL-only schedule clock counted every update.
    m.rl_steps = archive.try_read("lightrl.rl_steps", r) ? r.item<int64_t>() : m.steps;
  } catch (const c10::Error& e) {
    return absl::DataLossError(absl::StrCat(file, ": loading optimizer state: ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

}  // namespace lightrl
