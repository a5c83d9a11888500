#include "rl/losses.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace lightrl {
namespace {

// One minibatch as plain vectors: the oracle below reads these, the loss reads tensors.
struct Case {
  std::vector<double> logp, old, rollout, ref, adv, mask;
  size_t size() const { return logp.size(); }
};

// Log ratios uniform in [-2, 2] put ratios in [0.14, 7.4]: outside every clip range used
// here on both sides. Advantages of both signs, ~20% of tokens masked out.
Case RandomCase(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> neg_logp(0.05, 4.0), log_ratio(-2.0, 2.0);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::bernoulli_distribution keep(0.8);
  Case c;
  for (int i = 0; i < n; ++i) {
    c.logp.push_back(-neg_logp(rng));
    c.old.push_back(c.logp.back() - log_ratio(rng));
    c.rollout.push_back(c.old.back() + 0.5 * normal(rng));
    c.ref.push_back(c.logp.back() + 0.3 * normal(rng));
    c.adv.push_back(normal(rng));
    c.mask.push_back(keep(rng) ? 1.0 : 0.0);
  }
  return c;
}

torch::Tensor ToTensor(const std::vector<double>& v, torch::Dtype dtype = torch::kFloat64) {
  return torch::from_blob(const_cast<double*>(v.data()), {static_cast<int64_t>(v.size())},
                          torch::kFloat64)
      .clone()
      .to(dtype);
}

std::vector<double> ToVector(const torch::Tensor& t) {
  torch::Tensor c = t.to(torch::kFloat64).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

struct Result {
  double loss = 0.0;
  std::vector<double> grad;
  PolicyLossOutput out;
};

// Runs the loss through autograd on a leaf tensor built from c.logp.
Result RunLoss(const Case& c, const PolicyLossOptions& o, double n_global,
               torch::Dtype dtype = torch::kFloat64) {
  torch::Tensor logp = ToTensor(c.logp, dtype).requires_grad_();
  PolicyLossInputs in;
  in.logprobs = logp;
  in.old_logprobs = ToTensor(c.old, dtype);
  in.rollout_logprobs = ToTensor(c.rollout, dtype);
  in.ref_logprobs = ToTensor(c.ref, dtype);
  in.advantages = ToTensor(c.adv, dtype);
  in.mask = ToTensor(c.mask, dtype);
  in.num_tokens_global = n_global;
  Result r;
  r.out = ComputePolicyLoss(in, o);
  r.out.loss.backward();
  r.loss = r.out.loss.item<double>();
  r.grad = ToVector(logp.grad());
  return r;
}

std::pair<double, double> Range(const PolicyLossOptions& o) {
  switch (o.kind) {
    case PolicyLossKind::kCispo:
      return {1 - o.eps_low, 1 + o.eps_high};
    case PolicyLossKind::kDapo:
      return {1 - o.dapo_eps_low, 1 + o.dapo_eps_high};
    default:
      return {1 - o.ppo_eps, 1 + o.ppo_eps};
  }
}

// The oracle: loss and d loss / d logp written out per token in double, from the
// formulas of DESIGN.md section 5 and the PPO/DAPO papers, sharing no code with the loss.
Result Oracle(const Case& c, const PolicyLossOptions& o, double n_global) {
  const auto [lo, hi] = Range(o);
  Result r;
  r.grad.assign(c.size(), 0.0);
  for (size_t t = 0; t < c.size(); ++t) {
    if (c.mask[t] == 0.0) continue;
    const double ratio = std::exp(c.logp[t] - c.old[t]);
    const double a = c.adv[t];
    const double tis =
        o.truncated_is_cap > 0 ? std::min(std::exp(c.old[t] - c.rollout[t]), o.truncated_is_cap)
                               : 1.0;
    double term = 0.0, dterm = 0.0;  // the token's loss before 1/N and its derivative
    if (o.kind == PolicyLossKind::kCispo) {
      const double w = std::min(std::max(ratio, lo), hi);
      const bool dropped = o.unified_mask && ((a > 0 && ratio > hi) || (a < 0 && ratio < lo));
      if (!dropped) {
        term = -w * a * c.logp[t];
        dterm = -w * a;
      }
    } else {
      const double unclipped = ratio * a;
      const double clipped = std::min(std::max(ratio, lo), hi) * a;
      if (unclipped <= clipped) {
        term = -unclipped;
        dterm = -ratio * a;  // d r / d logp = r
      } else {
        term = -clipped;  // only when r is out of range: the clipped value is constant
      }
    }
    r.loss += tis * term / n_global;
    r.grad[t] += tis * dterm / n_global;
    if (o.kl_coef > 0) {
      const double d = c.ref[t] - c.logp[t];
      r.loss += o.kl_coef * (std::exp(d) - d - 1) / n_global;
      r.grad[t] += o.kl_coef * (1 - std::exp(d)) / n_global;
    }
  }
  return r;
}

double MaskCount(const Case& c) {
  double n = 0;
  for (double m : c.mask) n += m;
  return n;
}

void ExpectClose(const Result& got, const Result& want, double rtol, const std::string& what) {
  double scale = 0;
  for (double g : want.grad) scale = std::max(scale, std::abs(g));
  EXPECT_NEAR(got.loss, want.loss, rtol * std::max(1e-3, std::abs(want.loss))) << what;
  ASSERT_EQ(got.grad.size(), want.grad.size());
  for (size_t t = 0; t < got.grad.size(); ++t) {
    EXPECT_NEAR(got.grad[t], want.grad[t], rtol * scale + 1e-15) << what << " token " << t;
  }
}

struct Config {
  std::string name;
  PolicyLossOptions options;
};

std::vector<Config> Configs() {
  std::vector<Config> out;
  PolicyLossOptions o;
  out.push_back({"cispo_default", o});
  o.eps_low = 0.2;
  o.eps_high = 0.28;
  out.push_back({"cispo_tight", o});
  o.unified_mask = true;
  out.push_back({"cispo_unified", o});
  o.unified_mask = false;
  o.truncated_is_cap = 2.0;
  out.push_back({"cispo_tis", o});
  o.kl_coef = 0.05;
  out.push_back({"cispo_tis_kl", o});
  PolicyLossOptions p;
  p.kind = PolicyLossKind::kGrpo;
  out.push_back({"grpo", p});
  p.kl_coef = 0.04;
  out.push_back({"grpo_kl", p});
  p = PolicyLossOptions{};
  p.kind = PolicyLossKind::kPpoClip;
  out.push_back({"ppo_clip", p});
  p.kind = PolicyLossKind::kDapo;
  out.push_back({"dapo", p});
  p.truncated_is_cap = 1.5;
  out.push_back({"dapo_tis", p});
  return out;
}

TEST(PolicyLoss, LossAndGradientMatchHandWrittenOracle) {
  for (const Config& cfg : Configs()) {
    ASSERT_TRUE(cfg.options.Validate().ok()) << cfg.name;
    uint32_t seed = 11;
    for (int n : {1, 7, 64, 257}) {
      const Case c = RandomCase(n, seed++);
      // The global normaliser need not equal this minibatch's count.
      const double n_global = MaskCount(c) + 13.0;
      ExpectClose(RunLoss(c, cfg.options, n_global), Oracle(c, cfg.options, n_global), 1e-9,
                  cfg.name + " n=" + std::to_string(n));
    }
  }
}

TEST(PolicyLoss, StatisticsMatchOracle) {
  for (const Config& cfg : Configs()) {
    const Case c = RandomCase(300, 5);
    const Result r = RunLoss(c, cfg.options, 1000.0);
    const auto [lo, hi] = Range(cfg.options);
    double count = 0, outside = 0, sum_r = 0, sum_w = 0, kl = 0, dropped = 0, tis = 0;
    double r_min = 1e300, r_max = -1e300;
    for (size_t t = 0; t < c.size(); ++t) {
      if (c.mask[t] == 0) continue;
      const double lr = c.logp[t] - c.old[t];
      const double ratio = std::exp(lr);
      ++count;
      outside += (ratio < lo || ratio > hi) ? 1 : 0;
      sum_r += ratio;
      sum_w += std::min(std::max(ratio, lo), hi);
      kl += ratio - 1 - lr;
      r_min = std::min(r_min, ratio);
      r_max = std::max(r_max, ratio);
      dropped += ((c.adv[t] > 0 && ratio > hi) || (c.adv[t] < 0 && ratio < lo)) ? 1 : 0;
      tis += cfg.options.truncated_is_cap > 0
                 ? std::min(std::exp(c.old[t] - c.rollout[t]), cfg.options.truncated_is_cap)
                 : 1.0;
    }
    const PolicyLossOutput& s = r.out;
    EXPECT_EQ(s.num_tokens, count) << cfg.name;
    EXPECT_NEAR(s.clip_fraction, outside / count, 1e-12) << cfg.name;
    EXPECT_NEAR(s.ratio_mean, sum_r / count, 1e-12) << cfg.name;
    EXPECT_NEAR(s.ratio_min, r_min, 1e-12) << cfg.name;
    EXPECT_NEAR(s.ratio_max, r_max, 1e-12) << cfg.name;
    EXPECT_NEAR(s.clipped_weight_mean, sum_w / count, 1e-12) << cfg.name;
    EXPECT_NEAR(s.approx_kl, kl / count, 1e-12) << cfg.name;
    EXPECT_NEAR(s.truncated_is_weight_mean, tis / count, 1e-12) << cfg.name;
    EXPECT_NEAR(s.unified_mask_fraction, cfg.options.unified_mask ? dropped / count : 0.0,
                1e-12)
        << cfg.name;
    EXPECT_NEAR(s.policy_loss + s.kl_loss, r.loss, 1e-12) << cfg.name;
    EXPECT_GT(outside, 0) << cfg.name << ": the inputs must exercise the clip";
  }
}

// CISPO's defining property: the weight is a stop-gradient constant, so
// d loss / d logp_t = -(1/N) clip(r_t) A_t mask_t exactly, clipped tokens included.
TEST(PolicyLoss, CispoGradientIsStopGradientWeightTimesAdvantage) {
  PolicyLossOptions o;
  o.eps_low = 0.2;
  o.eps_high = 0.28;
  const Case c = RandomCase(512, 99);
  const double n = MaskCount(c);
  const Result r = RunLoss(c, o, n);
  int clipped_high = 0, clipped_low = 0;
  for (size_t t = 0; t < c.size(); ++t) {
    const double ratio = std::exp(c.logp[t] - c.old[t]);
    const double w = std::min(std::max(ratio, 0.8), 1.28);
    EXPECT_NEAR(r.grad[t], -w * c.adv[t] * c.mask[t] / n, 1e-15) << "token " << t;
    if (c.mask[t] != 0 && c.adv[t] != 0) {
      if (ratio > 1.28) {
        ++clipped_high;
        EXPECT_NE(r.grad[t], 0.0);
      }
      if (ratio < 0.8) {
        ++clipped_low;
        EXPECT_NE(r.grad[t], 0.0);
      }
    }
  }
  EXPECT_GT(clipped_high, 20);
  EXPECT_GT(clipped_low, 20);
}

// PPO-clip zeroes the gradient of a token whose ratio left the trust region in the
// direction its advantage pushes (A > 0, r > 1+eps; A < 0, r < 1-eps) and keeps it on the
// other side; CISPO keeps all of them.
TEST(PolicyLoss, ClippedTokensKeepGradientUnderCispoNotUnderPpo) {
  PolicyLossOptions ppo;
  ppo.kind = PolicyLossKind::kPpoClip;
  PolicyLossOptions cispo;
  cispo.eps_low = ppo.ppo_eps;
  cispo.eps_high = ppo.ppo_eps;
  const Case c = RandomCase(512, 3);
  const double n = MaskCount(c);
  const Result rp = RunLoss(c, ppo, n);
  const Result rc = RunLoss(c, cispo, n);
  int pushed_out = 0, other_side = 0;
  for (size_t t = 0; t < c.size(); ++t) {
    if (c.mask[t] == 0) continue;
    const double ratio = std::exp(c.logp[t] - c.old[t]);
    const double a = c.adv[t];
    const bool out_high = ratio > 1.2, out_low = ratio < 0.8;
    if ((a > 0 && out_high) || (a < 0 && out_low)) {
      ++pushed_out;
      EXPECT_EQ(rp.grad[t], 0.0) << "token " << t;
      EXPECT_NE(rc.grad[t], 0.0) << "token " << t;
    } else if (out_high || out_low) {
      ++other_side;
      EXPECT_NEAR(rp.grad[t], -ratio * a / n, 1e-15);  // PPO: the unclipped term's gradient
      EXPECT_NE(rc.grad[t], 0.0);
    } else {
      EXPECT_NEAR(rp.grad[t], rc.grad[t], 1e-15);  // inside the range both are -r A / N
    }
  }
  EXPECT_GT(pushed_out, 20);
  EXPECT_GT(other_side, 20);
}

// Eq. 7: with the unified mask and the same eps, CISPO drops exactly the tokens whose
// gradient PPO-clip drops, and masked tokens still count in the normaliser.
TEST(PolicyLoss, UnifiedMaskDropsThePpoTrustRegionTokens) {
  PolicyLossOptions ppo;
  ppo.kind = PolicyLossKind::kPpoClip;
  PolicyLossOptions cispo;
  cispo.eps_low = cispo.eps_high = ppo.ppo_eps;
  cispo.unified_mask = true;
  const Case c = RandomCase(400, 21);
  const double n = MaskCount(c);
  const Result rp = RunLoss(c, ppo, n);
  const Result ru = RunLoss(c, cispo, n);
  int dropped = 0;
  for (size_t t = 0; t < c.size(); ++t) {
    if (c.mask[t] == 0 || c.adv[t] == 0) continue;
    EXPECT_EQ(rp.grad[t] == 0.0, ru.grad[t] == 0.0) << "token " << t;
    dropped += ru.grad[t] == 0.0;
  }
  EXPECT_GT(dropped, 20);
  EXPECT_GT(ru.out.unified_mask_fraction, 0.0);
  // The default CISPO range (0, 5] makes the lower side of the mask vacuous, but the upper
  // side still drops A > 0 tokens above 5.
  PolicyLossOptions wide;
  wide.unified_mask = true;
  const Result rw = RunLoss(c, wide, n);
  for (size_t t = 0; t < c.size(); ++t) {
    const double ratio = std::exp(c.logp[t] - c.old[t]);
    if (c.mask[t] != 0 && c.adv[t] > 0 && ratio > 5.0) {
      EXPECT_EQ(rw.grad[t], 0.0);
    }
    if (c.mask[t] != 0 && c.adv[t] < 0) {
      EXPECT_NE(rw.grad[t], 0.0);
    }
  }
}

TEST(PolicyLoss, TruncatedIsScalesEachTokenByCappedRatio) {
  for (PolicyLossKind kind : {PolicyLossKind::kCispo, PolicyLossKind::kDapo}) {
    PolicyLossOptions plain;
    plain.kind = kind;
    PolicyLossOptions tis = plain;
    tis.truncated_is_cap = 1.3;
    const Case c = RandomCase(256, 8);
    const double n = MaskCount(c);
    const Result rp = RunLoss(c, plain, n);
    const Result rt = RunLoss(c, tis, n);
    int capped = 0;
    for (size_t t = 0; t < c.size(); ++t) {
      const double raw = std::exp(c.old[t] - c.rollout[t]);
      const double w = std::min(raw, 1.3);
      capped += c.mask[t] != 0 && raw > 1.3;
      EXPECT_NEAR(rt.grad[t], w * rp.grad[t], 1e-15) << "token " << t;
    }
    EXPECT_GT(capped, 10);
    // Rollout == old means no mismatch: weight 1, the plain loss.
    Case same = c;
    same.rollout = same.old;
    const Result rs = RunLoss(same, tis, n);
    ExpectClose(rs, rp, 1e-12, "tis with rollout == old");
    EXPECT_NEAR(rs.out.truncated_is_weight_mean, 1.0, 1e-12);
  }
}

// Minibatches and ranks each normalise by the global token count, so their losses and
// gradients sum (concatenate) to the full batch's.
TEST(PolicyLoss, MinibatchesWithGlobalNormaliserSumToFullBatch) {
  for (const Config& cfg : Configs()) {
    const Case full = RandomCase(301, 77);
    const double n = MaskCount(full);
    const Result whole = RunLoss(full, cfg.options, n);
    double loss_sum = 0;
    std::vector<double> grad;
    const std::vector<size_t> cuts = {0, 40, 41, 190, full.size()};  // ragged, one of size 1
    for (size_t k = 0; k + 1 < cuts.size(); ++k) {
      Case part;
      for (size_t t = cuts[k]; t < cuts[k + 1]; ++t) {
        part.logp.push_back(full.logp[t]);
        part.old.push_back(full.old[t]);
        part.rollout.push_back(full.rollout[t]);
        part.ref.push_back(full.ref[t]);
        part.adv.push_back(full.adv[t]);
        part.mask.push_back(full.mask[t]);
      }
      const Result r = RunLoss(part, cfg.options, n);
      loss_sum += r.loss;
      grad.insert(grad.end(), r.grad.begin(), r.grad.end());
    }
    Result summed;
    summed.loss = loss_sum;
    summed.grad = grad;
    ExpectClose(summed, whole, 1e-12, cfg.name);
  }
}

TEST(PolicyLoss, MaskedTokensWithGarbageLogprobsGetZeroGradient) {
  for (const Config& cfg : Configs()) {
    Case c = RandomCase(64, 4);
    const double n = MaskCount(c);
    const Result clean = RunLoss(c, cfg.options, n);
    for (size_t t = 0; t < c.size(); ++t) {
      if (c.mask[t] == 0) c.logp[t] = -std::numeric_limits<double>::infinity();
    }
    const Result r = RunLoss(c, cfg.options, n);
    ASSERT_TRUE(std::isfinite(r.loss)) << cfg.name;
    ExpectClose(r, clean, 1e-12, cfg.name);
    for (size_t t = 0; t < c.size(); ++t) {
      if (c.mask[t] == 0) {
        EXPECT_EQ(r.grad[t], 0.0) << cfg.name;
      }
    }
  }
}

TEST(PolicyLoss, Float32AgreesWithFloat64) {
  for (const Config& cfg : Configs()) {
    const Case c = RandomCase(128, 12);
    const double n = MaskCount(c);
    ExpectClose(RunLoss(c, cfg.options, n, torch::kFloat32), Oracle(c, cfg.options, n), 1e-4,
                cfg.name);
  }
}

TEST(PolicyLoss, EmptyMaskGivesZeroLossAndStats) {
  Case c = RandomCase(16, 1);
  std::fill(c.mask.begin(), c.mask.end(), 0.0);
  const Result r = RunLoss(c, PolicyLossOptions{}, 10.0);
  EXPECT_EQ(r.loss, 0.0);
  EXPECT_EQ(r.out.num_tokens, 0.0);
  for (double g : r.grad) EXPECT_EQ(g, 0.0);
}

TEST(PolicyLoss, CallerBugsThrow) {
  const Case c = RandomCase(8, 2);
  PolicyLossInputs in;
  in.logprobs = ToTensor(c.logp).requires_grad_();
  in.old_logprobs = ToTensor(c.old);
  in.advantages = ToTensor(c.adv);
  in.mask = ToTensor(c.mask);
  in.num_tokens_global = 8;
  PolicyLossOptions o;
  EXPECT_NO_THROW(ComputePolicyLoss(in, o));
  o.truncated_is_cap = 2.0;  // needs rollout_logprobs
  EXPECT_THROW(ComputePolicyLoss(in, o), c10::Error);
  o = PolicyLossOptions{};
  o.kl_coef = 0.1;  // needs ref_logprobs
  EXPECT_THROW(ComputePolicyLoss(in, o), c10::Error);
  o = PolicyLossOptions{};
  in.num_tokens_global = 0;
  EXPECT_THROW(ComputePolicyLoss(in, o), c10::Error);
  in.num_tokens_global = 8;
  in.advantages = ToTensor(std::vector<double>(7, 1.0));
  EXPECT_THROW(ComputePolicyLoss(in, o), c10::Error);
}

TEST(PolicyLossOptions, ValidateNamesFieldAndValue) {
  EXPECT_TRUE(PolicyLossOptions{}.Validate().ok());
  struct Bad {
    void (*set)(PolicyLossOptions&);
    std::string field, value;
  };
  const std::vector<Bad> bad = {
      {[](PolicyLossOptions& o) { o.eps_low = 1.5; }, "eps_low", "1.5"},
      {[](PolicyLossOptions& o) { o.eps_high = -0.1; }, "eps_high", "-0.1"},
      {[](PolicyLossOptions& o) { o.ppo_eps = std::nan(""); }, "ppo_eps", "nan"},
      {[](PolicyLossOptions& o) { o.dapo_eps_low = 2; }, "dapo_eps_low", "2"},
      {[](PolicyLossOptions& o) { o.dapo_eps_high = -1; }, "dapo_eps_high", "-1"},
      {[](PolicyLossOptions& o) { o.kl_coef = -0.5; }, "kl_coef", "-0.5"},
      {[](PolicyLossOptions& o) {
         o.truncated_is_cap = std::numeric_limits<double>::infinity();
       },
       "truncated_is_cap", "inf"},
      {[](PolicyLossOptions& o) {
         o.kind = PolicyLossKind::kDapo;
         o.unified_mask = true;
       },
       "unified_mask", "dapo"},
  };
  for (const Bad& b : bad) {
    PolicyLossOptions o;
    b.set(o);
    const absl::Status s = o.Validate();
    ASSERT_FALSE(s.ok()) << b.field;
    EXPECT_NE(s.message().find("policy_loss." + b.field), absl::string_view::npos) << s;
    EXPECT_NE(s.message().find(b.value), absl::string_view::npos) << s;
  }
}

TEST(PolicyLossOptions, KindNamesRoundTrip) {
  for (PolicyLossKind k : {PolicyLossKind::kCispo, PolicyLossKind::kGrpo,
                           PolicyLossKind::kPpoClip, PolicyLossKind::kDapo}) {
    auto parsed = ParsePolicyLossKind(PolicyLossKindName(k));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, k);
  }
  auto bad = ParsePolicyLossKind("ppo");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("\"ppo\""), absl::string_view::npos);
}

TEST(PolicyLoss, HugeLogRatiosStayFiniteInEveryKind) {
  // FP32 exp overflows at log r ~ 89: a stale or corrupted old logprob must not turn the
  // surrogate into inf or nan.
  std::mt19937 rng(std::random_device{}());
  Case c = RandomCase(64, rng());
  for (size_t i = 0; i < c.logp.size(); ++i) c.old[i] = c.logp[i] + (i % 2 ? 150.0 : -150.0);
  for (PolicyLossKind kind : {PolicyLossKind::kCispo, PolicyLossKind::kGrpo,
                              PolicyLossKind::kPpoClip, PolicyLossKind::kDapo}) {
    PolicyLossOptions o;
    o.kind = kind;
    Result r = RunLoss(c, o, MaskCount(c) + 1, torch::kFloat32);
    EXPECT_TRUE(std::isfinite(r.loss)) << PolicyLossKindName(kind);
    for (double g : r.grad) ASSERT_TRUE(std::isfinite(g)) << PolicyLossKindName(kind);
    EXPECT_TRUE(std::isfinite(r.out.ratio_max)) << PolicyLossKindName(kind);
  }
}

TEST(PolicyLoss, DualClipCapsNegativeAdvantageTokens) {
  std::mt19937 rng(std::random_device{}());
  Case c = RandomCase(200, rng());
  const double cap = 3.0;
  PolicyLossOptions o;
  o.kind = PolicyLossKind::kGrpo;
  o.dual_clip = cap;
  const double n = MaskCount(c) + 3;
  Result got = RunLoss(c, o, n);
  // Oracle per token: PPO-clip's max(-r A, -clip(r) A), then for A < 0 at most -cap A,
  // whose gradient is zero.
  double loss = 0;
  int capped = 0;
  for (size_t i = 0; i < c.logp.size(); ++i) {
    if (c.mask[i] == 0) {
      EXPECT_EQ(got.grad[i], 0.0);
      continue;
    }
    const double r = std::exp(c.logp[i] - c.old[i]), a = c.adv[i];
    const double clipped = std::clamp(r, 1 - o.ppo_eps, 1 + o.ppo_eps);
    double per = std::max(-r * a, -clipped * a);
    double grad = (-r * a >= -clipped * a) ? -r * a : 0.0;  // d/dlogp of the chosen branch
    if (a < 0 && per > -cap * a) {
      per = -cap * a;
      grad = 0;
      ++capped;
    }
    loss += per / n;
    EXPECT_NEAR(got.grad[i], grad / n, 1e-12 + 1e-9 * std::abs(grad / n)) << i;
  }
  EXPECT_NEAR(got.loss, loss, 1e-12 + 1e-9 * std::abs(loss));
  EXPECT_GT(capped, 0) << "no token reached the dual clip; the case does not test it";
}

}  // namespace
}  // namespace lightrl
