#include "policy/tensor_parallel.h"

namespace lightrl {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

TensorParallelComm* CommOf(AutogradContext* ctx) {
  return reinterpret_cast<TensorParallelComm*>(ctx->saved_data["comm"].toInt());
}

void SaveComm(AutogradContext* ctx, TensorParallelComm* comm) {
  ctx->saved_data["comm"] = reinterpret_cast<int64_t>(comm);
}

torch::Tensor AllReduced(const torch::Tensor& t, TensorParallelComm* comm) {
  auto out = t.clone();
  comm->AllReduce(out, TensorParallelComm::Op::kSum);
  return out;
}

class CopyToFunction : public torch::autograd::Function<CopyToFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               TensorParallelComm* comm) {
    SaveComm(ctx, comm);
    return x.view_as(x);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {AllReduced(grads[0], CommOf(ctx)), torch::Tensor()};
  }
};

class ReduceFromFunction : public torch::autograd::Function<ReduceFromFunction> {
 public:
  static torch::Tensor forward(AutogradContext*, const torch::Tensor& x, TensorParallelComm* comm) {
    return AllReduced(x, comm);
  }
  static variable_list backward(AutogradContext*, variable_list grads) {
    return {grads[0], torch::Tensor()};
  }
};

// The sum of the ranks' partial statistics, whose gradient is summed too: each rank's
// copy of the sum feeds only its own channels, so the whole gradient is the ranks' parts.
class SumBothWaysFunction : public torch::autograd::Function<SumBothWaysFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               TensorParallelComm* comm) {
    SaveComm(ctx, comm);
    return AllReduced(x, comm);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {AllReduced(grads[0], CommOf(ctx)), torch::Tensor()};
  }
};

class GatherSequenceFunction : public torch::autograd::Function<GatherSequenceFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               TensorParallelComm* comm, bool reduce_grad) {
    SaveComm(ctx, comm);
    ctx->saved_data["reduce_grad"] = reduce_grad;
    ctx->saved_data["rows"] = x.size(0);
    return comm->AllGather(x.contiguous());
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    TensorParallelComm* comm = CommOf(ctx);
    const int64_t n = ctx->saved_data["rows"].toInt();
    auto g = ctx->saved_data["reduce_grad"].toBool()
                 ? comm->ReduceScatter(grads[0].contiguous())
                 : grads[0].narrow(0, comm->tp_rank() * n, n).clone();
    return {g, torch::Tensor(), torch::Tensor()};
  }
};

class ReduceScatterSequenceFunction
    : public torch::autograd::Function<ReduceScatterSequenceFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               TensorParallelComm* comm) {
    SaveComm(ctx, comm);
    return comm->ReduceScatter(x.contiguous());
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {CommOf(ctx)->AllGather(grads[0].contiguous()), torch::Tensor()};
  }
};

class ScatterSequenceFunction : public torch::autograd::Function<ScatterSequenceFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               TensorParallelComm* comm) {
    SaveComm(ctx, comm);
    TORCH_CHECK(x.size(0) % comm->tp_size() == 0, "ScatterSequence: ", x.size(0),
                " rows do not split over ", comm->tp_size(), " ranks");
    const int64_t n = x.size(0) / comm->tp_size();
    return x.narrow(0, comm->tp_rank() * n, n).clone();
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {CommOf(ctx)->AllGather(grads[0].contiguous()), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor ScatterSequence(const torch::Tensor& x, TensorParallelComm& comm) {
  return ScatterSequenceFunction::apply(x, &comm);
}

torch::Tensor GatherSequence(const torch::Tensor& x, TensorParallelComm& comm, bool reduce_grad) {
  return GatherSequenceFunction::apply(x, &comm, reduce_grad);
}

torch::Tensor GatherColumns(const torch::Tensor& x, TensorParallelComm& comm) {
  TORCH_CHECK(x.dim() == 1 || x.dim() == 2, "GatherColumns: a 1-D or 2-D tensor, got ", x.sizes());
  auto rows = x.dim() == 1 ? x.unsqueeze(1) : x.t();
  auto joined = GatherSequence(rows.contiguous(), comm, /*reduce_grad=*/false);
  return x.dim() == 1 ? joined.squeeze(1) : joined.t();
}

torch::Tensor ReduceScatterSequence(const torch::Tensor& x, TensorParallelComm& comm) {
  return ReduceScatterSequenceFunction::apply(x, &comm);
}

torch::Tensor CopyToTensorParallel(const torch::Tensor& x, TensorParallelComm& comm) {
  return CopyToFunction::apply(x, &comm);
}

torch::Tensor ReduceFromTensorParallel(const torch::Tensor& x, TensorParallelComm& comm) {
  return ReduceFromFunction::apply(x, &comm);
}

torch::Tensor ShardedRmsNorm(const torch::Tensor& x, const torch::Tensor& weight, double eps,
                             int64_t full_dim, TensorParallelComm& comm) {
  auto xf = x.to(torch::kFloat32);
  auto sum_sq = SumBothWaysFunction::apply(xf.pow(2).sum(-1, /*keepdim=*/true), &comm);
  auto normed = xf * torch::rsqrt(sum_sq / static_cast<double>(full_dim) + eps);
  return weight * normed.to(x.scalar_type());
}

torch::Tensor VocabParallelEmbedding(const torch::Tensor& tokens, const torch::Tensor& weight_shard,
                                     TensorParallelComm& comm, bool sequence_parallel) {
  const int64_t rows = weight_shard.size(0), start = comm.tp_rank() * rows;
  auto local = tokens - start;
  auto owned = (local >= 0) & (local < rows);
  auto picked = torch::embedding(weight_shard, local.clamp(0, rows - 1));
  auto mine = torch::where(owned.unsqueeze(-1), picked, torch::zeros({}, picked.options()));
  return sequence_parallel ? ReduceScatterSequence(mine, comm) : ReduceFromTensorParallel(mine, comm);
}

torch::Tensor VocabParallelEntropy(const torch::Tensor& hidden, const torch::Tensor& weight_shard,
                                   double temperature, TensorParallelComm& comm) {
  torch::NoGradGuard no_grad;
  auto logits = torch::matmul(hidden.to(torch::kFloat32), weight_shard.to(torch::kFloat32).t()) /
                temperature;
  auto max = std::get<0>(logits.max(-1));
  comm.AllReduce(max, TensorParallelComm::Op::kMax);
  auto shifted = logits - max.unsqueeze(1);
  auto e = torch::exp(shifted);
  auto sum = e.sum(-1);
  comm.AllReduce(sum, TensorParallelComm::Op::kSum);
  // H = log Z - sum p * (logit - max), with the sum over every rank's columns.
  auto weighted = (e * shifted).sum(-1);
  comm.AllReduce(weighted, TensorParallelComm::Op::kSum);
  return torch::log(sum) - weighted / sum;
}

}  // namespace lightrl
