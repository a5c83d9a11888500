#include "inference_engine/model_runner.h"

#include <cmath>

#include "policy/lightning_attention.h"

#ifdef LIGHTRL_ENGINE_CUDA
#include "inference_engine/cuda_ops.h"
#endif

namespace lightrl {

ModelRunner::ModelRunner(MiniMaxForCausalLM module, int64_t num_slots, int64_t num_pages,
                         int64_t page_size, bool allow_cuda_kernels)
    : module_(module),
      config_(module->config()),
      device_(module->lm_head->weight.device()),
      dtype_(module->lm_head->weight.scalar_type()),
      page_size_(page_size) {
  const auto& c = config_;
#ifdef LIGHTRL_ENGINE_CUDA
  cuda_kernels_ = allow_cuda_kernels && CudaLightningSupported(device_, dtype_, c.head_dim);
#else
  (void)allow_cuda_kernels;
#endif
  auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(device_);
  auto kv = torch::TensorOptions().dtype(dtype_).device(device_);
  states_.resize(c.num_hidden_layers);
  k_pool_.resize(c.num_hidden_layers);
  v_pool_.resize(c.num_hidden_layers);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    if (c.is_lightning(i)) {
      states_[i] = torch::zeros({num_slots, c.num_attention_heads, c.head_dim, c.head_dim}, f32);
    } else {
      k_pool_[i] = torch::zeros({num_pages * page_size, c.num_key_value_heads, c.head_dim}, kv);
      v_pool_[i] = torch::zeros({num_pages * page_size, c.num_key_value_heads, c.head_dim}, kv);
    }
  }
}

int64_t ModelRunner::SlotBytes(const ModelConfig& c) {
  int64_t lightning = 0;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) lightning += c.is_lightning(i) ? 1 : 0;
  return lightning * c.num_attention_heads * c.head_dim * c.head_dim * 4;
}

int64_t ModelRunner::PageBytes(const ModelConfig& c, int64_t page_size, torch::ScalarType dtype) {
  int64_t softmax = 0;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) softmax += c.is_lightning(i) ? 0 : 1;
  return softmax * page_size * c.num_key_value_heads * c.head_dim * 2 *
         static_cast<int64_t>(c10::elementSize(dtype));
}

// Rows of the KV pools for each token fed: the prompt's positions 0..len-1 when
// prefilling, the token's position when decoding.
torch::Tensor ModelRunner::PageIndex(const std::vector<RunnerSequence>& seqs,
                                     bool whole_prompt) const {
  std::vector<int64_t> rows;
  for (const auto& s : seqs) {
    const int64_t begin = whole_prompt ? 0 : s.position;
    const int64_t end = whole_prompt ? static_cast<int64_t>(s.tokens.size()) : s.position + 1;
    for (int64_t p = begin; p < end; ++p) {
      rows.push_back(s.pages->pages[p / page_size_] * page_size_ + p % page_size_);
    }
  }
  return torch::tensor(rows, torch::kInt64).to(device_);
}

torch::Tensor ModelRunner::Prefill(const std::vector<RunnerSequence>& seqs) {
  torch::InferenceMode guard;
  std::vector<int64_t> lengths, flat;
  for (const auto& s : seqs) {
    lengths.push_back(static_cast<int64_t>(s.tokens.size()));
    flat.insert(flat.end(), s.tokens.begin(), s.tokens.end());
  }
  PackedLayout layout = PackedLayout::FromLengths(lengths);
  auto tokens = torch::tensor(flat, torch::kInt64).to(device_);
  auto rows = PageIndex(seqs, /*whole_prompt=*/true);
  // Kernel path: int32 document offsets and slots, shared by every lightning layer.
  torch::Tensor cu_seqlens32, slots32;
  if (cuda_kernels_) {
    std::vector<int32_t> cu(layout.cu_seqlens.begin(), layout.cu_seqlens.end()), sl;
    for (const auto& s : seqs) sl.push_back(static_cast<int32_t>(s.slot));
    cu_seqlens32 = torch::tensor(cu, torch::kInt32).to(device_);
    slots32 = torch::tensor(sl, torch::kInt32).to(device_);
  }
  auto x = module_->model->embed_tokens(tokens);
  for (int64_t i = 0; i < config_.num_hidden_layers; ++i) {
    auto* layer = module_->model->layers[i]->as<DecoderLayerImpl>();
    x = layer->ForwardWith(x, [&](const torch::Tensor& n1) {
      if (layer->lightning) {
        // Each document from a zero state; its final state goes to its slot.
        auto& attn = layer->lightning;
        auto [q, k, v] = attn->Project(n1);
#ifdef LIGHTRL_ENGINE_CUDA
        if (cuda_kernels_) {
          auto o = LightningPrefillCuda(q, k, v, cu_seqlens32, slots32, states_[i], attn->slope,
                                        layout.max_len());
          return attn->Finish(n1, o.view({n1.size(0), -1}));
        }
#endif
        std::vector<torch::Tensor> outs;
        for (size_t d = 0; d < seqs.size(); ++d) {
          const int64_t b = layout.cu_seqlens[d], n = lengths[d];
          auto to_bhtd = [&](const torch::Tensor& t) {
            return t.narrow(0, b, n).permute({1, 0, 2}).unsqueeze(0);
          };
          auto [o, state] = LightningChunked(to_bhtd(q), to_bhtd(k), to_bhtd(v), attn->slope,
                                             attn->block_size);
          states_[i][seqs[d].slot].copy_(state[0]);
          outs.push_back(o[0].permute({1, 0, 2}));
        }
        auto o = torch::cat(outs, 0).reshape({n1.size(0), -1});
        return attn->Finish(n1, o);
      }
      auto& attn = layer->softmax;
      auto positions = PackedPositions(layout, device_);
      const int64_t T = n1.size(0);
      auto k = attn->ApplyRope(attn->k_proj(n1).view({T, attn->num_kv_heads, attn->head_dim}),
                               positions);
      auto v = attn->v_proj(n1).view({T, attn->num_kv_heads, attn->head_dim});
      k_pool_[i].index_copy_(0, rows, k);
      v_pool_[i].index_copy_(0, rows, v);
      return attn->forward(n1, layout);
    }).first;
  }
  auto hidden = module_->model->norm(x);
  std::vector<int64_t> last;
  for (int64_t d = 0; d < layout.num_docs(); ++d) last.push_back(layout.cu_seqlens[d + 1] - 1);
  return module_->Logits(hidden.index_select(0, torch::tensor(last, torch::kInt64).to(device_)));
}

torch::Tensor ModelRunner::Decode(const std::vector<RunnerSequence>& seqs) {
  torch::InferenceMode guard;
  const int64_t B = static_cast<int64_t>(seqs.size());
  std::vector<int64_t> tok, slot, pos;
  int64_t max_len = 0;
  for (const auto& s : seqs) {
    tok.push_back(s.tokens.at(0));
    slot.push_back(s.slot);
    pos.push_back(s.position);
    max_len = std::max(max_len, s.position + 1);
  }
  auto tokens = torch::tensor(tok, torch::kInt64).to(device_);
  auto slots = torch::tensor(slot, torch::kInt64).to(device_);
  auto slots32 = cuda_kernels_ ? slots.to(torch::kInt32) : torch::Tensor();
  auto positions = torch::tensor(pos, torch::kInt64).to(device_);
  auto rows = PageIndex(seqs, /*whole_prompt=*/false);
  // Gather map of each sequence's cached keys, padded to the longest: [B, max_len].
  std::vector<int64_t> ctx_rows(B * max_len, 0);
  std::vector<uint8_t> ctx_valid(B * max_len, 0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t p = 0; p <= pos[b]; ++p) {
      ctx_rows[b * max_len + p] =
          seqs[b].pages->pages[p / page_size_] * page_size_ + p % page_size_;
      ctx_valid[b * max_len + p] = 1;
    }
  }
  auto ctx_index = torch::tensor(ctx_rows, torch::kInt64).to(device_);
  auto ctx_mask = torch::tensor(ctx_valid, torch::kUInt8).to(device_).to(torch::kBool)
                      .view({B, 1, 1, max_len});

  auto x = module_->model->embed_tokens(tokens);
  for (int64_t i = 0; i < config_.num_hidden_layers; ++i) {
    auto* layer = module_->model->layers[i]->as<DecoderLayerImpl>();
    x = layer->ForwardWith(x, [&](const torch::Tensor& n1) {
      if (layer->lightning) {
        auto& attn = layer->lightning;
        auto [q, k, v] = attn->Project(n1);  // [B, H, d]
#ifdef LIGHTRL_ENGINE_CUDA
        if (cuda_kernels_) {
          auto o = LightningDecodeCuda(q, k, v, slots32, states_[i], attn->slope);
          return attn->Finish(n1, o.view({B, -1}));
        }
#endif
        auto lambda = torch::exp(-attn->slope).view({1, -1, 1, 1});
        auto s = states_[i].index_select(0, slots);
        s = lambda * s + torch::matmul(k.to(torch::kFloat32).unsqueeze(-1),
                                       v.to(torch::kFloat32).unsqueeze(-2));
        states_[i].index_copy_(0, slots, s);
        auto o = torch::matmul(q.to(torch::kFloat32).unsqueeze(-2), s).squeeze(-2);
        return attn->Finish(n1, o.to(n1.scalar_type()).reshape({B, -1}));
      }
      auto& attn = layer->softmax;
      const int64_t H = attn->num_heads, KVH = attn->num_kv_heads, d = attn->head_dim;
      auto q = attn->ApplyRope(attn->q_proj(n1).view({B, H, d}), positions);
      auto k = attn->ApplyRope(attn->k_proj(n1).view({B, KVH, d}), positions);
      auto v = attn->v_proj(n1).view({B, KVH, d});
      k_pool_[i].index_copy_(0, rows, k);
      v_pool_[i].index_copy_(0, rows, v);
      auto keys = k_pool_[i].index_select(0, ctx_index).view({B, max_len, KVH, d})
                      .permute({0, 2, 1, 3}).repeat_interleave(H / KVH, 1);
      auto vals = v_pool_[i].index_select(0, ctx_index).view({B, max_len, KVH, d})
                      .permute({0, 2, 1, 3}).repeat_interleave(H / KVH, 1);
      auto o = torch::scaled_dot_product_attention(q.unsqueeze(2), keys, vals, ctx_mask, 0.0,
                                                   false, 1.0 / std::sqrt(static_cast<double>(d)));
      return attn->o_proj(o.squeeze(2).reshape({B, H * d}));
    }).first;
  }
  return module_->Logits(module_->model->norm(x));
}

void ModelRunner::Fork(int64_t from_slot, const PageTable& from, int64_t to_slot,
                       const PageTable& to, int64_t num_tokens) {
  torch::InferenceMode guard;
  for (int64_t i = 0; i < config_.num_hidden_layers; ++i) {
    if (config_.is_lightning(i)) {
      states_[i][to_slot].copy_(states_[i][from_slot]);
      continue;
    }
    const int64_t pages = (num_tokens + page_size_ - 1) / page_size_;
    for (int64_t p = 0; p < pages; ++p) {
      auto src = k_pool_[i].narrow(0, from.pages[p] * page_size_, page_size_);
      k_pool_[i].narrow(0, to.pages[p] * page_size_, page_size_).copy_(src);
      auto vsrc = v_pool_[i].narrow(0, from.pages[p] * page_size_, page_size_);
      v_pool_[i].narrow(0, to.pages[p] * page_size_, page_size_).copy_(vsrc);
    }
  }
}

}  // namespace lightrl
