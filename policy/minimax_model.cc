#include "policy/minimax_model.h"

#include <algorithm>
#include <cmath>

#include "policy/expert_parallel.h"
#include "policy/invariant_model.h"
#include "policy/lightning_attention.h"
#include "policy/lightning_cuda.h"
#include "policy/tensor_parallel.h"
#include "policy/train_ops_cuda.h"
#include "policy/vocab_parallel.h"

namespace lightrl {
namespace {

// Index tensors mapping packed token t to (document, position) of the padded [N, L] view.
struct PadIndex {
  torch::Tensor doc, pos;
  int64_t num_docs, max_len;
};

PadIndex MakePadIndex(const PackedLayout& layout, const torch::Device& device) {
  std::vector<int64_t> doc, pos;
  doc.reserve(layout.num_tokens());
  pos.reserve(layout.num_tokens());
  for (int64_t i = 0; i < layout.num_docs(); ++i) {
    for (int64_t t = layout.cu_seqlens[i]; t < layout.cu_seqlens[i + 1]; ++t) {
      doc.push_back(i);
      pos.push_back(t - layout.cu_seqlens[i]);
    }
  }
  auto opts = torch::TensorOptions().dtype(torch::kInt64);
  return {torch::tensor(doc, opts).to(device), torch::tensor(pos, opts).to(device),
          layout.num_docs(), layout.max_len()};
}

// [T, ...] -> [N, L, ...] with zeros after each document's end.
torch::Tensor Pad(const torch::Tensor& x, const PadIndex& index) {
  if (index.num_docs == 1) return x.unsqueeze(0);
  std::vector<int64_t> shape = {index.num_docs, index.max_len};
  for (int64_t i = 1; i < x.dim(); ++i) shape.push_back(x.size(i));
  return torch::zeros(shape, x.options()).index_put({index.doc, index.pos}, x);
}

torch::Tensor Unpad(const torch::Tensor& x, const PadIndex& index) {
  if (index.num_docs == 1) return x.squeeze(0);
  return x.index({index.doc, index.pos});
}

// x W^T with FP32 logits from bf16 operands on CUDA: the products of bf16 values are exact
// in FP32, so a bf16 GEMM accumulating and writing FP32 computes what an FP32 GEMM of the
// widened operands would, on tensor cores and without widened copies of W. The gradients
// go back in the operands' dtype (their products accumulate in FP32).
class Fp32OutLinearFunction : public torch::autograd::Function<Fp32OutLinearFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& w) {
    ctx->save_for_backward({x, w});
    return at::mm(x, w.t(), torch::kFloat32);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto& w = saved[1];
    auto g = grad_out[0].to(x.scalar_type());
    torch::Tensor dx, dw;
    if (ctx->needs_input_grad(0)) dx = at::mm(g, w);
    if (ctx->needs_input_grad(1)) dw = at::mm(g.t(), x);
    return {dx, dw};
  }
};

torch::Tensor Fp32OutLinear(const torch::Tensor& x, const torch::Tensor& w) {
  if (x.is_cuda() && x.scalar_type() == torch::kBFloat16 && w.scalar_type() == torch::kBFloat16 &&
      x.dim() == 2) {
    return Fp32OutLinearFunction::apply(x, w);
  }
  return torch::matmul(x.to(torch::kFloat32), w.to(torch::kFloat32).t());
}

// out[i] = input[index[i]], with a backward that is a gather too: readers [N, m] lists,
// for each input row, the output rows that read it (out.size(0) where fewer than m do),
// so grad_input[n] = sum over those rows of grad_out, without atomic scatter-adds.
class GatherRowsFunction : public torch::autograd::Function<GatherRowsFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& input,
                               const torch::Tensor& index, const torch::Tensor& readers) {
    ctx->save_for_backward({readers});
    return input.index_select(0, index);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    const auto readers = ctx->get_saved_variables()[0];
    auto g = grad_out[0];
    auto padded = torch::cat({g, torch::zeros({1, g.size(1)}, g.options())});
    auto picked = padded.index_select(0, readers.reshape(-1)).view({readers.size(0), readers.size(1), g.size(1)});
    auto grad = readers.size(1) == 1 ? picked.squeeze(1) : picked.to(torch::kFloat32).sum(1).to(g.scalar_type());
    return {grad, torch::Tensor(), torch::Tensor()};
  }
};

torch::Tensor GatherRows(const torch::Tensor& input, const torch::Tensor& index,
                         const torch::Tensor& readers) {
  return GatherRowsFunction::apply(input, index, readers);
}

// alpha * residual + beta * branch, as one kernel when beta is 1 (MiniMax's configs).
torch::Tensor MixResidual(const torch::Tensor& residual, double alpha, const torch::Tensor& branch,
                          double beta) {
  return torch::add(beta == 1 ? branch : branch * beta, residual, alpha);
}

torch::nn::Linear MakeLinear(int64_t in, int64_t out) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false));
}

// The comm a module built for a TP group of `tp` ranks runs with: null when tp is 1 (the
// whole module, no collective), else `comm`, which must be a group of that size.
TensorParallelComm* CheckedTp(int64_t tp, TensorParallelComm* comm, const char* where) {
  if (tp == 1) {
    TORCH_CHECK(comm == nullptr || comm->tp_size() == 1, where,
                ": the module holds the whole model, but ForwardOptions.tensor_parallel is a TP "
                "group of ", comm ? comm->tp_size() : 0);
    return nullptr;
  }
  TORCH_CHECK(comm != nullptr, where, ": the module is sharded over a TP group of ", tp,
              " ranks; ForwardOptions.tensor_parallel must be set");
  TORCH_CHECK(comm->tp_size() == tp, where, ": the module is sharded over ", tp,
              " ranks, ForwardOptions.tensor_parallel is a group of ", comm->tp_size());
  return comm;
}

// The input of a TP region (column-parallel projections): the same tokens on every rank
// (its gradient summed over the ranks' heads), or under sequence parallelism every rank's
// block of them gathered.
torch::Tensor EnterTensorParallel(const torch::Tensor& input, TensorParallelComm* comm,
                                  const ForwardOptions& options) {
  if (comm == nullptr) return input;
  return options.sequence_parallel ? GatherSequence(input, *comm, /*reduce_grad=*/true)
                                   : CopyToTensorParallel(input, *comm);
}

// The output of a TP region (a row-parallel projection's partial sums): all-reduced, or
// under sequence parallelism reduce-scattered to this rank's block of the tokens.
torch::Tensor LeaveTensorParallel(const torch::Tensor& partial, TensorParallelComm& comm,
                                  bool sequence_parallel) {
  return sequence_parallel ? ReduceScatterSequence(partial, comm)
                           : ReduceFromTensorParallel(partial, comm);
}

// What a checkpointed layer's backward needs to run its forward again: copies of the
// layout and options (the caller's may be gone by then), owned by the autograd node.
struct LayerCall : torch::CustomClassHolder {
  DecoderLayerImpl* layer = nullptr;
  PackedLayout layout;
  ForwardOptions options;
};

// A decoder layer whose forward keeps only its input: backward runs the layer again with
// gradients recorded and back-propagates through that, accumulating the parameters'
// gradients as the plain forward's backward would.
class CheckpointedLayerFunction : public torch::autograd::Function<CheckpointedLayerFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const torch::Tensor& x,
                                                c10::intrusive_ptr<LayerCall> call) {
    ctx->save_for_backward({x});
    torch::Tensor y, aux;
    {
      torch::NoGradGuard no_grad;
      std::tie(y, aux) = call->layer->forward(x, call->layout, call->options);
    }
    ctx->saved_data["call"] = c10::IValue::make_capsule(call);
    return {y, aux};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto call = c10::static_intrusive_pointer_cast<LayerCall>(ctx->saved_data["call"].toCapsule());
    auto x = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    torch::Tensor y, aux;
    {
      torch::AutoGradMode enable(true);
      std::tie(y, aux) = call->layer->forward(x, call->layout, call->options);
    }
    std::vector<torch::Tensor> outputs{y}, upstream{grads[0].defined() ? grads[0] : torch::zeros_like(y)};
    if (aux.defined() && aux.requires_grad() && grads[1].defined()) {
      outputs.push_back(aux);
      upstream.push_back(grads[1]);
    }
    torch::autograd::backward(outputs, upstream);
    return {x.grad(), torch::Tensor()};
  }
};

// Checks that `shard` splits `config` (heads, KV heads, vocabulary, experts, FFN width).
void CheckShard(const ModelConfig& config, const ShardCoords& shard) {
  const absl::Status s = shard.CheckModel(config);
  TORCH_CHECK(s.ok(), "model shard (", shard.ToString(), "): ", std::string(s.message()));
}

}  // namespace

int64_t PackedLayout::max_len() const {
  int64_t m = 0;
  for (size_t i = 0; i + 1 < cu_seqlens.size(); ++i) {
    m = std::max(m, cu_seqlens[i + 1] - cu_seqlens[i]);
  }
  return m;
}

PackedLayout PackedLayout::FromLengths(const std::vector<int64_t>& lengths) {
  PackedLayout layout;
  layout.cu_seqlens.push_back(0);
  for (int64_t n : lengths) layout.cu_seqlens.push_back(layout.cu_seqlens.back() + n);
  return layout;
}

torch::Tensor PackedPositions(const PackedLayout& layout, const torch::Device& device) {
  std::vector<int64_t> pos;
  pos.reserve(layout.num_tokens());
  for (int64_t i = 0; i < layout.num_docs(); ++i) {
    for (int64_t t = layout.cu_seqlens[i]; t < layout.cu_seqlens[i + 1]; ++t) {
      pos.push_back(t - layout.cu_seqlens[i]);
    }
  }
  return torch::tensor(pos, torch::TensorOptions().dtype(torch::kInt64)).to(device);
}

RMSNormImpl::RMSNormImpl(int64_t dim, double eps) : eps(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  // On CUDA, torch's fused kernels (FP32 statistics, one rounding) forward and backward.
  if (x.is_cuda() && x.scalar_type() == weight.scalar_type()) {
    return at::rms_norm(x, {x.size(-1)}, weight, eps);
  }
  auto xf = x.to(torch::kFloat32);
  auto normed = xf * torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * normed.to(x.scalar_type());
}

LightningAttentionImpl::LightningAttentionImpl(const ModelConfig& c, int64_t layer,
                                               const ShardCoords& shard)
    : num_heads(c.num_attention_heads / shard.tp),
      head_dim(c.head_dim),
      block_size(c.block_size),
      tp(shard.tp) {
  CheckShard(c, shard);
  const int64_t inner = num_heads * head_dim;
  qkv_proj = register_module("qkv_proj", MakeLinear(c.hidden_size, 3 * inner));
  out_proj = register_module("out_proj", MakeLinear(inner, c.hidden_size));
  output_gate = register_module("output_gate", MakeLinear(c.hidden_size, inner));
  norm = register_module("norm", RMSNorm(inner, /*eps=*/1e-6));
  // Each rank's heads decay at their own (global) heads' rates.
  std::vector<float> slopes(num_heads);
  const int64_t first = shard.tp_rank * num_heads;
  for (int64_t h = 0; h < num_heads; ++h) {
    slopes[h] = static_cast<float>(c.LightningSlope(layer, first + h));
  }
  slope = register_buffer("slope", torch::tensor(slopes));
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> LightningAttentionImpl::Project(
    const torch::Tensor& x) {
  auto qkv = torch::silu(qkv_proj(x)).view({x.size(0), num_heads, 3 * head_dim});
  auto parts = qkv.split(head_dim, -1);
  return {parts[0], parts[1], parts[2]};
}

torch::Tensor LightningAttentionImpl::Finish(const torch::Tensor& x, const torch::Tensor& o,
                                             TensorParallelComm* comm, bool sequence_parallel) {
  if (comm == nullptr) return out_proj(torch::sigmoid(output_gate(x)) * norm(o));
  // The norm spans every rank's heads; out_proj's partial sums add up over the group.
  auto normed = ShardedRmsNorm(o, norm->weight, norm->eps, tp * num_heads * head_dim, *comm);
  return LeaveTensorParallel(out_proj(torch::sigmoid(output_gate(x)) * normed), *comm,
                             sequence_parallel);
}

torch::Tensor LightningAttentionImpl::forward(const torch::Tensor& input, const PackedLayout& layout,
                                              const ForwardOptions& options) {
  TensorParallelComm* comm = CheckedTp(tp, options.tensor_parallel, "lightning attention");
  // Column-parallel projections: the input's gradient sums over the ranks' heads.
  const torch::Tensor x = EnterTensorParallel(input, comm, options);
  if (LightningCudaSupported(x.device(), x.scalar_type(), head_dim)) {
    // The kernels read the fused projection in place, documents packed, no padding.
    auto qkv = torch::silu(qkv_proj(x)).view({x.size(0), num_heads, 3 * head_dim});
    auto o = LightningPackedCuda(qkv, layout.cu_seqlens, slope);
    return Finish(x, o.view({x.size(0), num_heads * head_dim}), comm, options.sequence_parallel);
  }
  auto [q, k, v] = Project(x);
  PadIndex index = MakePadIndex(layout, x.device());
  auto to_bhtd = [&](const torch::Tensor& t) { return Pad(t, index).permute({0, 2, 1, 3}); };
  torch::Tensor o = options.train_lightning
                        ? LightningAttentionTrain(to_bhtd(q), to_bhtd(k), to_bhtd(v), slope,
                                                  block_size)
                        : LightningChunked(to_bhtd(q), to_bhtd(k), to_bhtd(v), slope, block_size)
                              .first;
  o = Unpad(o.permute({0, 2, 1, 3}), index).reshape({x.size(0), num_heads * head_dim});
  return Finish(x, o, comm, options.sequence_parallel);
}

SoftmaxAttentionImpl::SoftmaxAttentionImpl(const ModelConfig& c, const ShardCoords& shard)
    : num_heads(c.num_attention_heads / shard.tp),
      num_kv_heads(c.num_key_value_heads / shard.tp),
      head_dim(c.head_dim),
      rotary_dim(c.rotary_dim),
      rope_theta(c.rope_theta),
      tp(shard.tp) {
  // Split by KV heads: each rank keeps whole GQA groups (its KV heads and their queries).
  CheckShard(c, shard);
  q_proj = register_module("q_proj", MakeLinear(c.hidden_size, num_heads * head_dim));
  k_proj = register_module("k_proj", MakeLinear(c.hidden_size, num_kv_heads * head_dim));
  v_proj = register_module("v_proj", MakeLinear(c.hidden_size, num_kv_heads * head_dim));
  o_proj = register_module("o_proj", MakeLinear(num_heads * head_dim, c.hidden_size));
}

std::pair<torch::Tensor, torch::Tensor> SoftmaxAttentionImpl::RopeCosSin(
    const torch::Tensor& positions, torch::ScalarType dtype) const {
  auto fopts = torch::TensorOptions().dtype(torch::kFloat32).device(positions.device());
  auto inv_freq = 1.0 / torch::pow(rope_theta, torch::arange(0, rotary_dim, 2, fopts) /
                                                   static_cast<double>(rotary_dim));
  auto freqs = positions.to(torch::kFloat32).unsqueeze(-1) * inv_freq.unsqueeze(0);  // [T, rd/2]
  auto emb = torch::cat({freqs, freqs}, -1);                                       // [T, rd]
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

torch::Tensor SoftmaxAttentionImpl::ApplyRope(const torch::Tensor& x,
                                              const torch::Tensor& positions) const {
  if (rotary_dim == 0) return x;
  auto [cos_rows, sin_rows] = RopeCosSin(positions, x.scalar_type());
  auto cos = cos_rows.unsqueeze(1), sin = sin_rows.unsqueeze(1);  // [T, 1, rd]
  auto rot = x.narrow(-1, 0, rotary_dim);
  auto half = rotary_dim / 2;
  auto rotated = torch::cat({-rot.narrow(-1, half, half), rot.narrow(-1, 0, half)}, -1);
  auto out = rot * cos + rotated * sin;
  if (rotary_dim == head_dim) return out;
  return torch::cat({out, x.narrow(-1, rotary_dim, head_dim - rotary_dim)}, -1);
}

torch::Tensor SoftmaxAttentionImpl::forward(const torch::Tensor& input, const PackedLayout& layout,
                                            const ForwardOptions& options) {
  TensorParallelComm* comm = CheckedTp(tp, options.tensor_parallel, "softmax attention");
  const torch::Tensor x = EnterTensorParallel(input, comm, options);
  const int64_t T = x.size(0);
  auto positions = PackedPositions(layout, x.device());
  auto q = ApplyRope(q_proj(x).view({T, num_heads, head_dim}), positions);
  auto k = ApplyRope(k_proj(x).view({T, num_kv_heads, head_dim}), positions);
  auto v = v_proj(x).view({T, num_kv_heads, head_dim});
  PadIndex index = MakePadIndex(layout, x.device());
  auto to_bhtd = [&](const torch::Tensor& t) { return Pad(t, index).permute({0, 2, 1, 3}); };
  auto qp = to_bhtd(q);
  auto kp = to_bhtd(k).repeat_interleave(num_heads / num_kv_heads, 1);
  auto vp = to_bhtd(v).repeat_interleave(num_heads / num_kv_heads, 1);
  // Documents are right-padded, so the causal mask alone keeps real queries off padding.
  auto o = torch::scaled_dot_product_attention(qp, kp, vp, /*attn_mask=*/{}, /*dropout_p=*/0.0,
                                               /*is_causal=*/true,
                                               1.0 / std::sqrt(static_cast<double>(head_dim)));
  o = Unpad(o.permute({0, 2, 1, 3}), index).reshape({T, num_heads * head_dim});
  return comm ? LeaveTensorParallel(o_proj(o), *comm, options.sequence_parallel) : o_proj(o);
}

ExpertImpl::ExpertImpl(int64_t hidden, int64_t ffn) {
  w1 = register_module("w1", MakeLinear(hidden, ffn));
  w2 = register_module("w2", MakeLinear(ffn, hidden));
  w3 = register_module("w3", MakeLinear(hidden, ffn));
}

torch::Tensor ExpertImpl::forward(const torch::Tensor& x) {
  // On the GPU the gate's activation and product are one kernel each way.
  if (TrainKernelsSupported(x)) return w2(SwiGluCuda(w1(x), w3(x)));
  return w2(torch::silu(w1(x)) * w3(x));
}

SparseMoeImpl::SparseMoeImpl(const ModelConfig& c, const ShardCoords& shard)
    : num_experts(c.num_local_experts), top_k(c.num_experts_per_tok), shard(shard) {
  const absl::Status fits = shard.CheckModel(c);
  TORCH_CHECK(fits.ok(), "SparseMoe: shard ", shard.ToString(), ": ", fits.message());
  gate = register_module("gate", MakeLinear(c.hidden_size, num_experts));
  const ExpertRange held = LocalExperts(c, shard);
  first_held = held.first;
  num_held = held.count;
  for (int64_t e = first_held; e < first_held + num_held; ++e) {
    experts->update({{std::to_string(e), Expert(c.hidden_size, c.intermediate_size / shard.expert_tp).ptr()}});
  }
  register_module("experts", experts);
}

ExpertImpl* SparseMoeImpl::expert(int64_t e) {
  TORCH_CHECK(e >= first_held && e < first_held + num_held, "SparseMoe: expert ", e,
              " is not held by this rank (", shard.ToString(), " holds experts [", first_held,
              ", ", first_held + num_held, "))");
  return &experts->at<ExpertImpl>(std::to_string(e));
}

// Below this many token-expert assignments the MoE runs densely (see ForwardRouted).
constexpr int64_t kDenseMoeMaxAssignments = 1024;

torch::Tensor SparseMoeImpl::RouterLogits(const torch::Tensor& x) {
  // Router in FP32: near-ties between experts must not flip with the compute dtype.
  return Fp32OutLinear(x, gate->weight);
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> SparseMoeImpl::Route(
    const torch::Tensor& x) {
  auto probs = torch::softmax(RouterLogits(x), -1);
  auto [top_w, top_i] = probs.topk(top_k, -1);
  top_w = top_w / top_w.sum(-1, true);
  return {probs, top_w, top_i};
}

torch::Tensor SparseMoeImpl::CombineWeights(const torch::Tensor& x) {
  auto [probs, top_w, top_i] = Route(x);
  return torch::zeros({x.size(0), num_experts}, top_w.options()).scatter(1, top_i, top_w);
}

std::pair<torch::Tensor, torch::Tensor> SparseMoeImpl::forward(const torch::Tensor& x,
                                                                double capacity_factor) {
  const int64_t T = x.size(0);
  auto [probs, top_w, top_i] = Route(x);

  // Switch-style balance loss: E * sum_e (assignments to e / T) * mean router prob of e.
  auto counts = torch::zeros({num_experts}, probs.options())
                    .index_add(0, top_i.reshape(-1), torch::ones({T * top_k}, probs.options()));
  auto aux = T > 0 ? (counts / static_cast<double>(T) * probs.mean(0)).sum() * num_experts
                   : torch::zeros({}, probs.options());

  torch::Tensor keep;
  if (capacity_factor > 0 && T > 0) {
    // Assignments past an expert's capacity are dropped, in token order.
    const int64_t capacity = static_cast<int64_t>(
        std::ceil(capacity_factor * static_cast<double>(T * top_k) / num_experts));
    auto flat = top_i.reshape(-1);
    auto onehot = torch::one_hot(flat, num_experts);
    auto rank = (onehot.cumsum(0) * onehot).sum(-1) - 1;  // position within its expert
    keep = (rank < capacity).reshape({T, top_k});
  }
  return {ForwardRouted(x, top_w, top_i, keep), aux};
}

std::pair<torch::Tensor, torch::Tensor> SparseMoeImpl::ForwardSequenceParallel(
    const torch::Tensor& x, int64_t valid, TensorParallelComm& comm, double capacity_factor) {
  TORCH_CHECK(valid >= 0 && valid <= x.size(0), "sequence parallel MoE: ", valid,
              " valid tokens of ", x.size(0));
  auto [probs, top_w, top_i] = Route(x);
  // E * sum_e f_e * P_e over the whole batch: the assignment counts and the token count
  // (no gradient) summed over the group first, so this rank's part, E * sum_e f_e *
  // (its tokens' probs of e) / N, sums over the ranks to the aux loss; all-reduced once
  // more (identity backward), every rank holds that sum and its router the gradient of
  // its own tokens.
  // Each rank's assignment counts per expert and its token count, in rank order.
  auto f64 = torch::TensorOptions().dtype(torch::kFloat64).device(x.device());
  auto local = torch::zeros({1, num_experts + 1}, f64);
  auto mine = top_i.narrow(0, 0, valid).reshape(-1);
  local[0].narrow(0, 0, num_experts).index_add_(0, mine, torch::ones({mine.size(0)}, f64));
  local[0][num_experts] = static_cast<double>(valid);
  const auto by_rank = comm.AllGather(local);
  const auto stats = by_rank.sum(0);
  const double n = stats[num_experts].item<double>();
  torch::Tensor part;
  if (n > 0) {
    auto f = (stats.narrow(0, 0, num_experts) / n).to(probs.scalar_type());
    part = (f * probs.narrow(0, 0, valid).sum(0) / n).sum() * num_experts;
  } else {
    part = probs.sum() * 0;
  }
  torch::Tensor keep;
  if (capacity_factor > 0 && n > 0) {
    // An assignment's place within its expert over the whole batch: the earlier ranks'
    // counts, then its place among this rank's (padding rows are never kept).
    const auto capacity = static_cast<int64_t>(
        std::ceil(capacity_factor * n * static_cast<double>(top_k) / num_experts));
    auto i64 = torch::TensorOptions().dtype(torch::kInt64).device(x.device());
    auto before = by_rank.narrow(0, 0, comm.tp_rank()).sum(0).narrow(0, 0, num_experts).to(i64);
    auto flat = top_i.reshape(-1);
    auto onehot = torch::one_hot(flat, num_experts);
    auto place = (onehot.cumsum(0) * onehot).sum(-1) - 1 + before.index_select(0, flat);
    keep = (place < capacity).reshape({x.size(0), top_k});
    keep.narrow(0, valid, x.size(0) - valid).fill_(false);
  }
  return {ForwardRouted(x, top_w, top_i, keep),
          ReduceFromTensorParallel(part.reshape({1}), comm).reshape({})};
}

torch::Tensor SparseMoeImpl::ForwardRouted(const torch::Tensor& x, const torch::Tensor& top_w,
                                           const torch::Tensor& top_i, const torch::Tensor& keep) {
  TORCH_CHECK(holds_all_experts(), "SparseMoe: a block sharded as ", shard.ToString(),
              " runs only expert-parallel (ForwardOptions::expert_parallel)");
  const int64_t T = x.size(0);
  // Dropped assignments weigh zero.
  auto kept_w = keep.defined() ? top_w * keep.to(top_w.scalar_type()) : top_w;
  if (T * top_k <= kDenseMoeMaxAssignments) {
    // Few tokens (decode steps, small batches): run every expert on every token and weight
    // by the (mostly zero) routing matrix. It moves the same expert weights, never waits on
    // the device to learn which experts were hit, and so keeps decode capturable.
    // The weighted sum accumulates in FP32 and is rounded once.
    auto combine = torch::zeros({T, num_experts}, kept_w.options()).scatter(1, top_i, kept_w);
    auto acc = torch::zeros({T, x.size(1)}, x.options().dtype(torch::kFloat32));
    for (int64_t e = 0; e < num_experts; ++e) {
      acc.addcmul_(expert(e)->forward(x), combine.select(1, e).unsqueeze(1));
    }
    return acc.to(x.scalar_type());
  }
  // Assignments grouped by expert: one stable sort, one gather of the token rows, each
  // expert on its contiguous slice, one gather back combined with the routing weights in
  // FP32 (rounded once). Every move is a gather whose backward is a gather too (no atomic
  // scatter-adds, so gradients are deterministic). Dropped assignments sort last, past
  // every expert's slice, and are never computed. Each slice starts at a multiple of 128
  // rows (padding rows read token 0 and are never read back): the GEMM shapes then repeat
  // from step to step, so cuBLAS's choice for each is made once instead of on every call.
  constexpr int64_t align = 128;
  auto flat_e = top_i.reshape(-1);
  if (keep.defined()) flat_e = torch::where(keep.reshape(-1), flat_e, num_experts);
  auto order = std::get<1>(flat_e.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
  auto per_expert = torch::bincount(flat_e, /*weights=*/{}, num_experts + 1).to(torch::kCPU);
  auto n_acc = per_expert.accessor<int64_t, 1>();
  std::vector<int64_t> shift(num_experts + 1, 0);
  int64_t kept_count = 0, padded = 0;
  for (int64_t e = 0; e < num_experts; ++e) {
    shift[e] = padded - kept_count;
    kept_count += n_acc[e];
    padded += (n_acc[e] + align - 1) / align * align;
  }
  if (kept_count == 0) return torch::zeros_like(x);
  auto index_opts = torch::TensorOptions().dtype(torch::kInt64).device(x.device());
  auto kept = order.narrow(0, 0, kept_count);
  auto tok = kept.div(top_k, "floor");
  // pos: the padded row of each kept assignment (in sorted order); row_of: the padded row
  // of each assignment (t, j), `padded` (a zero row) when dropped; reader: for each padded
  // row, the assignment t * top_k + j that reads it, T * top_k (a zero row) for padding.
  auto pos = torch::arange(kept_count, index_opts) +
             torch::tensor(shift, torch::kInt64).to(x.device()).index_select(0, flat_e.index_select(0, kept));
  auto row_of = torch::full({T * top_k}, padded, index_opts).index_copy(0, kept, pos);
  auto src = torch::zeros({padded}, index_opts).index_copy(0, pos, tok);
  auto reader = torch::full({padded}, T * top_k, index_opts).index_copy(0, pos, kept);
  auto rows = GatherRows(x, src, row_of.view({T, top_k}));
  // One split (not a narrow per expert): its backward writes the slices' gradients into
  // one buffer, where a narrow's would zero-fill and add a whole-size copy per expert.
  std::vector<int64_t> lens(num_experts);
  for (int64_t e = 0; e < num_experts; ++e) lens[e] = (n_acc[e] + align - 1) / align * align;
  torch::Tensor computed;
  if (GroupedExpertsSupported(x)) {
    computed = GroupedExperts(rows, lens);
  } else {
    auto slices = rows.split_with_sizes(lens);
    std::vector<torch::Tensor> outs;
    for (int64_t e = 0; e < num_experts; ++e) {
      if (n_acc[e] > 0) outs.push_back(expert(e)->forward(slices[e]));
    }
    computed = torch::cat(outs);
  }
  // Dropped assignments read row 0 with weight 0.
  if (TrainKernelsSupported(computed) && x.size(1) % 8 == 0) {
    // Gather, weighting and sum as one kernel each way.
    return MoeCombineCuda(computed, row_of.clamp_max(padded - 1).view({T, top_k}), reader, kept_w);
  }
  auto y = GatherRows(computed, row_of.clamp_max(padded - 1), reader.unsqueeze(1));
  auto out = (y.view({T, top_k, x.size(1)}).to(torch::kFloat32) * kept_w.unsqueeze(-1)).sum(1);
  return out.to(x.scalar_type());
}

bool SparseMoeImpl::GroupedExpertsSupported(const torch::Tensor& x) {
  const auto& w = expert(first_held)->w1->weight;
  // The grouped GEMM's operands need 16-byte rows.
  return TrainKernelsSupported(x) && w.scalar_type() == torch::kBFloat16 && x.size(1) % 8 == 0 &&
         w.size(0) % 8 == 0;
}

torch::Tensor SparseMoeImpl::GroupedExperts(const torch::Tensor& rows, const std::vector<int64_t>& lens) {
  // Only the experts with rows take part (an expert no token reached gets no gradient, as
  // on the per-expert path); their weights are stacked for three grouped GEMMs, one launch
  // each way for all experts instead of one per expert.
  std::vector<torch::Tensor> w1, w2, w3;
  std::vector<int32_t> ends;
  int64_t end = 0;
  for (int64_t e = 0; e < num_experts; ++e) {
    if (lens[e] == 0) continue;
    auto* ex = expert(e);
    w1.push_back(ex->w1->weight);
    w2.push_back(ex->w2->weight);
    w3.push_back(ex->w3->weight);
    end += lens[e];
    ends.push_back(static_cast<int32_t>(end));
  }
  auto offs = torch::tensor(ends, torch::kInt32).to(rows.device());
  auto grouped = [&](const torch::Tensor& in, const std::vector<torch::Tensor>& w) {
    return at::_grouped_mm(in, torch::stack(w).transpose(1, 2), offs);
  };
  return grouped(SwiGluCuda(grouped(rows, w1), grouped(rows, w3)), w2);
}

std::pair<torch::Tensor, torch::Tensor> SparseMoeImpl::ForwardExpertParallel(
    const torch::Tensor& x, double capacity_factor, ExpertParallelComm& comm, int64_t valid,
    const MoeNumerics* numerics) {
  // Rows past `valid` are padding: routed nowhere, counted nowhere, their output zero.
  const int64_t T = valid < 0 ? x.size(0) : valid, P = comm.ep_size(), Q = comm.expert_tp_size();
  TORCH_CHECK(T <= x.size(0), "expert parallel: ", T, " valid rows of ", x.size(0));
  TORCH_CHECK(num_experts % P == 0, "expert parallel: expert_parallel ", P,
              " does not divide num_local_experts ", num_experts);
  const int64_t per_rank = num_experts / P, first = comm.ep_rank() * per_rank;
  // Either every expert whole (replicated experts, no expert-TP) or the comm's shard.
  const bool replicated = holds_all_experts() && Q == 1;
  TORCH_CHECK(replicated || (shard.ep == P && shard.ep_rank == comm.ep_rank() &&
                             shard.expert_tp == Q && shard.expert_tp_rank == comm.expert_tp_rank()),
              "expert parallel: the MoE block holds the experts of ", shard.ToString(),
              ", the comm is EP rank ", comm.ep_rank(), " of ", P, ", expert-TP rank ",
              comm.expert_tp_rank(), " of ", Q);
  auto [all_probs, top_w, top_i] = numerics && numerics->route ? numerics->route(x) : Route(x);
  const torch::Tensor probs = all_probs.narrow(0, 0, T);
  // Assignment a = token a / top_k, slot a % top_k.
  auto assigned = top_i.narrow(0, 0, T).reshape(-1);
  auto i64 = torch::TensorOptions().dtype(torch::kInt64).device(x.device());

  // Every rank's assignments per expert and tokens: the capacity, the aux loss and the
  // all-to-all sizes all follow from them, the same on every rank.
  auto local = torch::zeros({num_experts + 1}, i64);
  local.narrow(0, 0, num_experts).index_add_(0, assigned, torch::ones_like(assigned));
  local.narrow(0, num_experts, 1).fill_(T);
  const torch::Tensor counts = comm.AllGather(local);
  const ExpertDispatchPlan plan =
      PlanExpertDispatch(counts, top_k, capacity_factor, comm.rank(), comm.EpGroupOf(comm.rank()));

  // This rank's part of E * sum_e f_e * P_e over all ranks' tokens: f_e is known whole
  // (counts carry no gradient) and P_e is a sum over ranks, so the parts add up to it and
  // so do their gradients, with no collective in backward.
  torch::Tensor aux;
  if (plan.total_tokens > 0) {
    const double n = static_cast<double>(plan.total_tokens);
    auto f = torch::tensor(plan.total_counts, torch::TensorOptions().dtype(torch::kInt64))
                 .to(probs.device(), torch::kFloat32) / n;
    aux = (f * probs.sum(0) / n).sum() * num_experts;
  } else {
    aux = probs.sum() * 0;
  }

  // The kept assignments, by expert (so by destination rank), in token order within one.
  torch::Tensor kept_ids;
  if (plan.capacity >= 0) {
    auto onehot = torch::one_hot(assigned, num_experts);
    auto position = (onehot.cumsum(0) * onehot).sum(-1) - 1 +
                    torch::tensor(plan.prefix, i64).index_select(0, assigned);
    kept_ids = (position < plan.capacity).nonzero().squeeze(-1);
  } else {
    kept_ids = torch::arange(assigned.size(0), i64);
  }
  auto order = std::get<1>(torch::sort(assigned.index_select(0, kept_ids),
                                       /*stable=*/std::optional<bool>(true), /*dim=*/0));
  auto send_ids = kept_ids.index_select(0, order);
  int64_t num_send = 0;
  for (int64_t s : plan.send) num_send += s;
  TORCH_CHECK(send_ids.size(0) == num_send, "expert parallel: ", send_ids.size(0),
              " kept assignments on this rank, the plan has ", num_send);
  auto send_tokens = send_ids.div(top_k, "floor");
  auto received = ExpertAllToAll(x.index_select(0, send_tokens), plan.send, plan.recv, comm);

  // Under expert-TP the members of this rank's expert-TP group hold blocks of the same
  // experts: each runs its block on the rows all of them received (an all-gather, member
  // order) and the partial outputs are summed back to the member that received each row.
  std::vector<ExpertDispatchPlan> members;
  std::vector<int64_t> member_rows;
  torch::Tensor rows = received;
  if (Q == 1) {
    members.push_back(plan);
  } else {
    for (int64_t m : comm.ExpertTpGroup()) {
      members.push_back(m == comm.rank() ? plan
                                         : PlanExpertDispatch(counts, top_k, capacity_factor, m,
                                                              comm.EpGroupOf(m)));
      int64_t n = 0;
      for (int64_t r : members.back().recv) n += r;
      member_rows.push_back(n);
    }
    rows = ExpertTpAllGather(received, member_rows, comm);
  }
  // Rows are grouped by member, sender, then expert; each expert runs once on its rows.
  std::vector<int64_t> sizes(per_rank, 0), by_expert;
  std::vector<std::vector<int64_t>> start(members.size(), std::vector<int64_t>(P, 0));
  int64_t offset = 0;
  for (size_t m = 0; m < members.size(); ++m) {
    for (int64_t q = 0; q < P; ++q) {
      start[m][q] = offset;
      offset += members[m].recv[q];
    }
  }
  for (int64_t j = 0; j < per_rank; ++j) {
    for (size_t m = 0; m < members.size(); ++m) {
      for (int64_t q = 0; q < P; ++q) {
        const auto& by = members[m].recv_by_expert[q];
        sizes[j] += by[j];
        if (per_rank == 1) continue;
        int64_t at = start[m][q];
        for (int64_t i = 0; i < j; ++i) at += by[i];
        for (int64_t r = 0; r < by[j]; ++r) by_expert.push_back(at + r);
      }
    }
  }
  torch::Tensor perm, grouped = rows;
  if (per_rank > 1) {
    perm = torch::tensor(by_expert, torch::TensorOptions().dtype(torch::kInt64)).to(x.device());
    grouped = rows.index_select(0, perm);
  }
  std::vector<torch::Tensor> outs;
  auto slices = grouped.split_with_sizes(sizes);
  for (int64_t j = 0; j < per_rank; ++j) {
    // Also with no rows: the expert's weights get a (zero) gradient and the graph stays
    // connected from the return all-to-all back to the dispatch.
    ExpertImpl& e = *expert(first + j);
    outs.push_back(numerics && numerics->run_expert ? numerics->run_expert(e, slices[j])
                                                    : e.forward(slices[j]));
  }
  auto computed = torch::cat(outs);
  if (per_rank > 1) {
    computed = torch::zeros_like(computed).index_copy(0, perm, computed);
  }
  if (Q > 1 && numerics && numerics->expert_outputs_whole) {
    int64_t mine = 0;  // this member's rows come after the earlier members'
    for (int64_t m = 0; m < comm.expert_tp_rank(); ++m) mine += member_rows[m];
    computed = computed.narrow(0, mine, member_rows[comm.expert_tp_rank()]);
  } else if (Q > 1) {
    computed = ExpertTpReduceScatter(computed, member_rows, comm);
  }
  auto returned = ExpertAllToAll(computed, plan.recv, plan.send, comm);
  if (numerics && numerics->combine) return {numerics->combine(x, returned, send_ids, top_w), aux};
  auto w = top_w.reshape(-1).index_select(0, send_ids).unsqueeze(-1);
  auto out = torch::zeros_like(x).index_add(0, send_tokens,
                                            (returned.to(torch::kFloat32) * w).to(x.scalar_type()));
  return {out, aux};
}

torch::Tensor SparseMoeImpl::ForwardReplicatedExpertParallel(const torch::Tensor& x,
                                                             ExpertParallelComm& comm,
                                                             const MoeNumerics* numerics,
                                                             TensorParallelComm* rows_group) {
  const int64_t P = comm.ep_size(), Q = comm.expert_tp_size(), T = x.size(0);
  TORCH_CHECK(comm.world_size() == P * Q,
              "replicated expert parallelism: the comm's ranks are one EP group, or one EP "
              "group per expert-TP rank; it has ", comm.world_size(), " ranks in EP groups of ",
              P, ", expert-TP ", Q);
  // Rank (EP rank i, expert-TP rank j) dispatches block j * P + i of the rows; with
  // rows_group, x is that TP group's alone (attention data parallelism: the EP group spans
  // several TP groups, each with its own tokens) and its member t dispatches block t.
  const int64_t parts = rows_group != nullptr ? rows_group->tp_size() : P * Q;
  TORCH_CHECK(rows_group == nullptr || (Q == 1 && P % parts == 0), "expert parallelism over "
              "attention data-parallel TP groups: the EP group of ", P, " must hold whole TP "
              "groups of ", parts, ", without expert-TP (", Q, ")");
  const int64_t index =
      rows_group != nullptr ? rows_group->tp_rank() : comm.expert_tp_rank() * P + comm.ep_rank();
  const int64_t rows = (T + parts - 1) / parts;
  const int64_t begin = std::min(T, index * rows);
  const int64_t valid = std::min(T, begin + rows) - begin;
  auto block = torch::zeros({rows, x.size(1)}, x.options());
  if (valid > 0) block.narrow(0, 0, valid).copy_(x.narrow(0, begin, valid));
  auto out = ForwardExpertParallel(block, /*capacity_factor=*/0, comm, valid, numerics).first;
  if (rows_group != nullptr) return rows_group->AllGather(out).narrow(0, 0, T);
  // Each member sends its block to all: the EP group's blocks j * P .. j * P + P - 1 in
  // order, then the expert-TP group's runs of P blocks in member order.
  const std::vector<int64_t> counts(P, rows);
  out = comm.AllToAll(out.repeat({P, 1}), counts, counts);
  if (Q > 1) {
    const std::vector<int64_t> runs(Q, P * rows);
    out = comm.ExpertTpAllToAll(out.repeat({Q, 1}), runs, runs);
  }
  return out.narrow(0, 0, T);
}

DecoderLayerImpl::DecoderLayerImpl(const ModelConfig& c, int64_t layer, const ShardCoords& shard)
    : postnorm(c.postnorm) {
  input_layernorm = register_module("input_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
  post_attention_layernorm =
      register_module("post_attention_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
  if (c.is_lightning(layer)) {
    lightning = register_module("self_attn", LightningAttention(c, layer, shard));
    attn_alpha = c.linear_attn_alpha;
    attn_beta = c.linear_attn_beta;
  } else {
    softmax = register_module("self_attn", SoftmaxAttention(c, shard));
    attn_alpha = c.full_attn_alpha;
    attn_beta = c.full_attn_beta;
  }
  block_sparse_moe = register_module("block_sparse_moe", SparseMoe(c, shard));
  mlp_alpha = c.mlp_alpha;
  mlp_beta = c.mlp_beta;
}

std::pair<torch::Tensor, torch::Tensor> DecoderLayerImpl::forward(const torch::Tensor& x,
                                                                  const PackedLayout& layout,
                                                                  const ForwardOptions& options) {
  const Block attention = [&](const torch::Tensor& n1) {
    // An expert-parallel rank without tokens still runs the MoE blocks' collectives.
    if (n1.size(0) == 0) return torch::zeros_like(n1);
    return lightning ? lightning->forward(n1, layout, options)
                     : softmax->forward(n1, layout, options);
  };
  if (!options.sequence_parallel) return ForwardWith(x, attention, options);
  // Sequence parallel: the MoE runs on this rank's block of the tokens, padding left out
  // of its statistics.
  TensorParallelComm& comm = *options.tensor_parallel;
  const int64_t block = layout.num_tokens() / comm.tp_size();
  const int64_t valid = std::clamp<int64_t>(
      layout.num_tokens() - layout.padding - comm.tp_rank() * block, 0, block);
  torch::Tensor aux;
  auto out = ForwardWith(x, attention, options, [&](const torch::Tensor& n2) {
    auto [mlp, part] =
        options.expert_parallel != nullptr
            ? block_sparse_moe->ForwardExpertParallel(n2, options.moe_capacity_factor,
                                                      *options.expert_parallel, valid)
            : block_sparse_moe->ForwardSequenceParallel(n2, valid, comm,
                                                        options.moe_capacity_factor);
    aux = part;
    return mlp;
  });
  return {out.first, aux};
}

std::pair<torch::Tensor, torch::Tensor> DecoderLayerImpl::ForwardWith(const torch::Tensor& x,
                                                                    const Block& attention,
                                                                    const ForwardOptions& options,
                                                                    const Block& moe) {
  auto n1 = input_layernorm(x);
  auto h = MixResidual(postnorm ? n1 : x, attn_alpha, attention(n1), attn_beta);
  auto n2 = post_attention_layernorm(h);
  torch::Tensor mlp, aux;
  if (moe) {
    mlp = moe(n2);
  } else if (options.expert_parallel != nullptr) {
    std::tie(mlp, aux) = block_sparse_moe->ForwardExpertParallel(n2, options.moe_capacity_factor,
                                                                 *options.expert_parallel);
  } else {
    std::tie(mlp, aux) = block_sparse_moe->forward(n2, options.moe_capacity_factor);
  }
  return {MixResidual(postnorm ? n2 : h, mlp_alpha, mlp, mlp_beta), aux};
}

MiniMaxModelImpl::MiniMaxModelImpl(const ModelConfig& c, const ShardCoords& shard) {
  CheckShard(c, shard);
  embed_tokens = register_module(
      "embed_tokens",
      torch::nn::Embedding(torch::nn::EmbeddingOptions(c.vocab_size / shard.tp, c.hidden_size)));
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) layers->push_back(DecoderLayer(c, i, shard));
  register_module("layers", layers);
  norm = register_module("norm", RMSNorm(c.hidden_size, c.rms_norm_eps));
}

MiniMaxForCausalLMImpl::MiniMaxForCausalLMImpl(const ModelConfig& config, const ShardCoords& shard)
    : config_(config), shard_(shard) {
  CheckShard(config, shard);
  model = register_module("model", MiniMaxModel(config, shard));
  lm_head = register_module("lm_head", MakeLinear(config.hidden_size, config.vocab_size / shard.tp));
  if (config.tie_word_embeddings) lm_head->weight = model->embed_tokens->weight;
}

namespace {

// The decoder layers over x (checkpointed per layer when asked and recording gradients):
// the last layer's output and the sum of the layers' aux losses.
std::pair<torch::Tensor, torch::Tensor> RunDecoderLayers(MiniMaxModelImpl& model, torch::Tensor x,
                                                         const PackedLayout& layout,
                                                         const ForwardOptions& options) {
  auto aux = torch::zeros({}, x.options().dtype(torch::kFloat32));
  const bool checkpoint = options.checkpoint_layers && torch::GradMode::is_enabled();
  for (const auto& layer : *model.layers) {
    auto* decoder = layer->as<DecoderLayerImpl>();
    torch::Tensor y, layer_aux;
    if (checkpoint && x.requires_grad()) {
      auto call = c10::make_intrusive<LayerCall>();
      call->layer = decoder;
      call->layout = layout;
      call->options = options;
      auto outs = CheckpointedLayerFunction::apply(x, call);
      y = outs[0], layer_aux = outs[1];
    } else {
      std::tie(y, layer_aux) = decoder->forward(x, layout, options);
    }
    x = y;
    aux = aux + layer_aux;
  }
  return {x, aux};
}

}  // namespace

ForwardOutput MiniMaxForCausalLMImpl::Forward(const torch::Tensor& tokens,
                                              const PackedLayout& layout,
                                              const ForwardOptions& options) {
  TORCH_CHECK(tokens.dim() == 1 && tokens.size(0) == layout.num_tokens(), "tokens ",
              tokens.sizes(), " do not match the packed layout of ", layout.num_tokens(),
              " tokens");
  if (options.batch_invariant) return InvariantForward(*this, tokens, layout, options);
  TensorParallelComm* comm = TpCommOf(options.tensor_parallel);
  if (options.sequence_parallel) {
    TORCH_CHECK(comm != nullptr, "MiniMaxForCausalLM: sequence_parallel needs a model sharded "
                "over a TP group of 2 or more and ForwardOptions.tensor_parallel");
    TORCH_CHECK(layout.padding == 0, "MiniMaxForCausalLM: the layout is padded already");
    return ForwardSequenceParallel(tokens, layout, options, *comm);
  }
  auto x = comm ? VocabParallelEmbedding(tokens, model->embed_tokens->weight, *comm)
                : model->embed_tokens(tokens);
  auto [out, aux] = RunDecoderLayers(*model, x, layout, options);
  return {model->norm(out), aux};
}

ForwardOutput MiniMaxForCausalLMImpl::ForwardSequenceParallel(const torch::Tensor& tokens,
                                                              const PackedLayout& layout,
                                                              const ForwardOptions& options,
                                                              TensorParallelComm& comm) {
  // The batch padded to a multiple of the TP size by one document of token 0, which no
  // real token attends to and the MoE statistics leave out.
  // An empty batch (a rank short of micro-batches under expert parallelism) is all
  // padding: every collective still runs, on one row per rank.
  const int64_t T = tokens.size(0), tp = comm.tp_size();
  const int64_t pad = T == 0 ? tp : (tp - T % tp) % tp;
  PackedLayout padded = layout;
  torch::Tensor ids = tokens;
  if (pad > 0) {
    if (padded.cu_seqlens.empty()) padded.cu_seqlens.push_back(0);
    padded.cu_seqlens.push_back(T + pad);
    padded.padding = pad;
    ids = torch::cat({tokens, torch::zeros({pad}, tokens.options())});
  }
  auto x = VocabParallelEmbedding(ids, model->embed_tokens->weight, comm, /*sequence_parallel=*/true);
  auto [out, aux] = RunDecoderLayers(*model, x, padded, options);
  // Every rank's rows for the vocabulary-parallel LM head, whose backward gives each rank
  // the whole (alike) gradient of them: each block takes its own part back.
  auto hidden = GatherSequence(model->norm(out), comm, /*reduce_grad=*/false);
  return {pad > 0 ? hidden.narrow(0, 0, T) : hidden, aux};
}

TensorParallelComm* MiniMaxForCausalLMImpl::TpCommOf(TensorParallelComm* comm) const {
  TensorParallelComm* checked = CheckedTp(shard_.tp, comm, "MiniMaxForCausalLM");
  if (checked != nullptr) {
    TORCH_CHECK(checked->tp_rank() == shard_.tp_rank, "MiniMaxForCausalLM: the model is TP shard ",
                shard_.tp_rank, " of ", shard_.tp, ", ForwardOptions.tensor_parallel is rank ",
                checked->tp_rank());
  }
  return checked;
}

torch::Tensor MiniMaxForCausalLMImpl::Logits(const torch::Tensor& hidden) {
  // The LM head runs in FP32 (MiniMax-M1): bf16 logits decorrelate train and rollout probs.
  return Fp32OutLinear(hidden, lm_head->weight);
}

int64_t MiniMaxForCausalLMImpl::LogitChunkRows() const {
  return std::max<int64_t>(1024, (int64_t{1} << 27) / lm_head->weight.size(0));
}

torch::Tensor MiniMaxForCausalLMImpl::TokenLogprobs(const torch::Tensor& hidden,
                                                    const torch::Tensor& targets, int64_t chunk,
                                                    double temperature, TensorParallelComm* tp) {
  TORCH_CHECK(temperature > 0 && std::isfinite(temperature),
              "TokenLogprobs: temperature must be finite and > 0, got ", temperature);
  if (TensorParallelComm* comm = TpCommOf(tp)) {
    // No rows (every TP rank alike): nothing to reduce, but still a function of `hidden`.
    if (hidden.size(0) == 0) return hidden.to(torch::kFloat32).sum(-1);
    // In chunks of rows, as below; every TP rank has the same rows, so the same chunks.
    if (chunk <= 0) chunk = LogitChunkRows();
    std::vector<torch::Tensor> parts;
    auto rows = hidden.split(chunk), ids = targets.split(chunk);
    for (size_t c = 0; c < rows.size(); ++c) {
      parts.push_back(VocabParallelTokenLogprobs(rows[c], lm_head->weight, ids[c], temperature, *comm));
    }
    return parts.size() == 1 ? parts[0] : torch::cat(parts);
  }
  // Empty, but still a function of `hidden`: an expert-parallel backward must reach the
  // MoE blocks' collectives from every rank, those without tokens included.
  if (hidden.size(0) == 0) return Logits(hidden).sum(-1);
  if (chunk <= 0) chunk = LogitChunkRows();
  std::vector<torch::Tensor> parts;
  auto rows = hidden.split(chunk), ids = targets.split(chunk);
  const auto& w = lm_head->weight;
  for (size_t c = 0; c < rows.size(); ++c) {
    // The fused kernel knows T = 1 only; other temperatures take the ATen path.
    if (temperature == 1.0 && TrainKernelsSupported(rows[c]) && w.scalar_type() == torch::kBFloat16) {
      // The logits' FP32 log-softmax, pick and gradient in one pass each (the same math).
      parts.push_back(TokenLogprobsCuda(rows[c], w, ids[c]));
      continue;
    }
    auto logits = Logits(rows[c]);
    if (temperature != 1.0) logits = logits / temperature;
    auto logp = torch::log_softmax(logits, -1);
    parts.push_back(logp.gather(1, ids[c].unsqueeze(1)).squeeze(1));
  }
  return parts.size() == 1 ? parts[0] : torch::cat(parts);
}

void MiniMaxForCausalLMImpl::InitRandom(uint64_t seed) {
  torch::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (auto& p : named_parameters()) {
    if (p.key().find("norm") != std::string::npos) continue;  // norms stay at one
    auto t = torch::empty(p.value().sizes(), torch::kFloat32);
    t.normal_(0.0, 0.02, gen);
    p.value().copy_(t);
  }
}

}  // namespace lightrl
