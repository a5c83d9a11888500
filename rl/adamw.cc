#include "rl/adamw.h"

#include <utility>

#include "policy/train_ops_cuda.h"

namespace lightrl {

MasterWeights::MasterWeights(std::vector<torch::Tensor> params) : params_(std::move(params)) {
  bool any_low = false;
  for (const auto& p : params_) any_low = any_low || p.scalar_type() != torch::kFloat32;
  if (!any_low) return;
  for (const auto& p : params_) masters_.push_back(p.detach().to(torch::kFloat32).clone());
}

void MasterWeights::Refresh(size_t i) {
  if (has_master(i)) params_[i].copy_(masters_[i]);
}

void AdamWLists::Add(torch::Tensor p, torch::Tensor g, torch::Tensor m, torch::Tensor v,
                     int64_t step, torch::Tensor out) {
  params.push_back(std::move(p));
  grads.push_back(std::move(g));
  avgs.push_back(std::move(m));
  avg_sqs.push_back(std::move(v));
  steps.push_back(step);
  outs.push_back(std::move(out));
}

void FusedAdamW(const AdamWLists& l, double lr, const torch::Tensor& grad_scale,
                const OptimizerOptions& o) {
  if (l.params.empty()) return;
  torch::NoGradGuard no_grad;
  if (MasterAdamWSupported(l.params.front().device())) {
    std::vector<MasterAdamWEntry> entries;
    for (size_t i = 0; i < l.params.size(); ++i) {
      entries.push_back({l.params[i], l.avgs[i], l.avg_sqs[i], l.grads[i], l.outs[i], l.steps[i]});
    }
    MasterAdamWCuda(entries, grad_scale, {lr, o.beta1, o.beta2, o.weight_decay, o.eps});
    return;
  }
  if (grad_scale.defined()) at::_foreach_mul_(l.grads, grad_scale);
  // The kernel reads each tensor's step count from a tensor on its device.
  std::vector<float> counts(l.steps.begin(), l.steps.end());
  auto steps = torch::tensor(counts).to(l.params.front().device()).unbind(0);
  at::_fused_adamw_(l.params, l.grads, l.avgs, l.avg_sqs, /*max_exp_avg_sqs=*/{}, steps, lr,
                    o.beta1, o.beta2, o.weight_decay, o.eps, /*amsgrad=*/false,
                    /*maximize=*/false);
  std::vector<torch::Tensor> to, from;
  for (size_t i = 0; i < l.params.size(); ++i) {
    if (!l.outs[i].defined()) continue;
    to.push_back(l.outs[i]);
    from.push_back(l.params[i]);
  }
  if (!to.empty()) at::_foreach_copy_(to, from);
}

torch::Tensor GlobalNorm(const std::vector<torch::Tensor>& grads) {
  return torch::stack(at::_foreach_norm(grads, 2, torch::kFloat32)).norm();
}

torch::Tensor ClipFactor(const torch::Tensor& norm, double grad_clip) {
  return (grad_clip / (norm + 1e-6)).clamp_max(1.0);
}

double ClipFactor(double norm, double grad_clip) { return grad_clip / (norm + 1e-6); }

std::unique_ptr<torch::optim::AdamW> MakeTorchAdamW(std::vector<torch::Tensor> tensors,
                                                    const OptimizerOptions& o) {
  return std::make_unique<torch::optim::AdamW>(
      std::move(tensors),
      torch::optim::AdamWOptions(o.lr).betas({o.beta1, o.beta2}).eps(o.eps).weight_decay(o.weight_decay));
}

void SetLr(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) {
    static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
  }
}

AdamW::AdamW(std::vector<torch::Tensor> tensors, const OptimizerOptions& options)
    : options_(options), optimizer_(MakeTorchAdamW(std::move(tensors), options)) {}

void AdamW::Step(const std::vector<Entry>& entries, double lr, const torch::Tensor& grad_scale) {
  AdamWLists lists;
  for (const Entry& e : entries) {
    if (!e.grad.defined()) continue;
    auto& slot = optimizer_->state()[e.tensor.unsafeGetTensorImpl()];
    if (!slot) {
      auto fresh = std::make_unique<torch::optim::AdamWParamState>();
      fresh->exp_avg(torch::zeros_like(e.tensor, torch::MemoryFormat::Preserve));
      fresh->exp_avg_sq(torch::zeros_like(e.tensor, torch::MemoryFormat::Preserve));
      slot = std::move(fresh);
    }
    auto& st = static_cast<torch::optim::AdamWParamState&>(*slot);
    st.step(st.step() + 1);
    lists.Add(e.tensor, e.grad, st.exp_avg(), st.exp_avg_sq(), st.step(), e.out);
  }
  FusedAdamW(lists, lr, grad_scale, options_);
}

}  // namespace lightrl
