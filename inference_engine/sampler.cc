#include "inference_engine/sampler.h"

namespace lightrl {

SampledTokens SampleTokens(const torch::Tensor& logits, const std::vector<SamplerRow>& rows) {
  torch::InferenceMode guard;
  const int64_t R = logits.size(0), V = logits.size(1);
  TORCH_CHECK(static_cast<int64_t>(rows.size()) == R, "sampler: ", rows.size(), " rows for ", R,
              " logit rows");
  auto opts = torch::TensorOptions().dtype(torch::kFloat32);
  std::vector<float> temp(R), top_p(R), u(R);
  std::vector<int64_t> top_k(R);
  std::vector<uint8_t> greedy(R);
  bool filtered = false;
  for (int64_t r = 0; r < R; ++r) {
    greedy[r] = rows[r].temperature == 0;
    temp[r] = greedy[r] ? 1.f : static_cast<float>(rows[r].temperature);
    top_p[r] = static_cast<float>(rows[r].top_p);
    top_k[r] = rows[r].top_k > 0 ? std::min(rows[r].top_k, V) : V;
    u[r] = static_cast<float>(rows[r].uniform);
    filtered |= !greedy[r] && (top_k[r] < V || top_p[r] < 1.f);
  }
  auto dev = logits.device();
  auto t_temp = torch::tensor(temp, opts).to(dev).unsqueeze(1);
  auto logp = torch::log_softmax(logits.to(torch::kFloat32) / t_temp, -1);
  torch::Tensor choice;
  auto uni = torch::tensor(u, opts).to(dev).unsqueeze(1);
  if (filtered) {
    auto [sorted, order] = logp.exp().sort(-1, /*descending=*/true);
    auto rank = torch::arange(V, torch::TensorOptions().dtype(torch::kInt64).device(dev)).unsqueeze(0);
    auto k = torch::tensor(top_k, torch::kInt64).to(dev).unsqueeze(1);
    auto p = torch::tensor(top_p, opts).to(dev).unsqueeze(1);
    // Keep a token while the mass before it is under top_p (so the first always stays).
    auto before = sorted.cumsum(-1) - sorted;
    auto keep = (rank < k) & (before < p);
    auto kept = sorted * keep.to(torch::kFloat32);
    auto cdf = kept.cumsum(-1);
    auto idx = torch::searchsorted(cdf, uni * cdf.narrow(1, V - 1, 1), /*out_int32=*/false,
                                   /*right=*/true).clamp_max(V - 1);
    // Never land on a dropped token through rounding at the top of the cdf.
    idx = torch::minimum(idx, keep.sum(-1, true) - 1);
    choice = order.gather(1, idx);
  } else {
    auto cdf = logp.exp().cumsum(-1);
    choice = torch::searchsorted(cdf, uni * cdf.narrow(1, V - 1, 1), false, true).clamp_max(V - 1);
  }
  auto is_greedy = torch::tensor(greedy, torch::kUInt8).to(dev).to(torch::kBool).unsqueeze(1);
  choice = torch::where(is_greedy, logits.argmax(-1, true), choice);
  auto lp = logp.gather(1, choice).squeeze(1).to(torch::kCPU).contiguous();
  auto tok = choice.squeeze(1).to(torch::kCPU).contiguous();
  SampledTokens out;
  out.tokens.assign(tok.data_ptr<int64_t>(), tok.data_ptr<int64_t>() + R);
  out.logprobs.assign(lp.data_ptr<float>(), lp.data_ptr<float>() + R);
  return out;
}

}  // namespace lightrl
