// Plain C++ oracle of the RoPE kernel (kernels/rope/rope.h): the rotation with its bf16
// roundings spelled out, from cos / sin tables given as floats holding bf16 numbers.
// Torch-free and GPU-free.
#pragma once

#include <cstdint>

namespace lightrl {

// y as LaunchRope writes it: x, y [tokens, heads, head_dim]; tables [*, rotary_dim].
void ReferenceRope(const float* x, const int64_t* positions, const float* cos_table,
                   const float* sin_table, int64_t tokens, int64_t heads, int64_t head_dim,
                   int64_t rotary_dim, float* y);

}  // namespace lightrl
