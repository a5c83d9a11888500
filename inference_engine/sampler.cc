#include "inference_engine/sampler.h"

#ifdef LIGHTRL_ENGINE_CUDA
#include <cstring>

#include "inference_engine/cuda_ops.h"
#endif

namespace lightrl {
namespace {

bool IsGreedy(const SamplerRow& row) { return !(static_cast<float>(row.temperature) > 0.0f); }

int64_t EffectiveTopK(const SamplerRow& row, int64_t V) {
  return row.top_k > 0 ? std::min(row.top_k, V) : V;
}

#ifdef LIGHTRL_ENGINE_CUDA
// The fused kernel: the options go over in one copy, as a [R, 4] FP32 array, and the ids
// and logprobs come back in one.
SampledTokens SampleTokensOnCuda(const torch::Tensor& logits, const std::vector<SamplerRow>& rows) {
  const int64_t R = logits.size(0), V = logits.size(1);
  if (R == 0) return {};
  auto host = torch::empty({R, 4}, torch::kFloat32);
  float* h = host.data_ptr<float>();
  for (int64_t r = 0; r < R; ++r) {
    h[4 * r + 0] = IsGreedy(rows[r]) ? 0.0f : static_cast<float>(rows[r].temperature);
    h[4 * r + 1] = static_cast<float>(rows[r].top_p);
    h[4 * r + 2] = static_cast<float>(EffectiveTopK(rows[r], V));  // exact: V < 2^24
    h[4 * r + 3] = static_cast<float>(rows[r].uniform);
  }
  auto params = host.to(logits.device());
  auto served = logits;
  if (served.scalar_type() != torch::kFloat32 && served.scalar_type() != torch::kBFloat16) {
    served = served.to(torch::kFloat32);
  }
  if (served.stride(1) != 1) served = served.contiguous();
  auto back = SampleTokensCuda(served, params).packed.to(torch::kCPU);
  SampledTokens out;
  out.tokens.resize(R);
  out.logprobs.resize(R);
  const uint8_t* bytes = back.data_ptr<uint8_t>();
  std::memcpy(out.tokens.data(), bytes, R * sizeof(int64_t));
  std::memcpy(out.logprobs.data(), bytes + R * sizeof(int64_t), R * sizeof(float));
  return out;
}
#endif

}  // namespace

SampledTokens SampleTokens(const torch::Tensor& logits, const std::vector<SamplerRow>& rows) {
  torch::InferenceMode guard;
  TORCH_CHECK(logits.dim() == 2, "sampler: logits must be [rows, vocab], got ", logits.sizes());
  const int64_t R = logits.size(0), V = logits.size(1);
  TORCH_CHECK(static_cast<int64_t>(rows.size()) == R, "sampler: ", rows.size(), " rows for ", R,
              " logit rows");
#ifdef LIGHTRL_ENGINE_CUDA
  if (logits.is_cuda()) return SampleTokensOnCuda(logits, rows);
#endif
  // Per-row options in one host tensor, so a step makes one copy to the device: rows
  // temperature, top_p, top_k, uniform, greedy.
  auto host = torch::empty({5, R}, torch::kFloat64);
  auto h = host.accessor<double, 2>();
  bool all_greedy = true;
  for (int64_t r = 0; r < R; ++r) {
    const bool greedy = IsGreedy(rows[r]);
    h[0][r] = greedy ? 1.0 : rows[r].temperature;
    h[1][r] = rows[r].top_p;
    h[2][r] = static_cast<double>(EffectiveTopK(rows[r], V));
    h[3][r] = rows[r].uniform;
    h[4][r] = greedy ? 1.0 : 0.0;
    all_greedy &= greedy;
  }
  auto dev = logits.device();
  auto opts = torch::TensorOptions().dtype(torch::kFloat32).device(dev);
  auto x = logits.to(torch::kFloat32);
  torch::Tensor logp, choice;
  if (all_greedy) {
    logp = torch::log_softmax(x, -1);
    choice = logits.argmax(-1, true);
  } else {
    auto params = host.to(dev, /*non_blocking=*/false);
    auto t_temp = params[0].to(torch::kFloat32).unsqueeze(1);
    auto uni = params[3].to(torch::kFloat32).unsqueeze(1);
    logp = torch::log_softmax(x / t_temp, -1);
    // The sampling order: descending logit (descending probability at any T > 0), equal
    // logits by ascending id (the stable sort), the same for every row whatever its
    // filters, so a row's sample does not depend on its batch.
    auto order = std::get<1>(x.sort(/*stable=*/true, /*dim=*/-1, /*descending=*/true));
    auto sorted = logp.exp().gather(1, order);
    auto rank = torch::arange(V, opts.dtype(torch::kInt64)).unsqueeze(0);
    auto k = params[2].to(torch::kInt64).unsqueeze(1);
    auto p = params[1].to(torch::kFloat32).unsqueeze(1);
    // Keep a token while the mass before it is under top_p; top_p >= 1 keeps everything,
    // and the first always stays, whatever p rounds to in FP32 or the logits hold.
    auto before = sorted.cumsum(-1) - sorted;
    auto keep = (rank < k) & ((before < p) | (p >= 1.0) | (rank == 0));
    auto kept = sorted * keep.to(torch::kFloat32);
    auto cdf = kept.cumsum(-1);
    auto idx = torch::searchsorted(cdf, uni * cdf.narrow(1, V - 1, 1), /*out_int32=*/false,
                                   /*right=*/true).clamp_max(V - 1);
    // Never land on a dropped token through rounding at the top of the cdf.
    idx = torch::minimum(idx, keep.sum(-1, true) - 1);
    choice = order.gather(1, idx);
    auto is_greedy = params[4].gt(0.5).unsqueeze(1);
    choice = torch::where(is_greedy, logits.argmax(-1, true), choice);
  }
  // Token ids and logprobs come back in one copy (ids are exact in a double).
  auto lp = logp.gather(1, choice).squeeze(1);
  auto both = torch::stack({choice.squeeze(1).to(torch::kFloat64), lp.to(torch::kFloat64)})
                  .to(torch::kCPU).contiguous();
  const double* tok = both.data_ptr<double>();
  const double* lps = tok + R;
  SampledTokens out;
  out.tokens.resize(R);
  out.logprobs.resize(R);
  for (int64_t r = 0; r < R; ++r) {
    out.tokens[r] = static_cast<int64_t>(tok[r]);
    out.logprobs[r] = static_cast<float>(lps[r]);
  }
  return out;
}

}  // namespace lightrl
