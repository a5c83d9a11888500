#include "rl/parallel_layout.h"

#include <stdlib.h>

#include <filesystem>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "rl/run_config.h"

namespace lightrl {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

using Ranks = std::vector<int64_t>;

ParallelLayout Layout(int64_t tp, int64_t ep = 1, int64_t expert_tp = 1, int64_t dp = 0) {
  ParallelLayout l;
  l.tp = tp;
  l.ep = ep;
  l.expert_tp = expert_tp;
  l.dp = dp;
  return l;
}

// MiniMax-M1's shapes.
ModelConfig M1() {
  ModelConfig m;
  m.vocab_size = 200064;
  m.num_attention_heads = 64;
  m.num_key_value_heads = 8;
  m.num_local_experts = 32;
  m.intermediate_size = 9216;
  return m;
}

TEST(ParallelLayoutTest, ValuesAloneNameTheKey) {
  EXPECT_TRUE(ParallelLayout().Validate().ok());
  EXPECT_EQ(Layout(0).Validate().message(), "tp must be >= 1, got 0");
  EXPECT_EQ(Layout(1, 0).Validate().message(), "ep must be >= 1, got 0");
  EXPECT_EQ(Layout(1, 1, 0).Validate().message(), "expert_tp must be >= 1, got 0");
  EXPECT_EQ(Layout(1, 1, 1, -1).Validate().message(), "dp must be >= 0, got -1");
  ParallelLayout sp = Layout(1);
  sp.sequence_parallel = true;
  EXPECT_EQ(sp.Validate().message(),
            "sequence_parallel needs tp > 1 (it splits activations over the TP group)");
  sp.tp = 2;
  EXPECT_TRUE(sp.Validate().ok());
}

TEST(ParallelLayoutTest, WorldSizeErrors) {
  EXPECT_TRUE(Layout(2).CheckWorld(4).ok());
  EXPECT_TRUE(Layout(2, 1, 1, 2).CheckWorld(4).ok());
  EXPECT_TRUE(Layout(8, 32, 4).CheckWorld(512).ok());
  EXPECT_EQ(Layout(3).CheckWorld(4).message(),
            "parallel.tp (3) must divide distributed.world_size (4)");
  EXPECT_EQ(Layout(2, 1, 1, 3).CheckWorld(4).message(),
            "parallel.tp x parallel.dp (2 x 3 = 6) must equal distributed.world_size (4)");
  EXPECT_EQ(Layout(1, 2, 2).CheckWorld(6).message(),
            "parallel.ep x parallel.expert_tp (2 x 2 = 4) must divide "
            "distributed.world_size (6)");
  EXPECT_EQ(Layout(1, 3).CheckWorld(4).message(),
            "parallel.ep x parallel.expert_tp (3 x 1 = 3) must divide "
            "distributed.world_size (4)");
  EXPECT_EQ(Layout(0).CheckWorld(4).message(), "parallel.tp must be >= 1, got 0");
  EXPECT_EQ(Layout(1).CheckWorld(0).message(), "world size must be >= 1, got 0");
}

TEST(ParallelLayoutTest, ModelErrors) {
  EXPECT_TRUE(Layout(8, 32, 4).CheckModel(M1()).ok());
  ModelConfig m = M1();
  m.num_attention_heads = 12;
  EXPECT_EQ(Layout(8).CheckModel(m).message(),
            "parallel.tp (8) must divide the model's num_attention_heads (12)");
  m = M1();
  m.num_key_value_heads = 4;  // GQA: the KV heads are what TP splits
  EXPECT_EQ(Layout(8).CheckModel(m).message(),
            "parallel.tp (8) must divide the model's num_key_value_heads (4): softmax "
            "attention is split by KV heads");
  m = M1();
  m.vocab_size = 200001;
  EXPECT_EQ(Layout(8).CheckModel(m).message(),
            "parallel.tp (8) must divide the model's vocab_size (200001): the vocabulary is "
            "split in equal row blocks without padding; pad vocab_size to 200008 in the "
            "checkpoint");
  EXPECT_EQ(Layout(1, 3).CheckModel(M1()).message(),
            "parallel.ep (3) must divide the model's num_local_experts (32)");
  EXPECT_EQ(Layout(1, 1, 5).CheckModel(M1()).message(),
            "parallel.expert_tp (5) must divide the model's intermediate_size (9216)");
}

// Every rank's groups: each group lists the rank, all members of a group agree on it,
// and the groups of one kind partition the world.
void CheckConsistent(const ParallelLayout& layout, int64_t world) {
  std::vector<LayoutGroups> all;
  for (int64_t r = 0; r < world; ++r) {
    auto g = GroupsOf(layout, world, r);
    ASSERT_TRUE(g.ok()) << g.status();
    all.push_back(*g);
  }
  auto check = [&](const char* what, Ranks LayoutGroups::*group, int64_t LayoutGroups::*index,
                   int64_t size) {
    for (int64_t r = 0; r < world; ++r) {
      const Ranks& mine = all[r].*group;
      ASSERT_EQ(static_cast<int64_t>(mine.size()), size) << what << " of rank " << r;
      ASSERT_EQ(mine[all[r].*index], r) << what << " of rank " << r;
      for (int64_t member : mine) EXPECT_EQ(all[member].*group, mine) << what << " " << r;
    }
  };
  check("tp", &LayoutGroups::tp, &LayoutGroups::tp_rank, layout.tp);
  check("dp", &LayoutGroups::dp, &LayoutGroups::dp_rank, layout.DataParallel(world));
  check("ep", &LayoutGroups::ep, &LayoutGroups::ep_rank, layout.ep);
  check("expert_tp", &LayoutGroups::expert_tp, &LayoutGroups::expert_tp_rank, layout.expert_tp);
  check("expert_dp", &LayoutGroups::expert_dp, &LayoutGroups::expert_dp_rank,
        layout.ExpertDataParallel(world));
  // A TP rank and a DP rank name one rank, and so do an expert-TP, EP and expert-DP rank.
  for (int64_t r = 0; r < world; ++r) {
    const LayoutGroups& g = all[r];
    EXPECT_EQ(g.dp_rank * layout.tp + g.tp_rank, r);
    EXPECT_EQ((g.expert_dp_rank * layout.ep + g.ep_rank) * layout.expert_tp + g.expert_tp_rank,
              r);
  }
}

TEST(LayoutGroupsTest, Tp2) {
  auto g = GroupsOf(Layout(2), 2, 1);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_THAT(g->tp, ElementsAre(0, 1));
  EXPECT_THAT(g->dp, ElementsAre(1));
  EXPECT_THAT(g->ep, ElementsAre(1));
  EXPECT_THAT(g->expert_tp, ElementsAre(1));
  EXPECT_THAT(g->expert_dp, ElementsAre(0, 1));
  EXPECT_EQ(g->tp_rank, 1);
  CheckConsistent(Layout(2), 2);
}

TEST(LayoutGroupsTest, Ep2ExpertTp2) {
  // Ranks 0..3: expert-TP pairs {0,1} {2,3}; EP pairs of the same width shard {0,2} {1,3};
  // one copy of the experts, so each expert-DP group is the rank alone; dense weights on
  // all four (DP 4).
  const ParallelLayout l = Layout(1, 2, 2);
  auto g = GroupsOf(l, 4, 2);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_THAT(g->expert_tp, ElementsAre(2, 3));
  EXPECT_THAT(g->ep, ElementsAre(0, 2));
  EXPECT_THAT(g->expert_dp, ElementsAre(2));
  EXPECT_THAT(g->tp, ElementsAre(2));
  EXPECT_THAT(g->dp, ElementsAre(0, 1, 2, 3));
  EXPECT_EQ(g->ep_rank, 1);
  EXPECT_EQ(g->expert_tp_rank, 0);
  CheckConsistent(l, 4);
  // Two copies of the experts over 8 ranks.
  g = GroupsOf(l, 8, 5);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_THAT(g->expert_tp, ElementsAre(4, 5));
  EXPECT_THAT(g->ep, ElementsAre(5, 7));
  EXPECT_THAT(g->expert_dp, ElementsAre(1, 5));
  CheckConsistent(l, 8);
}

TEST(LayoutGroupsTest, Tp2Dp2) {
  const ParallelLayout l = Layout(2, 1, 1, 2);
  auto g = GroupsOf(l, 4, 3);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_THAT(g->tp, ElementsAre(2, 3));
  EXPECT_THAT(g->dp, ElementsAre(1, 3));
  EXPECT_EQ(g->tp_rank, 1);
  EXPECT_EQ(g->dp_rank, 1);
  CheckConsistent(l, 4);
}

TEST(LayoutGroupsTest, Tp8Dp4On32Ranks) {
  const ParallelLayout l = Layout(8, 1, 1, 4);
  auto g = GroupsOf(l, 32, 19);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_THAT(g->tp, ElementsAre(16, 17, 18, 19, 20, 21, 22, 23));
  EXPECT_THAT(g->dp, ElementsAre(3, 11, 19, 27));
  EXPECT_EQ(g->tp_rank, 3);
  EXPECT_EQ(g->dp_rank, 2);
  CheckConsistent(l, 32);
  // With experts: EP 4 x expert-TP 2 in blocks of 8, four copies.
  const ParallelLayout moe = Layout(8, 4, 2, 4);
  g = GroupsOf(moe, 32, 19);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_THAT(g->expert_tp, ElementsAre(18, 19));
  EXPECT_THAT(g->ep, ElementsAre(17, 19, 21, 23));
  EXPECT_THAT(g->expert_dp, ElementsAre(3, 11, 19, 27));
  CheckConsistent(moe, 32);
}

// With expert_tp 1 the EP and expert-DP groups are today's (rl/expert_comm.cc).
TEST(LayoutGroupsTest, ExpertParallelAsToday) {
  for (int64_t ep : {1, 2, 4}) {
    for (int64_t r = 0; r < 8; ++r) {
      auto g = GroupsOf(Layout(1, ep), 8, r);
      ASSERT_TRUE(g.ok()) << g.status();
      Ranks block, replicas;
      for (int64_t i = 0; i < ep; ++i) block.push_back(r - r % ep + i);
      for (int64_t q = r % ep; q < 8; q += ep) replicas.push_back(q);
      EXPECT_THAT(g->ep, ElementsAreArray(block)) << ep << " " << r;
      EXPECT_THAT(g->expert_dp, ElementsAreArray(replicas)) << ep << " " << r;
    }
  }
}

TEST(LayoutGroupsTest, Errors) {
  EXPECT_EQ(GroupsOf(Layout(2), 4, 4).status().message(), "rank must be in [0, 4), got 4");
  EXPECT_EQ(GroupsOf(Layout(3), 4, 0).status().message(),
            "parallel.tp (3) must divide distributed.world_size (4)");
  EXPECT_EQ(GroupsOf(Layout(2, 1, 1, 4), 4, 0).status().message(),
            "parallel.tp x parallel.dp (2 x 4 = 8) must equal distributed.world_size (4)");
}

// The run config's `parallel:` section and the older distributed.expert_parallel.
class ParallelConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = JoinPath(::testing::TempDir(), "parallel_layout_test.XXXXXX");
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    root_ = tmpl;
    ASSERT_TRUE(WriteFileAtomic(JoinPath(root_, "tiny.json"), "{}").ok());
    ASSERT_TRUE(WriteFileAtomic(JoinPath(root_, "train.jsonl"),
                                "{\"prompt\": \"1+1\", \"answer\": \"2\"}\n").ok());
  }
  void TearDown() override { std::filesystem::remove_all(root_); }

  absl::StatusOr<RunConfig> Load(const std::string& extra) {
    const std::string path = JoinPath(root_, "x.yaml");
    EXPECT_TRUE(WriteFileAtomic(path, absl::StrCat("run:\n  output_dir: out\n  steps: 3\n"
                                                   "model:\n  init_config: tiny.json\n"
                                                   "data:\n  train: train.jsonl\n", extra))
                    .ok());
    return LoadRunConfig(path);
  }

  std::string root_;
};

TEST_F(ParallelConfigTest, EpFromEitherKey) {
  auto c = Load("parallel:\n  ep: 2\ndistributed:\n  world_size: 4\n");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->parallel.ep, 2);
  EXPECT_EQ(c->distributed.expert_parallel, 2);  // what the learner reads
  c = Load("distributed:\n  world_size: 4\n  expert_parallel: 4\n");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->parallel.ep, 4);
  EXPECT_EQ(c->distributed.expert_parallel, 4);
  c = Load("parallel:\n  ep: 2\ndistributed:\n  world_size: 4\n  expert_parallel: 2\n");
  ASSERT_TRUE(c.ok()) << c.status();
  c = Load("parallel:\n  ep: 2\ndistributed:\n  world_size: 4\n  expert_parallel: 4\n");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()),
              HasSubstr("x.yaml:9: parallel.ep (2) and distributed.expert_parallel (4) differ; "
                        "distributed.expert_parallel is the older spelling of parallel.ep: give "
                        "parallel.ep alone"));
  // The resolved config writes both, and reads back to the same layout.
  c = Load("parallel:\n  ep: 2\ndistributed:\n  world_size: 2\n");
  ASSERT_TRUE(c.ok()) << c.status();
  const std::string again = JoinPath(root_, "resolved.yaml");
  ASSERT_TRUE(WriteFileAtomic(again, DescribeRunConfig(*c)).ok());
  auto back = LoadRunConfig(again);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->parallel.ep, 2);
  EXPECT_EQ(back->distributed.expert_parallel, 2);
}

TEST_F(ParallelConfigTest, ErrorsNameTheKey) {
  auto c = Load("parallel:\n  ep: 3\ndistributed:\n  world_size: 4\n");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("expert_parallel must divide world_size (4), got 3"));
  c = Load("parallel:\n  tpp: 2\n");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("parallel.tpp"));
  c = Load("parallel:\n  tp: 0\n");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("parallel.tp must be >= 1, got 0"));
  c = Load("parallel:\n  tp: 3\ndistributed:\n  world_size: 4\n");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(),
              HasSubstr("parallel.tp (3) must divide distributed.world_size (4)"));
  c = Load("parallel:\n  sequence_parallel: true\n");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("parallel.sequence_parallel needs tp > 1"));
  // Tensor parallelism runs; valid layouts the run does not take yet are refused by name.
  c = Load("parallel:\n  tp: 2\ndistributed:\n  world_size: 4\n");
  EXPECT_TRUE(c.ok()) << c.status();
  c = Load("parallel:\n  tp: 2\n  sequence_parallel: true\ndistributed:\n  world_size: 2\n");
  EXPECT_TRUE(c.ok()) << c.status();
  // Sequence parallelism drops tokens as one process does, with expert parallelism too.
  c = Load("parallel:\n  tp: 2\n  sequence_parallel: true\noptimizer:\n  moe_capacity_factor: 1.25\n");
  EXPECT_TRUE(c.ok()) << c.status();
  c = Load("parallel:\n  tp: 2\n  ep: 2\n  sequence_parallel: true\noptimizer:\n"
           "  moe_capacity_factor: 1.25\ndistributed:\n  world_size: 4\n");
  EXPECT_TRUE(c.ok()) << c.status();
  c = Load("parallel:\n  tp: 2\n  ep: 2\ndistributed:\n  world_size: 4\n");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(),
              HasSubstr("parallel: tp 2 with ep 2 x expert_tp 1 needs sequence_parallel: true"));
  c = Load("parallel:\n  tp: 2\n  ep: 2\n  sequence_parallel: true\ndistributed:\n"
           "  world_size: 4\n");
  EXPECT_TRUE(c.ok()) << c.status();
  // Expert-TP runs (sharded experts); the ranks started are checked at start-up.
  c = Load("parallel:\n  ep: 2\n  expert_tp: 2\ndistributed:\n  world_size: 4\n");
  EXPECT_TRUE(c.ok()) << c.status();
}

}  // namespace
}  // namespace lightrl
