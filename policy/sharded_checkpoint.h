// Sharded checkpoints: each model-parallel rank writes the blocks it holds of the
// HuggingFace-named tensors (policy/shard_spec.h's rule) into one safetensors file named by
// its coordinates, then one rank writes model.sharded.index.json; any rank of any layout
// reads its blocks back from a sharded folder or from a HuggingFace one (single or sharded
// safetensors), resharding as needed. Torch-free: tensors are bytes with a dtype and a
// shape. Knows nothing of process groups (the caller says which ranks write and when all
// are done) nor of the model's modules; the checksum manifest is the caller's last step.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/safetensors.h"
#include "policy/model_config.h"
#include "policy/shard_spec.h"

namespace lightrl {

// The index of a sharded checkpoint folder; its presence makes the folder sharded.
inline constexpr absl::string_view kShardedIndexName = "model.sharded.index.json";

// The model-parallel sizes a sharded checkpoint is written under (DP is not one: copies
// hold the same blocks).
struct ShardLayout {
  int64_t tp = 1;
  int64_t ep = 1;
  int64_t expert_tp = 1;

  bool operator==(const ShardLayout& o) const {
    return tp == o.tp && ep == o.ep && expert_tp == o.expert_tp;
  }
  // Sizes in [1, 65536]; messages name the key.
  absl::Status Validate() const;
  // "tp=2,ep=2,expert_tp=1", the spelling Parse reads.
  std::string ToString() const;
  // "tp=2,ep=2,expert_tp=1": keys in any order, each at most once, absent keys 1.
  static absl::StatusOr<ShardLayout> Parse(absl::string_view text);
  // Every rank's coordinates, tp fastest, then expert_tp, then ep.
  std::vector<ShardCoords> AllCoords() const;
};

ShardLayout LayoutOf(const ShardCoords& coords);

// "model-tp0of2-ep1of2-etp0of1.safetensors": the file the rank at `coords` writes.
std::string ShardFileName(const ShardCoords& coords);

// Every tensor of a checkpoint of `model` with its full shape, sorted by name: the
// parameters (lm_head.weight unless tied). transformers' lightning decay buffers are not
// listed (they are derived from the config) but may be present (CheckpointShardOf).
std::vector<std::pair<std::string, std::vector<int64_t>>> ModelTensorShapes(
    const ModelConfig& model);

// ShardOf, and whole on every rank for transformers' decay buffers of a lightning layer
// (self_attn.slope_rate, query_decay, key_decay, diagonal_decay).
absl::StatusOr<TensorShard> CheckpointShardOf(const std::string& name, const ModelConfig& model,
                                              const ShardCoords& coords);

// Whether the rank at `coords` writes its block of `name`: it holds one, and its index is 0
// in every dimension its block does not depend on. So whole tensors (norms, the router
// gate) are written by tp 0 / ep 0 / expert_tp 0, TP blocks by ep 0 / expert_tp 0, expert
// blocks by tp 0; each block once.
absl::StatusOr<bool> WritesBlock(const std::string& name, const ModelConfig& model,
                                 const ShardCoords& coords);

// Which world ranks write a file: the lowest rank of each distinct coordinates, given
// every rank's (`coords_of_rank[r]`); DP and expert-DP copies of a rank do not.
std::vector<bool> ShardWriters(const std::vector<ShardCoords>& coords_of_rank);

// Writes DIR/ShardFileName(coords) (atomically, the folder created): the blocks of `local`
// that this rank writes (WritesBlock), each with its place (dim, parts, index, full shape)
// in the file's metadata; the rest of `local` is skipped. `local` holds the rank's tensors
// under their HF names with local shapes: a tensor the rank does not hold, a shape that is
// not the block's, or a full shape unlike the model's is INVALID_ARGUMENT naming it. Call
// it on one rank per distinct coordinates (ShardWriters); a rank with nothing to write
// still writes its (empty) file.
absl::Status WriteRankShards(const std::string& dir, const ModelConfig& model,
                             const ShardCoords& coords, const std::vector<TensorData>& local);

// After every rank of `layout` has written its file: checks each file (present, every
// block where the rule puts it, dtypes and full shapes agreeing across files, every tensor
// of the model covered exactly once) and writes DIR/model.sharded.index.json atomically;
// removes HF weight files and shard files of other layouts left in DIR. The checksum
// manifest (common/checkpoint_manifest.h) is the caller's, written after this.
absl::Status WriteShardedIndex(const std::string& dir, const ModelConfig& model,
                               const ShardLayout& layout);

// One piece of a stored tensor: block `index` of `parts` along `dim` (-1: the whole
// tensor) in `file`.
struct StoredPiece {
  std::string file;
  int dim = -1;
  int64_t parts = 1;
  int64_t index = 0;
  const TensorInfo* info = nullptr;  // the bytes, valid while the checkpoint is open
};

struct StoredTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;  // the full tensor's
  std::vector<StoredPiece> pieces;  // in index order, tiling the tensor
};

// A block of a tensor, assembled and owned.
struct TensorBlock {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;       // the block's
  std::vector<int64_t> full_shape;  // the tensor's
  TensorShard shard;
  std::string data;

  // A view for WriteSafetensors / WriteRankShards; valid while this block lives.
  TensorData view() const { return {name, dtype, shape, data.data(), data.size()}; }
};

// The tensors of a checkpoint folder, sharded (model.sharded.index.json) or HuggingFace
// (model.safetensors or model.safetensors.index.json: one whole piece per tensor).
class ShardedCheckpoint {
 public:
  // Opens DIR. For a sharded folder the index is checked against every file's header: each
  // file it names present and a plain name in DIR, each piece inside its tensor with the
  // file's dtype, block shape and recorded place, the pieces of a tensor tiling it exactly,
  // every tensor of a file listed. Errors name the file and tensor.
  static absl::StatusOr<ShardedCheckpoint> Open(const std::string& dir);
  // Whether DIR holds a sharded checkpoint's index.
  static bool IsSharded(const std::string& dir);

  const std::string& dir() const { return dir_; }
  bool sharded() const { return sharded_; }
  // The layout written (1/1/1 for a HuggingFace folder).
  const ShardLayout& layout() const { return layout_; }
  // Every tensor name, sorted.
  std::vector<std::string> Names() const;
  const StoredTensor* Find(absl::string_view name) const;
  // The file(s) holding `name`, for messages.
  std::string FileOf(absl::string_view name) const;

  // Assembles block `shard` of tensor `name` into `out`, which must be exactly the block's
  // size: a block of a piece when the target splits finer, a concatenation of pieces when
  // coarser. A split along another dimension than the stored one is INVALID_ARGUMENT.
  absl::Status ReadBlock(const std::string& name, const TensorShard& shard, void* out,
                         size_t nbytes) const;
  absl::StatusOr<TensorBlock> ReadBlock(const std::string& name, const TensorShard& shard) const;
  // Every tensor the rank at `coords` holds (CheckpointShardOf), assembled, sorted by
  // name. Every model tensor (ModelTensorShapes) must be present with its shape; a name
  // that is not the model's is INVALID_ARGUMENT naming its file.
  absl::StatusOr<std::vector<TensorBlock>> ReadShards(const ModelConfig& model,
                                                      const ShardCoords& coords) const;

 private:
  std::string dir_;
  bool sharded_ = false;
  ShardLayout layout_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::shared_ptr<SafetensorsCheckpoint> hf_;
  std::vector<StoredTensor> tensors_;  // sorted by name
};

}  // namespace lightrl
