// Moves a MiniMaxForCausalLM's weights to and from HuggingFace-format checkpoint
// directories (config.json + safetensors, single or sharded), under transformers'
// tensor names. Internal to torch-linking targets; owns no model state itself.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/safetensors.h"
#include "policy/minimax_model.h"
#include "policy/sharded_checkpoint.h"

namespace lightrl {

// Copies every parameter from `ckpt`, converting dtype. A missing, extra or mis-shaped
// tensor is an error naming the file and tensor. transformers' lightning decay buffers
// (slope_rate, query_decay, key_decay, diagonal_decay) are accepted; slope_rate is checked against the config.
// A model built for a shard (model->shard()) reads its block of each whole tensor
// (ShardOf, policy/shard_spec.h) and skips the tensors it does not hold.
absl::Status LoadWeights(MiniMaxForCausalLM& model, const SafetensorsCheckpoint& ckpt);
// The same from a sharded checkpoint (each tensor assembled whole from its pieces first,
// so the weights pass through memory twice) or an HF folder opened as one.
absl::Status LoadWeights(MiniMaxForCausalLM& model, const ShardedCheckpoint& ckpt);

// The block of the whole tensor `full` named `name` that the rank at `shard` holds (a view;
// undefined when it holds none). INVALID_ARGUMENT for a name the model lacks or a shape
// the block does not divide.
absl::StatusOr<torch::Tensor> ShardBlock(const std::string& name, const torch::Tensor& full,
                                         const ModelConfig& config, const ShardCoords& shard);

// Writes config.json and the weights in `dtype` (F32, BF16 or F16), with the decay
// buffers transformers expects, atomically per file.
absl::Status SaveCheckpoint(MiniMaxForCausalLM& model, const std::string& dir, DType dtype,
                            size_t max_shard_bytes = size_t{5} << 30);

torch::ScalarType ToTorchDType(DType dtype);

}  // namespace lightrl
