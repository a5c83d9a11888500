#include "rl/gradient_reducer.h"

#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "policy/train_ops_cuda.h"

namespace lightrl {

GradientBucketPlan GradientBucketPlan::Make(const std::vector<int64_t>& numels,
                                            const std::vector<char>& reduced,
                                            int64_t bucket_elems) {
  GradientBucketPlan plan;
  const size_t n = numels.size();
  plan.slots.resize(n);
  for (size_t k = n; k-- > 0;) {
    if (!reduced[k]) continue;
    if (plan.buckets.empty() || plan.buckets.back().end - plan.buckets.back().begin >= bucket_elems) {
      Bucket b;
      b.begin = b.end = plan.total;
      plan.buckets.push_back(b);
    }
    Slot& slot = plan.slots[k];
    slot.offset = plan.total;
    slot.numel = numels[k];
    slot.bucket = static_cast<int64_t>(plan.buckets.size()) - 1;
    plan.total += slot.numel;
    plan.buckets.back().end = plan.total;
  }
  for (size_t k = 0; k < n; ++k) {
    if (reduced[k]) plan.buckets[plan.slots[k].bucket].params.push_back(k);
  }
  return plan;
}

namespace {

class GradReadyHook : public torch::autograd::PostAccumulateGradHook {
 public:
  GradReadyHook(GradientReducer* reducer, size_t index) : reducer_(reducer), index_(index) {}
  void operator()(const torch::autograd::Variable&) override { reducer_->OnGradReady(index_); }

 private:
  GradientReducer* reducer_;
  size_t index_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<GradientReducer>> GradientReducer::Create(
    c10::intrusive_ptr<c10d::Backend> backend, int64_t world_size, std::vector<torch::Tensor> params,
    std::vector<char> reduced, const std::vector<std::string>& names,
    const DataParallelOptions& options, const torch::Device& device) {
  std::unique_ptr<GradientReducer> r(new GradientReducer());
  r->backend_ = std::move(backend);
  r->device_ = device;
  r->params_ = std::move(params);
  r->reduced_ = std::move(reduced);
  const size_t n = r->params_.size();
  std::vector<int64_t> numels;
  for (const auto& p : r->params_) numels.push_back(p.numel());
  const int64_t bucket_elems = std::max<int64_t>(1, static_cast<int64_t>(options.bucket_mb * 1e6 / 4));
  r->plan_ = GradientBucketPlan::Make(numels, r->reduced_, bucket_elems);
  r->ready_.assign(r->plan_.buckets.size(), 0);
  r->work_.resize(r->plan_.buckets.size());
  r->copied_.assign(n, 0);
  r->used_.assign(n, 0.f);
  r->side_ = std::make_unique<SideStream>(device);
  r->gather_kernel_ = r->plan_.total > 0;
  for (size_t k = 0; k < n; ++k) {
    if (r->reduced_[k] && r->params_[k].scalar_type() != torch::kBFloat16) r->gather_kernel_ = false;
  }
  r->reduce_bf16_ = options.grad_reduce_dtype == "bfloat16";
  if (r->reduce_bf16_) {
    for (size_t k = 0; k < n; ++k) {
      if (r->reduced_[k] && r->params_[k].scalar_type() != torch::kBFloat16) {
        return absl::InvalidArgumentError(absl::StrCat(
            "data_parallel.grad_reduce_dtype bfloat16 needs bf16 parameters; ",
            k < names.size() ? names[k] : std::to_string(k), " is ",
            c10::toString(r->params_[k].scalar_type())));
      }
    }
  }
  const int64_t shard = (r->plan_.total + world_size - 1) / world_size;
  r->flat_ = torch::zeros({world_size * shard}, torch::TensorOptions()
                                                  .dtype(r->reduce_bf16_ ? torch::kBFloat16 : torch::kFloat32)
                                                  .device(device));
  r->gather_kernel_ = !r->reduce_bf16_ && r->gather_kernel_ && GatherToFp32Supported(r->flat_);
  r->grad_views_.resize(n);
  for (size_t i = 0; i < n; ++i) {
    if (!r->reduced_[i]) continue;
    const auto& slot = r->plan_.slots[i];
    r->grad_views_[i] = r->flat_.narrow(0, slot.offset, slot.numel).view(r->params_[i].sizes());
  }
  return r;
}

GradientReducer::~GradientReducer() {
  if (!hooks_) return;
  for (auto& p : params_) torch::autograd::impl::set_post_acc_grad_hooks(p, nullptr);
}

void GradientReducer::InstallHooks() {
  for (size_t i = 0; i < params_.size(); ++i) {
    torch::autograd::impl::set_post_acc_grad_hooks(params_[i], std::make_unique<GradReadyHook>(this, i));
  }
  hooks_ = true;
}

// Bucket b's gradients into flat_ (bf16 -> FP32 where the model is bf16; one gather kernel
// for the whole bucket on CUDA), then its all-reduce, both on the side stream: they run
// beside the rest of the backward instead of between its kernels. The gradients' memory is
// kept until the copies have run.
void GradientReducer::Launch(size_t b) {
  const auto& bucket = plan_.buckets[b];
  auto range = flat_.narrow(0, bucket.begin, bucket.end - bucket.begin);
  bool one_kernel = gather_kernel_;
  for (size_t i : bucket.params) {
    if (params_[i].grad().defined() && !params_[i].grad().is_contiguous()) one_kernel = false;
  }
  side_->Run([&] {
    if (reduce_bf16_) {
      std::vector<torch::Tensor> parts;
      for (size_t i : bucket.params) {
        const auto& g = params_[i].grad();
        parts.push_back(g.defined() ? g.reshape({-1}) : torch::zeros({plan_.slots[i].numel}, range.options()));
      }
      // Slots are laid out in the bucket's reverse parameter order (GradientBucketPlan).
      std::reverse(parts.begin(), parts.end());
      at::cat_out(range, parts);
    } else if (one_kernel) {
      std::vector<torch::Tensor> srcs;
      std::vector<int64_t> offsets, numels;
      for (size_t i : bucket.params) {
        srcs.push_back(params_[i].grad());
        offsets.push_back(plan_.slots[i].offset - bucket.begin);
        numels.push_back(plan_.slots[i].numel);
      }
      GatherToFp32Cuda(srcs, offsets, numels, range);
    } else {
      for (size_t i : bucket.params) {
        if (params_[i].grad().defined()) {
          grad_views_[i].copy_(params_[i].grad());
        } else if (gather_kernel_) {
          grad_views_[i].zero_();
        }
      }
    }
    std::vector<at::Tensor> t{range};
    work_[b] = backend_->allreduce(t);
  });
  for (size_t i : bucket.params) side_->Keep(params_[i].grad());
}

void GradientReducer::LaunchReady() {
  while (next_bucket_ < plan_.buckets.size() &&
         ready_[next_bucket_] == static_cast<int64_t>(plan_.buckets[next_bucket_].params.size())) {
    Launch(next_bucket_++);
  }
}

void GradientReducer::OnGradReady(size_t i) {
  if (!armed_ || !reduced_[i] || copied_[i] || !params_[i].grad().defined()) return;
  torch::NoGradGuard no_grad;
  copied_[i] = 1;
  const int64_t b = plan_.slots[i].bucket;
  if (++ready_[b] == static_cast<int64_t>(plan_.buckets[b].params.size())) LaunchReady();
}

void GradientReducer::Begin() {
  if (gather_kernel_ || reduce_bf16_) {
    flat_.narrow(0, plan_.total, flat_.numel() - plan_.total).zero_();  // ZeRO-1 gathers into it
  } else {
    flat_.zero_();
  }
  std::fill(copied_.begin(), copied_.end(), 0);
  std::fill(ready_.begin(), ready_.end(), 0);
  for (auto& w : work_) w.reset();
  next_bucket_ = 0;
  armed_ = false;
}

GradientReducer::Counts GradientReducer::Finish() {
  armed_ = false;
  Counts counts;
  counts.buckets = static_cast<int64_t>(plan_.buckets.size());
  counts.in_backward = static_cast<int64_t>(next_bucket_);
  torch::NoGradGuard no_grad;
  std::vector<float> local(params_.size(), 0.f);
  for (size_t i = 0; i < params_.size(); ++i) {
    local[i] = params_[i].grad().defined() ? 1.f : 0.f;
    if (!reduced_[i] || copied_[i]) continue;
    // Unused in the last micro-batch, or by this rank altogether.
    copied_[i] = 1;
    ++ready_[plan_.slots[i].bucket];
  }
  LaunchReady();
  auto any_used = torch::tensor(local).to(device_);
  std::vector<at::Tensor> u{any_used};
  c10d::AllreduceOptions max;
  max.reduceOp = c10d::ReduceOp::MAX;
  auto used_work = backend_->allreduce(u, max);
  for (auto& w : work_) w->wait();
  used_work->wait();
  any_used = any_used.cpu();
  const float* any = any_used.data_ptr<float>();
  used_.assign(any, any + params_.size());
  return counts;
}

torch::Tensor GradientReducer::Norm() const {
  return at::linalg_vector_norm(flat_, 2, c10::nullopt, false, torch::kFloat32);
}

double GradientReducer::SquaredNorm() const {
  std::vector<torch::Tensor> sums;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!reduced_[i] || used_[i] == 0) continue;
    sums.push_back(flat_.narrow(0, plan_.slots[i].offset, plan_.slots[i].numel).to(torch::kFloat64).pow(2).sum());
  }
  return sums.empty() ? 0.0 : torch::stack(sums).sum().item<double>();
}

}  // namespace lightrl
