#include "rl/parallel_layout.h"

#include "absl/strings/str_cat.h"

namespace lightrl {
namespace {

absl::Status Invalid(const std::string& message) {
  return absl::InvalidArgumentError(message);
}

// The ranks base, base + stride, ... (count of them), and where `rank` is among them.
std::vector<int64_t> Strided(int64_t base, int64_t stride, int64_t count) {
  std::vector<int64_t> ranks;
  ranks.reserve(count);
  for (int64_t i = 0; i < count; ++i) ranks.push_back(base + i * stride);
  return ranks;
}

}  // namespace

const ConfigTable<ParallelLayout>& ParallelLayout::Table() {
  using L = ParallelLayout;
  static const ConfigTable<L>* table = new ConfigTable<L>{
      Field<L>("tp", &L::tp, "tensor parallel: attention heads and vocabulary split over this "
               "many consecutive ranks", AtLeast(1)),
      Field<L>("dp", &L::dp, "data parallel copies of the dense weights; 0 = world_size / tp",
               AtLeast(0)),
      Field<L>("ep", &L::ep, "expert parallel: ranks sharing one copy of the experts",
               AtLeast(1)),
      Field<L>("expert_tp", &L::expert_tp, "each expert's FFN width split over this many ranks",
               AtLeast(1)),
      Field<L>("sequence_parallel", &L::sequence_parallel,
               "norms, residuals and the MoE input split along the sequence over TP"),
  };
  return *table;
}

absl::Status ParallelLayout::Validate() const {
  absl::Status s = CheckTable(Table(), *this);
  if (!s.ok()) return s;
  if (sequence_parallel && tp == 1) {
    return Invalid("sequence_parallel needs tp > 1 (it splits activations over the TP group)");
  }
  return absl::OkStatus();
}

absl::Status ParallelLayout::CheckWorld(int64_t world_size) const {
  absl::Status s = Validate();
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat("parallel.", s.message()));
  if (world_size < 1) return Invalid(absl::StrCat("world size must be >= 1, got ", world_size));
  if (dp == 0 && world_size % tp != 0) {
    return Invalid(absl::StrCat("parallel.tp (", tp, ") must divide distributed.world_size (",
                                world_size, ")"));
  }
  if (dp > 0 && tp * dp != world_size) {
    return Invalid(absl::StrCat("parallel.tp x parallel.dp (", tp, " x ", dp, " = ", tp * dp,
                                ") must equal distributed.world_size (", world_size, ")"));
  }
  if (world_size % (ep * expert_tp) != 0) {
    return Invalid(absl::StrCat("parallel.ep x parallel.expert_tp (", ep, " x ", expert_tp, " = ",
                                ep * expert_tp, ") must divide distributed.world_size (",
                                world_size, ")"));
  }
  return absl::OkStatus();
}

absl::Status ParallelLayout::CheckModel(const ModelConfig& model) const {
  auto divides = [](int64_t n, int64_t d) { return d >= 1 && n % d == 0; };
  if (!divides(model.num_attention_heads, tp)) {
    return Invalid(absl::StrCat("parallel.tp (", tp, ") must divide the model's "
                                "num_attention_heads (", model.num_attention_heads, ")"));
  }
  if (!divides(model.num_key_value_heads, tp)) {
    return Invalid(absl::StrCat("parallel.tp (", tp, ") must divide the model's "
                                "num_key_value_heads (", model.num_key_value_heads,
                                "): softmax attention is split by KV heads"));
  }
  if (!divides(model.vocab_size, tp)) {
    const int64_t padded = (model.vocab_size + tp - 1) / tp * tp;
    return Invalid(absl::StrCat("parallel.tp (", tp, ") must divide the model's vocab_size (",
                                model.vocab_size, "): the vocabulary is split in equal row "
                                "blocks without padding; pad vocab_size to ", padded,
                                " in the checkpoint"));
  }
  if (!divides(model.num_local_experts, ep)) {
    return Invalid(absl::StrCat("parallel.ep (", ep, ") must divide the model's "
                                "num_local_experts (", model.num_local_experts, ")"));
  }
  if (!divides(model.intermediate_size, expert_tp)) {
    return Invalid(absl::StrCat("parallel.expert_tp (", expert_tp, ") must divide the model's "
                                "intermediate_size (", model.intermediate_size, ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<LayoutGroups> GroupsOf(const ParallelLayout& layout, int64_t world_size,
                                      int64_t rank) {
  absl::Status s = layout.CheckWorld(world_size);
  if (!s.ok()) return s;
  if (rank < 0 || rank >= world_size) {
    return Invalid(absl::StrCat("rank must be in [0, ", world_size, "), got ", rank));
  }
  const int64_t tp = layout.tp;
  const int64_t dp = layout.DataParallel(world_size);
  const int64_t etp = layout.expert_tp;
  const int64_t block = layout.ep * etp;  // ranks holding one copy of all experts
  LayoutGroups g;
  g.tp = Strided(rank - rank % tp, 1, tp);
  g.tp_rank = rank % tp;
  g.dp = Strided(rank % tp, tp, dp);
  g.dp_rank = rank / tp;
  g.expert_tp = Strided(rank - rank % etp, 1, etp);
  g.expert_tp_rank = rank % etp;
  g.ep = Strided(rank - rank % block + rank % etp, etp, layout.ep);
  g.ep_rank = (rank % block) / etp;
  g.expert_dp = Strided(rank % block, block, world_size / block);
  g.expert_dp_rank = rank / block;
  return g;
}

ShardCoords ShardCoordsOf(const ParallelLayout& layout, const LayoutGroups& groups) {
  return {layout.tp, groups.tp_rank, layout.ep, groups.ep_rank, layout.expert_tp,
          groups.expert_tp_rank};
}

}  // namespace lightrl
