// The MiniMax hybrid model's hyper-parameters, read from a HuggingFace config.json in
// either naming (MiniMax-M1's own or transformers' MiniMaxConfig) and written back in
// transformers' naming. Torch-free: the engine, the services and tools all read it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/json.h"

namespace lightrl {

enum class LayerKind { kLightning, kSoftmax };

struct ModelConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;     // each expert's FFN width
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;   // softmax layers (GQA); lightning layers use all heads
  int64_t head_dim = 0;
  int64_t num_local_experts = 1;
  int64_t num_experts_per_tok = 1;
  double rms_norm_eps = 1e-5;
  int64_t max_position_embeddings = 131072;
  double rope_theta = 1e6;
  int64_t rotary_dim = 0;            // leading dims of each head that RoPE rotates
  int64_t block_size = 256;          // lightning attention's chunk length
  std::vector<LayerKind> layer_kinds;
  // Residual mixing per sub-layer: out = alpha * residual + beta * sublayer(normed).
  double full_attn_alpha = 1, full_attn_beta = 1;
  double linear_attn_alpha = 1, linear_attn_beta = 1;
  double mlp_alpha = 1, mlp_beta = 1;
  // Postnorm (MiniMax): the residual is the normalised input; prenorm: the raw input.
  bool postnorm = true;
  double router_aux_loss_coef = 0.001;
  bool tie_word_embeddings = false;
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;

  // Parses config.json text. Unknown keys, missing required keys and wrong types are
  // errors naming `source` and the key.
  static absl::StatusOr<ModelConfig> FromJson(const Json& json, const std::string& source);
  static absl::StatusOr<ModelConfig> FromFile(const std::string& path);
  // transformers' MiniMaxConfig naming, loadable by MiniMaxForCausalLM.
  Json ToJson() const;
  absl::Status Validate() const;

  bool is_lightning(int64_t layer) const { return layer_kinds[layer] == LayerKind::kLightning; }
  // Lightning decay slope of `head` in `layer`, as transformers computes it.
  double LightningSlope(int64_t layer, int64_t head) const;
  int64_t num_parameters() const;
};

}  // namespace lightrl
