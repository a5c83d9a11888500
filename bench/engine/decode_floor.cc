#include "bench/engine/decode_floor.h"

#include <cuda_runtime.h>

#include <cmath>

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

namespace {

absl::Status Check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}

}  // namespace

absl::StatusOr<double> CopyBandwidth(int64_t bytes) {
  void* src = nullptr;
  void* dst = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  auto release = [&] {
    if (src != nullptr) cudaFree(src);
    if (dst != nullptr) cudaFree(dst);
    if (start != nullptr) cudaEventDestroy(start);
    if (stop != nullptr) cudaEventDestroy(stop);
  };
  constexpr int kIters = 20;
  absl::Status s = Check(cudaMalloc(&src, bytes), "cudaMalloc");
  if (s.ok()) s = Check(cudaMalloc(&dst, bytes), "cudaMalloc");
  if (s.ok()) s = Check(cudaMemset(src, 1, bytes), "cudaMemset");
  if (s.ok()) s = Check(cudaEventCreate(&start), "cudaEventCreate");
  if (s.ok()) s = Check(cudaEventCreate(&stop), "cudaEventCreate");
  if (s.ok()) s = Check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice), "warm-up copy");
  if (s.ok()) s = Check(cudaEventRecord(start), "cudaEventRecord");
  for (int i = 0; s.ok() && i < kIters; ++i) {
    s = Check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice), "cudaMemcpyAsync");
  }
  if (s.ok()) s = Check(cudaEventRecord(stop), "cudaEventRecord");
  if (s.ok()) s = Check(cudaEventSynchronize(stop), "cudaEventSynchronize");
  float ms = 0;
  if (s.ok()) s = Check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
  release();
  if (!s.ok()) return s;
  return 2.0 * static_cast<double>(bytes) * kIters / (ms * 1e-3);
}

}  // namespace lightrl
