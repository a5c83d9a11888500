// Small model configs shared by tests: a tiny hybrid for CPU learner tests, one for the
// rollout worker's tests and a small CUDA-kernel-sized one (head_dim 128) for GPU tests.
#pragma once

#include "policy/model_config.h"

namespace lightrl {

// Two layers (lightning, softmax), hidden 16, `experts` experts of top-1.
inline ModelConfig TinyLearnerConfig(int64_t experts) {
  ModelConfig c;
  c.vocab_size = 40;
  c.hidden_size = 16;
  c.intermediate_size = 12;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 8;
  c.rotary_dim = 8;
  c.num_local_experts = experts;
  c.num_experts_per_tok = 1;
  c.block_size = 4;
  c.layer_kinds = {LayerKind::kLightning, LayerKind::kSoftmax};
  return c;
}

// Three layers (lightning, softmax, lightning), hidden 16, 4 heads over 2 KV heads, 4
// experts of top-2 with FFN 8, vocab 48: every size splits over tp, ep and expert_tp of up
// to 2 x 2 x 2 (tp 4 too, but for the KV heads), for the model-parallel tests.
inline ModelConfig TinyParallelConfig() {
  ModelConfig c;
  c.vocab_size = 48;
  c.hidden_size = 16;
  c.intermediate_size = 8;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 4;
  c.rotary_dim = 4;
  c.num_local_experts = 4;
  c.num_experts_per_tok = 2;
  c.block_size = 4;
  c.layer_kinds = {LayerKind::kLightning, LayerKind::kSoftmax, LayerKind::kLightning};
  return c;
}

// Two layers (lightning, softmax), hidden 32, 3 experts of top-2, vocab 61: the rollout
// worker's tests, generating up to `max_positions` positions.
inline ModelConfig TinyRolloutConfig(int64_t max_positions) {
  ModelConfig c;
  c.vocab_size = 61;
  c.hidden_size = 32;
  c.intermediate_size = 24;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.rotary_dim = 4;
  c.num_local_experts = 3;
  c.num_experts_per_tok = 2;
  c.block_size = 4;
  c.max_position_embeddings = max_positions;
  c.layer_kinds = {LayerKind::kLightning, LayerKind::kSoftmax};
  return c;
}

// Four layers (one softmax), 4 heads x 128, vocab 512: the shapes the CUDA kernels serve.
inline ModelConfig SmallGpuConfig() {
  ModelConfig c;
  c.vocab_size = 512;
  c.hidden_size = 256;
  c.intermediate_size = 256;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 128;
  c.rotary_dim = 64;
  c.num_local_experts = 4;
  c.num_experts_per_tok = 2;
  c.block_size = 64;
  c.max_position_embeddings = 4096;
  c.layer_kinds = {LayerKind::kLightning, LayerKind::kLightning, LayerKind::kSoftmax,
                   LayerKind::kLightning};
  return c;
}

}  // namespace lightrl
