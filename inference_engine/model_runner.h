// Runs the policy's MiniMax module for inference over cached sequences: packed prefill
// that leaves each sequence's lightning states in its slot and its softmax-layer K/V in
// its pages, and a batched one-token decode step. Owns the state and KV pools (tensors);
// the scheduler owns which slot and pages belong to whom. Internal (torch) header.
#pragma once

#include <torch/torch.h>

#include <vector>

#include "inference_engine/kv_cache.h"
#include "policy/minimax_model.h"

namespace lightrl {

struct RunnerSequence {
  int64_t slot = 0;           // lightning-state slot
  const PageTable* pages = nullptr;
  std::vector<int32_t> tokens;  // prefill: the whole prompt; decode: the one new token
  int64_t position = 0;         // decode: position of that token
};

class ModelRunner {
 public:
  // `allow_cuda_kernels`: on CUDA with bf16 weights (and a build with LIGHTRL_ENGINE_CUDA)
  // the lightning layers run the CUDA prefill and fused decode kernels; false keeps the
  // torch ops, the reference path, everywhere.
  ModelRunner(MiniMaxForCausalLM module, int64_t num_slots, int64_t num_pages, int64_t page_size,
              bool allow_cuda_kernels = true);

  // Prefills each sequence from an empty state; returns FP32 logits of each sequence's last
  // token, [n, vocab].
  torch::Tensor Prefill(const std::vector<RunnerSequence>& seqs);
  // Feeds one token per sequence at its position; returns FP32 logits [n, vocab].
  torch::Tensor Decode(const std::vector<RunnerSequence>& seqs);
  // Copies a sequence's cached context (states and the KV of its first `num_tokens`
  // positions) to another slot and pages: n samples share one prompt prefill.
  void Fork(int64_t from_slot, const PageTable& from, int64_t to_slot, const PageTable& to,
            int64_t num_tokens);

  // Bytes of one lightning-state slot and one KV page, for memory budgeting.
  static int64_t SlotBytes(const ModelConfig& config);
  static int64_t PageBytes(const ModelConfig& config, int64_t page_size, torch::ScalarType dtype);

  torch::Device device() const { return device_; }
  // Whether the lightning layers run the CUDA kernels (else the torch ops).
  bool uses_cuda_kernels() const { return cuda_kernels_; }

 private:
  torch::Tensor PageIndex(const std::vector<RunnerSequence>& seqs, bool whole_prompt) const;

  MiniMaxForCausalLM module_;
  ModelConfig config_;
  torch::Device device_;
  torch::ScalarType dtype_;
  int64_t page_size_;
  bool cuda_kernels_ = false;
  // Per layer: lightning layers [slots, H, d, d] FP32; softmax layers K and V pools
  // [pages * page_size, KVH, d] in the compute dtype.
  std::vector<torch::Tensor> states_, k_pool_, v_pool_;
};

}  // namespace lightrl
