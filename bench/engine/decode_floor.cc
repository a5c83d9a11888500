#include "bench/engine/decode_floor.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cmath>
#include <functional>

#include "absl/strings/str_cat.h"

namespace lightrl {

DecodeStepBytes DecodeFloorBytes(const PolicyModel& policy, int64_t dtype_bytes, int64_t batch,
                                 int64_t context, const EngineStats& stats) {
  const ModelConfig& c = policy.config();
  DecodeStepBytes out;
  for (const PolicyModel::WeightSpec& spec : policy.WeightSpecs()) {
    int64_t n = 1;
    for (int64_t d : spec.shape) n *= d;
    const int64_t bytes = n * dtype_bytes;
    if (spec.name.find("embed_tokens") != std::string::npos && !c.tie_word_embeddings) {
      out.embedding_rows += batch * c.hidden_size * dtype_bytes;
    } else if (spec.name.find(".experts.") != std::string::npos) {
      out.expert_weights += bytes;
    } else {
      out.dense_weights += bytes;
    }
  }
  const double e = static_cast<double>(std::max<int64_t>(1, c.num_local_experts));
  const double k = static_cast<double>(std::min<int64_t>(c.num_experts_per_tok, c.num_local_experts));
  const double touched = 1.0 - std::pow(1.0 - k / e, static_cast<double>(batch));
  out.expert_weights = static_cast<int64_t>(std::llround(out.expert_weights * touched));
  out.states = 2 * batch * stats.slot_bytes;
  out.kv = stats.page_size > 0 ? batch * context * stats.page_bytes / stats.page_size : 0;
  out.logits = batch * c.vocab_size * 4;
  return out;
}

PrefillWork PrefillFloorWork(const PolicyModel& policy, int64_t dtype_bytes, int64_t len) {
  const ModelConfig& c = policy.config();
  PrefillWork w;
  const double L = static_cast<double>(len), H = static_cast<double>(c.num_attention_heads);
  const double d = static_cast<double>(c.head_dim), hidden = static_cast<double>(c.hidden_size);
  const double inner = H * d;
  const double kv = static_cast<double>(c.num_key_value_heads) * d;
  const double experts = static_cast<double>(c.num_experts_per_tok) * 3 * hidden *
                         static_cast<double>(c.intermediate_size);
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    double params = experts + hidden * static_cast<double>(c.num_local_experts);
    if (c.is_lightning(layer)) {
      params += hidden * inner * 3 + inner * hidden * 2;  // qkv, gate, out
      const double block = std::min(L, static_cast<double>(c.block_size));
      // Per token and head: causal half of a block's QK^T and PV (2 * 2 * d * block / 2),
      // q S and k^T v against the d x d state (2 * 2 * d * d).
      w.attention_flops += L * H * (2 * d * block + 4 * d * d);
    } else {
      params += hidden * inner * 2 + hidden * kv * 2;  // q, o, k, v
      // Causal QK^T and PV: 2 * 2 * L^2 / 2 * d per head.
      w.attention_flops += 2 * L * L * H * d;
    }
    w.gemm_flops += 2 * L * params;
  }
  w.gemm_flops += 2 * hidden * static_cast<double>(c.vocab_size);  // the last position's logits
  for (const PolicyModel::WeightSpec& spec : policy.WeightSpecs()) {
    if (spec.name.find("embed_tokens") != std::string::npos) continue;  // rows gathered
    int64_t n = 1;
    for (int64_t dim : spec.shape) n *= dim;
    w.weight_bytes += n * dtype_bytes;
  }
  return w;
}

namespace {

absl::Status Check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}

// Milliseconds of `iters` runs of `op` after one warm-up run, by CUDA events on the
// default stream.
absl::StatusOr<float> TimeMs(int iters, const std::function<absl::Status()>& op) {
  cudaEvent_t start = nullptr, stop = nullptr;
  absl::Status s = Check(cudaEventCreate(&start), "cudaEventCreate");
  if (s.ok()) s = Check(cudaEventCreate(&stop), "cudaEventCreate");
  if (s.ok()) s = op();  // warm-up
  if (s.ok()) s = Check(cudaEventRecord(start), "cudaEventRecord");
  for (int i = 0; s.ok() && i < iters; ++i) s = op();
  if (s.ok()) s = Check(cudaEventRecord(stop), "cudaEventRecord");
  if (s.ok()) s = Check(cudaEventSynchronize(stop), "cudaEventSynchronize");
  float ms = 0;
  if (s.ok()) s = Check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
  if (start != nullptr) cudaEventDestroy(start);
  if (stop != nullptr) cudaEventDestroy(stop);
  if (!s.ok()) return s;
  return ms;
}

}  // namespace

absl::StatusOr<double> MatmulPeak(int64_t n) {
  void* a = nullptr;
  void* out = nullptr;
  cublasHandle_t handle = nullptr;
  auto check_blas = [](cublasStatus_t e, const char* what) {
    return e == CUBLAS_STATUS_SUCCESS ? absl::OkStatus()
                                      : absl::InternalError(absl::StrCat(what, ": cuBLAS status ", e));
  };
  constexpr int kIters = 10;
  const size_t bytes = static_cast<size_t>(n) * n * 2;  // bf16
  const float one = 1, zero = 0;
  // A and B are the same matrix (its values do not change the rate); C is FP32.
  absl::Status s = Check(cudaMalloc(&a, bytes), "cudaMalloc");
  if (s.ok()) s = Check(cudaMalloc(&out, 2 * bytes), "cudaMalloc");
  if (s.ok()) s = Check(cudaMemset(a, 0x3c, bytes), "cudaMemset");  // bf16 ~0.0115 each
  if (s.ok()) s = check_blas(cublasCreate(&handle), "cublasCreate");
  absl::StatusOr<float> ms = absl::UnknownError("not timed");
  if (!s.ok()) {
    ms = s;
  } else {
    ms = TimeMs(kIters, [&] {
      return check_blas(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a,
                                     CUDA_R_16BF, n, a, CUDA_R_16BF, n, &zero, out, CUDA_R_32F, n,
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                        "cublasGemmEx");
    });
  }
  if (a != nullptr) cudaFree(a);
  if (out != nullptr) cudaFree(out);
  if (handle != nullptr) cublasDestroy(handle);
  if (!ms.ok()) return ms.status();
  const double dn = static_cast<double>(n);
  return 2 * dn * dn * dn * kIters / (*ms * 1e-3);
}

absl::StatusOr<double> CopyBandwidth(int64_t bytes) {
  void* src = nullptr;
  void* dst = nullptr;
  constexpr int kIters = 20;
  absl::Status s = Check(cudaMalloc(&src, bytes), "cudaMalloc");
  if (s.ok()) s = Check(cudaMalloc(&dst, bytes), "cudaMalloc");
  if (s.ok()) s = Check(cudaMemset(src, 1, bytes), "cudaMemset");
  absl::StatusOr<float> ms = absl::UnknownError("not timed");
  if (!s.ok()) {
    ms = s;
  } else {
    ms = TimeMs(kIters, [&] {
      return Check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice), "cudaMemcpyAsync");
    });
  }
  if (src != nullptr) cudaFree(src);
  if (dst != nullptr) cudaFree(dst);
  if (!ms.ok()) return ms.status();
  return 2.0 * static_cast<double>(bytes) * kIters / (*ms * 1e-3);
}

}  // namespace lightrl
