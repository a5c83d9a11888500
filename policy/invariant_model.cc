#include "policy/invariant_model.h"

#include <algorithm>
#include <cmath>

#include "policy/expert_parallel.h"
#include "policy/invariant_cuda.h"
#include "policy/invariant_ops.h"
#include "policy/tensor_parallel.h"

namespace lightrl {
namespace {

torch::Tensor Norm(const RMSNorm& norm, const torch::Tensor& x) {
  return InvariantRmsNorm(x, norm->weight, norm->eps);
}

torch::Tensor Linear(const torch::nn::Linear& linear, const torch::Tensor& x) {
  return InvariantLinear(x, linear->weight);
}

// alpha * residual + beta * branch as two products and one sum, each rounded once per
// element (MixResidual's fused add may round differently in its vector body and its tail).
torch::Tensor Mix(const torch::Tensor& residual, double alpha, const torch::Tensor& branch,
                  double beta) {
  return (alpha == 1 ? residual : residual * alpha) + (beta == 1 ? branch : branch * beta);
}

// SoftmaxAttentionImpl::ApplyRope's rotation with the invariant cos / sin tables.
torch::Tensor Rope(const SoftmaxAttentionImpl& attn, const torch::Tensor& x,
                   const torch::Tensor& cos, const torch::Tensor& sin) {
  const int64_t rd = attn.rotary_dim;
  if (rd == 0) return x;
  auto to_x = [&x](const torch::Tensor& t) {
    if (t.device() == x.device()) return t.to(x.scalar_type());
    return t.pin_memory().to(x.device(), /*non_blocking=*/true).to(x.scalar_type());
  };
  auto c = to_x(cos).unsqueeze(1), s = to_x(sin).unsqueeze(1);
  auto rot = x.narrow(-1, 0, rd);
  const int64_t half = rd / 2;
  auto rotated = torch::cat({-rot.narrow(-1, half, half), rot.narrow(-1, 0, half)}, -1);
  auto out = rot * c + rotated * s;
  if (rd == attn.head_dim) return out;
  return torch::cat({out, x.narrow(-1, rd, attn.head_dim - rd)}, -1);
}

torch::Tensor RunExpert(ExpertImpl& e, const torch::Tensor& x) {
  return Linear(e.w2, InvariantSilu(Linear(e.w1, x)) * Linear(e.w3, x));
}

// RunExpert of experts[g] over rows offsets[g] .. offsets[g + 1] of x, for every g, each row
// the bits RunExpert gives it (InvariantGroupedLinear).
torch::Tensor RunExperts(SparseMoeImpl& moe, const torch::Tensor& x,
                         const std::vector<int64_t>& offsets, const std::vector<int64_t>& experts) {
  std::vector<torch::Tensor> w1, w2, w3;
  for (int64_t e : experts) {
    w1.push_back(moe.expert(e)->w1->weight);
    w2.push_back(moe.expert(e)->w2->weight);
    w3.push_back(moe.expert(e)->w3->weight);
  }
  auto h = InvariantSilu(InvariantGroupedLinear(x, w1, offsets)) * InvariantGroupedLinear(x, w3, offsets);
  return InvariantGroupedLinear(h, w2, offsets);
}

}  // namespace

namespace {
torch::Tensor InvariantRowParallelLinear(const torch::Tensor& o, const torch::Tensor& w,
                                         TensorParallelComm* tp, bool gathered);
}  // namespace

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> InvariantLightningProject(
    LightningAttentionImpl& attn, const torch::Tensor& x) {
  auto qkv = InvariantSilu(Linear(attn.qkv_proj, x)).view({x.size(0), attn.num_heads, 3 * attn.head_dim});
  auto parts = qkv.split(attn.head_dim, -1);
  return {parts[0], parts[1], parts[2]};
}

torch::Tensor InvariantLightningFinish(LightningAttentionImpl& attn, const torch::Tensor& x,
                                       const torch::Tensor& o, TensorParallelComm* tp) {
  if (tp == nullptr) {
    return Linear(attn.out_proj, InvariantSigmoid(Linear(attn.output_gate, x)) * Norm(attn.norm, o));
  }
  // The heads' outputs, gate logits and norm weights of every rank, in head order: the
  // norm's statistics run over the whole row, in order.
  auto gate = GatherColumns(Linear(attn.output_gate, x), *tp);
  auto normed = InvariantRmsNorm(GatherColumns(o, *tp), GatherColumns(attn.norm->weight, *tp),
                                 attn.norm->eps);
  return InvariantRowParallelLinear(InvariantSigmoid(gate) * normed, attn.out_proj->weight, tp,
                                    /*gathered=*/true);
}

namespace {
torch::Tensor InvariantRowParallelLinear(const torch::Tensor& o, const torch::Tensor& w,
                                         TensorParallelComm* tp, bool gathered) {
  if (tp == nullptr) return InvariantLinear(o, w);
  return InvariantLinear(gathered ? o : GatherColumns(o, *tp), GatherColumns(w, *tp));
}
}  // namespace

torch::Tensor InvariantRowParallelLinear(const torch::Tensor& o, const torch::Tensor& w,
                                         TensorParallelComm* tp) {
  return InvariantRowParallelLinear(o, w, tp, /*gathered=*/false);
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> InvariantSoftmaxProject(
    SoftmaxAttentionImpl& attn, const torch::Tensor& x, const torch::Tensor& positions) {
  auto [cos, sin] = InvariantRopeTables(positions, attn.rotary_dim, attn.rope_theta);
  return InvariantSoftmaxProject(attn, x, cos, sin);
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> InvariantSoftmaxProject(
    SoftmaxAttentionImpl& attn, const torch::Tensor& x, const torch::Tensor& cos,
    const torch::Tensor& sin) {
  const int64_t T = x.size(0);
  auto q = Rope(attn, Linear(attn.q_proj, x).view({T, attn.num_heads, attn.head_dim}), cos, sin);
  auto k = Rope(attn, Linear(attn.k_proj, x).view({T, attn.num_kv_heads, attn.head_dim}), cos, sin);
  auto v = Linear(attn.v_proj, x).view({T, attn.num_kv_heads, attn.head_dim});
  return {q, k, v};
}

namespace {

// The router's FP32 probabilities, the top-k experts (InvariantTopK) and their weights
// renormalised by a sum in slot order.
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> InvariantRoute(SparseMoeImpl& moe,
                                                                       const torch::Tensor& x) {
  auto probs = InvariantSoftmax(InvariantLinear(x, moe.gate->weight, torch::kFloat32));
  auto top_i = InvariantTopK(probs, moe.top_k);
  auto top_w = probs.gather(1, top_i);
  auto sum = top_w.select(1, 0);
  for (int64_t j = 1; j < moe.top_k; ++j) sum = sum + top_w.select(1, j);
  return {probs, top_w / sum.unsqueeze(1), top_i};
}

// A token's k expert outputs y [T, k, H] weighted by w [T, k] (zero for a dropped
// assignment) and summed in slot order in FP32, rounded once to `dtype`.
torch::Tensor SumSlots(const torch::Tensor& y, const torch::Tensor& w, c10::ScalarType dtype) {
  auto out = y.select(1, 0).to(torch::kFloat32) * w.narrow(1, 0, 1);
  for (int64_t j = 1; j < y.size(1); ++j) out = out + y.select(1, j).to(torch::kFloat32) * w.narrow(1, j, 1);
  return out.to(dtype);
}

// Whether the MoE block takes the sorted dispatch (SortedMoe): outside autograd with every
// expert here; on CUDA with bf16 weights (the grouped kernel's), which then needs no host.
bool SortedDispatch(SparseMoeImpl& moe, const torch::Tensor& x) {
  if (!moe.holds_all_experts()) return false;
  const bool grad = torch::GradMode::is_enabled();
  if (grad && x.requires_grad()) return false;
  for (int64_t e = 0; e < moe.num_experts; ++e) {
    for (auto* w : {&moe.expert(e)->w1->weight, &moe.expert(e)->w3->weight,
                    &moe.expert(e)->w2->weight}) {
      if (grad && w->requires_grad()) return false;
      if (x.is_cuda() && (!w->is_cuda() || w->scalar_type() != torch::kBFloat16 ||
                          !w->is_contiguous())) {
        return false;
      }
    }
  }
  if (!x.is_cuda()) return true;
  const int64_t assignments = x.size(0) * moe.top_k;
  return x.scalar_type() == torch::kBFloat16 &&
         (assignments + 63) / 64 + moe.num_experts <= 65535;
}

// The experts' weight addresses on the device, made anew when one has moved.
const SparseMoeImpl::ExpertAddresses& DeviceAddresses(SparseMoeImpl& moe) {
  auto& cache = moe.invariant_addresses;
  std::vector<const void*> held;
  for (int64_t e = 0; e < moe.num_experts; ++e) {
    held.push_back(moe.expert(e)->w1->weight.data_ptr());
    held.push_back(moe.expert(e)->w3->weight.data_ptr());
    held.push_back(moe.expert(e)->w2->weight.data_ptr());
  }
  if (held == cache.held) return cache;
  std::vector<int64_t> which[3];
  bool aligned = true;
  for (size_t i = 0; i < held.size(); ++i) {
    const auto address = reinterpret_cast<uintptr_t>(held[i]);
    aligned = aligned && address % 16 == 0;
    which[i % 3].push_back(static_cast<int64_t>(address));
  }
  const auto device = moe.expert(0)->w1->weight.device();
  cache.w1 = HostToDevice(which[0], device);
  cache.w3 = HostToDevice(which[1], device);
  cache.w2 = HostToDevice(which[2], device);
  cache.aligned = aligned;
  cache.held = std::move(held);
  return cache;
}

// The dispatch of assignments to experts top_i [T, k]: the assignments sorted by expert,
// token order within one (invariant_cuda::MoeDispatch's fields; on CUDA its kernel, on the
// CPU the same loops).
invariant_cuda::MoeDispatch Dispatch(const torch::Tensor& top_i, int64_t E, int64_t capacity) {
  if (top_i.is_cuda()) return invariant_cuda::Dispatch(top_i, E, capacity);
  auto ids = top_i.to(torch::kInt64).contiguous().view({-1});
  const int64_t A = ids.numel();
  const int64_t* expert = ids.data_ptr<int64_t>();
  invariant_cuda::MoeDispatch d{torch::empty({A}, torch::kInt64), torch::empty({A}, torch::kInt64),
                                torch::empty({E + 1}, torch::kInt64),
                                torch::empty({A}, torch::kFloat32)};
  int64_t *order = d.order.data_ptr<int64_t>(), *position = d.position.data_ptr<int64_t>();
  int64_t* offsets = d.offsets.data_ptr<int64_t>();
  float* kept = d.kept.data_ptr<float>();
  int64_t placed = 0;
  for (int64_t e = 0; e < E; ++e) {
    offsets[e] = placed;
    for (int64_t a = 0, rank = 0; a < A; ++a) {
      if (expert[a] != e) continue;
      kept[a] = capacity < 0 || rank++ < capacity ? 1.0f : 0.0f;
      position[a] = placed;
      order[placed++] = a;
    }
  }
  offsets[E] = placed;
  TORCH_CHECK(placed == A, "MoE dispatch: an expert index outside [0, ", E, ")");
  return d;
}

// The experts' linear (`which` of w1, w3, w2) over rows sorted by expert as `d` gives them:
// on CUDA one launch reading the groups on the device, on the CPU group by group.
torch::Tensor ExpertsLinear(SparseMoeImpl& moe, const torch::Tensor& rows,
                            const invariant_cuda::MoeDispatch& d, int which) {
  auto weight = [&moe, which](int64_t e) -> const torch::Tensor& {
    auto* expert = moe.expert(e);
    return which == 0 ? expert->w1->weight : which == 1 ? expert->w3->weight : expert->w2->weight;
  };
  if (rows.is_cuda()) {
    const auto& w = DeviceAddresses(moe);
    const auto& addresses = which == 0 ? w.w1 : which == 1 ? w.w3 : w.w2;
    return invariant_cuda::ExpertLinear(rows, addresses, d.offsets, weight(0).size(0), w.aligned)
        .to(rows.scalar_type());
  }
  std::vector<torch::Tensor> weights;
  for (int64_t e = 0; e < moe.num_experts; ++e) weights.push_back(weight(e));
  const auto* o = d.offsets.data_ptr<int64_t>();
  return InvariantGroupedLinear(rows, weights, std::vector<int64_t>(o, o + moe.num_experts + 1));
}

// InvariantMoe's experts and combine with the assignments sorted by expert (Dispatch): each
// row the bits the per-expert path gives it (an expert's rows do not depend on their
// neighbours); on CUDA nothing waits for the device. capacity < 0: none.
torch::Tensor SortedMoe(SparseMoeImpl& moe, const torch::Tensor& x, const torch::Tensor& top_w,
                        const torch::Tensor& top_i, int64_t capacity) {
  const int64_t T = x.size(0), K = moe.top_k, H = x.size(1);
  const auto d = Dispatch(top_i, moe.num_experts, capacity);
  auto rows = x.index_select(0, torch::div(d.order, K, "floor"));
  auto h = InvariantSilu(ExpertsLinear(moe, rows, d, 0)) * ExpertsLinear(moe, rows, d, 1);
  auto y = ExpertsLinear(moe, h, d, 2).index_select(0, d.position).view({T, K, H});
  if (capacity < 0) return SumSlots(y, top_w, x.scalar_type());
  auto kept = d.kept.view({T, K});
  return SumSlots(torch::where(kept.unsqueeze(2) > 0, y, torch::zeros({}, y.options())),
                  top_w * kept, x.scalar_type());
}

// ForwardExpertParallel's combine in the mode: the rows that came back (`returned`, of the
// kept assignments `ids`) summed per token as SumSlots, so that a token's output is the
// one-process mode's bit for bit wherever its experts ran.
torch::Tensor CombineInSlotOrder(const torch::Tensor& x, const torch::Tensor& returned,
                                 const torch::Tensor& ids, const torch::Tensor& top_w) {
  const int64_t T = x.size(0), K = top_w.size(1), H = x.size(1);
  auto y = torch::zeros({T * K, H}, returned.options()).index_copy(0, ids, returned);
  auto kept = torch::zeros({T * K}, top_w.options()).index_fill(0, ids, 1).view({T, K});
  return SumSlots(y.view({T, K, H}), top_w * kept, x.scalar_type());
}

// The columns [n, c] of every member of comm's expert-TP group joined in member order
// into [n, Q c] (each member's block of an expert's FFN width); backward, each member's
// block gets the sum of its copies' gradients.
torch::Tensor ExpertTpGatherColumns(const torch::Tensor& x, ExpertParallelComm& comm) {
  const int64_t c = x.size(1);
  std::vector<int64_t> sizes(comm.expert_tp_size(), c);
  return ExpertTpAllGather(x.t().contiguous(), sizes, comm).t();
}

// Under expert-TP (members holding blocks of an expert's FFN width): each member computes
// its block of the gate and up projections (each value the whole expert's), and then the
// whole down projection over the blocks and w2's columns gathered from the members, so a
// row's output is RunExpert's bits on every member.
torch::Tensor RunExpertBlocks(ExpertImpl& e, const torch::Tensor& x, ExpertParallelComm& comm) {
  auto h = InvariantSilu(Linear(e.w1, x)) * Linear(e.w3, x);
  return InvariantLinear(ExpertTpGatherColumns(h, comm),
                         ExpertTpGatherColumns(e.w2->weight, comm));
}

// The mode's ops for ForwardExpertParallel: its router, each expert row by row (RunExpert,
// so its rows do not depend on their batch; under expert-TP RunExpertBlocks), the combine
// in slot order.
MoeNumerics ExpertParallelNumerics(SparseMoeImpl& moe, ExpertParallelComm& comm) {
  MoeNumerics numerics;
  numerics.route = [&moe](const torch::Tensor& rows) { return InvariantRoute(moe, rows); };
  if (comm.expert_tp_size() > 1) {
    numerics.run_expert = [&comm](ExpertImpl& e, const torch::Tensor& rows) {
      return RunExpertBlocks(e, rows, comm);
    };
    numerics.expert_outputs_whole = true;
  } else {
    numerics.run_expert = [](ExpertImpl& e, const torch::Tensor& rows) { return RunExpert(e, rows); };
  }
  numerics.combine = CombineInSlotOrder;
  return numerics;
}

}  // namespace

torch::Tensor InvariantReplicatedMoe(SparseMoeImpl& moe, const torch::Tensor& x,
                                     ExpertParallelComm& comm, TensorParallelComm* rows_group) {
  const MoeNumerics numerics = ExpertParallelNumerics(moe, comm);
  return moe.ForwardReplicatedExpertParallel(x, comm, &numerics, rows_group);
}

std::pair<torch::Tensor, torch::Tensor> InvariantMoe(SparseMoeImpl& moe, const torch::Tensor& x,
                                                     double capacity_factor,
                                                     ExpertParallelComm* expert_parallel) {
  if (expert_parallel != nullptr) {
    const MoeNumerics numerics = ExpertParallelNumerics(moe, *expert_parallel);
    return moe.ForwardExpertParallel(x, capacity_factor, *expert_parallel, -1, &numerics);
  }
  const int64_t T = x.size(0), E = moe.num_experts, K = moe.top_k;
  auto [probs, top_w, top_i] = InvariantRoute(moe, x);

  // The load-balancing loss and the capacity rule as SparseMoeImpl::forward has them (they
  // are integer counts and a training loss, not the token's value).
  // (Only where a gradient can use it: the engine and the old-logprob pass skip its ops.)
  torch::Tensor aux = torch::zeros({}, probs.options());
  if (T > 0 && torch::GradMode::is_enabled()) {
    auto counts = torch::zeros({E}, probs.options())
                      .index_add(0, top_i.reshape(-1), torch::ones({T * K}, probs.options()));
    aux = (counts / static_cast<double>(T) * probs.mean(0)).sum() * E;
  }
  if (SortedDispatch(moe, x)) {
    const int64_t capacity =
        capacity_factor > 0
            ? static_cast<int64_t>(std::ceil(capacity_factor * static_cast<double>(T * K) / E))
            : -1;
    return {SortedMoe(moe, x, top_w, top_i, capacity), aux};
  }
  // Under autograd the routing on the host (a few integers a token), each expert its rows.
  const auto top_host = top_i.to(torch::kCPU);
  auto acc = top_host.accessor<int64_t, 2>();
  std::vector<char> kept(T * K, 1);
  if (capacity_factor > 0 && T > 0) {
    const int64_t capacity =
        static_cast<int64_t>(std::ceil(capacity_factor * static_cast<double>(T * K) / E));
    std::vector<int64_t> seen(E, 0);
    for (int64_t a = 0; a < T * K; ++a) kept[a] = seen[acc[a / K][a % K]]++ < capacity;
  }

  // Each expert on the tokens routed to it (rows in token order); then every assignment's
  // row picked back (a dropped one reads a zero row with weight zero).
  auto on_device = [&x](const std::vector<int64_t>& v) { return HostToDevice(v, x.device()); };
  std::vector<std::vector<int64_t>> tokens(E);
  std::vector<int64_t> row_of(T * K, -1);
  for (int64_t a = 0; a < T * K; ++a) {
    if (kept[a]) tokens[acc[a / K][a % K]].push_back(a);
  }
  // The rows sorted by expert (token order within one), each expert's FFN over its rows
  // (RunExperts: one launch a linear for all experts where it can).
  std::vector<int64_t> tok, offsets = {0}, experts;
  int64_t rows = 0;
  for (int64_t e = 0; e < E; ++e) {
    if (tokens[e].empty()) continue;
    for (int64_t a : tokens[e]) {
      tok.push_back(a / K);
      row_of[a] = rows++;
    }
    offsets.push_back(rows);
    experts.push_back(e);
  }
  std::vector<torch::Tensor> outs;
  if (rows > 0) outs.push_back(RunExperts(moe, x.index_select(0, on_device(tok)), offsets, experts));
  outs.push_back(torch::zeros({1, x.size(1)}, x.options()));
  for (auto& r : row_of) {
    if (r < 0) r = rows;
  }
  auto y = torch::cat(outs).index_select(0, on_device(row_of)).view({T, K, x.size(1)});
  auto w = top_w * HostToDevice(std::vector<float>(kept.begin(), kept.end()), top_w.device()).view({T, K});
  return {SumSlots(y, w, x.scalar_type()), aux};
}

std::pair<torch::Tensor, torch::Tensor> InvariantDecoderLayer(
    DecoderLayerImpl& layer, const torch::Tensor& x, const DecoderLayerImpl::Block& attention,
    double moe_capacity_factor, ExpertParallelComm* expert_parallel,
    const DecoderLayerImpl::Block& moe) {
  auto n1 = Norm(layer.input_layernorm, x);
  auto h = Mix(layer.postnorm ? n1 : x, layer.attn_alpha, attention(n1), layer.attn_beta);
  auto n2 = Norm(layer.post_attention_layernorm, h);
  auto [mlp, aux] = moe ? std::make_pair(moe(n2), torch::zeros({}, n2.options().dtype(torch::kFloat32)))
                        : InvariantMoe(*layer.block_sparse_moe, n2, moe_capacity_factor, expert_parallel);
  return {Mix(layer.postnorm ? n2 : h, layer.mlp_alpha, mlp, layer.mlp_beta), aux};
}

ForwardOutput InvariantForward(MiniMaxForCausalLMImpl& model, const torch::Tensor& tokens,
                               const PackedLayout& layout, const ForwardOptions& options) {
  TensorParallelComm* tp = model.TpCommOf(options.tensor_parallel);
  TORCH_CHECK(!options.sequence_parallel || tp != nullptr, "MiniMaxForCausalLM: "
              "sequence_parallel needs a model sharded over a TP group of 2 or more and "
              "ForwardOptions.tensor_parallel");
  const bool sp = options.sequence_parallel;
  TORCH_CHECK(tp == nullptr || sp == (options.expert_parallel != nullptr),
              "numerics.batch_invariant runs tensor parallelism with sequence parallelism when "
              "the experts are sharded (expert parallelism) and without it otherwise");
  // Sequence parallel: the batch padded to a multiple of the TP size by one document of
  // token 0 (as MiniMaxForCausalLMImpl::Forward pads it), each rank holding a block of it
  // between the attention blocks.
  PackedLayout padded = layout;
  torch::Tensor ids = tokens;
  const int64_t T = tokens.size(0);
  if (sp) {
    const int64_t pad = T == 0 ? tp->tp_size() : (tp->tp_size() - T % tp->tp_size()) % tp->tp_size();
    if (pad > 0) {
      if (padded.cu_seqlens.empty()) padded.cu_seqlens.push_back(0);
      padded.cu_seqlens.push_back(T + pad);
      padded.padding = pad;
      ids = torch::cat({tokens, torch::zeros({pad}, tokens.options())});
    }
  }
  const int64_t rows = ids.size(0);
  auto x = tp ? VocabParallelEmbedding(ids, model.model->embed_tokens->weight, *tp, sp)
              : model.model->embed_tokens(ids);
  auto aux = torch::zeros({}, x.options().dtype(torch::kFloat32));
  // This rank's tokens of the batch under sequence parallelism (the rest of its block pads).
  const int64_t block = sp ? rows / tp->tp_size() : rows;
  const int64_t valid = sp ? std::clamp<int64_t>(T - tp->tp_rank() * block, 0, block) : -1;
  auto positions = PackedPositions(padded, torch::kCPU);  // the RoPE tables are made on the host
  for (const auto& module : *model.model->layers) {
    auto& layer = *module->as<DecoderLayerImpl>();
    auto attention = [&](const torch::Tensor& input) -> torch::Tensor {
      // An expert-parallel rank without tokens still runs the MoE blocks' collectives.
      if (rows == 0) return torch::zeros_like(input);
      // Under TP every rank's heads read the replicated input (their gradients summed);
      // under SP every rank's block of it, gathered.
      auto n1 = !tp ? input
                : sp ? GatherSequence(input, *tp, /*reduce_grad=*/true)
                     : CopyToTensorParallel(input, *tp);
      torch::Tensor out;
      if (layer.lightning) {
        auto& attn = *layer.lightning;
        auto [q, k, v] = InvariantLightningProject(attn, n1);
        auto o = InvariantLightning(q, k, v, attn.slope, padded.cu_seqlens);
        out = InvariantLightningFinish(attn, n1, o.to(n1.scalar_type()).reshape({rows, -1}), tp);
      } else {
        auto& attn = *layer.softmax;
        auto [q, k, v] = InvariantSoftmaxProject(attn, n1, positions);
        auto o = InvariantAttention(q, k, v, padded.cu_seqlens,
                                    1.0 / std::sqrt(static_cast<double>(attn.head_dim)));
        out = InvariantRowParallelLinear(o.reshape({rows, -1}), attn.o_proj->weight, tp);
      }
      // Every rank computed the whole output alike: under SP each keeps its block.
      return sp ? ScatterSequence(out, *tp) : out;
    };
    DecoderLayerImpl::Block moe;
    torch::Tensor sp_aux;
    if (sp) {
      // The block's tokens through the experts' ranks, padding rows routed nowhere.
      moe = [&](const torch::Tensor& n2) {
        const MoeNumerics numerics = ExpertParallelNumerics(*layer.block_sparse_moe,
                                                            *options.expert_parallel);
        auto [out, part] = layer.block_sparse_moe->ForwardExpertParallel(
            n2, options.moe_capacity_factor, *options.expert_parallel, valid, &numerics);
        sp_aux = part;
        return out;
      };
    }
    auto [y, layer_aux] = InvariantDecoderLayer(layer, x, attention, options.moe_capacity_factor,
                                                options.expert_parallel, moe);
    x = y;
    aux = aux + (sp ? sp_aux : layer_aux);
  }
  auto hidden = Norm(model.model->norm, x);
  if (!sp) return {hidden, aux};
  // Every rank's rows for the vocabulary-parallel LM head, whose backward gives each rank
  // the whole (alike) gradient of them: each block takes its own part back.
  hidden = GatherSequence(hidden, *tp, /*reduce_grad=*/false);
  return {rows > T ? hidden.narrow(0, 0, T) : hidden, aux};
}

torch::Tensor InvariantLogits(MiniMaxForCausalLMImpl& model, const torch::Tensor& hidden,
                              TensorParallelComm* tp) {
  if (tp == nullptr) return InvariantLinear(hidden, model.lm_head->weight, torch::kFloat32);
  return GatherColumns(InvariantLinear(CopyToTensorParallel(hidden, *tp), model.lm_head->weight,
                                       torch::kFloat32),
                       *tp);
}

torch::Tensor InvariantLmHeadLogprobs(MiniMaxForCausalLMImpl& model, const torch::Tensor& hidden,
                                      const torch::Tensor& targets, double temperature) {
  return InvariantTokenLogprobs(InvariantLogits(model, hidden), targets, {temperature});
}

}  // namespace lightrl
