#include "rl/expert_shards.h"

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace lightrl {

int64_t ExpertOf(const std::string& name) {
  static const std::string kMarker = "block_sparse_moe.experts.";
  const size_t at = name.find(kMarker);
  if (at == std::string::npos) return -1;
  return std::stoll(name.substr(at + kMarker.size()));
}

absl::StatusOr<ExpertShardPlan> ExpertShardPlan::Make(const std::vector<std::string>& names,
                                                      const std::vector<int64_t>& numels,
                                                      int64_t num_experts, int64_t ep) {
  if (ep < 1 || num_experts % ep != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "data_parallel.expert_parallel = ", ep, " must divide the model's num_local_experts ", num_experts));
  }
  const int64_t per_shard = num_experts / ep;
  ExpertShardPlan plan;
  plan.replicated.assign(names.size(), 1);
  plan.shard_params.assign(ep, {});
  for (size_t i = 0; i < names.size(); ++i) {
    const int64_t e = ExpertOf(names[i]);
    plan.replicated[i] = e < 0;
    if (e < 0) continue;
    if (e >= num_experts) {
      return absl::InvalidArgumentError(absl::StrCat(
          names[i], " is expert ", e, " of a model with num_local_experts ", num_experts));
    }
    plan.shard_params[e / per_shard].push_back(i);
  }
  for (int64_t q = 0; q < ep; ++q) {
    int64_t numel = 0;
    for (size_t i : plan.shard_params[q]) numel += numels[i];
    if (q > 0 && numel != plan.shard_numel) {
      return absl::InvalidArgumentError(absl::StrCat("expert shard ", q, " has ", numel,
                                                     " elements, shard 0 ", plan.shard_numel));
    }
    plan.shard_numel = numel;
  }
  return plan;
}

absl::StatusOr<std::unique_ptr<ExpertShards>> ExpertShards::Create(
    ProcessGroup* group, int64_t ep, int64_t expert_tp, bool sharded, int64_t num_experts,
    const std::vector<std::string>& names, MasterWeights* masters,
    const OptimizerOptions& options, const torch::Device& device) {
  if (!sharded && expert_tp != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "expert_tp ", expert_tp, " needs a model that holds only its experts' FFN blocks "
        "(a sharded model: PolicyModel::CreateShard)"));
  }
  std::unique_ptr<ExpertShards> s(new ExpertShards());
  s->group_ = group;
  s->ep_ = ep;
  s->expert_tp_ = expert_tp;
  s->sharded_ = sharded;
  s->names_ = names;
  const int64_t block = ep * expert_tp;
  s->shard_ = group->rank() % block;
  s->comm_ = std::make_unique<ProcessGroupExpertComm>(group, ep, expert_tp);
  const auto replica_ranks =
      ProcessGroupExpertComm::ReplicaRanks(group->rank(), group->world_size(), ep, expert_tp);
  if (replica_ranks.size() > 1) s->replicas_ = group->impl().Subgroup(replica_ranks);
  if (sharded) {
    // Every expert parameter here is this rank's.
    s->replicated_.assign(names.size(), 1);
    for (size_t i = 0; i < names.size(); ++i) {
      if (ExpertOf(names[i]) < 0) continue;
      s->replicated_[i] = 0;
      s->local_.push_back(i);
      s->local_numel_ += masters->param(i).numel();
    }
  } else {
    std::vector<int64_t> numels;
    for (const auto& p : masters->params()) numels.push_back(p.numel());
    ASSIGN_OR_RETURN(s->plan_, ExpertShardPlan::Make(names, numels, num_experts, ep));
    s->replicated_ = s->plan_.replicated;
    s->local_ = s->plan_.shard_params[s->shard_];
    s->local_numel_ = s->plan_.shard_numel;
  }
  s->flat_ = torch::zeros({sharded ? s->local_numel_ : ep * s->plan_.shard_numel},
                          torch::TensorOptions().dtype(torch::kFloat32).device(device));
  std::vector<char> mine(masters->size(), 0);
  for (size_t i : s->local_) mine[i] = 1;
  std::vector<torch::Tensor> updated;
  for (size_t i = 0; i < masters->size(); ++i) {
    if (!s->replicated_[i] && !mine[i]) masters->Drop(i);
    if (mine[i]) updated.push_back(masters->Updated(i));
  }
  s->optimizer_ = MakeTorchAdamW(std::move(updated), options);
  return s;
}

void ExpertShards::LaunchGradReduce(MasterWeights& masters) {
  torch::NoGradGuard no_grad;
  int64_t offset = 0;
  for (size_t i : local()) {
    const torch::Tensor& p = masters.param(i);
    const int64_t n = p.numel();
    auto slot = flat_.narrow(0, offset, n);
    if (p.grad().defined()) {
      slot.copy_(p.grad().reshape({-1}));
    } else {
      slot.zero_();
    }
    offset += n;
  }
  if (replicas_) {
    std::vector<at::Tensor> t{flat_.narrow(0, 0, local_numel_)};
    grad_work_ = replicas_->allreduce(t);
  }
}

void ExpertShards::WaitGradReduce() {
  if (grad_work_) grad_work_->wait();
  grad_work_.reset();
}

void ExpertShards::AttachGrads(MasterWeights& masters) {
  // Every expert of this rank has a gradient, zero where no token reached it, as with one
  // process's dense MoE path; its replicas all step it alike.
  int64_t offset = 0;
  for (size_t i : local()) {
    const torch::Tensor& p = masters.param(i);
    const int64_t n = p.numel();
    masters.Updated(i).mutable_grad() = flat_.narrow(0, offset, n).view(p.sizes());
    offset += n;
  }
}

void ExpertShards::ReleaseGrads(MasterWeights& masters) {
  for (size_t i : local()) masters.Updated(i).mutable_grad().reset();
}

double ExpertShards::SquaredNorm() {
  // One copy of each shard counts (its expert-DP copies hold the same reduced gradient).
  std::vector<double> per_shard(ep_ * expert_tp_, 0.0);
  if (writes_state()) {
    per_shard[shard_] = flat_.narrow(0, 0, local_numel_).to(torch::kFloat64).pow(2).sum().item<double>();
  }
  auto status = group_->AllReduce(&per_shard, ReduceOp::kSum);
  TORCH_CHECK(status.ok(), status.message());
  double sq = 0;
  for (double v : per_shard) sq += v;
  return sq;
}

void ExpertShards::ScaleGrads(double factor) {
  if (factor < 1) flat_.narrow(0, 0, local_numel_).mul_(factor);
}

void ExpertShards::Step(double lr, MasterWeights& masters) {
  SetLr(*optimizer_, lr);
  optimizer_->step();
  torch::NoGradGuard no_grad;
  for (size_t i : local()) masters.Refresh(i);
  if (!sharded_) GatherExperts(masters);
}

// Every EP group all-gathers its experts, so that all ranks hold the same full weights
// again (replicas of a shard updated theirs identically).
void ExpertShards::GatherExperts(MasterWeights& masters) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> mine;
  for (size_t i : local()) mine.push_back(masters.Updated(i).detach().reshape({-1}).to(torch::kFloat32));
  std::vector<at::Tensor> in{torch::cat(mine)};
  std::vector<std::vector<at::Tensor>> out(1);
  for (int64_t q = 0; q < ep_; ++q) {
    out[0].push_back(flat_.narrow(0, q * plan_.shard_numel, plan_.shard_numel));
  }
  comm_->ep_backend().allgather(out, in)->wait();
  for (int64_t q = 0; q < ep_; ++q) {
    if (q == shard_) continue;
    int64_t offset = q * plan_.shard_numel;
    for (size_t i : plan_.shard_params[q]) {
      torch::Tensor& p = masters.param(i);
      const int64_t n = p.numel();
      p.copy_(flat_.narrow(0, offset, n).view(p.sizes()));
      offset += n;
    }
  }
}

}  // namespace lightrl
