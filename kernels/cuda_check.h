// CUDA_CHECK for tests, benchmarks and tools: aborts with file:line and the CUDA error
// string when a runtime call fails. Library code never aborts: launchers return the
// cudaError_t of their own launches (cudaGetLastError) and let the caller decide.
#pragma once

#include <cstdio>
#include <cstdlib>

#include <cuda_runtime.h>

#define CUDA_CHECK(expr)                                                          \
  do {                                                                            \
    const cudaError_t cuda_check_err_ = (expr);                                   \
    if (cuda_check_err_ != cudaSuccess) {                                         \
      std::fprintf(stderr, "%s:%d: CUDA error %s (%s) in %s\n", __FILE__, __LINE__, \
                   cudaGetErrorName(cuda_check_err_),                             \
                   cudaGetErrorString(cuda_check_err_), #expr);                   \
      std::abort();                                                               \
    }                                                                             \
  } while (0)
