// Helpers of the CUDA kernel tests: an owning device buffer that checks every CUDA call,
// bf16 bit tricks for poisoned outputs, the bf16 ulp, random bf16 inputs, the relative
// Frobenius error and a fresh seed.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/cuda_check.h"

namespace lightrl {

constexpr uint16_t kPoisonBits = 0xFFFF;  // a bf16 NaN

template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n) : n_(n) {
    CUDA_CHECK(cudaMalloc(&ptr_, std::max<size_t>(n, 1) * sizeof(T)));
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { Upload(host); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { cudaFree(ptr_); }
  T* get() const { return ptr_; }
  void Upload(const std::vector<T>& host) {
    CUDA_CHECK(cudaMemcpy(ptr_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> Download() const {
    std::vector<T> host(n_);
    CUDA_CHECK(cudaMemcpy(host.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }

 private:
  T* ptr_ = nullptr;
  size_t n_ = 0;
};

inline uint16_t Bits(__nv_bfloat16 x) { return static_cast<__nv_bfloat16_raw>(x).x; }

inline __nv_bfloat16 FromBits(uint16_t b) {
  __nv_bfloat16_raw raw;
  raw.x = b;
  return __nv_bfloat16(raw);
}

inline float ToFloat(__nv_bfloat16 x) { return __bfloat162float(x); }

// One bf16 ulp at |v| (the spacing of bf16 numbers around it).
inline double Bf16Ulp(double v) {
  const int exponent = std::max(std::ilogb(std::max(std::fabs(v), 1e-30)), -126);
  return std::ldexp(1.0, exponent - 7);
}

// Relative Frobenius error; +inf when any output is not finite (unwritten poison).
inline double RelErr(const std::vector<double>& out, const std::vector<double>& ref) {
  double num = 0.0;
  double den = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(out[i])) return INFINITY;
    num += (out[i] - ref[i]) * (out[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return den > 0.0 ? std::sqrt(num / den) : std::sqrt(num);
}

// n bf16 draws from N(mean, scale^2); `exact` receives them as floats.
inline std::vector<__nv_bfloat16> RandomBf16(size_t n, float scale, std::mt19937& rng,
                                             std::vector<float>* exact, float mean = 0.0f) {
  std::normal_distribution<float> normal(mean, scale);
  std::vector<__nv_bfloat16> out(n);
  exact->resize(n);
  for (size_t i = 0; i < n; ++i) {
    out[i] = __float2bfloat16_rn(normal(rng));
    (*exact)[i] = ToFloat(out[i]);
  }
  return out;
}

inline unsigned FreshSeed() { return std::random_device{}(); }

}  // namespace lightrl
