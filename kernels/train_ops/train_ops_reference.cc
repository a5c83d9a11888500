#include "kernels/train_ops/train_ops_reference.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace lightrl {
namespace {

double Logistic(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// log sum exp of row r, shifted by its max.
double RowLse(const std::vector<float>& logits, int64_t r, int64_t vocab) {
  const float* row = logits.data() + r * vocab;
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t v = 0; v < vocab; ++v) m = std::max(m, static_cast<double>(row[v]));
  double sum = 0;
  for (int64_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(row[v]) - m);
  return m + std::log(sum);
}

}  // namespace

std::vector<double> ReferenceSwiGlu(const std::vector<float>& a, const std::vector<float>& b) {
  std::vector<double> h(a.size());
  for (size_t i = 0; i < a.size(); ++i) h[i] = a[i] * Logistic(a[i]) * b[i];
  return h;
}

void ReferenceSwiGluBackward(const std::vector<float>& a, const std::vector<float>& b,
                             const std::vector<float>& dh, std::vector<double>* da,
                             std::vector<double>* db) {
  da->resize(a.size());
  db->resize(a.size());
  for (size_t i = 0; i < a.size(); ++i) {
    const double x = a[i], s = Logistic(x);
    (*da)[i] = dh[i] * static_cast<double>(b[i]) * s * (1.0 + x * (1.0 - s));
    (*db)[i] = dh[i] * x * s;
  }
}

void ReferenceTokenLogprob(const std::vector<float>& logits, int64_t rows, int64_t vocab,
                           const std::vector<int64_t>& targets, std::vector<double>* lse,
                           std::vector<double>* logp) {
  lse->resize(rows);
  logp->resize(rows);
  for (int64_t r = 0; r < rows; ++r) {
    (*lse)[r] = RowLse(logits, r, vocab);
    const int64_t t = targets[r];
    (*logp)[r] = t >= 0 && t < vocab ? logits[r * vocab + t] - (*lse)[r]
                                     : std::numeric_limits<double>::quiet_NaN();
  }
}

std::vector<double> ReferenceTokenLogprobGrad(const std::vector<float>& logits, int64_t rows,
                                              int64_t vocab, const std::vector<int64_t>& targets,
                                              const std::vector<float>& grad) {
  std::vector<double> d(logits.size());
  for (int64_t r = 0; r < rows; ++r) {
    const double lse = RowLse(logits, r, vocab);
    for (int64_t v = 0; v < vocab; ++v) {
      const double p = std::exp(logits[r * vocab + v] - lse);
      d[r * vocab + v] = grad[r] * ((v == targets[r] ? 1.0 : 0.0) - p);
    }
  }
  return d;
}

std::vector<double> ReferenceMoeCombine(const std::vector<float>& y, int64_t dim,
                                        const std::vector<int64_t>& rows,
                                        const std::vector<float>& w, int64_t top_k) {
  const int64_t tokens = static_cast<int64_t>(w.size()) / top_k;
  std::vector<double> out(tokens * dim, 0.0);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t j = 0; j < top_k; ++j) {
      const int64_t r = rows[t * top_k + j];
      for (int64_t i = 0; i < dim; ++i) out[t * dim + i] += w[t * top_k + j] * static_cast<double>(y[r * dim + i]);
    }
  }
  return out;
}

void ReferenceMoeCombineBackward(const std::vector<float>& y, int64_t dim,
                                 const std::vector<int64_t>& rows,
                                 const std::vector<int64_t>& readers, const std::vector<float>& w,
                                 int64_t top_k, const std::vector<float>& g,
                                 std::vector<double>* dy, std::vector<double>* dw) {
  const int64_t tokens = static_cast<int64_t>(w.size()) / top_k;
  const int64_t num_rows = static_cast<int64_t>(readers.size());
  dy->assign(num_rows * dim, 0.0);
  dw->assign(tokens * top_k, 0.0);
  for (int64_t r = 0; r < num_rows; ++r) {
    const int64_t a = readers[r];
    if (a < 0 || a >= tokens * top_k) continue;
    for (int64_t i = 0; i < dim; ++i) (*dy)[r * dim + i] = w[a] * static_cast<double>(g[(a / top_k) * dim + i]);
  }
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t j = 0; j < top_k; ++j) {
      const int64_t r = rows[t * top_k + j];
      double dot = 0;
      for (int64_t i = 0; i < dim; ++i) dot += static_cast<double>(g[t * dim + i]) * y[r * dim + i];
      (*dw)[t * top_k + j] = dot;
    }
  }
}

void ReferenceAdamW(std::vector<double>* master, std::vector<double>* exp_avg,
                    std::vector<double>* exp_avg_sq, const std::vector<float>& grad,
                    int64_t step, double grad_scale, const ReferenceAdamWOptions& o) {
  const double bc1 = 1.0 - std::pow(o.beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(o.beta2, static_cast<double>(step));
  for (size_t i = 0; i < master->size(); ++i) {
    const double g = grad[i] * grad_scale;
    double& w = (*master)[i];
    double& m = (*exp_avg)[i];
    double& v = (*exp_avg_sq)[i];
    w *= 1.0 - o.lr * o.weight_decay;
    m = o.beta1 * m + (1.0 - o.beta1) * g;
    v = o.beta2 * v + (1.0 - o.beta2) * g * g;
    w -= o.lr / bc1 * m / (std::sqrt(v) / std::sqrt(bc2) + o.eps);
  }
}

void ReferenceGatherToFp32(const std::vector<const float*>& srcs, const std::vector<int64_t>& offsets,
                           const std::vector<int64_t>& numels, std::vector<double>* dst) {
  for (size_t j = 0; j < srcs.size(); ++j) {
    for (int64_t k = 0; k < numels[j]; ++k) {
      (*dst)[offsets[j] + k] = srcs[j] != nullptr ? static_cast<double>(srcs[j][k]) : 0.0;
    }
  }
}

}  // namespace lightrl
