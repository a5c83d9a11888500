// Gradient reduction: a list of parameters' gradients summed over a process group in buckets
// launched from backward (autograd hooks), in FP32 or bf16. Owns the bucket plan, the buffer
// and the hooks; it takes a group and parameters, not the model, so other groups (tensor-
// parallel layouts) reuse it. It never updates a parameter.
#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "rl/learner_options.h"

namespace lightrl {

class SideStream;

// Where each reduced parameter's gradient lives in the flat reduction buffer, and the
// buckets it is reduced in. Slots are laid out in reverse parameter order (roughly the
// order backward produces gradients) and cut into buckets of at least `bucket_elems`
// elements (the last one may be smaller); every rank computes the same plan.
struct GradientBucketPlan {
  struct Slot {
    int64_t offset = 0, numel = 0;
    int64_t bucket = -1;  // -1: not reduced here
  };
  struct Bucket {
    int64_t begin = 0, end = 0;  // [begin, end) of the flat buffer
    std::vector<size_t> params;  // its parameters, ascending
  };
  std::vector<Slot> slots;  // by parameter
  std::vector<Bucket> buckets;
  int64_t total = 0;  // elements of all reduced parameters

  // `numels` by parameter; `reduced[i]` 0 leaves parameter i out.
  static GradientBucketPlan Make(const std::vector<int64_t>& numels,
                                 const std::vector<char>& reduced, int64_t bucket_elems);
};

class GradientReducer {
 public:
  // `backend`: the ranks whose gradients are summed (world_size of them); `params` by index,
  // `reduced[i]` whether parameter i's gradient is reduced here; `names` for errors. The
  // buffer is padded to a multiple of the world size (ZeRO-1 shards it). Fails naming the
  // parameter when bf16 reduction is asked for a parameter that is not bf16.
  static absl::StatusOr<std::unique_ptr<GradientReducer>> Create(
      c10::intrusive_ptr<c10d::Backend> backend, int64_t world_size,
      std::vector<torch::Tensor> params, std::vector<char> reduced,
      const std::vector<std::string>& names, const DataParallelOptions& options,
      const torch::Device& device);
  ~GradientReducer();

  // Launches each bucket from backward once its gradients and those of the buckets before
  // it are in (only on the last backward of an update, see Arm).
  void InstallHooks();
  // Before an update's first backward.
  void Begin();
  // Whether the backward about to run is the update's last (the hooks launch buckets only
  // then: earlier backwards still add to the gradients).
  void Arm(bool last) { armed_ = last; }
  // From autograd, once parameter i's gradient is accumulated.
  void OnGradReady(size_t i);
  // After an update's last backward (or none, for a rank without samples): reduces what the
  // hooks have not, finds which parameters some rank produced a gradient for (over all
  // parameters, reduced here or not) and waits for all of it. The reduced gradients are
  // then in flat(); the parameters' own gradients are left as they are.
  struct Counts {
    int64_t buckets = 0, in_backward = 0;
  };
  Counts Finish();

  // By parameter, after Finish: whether some rank's backward gave it a gradient. A single
  // process's AdamW skips parameters without one (an expert no token reached), so every
  // rank must skip exactly those.
  bool used(size_t i) const { return used_[i] != 0; }
  // The reduced gradient of parameter i (shaped as the parameter), a view of flat().
  const torch::Tensor& grad(size_t i) const { return grad_views_[i]; }
  // Every reduced gradient (FP32, or bf16 with grad_reduce_dtype bfloat16), in the plan's
  // slots, then zero padding to a multiple of the world size.
  const torch::Tensor& flat() const { return flat_; }
  const GradientBucketPlan& plan() const { return plan_; }
  bool reduced(size_t i) const { return reduced_[i] != 0; }

  // The global norm of flat() in FP32, in one reduction (a parameter no rank used holds
  // zeros there), on the device.
  torch::Tensor Norm() const;
  // The squared norm of the used parameters' reduced gradients, in float64; one read-back.
  double SquaredNorm() const;

 private:
  GradientReducer() = default;
  void Launch(size_t b);
  void LaunchReady();

  c10::intrusive_ptr<c10d::Backend> backend_;
  torch::Device device_ = torch::kCPU;
  std::vector<torch::Tensor> params_;
  std::vector<char> reduced_;
  GradientBucketPlan plan_;
  bool hooks_ = false;
  // Every reduced parameter is bf16 on a CUDA device with the kernels: each bucket is
  // filled by one gather kernel, which also zeroes the slots of gradients nobody produced,
  // so flat_ needs no zeroing pass (but for its padding).
  bool gather_kernel_ = false;
  bool reduce_bf16_ = false;  // flat_ is bf16, each bucket filled by one concatenation
  bool armed_ = false;
  // By bucket: parameters counted ready, and its all-reduce once launched.
  std::vector<int64_t> ready_;
  std::vector<c10::intrusive_ptr<c10d::Work>> work_;
  size_t next_bucket_ = 0;
  std::vector<char> copied_;  // by parameter: counted ready for its bucket in this update
  std::unique_ptr<SideStream> side_;  // where the buckets' copies and all-reduces are queued
  torch::Tensor flat_;
  std::vector<torch::Tensor> grad_views_;  // made once: Finish's callers read them every update
  std::vector<float> used_;
};

}  // namespace lightrl
