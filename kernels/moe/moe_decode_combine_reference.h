// Plain C++ oracle of the MoE combine kernel (kernels/moe/moe_decode_combine.h): the weighted sum in
// double, the kernel's two bf16 roundings spelled out. Torch-free and GPU-free; values
// travel as floats that hold bf16 numbers.
#pragma once

#include <cstdint>

namespace lightrl {

// out[t, i] = bf16(alpha * residual[t, i] + beta * bf16(sum_e combine[t, e] * y[e, t, i]))
// with y [experts, tokens, hidden], combine [tokens, experts], residual and out
// [tokens, hidden], all row-major.
void ReferenceMoeDecodeCombine(const float* y, const float* combine, const float* residual,
                         int64_t tokens, int64_t experts, int64_t hidden, double alpha,
                         double beta, float* out);

}  // namespace lightrl
