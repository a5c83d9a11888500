// Plain C++ oracle of the MoE routing kernel (kernels/moe/moe_routing.h), in
// double. Torch-free and GPU-free.
#pragma once

#include <cstdint>
#include <vector>

namespace lightrl {

// Row-major logits [tokens, experts]: per token the softmax, the top_k experts (larger
// probability first, ties to the lower index) and their renormalised weights, written to
// ids and weights [tokens, top_k].
void ReferenceMoeRouting(const std::vector<float>& logits, int64_t tokens, int64_t experts,
                         int64_t top_k, std::vector<int64_t>* ids, std::vector<double>* weights);

}  // namespace lightrl
