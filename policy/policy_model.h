// The policy as the rest of lightrl sees it: load/save a HuggingFace MiniMax checkpoint,
// score tokens. Torch-free header (PIMPL); torch-linking code in policy/, the engine and
// the learner reach the LibTorch module through module() and policy/minimax_model.h.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/safetensors.h"
#include "policy/model_config.h"
#include "policy/shard_spec.h"

namespace lightrl {

class MiniMaxForCausalLM;

struct PolicyOptions {
  std::string device = "cpu";     // "cpu", "cuda", "cuda:N"
  std::string dtype = "float32";  // compute/parameter dtype: float32, bfloat16, float16
  absl::Status Validate() const;
};

class PolicyModel {
 public:
  // Reads DIR/config.json and DIR's safetensors. With `shard` other than the whole model,
  // the part the rank at `shard` holds (policy/shard_spec.h), sliced from the whole
  // tensors of an HF checkpoint; `shard` must split the config (an error says which size
  // does not).
  static absl::StatusOr<std::unique_ptr<PolicyModel>> Load(const std::string& dir,
                                                           const PolicyOptions& options = {},
                                                           const ShardCoords& shard = {});
  // A randomly initialised model (transformers' init, std 0.02), for tests and toys. With
  // `shard`, that rank's part of the same model (the whole one is drawn, then sliced), so
  // the shards of one seed make up the whole model of that seed.
  static absl::StatusOr<std::unique_ptr<PolicyModel>> Create(const ModelConfig& config,
                                                             uint64_t seed,
                                                             const PolicyOptions& options = {},
                                                             const ShardCoords& shard = {});
  // Create(config, seed, options, shard): the part at `shard` (policy/shard_spec.h) of
  // the model Create(config, seed) makes, every tensor that rank's ShardOf block of it,
  // so that the ranks of a layout together hold exactly that model. A sharded model runs
  // only under its learner's collectives; Save and the weight-sync calls refuse it.
  static absl::StatusOr<std::unique_ptr<PolicyModel>> CreateShard(const ModelConfig& config,
                                                                  uint64_t seed,
                                                                  const ShardCoords& shard,
                                                                  const PolicyOptions& options = {});
  // Load(dir, options, shard) reading only the rank's blocks (ShardedCheckpoint::
  // ReadShards: from a sharded folder of any layout or an HF one), where Load assembles
  // each whole tensor first; a checkpoint of one layout loads into another.
  static absl::StatusOr<std::unique_ptr<PolicyModel>> LoadShard(const std::string& dir,
                                                                const ShardCoords& shard,
                                                                const PolicyOptions& options = {});
  ~PolicyModel();

  const ModelConfig& config() const;
  const PolicyOptions& options() const;
  // The part of the model this one holds; the default (all sizes 1) is the whole model.
  const ShardCoords& shard() const;

  // For each sequence, log p(token t | tokens before t) in FP32 for t >= 1; entry 0 is NaN
  // (nothing precedes it). Sequences are packed up to `max_batch_tokens` per forward.
  // Token ids outside the vocabulary are an error naming the sequence and position.
  absl::StatusOr<std::vector<std::vector<float>>> TokenLogprobs(
      const std::vector<std::vector<int32_t>>& sequences, int64_t max_batch_tokens = 16384);

  // UNIMPLEMENTED for a shard (not the whole model).
  absl::Status Save(const std::string& dir, DType dtype = DType::kF32) const;

  // One parameter as plain bytes (row-major, little-endian), for weight sync between
  // processes. Names are the checkpoint's ("model.layers.0.self_attn.qkv_proj.weight").
  struct WeightTensor {
    std::string name;
    std::vector<int64_t> shape;
    std::string data;
  };
  // Every parameter (a tied lm_head once, as the embedding), sorted by name, converted to
  // `dtype` (F32 or BF16). Whole models only (UNIMPLEMENTED for a shard).
  absl::StatusOr<std::vector<WeightTensor>> ExportWeights(DType dtype) const;
  // The parameters this model holds, with their local (block) shapes, in ExportWeights'
  // order and dtypes: a whole model's are ExportWeights', a shard's its blocks of them, for
  // sharded checkpoints (WriteRankShards) and for gathering the whole model.
  absl::StatusOr<std::vector<WeightTensor>> ExportLocalWeights(DType dtype) const;
  // Replaces every parameter with `tensors` (in `dtype`): exactly the names and shapes
  // WeightSpecs gives, else INVALID_ARGUMENT naming the tensor; on error nothing
  // changes. A shard takes the whole model's tensors (of those it holds) and keeps its
  // blocks of them.
  absl::Status ImportWeights(DType dtype, const std::vector<WeightTensor>& tensors);
  // The same from the blocks this model holds, as ExportLocalWeights gives them (names and
  // local shapes): how a rank of a multi-process rollout instance takes its part of an
  // update without the rest.
  absl::Status ImportLocalWeights(DType dtype, const std::vector<WeightTensor>& tensors);
  // The names and shapes ImportWeights takes, in ExportWeights' order (a shard's: the
  // whole shapes of the tensors it holds); copies no data (a rollout worker checks a
  // weight update's header against them before it allocates).
  struct WeightSpec {
    std::string name;
    std::vector<int64_t> shape;
  };
  std::vector<WeightSpec> WeightSpecs() const;

  // Every synced parameter's storage where it lives (in ExportWeights' order), for
  // device-to-device weight sync (NCCL broadcast): each is contiguous, `bytes` long, in the
  // policy's dtype ("float32" or "bfloat16"). Valid until the parameters are replaced.
  struct ParameterBuffer {
    std::string name;
    void* data = nullptr;
    int64_t bytes = 0;
  };
  absl::StatusOr<std::vector<ParameterBuffer>> ParameterBuffers();
  // The device index the parameters live on; -1 on the CPU.
  int device_index() const;

  MiniMaxForCausalLM& module();

  struct Impl;  // defined in policy_model.cc

 private:
  explicit PolicyModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Checks every id is in [0, vocab_size); the error names `what` and the position.
absl::Status CheckTokenIds(const std::vector<int32_t>& ids, int64_t vocab_size,
                           const std::string& what);

}  // namespace lightrl
