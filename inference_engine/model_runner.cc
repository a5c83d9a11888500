#include "inference_engine/model_runner.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>

#include "policy/expert_parallel.h"
#include "policy/invariant_ops.h"
#include "policy/lightning_attention.h"
#include "policy/tensor_parallel.h"
#include "policy/train_ops_cuda.h"

#ifdef LIGHTRL_ENGINE_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "inference_engine/cuda_ops.h"
#endif

namespace lightrl {

#ifdef LIGHTRL_ENGINE_CUDA
// One captured decode step per batch-size bucket; all share one memory pool (steps run one
// at a time on one stream, so their temporaries may overlap).
struct ModelRunner::Graphs {
  struct Step {
    at::cuda::CUDAGraph graph;
    torch::Tensor logits;  // the step's output, rewritten by every replay
  };
  std::map<int64_t, std::unique_ptr<Step>> steps;
  at::cuda::MempoolId_t pool = at::cuda::graph_pool_handle();
  // Recorded after the copies out of the pinned host buffers: the host waits on it before
  // rewriting them.
  at::cuda::CUDAEvent inputs_copied;
  // Prefills run here, off the caller's (decode) stream, so that a step's decode and the
  // prefill of newly admitted sequences overlap on the device. A pool stream, picked again
  // if the caller comes to run on it.
  std::optional<c10::cuda::CUDAStream> prefill_stream;
  // Recorded on the caller's stream as a decode step begins; decode_begin_on is that stream
  // while the decode is the runner's last work there (reset by Fork and Prefill). A prefill
  // waits on it: on everything queued before the decode, not on the decode itself.
  at::cuda::CUDAEvent decode_begin;
  std::optional<c10::cuda::CUDAStream> decode_begin_on;
  // Recorded on the prefill stream after a prefill; the caller's stream waits on it.
  at::cuda::CUDAEvent prefill_done;
};
#else
struct ModelRunner::Graphs {
  std::map<int64_t, int> steps;
};
#endif

ModelRunner::~ModelRunner() = default;

int64_t ModelRunner::num_cuda_graphs() const {
  return graphs_ ? static_cast<int64_t>(graphs_->steps.size()) : 0;
}

int64_t ModelRunner::GraphBatch(int64_t batch, int64_t max_batch) {
  int64_t bucket = 1;
  if (batch <= 8) {
    while (bucket < batch) bucket *= 2;
  } else {
    const int64_t step = batch <= 64 ? 8 : batch <= 256 ? 32 : 64;
    bucket = (batch + step - 1) / step * step;
  }
  return std::min(bucket, std::max(batch, max_batch));
}

ModelRunner::ModelRunner(MiniMaxForCausalLM module, const ModelRunnerOptions& options)
    : module_(module),
      options_(options),
      config_(module->config()),
      device_(module->lm_head->weight.device()),
      dtype_(module->lm_head->weight.scalar_type()),
      page_size_(options.page_size),
      tp_(options.tensor_parallel),
      ep_(options.expert_parallel) {
  const auto& c = config_;
  const int64_t tp = module->shard().tp;
  const int64_t group = tp_ != nullptr ? tp_->tp_size() : 1;
  TORCH_CHECK(group == tp, "engine: the model is sharded over a TP group of ", tp,
              " ranks but the runner's tensor_parallel is a group of ", group);
  if (group == 1) tp_ = nullptr;
  const int64_t num_slots = options.num_slots, num_pages = options.num_pages;
  const int64_t page_size = options.page_size;
  cuda_kernels_ = !options.batch_invariant &&
                  KernelPath(device_, dtype_, c.head_dim, options.allow_cuda_kernels);
  TORCH_CHECK(!cuda_kernels_ || tp == 1, "engine: the CUDA kernel path (bf16 on CUDA) does "
              "not run a model sharded over TP (tp ", tp, ") yet; the torch path does "
              "(FP32 weights, or allow_cuda_kernels false)");
  staged_invariant_ = options.batch_invariant;
  // The staged mode's padding rows decode in a slot and a page of their own, past the
  // scheduler's.
  const int64_t extra = staged_invariant_ ? 1 : 0;
  auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(device_);
  auto kv = torch::TensorOptions().dtype(dtype_).device(device_);
  states_.resize(c.num_hidden_layers);
  k_pool_.resize(c.num_hidden_layers);
  v_pool_.resize(c.num_hidden_layers);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    if (c.is_lightning(i)) {
      // This rank's heads only (all of them without TP).
      states_[i] = torch::zeros(
          {num_slots + extra, c.num_attention_heads / tp, c.head_dim, c.head_dim}, f32);
    } else {
      const int64_t kv_heads = c.num_key_value_heads / tp;
      k_pool_[i] = torch::zeros({(num_pages + extra) * page_size, kv_heads, c.head_dim}, kv);
      v_pool_[i] = torch::zeros({(num_pages + extra) * page_size, kv_heads, c.head_dim}, kv);
    }
  }
  if (cuda_kernels_ || staged_invariant_) {
    const int64_t max_len =
        options.max_model_len > 0 ? options.max_model_len : c.max_position_embeddings;
    const int64_t max_pages = (max_len + page_size - 1) / page_size + 1;
    const bool pinned = device_.is_cuda();
    auto i32 = torch::TensorOptions().dtype(torch::kInt32);
    page_table_ = torch::zeros({num_slots + extra, max_pages}, i32.device(device_));
    if (staged_invariant_) page_table_[num_slots].fill_(num_pages);  // the padding page
    page_table_host_ = torch::zeros({num_slots, max_pages}, i32.pinned_memory(pinned));
    mirrored_pages_.assign(static_cast<size_t>(num_slots), 0);
    auto i64 = torch::TensorOptions().dtype(torch::kInt64);
    step_inputs_ = torch::zeros({3, num_slots}, i64.device(device_));
    step_inputs_host_ = torch::zeros({3, num_slots}, i64.pinned_memory(pinned));
    // About 64 partitions over the longest context, each a multiple of the kernel's tile.
    partition_tokens_ = std::clamp<int64_t>((max_len / 64 + 127) / 128 * 128, 256, 4096);
    num_partitions_ = (max_len + partition_tokens_ - 1) / partition_tokens_;
    graphs_ = std::make_unique<Graphs>();
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
      const auto* layer = module_->model->layers[i]->as<DecoderLayerImpl>();
      if (!layer->softmax) continue;
      if (staged_invariant_) {
        // The mode's rotary tables (FP32) for every position, made as the learner makes
        // its rows.
        auto [cos, sin] = InvariantRopeTables(torch::arange(max_len, torch::kInt64),
                                              layer->softmax->rotary_dim,
                                              layer->softmax->rope_theta);
        rope_cos_ = cos.to(device_);
        rope_sin_ = sin.to(device_);
        break;
      }
      if (!options.fuse_decode_epilogues || c.rotary_dim == 0 || c.rotary_dim % 2 != 0) break;
      auto positions = torch::arange(max_len, i64.device(device_));
      std::tie(rope_cos_, rope_sin_) = layer->softmax->RopeCosSin(positions, dtype_);
      break;
    }
  }
}

bool ModelRunner::KernelPath(const torch::Device& device, torch::ScalarType dtype,
                             int64_t head_dim, bool allow_cuda_kernels) {
#ifdef LIGHTRL_ENGINE_CUDA
  return allow_cuda_kernels && CudaLightningSupported(device, dtype, head_dim);
#else
  (void)device, (void)dtype, (void)head_dim, (void)allow_cuda_kernels;
  return false;
#endif
}

int64_t ModelRunner::SlotBytes(const ModelConfig& c, int64_t tp) {
  int64_t lightning = 0;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) lightning += c.is_lightning(i) ? 1 : 0;
  return lightning * (c.num_attention_heads / tp) * c.head_dim * c.head_dim * 4;
}

int64_t ModelRunner::PageBytes(const ModelConfig& c, int64_t page_size, torch::ScalarType dtype,
                               int64_t tp) {
  int64_t softmax = 0;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) softmax += c.is_lightning(i) ? 0 : 1;
  return softmax * page_size * (c.num_key_value_heads / tp) * c.head_dim * 2 *
         static_cast<int64_t>(c10::elementSize(dtype));
}

torch::Tensor ModelRunner::Embed(const torch::Tensor& tokens) {
  auto& embedding = module_->model->embed_tokens;
  return tp_ ? VocabParallelEmbedding(tokens, embedding->weight, *tp_) : embedding(tokens);
}

torch::Tensor ModelRunner::Logits(const torch::Tensor& hidden) {
  auto block = module_->Logits(hidden);
  if (tp_ == nullptr) return block;
  const int64_t rows = block.size(1);
  auto logits = torch::zeros({block.size(0), rows * tp_->tp_size()}, block.options());
  logits.narrow(1, tp_->tp_rank() * rows, rows).copy_(block);
  tp_->AllReduce(logits, TensorParallelComm::Op::kSum);
  return logits;
}

torch::Tensor ModelRunner::ReduceRowParallel(const torch::Tensor& partial) {
  return tp_ ? ReduceFromTensorParallel(partial, *tp_) : partial;
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
#ifdef LIGHTRL_ENGINE_CUDA
  if (uses_prefill_stream()) {
    // Why this order is safe. The prefill writes only the new sequences' slots (lightning
    // states) and pages (softmax K/V) and its own logits; it reads the weights. A decode step
    // reads and writes only the slots and pages of the sequences in its batch (padding rows
    // are slot -1, which every kernel skips), plus its own fixed buffers (step inputs, device
    // page table, graph pool), none of which the prefill touches. The scheduler gives a new
    // sequence slots and pages that no sequence in the decode batch holds; the work of
    // whoever held them before was queued before this decode step. So:
    // - the prefill stream waits for everything the caller queued before the decode step
    //   (weight updates, forks, the steps before), but not for the decode itself, which runs
    //   alongside;
    // - the caller's stream waits for the prefill before anything queued after this call
    //   (forks from the new slots, sampling these logits, the decode steps the new sequences
    //   join), on the device: no host sync.
    // The kernels are the ones the caller's stream would run, on the same inputs, so the
    // outputs are those of running the decode and then the prefill on one stream.
    c10::cuda::CUDAGuard device_guard(device_);
    Graphs& g = *graphs_;
    const auto caller = c10::cuda::getCurrentCUDAStream(device_.index());
    if (!g.prefill_stream || *g.prefill_stream == caller) {
      auto pick = [&] {
        return c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device_.index());
      };
      auto next = pick();
      while (next == caller) next = pick();
      g.prefill_done.block(next);  // after the last prefill, on the stream it ran on
      g.prefill_stream = next;
    }
    // Without a decode step queued just before, the prefill waits for all the caller's work.
    if (g.decode_begin_on != caller) g.decode_begin.record(caller);
    g.decode_begin_on.reset();
    g.decode_begin.block(*g.prefill_stream);
    torch::Tensor logits;
    try {
      // Temporaries are allocated on the prefill stream and go back to its pool, which only
      // work on that stream reuses, in its order.
      c10::cuda::CUDAStreamGuard stream_guard(*g.prefill_stream);
      logits = RunPrefill(seqs);
    } catch (...) {
      // Kernels already queued may still write the state and KV pools: the caller's later
      // work, which may free them, waits for them too.
      g.prefill_done.record(*g.prefill_stream);
      g.prefill_done.block(caller);
      throw;
    }
    g.prefill_done.record(*g.prefill_stream);
    g.prefill_done.block(caller);
    // The logits are read on the caller's stream: their memory must not go back to the
    // prefill stream's pool before that work is done.
    logits.record_stream(caller);
    return logits;
  }
#endif
  return RunPrefill(seqs);
}

std::optional<c10::Stream> ModelRunner::prefill_stream() const {
#ifdef LIGHTRL_ENGINE_CUDA
  if (graphs_ && graphs_->prefill_stream) return graphs_->prefill_stream->unwrap();
#endif
  return std::nullopt;
}

torch::Tensor ModelRunner::RunPrefill(const std::vector<RunnerSequence>& seqs) {
  for (const auto& s : seqs) {
    if (!mirrored_pages_.empty()) mirrored_pages_[s.slot] = 0;  // a new sequence in the slot
  }
  if (options_.batch_invariant) return PrefillInvariant(seqs);
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
  auto x = Embed(tokens);
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
          return attn->Finish(n1, o.view({n1.size(0), -1}), tp_);
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
        return attn->Finish(n1, o, tp_);
      }
      auto& attn = layer->softmax;
      auto positions = PackedPositions(layout, device_);
      const int64_t T = n1.size(0);
      auto k = attn->ApplyRope(attn->k_proj(n1).view({T, attn->num_kv_heads, attn->head_dim}),
                               positions);
      auto v = attn->v_proj(n1).view({T, attn->num_kv_heads, attn->head_dim});
      k_pool_[i].index_copy_(0, rows, k);
      v_pool_[i].index_copy_(0, rows, v);
      ForwardOptions sharded;
      sharded.tensor_parallel = tp_;
      return attn->forward(n1, layout, sharded);
    }, {}, Moe(*layer)).first;
  }
  auto hidden = module_->model->norm(x);
  std::vector<int64_t> last;
  for (int64_t d = 0; d < layout.num_docs(); ++d) last.push_back(layout.cu_seqlens[d + 1] - 1);
  return Logits(hidden.index_select(0, torch::tensor(last, torch::kInt64).to(device_)));
}

DecoderLayerImpl::Block ModelRunner::Moe(DecoderLayerImpl& layer) const {
  if (ep_ == nullptr) return nullptr;  // the block's own forward
  return [this, &layer](const torch::Tensor& n2) {
    return layer.block_sparse_moe->ForwardReplicatedExpertParallel(n2, *ep_, nullptr, RowsGroup());
  };
}

bool ModelRunner::lockstep() const {
  return ep_ != nullptr && tp_ != nullptr && ep_->world_size() > tp_->tp_size();
}

TensorParallelComm* ModelRunner::RowsGroup() const { return lockstep() ? tp_ : nullptr; }

std::vector<int64_t> ModelRunner::AnyRank(const std::vector<int64_t>& flags) {
  TORCH_CHECK(lockstep(), "engine: AnyRank outside attention data parallelism");
  auto top = std::get<0>(ep_->AllGather(torch::tensor(flags, torch::kInt64)).max(0)).contiguous();
  return std::vector<int64_t>(top.data_ptr<int64_t>(), top.data_ptr<int64_t>() + top.numel());
}

void ModelRunner::Idle() {
  TORCH_CHECK(lockstep(), "engine: an idle forward outside attention data parallelism");
  torch::InferenceMode guard;
  auto none = torch::zeros({0, config_.hidden_size},
                           torch::TensorOptions().dtype(dtype_).device(device_));
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    auto& layer = *module_->model->layers[l]->as<DecoderLayerImpl>();
    (options_.batch_invariant ? InvariantExperts(layer) : Moe(layer))(none);
  }
}

torch::Tensor ModelRunner::Decode(const std::vector<RunnerSequence>& seqs) {
#ifdef LIGHTRL_ENGINE_CUDA
  if (device_.is_cuda() && (cuda_kernels_ || staged_invariant_)) return DecodeKernels(seqs);
#endif
  if (staged_invariant_) {  // on the CPU: the same step, without padding
    const int64_t B = static_cast<int64_t>(seqs.size());
    TORCH_CHECK(B <= options_.num_slots, "engine: decode batch ", B, " exceeds ",
                options_.num_slots, " slots");
    SyncPageTables(seqs);
    StageInputs(&seqs, B);
    return DecodeStepInvariant(B);
  }
  return DecodeTorch(seqs);
}

torch::Tensor ModelRunner::DecodeTorch(const std::vector<RunnerSequence>& seqs) {
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
  auto positions = torch::tensor(pos, torch::kInt64).to(device_);
  auto rows = PageIndex(seqs, /*whole_prompt=*/false);
  // Gather map of each sequence's cached keys, padded to the longest: [B, max_len].
  // Padding entries read the sequence's own newest row, never another's: the mask does not
  // keep a gathered value out of the result (SDPA adds -inf to a masked score and weighs its
  // value by 0, and NaN + -inf and 0 * NaN are NaN), so a padding entry that read a row of
  // some other sequence, live or freed, whose keys are NaN would turn this sequence's output
  // NaN too. Its own row is one it reads anyway.
  std::vector<int64_t> ctx_rows(B * max_len, 0);
  std::vector<uint8_t> ctx_valid(B * max_len, 0);
  for (int64_t b = 0; b < B; ++b) {
    int64_t row = 0;
    for (int64_t p = 0; p <= pos[b]; ++p) {
      row = seqs[b].pages->pages[p / page_size_] * page_size_ + p % page_size_;
      ctx_rows[b * max_len + p] = row;
      ctx_valid[b * max_len + p] = 1;
    }
    for (int64_t p = pos[b] + 1; p < max_len; ++p) ctx_rows[b * max_len + p] = row;
  }
  auto ctx_index = torch::tensor(ctx_rows, torch::kInt64).to(device_);
  auto ctx_mask = torch::tensor(ctx_valid, torch::kUInt8).to(device_).to(torch::kBool)
                      .view({B, 1, 1, max_len});

  auto x = Embed(tokens);
  for (int64_t i = 0; i < config_.num_hidden_layers; ++i) {
    auto* layer = module_->model->layers[i]->as<DecoderLayerImpl>();
    x = layer->ForwardWith(x, [&](const torch::Tensor& n1) {
      if (layer->lightning) {
        auto& attn = layer->lightning;
        auto [q, k, v] = attn->Project(n1);  // [B, H, d]
        auto lambda = torch::exp(-attn->slope).view({1, -1, 1, 1});
        auto s = states_[i].index_select(0, slots);
        s = lambda * s + torch::matmul(k.to(torch::kFloat32).unsqueeze(-1),
                                       v.to(torch::kFloat32).unsqueeze(-2));
        states_[i].index_copy_(0, slots, s);
        auto o = torch::matmul(q.to(torch::kFloat32).unsqueeze(-2), s).squeeze(-2);
        return attn->Finish(n1, o.to(n1.scalar_type()).reshape({B, -1}), tp_);
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
      return ReduceRowParallel(attn->o_proj(o.squeeze(2).reshape({B, H * d})));
    }, {}, Moe(*layer)).first;
  }
  return Logits(module_->model->norm(x));
}

void ModelRunner::Fork(int64_t from_slot, const PageTable& from, int64_t to_slot,
                       const PageTable& to, int64_t num_tokens) {
  torch::InferenceMode guard;
  if (!mirrored_pages_.empty()) mirrored_pages_[to_slot] = 0;
#ifdef LIGHTRL_ENGINE_CUDA
  if (graphs_) graphs_->decode_begin_on.reset();  // a later prefill waits for these copies
#endif
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

// Writes the step's inputs into the pinned host copy (rows past the batch are padding:
// slot -1, which every kernel skips; the mode's padding slot past the scheduler's) and
// copies them to the device buffers. `seqs` null: padding only.
void ModelRunner::StageInputs(const std::vector<RunnerSequence>* seqs, int64_t batch) {
  auto host = step_inputs_host_.accessor<int64_t, 2>();
  const int64_t n = seqs ? static_cast<int64_t>(seqs->size()) : 0;
  for (int64_t b = 0; b < batch; ++b) {
    const bool real = b < n;
    host[0][b] = real ? (*seqs)[b].tokens.at(0) : 0;
    host[1][b] = real ? (*seqs)[b].slot : staged_invariant_ ? options_.num_slots : -1;
    host[2][b] = real ? (*seqs)[b].position : 0;
  }
  step_inputs_.narrow(1, 0, batch).copy_(step_inputs_host_.narrow(1, 0, batch),
                                         /*non_blocking=*/true);
}

// Brings each sequence's device page-table row up to date with the pages it gained since
// the last step (pages are only ever appended while a sequence holds its slot).
void ModelRunner::SyncPageTables(const std::vector<RunnerSequence>& seqs) {
  const int64_t max_pages = page_table_.size(1);
  int32_t* host = page_table_host_.data_ptr<int32_t>();
  for (const auto& s : seqs) {
    const int64_t have = mirrored_pages_[s.slot];
    const int64_t want = static_cast<int64_t>(s.pages->pages.size());
    if (want <= have) continue;
    TORCH_CHECK(want <= max_pages, "engine: slot ", s.slot, " holds ", want,
                " pages, more than max_model_len allows (", max_pages, ")");
    for (int64_t p = have; p < want; ++p) {
      host[s.slot * max_pages + p] = static_cast<int32_t>(s.pages->pages[p]);
    }
    page_table_[s.slot].narrow(0, have, want - have)
        .copy_(page_table_host_[s.slot].narrow(0, have, want - have), /*non_blocking=*/true);
    mirrored_pages_[s.slot] = want;
  }
}

#ifdef LIGHTRL_ENGINE_CUDA
namespace {

torch::Tensor FusedNorm(const RMSNorm& norm, const torch::Tensor& x) {
  return RmsNormCuda(x, norm->weight, norm->eps);
}

// DecoderLayerImpl::ForwardWith with each norm one kernel and each residual sum one kernel
// (the sums round to bf16 once, not after each op as eager torch does). `moe` maps (n2,
// residual) to the block's output with its residual sum.
using MoeWithResidual =
    std::function<torch::Tensor(const torch::Tensor& n2, const torch::Tensor& residual)>;
torch::Tensor FusedDecoderLayer(const DecoderLayerImpl& layer, const torch::Tensor& x,
                                const DecoderLayerImpl::Block& attention,
                                const MoeWithResidual& moe) {
  auto n1 = FusedNorm(layer.input_layernorm, x);
  auto h = ScaledAddCuda(layer.postnorm ? n1 : x, attention(n1), layer.attn_alpha,
                         layer.attn_beta);
  auto n2 = FusedNorm(layer.post_attention_layernorm, h);
  return moe(n2, layer.postnorm ? n2 : h);
}

}  // namespace

// The decode step over the first `batch` rows of the staged inputs. Everything it reads
// lives in fixed buffers and nothing waits on the device, so it can be captured.
torch::Tensor ModelRunner::DecodeStep(int64_t B) {
  auto tokens = step_inputs_[0].narrow(0, 0, B);
  auto positions = step_inputs_[2].narrow(0, 0, B);
  auto slots32 = step_inputs_[1].narrow(0, 0, B).to(torch::kInt32);
  auto positions32 = positions.to(torch::kInt32);
  auto x = module_->model->embed_tokens(tokens);
  for (int64_t i = 0; i < config_.num_hidden_layers; ++i) {
    auto* layer = module_->model->layers[i]->as<DecoderLayerImpl>();
    // Every expert on every token (decode batches are small) in two grouped GEMMs, weighted
    // by the routing matrix; the weighted sum in FP32, as the policy's dense path, then the
    // residual sum.
    const bool fused = options_.fuse_decode_epilogues;
    auto moe = [&](const torch::Tensor& n2, const torch::Tensor& residual) {
      auto& block = layer->block_sparse_moe;
      const int64_t E = block->num_experts;
      // The router's FP32 logits (as Fp32OutLinear computes them), then one routing kernel.
      auto logits = at::mm(n2, block->gate->weight.t(), torch::kFloat32);
      auto combine = MoeCombineWeightsCuda(logits, block->top_k);  // [B, E] FP32
      auto h13 = GroupedLinearCuda(n2, expert_w13_[i], config_.intermediate_size);
      // The policy's SwiGLU kernel, so decode rounds as the learner does.
      auto act = SwiGluCuda(h13.narrow(0, 0, E), h13.narrow(0, E, E));  // [E, B, ffn]
      auto y = GroupedLinearCuda(act, expert_w2_[i], n2.size(1));         // [E, B, hidden]
      if (fused) {
        return MoeDecodeCombineCuda(y, combine, residual, layer->mlp_alpha, layer->mlp_beta);
      }
      auto out = torch::bmm(combine.unsqueeze(1), y.to(torch::kFloat32).transpose(0, 1));
      return ScaledAddCuda(residual, out.squeeze(1).to(n2.scalar_type()), layer->mlp_alpha,
                           layer->mlp_beta);
    };
    x = FusedDecoderLayer(*layer, x, [&](const torch::Tensor& n1) {
      if (layer->lightning) {
        auto& attn = layer->lightning;
        auto [q, k, v] = attn->Project(n1);  // [B, H, d]
        auto o = LightningDecodeCuda(q, k, v, slots32, states_[i], attn->slope);
        // LightningAttentionImpl::Finish with the fused norm (and gate).
        if (fused) {
          return attn->out_proj(GatedRmsNormCuda(o.view({B, -1}), attn->norm->weight,
                                                 attn->output_gate(n1), attn->norm->eps));
        }
        return attn->out_proj(torch::sigmoid(attn->output_gate(n1)) *
                              FusedNorm(attn->norm, o.view({B, -1})));
      }
      auto& attn = layer->softmax;
      const int64_t H = attn->num_heads, KVH = attn->num_kv_heads, d = attn->head_dim;
      auto rope = [&](const torch::Tensor& x) {
        return rope_cos_.defined() && fused ? RopeCuda(x, positions, rope_cos_, rope_sin_)
                                            : attn->ApplyRope(x, positions);
      };
      auto q = rope(attn->q_proj(n1).view({B, H, d}));
      auto k = rope(attn->k_proj(n1).view({B, KVH, d}));
      auto v = attn->v_proj(n1).view({B, KVH, d});
      PagedKvAppendCuda(k, v, slots32, positions32, page_table_, page_size_, k_pool_[i],
                        v_pool_[i]);
      auto o = PagedDecodeAttentionCuda(q, k_pool_[i], v_pool_[i], slots32, positions32,
                                        page_table_, page_size_,
                                        1.0 / std::sqrt(static_cast<double>(d)),
                                        partition_tokens_, num_partitions_);
      return attn->o_proj(o.reshape({B, H * d}));
    }, moe);
  }
  return module_->Logits(FusedNorm(module_->model->norm, x));
}

void ModelRunner::TrackWeights() {
  std::vector<const void*> now;
  for (const auto& p : module_->parameters()) now.push_back(p.data_ptr());
  if (now == weight_addresses_) return;
  weight_addresses_ = std::move(now);
  graphs_->steps.clear();  // they read the old addresses
  if (staged_invariant_) return;  // its MoE blocks keep their own address arrays
  expert_w13_.assign(config_.num_hidden_layers, torch::Tensor());
  expert_w2_.assign(config_.num_hidden_layers, torch::Tensor());
  auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  for (int64_t i = 0; i < config_.num_hidden_layers; ++i) {
    auto& block = module_->model->layers[i]->as<DecoderLayerImpl>()->block_sparse_moe;
    std::vector<int64_t> w13, w2;
    auto address = [](const torch::Tensor& w) {
      TORCH_CHECK(w.is_contiguous(), "engine: expert weights must be contiguous");
      return reinterpret_cast<int64_t>(w.data_ptr());
    };
    auto expert = [&](int64_t e) { return block->expert(e); };
    for (int64_t e = 0; e < block->num_experts; ++e) w13.push_back(address(expert(e)->w1->weight));
    for (int64_t e = 0; e < block->num_experts; ++e) w13.push_back(address(expert(e)->w3->weight));
    for (int64_t e = 0; e < block->num_experts; ++e) w2.push_back(address(expert(e)->w2->weight));
    expert_w13_[i] = torch::tensor(w13, i64).to(device_);
    expert_w2_[i] = torch::tensor(w2, i64).to(device_);
  }
}

torch::Tensor ModelRunner::DecodeKernels(const std::vector<RunnerSequence>& seqs) {
  torch::InferenceMode guard;
  c10::cuda::CUDAGuard device_guard(device_);
  const int64_t B = static_cast<int64_t>(seqs.size());
  TORCH_CHECK(B <= options_.num_slots, "engine: decode batch ", B, " exceeds ",
              options_.num_slots, " slots");
  auto stream = c10::cuda::getCurrentCUDAStream(device_.index());
  if (uses_prefill_stream()) {
    // A prefill queued next runs beside this step, after what came before it (see Prefill).
    graphs_->decode_begin.record(stream);
    graphs_->decode_begin_on = stream;
  }
  TrackWeights();
  graphs_->inputs_copied.synchronize();
  SyncPageTables(seqs);
  auto run_step = [this](int64_t batch) {
    return staged_invariant_ ? DecodeStepInvariant(batch) : DecodeStep(batch);
  };
  if (!uses_cuda_graphs()) {
    StageInputs(&seqs, B);
    graphs_->inputs_copied.record(stream);
    return run_step(B);
  }
  const int64_t bucket = GraphBatch(B, options_.num_slots);
  auto& step = graphs_->steps[bucket];
  if (!step) {
    // Warm-up and capture on a side stream, with padding rows only: neither touches a
    // state or a page, and the warm-up settles library handles and workspaces first.
    StageInputs(nullptr, bucket);
    auto side = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device_.index());
    at::cuda::CUDAEvent staged;
    staged.record(stream);
    staged.block(side);
    auto fresh = std::make_unique<Graphs::Step>();
    {
      c10::cuda::CUDAStreamGuard stream_guard(side);
      run_step(bucket);
      fresh->graph.capture_begin(graphs_->pool, cudaStreamCaptureModeThreadLocal);
      fresh->logits = run_step(bucket);
      fresh->graph.capture_end();
    }
    side.synchronize();
    step = std::move(fresh);
  }
  StageInputs(&seqs, bucket);
  graphs_->inputs_copied.record(stream);
  step->graph.replay();
  return step->logits.narrow(0, 0, B);
}
#endif

}  // namespace lightrl
