// The model built for one tensor-parallel shard (policy/shard_spec.h): created from a seed
// or loaded from an HF checkpoint of the whole model, it holds exactly ShardBlock of each
// whole tensor (and its own heads' slopes); bad shards and what a shard cannot do yet are
// clear errors. Its forward against the whole model runs over real processes
// (tests/python/tensor_parallel_test.py).
#include <gtest/gtest.h>

#include <stdlib.h>

#include <random>

#include "common/file_util.h"
#include "policy/checkpoint.h"
#include "policy/minimax_model.h"
#include "policy/policy_model.h"
#include "tests/temp_dir.h"
#include "tests/test_models.h"

namespace lightrl {
namespace {

ShardCoords Tp(int64_t tp, int64_t rank) {
  ShardCoords c;
  c.tp = tp;
  c.tp_rank = rank;
  return c;
}

void ExpectBlocksOf(PolicyModel& shard, PolicyModel& whole) {
  const auto full = whole.module()->named_parameters();
  int64_t split = 0;
  for (auto& p : shard.module()->named_parameters()) {
    auto block = ShardBlock(p.key(), full[p.key()], whole.config(), shard.shard());
    ASSERT_TRUE(block.ok()) << block.status();
    ASSERT_EQ(p.value().sizes(), block->sizes()) << p.key();
    EXPECT_TRUE(torch::equal(p.value(), *block)) << p.key();
    if (p.value().numel() < full[p.key()].numel()) ++split;
  }
  // Embedding, LM head and each attention's projections (and lightning norms) are split.
  EXPECT_EQ(split, 2 + 4 + 4 + 4);
  for (int64_t l : {0, 2}) {
    auto* mine = shard.module()->model->layers[l]->as<DecoderLayerImpl>()->lightning.get();
    auto* all = whole.module()->model->layers[l]->as<DecoderLayerImpl>()->lightning.get();
    ASSERT_EQ(mine->num_heads, 2);
    EXPECT_TRUE(torch::equal(mine->slope, all->slope.narrow(0, shard.shard().tp_rank * 2, 2)));
  }
}

TEST(ShardedModelTest, CreatedAndLoadedShardsAreBlocksOfTheWholeModel) {
  const uint64_t seed = std::random_device{}();
  const ModelConfig config = TinyParallelConfig();
  auto whole = PolicyModel::Create(config, seed);
  ASSERT_TRUE(whole.ok()) << whole.status();
  TempDir dir;
  ASSERT_TRUE((*whole)->Save(dir.path()).ok());
  for (int64_t rank : {0, 1}) {
    auto created = PolicyModel::Create(config, seed, {}, Tp(2, rank));
    ASSERT_TRUE(created.ok()) << created.status();
    ExpectBlocksOf(**created, **whole);
    auto loaded = PolicyModel::Load(dir.path(), {}, Tp(2, rank));
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    ExpectBlocksOf(**loaded, **whole);
  }
}

TEST(ShardedModelTest, ErrorsNameTheShardAndWhatIsMissing) {
  const ModelConfig config = TinyParallelConfig();
  auto bad = PolicyModel::Create(config, 1, {}, Tp(3, 0));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().ToString().find("tp (3) must divide num_attention_heads (4)"),
            std::string::npos)
      << bad.status();
  auto rank_out = PolicyModel::Create(config, 1, {}, Tp(2, 2));
  ASSERT_FALSE(rank_out.ok());
  EXPECT_NE(rank_out.status().ToString().find("tp_rank must be in [0, 2), got 2"), std::string::npos)
      << rank_out.status();

  auto shard = PolicyModel::Create(config, 1, {}, Tp(2, 1));
  ASSERT_TRUE(shard.ok()) << shard.status();
  TempDir dir;
  const absl::Status saved = (*shard)->Save(dir.path());
  EXPECT_EQ(saved.code(), absl::StatusCode::kUnimplemented) << saved;
  EXPECT_NE(saved.ToString().find("tp 1/2"), std::string::npos) << saved;
  EXPECT_EQ((*shard)->ExportWeights(DType::kF32).status().code(), absl::StatusCode::kUnimplemented);
  // A sharded forward is a collective: without the TP group it refuses to run.
  try {
    (*shard)->module()->Forward(torch::tensor({1, 2, 3}, torch::kInt64),
                                PackedLayout::FromLengths({3}));
    ADD_FAILURE() << "a TP shard ran without its TP group";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("ForwardOptions.tensor_parallel must be set"),
              std::string::npos)
        << e.what();
  }
}

// A weight update of the whole model into a shard: ImportWeights takes the whole tensors
// (WeightSpecs gives their whole shapes) and keeps the blocks; ImportLocalWeights takes
// the blocks alone (as another shard's ExportLocalWeights gives them); both check names,
// shapes and sizes first and change nothing on an error.
TEST(ShardedModelTest, ShardsTakeWholeUpdatesAndTheirBlocks) {
  const uint64_t seed = std::random_device{}();
  const ModelConfig config = TinyParallelConfig();
  auto whole = PolicyModel::Create(config, seed);
  auto next = PolicyModel::Create(config, seed + 1);
  ASSERT_TRUE(whole.ok() && next.ok());
  auto update = (*next)->ExportWeights(DType::kF32);
  ASSERT_TRUE(update.ok()) << update.status();
  for (int64_t rank : {0, 1}) {
    auto shard = PolicyModel::Create(config, seed, {}, Tp(2, rank));
    ASSERT_TRUE(shard.ok()) << shard.status();
    const auto specs = (*shard)->WeightSpecs(), want = (*next)->WeightSpecs();
    ASSERT_EQ(specs.size(), want.size());
    for (size_t i = 0; i < specs.size(); ++i) {
      EXPECT_EQ(specs[i].name, want[i].name);
      EXPECT_EQ(specs[i].shape, want[i].shape) << specs[i].name;
    }
    ASSERT_TRUE((*shard)->ImportWeights(DType::kF32, *update).ok());
    ExpectBlocksOf(**shard, **next);

    // The other rank's blocks of `whole` go in through ImportLocalWeights.
    auto source = PolicyModel::Create(config, seed, {}, Tp(2, rank));
    ASSERT_TRUE(source.ok());
    auto blocks = (*source)->ExportLocalWeights(DType::kBF16);
    ASSERT_TRUE(blocks.ok());
    ASSERT_TRUE((*shard)->ImportLocalWeights(DType::kBF16, *blocks).ok());
    auto back = (*shard)->ExportLocalWeights(DType::kBF16);
    ASSERT_TRUE(back.ok());
    for (size_t i = 0; i < blocks->size(); ++i) EXPECT_EQ((*back)[i].data, (*blocks)[i].data);

    // Errors name the tensor and leave every parameter as it was.
    auto before = (*shard)->ExportLocalWeights(DType::kF32);
    ASSERT_TRUE(before.ok());
    auto wrong = *update;
    wrong[3].shape[0] /= 2;
    wrong[3].data.resize(wrong[3].data.size() / 2);
    const absl::Status refused = (*shard)->ImportWeights(DType::kF32, wrong);
    EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(refused.ToString().find(wrong[3].name), std::string::npos) << refused;
    const absl::Status local = (*shard)->ImportLocalWeights(DType::kF32, *update);
    EXPECT_EQ(local.code(), absl::StatusCode::kInvalidArgument) << local;
    auto after = (*shard)->ExportLocalWeights(DType::kF32);
    ASSERT_TRUE(after.ok());
    for (size_t i = 0; i < before->size(); ++i) EXPECT_EQ((*after)[i].data, (*before)[i].data);
  }
}

}  // namespace
}  // namespace lightrl
