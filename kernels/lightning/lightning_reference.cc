#include "kernels/lightning/lightning_reference.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace lightrl {
namespace {

[[noreturn]] void Fail(const char* what) {
  std::fprintf(stderr, "LightningReferenceProblem: %s\n", what);
  std::abort();
}

// Token index of step `tau` of the sequence [begin, begin + len) in problem time order.
int64_t TokenAt(const LightningReferenceProblem& p, int64_t begin, int64_t len,
                int64_t tau) {
  return p.reverse ? begin + len - 1 - tau : begin + tau;
}

}  // namespace

void LightningReferenceProblem::Validate() const {
  if (num_heads <= 0 || head_dim <= 0) Fail("num_heads and head_dim must be positive");
  if (cu_seqlens.size() < 2) Fail("cu_seqlens needs at least two entries");
  if (cu_seqlens[0] != 0) Fail("cu_seqlens[0] must be 0");
  for (size_t i = 1; i < cu_seqlens.size(); ++i) {
    if (cu_seqlens[i] < cu_seqlens[i - 1]) Fail("cu_seqlens must be non-decreasing");
  }
  if (static_cast<int>(slopes.size()) != num_heads) Fail("slopes must have num_heads entries");
}

void ReferenceLightningRecurrence(const LightningReferenceProblem& p, const float* q,
                                  const float* k, const float* v,
                                  const double* initial_state, double* out,
                                  double* final_state) {
  p.Validate();
  const int H = p.num_heads;
  const int d = p.head_dim;
  std::vector<double> s(static_cast<size_t>(d) * d);
  for (int n = 0; n < p.num_seqs(); ++n) {
    const int64_t begin = p.cu_seqlens[n];
    const int64_t len = p.cu_seqlens[n + 1] - begin;
    for (int h = 0; h < H; ++h) {
      const double lambda = std::exp(-static_cast<double>(p.slopes[h]));
      const int64_t state_off = (n * int64_t{H} + h) * d * d;
      for (size_t e = 0; e < s.size(); ++e) {
        s[e] = initial_state ? initial_state[state_off + e] : 0.0;
      }
      for (int64_t tau = 0; tau < len; ++tau) {
        const int64_t row = (TokenAt(p, begin, len, tau) * H + h) * d;
        for (int i = 0; i < d; ++i) {
          const double ki = k[row + i];
          for (int j = 0; j < d; ++j) s[i * d + j] = lambda * s[i * d + j] + ki * v[row + j];
        }
        for (int j = 0; j < d; ++j) {
          double acc = 0.0;
          for (int i = 0; i < d; ++i) acc += static_cast<double>(q[row + i]) * s[i * d + j];
          out[row + j] = acc;
        }
      }
      if (final_state) {
        for (size_t e = 0; e < s.size(); ++e) final_state[state_off + e] = s[e];
      }
    }
  }
}

void ReferenceLightningChunked(const LightningReferenceProblem& p, int block_size,
                               const float* q, const float* k, const float* v,
                               const double* initial_state, double* out,
                               double* final_state) {
  p.Validate();
  if (block_size <= 0) Fail("block_size must be positive");
  const int H = p.num_heads;
  const int d = p.head_dim;
  const int B = block_size;
  std::vector<double> s(static_cast<size_t>(d) * d);
  std::vector<double> update(static_cast<size_t>(d) * d);
  std::vector<double> pw(B + 1);  // lambda^n
  std::vector<int64_t> rows(B);
  for (int n = 0; n < p.num_seqs(); ++n) {
    const int64_t begin = p.cu_seqlens[n];
    const int64_t len = p.cu_seqlens[n + 1] - begin;
    for (int h = 0; h < H; ++h) {
      const double slope = p.slopes[h];
      for (int e = 0; e <= B; ++e) pw[e] = std::exp(-slope * e);
      const int64_t state_off = (n * int64_t{H} + h) * d * d;
      for (size_t e = 0; e < s.size(); ++e) {
        s[e] = initial_state ? initial_state[state_off + e] : 0.0;
      }
      for (int64_t b0 = 0; b0 < len; b0 += B) {
        const int m = static_cast<int>(std::min<int64_t>(B, len - b0));
        for (int i = 0; i < m; ++i) rows[i] = (TokenAt(p, begin, len, b0 + i) * H + h) * d;
        for (int i = 0; i < m; ++i) {
          const float* qi = q + rows[i];
          // Inter-block: lambda^(i+1) q_i S_prev.
          for (int j = 0; j < d; ++j) {
            double acc = 0.0;
            for (int c = 0; c < d; ++c) acc += static_cast<double>(qi[c]) * s[c * d + j];
            out[rows[i] + j] = pw[i + 1] * acc;
          }
          // Intra-block: sum_{j <= i} lambda^(i-j) (q_i . k_j) v_j.
          for (int jt = 0; jt <= i; ++jt) {
            double dot = 0.0;
            for (int c = 0; c < d; ++c) dot += static_cast<double>(qi[c]) * k[rows[jt] + c];
            const double w = pw[i - jt] * dot;
            for (int j = 0; j < d; ++j) out[rows[i] + j] += w * v[rows[jt] + j];
          }
        }
        // S <- lambda^m S + sum_j lambda^(m-1-j) k_j^T v_j.
        std::fill(update.begin(), update.end(), 0.0);
        for (int jt = 0; jt < m; ++jt) {
          const double w = pw[m - 1 - jt];
          for (int c = 0; c < d; ++c) {
            const double kc = w * k[rows[jt] + c];
            for (int j = 0; j < d; ++j) update[c * d + j] += kc * v[rows[jt] + j];
          }
        }
        for (size_t e = 0; e < s.size(); ++e) s[e] = pw[m] * s[e] + update[e];
      }
      if (final_state) {
        for (size_t e = 0; e < s.size(); ++e) final_state[state_off + e] = s[e];
      }
    }
  }
}

std::vector<float> MiniMaxSlopes(int num_heads, int layer, int num_layers) {
  std::vector<float> slopes(num_heads);
  const double factor =
      1.0 - static_cast<double>(layer) / (num_layers - 1 + 1e-5) + 1e-5;
  for (int h = 0; h < num_heads; ++h) {
    slopes[h] = static_cast<float>(std::pow(2.0, -8.0 * (h + 1) / num_heads) * factor);
  }
  return slopes;
}

}  // namespace lightrl
