#include "policy/vocab_parallel.h"

#include <cmath>

namespace lightrl {

torch::Tensor TensorParallelComm::AllGather(const torch::Tensor& local) {
  TORCH_CHECK(local.dim() >= 1, "AllGather: a tensor of rank >= 1, got a scalar");
  auto sizes = local.sizes().vec();
  const int64_t n = sizes[0];
  sizes[0] = n * tp_size();
  auto full = torch::zeros(sizes, local.options());
  full.narrow(0, tp_rank() * n, n).copy_(local);
  AllReduce(full, Op::kSum);
  return full;
}

torch::Tensor TensorParallelComm::ReduceScatter(const torch::Tensor& full) {
  TORCH_CHECK(full.dim() >= 1 && full.size(0) % tp_size() == 0, "ReduceScatter: ",
              full.sizes(), " rows do not split over ", tp_size(), " ranks");
  auto sum = full.clone();
  AllReduce(sum, Op::kSum);
  const int64_t n = full.size(0) / tp_size();
  return sum.narrow(0, tp_rank() * n, n).clone();
}
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class VocabParallelLogprob : public torch::autograd::Function<VocabParallelLogprob> {
 public:
  static variable_list forward(AutogradContext* ctx, torch::Tensor hidden, torch::Tensor weight,
                               torch::Tensor targets, double temperature,
                               TensorParallelComm* comm) {
    const int64_t rows = weight.size(0);
    const int64_t start = comm->tp_rank() * rows;
    auto h = hidden.to(torch::kFloat32);
    auto w = weight.to(torch::kFloat32);
    auto logits = torch::matmul(h, w.t()) / temperature;  // [N, rows]
    // The row maxima over the whole vocabulary, for a stable exp.
    auto max = std::get<0>(logits.max(-1));
    comm->AllReduce(max, TensorParallelComm::Op::kMax);
    auto e = torch::exp(logits - max.unsqueeze(1));
    auto sum = e.sum(-1);
    comm->AllReduce(sum, TensorParallelComm::Op::kSum);
    // The chosen token's logit, from the rank owning it (zero elsewhere).
    auto owned = (targets >= start) & (targets < start + rows);
    auto local = (targets - start).clamp(0, rows - 1);
    auto chosen = logits.gather(1, local.unsqueeze(1)).squeeze(1) * owned.to(torch::kFloat32);
    comm->AllReduce(chosen, TensorParallelComm::Op::kSum);
    auto logp = chosen - max - torch::log(sum);
    ctx->save_for_backward({h, w, e / sum.unsqueeze(1), owned, local});
    ctx->saved_data["temperature"] = temperature;
    ctx->saved_data["comm"] = reinterpret_cast<int64_t>(comm);
    ctx->saved_data["hidden_dtype"] = static_cast<int64_t>(hidden.scalar_type());
    ctx->saved_data["weight_dtype"] = static_cast<int64_t>(weight.scalar_type());
    return {logp};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto& h = saved[0];
    const auto& w = saved[1];
    const auto& probs = saved[2];
    const auto& owned = saved[3];
    const auto& local = saved[4];
    const double temperature = ctx->saved_data["temperature"].toDouble();
    auto* comm = reinterpret_cast<TensorParallelComm*>(ctx->saved_data["comm"].toInt());
    auto g = grads[0].to(torch::kFloat32);  // [N]
    // d logp / d logits = (onehot - softmax) / T on this shard's columns.
    auto onehot = torch::zeros_like(probs).scatter_(1, local.unsqueeze(1),
                                                    owned.to(torch::kFloat32).unsqueeze(1));
    auto g_logits = (onehot - probs) * (g / temperature).unsqueeze(1);  // [N, rows]
    auto grad_weight = torch::matmul(g_logits.t(), h);                  // [rows, H]
    auto grad_hidden = torch::matmul(g_logits, w);                      // [N, H], this shard's part
    comm->AllReduce(grad_hidden, TensorParallelComm::Op::kSum);
    const auto hidden_dtype =
        static_cast<torch::ScalarType>(ctx->saved_data["hidden_dtype"].toInt());
    const auto weight_dtype =
        static_cast<torch::ScalarType>(ctx->saved_data["weight_dtype"].toInt());
    return {grad_hidden.to(hidden_dtype), grad_weight.to(weight_dtype), torch::Tensor(),
            torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor VocabParallelTokenLogprobs(const torch::Tensor& hidden,
                                         const torch::Tensor& weight_shard,
                                         const torch::Tensor& targets, double temperature,
                                         TensorParallelComm& comm) {
  TORCH_CHECK(temperature > 0 && std::isfinite(temperature),
              "VocabParallelTokenLogprobs: temperature must be finite and > 0, got ",
              temperature);
  TORCH_CHECK(hidden.dim() == 2 && weight_shard.dim() == 2 &&
                  hidden.size(1) == weight_shard.size(1),
              "VocabParallelTokenLogprobs: hidden ", hidden.sizes(), " and LM head shard ",
              weight_shard.sizes(), " must be [N, H] and [vocab / tp, H]");
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == hidden.size(0) &&
                  targets.scalar_type() == torch::kInt64,
              "VocabParallelTokenLogprobs: targets must be [", hidden.size(0), "] int64, got ",
              targets.sizes(), " ", targets.scalar_type());
  const int64_t vocab = weight_shard.size(0) * comm.tp_size();
  if (targets.numel() > 0) {
    const int64_t lo = targets.min().item<int64_t>(), hi = targets.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < vocab, "VocabParallelTokenLogprobs: targets must be in [0, ",
                vocab, "), got [", lo, ", ", hi, "]");
  }
  return VocabParallelLogprob::apply(hidden, weight_shard, targets, temperature, &comm)[0];
}

}  // namespace lightrl
