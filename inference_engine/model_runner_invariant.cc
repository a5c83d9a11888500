// ModelRunner's prefill and decode in the batch-invariant numerics mode: the learner's
// invariant blocks (policy/invariant_model.h) around the engine's cached attention. The
// lightning layers run the same token recurrence from the slot's state (decode) or from
// zero (prefill) as the learner does from zero over the whole sequence, and the softmax
// layers visit the same keys in the same order from the paged pools, so a token's logits
// do not depend on whether it was prefilled, re-prefilled after preemption or decoded, nor
// on the other sequences of its step.
#include <cmath>

#include "inference_engine/model_runner.h"
#include "policy/invariant_model.h"
#include "policy/invariant_ops.h"

namespace lightrl {

DecoderLayerImpl::Block ModelRunner::InvariantExperts(DecoderLayerImpl& layer) const {
  if (ep_ == nullptr) return {};
  return [this, &layer](const torch::Tensor& n2) {
    return InvariantReplicatedMoe(*layer.block_sparse_moe, n2, *ep_, RowsGroup());
  };
}

torch::Tensor ModelRunner::PrefillInvariant(const std::vector<RunnerSequence>& seqs) {
  torch::InferenceMode guard;
  std::vector<int64_t> lengths, flat;
  for (const auto& s : seqs) {
    lengths.push_back(static_cast<int64_t>(s.tokens.size()));
    flat.insert(flat.end(), s.tokens.begin(), s.tokens.end());
  }
  const PackedLayout layout = PackedLayout::FromLengths(lengths);
  auto tokens = HostToDevice(flat, device_);
  auto rows = PageIndex(seqs, /*whole_prompt=*/true);
  auto positions = PackedPositions(layout, torch::kCPU);  // the RoPE tables are made on the host
  const int64_t T = layout.num_tokens();
  auto x = Embed(tokens);
  for (int64_t i = 0; i < config_.num_hidden_layers; ++i) {
    auto& layer = *module_->model->layers[i]->as<DecoderLayerImpl>();
    x = InvariantDecoderLayer(layer, x, [&](const torch::Tensor& n1) -> torch::Tensor {
      if (layer.lightning) {
        auto& attn = *layer.lightning;
        auto [q, k, v] = InvariantLightningProject(attn, n1);
        torch::Tensor last;
        auto o = InvariantLightning(q, k, v, attn.slope, layout.cu_seqlens, {}, &last);
        for (size_t d = 0; d < seqs.size(); ++d) states_[i][seqs[d].slot].copy_(last[d]);
        return InvariantLightningFinish(attn, n1, o.to(n1.scalar_type()).reshape({T, -1}), tp_);
      }
      auto& attn = *layer.softmax;
      auto [q, k, v] = InvariantSoftmaxProject(attn, n1, positions);
      k_pool_[i].index_copy_(0, rows, k);
      v_pool_[i].index_copy_(0, rows, v);
      auto o = InvariantAttention(q, k, v, layout.cu_seqlens,
                                  1.0 / std::sqrt(static_cast<double>(attn.head_dim)));
      return InvariantRowParallelLinear(o.reshape({T, -1}), attn.o_proj->weight, tp_);
    }, 0, nullptr, InvariantExperts(layer)).first;
  }
  auto hidden = InvariantRmsNorm(x, module_->model->norm->weight, module_->model->norm->eps);
  std::vector<int64_t> last;
  for (int64_t d = 0; d < layout.num_docs(); ++d) last.push_back(layout.cu_seqlens[d + 1] - 1);
  return InvariantLogits(*module_, hidden.index_select(0, HostToDevice(last, device_)), tp_);
}

// The decode step on the staged inputs: each lightning layer advances the slot's state by
// the token, each softmax layer appends the token's key and value at its page-table row and
// visits positions 0 .. position in order, the rotary rows come from tables of every
// position. On CUDA nothing here waits for the device (with bf16 weights, whose MoE is
// dispatched on the device), so it can be captured.
torch::Tensor ModelRunner::DecodeStepInvariant(int64_t B) {
  torch::InferenceMode guard;
  auto tokens = step_inputs_[0].narrow(0, 0, B);
  auto slots = step_inputs_[1].narrow(0, 0, B);
  auto positions = step_inputs_[2].narrow(0, 0, B);
  auto counts = positions + 1;
  // The KV row each token's key and value go to: its page's row of the page table.
  auto pages = page_table_.index_select(0, slots)
                   .gather(1, torch::div(positions, page_size_, "floor").unsqueeze(1))
                   .squeeze(1)
                   .to(torch::kInt64);
  auto rows = pages * page_size_ + torch::remainder(positions, page_size_);
  torch::Tensor cos, sin;
  if (rope_cos_.defined()) {
    cos = rope_cos_.index_select(0, positions);
    sin = rope_sin_.index_select(0, positions);
  }
  auto x = Embed(tokens);
  for (int64_t i = 0; i < config_.num_hidden_layers; ++i) {
    auto& layer = *module_->model->layers[i]->as<DecoderLayerImpl>();
    x = InvariantDecoderLayer(layer, x, [&](const torch::Tensor& n1) -> torch::Tensor {
      if (layer.lightning) {
        auto& attn = *layer.lightning;
        auto [q, k, v] = InvariantLightningProject(attn, n1);
        auto o = InvariantLightningStep(q, k, v, attn.slope, states_[i], slots);
        return InvariantLightningFinish(attn, n1, o.to(n1.scalar_type()).reshape({B, -1}), tp_);
      }
      auto& attn = *layer.softmax;
      auto [q, k, v] = InvariantSoftmaxProject(attn, n1, cos, sin);
      k_pool_[i].index_copy_(0, rows, k);
      v_pool_[i].index_copy_(0, rows, v);
      auto o = InvariantPagedAttention(q, k_pool_[i], v_pool_[i], page_table_, slots, counts,
                                       page_size_,
                                       1.0 / std::sqrt(static_cast<double>(attn.head_dim)));
      return InvariantRowParallelLinear(o.reshape({B, -1}), attn.o_proj->weight, tp_);
    }, 0, nullptr, InvariantExperts(layer)).first;
  }
  auto hidden = InvariantRmsNorm(x, module_->model->norm->weight, module_->model->norm->eps);
  return InvariantLogits(*module_, hidden, tp_);
}

}  // namespace lightrl
