#include "kernels/sampling/sampling_reference.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <numeric>

namespace lightrl {
namespace {

// What both entry points share: the softmax at T, the sampling order and the kept prefix.
struct Prepared {
  bool greedy = false;
  std::vector<double> z;         // x / T, the division rounded to FP32
  double log_normaliser = 0.0;   // logsumexp(z)
  std::vector<int64_t> order;    // descending logit, equal logits by ascending id
  std::vector<double> prob;      // softmax(z), by token id
  int64_t num_kept = 0;          // the kept prefix of `order`
  double kept_mass = 0.0;
  double top_p_margin = INFINITY;
};

Prepared Prepare(const float* logits, int64_t vocab, const SamplingReferenceRow& row) {
  if (logits == nullptr || vocab < 1) {
    std::fprintf(stderr, "ReferenceSample: need at least one logit, got vocab %lld\n",
                 static_cast<long long>(vocab));
    std::abort();
  }
  Prepared p;
  const float temperature = static_cast<float>(row.temperature);
  p.greedy = !(temperature > 0.0f);
  const float t = p.greedy ? 1.0f : temperature;
  p.z.resize(vocab);
  double z_max = -INFINITY;
  for (int64_t i = 0; i < vocab; ++i) {
    p.z[i] = static_cast<double>(logits[i] / t);  // an FP32 division
    z_max = std::max(z_max, p.z[i]);
  }
  double sum = 0.0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(p.z[i] - z_max);
  p.log_normaliser = z_max + std::log(sum);
  p.prob.resize(vocab);
  for (int64_t i = 0; i < vocab; ++i) p.prob[i] = std::exp(p.z[i] - p.log_normaliser);

  p.order.resize(vocab);
  std::iota(p.order.begin(), p.order.end(), int64_t{0});
  // Stable: equal logits keep ascending id order.
  std::stable_sort(p.order.begin(), p.order.end(),
                   [&](int64_t a, int64_t b) { return logits[a] > logits[b]; });
  if (p.greedy) {
    p.num_kept = 1;
    p.kept_mass = p.prob[p.order[0]];
    return p;
  }

  const int64_t by_k = row.top_k >= 1 && row.top_k < vocab ? row.top_k : vocab;
  int64_t by_p = vocab;
  const float top_p = static_cast<float>(row.top_p);
  if (top_p < 1.0f) {
    // Keep j while the mass before it is < top_p; `before` ends as the mass before the
    // first dropped token (or the whole mass).
    by_p = 1;
    double before = p.prob[p.order[0]];
    while (by_p < vocab && before < top_p) before += p.prob[p.order[by_p++]];
    const double before_last_kept = before - p.prob[p.order[by_p - 1]];
    // The first token stays whatever top_p is, so it draws no boundary.
    const double below = by_p > 1 ? top_p - before_last_kept : INFINITY;
    const double above = by_p < vocab ? before - top_p : INFINITY;
    p.top_p_margin = std::min(below, above);
  }
  p.num_kept = std::min(by_k, by_p);
  for (int64_t j = 0; j < p.num_kept; ++j) p.kept_mass += p.prob[p.order[j]];
  return p;
}

}  // namespace

SamplingReferenceResult ReferenceSample(const float* logits, int64_t vocab,
                                        const SamplingReferenceRow& row) {
  const Prepared p = Prepare(logits, vocab, row);
  SamplingReferenceResult out;
  out.num_kept = p.num_kept;
  if (p.greedy) {
    out.token = p.order[0];
    out.logprob = p.z[out.token] - p.log_normaliser;
    return out;
  }
  out.top_p_margin = p.top_p_margin;
  const double uniform = static_cast<double>(static_cast<float>(row.uniform));
  const double target = uniform * p.kept_mass;
  int64_t j = 0;
  double cum_before = 0.0;  // kept mass before position j
  while (j < p.num_kept - 1 && cum_before + p.prob[p.order[j]] <= target) {
    cum_before += p.prob[p.order[j]];
    ++j;
  }
  const double cum_through = cum_before + p.prob[p.order[j]];
  const double below = j > 0 ? uniform - cum_before / p.kept_mass : INFINITY;
  const double above = j < p.num_kept - 1 ? cum_through / p.kept_mass - uniform : INFINITY;
  out.draw_margin = std::min(below, above);
  out.token = p.order[j];
  out.logprob = p.z[out.token] - p.log_normaliser;
  return out;
}

std::vector<double> ReferenceSamplingDistribution(const float* logits, int64_t vocab,
                                                  const SamplingReferenceRow& row) {
  const Prepared p = Prepare(logits, vocab, row);
  std::vector<double> dist(vocab, 0.0);
  if (p.greedy) {
    dist[p.order[0]] = 1.0;
    return dist;
  }
  for (int64_t j = 0; j < p.num_kept; ++j) dist[p.order[j]] = p.prob[p.order[j]] / p.kept_mass;
  return dist;
}

}  // namespace lightrl
