// Which part of each checkpoint tensor one model-parallel rank holds: the one slicing rule
// that the sharded model (its module shapes), the sharded checkpoint files (what each rank
// writes and reads) and the engine's weight sync share. Tensors keep their HuggingFace
// (transformers MiniMax) names; a rank's part of a tensor is a contiguous block of rows
// or columns, or the whole tensor, or nothing (another rank's experts). Torch-free.
//
// The rules (docs/distributed.md):
//   embed_tokens, lm_head [V, H]            rows split over TP (vocabulary-parallel)
//   lightning qkv_proj [H * 3d, hidden]     rows split over TP (by heads: q, k, v of a head
//                                           are adjacent rows), output_gate [H * d, hidden]
//                                           and norm [H * d] likewise; out_proj [hidden,
//                                           H * d] columns split over TP
//   softmax q_proj [H * d, hidden]          rows over TP; k_proj / v_proj [KV * d, hidden]
//                                           rows over TP (GQA by KV heads); o_proj columns
//   experts.E.w1 / w3 [F, hidden]           held by the EP rank owning expert E (ranks hold
//                                           blocks of E / ep consecutive experts); rows
//                                           split over expert-TP; w2 [hidden, F] columns
//   norms, the router gate, anything else   whole on every rank
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "policy/model_config.h"

namespace lightrl {

// One rank's place in each model-parallel dimension (a ParallelLayout's sizes and the
// rank's index in its TP, EP and expert-TP groups). Data-parallel copies hold the same
// shards, so DP does not appear.
struct ShardCoords {
  int64_t tp = 1, tp_rank = 0;
  int64_t ep = 1, ep_rank = 0;
  int64_t expert_tp = 1, expert_tp_rank = 0;

  bool operator==(const ShardCoords& o) const {
    return tp == o.tp && tp_rank == o.tp_rank && ep == o.ep && ep_rank == o.ep_rank &&
           expert_tp == o.expert_tp && expert_tp_rank == o.expert_tp_rank;
  }
  // Sizes >= 1 and each index in [0, size); messages name the field.
  absl::Status Validate() const;
  // Against the model: tp divides the attention heads, the KV heads and the vocabulary,
  // ep the experts, expert_tp the FFN width.
  absl::Status CheckModel(const ModelConfig& model) const;
  // "tp 1/2, ep 0/1, expert_tp 0/1" for messages and file names' metadata.
  std::string ToString() const;
};

// A rank's part of one tensor: nothing (`held` false), the whole tensor (`dim` -1), or
// block `index` of `parts` equal blocks along `dim`.
struct TensorShard {
  bool held = true;
  int dim = -1;
  int64_t parts = 1;
  int64_t index = 0;

  bool whole() const { return held && (dim < 0 || parts == 1); }
  // The block's first position and length along `dim` for a tensor of `full` positions
  // there (parts must divide it; CheckModel guarantees so for the model's tensors).
  int64_t begin(int64_t full) const { return dim < 0 ? 0 : full / parts * index; }
  int64_t length(int64_t full) const { return dim < 0 ? full : full / parts; }
  // The shape of the block for a tensor of `full_shape`.
  std::vector<int64_t> LocalShape(const std::vector<int64_t>& full_shape) const;
};

// The part of the tensor named `name` (a transformers MiniMax name, e.g.
// "model.layers.3.self_attn.qkv_proj.weight") that the rank at `coords` holds.
// INVALID_ARGUMENT for a name the model does not have (a layer or expert index out of
// range, an unknown suffix under a known module).
absl::StatusOr<TensorShard> ShardOf(const std::string& name, const ModelConfig& model,
                                    const ShardCoords& coords);

// The experts the EP rank of `coords` holds: [first, first + count).
struct ExpertRange {
  int64_t first = 0;
  int64_t count = 0;
};
ExpertRange LocalExperts(const ModelConfig& model, const ShardCoords& coords);

// The global index of expert `name` ("...block_sparse_moe.experts.E.w1.weight" -> E), or
// -1 when the name is not an expert weight.
int64_t ExpertIndexOf(const std::string& name);

}  // namespace lightrl
