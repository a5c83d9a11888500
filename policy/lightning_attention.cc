#include "policy/lightning_attention.h"

#include <algorithm>
#include <vector>

namespace lightrl {
namespace {

void CheckInputs(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                 const torch::Tensor& slope) {
  TORCH_CHECK(q.dim() == 4, "lightning attention: q must be [B, H, T, d], got ", q.sizes());
  TORCH_CHECK(k.sizes() == q.sizes(), "lightning attention: k ", k.sizes(), " != q ", q.sizes());
  TORCH_CHECK(v.size(0) == q.size(0) && v.size(1) == q.size(1) && v.size(2) == q.size(2),
              "lightning attention: v ", v.sizes(), " does not match q ", q.sizes());
  TORCH_CHECK(slope.dim() == 1 && slope.size(0) == q.size(1), "lightning attention: slope ",
              slope.sizes(), " must be [H=", q.size(1), "]");
}

torch::Tensor ZeroState(const torch::Tensor& q, const torch::Tensor& v) {
  return torch::zeros({q.size(0), q.size(1), q.size(3), v.size(3)},
                      q.options().dtype(torch::kFloat32));
}

}  // namespace

std::pair<torch::Tensor, torch::Tensor> LightningRecurrent(const torch::Tensor& q,
                                                           const torch::Tensor& k,
                                                           const torch::Tensor& v,
                                                           const torch::Tensor& slope,
                                                           torch::Tensor state) {
  CheckInputs(q, k, v, slope);
  const auto dtype = q.scalar_type();
  torch::Tensor s = state.defined() ? state.to(torch::kFloat32) : ZeroState(q, v);
  torch::Tensor lambda = torch::exp(-slope.to(torch::kFloat32)).view({1, -1, 1, 1});
  torch::Tensor qf = q.to(torch::kFloat32), kf = k.to(torch::kFloat32), vf = v.to(torch::kFloat32);
  std::vector<torch::Tensor> outs;
  outs.reserve(q.size(2));
  for (int64_t t = 0; t < q.size(2); ++t) {
    auto kt = kf.select(2, t).unsqueeze(-1);  // [B, H, d, 1]
    auto vt = vf.select(2, t).unsqueeze(-2);  // [B, H, 1, dv]
    s = lambda * s + torch::matmul(kt, vt);
    outs.push_back(torch::matmul(qf.select(2, t).unsqueeze(-2), s));  // [B, H, 1, dv]
  }
  torch::Tensor o = outs.empty() ? torch::zeros({q.size(0), q.size(1), 0, v.size(3)}, q.options())
                                 : torch::cat(outs, 2);
  return {o.to(dtype), s};
}

std::pair<torch::Tensor, torch::Tensor> LightningChunked(const torch::Tensor& q,
                                                         const torch::Tensor& k,
                                                         const torch::Tensor& v,
                                                         const torch::Tensor& slope,
                                                         int64_t block_size,
                                                         torch::Tensor state) {
  CheckInputs(q, k, v, slope);
  TORCH_CHECK(block_size > 0, "lightning attention: block_size must be > 0, got ", block_size);
  const auto dtype = q.scalar_type();
  const int64_t T = q.size(2);
  torch::Tensor s = state.defined() ? state.to(torch::kFloat32) : ZeroState(q, v);
  torch::Tensor sl = slope.to(torch::kFloat32).view({-1, 1, 1});  // [H, 1, 1]
  // Decay tables for a full block; a short last block uses their leading/trailing parts.
  const int64_t B = std::min(block_size, std::max<int64_t>(T, 1));
  auto idx = torch::arange(1, B + 1, q.options().dtype(torch::kFloat32));
  torch::Tensor q_decay = torch::exp(-sl * idx.view({-1, 1}));               // [H, B, 1]
  auto diff = idx.view({-1, 1}) - idx.view({1, -1});                          // i - j
  torch::Tensor diag = torch::exp(-sl * diff.clamp_min(0)) * (diff >= 0);     // [H, B, B]
  torch::Tensor qf = q.to(torch::kFloat32), kf = k.to(torch::kFloat32), vf = v.to(torch::kFloat32);
  std::vector<torch::Tensor> outs;
  for (int64_t start = 0; start < T; start += B) {
    const int64_t m = std::min(B, T - start);
    auto qb = qf.narrow(2, start, m), kb = kf.narrow(2, start, m), vb = vf.narrow(2, start, m);
    auto intra = torch::matmul(torch::matmul(qb, kb.transpose(-1, -2)) *
                                   diag.narrow(1, 0, m).narrow(2, 0, m),
                               vb);
    auto inter = torch::matmul(qb * q_decay.narrow(1, 0, m), s);
    outs.push_back(intra + inter);
    // k_j enters the carried state with weight lambda^(m-1-j).
    auto k_decay = torch::exp(-sl * (static_cast<double>(m) - idx.narrow(0, 0, m).view({-1, 1})));
    s = s * torch::exp(-sl * static_cast<double>(m)) +
        torch::matmul((kb * k_decay).transpose(-1, -2), vb);
  }
  torch::Tensor o = outs.empty() ? torch::zeros({q.size(0), q.size(1), 0, v.size(3)}, q.options())
                                 : torch::cat(outs, 2);
  return {o.to(dtype), s};
}

namespace {

class LightningTrainFunction : public torch::autograd::Function<LightningTrainFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& q,
                               const torch::Tensor& k, const torch::Tensor& v,
                               const torch::Tensor& slope, int64_t block_size) {
    ctx->save_for_backward({q, k, v, slope});
    ctx->saved_data["block_size"] = block_size;
    torch::NoGradGuard no_grad;
    return LightningChunked(q, k, v, slope, block_size).first;
  }

  // With G_t = sum_{s>=t} lambda^(s-t) q_s^T do_s (the gradient reaching S_t):
  //   dq_t = do_t S_t^T  = sum_{j<=t} lambda^(t-j) (do_t . v_j) k_j   (forward in time)
  //   dk_t = v_t G_t^T   = sum_{s>=t} lambda^(s-t) (v_t . do_s) q_s   (backward in time)
  //   dv_t = k_t G_t     = sum_{s>=t} lambda^(s-t) (k_t . q_s) do_s   (backward in time)
  // so each is the forward op on permuted (and time-reversed) inputs.
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    const auto& q = saved[0];
    const auto& k = saved[1];
    const auto& v = saved[2];
    const auto& slope = saved[3];
    const int64_t block = ctx->saved_data["block_size"].toInt();
    torch::Tensor d_o = grad_out[0].to(q.scalar_type());
    torch::NoGradGuard no_grad;
    auto rev = [](const torch::Tensor& x) { return x.flip({2}); };
    torch::Tensor dq = LightningChunked(d_o, v, k, slope, block).first;
    torch::Tensor dk = rev(LightningChunked(rev(v), rev(d_o), rev(q), slope, block).first);
    torch::Tensor dv = rev(LightningChunked(rev(k), rev(q), rev(d_o), slope, block).first);
    return {dq, dk, dv, torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor LightningAttentionTrain(const torch::Tensor& q, const torch::Tensor& k,
                                      const torch::Tensor& v, const torch::Tensor& slope,
                                      int64_t block_size) {
  CheckInputs(q, k, v, slope);
  return LightningTrainFunction::apply(q, k, v, slope, block_size);
}

}  // namespace lightrl
