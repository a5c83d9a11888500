#include "policy/shard_spec.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace lightrl {
namespace {

absl::Status CheckOne(const char* size_name, int64_t size, const char* rank_name, int64_t rank) {
  if (size < 1) return absl::InvalidArgumentError(absl::StrCat(size_name, " must be >= 1, got ", size));
  if (rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(
        absl::StrCat(rank_name, " must be in [0, ", size, "), got ", rank));
  }
  return absl::OkStatus();
}

absl::Status Divides(const char* what, int64_t parts, const char* of, int64_t n) {
  if (n % parts == 0) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(what, " (", parts, ") must divide ", of, " (", n, ")"));
}

TensorShard Split(int dim, int64_t parts, int64_t index) { return {true, dim, parts, index}; }

absl::Status UnknownName(const std::string& name) {
  return absl::InvalidArgumentError(absl::StrCat("'", name, "' is not a tensor of this model"));
}

// The index at path element `at` of `parts`, in [0, limit).
bool IndexAt(const std::vector<std::string>& parts, size_t at, int64_t limit, int64_t* out) {
  return at < parts.size() && absl::SimpleAtoi(parts[at], out) && *out >= 0 && *out < limit &&
         std::to_string(*out) == parts[at];
}

}  // namespace

absl::Status ShardCoords::Validate() const {
  if (auto s = CheckOne("tp", tp, "tp_rank", tp_rank); !s.ok()) return s;
  if (auto s = CheckOne("ep", ep, "ep_rank", ep_rank); !s.ok()) return s;
  return CheckOne("expert_tp", expert_tp, "expert_tp_rank", expert_tp_rank);
}

absl::Status ShardCoords::CheckModel(const ModelConfig& m) const {
  if (auto s = Validate(); !s.ok()) return s;
  if (auto s = Divides("tp", tp, "num_attention_heads", m.num_attention_heads); !s.ok()) return s;
  if (auto s = Divides("tp", tp, "num_key_value_heads", m.num_key_value_heads); !s.ok()) return s;
  if (auto s = Divides("tp", tp, "vocab_size", m.vocab_size); !s.ok()) return s;
  if (auto s = Divides("ep", ep, "num_local_experts", m.num_local_experts); !s.ok()) return s;
  return Divides("expert_tp", expert_tp, "intermediate_size", m.intermediate_size);
}

std::string ShardCoords::ToString() const {
  return absl::StrCat("tp ", tp_rank, "/", tp, ", ep ", ep_rank, "/", ep, ", expert_tp ",
                      expert_tp_rank, "/", expert_tp);
}

std::vector<int64_t> TensorShard::LocalShape(const std::vector<int64_t>& full_shape) const {
  std::vector<int64_t> shape = full_shape;
  if (dim >= 0 && dim < static_cast<int>(shape.size())) shape[dim] = length(shape[dim]);
  return shape;
}

ExpertRange LocalExperts(const ModelConfig& model, const ShardCoords& coords) {
  const int64_t count = model.num_local_experts / coords.ep;
  return {coords.ep_rank * count, count};
}

int64_t ExpertIndexOf(const std::string& name) {
  const std::vector<std::string> parts = absl::StrSplit(name, '.');
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    int64_t e = 0;
    if (parts[i] == "experts" && i > 0 && parts[i - 1] == "block_sparse_moe" &&
        absl::SimpleAtoi(parts[i + 1], &e) && e >= 0 && std::to_string(e) == parts[i + 1]) {
      return e;
    }
  }
  return -1;
}

absl::StatusOr<TensorShard> ShardOf(const std::string& name, const ModelConfig& model,
                                    const ShardCoords& c) {
  const std::vector<std::string> p = absl::StrSplit(name, '.');
  const TensorShard whole;
  if (name == "model.embed_tokens.weight" || name == "lm_head.weight") {
    return Split(0, c.tp, c.tp_rank);
  }
  if (name == "model.norm.weight") return whole;
  // model.layers.L.<module>...
  int64_t layer = 0;
  if (p.size() < 5 || p[0] != "model" || p[1] != "layers" ||
      !IndexAt(p, 2, model.num_hidden_layers, &layer)) {
    return UnknownName(name);
  }
  const std::string rest = name.substr(absl::StrCat("model.layers.", p[2], ".").size());
  if (rest == "input_layernorm.weight" || rest == "post_attention_layernorm.weight" ||
      rest == "block_sparse_moe.gate.weight") {
    return whole;
  }
  if (model.is_lightning(layer)) {
    if (rest == "self_attn.qkv_proj.weight" || rest == "self_attn.output_gate.weight" ||
        rest == "self_attn.norm.weight") {
      return Split(0, c.tp, c.tp_rank);
    }
    if (rest == "self_attn.out_proj.weight") return Split(1, c.tp, c.tp_rank);
  } else {
    if (rest == "self_attn.q_proj.weight" || rest == "self_attn.k_proj.weight" ||
        rest == "self_attn.v_proj.weight") {
      return Split(0, c.tp, c.tp_rank);
    }
    if (rest == "self_attn.o_proj.weight") return Split(1, c.tp, c.tp_rank);
  }
  // block_sparse_moe.experts.E.wN.weight
  int64_t expert = 0;
  if (p.size() == 8 && p[3] == "block_sparse_moe" && p[4] == "experts" &&
      IndexAt(p, 5, model.num_local_experts, &expert) && p[7] == "weight") {
    const ExpertRange mine = LocalExperts(model, c);
    if (expert < mine.first || expert >= mine.first + mine.count) return TensorShard{false};
    if (p[6] == "w1" || p[6] == "w3") return Split(0, c.expert_tp, c.expert_tp_rank);
    if (p[6] == "w2") return Split(1, c.expert_tp, c.expert_tp_rank);
  }
  return UnknownName(name);
}

}  // namespace lightrl
