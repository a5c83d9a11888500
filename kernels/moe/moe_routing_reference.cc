#include "kernels/moe/moe_routing_reference.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace lightrl {

void ReferenceMoeRouting(const std::vector<float>& logits, int64_t tokens, int64_t experts,
                         int64_t top_k, std::vector<int64_t>* ids, std::vector<double>* weights) {
  ids->assign(tokens * top_k, 0);
  weights->assign(tokens * top_k, 0.0);
  std::vector<double> p(experts);
  std::vector<int64_t> order(experts);
  for (int64_t t = 0; t < tokens; ++t) {
    const float* row = logits.data() + t * experts;
    const double m = *std::max_element(row, row + experts);
    double sum = 0;
    for (int64_t e = 0; e < experts; ++e) sum += p[e] = std::exp(row[e] - m);
    for (auto& v : p) v /= sum;
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return p[a] > p[b]; });
    double picked = 0;
    for (int64_t j = 0; j < top_k; ++j) picked += p[order[j]];
    for (int64_t j = 0; j < top_k; ++j) {
      (*ids)[t * top_k + j] = order[j];
      (*weights)[t * top_k + j] = p[order[j]] / picked;
    }
  }
}

}  // namespace lightrl
