#include "policy/shard_spec.h"

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/test_models.h"

namespace lightrl {
namespace {

// Every tensor of `m` by name with its full shape, as transformers' MiniMax names them.
std::map<std::string, std::vector<int64_t>> ModelTensors(const ModelConfig& m) {
  const int64_t H = m.hidden_size, d = m.head_dim, nh = m.num_attention_heads;
  std::map<std::string, std::vector<int64_t>> t = {
      {"model.embed_tokens.weight", {m.vocab_size, H}},
      {"model.norm.weight", {H}},
      {"lm_head.weight", {m.vocab_size, H}},
  };
  for (int64_t l = 0; l < m.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    t[p + "input_layernorm.weight"] = {H};
    t[p + "post_attention_layernorm.weight"] = {H};
    t[p + "block_sparse_moe.gate.weight"] = {m.num_local_experts, H};
    if (m.is_lightning(l)) {
      t[p + "self_attn.qkv_proj.weight"] = {3 * nh * d, H};
      t[p + "self_attn.output_gate.weight"] = {nh * d, H};
      t[p + "self_attn.norm.weight"] = {nh * d};
      t[p + "self_attn.out_proj.weight"] = {H, nh * d};
    } else {
      t[p + "self_attn.q_proj.weight"] = {nh * d, H};
      t[p + "self_attn.k_proj.weight"] = {m.num_key_value_heads * d, H};
      t[p + "self_attn.v_proj.weight"] = {m.num_key_value_heads * d, H};
      t[p + "self_attn.o_proj.weight"] = {H, nh * d};
    }
    for (int64_t e = 0; e < m.num_local_experts; ++e) {
      const std::string q = absl::StrCat(p, "block_sparse_moe.experts.", e, ".");
      t[q + "w1.weight"] = {m.intermediate_size, H};
      t[q + "w3.weight"] = {m.intermediate_size, H};
      t[q + "w2.weight"] = {H, m.intermediate_size};
    }
  }
  return t;
}

std::vector<ShardCoords> AllRanks(int64_t tp, int64_t ep, int64_t etp) {
  std::vector<ShardCoords> out;
  for (int64_t a = 0; a < tp; ++a)
    for (int64_t b = 0; b < ep; ++b)
      for (int64_t c = 0; c < etp; ++c) out.push_back({tp, a, ep, b, etp, c});
  return out;
}

// Over every rank of a layout, each element of each tensor is held by the same number of
// ranks: all of them for a whole tensor, one per (ep, expert_tp) pair for a TP-split one,
// one per TP rank for an expert's, and the pieces are the local shapes' blocks.
TEST(ShardSpec, PiecesTileEveryTensorOfTheModel) {
  const ModelConfig m = TinyParallelConfig();
  for (int64_t tp : {1, 2}) {
    for (int64_t ep : {1, 2, 4}) {
      for (int64_t etp : {1, 2, 4, 8}) {
        const auto ranks = AllRanks(tp, ep, etp);
        for (const auto& [name, shape] : ModelTensors(m)) {
          int64_t numel = 1;
          for (int64_t s : shape) numel *= s;
          std::vector<int> covered(numel, 0);
          int64_t held_elements = 0;
          for (const ShardCoords& c : ranks) {
            ASSERT_TRUE(c.CheckModel(m).ok()) << c.ToString() << ": " << c.CheckModel(m);
            auto shard = ShardOf(name, m, c);
            ASSERT_TRUE(shard.ok()) << name << ": " << shard.status();
            if (!shard->held) continue;
            const auto local = shard->LocalShape(shape);
            int64_t local_numel = 1;
            for (int64_t s : local) local_numel *= s;
            held_elements += local_numel;
            // Mark the block: rows or columns [begin, begin + length) of dim `dim`.
            const int64_t cols = shape.size() == 2 ? shape[1] : 1;
            for (int64_t i = 0; i < numel; ++i) {
              const int64_t row = i / cols, col = i % cols;
              const int64_t along = shard->dim == 1 ? col : row;
              const int64_t full = shard->dim < 0 ? 0 : shape[shard->dim];
              if (shard->dim < 0 ||
                  (along >= shard->begin(full) && along < shard->begin(full) + shard->length(full))) {
                ++covered[i];
              }
            }
          }
          const bool expert = ExpertIndexOf(name) >= 0;
          const auto first = ShardOf(name, m, ranks[0]);
          const int expect = static_cast<int>(expert           ? tp
                                              : first->whole() ? ranks.size()
                                                               : ep * etp);
          for (int64_t i = 0; i < numel; ++i) {
            ASSERT_EQ(covered[i], expect) << name << " element " << i << " tp " << tp << " ep " << ep
                                          << " expert_tp " << etp;
          }
          EXPECT_EQ(held_elements, numel * expect) << name;
        }
      }
    }
  }
}

TEST(ShardSpec, TheRulesOfEachKind) {
  const ModelConfig m = TinyParallelConfig();
  const ShardCoords c{2, 1, 2, 1, 2, 0};
  auto at = [&](const std::string& name) {
    auto s = ShardOf(name, m, c);
    EXPECT_TRUE(s.ok()) << name << ": " << s.status();
    return s.ok() ? *s : TensorShard{};
  };
  EXPECT_EQ(at("lm_head.weight").dim, 0);
  EXPECT_EQ(at("lm_head.weight").index, 1);
  EXPECT_EQ(at("model.embed_tokens.weight").begin(48), 24);
  EXPECT_EQ(at("model.layers.0.self_attn.qkv_proj.weight").dim, 0);
  EXPECT_EQ(at("model.layers.0.self_attn.out_proj.weight").dim, 1);
  EXPECT_EQ(at("model.layers.1.self_attn.k_proj.weight").LocalShape({8, 16}),
            (std::vector<int64_t>{4, 16}));
  EXPECT_EQ(at("model.layers.1.self_attn.o_proj.weight").dim, 1);
  EXPECT_TRUE(at("model.layers.2.block_sparse_moe.gate.weight").whole());
  EXPECT_TRUE(at("model.norm.weight").whole());
  // ep rank 1 of 2 holds experts 2 and 3; expert_tp rank 0 the first half of the FFN.
  EXPECT_FALSE(at("model.layers.0.block_sparse_moe.experts.1.w1.weight").held);
  const TensorShard w1 = at("model.layers.0.block_sparse_moe.experts.2.w1.weight");
  EXPECT_TRUE(w1.held);
  EXPECT_EQ(w1.dim, 0);
  EXPECT_EQ(w1.begin(8), 0);
  EXPECT_EQ(w1.length(8), 4);
  EXPECT_EQ(at("model.layers.0.block_sparse_moe.experts.3.w2.weight").dim, 1);
  EXPECT_EQ(LocalExperts(m, c).first, 2);
  EXPECT_EQ(LocalExperts(m, c).count, 2);
  EXPECT_EQ(ExpertIndexOf("model.layers.0.block_sparse_moe.experts.3.w2.weight"), 3);
  EXPECT_EQ(ExpertIndexOf("model.layers.0.block_sparse_moe.gate.weight"), -1);
}

TEST(ShardSpec, NamesTheModelDoesNotHaveAreErrors) {
  const ModelConfig m = TinyParallelConfig();
  const ShardCoords c;
  for (const std::string name :
       {"model.layers.3.input_layernorm.weight", "model.layers.01.input_layernorm.weight",
        "model.layers.0.self_attn.q_proj.weight",  // layer 0 is lightning
        "model.layers.1.self_attn.qkv_proj.weight", "model.layers.0.block_sparse_moe.experts.4.w1.weight",
        "model.layers.0.block_sparse_moe.experts.0.w4.weight", "model.layers.-1.norm.weight",
        "lm_head.bias", "", "model.layers"}) {
    auto s = ShardOf(name, m, c);
    ASSERT_FALSE(s.ok()) << "'" << name << "'";
    EXPECT_NE(s.status().message().find("is not a tensor of this model"), std::string::npos);
  }
}

TEST(ShardSpec, CoordsAreCheckedAgainstTheModel) {
  const ModelConfig m = TinyParallelConfig();
  EXPECT_EQ(ShardCoords({0, 0, 1, 0, 1, 0}).Validate().message(), "tp must be >= 1, got 0");
  EXPECT_EQ(ShardCoords({2, 2, 1, 0, 1, 0}).Validate().message(), "tp_rank must be in [0, 2), got 2");
  EXPECT_EQ(ShardCoords({4, 0, 1, 0, 1, 0}).CheckModel(m).message(),
            "tp (4) must divide num_key_value_heads (2)");
  EXPECT_EQ(ShardCoords({1, 0, 3, 0, 1, 0}).CheckModel(m).message(),
            "ep (3) must divide num_local_experts (4)");
  EXPECT_EQ(ShardCoords({1, 0, 1, 0, 3, 0}).CheckModel(m).message(),
            "expert_tp (3) must divide intermediate_size (8)");
  EXPECT_EQ(ShardCoords({2, 1, 1, 0, 1, 0}).ToString(), "tp 1/2, ep 0/1, expert_tp 0/1");
}

}  // namespace
}  // namespace lightrl
