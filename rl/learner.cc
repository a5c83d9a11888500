#include "rl/learner.h"

#include <cmath>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "policy/minimax_model.h"
#include "rl/losses.h"

namespace lightrl {

absl::Status OptimizerOptions::Validate() const {
  auto bad = [](absl::string_view field, double v, absl::string_view want) {
    return absl::InvalidArgumentError(absl::StrCat("optimizer.", field, " must be ", want, ", got ", v));
  };
  if (!(lr > 0)) return bad("lr", lr, "> 0");
  if (!(beta1 >= 0 && beta1 < 1)) return bad("beta1", beta1, "in [0, 1)");
  if (!(beta2 >= 0 && beta2 < 1)) return bad("beta2", beta2, "in [0, 1)");
  if (!(eps > 0)) return bad("eps", eps, "> 0");
  if (!(weight_decay >= 0)) return bad("weight_decay", weight_decay, ">= 0");
  if (!(grad_clip >= 0)) return bad("grad_clip", grad_clip, ">= 0");
  if (warmup_steps < 0) return bad("warmup_steps", static_cast<double>(warmup_steps), ">= 0");
  if (!(min_lr_ratio >= 0 && min_lr_ratio <= 1)) return bad("min_lr_ratio", min_lr_ratio, "in [0, 1]");
  if (schedule != "constant" && schedule != "cosine" && schedule != "linear") {
    return absl::InvalidArgumentError(absl::StrCat(
        "optimizer.schedule must be constant, cosine or linear, got \"", schedule, "\""));
  }
  return absl::OkStatus();
}

double OptimizerOptions::LearningRate(int64_t step) const {
  if (warmup_steps > 0 && step < warmup_steps) {
    return lr * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
  }
  if (schedule == "constant") return lr;
  const double span = std::max<double>(1, static_cast<double>(total_steps - warmup_steps));
  const double t = std::min(1.0, static_cast<double>(step - warmup_steps) / span);
  const double decay = schedule == "cosine" ? 0.5 * (1 + std::cos(M_PI * t)) : 1 - t;
  return lr * (min_lr_ratio + (1 - min_lr_ratio) * decay);
}

absl::Status LearnerOptions::Validate() const {
  RETURN_IF_ERROR(loss.Validate());
  RETURN_IF_ERROR(optimizer.Validate());
  if (minibatches < 1) {
    return absl::InvalidArgumentError(absl::StrCat("minibatches must be >= 1, got ", minibatches));
  }
  if (!(aux_loss_coef >= 0) || !(moe_capacity_factor >= 0)) {
    return absl::InvalidArgumentError("aux_loss_coef and moe_capacity_factor must be >= 0");
  }
  if (max_tokens_per_forward < 1) {
    return absl::InvalidArgumentError("max_tokens_per_forward must be >= 1");
  }
  return absl::OkStatus();
}

namespace {

// A packed forward's view of some samples: which hidden row predicts which response token.
struct Packed {
  torch::Tensor tokens, predict_rows, targets, advantages, mask, rollout;
  PackedLayout layout;
  std::vector<int64_t> response_offsets;  // start of each sample's response tokens
  int64_t num_response_tokens = 0;
};

Packed Pack(const std::vector<const TrainSample*>& samples, const torch::Device& device) {
  Packed p;
  std::vector<int64_t> flat, rows, targets, lengths;
  std::vector<float> adv, mask, rollout;
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
      rollout.push_back(j < static_cast<int64_t>(s->rollout_logprobs.size()) ? s->rollout_logprobs[j] : 0.f);
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

  void SetLr(double lr) {
    for (auto& group : optimizer->param_groups()) {
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
    }
  }

  // Logprobs of the packed response tokens (and their entropy when asked).
  std::pair<torch::Tensor, torch::Tensor> Logprobs(const Packed& p, bool train, torch::Tensor* entropy) {
    auto& module = policy->module();
    ForwardOptions fopts;
    fopts.train_lightning = train;
    fopts.moe_capacity_factor = train ? options.moe_capacity_factor : 0;
    auto out = module->Forward(p.tokens, p.layout, fopts);
    auto hidden = out.hidden.index_select(0, p.predict_rows);
    if (entropy != nullptr) {
      std::vector<torch::Tensor> lps, ents;
      for (int64_t start = 0; start < hidden.size(0); start += 1024) {
        const int64_t n = std::min<int64_t>(1024, hidden.size(0) - start);
        auto logp = torch::log_softmax(module->Logits(hidden.narrow(0, start, n)), -1);
        lps.push_back(logp.gather(1, p.targets.narrow(0, start, n).unsqueeze(1)).squeeze(1));
        ents.push_back(-(logp.exp() * logp).sum(-1));
      }
      *entropy = ents.empty() ? torch::zeros({0}) : torch::cat(ents);
      return {lps.empty() ? torch::zeros({0}) : torch::cat(lps), out.aux_loss};
    }
    return {module->TokenLogprobs(hidden, p.targets), out.aux_loss};
  }

  double ClipAndStep(double lr, LearnerStats& stats) {
    if (!master.empty()) {
      torch::NoGradGuard no_grad;
      for (size_t i = 0; i < params.size(); ++i) {
        if (params[i].grad().defined()) master[i].mutable_grad() = params[i].grad().to(torch::kFloat32);
        params[i].mutable_grad() = torch::Tensor();
      }
    }
    const std::vector<torch::Tensor>& updated = master.empty() ? params : master;
    double norm = 0;
    if (options.optimizer.grad_clip > 0) {
      norm = torch::nn::utils::clip_grad_norm_(updated, options.optimizer.grad_clip);
    } else {
      double sq = 0;
      for (auto& t : updated) {
        if (t.grad().defined()) sq += t.grad().pow(2).sum().item<double>();
      }
      norm = std::sqrt(sq);
    }
    SetLr(lr);
    if (std::isfinite(norm)) {
      optimizer->step();
    } else {
      std::fprintf(stderr, "learner: non-finite gradient norm at update %lld, update skipped\n",
                   static_cast<long long>(steps));
    }
    optimizer->zero_grad();
    if (!master.empty()) {
      torch::NoGradGuard no_grad;
      for (size_t i = 0; i < params.size(); ++i) params[i].copy_(master[i]);
    }
    ++steps;
    ++version;
    ++stats.updates;
    stats.lr = lr;
    return norm;
  }
};

Learner::Learner(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Learner::~Learner() = default;
int64_t Learner::version() const { return impl_->version; }
int64_t Learner::optimizer_steps() const { return impl_->steps; }

absl::StatusOr<std::unique_ptr<Learner>> Learner::Create(PolicyModel* policy,
                                                         const LearnerOptions& options) {
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
  if (!impl->master.empty()) {
    impl->master.clear();
    for (auto& p : impl->params) impl->master.push_back(p.detach().to(torch::kFloat32).clone());
  }
  impl->optimizer = std::make_unique<torch::optim::AdamW>(
      impl->master.empty() ? impl->params : impl->master, torch::optim::AdamWOptions(options.optimizer.lr)
                  .betas({options.optimizer.beta1, options.optimizer.beta2})
                  .eps(options.optimizer.eps)
                  .weight_decay(options.optimizer.weight_decay));
  return std::unique_ptr<Learner>(new Learner(std::move(impl)));
}

absl::StatusOr<LearnerStats> Learner::TrainRl(const std::vector<TrainSample>& batch) {
  Impl& m = *impl_;
  LearnerStats stats;
  std::vector<const TrainSample*> samples;
  for (const auto& s : batch) {
    if (s.prompt.empty()) return absl::InvalidArgumentError("train sample with an empty prompt");
    RETURN_IF_ERROR(CheckTokenIds(s.prompt, m.policy->config().vocab_size, "train sample prompt"));
    RETURN_IF_ERROR(CheckTokenIds(s.response, m.policy->config().vocab_size, "train sample response"));
    if (!s.response.empty()) samples.push_back(&s);
  }
  if (samples.empty()) return stats;
  try {
    m.policy->module()->train();
    // pi_old: the policy before this batch's updates, computed once.
    std::vector<torch::Tensor> old(samples.size());
    double entropy_sum = 0, mismatch_sum = 0;
    int64_t counted = 0;
    {
      torch::NoGradGuard no_grad;
      size_t next = 0;
      for (const auto& micro : MicroBatches(samples, m.options.max_tokens_per_forward)) {
        Packed p = Pack(micro, m.device);
        torch::Tensor entropy;
        auto lp = m.Logprobs(p, /*train=*/false, &entropy).first;
        entropy_sum += (entropy * p.mask).sum().item<double>();
        mismatch_sum += ((lp - p.rollout).abs() * p.mask).sum().item<double>();
        counted += static_cast<int64_t>(p.mask.sum().item<double>());
        for (size_t i = 0; i < micro.size(); ++i) {
          old[next + i] = lp.narrow(0, p.response_offsets[i],
                                    static_cast<int64_t>(micro[i]->response.size()));
        }
        next += micro.size();
      }
    }
    stats.entropy = counted ? entropy_sum / counted : 0;
    stats.rollout_logprob_abs_diff = counted ? mismatch_sum / counted : 0;

    const int64_t M = std::min<int64_t>(m.options.minibatches, static_cast<int64_t>(samples.size()));
    double weight_total = 0;
    for (int64_t mb = 0; mb < M; ++mb) {
      const size_t begin = samples.size() * mb / M, end = samples.size() * (mb + 1) / M;
      std::vector<const TrainSample*> mini(samples.begin() + begin, samples.begin() + end);
      double n_tokens = 0;
      for (const TrainSample* s : mini) n_tokens += s->keep ? static_cast<double>(s->response.size()) : 0;
      if (n_tokens == 0) continue;
      double loss_sum = 0, policy_sum = 0, aux_sum = 0;
      size_t index = begin;
      for (const auto& micro : MicroBatches(mini, m.options.max_tokens_per_forward)) {
        Packed p = Pack(micro, m.device);
        std::vector<torch::Tensor> olds;
        for (size_t i = 0; i < micro.size(); ++i) olds.push_back(old[index + i]);
        index += micro.size();
        auto [lp, aux] = m.Logprobs(p, /*train=*/true, nullptr);
        PolicyLossInputs in;
        in.logprobs = lp;
        in.old_logprobs = torch::cat(olds);
        in.rollout_logprobs = p.rollout;
        in.advantages = p.advantages;
        in.mask = p.mask;
        in.num_tokens_global = n_tokens;
        PolicyLossOutput out = ComputePolicyLoss(in, m.options.loss);
        // The aux loss is per forward; weight it by this forward's share of the tokens.
        const double share = p.mask.sum().item<double>() / n_tokens;
        auto total = out.loss + m.options.aux_loss_coef * share * aux;
        total.backward();
        loss_sum += total.item<double>();
        policy_sum += out.policy_loss;
        aux_sum += share * aux.item<double>();
        const double w = out.num_tokens;
        weight_total += w;
        stats.clip_fraction += w * out.clip_fraction;
        stats.ratio_mean += w * out.ratio_mean;
        stats.clipped_weight_mean += w * out.clipped_weight_mean;
        stats.approx_kl += w * out.approx_kl;
        if (w > 0) {
          stats.ratio_min = stats.tokens == 0 ? out.ratio_min : std::min(stats.ratio_min, out.ratio_min);
          stats.ratio_max = std::max(stats.ratio_max, out.ratio_max);
        }
        stats.tokens += static_cast<int64_t>(w);
      }
      stats.loss += loss_sum / M;
      stats.policy_loss += policy_sum / M;
      stats.aux_loss += aux_sum / M;
      stats.grad_norm += m.ClipAndStep(m.options.optimizer.LearningRate(m.rl_steps), stats) / M;
      ++m.rl_steps;
    }
    if (weight_total > 0) {
      stats.clip_fraction /= weight_total;
      stats.ratio_mean /= weight_total;
      stats.clipped_weight_mean /= weight_total;
      stats.approx_kl /= weight_total;
    }
    m.policy->module()->eval();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("learner step failed: ", e.what_without_backtrace()));
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
  if (samples.empty()) return stats;
  try {
    m.policy->module()->train();
    for (const auto& micro : MicroBatches(samples, m.options.max_tokens_per_forward)) {
      Packed p = Pack(micro, m.device);
      auto [lp, aux] = m.Logprobs(p, /*train=*/true, nullptr);
      const double share = static_cast<double>(p.num_response_tokens) / n_tokens;
      auto loss = -lp.sum() / n_tokens + m.options.aux_loss_coef * share * aux;
      loss.backward();
      stats.loss += loss.item<double>();
      stats.aux_loss += share * aux.item<double>();
    }
    stats.tokens = static_cast<int64_t>(n_tokens);
    stats.grad_norm = m.ClipAndStep(lr > 0 ? lr : m.options.optimizer.LearningRate(m.steps), stats);
    m.policy->module()->eval();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("sft step failed: ", e.what_without_backtrace()));
  }
  return stats;
}

absl::Status Learner::SaveState(const std::string& path) const {
  try {
    torch::serialize::OutputArchive archive;
    impl_->optimizer->save(archive);
    archive.write("lightrl.version", torch::tensor(impl_->version));
    archive.write("lightrl.steps", torch::tensor(impl_->steps));
    archive.write("lightrl.rl_steps", torch::tensor(impl_->rl_steps));
    for (size_t i = 0; i < impl_->master.size(); ++i) {
      archive.write("lightrl.master." + std::to_string(i), impl_->master[i]);
    }
    const std::string tmp = path + ".tmp";
    archive.save_to(tmp);
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
      return absl::InternalError(absl::StrCat(path, ": cannot rename optimizer state into place"));
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(path, ": saving optimizer state: ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

absl::Status Learner::LoadState(const std::string& path) {
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(path);
    impl_->optimizer->load(archive);
    torch::Tensor v, s, r;
    archive.read("lightrl.version", v);
    archive.read("lightrl.steps", s);
    impl_->version = v.item<int64_t>();
    impl_->steps = s.item<int64_t>();
    // Checkpoints from before the RL-only schedule clock counted every update.
    impl_->rl_steps = archive.try_read("lightrl.rl_steps", r) ? r.item<int64_t>() : impl_->steps;
    for (size_t i = 0; i < impl_->master.size(); ++i) {
      torch::Tensor m;
      archive.read("lightrl.master." + std::to_string(i), m);
      impl_->master[i].copy_(m);
    }
  } catch (const c10::Error& e) {
    return absl::DataLossError(absl::StrCat(path, ": loading optimizer state: ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

}  // namespace lightrl
