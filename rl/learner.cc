#include "rl/learner.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status.h"
#include "policy/invariant_model.h"
#include "policy/invariant_ops.h"
#include "policy/minimax_model.h"
#include "policy/shard_spec.h"
#include "policy/tensor_parallel.h"
#include "policy/train_ops_cuda.h"
#include "rl/adamw.h"
#include "rl/distributed_internal.h"
#include "rl/expert_shards.h"
#include "rl/gradient_reducer.h"
#include "rl/learner_stats.h"
#include "rl/losses.h"
#include "rl/optimizer_state_io.h"
#include "rl/parallel_layout.h"
#include "rl/tp_comm.h"
#include "rl/zero_optimizer.h"

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

// The training steps, over the parts that own the state: the weights and the replicated
// parameters' AdamW (adamw.h), and with several ranks the gradient reduction
// (gradient_reducer.h), ZeRO-1 (zero_optimizer.h) and the expert shards (expert_shards.h).
struct Learner::Impl {
  PolicyModel* policy = nullptr;
  LearnerOptions options;
  torch::Device device = torch::kCPU;
  std::unique_ptr<MasterWeights> weights;
  // By parameter: replicated on every rank (all but the experts under expert parallelism).
  std::vector<char> replicated;
  std::unique_ptr<AdamW> adamw;  // the replicated parameters' update; null under ZeRO-1
  UpdateClock clock;

  // --- data parallel (world > 1), unused by a single process ---
  ProcessGroup* group = nullptr;
  // This rank's place among the data-parallel copies: the whole group, or under tensor
  // parallelism its DP group (the ranks of one TP group train on the same samples).
  int64_t rank = 0, world = 1;
  std::unique_ptr<ExpertShards> experts;  // expert_parallel > 1
  std::unique_ptr<GradientReducer> reducer;
  std::unique_ptr<ZeroOptimizer> zero;

  // --- tensor parallel (the group's layout has tp > 1) ---
  std::unique_ptr<ProcessGroupTpComm> tp_comm;
  // By parameter: split over the TP group (its gradient's norm sums over the group).
  std::vector<char> tp_sharded;

  bool dp() const { return world > 1; }
  // Whether the call's statistics and batch checks span other ranks.
  bool distributed() const { return group != nullptr; }
  // A collective over the ranks that train on different samples: the whole group, or the
  // DP group under tensor parallelism.
  absl::Status ReduceStats(LearnerStatsAccumulator& acc) {
    if (group == nullptr) return absl::OkStatus();
    return tp_comm ? acc.AllReduce(group, LayoutGroup::kDp) : acc.AllReduce(group);
  }

  // Whether the dense update runs on the CUDA AdamW kernel (policy/train_ops_cuda.h): it
  // reads bf16 gradients as they are, applies the clip factor, and writes the bf16 weights
  // from the updated FP32 masters, so the update needs no FP32 gradient copies, no clip
  // pass and no copy-back pass.
  bool KernelAdamW() const { return !experts && MasterAdamWSupported(device); }

  // The gradient the update of parameter i reads, undefined when it has none: its master's
  // (reduced or converted) or, with the kernel, the parameter's own.
  torch::Tensor UpdateGrad(size_t i) {
    auto& t = weights->Updated(i);
    if (t.grad().defined() || !weights->has_master(i)) return t.grad();
    return KernelAdamW() ? weights->param(i).grad() : torch::Tensor();
  }

  // Logprobs of the packed response tokens (and their entropy when asked).
  std::pair<torch::Tensor, torch::Tensor> Logprobs(const Packed& p, bool train, torch::Tensor* entropy) {
    auto& module = policy->module();
    ForwardOptions fopts;
    fopts.train_lightning = train;
    fopts.moe_capacity_factor = train ? options.optimizer.moe_capacity_factor : 0;
    fopts.expert_parallel = experts ? experts->comm() : nullptr;
    fopts.tensor_parallel = tp_comm.get();
    fopts.sequence_parallel = tp_comm != nullptr && options.sequence_parallel;
    fopts.checkpoint_layers = train && options.optimizer.activation_checkpointing;
    fopts.batch_invariant = options.batch_invariant;
    auto out = module->Forward(p.tokens, p.layout, fopts);
    auto hidden = out.hidden.index_select(0, p.predict_rows);
    if (options.batch_invariant) return InvariantLogprobs(hidden, p.targets, out.aux_loss, entropy);
    if (entropy != nullptr && tp_comm) {
      // The vocabulary is split over the TP group: both figures across its ranks.
      std::vector<torch::Tensor> ents;
      if (hidden.size(0) > 0) {
        for (const auto& rows : hidden.split(module->LogitChunkRows())) {
          ents.push_back(VocabParallelEntropy(rows, module->lm_head->weight, options.temperature, *tp_comm));
        }
      }
      *entropy = ents.empty() ? torch::zeros({0}, hidden.options().dtype(torch::kFloat32))
                              : torch::cat(ents);
      return {module->TokenLogprobs(hidden, p.targets, 0, options.temperature, tp_comm.get()),
              out.aux_loss};
    }
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
    return {module->TokenLogprobs(hidden, p.targets, 0, options.temperature, tp_comm.get()),
            out.aux_loss};
  }

  // The batch-invariant mode's logprobs (the engine's, bit for bit) and entropy.
  std::pair<torch::Tensor, torch::Tensor> InvariantLogprobs(const torch::Tensor& hidden,
                                                            const torch::Tensor& targets,
                                                            const torch::Tensor& aux,
                                                            torch::Tensor* entropy) {
    auto& module = policy->module();
    auto logits = InvariantLogits(*module, hidden, tp_comm.get());
    if (entropy != nullptr) {
      auto logp = torch::log_softmax(logits / options.temperature, -1);
      *entropy = -(logp.exp() * logp).sum(-1);
    }
    return {InvariantTokenLogprobs(logits, targets, {options.temperature}), aux};
  }

  // Before an update's first backward.
  void BeginBackward() {
    if (reducer) reducer->Begin();
  }
  // Before each backward: whether it is the update's last.
  void ArmBackward(bool last) {
    if (reducer) reducer->Arm(last);
  }

  // Sequence parallel: each TP rank's replicated parameters (norms, router, experts) saw
  // only its block of the tokens; their gradients, summed over the TP group in FP32 (one
  // all-reduce), become the whole batch's, alike on its ranks. A parameter without a
  // gradient on every rank keeps none.
  void SumReplicatedOverTp() {
    torch::NoGradGuard no_grad;
    std::vector<size_t> ids;
    for (size_t i = 0; i < weights->size(); ++i) {
      // Expert shards are not replicated over TP: expert parallelism reduces theirs.
      if (!tp_sharded[i] && replicated[i]) ids.push_back(i);
    }
    auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(device);
    std::vector<float> defined;
    for (size_t i : ids) defined.push_back(weights->param(i).grad().defined() ? 1.f : 0.f);
    auto has = torch::tensor(defined, torch::kFloat32).to(device);
    tp_comm->AllReduce(has, TensorParallelComm::Op::kMax);
    has = has.cpu();
    std::vector<torch::Tensor> flat;
    std::vector<size_t> summed;
    for (size_t k = 0; k < ids.size(); ++k) {
      if (has[k].item<float>() == 0) continue;
      const auto& p = weights->param(ids[k]);
      flat.push_back(p.grad().defined() ? p.grad().to(torch::kFloat32).reshape(-1)
                                        : torch::zeros({p.numel()}, f32));
      summed.push_back(ids[k]);
    }
    if (flat.empty()) return;
    auto all = torch::cat(flat);
    tp_comm->AllReduce(all, TensorParallelComm::Op::kSum);
    int64_t at = 0;
    for (size_t i : summed) {
      auto& p = weights->param(i);
      p.mutable_grad() = all.narrow(0, at, p.numel()).view(p.sizes()).to(p.scalar_type()).clone();
      at += p.numel();
    }
  }

  // After an update's last backward (or none, for a rank without samples): the global
  // gradients in place of each used parameter's (ZeRO-1 reads the reducer's buffer).
  void ReduceGradients(LearnerStats& stats) {
    if (tp_comm && options.sequence_parallel) SumReplicatedOverTp();
    if (!reducer && !experts) return;
    torch::NoGradGuard no_grad;
    if (experts) experts->LaunchGradReduce(*weights);
    if (reducer) {
      const GradientReducer::Counts counts = reducer->Finish();
      stats.grad_buckets += counts.buckets;
      stats.grad_buckets_in_backward += counts.in_backward;
    }
    if (experts) experts->WaitGradReduce();
    for (size_t i = 0; i < weights->size(); ++i) {
      // Without a reducer (tensor parallel, one DP rank) the replicated gradients stay.
      if (!reducer) {
        if (!replicated[i]) weights->param(i).mutable_grad() = torch::Tensor();
        continue;
      }
      weights->param(i).mutable_grad() = torch::Tensor();
      if (!replicated[i] || zero || !reducer->used(i)) continue;
      auto& t = weights->Updated(i);
      // bf16-reduced gradients: the AdamW kernel reads them as they are; torch's AdamW
      // wants its parameter's dtype.
      const auto& g = reducer->grad(i);
      const bool widen = t.scalar_type() != g.scalar_type() && !KernelAdamW();
      t.mutable_grad() = widen ? g.to(t.scalar_type()) : g;
    }
    if (experts) experts->AttachGrads(*weights);
  }

  // One optimizer update at `lr` from the gradients in place; returns the global gradient
  // norm before clipping. A non-finite norm skips the update (but counts it).
  double Step(double lr, LearnerStats& stats) {
    const double norm = zero ? ZeroStep(lr) : PlainStep(lr);
    if (experts) experts->ReleaseGrads(*weights);
    clock.Advance();
    ++stats.updates;
    stats.lr = lr;
    return norm;
  }

  void WarnSkipped() const {
    LogWarning("learner: non-finite gradient norm at update %lld, update skipped",
               static_cast<long long>(clock.steps));
  }

  // Under expert parallelism the replicated gradients are the same on every rank and the
  // experts' are spread: the global norm in float64 from both parts' reduced buffers, so
  // that plain data parallelism and ZeRO-1 clip by the same factor to the bit.
  double ExpertParallelNorm() {
    torch::NoGradGuard no_grad;
    if (tp_comm) return TensorParallelNorm();
    return std::sqrt(reducer->SquaredNorm() + experts->SquaredNorm());
  }

  // Tensor parallel: the norm of the whole model's gradient, the TP-split parameters'
  // squares summed over the TP group and the replicated ones' (alike on its ranks) once.
  // Under ZeRO-1 the gradients are the reducer's (no parameter holds one).
  double TensorParallelNorm() {
    torch::NoGradGuard no_grad;
    auto f64 = torch::TensorOptions().dtype(torch::kFloat64).device(device);
    auto sums = torch::zeros({2}, f64);  // [split, replicated]
    for (size_t i = 0; i < weights->size(); ++i) {
      if (!replicated[i]) continue;  // expert shards: their own norm below
      auto g = zero ? reducer->grad(i) : UpdateGrad(i);
      if (!g.defined()) continue;
      sums[tp_sharded[i] ? 0 : 1] += g.to(torch::kFloat64).pow(2).sum();
    }
    auto split = sums.narrow(0, 0, 1).clone();
    tp_comm->AllReduce(split, TensorParallelComm::Op::kSum);
    const double expert_sq = experts ? experts->SquaredNorm() : 0.0;
    return std::sqrt(split.item<double>() + sums[1].item<double>() + expert_sq);
  }

  // Without the kernel, bf16 gradients become FP32 gradients of the masters.
  void GradsToMasters() {
    if (!weights->has_masters() || KernelAdamW()) return;
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < weights->size(); ++i) {
      auto& p = weights->param(i);
      if (p.grad().defined() && weights->has_master(i)) {
        weights->master(i).mutable_grad() = p.grad().to(torch::kFloat32);
      }
      p.mutable_grad() = torch::Tensor();
    }
  }

  // The global norm of the gradients the plain update reads; with a clip, their scale:
  // applied in place (expert parallel) or returned in `scale` for AdamW to apply.
  double ClipPlain(torch::Tensor* scale) {
    torch::NoGradGuard no_grad;
    const double clip = options.optimizer.grad_clip;
    if (experts) {
      const double norm = ExpertParallelNorm();
      if (clip > 0 && std::isfinite(norm)) {
        const double factor = ClipFactor(norm, clip);
        if (factor < 1) {
          for (size_t i = 0; i < weights->size(); ++i) {
            auto& t = weights->Updated(i);
            if (replicated[i] && t.grad().defined()) t.mutable_grad().mul_(factor);
          }
        }
        experts->ScaleGrads(factor);
      }
      return norm;
    }
    if (tp_comm) {
      const double norm = TensorParallelNorm();
      if (clip > 0 && std::isfinite(norm)) {
        *scale = ClipFactor(torch::full({}, norm, torch::TensorOptions().device(device)), clip);
      }
      return norm;
    }
    // The global norm and clip factor stay on the device; one read-back for the norm.
    std::vector<torch::Tensor> grads;
    for (size_t i = 0; i < weights->size(); ++i) {
      auto g = UpdateGrad(i);
      if (g.defined()) grads.push_back(g);
    }
    if (grads.empty()) return 0;
    auto total = reducer ? reducer->Norm() : GlobalNorm(grads);
    if (clip > 0) *scale = ClipFactor(total, clip);
    return total.item<double>();
  }

  // After the plain update: no gradient is left for the next one.
  void DropGrads(bool kernel) {
    if (reducer) {
      // Views of the reduction buffer, which zero_grad() cannot detach in place.
      for (size_t i = 0; i < weights->size(); ++i) {
        auto& t = weights->has_masters() ? weights->master(i) : weights->param(i);
        if (t.defined()) t.mutable_grad().reset();
      }
    }
    adamw->state().zero_grad();
    if (kernel) {
      for (size_t i = 0; i < weights->size(); ++i) weights->param(i).mutable_grad().reset();
    }
  }

  // Clip and AdamW with the whole optimizer state on this rank.
  double PlainStep(double lr) {
    const bool kernel = KernelAdamW();
    GradsToMasters();
    torch::Tensor scale;  // the clip factor, applied inside AdamW
    const double norm = ClipPlain(&scale);
    SetLr(adamw->state(), lr);
    if (std::isfinite(norm)) {
      std::vector<AdamW::Entry> entries;
      for (size_t i = 0; i < weights->size(); ++i) {
        if (!replicated[i]) continue;
        // A master's weights follow it.
        entries.push_back({weights->Updated(i), UpdateGrad(i),
                           weights->has_master(i) ? weights->param(i) : torch::Tensor()});
      }
      adamw->Step(entries, lr, scale);
      if (experts) experts->Step(lr, *weights);
    } else {
      WarnSkipped();
    }
    DropGrads(kernel);
    return norm;
  }

  // ZeRO-1: the global norm and clip from the (all-reduced, full) gradients, AdamW on this
  // rank's shard (as the plain update runs it), then the all-gather of the parameters.
  double ZeroStep(double lr) {
    torch::NoGradGuard no_grad;
    const double clip = options.optimizer.grad_clip;
    double norm = 0;
    torch::Tensor scale;  // the clip factor, applied inside AdamW
    if (experts) {
      norm = ExpertParallelNorm();
      if (clip > 0 && std::isfinite(norm)) {
        const double factor = ClipFactor(norm, clip);
        if (factor < 1) {
          // bf16-reduced gradients are scaled inside AdamW, in FP32, as the plain path
          // scales its widened copies (scaling the bf16 buffer would round once more).
          torch::Tensor shard_grad = zero->ShardGrad();
          if (shard_grad.scalar_type() == torch::kFloat32) {
            shard_grad.mul_(factor);
          } else {
            scale = torch::full({}, factor, shard_grad.options().dtype(torch::kFloat32));
          }
        }
        experts->ScaleGrads(factor);
      }
    } else if (tp_comm) {
      norm = TensorParallelNorm();
      if (clip > 0 && std::isfinite(norm)) {
        scale = ClipFactor(torch::full({}, norm, torch::TensorOptions().device(device)), clip);
      }
    } else if (zero->any_used()) {
      // The same norm and factor as PlainStep, so ZeRO-1 and plain data parallelism update
      // bit for bit alike.
      auto total = reducer->Norm();
      if (clip > 0) scale = ClipFactor(total, clip);
      norm = total.item<double>();
    }
    if (std::isfinite(norm)) {
      zero->Step(lr, scale);
      if (experts) experts->Step(lr, *weights);
    } else {
      WarnSkipped();
    }
    return norm;
  }

  // Every rank's share of each of the M minibatches of `samples`.
  struct Split {
    std::vector<std::vector<std::vector<const TrainSample*>>> by_rank;  // [minibatch][rank]
    std::vector<std::vector<const TrainSample*>> mine;  // [rank]: over all minibatches
  };
  Split SplitMinibatches(const std::vector<const TrainSample*>& samples, int64_t M) const {
    Split s;
    s.by_rank.resize(M);
    s.mine.resize(world);
    for (int64_t mb = 0; mb < M; ++mb) {
      const size_t begin = samples.size() * mb / M, end = samples.size() * (mb + 1) / M;
      s.by_rank[mb] = ShardAll({samples.begin() + begin, samples.begin() + end}, world);
      for (int64_t r = 0; r < world; ++r) {
        s.mine[r].insert(s.mine[r].end(), s.by_rank[mb][r].begin(), s.by_rank[mb][r].end());
      }
    }
    return s;
  }

  // This rank's micro-batches of `by_rank[rank]`; under expert parallelism padded with
  // empty ones to the lock-step plan over every rank's (whose shares it returns).
  std::vector<std::vector<const TrainSample*>> MicroBatchesOf(
      const std::vector<std::vector<const TrainSample*>>& by_rank, double total, bool kept_only,
      LockStep* lock) const {
    const int64_t max_tokens = options.max_tokens_per_forward;
    auto micros = MicroBatches(by_rank[rank], max_tokens);
    if (experts) {
      std::vector<std::vector<std::vector<const TrainSample*>>> all;
      for (const auto& r : by_rank) all.push_back(MicroBatches(r, max_tokens));
      *lock = PlanLockStep(all, total, kept_only);
      micros.resize(lock->forwards);
    }
    return micros;
  }

  // pi_old of this rank's samples: the policy before this batch's updates, computed once,
  // with the entropy and the train/inference mismatch into `acc`.
  std::unordered_map<const TrainSample*, torch::Tensor> OldLogprobs(const Split& split,
                                                                    LearnerStatsAccumulator& acc) {
    torch::NoGradGuard no_grad;
    std::unordered_map<const TrainSample*, torch::Tensor> old;
    LockStep lock;
    const auto micros = MicroBatchesOf(split.mine, 0, false, &lock);
    // The pass's statistics stay on the device and are read back once, after it.
    torch::Tensor sums, max_abs_diff;
    for (const auto& micro : micros) {
      Packed p = Pack(micro, device);
      torch::Tensor entropy;
      auto lp = Logprobs(p, /*train=*/false, &entropy).first;
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
      acc.entropy_sum = v[0], acc.entropy_tokens = v[1], acc.rollout_abs_diff_sum = v[2];
      acc.rollout_kl_sum = v[3], acc.rollout_tokens = v[4], acc.rollout_abs_diff_max = v[5];
    }
    return old;
  }

  // One RL update on a minibatch (`global`: all of it, `by_rank`: every rank's share) of a
  // batch of M: forward and backward over this rank's micro-batches, the reduction, the
  // optimizer step.
  void RlUpdate(const std::vector<const TrainSample*>& global,
                const std::vector<std::vector<const TrainSample*>>& by_rank,
                const std::unordered_map<const TrainSample*, torch::Tensor>& old, int64_t M,
                LearnerStatsAccumulator& acc, LearnerStats& stats) {
    // The normaliser is the token count of the whole (global) minibatch.
    const double n_tokens = ResponseTokens(global, /*kept_only=*/true);
    if (n_tokens == 0) return;
    double loss_sum = 0, policy_sum = 0, aux_sum = 0;
    LockStep lock;
    const auto micros = MicroBatchesOf(by_rank, n_tokens, /*kept_only=*/true, &lock);
    BeginBackward();
    for (size_t k = 0; k < micros.size(); ++k) {
      const auto& micro = micros[k];
      Packed p = Pack(micro, device);
      ArmBackward(k + 1 == micros.size());
      auto [lp, aux] = Logprobs(p, /*train=*/true, nullptr);
      if (micro.empty()) {
        // Expert parallel, a rank short of micro-batches: nothing to learn from, but its
        // backward must reach every MoE block's all-to-all.
        auto total = lp.sum() + options.optimizer.aux_loss_coef * lock.shares[k] * aux;
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
      PolicyLossOutput out = ComputePolicyLoss(in, options.loss);
      // The aux loss is per forward; weight it by this forward's share of the tokens
      // (expert parallel: the share of the k-th forwards of all ranks, whose aux loss
      // this rank's is a part of).
      const double share = experts ? lock.shares[k] : p.mask.sum().item<double>() / n_tokens;
      auto total = out.loss + options.optimizer.aux_loss_coef * share * aux;
      // Gradients are reduced once, from the hooks of the update's last backward.
      total.backward();
      loss_sum += total.item<double>();
      policy_sum += out.policy_loss;
      aux_sum += share * aux.item<double>();
      acc.AddLossTokens({out.num_tokens, out.clip_fraction, out.ratio_mean, out.ratio_min,
                         out.ratio_max, out.clipped_weight_mean, out.approx_kl,
                         out.truncated_is_weight_mean});
    }
    ReduceGradients(stats);
    acc.loss += loss_sum / M;
    acc.policy_loss += policy_sum / M;
    acc.aux_loss += aux_sum / M;
    stats.grad_norm += Step(options.optimizer.LearningRate(clock.rl_steps), stats) / M;
    ++clock.rl_steps;
  }
};

namespace {

// The starting weights of every rank must be identical: a per-parameter fingerprint,
// reduced MIN and MAX.
// `over` null: over the whole group; else over this rank's layout group `*over`, and only
// the parameters `include` marks (all when empty).
absl::Status CheckSameWeights(ProcessGroup* group, const std::vector<torch::Tensor>& params,
                              const std::vector<std::string>& names,
                              const LayoutGroup* over = nullptr,
                              const std::vector<char>& include = {}) {
  std::vector<double> lo, hi;
  {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < params.size(); ++i) {
      if (!include.empty() && !include[i]) {
        lo.push_back(0);
        continue;
      }
      auto p = params[i].detach().to(torch::kFloat64).flatten();
      const double v = (p * torch::arange(1, p.numel() + 1, p.options()).remainder(7).add(1)).sum().item<double>();
      lo.push_back(v);
    }
  }
  hi = lo;
  if (over != nullptr) {
    RETURN_IF_ERROR(group->AllReduce(*over, &lo, ReduceOp::kMin));
    RETURN_IF_ERROR(group->AllReduce(*over, &hi, ReduceOp::kMax));
  } else {
    RETURN_IF_ERROR(group->AllReduce(&lo, ReduceOp::kMin));
    RETURN_IF_ERROR(group->AllReduce(&hi, ReduceOp::kMax));
  }
  for (size_t i = 0; i < params.size(); ++i) {
    if (lo[i] != hi[i]) {
      return absl::FailedPreconditionError(absl::StrCat(
          "learner rank ", group->rank(), " of ", group->world_size(),
          ": the ranks start from different weights (", i < names.size() ? names[i] : std::to_string(i),
          " differs); every rank must load the same checkpoint or init seed"));
    }
  }
  return absl::OkStatus();
}

// A model that holds only its experts (PolicyModel::CreateShard) fixes the expert layout:
// its ep must be the learner's expert_parallel, its expert_tp the layout's, and its place
// this rank's in GroupsOf (EP rank, expert-TP rank). Other model sharding (tp) is not the
// experts' business.
absl::Status CheckExpertShard(const ShardCoords& shard, int64_t ep, ProcessGroup* group) {
  if (shard.ep == 1 && shard.expert_tp == 1) return absl::OkStatus();
  if (shard.ep != ep) {
    return absl::InvalidArgumentError(absl::StrCat(
        "data_parallel.expert_parallel = ", ep, " but the model holds the experts of ",
        shard.ToString(), ": the model must be sharded for the learner's ep"));
  }
  const int64_t world = group != nullptr ? group->world_size() : 1;
  const int64_t rank = group != nullptr ? group->rank() : 0;
  ParallelLayout layout;
  layout.ep = shard.ep;
  layout.expert_tp = shard.expert_tp;
  absl::StatusOr<LayoutGroups> groups = GroupsOf(layout, world, rank);
  if (!groups.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("the model's experts are sharded as ",
                                                   shard.ToString(), ": ", groups.status().message()));
  }
  if (groups->ep_rank != shard.ep_rank || groups->expert_tp_rank != shard.expert_tp_rank) {
    return absl::InvalidArgumentError(absl::StrCat(
        "learner rank ", rank, " is EP rank ", groups->ep_rank, ", expert-TP rank ",
        groups->expert_tp_rank, " of its layout, but its model holds the experts of ",
        shard.ToString()));
  }
  return absl::OkStatus();
}

// The parts of a data-parallel rank: the expert shards, the gradient reduction over the
// replicated parameters and (ZeRO-1) their optimizer-state shard; checks that every rank
// starts from the same weights.
absl::Status SetUpDataParallel(Learner::Impl& m, ProcessGroup* group) {
  m.group = group;
  m.rank = group->rank();
  m.world = group->world_size();
  const auto names = m.policy->module()->named_parameters().keys();
  const int64_t ep = m.options.data_parallel.expert_parallel;
  const ShardCoords& shard = m.policy->shard();
  // Experts held by their ranks alone (tensor parallelism of the rest is not theirs).
  const bool sharded = shard.ep > 1 || shard.expert_tp > 1;
  if (ep > 1 || sharded) {
    ASSIGN_OR_RETURN(m.experts, ExpertShards::Create(group, ep, shard.expert_tp, sharded,
                                                     m.policy->config().num_local_experts, names,
                                                     m.weights.get(), m.options.optimizer, m.device));
    m.replicated = m.experts->replicated();
  }
  ASSIGN_OR_RETURN(m.reducer, GradientReducer::Create(group->impl().backend, m.world, m.weights->params(),
                                                      m.replicated, names, m.options.data_parallel, m.device));
  // Sharded experts differ by rank; the rest must not.
  std::vector<torch::Tensor> same;
  std::vector<std::string> same_names;
  for (size_t i = 0; i < names.size(); ++i) {
    if (!m.replicated[i]) continue;
    same.push_back(m.weights->param(i));
    same_names.push_back(names[i]);
  }
  RETURN_IF_ERROR(CheckSameWeights(group, sharded ? same : m.weights->params(), sharded ? same_names : names));
  if (m.options.data_parallel.zero1) {
    m.zero = std::make_unique<ZeroOptimizer>(m.reducer.get(), m.weights->params(), group->impl().backend,
                                             m.rank, m.world, m.options.optimizer, m.device);
    // The shard holds the FP32 master weights and the moments of the replicated
    // parameters; nothing else does. This rank's experts keep theirs.
    if (m.experts) {
      for (size_t i = 0; i < m.weights->size(); ++i) {
        if (m.replicated[i]) m.weights->Drop(i);
      }
    } else {
      m.weights->DropAll();
    }
  }
  // The hooks launch each bucket's all-reduce from backward. Expert parallel leaves them
  // out: its backward runs the experts' all-to-alls, and a bucket launched between them
  // could start on one rank before an all-to-all that another rank has already started,
  // an order of collectives on two communicators that NCCL may never complete.
  if (!m.experts) m.reducer->InstallHooks();
  return absl::OkStatus();
}

// Tensor parallel x data parallel, from the layout `group` joined: the model is this
// rank's TP shard and trains the samples of its DP group's share; the dense gradients are
// summed over the DP group (the parameters the TP group replicates come out alike on its
// ranks, as their inputs and gradients are). ZeRO-1 shards the optimizer state over the
// DP group (a DP group of one has nothing to shard, as in a single process). No expert
// parallelism yet.
absl::Status SetUpTensorParallel(Learner::Impl& m, ProcessGroup* group) {
  const LayoutGroups& g = *group->layout_groups();
  const int64_t tp = static_cast<int64_t>(g.tp.size());
  const ShardCoords& shard = m.policy->shard();
  if (shard.tp != tp || shard.tp_rank != g.tp_rank) {
    return absl::FailedPreconditionError(absl::StrCat(
        "learner rank ", group->rank(), ": the process group's layout puts this rank at tp ",
        g.tp_rank, " of ", tp, ", but the policy holds ", shard.ToString(),
        "; create the PolicyModel with ShardCoordsOf(layout, groups)"));
  }
  const int64_t ep = m.options.data_parallel.expert_parallel;
  const bool sharded_experts = shard.ep > 1 || shard.expert_tp > 1;
  if ((ep > 1 || sharded_experts) && !m.options.sequence_parallel) {
    return absl::InvalidArgumentError(absl::StrCat(
        "expert parallelism (ep ", ep, ", expert_tp ", shard.expert_tp, ") with tensor "
        "parallelism (tp ", tp, ") needs sequence_parallel: without it every TP rank holds "
        "the same tokens and would dispatch each of them to the experts tp times"));
  }
  if (ep > 1 && !sharded_experts) {
    return absl::InvalidArgumentError(absl::StrCat(
        "expert parallelism (ep ", ep, ") with tensor parallelism needs a model that holds "
        "only its experts (ShardCoordsOf a layout with ep ", ep, ")"));
  }
  m.group = group;
  m.rank = g.dp_rank;
  m.world = static_cast<int64_t>(g.dp.size());
  m.tp_comm = std::make_unique<ProcessGroupTpComm>(group);
  const auto names = m.policy->module()->named_parameters().keys();
  if (sharded_experts) {
    // Each rank holds, trains and updates only its experts (the EP and expert-DP groups
    // of the layout; rl/expert_shards.h), as without TP.
    ASSIGN_OR_RETURN(m.experts, ExpertShards::Create(group, shard.ep, shard.expert_tp, /*sharded=*/true,
                                                     m.policy->config().num_local_experts, names,
                                                     m.weights.get(), m.options.optimizer, m.device));
    m.replicated = m.experts->replicated();
  }
  m.tp_sharded.assign(names.size(), 0);
  for (size_t i = 0; i < names.size(); ++i) {
    ASSIGN_OR_RETURN(const TensorShard part, ShardOf(names[i], m.policy->config(), shard));
    m.tp_sharded[i] = part.whole() ? 0 : 1;
  }
  // DP copies hold the same dense shards; the TP group's ranks the same replicated
  // parameters (expert shards follow their own groups).
  const LayoutGroup dp = LayoutGroup::kDp, tpg = LayoutGroup::kTp;
  std::vector<char> dense(names.size()), replicated_in_tp(names.size());
  for (size_t i = 0; i < names.size(); ++i) {
    dense[i] = m.replicated[i];
    replicated_in_tp[i] = m.replicated[i] && !m.tp_sharded[i] ? 1 : 0;
  }
  RETURN_IF_ERROR(CheckSameWeights(group, m.weights->params(), names, &dp, dense));
  RETURN_IF_ERROR(CheckSameWeights(group, m.weights->params(), names, &tpg, replicated_in_tp));
  if (m.world > 1) {
    ASSIGN_OR_RETURN(m.reducer, GradientReducer::Create(group->impl().LayoutBackend(LayoutGroup::kDp),
                                                        m.world, m.weights->params(), m.replicated,
                                                        names, m.options.data_parallel, m.device));
    // No hooks: backward runs the TP group's all-reduces, and a DP bucket launched
    // between them at a different point on two ranks would order collectives of two
    // communicators differently (see SetUpDataParallel); Finish reduces every bucket.
    if (m.options.data_parallel.zero1) {
      // ZeRO-1 over the DP group: each DP rank steps 1/dp of this TP rank's parameters.
      m.zero = std::make_unique<ZeroOptimizer>(m.reducer.get(), m.weights->params(),
                                               group->impl().LayoutBackend(LayoutGroup::kDp),
                                               m.rank, m.world, m.options.optimizer, m.device);
      if (m.experts) {
        // The shard holds the dense parameters' masters and moments; the experts keep theirs.
        for (size_t i = 0; i < m.weights->size(); ++i) {
          if (m.replicated[i]) m.weights->Drop(i);
        }
      } else {
        m.weights->DropAll();
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

Learner::Learner(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Learner::~Learner() = default;
int64_t Learner::version() const { return impl_->clock.version; }
int64_t Learner::optimizer_steps() const { return impl_->clock.steps; }

absl::StatusOr<std::unique_ptr<Learner>> Learner::Create(PolicyModel* policy,
                                                         const LearnerOptions& options,
                                                         ProcessGroup* group) {
  RETURN_IF_ERROR(options.Validate());
  auto impl = std::make_unique<Impl>();
  impl->policy = policy;
  impl->options = options;
  auto& module = policy->module();
  impl->device = module->lm_head->weight.device();
  const int64_t ep = options.data_parallel.expert_parallel;
  RETURN_IF_ERROR(CheckExpertShard(policy->shard(), ep, group));
  if (ep > 1) {
    const int64_t world = group != nullptr ? group->world_size() : 1;
    const int64_t experts = policy->config().num_local_experts;
    if (world % ep != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "data_parallel.expert_parallel = ", ep, " must divide the learner's world size ", world));
    }
    if (experts % ep != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "data_parallel.expert_parallel = ", ep, " must divide the model's num_local_experts ", experts));
    }
  }
  impl->weights = std::make_unique<MasterWeights>(module->parameters());
  impl->replicated.assign(impl->weights->size(), 1);
  const bool tensor_parallel = group != nullptr && group->layout_groups() != nullptr &&
                               group->layout_groups()->tp.size() > 1;
  if (!tensor_parallel && policy->shard().tp > 1) {
    return absl::FailedPreconditionError(absl::StrCat(
        "learner: the policy holds ", policy->shard().ToString(),
        " of the model but no process group with a TP layout was given (ProcessGroup::"
        "JoinLayoutGroups)"));
  }
  if (options.sequence_parallel && !tensor_parallel) {
    return absl::FailedPreconditionError(
        "learner: sequence_parallel needs tensor parallelism (a process group whose layout "
        "has tp > 1, ProcessGroup::JoinLayoutGroups)");
  }
  if (tensor_parallel) {
    try {
      RETURN_IF_ERROR(SetUpTensorParallel(*impl, group));
    } catch (const std::exception& e) {
      return absl::InternalError(absl::StrCat("learner: tensor-parallel set-up failed: ", e.what()));
    }
  } else if (group != nullptr && group->world_size() > 1) {
    try {
      RETURN_IF_ERROR(SetUpDataParallel(*impl, group));
    } catch (const std::exception& e) {
      return absl::InternalError(absl::StrCat("learner: data-parallel set-up failed: ", e.what()));
    }
  }
  if (!impl->zero) {
    std::vector<torch::Tensor> updated;
    for (size_t i = 0; i < impl->weights->size(); ++i) {
      if (impl->replicated[i]) updated.push_back(impl->weights->Updated(i));
    }
    impl->adamw = std::make_unique<AdamW>(std::move(updated), options.optimizer);
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
  if (m.distributed()) RETURN_IF_ERROR(CheckSameBatch(m.group, batch));
  if (samples.empty()) return stats;
  try {
    m.policy->module()->train();
    const int64_t M = std::min<int64_t>(m.options.minibatches, static_cast<int64_t>(samples.size()));
    const Impl::Split split = m.SplitMinibatches(samples, M);
    LearnerStatsAccumulator acc;
    const auto old = m.OldLogprobs(split, acc);
    for (int64_t mb = 0; mb < M; ++mb) {
      const size_t begin = samples.size() * mb / M, end = samples.size() * (mb + 1) / M;
      m.RlUpdate({samples.begin() + begin, samples.begin() + end}, split.by_rank[mb], old, M, acc, stats);
    }
    RETURN_IF_ERROR(m.ReduceStats(acc));
    acc.WriteTo(&stats);
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
  for (const auto& s : batch) {
    RETURN_IF_ERROR(CheckTokenIds(s.prompt, m.policy->config().vocab_size, "sft sample prompt"));
    RETURN_IF_ERROR(CheckTokenIds(s.response, m.policy->config().vocab_size, "sft sample answer"));
    if (s.prompt.empty() || s.response.empty()) continue;
    samples.push_back(&s);
  }
  const double n_tokens = ResponseTokens(samples, /*kept_only=*/false);
  if (m.distributed()) RETURN_IF_ERROR(CheckSameBatch(m.group, batch));
  if (samples.empty()) return stats;
  try {
    m.policy->module()->train();
    LockStep lock;  // empty forwards for a rank short of micro-batches; see RlUpdate
    const auto micros = m.MicroBatchesOf(ShardAll(samples, m.world), n_tokens, /*kept_only=*/false, &lock);
    m.BeginBackward();
    // The losses stay on the device until the update is queued: reading them here would
    // make the host wait for each backward before it can queue the reduction and the step.
    torch::Tensor loss_sum, aux_sum;
    for (size_t k = 0; k < micros.size(); ++k) {
      Packed p = Pack(micros[k], m.device);
      auto [lp, aux] = m.Logprobs(p, /*train=*/true, nullptr);
      const double share =
          m.experts ? lock.shares[k] : static_cast<double>(p.num_response_tokens) / n_tokens;
      auto loss = -lp.sum() / n_tokens + m.options.optimizer.aux_loss_coef * share * aux;
      m.ArmBackward(k + 1 == micros.size());
      loss.backward();
      auto l = loss.detach(), a = share * aux.detach();
      loss_sum = loss_sum.defined() ? loss_sum + l : l;
      aux_sum = aux_sum.defined() ? aux_sum + a : a;
    }
    m.ReduceGradients(stats);
    stats.tokens = static_cast<int64_t>(n_tokens);
    stats.grad_norm = m.Step(lr > 0 ? lr : m.options.optimizer.LearningRate(m.clock.steps), stats);
    LearnerStatsAccumulator acc;
    if (loss_sum.defined()) {
      acc.loss = loss_sum.item<double>();
      acc.aux_loss = aux_sum.item<double>();
    }
    RETURN_IF_ERROR(m.ReduceStats(acc));
    stats.loss = acc.loss;
    stats.aux_loss = acc.aux_loss;
    m.policy->module()->eval();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("sft step failed: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("sft step failed: ", e.what()));
  }
  return stats;
}

namespace {

OptimizerStateParts StateParts(Learner::Impl& m) {
  OptimizerStateParts p;
  p.clock = &m.clock;
  p.masters = m.weights.get();
  p.replicated = &m.replicated;
  p.adamw = m.adamw.get();
  p.zero = m.zero.get();
  p.experts = m.experts.get();
  p.group = m.group;
  p.rank = m.rank;
  p.world = m.world;
  if (m.tp_comm) {
    p.tp = m.policy->shard().tp;
    p.tp_rank = m.policy->shard().tp_rank;
  }
  return p;
}

}  // namespace

absl::Status Learner::SaveState(const std::string& path) const {
  return SaveOptimizerState(path, StateParts(*impl_));
}

absl::Status Learner::LoadState(const std::string& path) {
  return LoadOptimizerState(path, StateParts(*impl_));
}

}  // namespace lightrl
