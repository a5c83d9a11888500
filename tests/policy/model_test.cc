#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <random>

#include "common/file_util.h"
#include "common/safetensors.h"
#include "policy/minimax_model.h"
#include "policy/model_config.h"
#include "policy/policy_model.h"
#include "policy/sharded_checkpoint.h"
#include "tests/temp_dir.h"
#include "tests/test_models.h"

namespace lightrl {
namespace {

ModelConfig TinyConfig() {
  ModelConfig c;
  c.vocab_size = 61;
  c.hidden_size = 24;
  c.intermediate_size = 20;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 6;
  c.rotary_dim = 4;
  c.num_local_experts = 4;
  c.num_experts_per_tok = 2;
  c.block_size = 5;
  c.layer_kinds = {LayerKind::kLightning, LayerKind::kSoftmax, LayerKind::kLightning};
  c.linear_attn_alpha = c.full_attn_alpha = c.mlp_alpha = std::pow(6.0, 0.25);
  return c;
}

double MaxDiff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

TEST(ModelTest, PackedForwardEqualsSeparateForwards) {
  torch::manual_seed(std::random_device{}());
  MiniMaxForCausalLM model(TinyConfig());
  model->InitRandom(std::random_device{}());
  torch::NoGradGuard no_grad;
  std::vector<int64_t> lengths = {7, 1, 12, 5};
  std::vector<torch::Tensor> docs;
  for (int64_t n : lengths) docs.push_back(torch::randint(0, 61, {n}, torch::kInt64));
  auto packed = model->Forward(torch::cat(docs), PackedLayout::FromLengths(lengths)).hidden;
  int64_t offset = 0;
  for (size_t i = 0; i < docs.size(); ++i) {
    auto alone = model->Forward(docs[i], PackedLayout::FromLengths({lengths[i]})).hidden;
    EXPECT_LT(MaxDiff(packed.narrow(0, offset, lengths[i]), alone), 1e-5) << "document " << i;
    offset += lengths[i];
  }
}

TEST(ModelTest, TrainingLightningPathGivesSameValuesAndGradients) {
  MiniMaxForCausalLM model(TinyConfig());
  model->InitRandom(std::random_device{}());
  std::vector<int64_t> lengths = {9, 14};
  auto tokens = torch::randint(0, 61, {23}, torch::kInt64);
  auto layout = PackedLayout::FromLengths(lengths);
  auto targets = torch::randint(0, 61, {23}, torch::kInt64);

  auto loss_of = [&](bool train) {
    ForwardOptions opts;
    opts.train_lightning = train;
    auto out = model->Forward(tokens, layout, opts);
    return -model->TokenLogprobs(out.hidden, targets).mean() + 0.01 * out.aux_loss;
  };
  model->zero_grad();
  auto l1 = loss_of(false);
  l1.backward();
  std::vector<torch::Tensor> g1;
  for (auto& p : model->parameters()) g1.push_back(p.grad().clone());
  model->zero_grad();
  auto l2 = loss_of(true);
  l2.backward();
  EXPECT_NEAR(l1.item<double>(), l2.item<double>(), 1e-5);
  size_t i = 0;
  for (auto& p : model->parameters()) {
    EXPECT_LT(MaxDiff(p.grad(), g1[i]), 1e-4 * (1 + g1[i].abs().max().item<double>()));
    ++i;
  }
}

TEST(ModelTest, MoeCapacityDropsOverflowAndKeepsTheRest) {
  ModelConfig c = TinyConfig();
  SparseMoe moe(c, ShardCoords{});
  torch::NoGradGuard no_grad;
  for (auto& p : moe->parameters()) p.normal_(0, 0.3);
  auto x = torch::randn({40, c.hidden_size});
  auto [full, aux] = moe->forward(x, 0);
  auto [dropped, aux2] = moe->forward(x, 0.5);
  EXPECT_NEAR(aux.item<double>(), aux2.item<double>(), 1e-6);
  EXPECT_GT(aux.item<double>(), 0.9);  // E * sum f P >= top_k * ... is about top_k when balanced
  // Capacity 0.5 leaves at most half the assignments, so outputs must differ somewhere,
  // and a huge capacity must change nothing.
  EXPECT_GT(MaxDiff(full, dropped), 1e-4);
  auto [same, aux3] = moe->forward(x, 100.0);
  EXPECT_LT(MaxDiff(full, same), 1e-6);
}

TEST(ModelTest, MoeDenseAndSparsePathsAgree) {
  ModelConfig c = TinyConfig();
  SparseMoe moe(c, ShardCoords{});
  torch::NoGradGuard no_grad;
  for (auto& p : moe->parameters()) p.normal_(0, 0.3);
  // 700 tokens x top-2 takes the sparse path; 100-token slices take the dense one.
  auto x = torch::randn({700, c.hidden_size});
  auto sparse = moe->forward(x, 0).first;
  for (int64_t start = 0; start < 700; start += 100) {
    auto dense = moe->forward(x.narrow(0, start, 100), 0).first;
    EXPECT_LT(MaxDiff(dense, sparse.narrow(0, start, 100)), 1e-5);
  }
}

TEST(ModelTest, MoeForwardRoutedRunsTheGivenRouting) {
  ModelConfig c = TinyConfig();
  SparseMoe moe(c, ShardCoords{});
  torch::NoGradGuard no_grad;
  for (auto& p : moe->parameters()) p.normal_(0, 0.3);
  const int64_t E = c.num_local_experts, k = c.num_experts_per_tok;
  // 40 tokens take the dense path, 700 the sparse one.
  for (int64_t T : {40, 700}) {
    auto x = torch::randn({T, c.hidden_size});
    // The router's own decision gives forward's output.
    auto [probs, top_w, top_i] = moe->Route(x);
    EXPECT_LT(MaxDiff(moe->ForwardRouted(x, top_w, top_i), moe->forward(x, 0).first), 1e-6) << T;
    // Any other routing (distinct experts per token, arbitrary weights) is what runs:
    // sum_j w[t, j] expert_{i[t, j]}(x[t]).
    auto ids = std::get<1>(torch::rand({T, E}).sort(/*dim=*/1)).narrow(1, 0, k);
    auto w = torch::rand({T, k});
    auto expected = [&](const torch::Tensor& weights) {
      auto combine = torch::zeros({T, E}).scatter(1, ids, weights);
      auto out = torch::zeros({T, c.hidden_size});
      for (int64_t e = 0; e < E; ++e) {
        out += combine.select(1, e).unsqueeze(1) * moe->expert(e)->forward(x);
      }
      return out;
    };
    EXPECT_LT(MaxDiff(moe->ForwardRouted(x, w, ids), expected(w)), 1e-5) << T;
    // Assignments outside `keep` count for nothing.
    auto keep = torch::rand({T, k}) < 0.5;
    EXPECT_LT(MaxDiff(moe->ForwardRouted(x, w, ids, keep), expected(w * keep.to(torch::kFloat32))),
              1e-5)
        << T;
  }
}

TEST(ModelTest, MoeSparsePathGradientsEqualTheDensePath) {
  ModelConfig c = TinyConfig();
  SparseMoe moe(c, ShardCoords{});
  {
    torch::NoGradGuard no_grad;
    for (auto& p : moe->parameters()) p.normal_(0, 0.3);
  }
  auto x = torch::randn({700, c.hidden_size});
  auto r = torch::randn({700, c.hidden_size});
  auto grads_of = [&](bool sparse) {
    moe->zero_grad();
    auto xi = x.clone().requires_grad_();
    torch::Tensor loss = torch::zeros({});
    if (sparse) {
      loss = (moe->forward(xi, 0).first * r).sum();
    } else {
      for (int64_t start = 0; start < 700; start += 100) {
        loss = loss + (moe->forward(xi.narrow(0, start, 100), 0).first * r.narrow(0, start, 100)).sum();
      }
    }
    loss.backward();
    std::vector<torch::Tensor> g{xi.grad().clone()};
    for (auto& p : moe->parameters()) g.push_back(p.grad().defined() ? p.grad().clone() : torch::zeros_like(p));
    return g;
  };
  auto gs = grads_of(true), gd = grads_of(false);
  ASSERT_EQ(gs.size(), gd.size());
  for (size_t i = 0; i < gs.size(); ++i) {
    EXPECT_LT(MaxDiff(gs[i], gd[i]), 1e-4 * (1 + gd[i].abs().max().item<double>())) << "tensor " << i;
  }
}

TEST(ModelTest, MoeSparsePathDropsExactlyTheAssignmentsPastCapacity) {
  ModelConfig c = TinyConfig();
  SparseMoe moe(c, ShardCoords{});
  torch::NoGradGuard no_grad;
  for (auto& p : moe->parameters()) p.normal_(0, 0.3);
  const int64_t T = 700, k = c.num_experts_per_tok, E = c.num_local_experts;
  auto x = torch::randn({T, c.hidden_size});
  const double factor = 0.6;
  auto out = moe->forward(x, factor).first;
  // Reference: token by token, an assignment counts if fewer than `capacity` earlier
  // assignments (in token order, then slot order) went to its expert.
  const int64_t capacity = static_cast<int64_t>(std::ceil(factor * T * k / E));
  auto [probs, top_w, top_i] = moe->Route(x);
  std::vector<int64_t> used(E, 0);
  auto expected = torch::zeros({T, c.hidden_size});
  int64_t dropped = 0;
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = top_i[t][j].item<int64_t>();
      if (used[e]++ >= capacity) {
        ++dropped;
        continue;
      }
      expected[t] += top_w[t][j].item<double>() *
                     moe->expert(e)->forward(x.narrow(0, t, 1)).squeeze(0);
    }
  }
  EXPECT_GT(dropped, 0);
  EXPECT_LT(MaxDiff(out, expected), 1e-5);
}

TEST(PolicyModelTest, SaveLoadRoundTripKeepsLogprobs) {
  TempDir dir;
  auto model = PolicyModel::Create(TinyConfig(), std::random_device{}());
  ASSERT_TRUE(model.ok()) << model.status();
  std::vector<std::vector<int32_t>> seqs = {{1, 5, 9, 2, 60, 0, 33}, {4}, {7, 7, 7, 7, 7, 7, 7, 7}};
  auto before = (*model)->TokenLogprobs(seqs);
  ASSERT_TRUE(before.ok()) << before.status();
  ASSERT_TRUE((*model)->Save(dir.path()).ok());
  auto loaded = PolicyModel::Load(dir.path());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  auto after = (*loaded)->TokenLogprobs(seqs, /*max_batch_tokens=*/4);
  ASSERT_TRUE(after.ok());
  for (size_t i = 0; i < seqs.size(); ++i) {
    ASSERT_EQ((*after)[i].size(), seqs[i].size());
    EXPECT_TRUE(std::isnan((*after)[i][0]));
    for (size_t t = 1; t < seqs[i].size(); ++t) {
      EXPECT_NEAR((*after)[i][t], (*before)[i][t], 1e-5);
      EXPECT_LT((*after)[i][t], 0.f);
    }
  }
}

// The torch-free list of a checkpoint's tensors is the model's parameters, name and shape.
TEST(PolicyModelTest, ModelTensorShapesAreTheParameters) {
  ModelConfig tied = TinyParallelConfig();
  tied.tie_word_embeddings = true;
  for (const ModelConfig& config : {TinyParallelConfig(), tied, TinyConfig()}) {
    MiniMaxForCausalLM model(config);
    std::vector<std::pair<std::string, std::vector<int64_t>>> params;
    for (const auto& p : model->named_parameters()) {
      if (config.tie_word_embeddings && p.key() == "lm_head.weight") continue;
      params.push_back({p.key(), std::vector<int64_t>(p.value().sizes().begin(),
                                                      p.value().sizes().end())});
    }
    std::sort(params.begin(), params.end());
    EXPECT_EQ(ModelTensorShapes(config), params);
  }
}

// A model saved in HF format, split into a sharded checkpoint of each layout the way the
// ranks would write it, loads with the same bytes in every parameter and the same
// logprobs, bit for bit.
TEST(PolicyModelTest, ShardedCheckpointLoadsAsTheHfOne) {
  TempDir dir;
  const ModelConfig config = TinyParallelConfig();
  auto model = PolicyModel::Create(config, std::random_device{}());
  ASSERT_TRUE(model.ok()) << model.status();
  const std::string hf = JoinPath(dir.path(), "hf");
  ASSERT_TRUE((*model)->Save(hf, DType::kBF16).ok());
  auto from_hf = PolicyModel::Load(hf);
  ASSERT_TRUE(from_hf.ok()) << from_hf.status();
  auto source = ShardedCheckpoint::Open(hf);
  ASSERT_TRUE(source.ok()) << source.status();
  std::mt19937 rng(std::random_device{}());
  std::vector<std::vector<int32_t>> seqs;
  for (int n : {9, 1, 17}) {
    seqs.emplace_back();
    for (int i = 0; i < n; ++i) seqs.back().push_back(static_cast<int32_t>(rng() % 48));
  }
  auto want = (*from_hf)->TokenLogprobs(seqs);
  ASSERT_TRUE(want.ok()) << want.status();
  for (const ShardLayout& layout : {ShardLayout{2, 2, 1}, ShardLayout{1, 4, 2}, ShardLayout{2, 2, 2}}) {
    SCOPED_TRACE(layout.ToString());
    const std::string sharded = JoinPath(dir.path(), layout.ToString());
    for (const ShardCoords& coords : layout.AllCoords()) {
      auto blocks = source->ReadShards(config, coords);
      ASSERT_TRUE(blocks.ok()) << blocks.status();
      std::vector<TensorData> views;
      for (const TensorBlock& b : *blocks) views.push_back(b.view());
      ASSERT_TRUE(WriteRankShards(sharded, config, coords, views).ok());
    }
    ASSERT_TRUE(WriteShardedIndex(sharded, config, layout).ok());
    auto config_text = ReadFile(JoinPath(hf, "config.json"));
    ASSERT_TRUE(config_text.ok());
    ASSERT_TRUE(WriteFileAtomic(JoinPath(sharded, "config.json"), *config_text).ok());
    auto loaded = PolicyModel::Load(sharded);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    auto a = (*from_hf)->ExportWeights(DType::kF32);
    auto b = (*loaded)->ExportWeights(DType::kF32);
    ASSERT_TRUE(a.ok() && b.ok());
    ASSERT_EQ(a->size(), b->size());
    for (size_t i = 0; i < a->size(); ++i) {
      EXPECT_EQ((*a)[i].name, (*b)[i].name);
      EXPECT_TRUE((*a)[i].data == (*b)[i].data) << (*a)[i].name;
    }
    auto got = (*loaded)->TokenLogprobs(seqs);
    ASSERT_TRUE(got.ok()) << got.status();
    for (size_t i = 0; i < seqs.size(); ++i) {
      for (size_t t = 1; t < seqs[i].size(); ++t) EXPECT_EQ((*got)[i][t], (*want)[i][t]) << i << "," << t;
    }
  }
}

// A sharded checkpoint missing a piece fails to load with the tensor named.
TEST(PolicyModelTest, BrokenShardedCheckpointNamesTheTensor) {
  TempDir dir;
  const ModelConfig config = TinyParallelConfig();
  auto model = PolicyModel::Create(config, 5);
  ASSERT_TRUE(model.ok());
  const std::string hf = JoinPath(dir.path(), "hf");
  ASSERT_TRUE((*model)->Save(hf).ok());
  auto source = ShardedCheckpoint::Open(hf);
  ASSERT_TRUE(source.ok());
  const ShardLayout layout{2, 1, 1};
  const std::string sharded = JoinPath(dir.path(), "sharded");
  for (const ShardCoords& coords : layout.AllCoords()) {
    auto blocks = source->ReadShards(config, coords);
    ASSERT_TRUE(blocks.ok());
    std::vector<TensorData> views;
    for (const TensorBlock& b : *blocks) {
      // The second TP rank loses its block of one projection.
      if (coords.tp_rank == 1 && b.name == "model.layers.1.self_attn.k_proj.weight") continue;
      views.push_back(b.view());
    }
    ASSERT_TRUE(WriteRankShards(sharded, config, coords, views).ok());
  }
  absl::Status s = WriteShardedIndex(sharded, config, layout);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(std::string(s.message()).find("model.layers.1.self_attn.k_proj.weight"),
            std::string::npos) << s;
}

// A rank's part of the model holds only its experts, under their global names, each as
// its FFN block (policy/shard_spec.h); its tensors are the slices of the whole model made
// from the same seed, and what needs whole tensors refuses it by name.
TEST(PolicyModelTest, ShardHoldsOnlyItsExpertBlocks) {
  const ModelConfig c = TinyConfig();  // 4 experts, FFN 20, hidden 24
  const uint64_t seed = std::random_device{}();
  ShardCoords shard;
  shard.ep = 2;
  shard.ep_rank = 1;
  shard.expert_tp = 2;
  shard.expert_tp_rank = 1;
  auto whole = PolicyModel::Create(c, seed);
  auto part = PolicyModel::CreateShard(c, seed, shard);
  ASSERT_TRUE(whole.ok() && part.ok()) << part.status();
  auto full = (*whole)->module()->named_parameters();
  int64_t experts_held = 0;
  for (const auto& p : (*part)->module()->named_parameters()) {
    ASSERT_TRUE(full.contains(p.key())) << p.key();
    const torch::Tensor want = full[p.key()];
    const int64_t e = ExpertIndexOf(p.key());
    if (e < 0) {
      EXPECT_TRUE(torch::equal(p.value(), want)) << p.key();
      continue;
    }
    ++experts_held;
    EXPECT_TRUE(e == 2 || e == 3) << p.key();
    const bool w2 = p.key().find(".w2.") != std::string::npos;
    const torch::Tensor block = want.narrow(w2 ? 1 : 0, 10, 10);
    EXPECT_EQ(p.value().sizes(), block.sizes()) << p.key();
    EXPECT_TRUE(torch::equal(p.value(), block)) << p.key();
  }
  EXPECT_EQ(experts_held, 3 * 2 * c.num_hidden_layers);  // w1, w2, w3 of 2 experts a layer

  auto* moe = (*part)->module()->model->layers[0]->as<DecoderLayerImpl>()->block_sparse_moe.get();
  try {
    moe->expert(0);
    ADD_FAILURE() << "expert 0 is not this rank's";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("expert 0 is not held by this rank"), std::string::npos) << e.what();
  }
  try {
    moe->forward(torch::randn({3, c.hidden_size}), 0);
    ADD_FAILURE() << "a sharded block ran without its collectives";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("runs only expert-parallel"), std::string::npos) << e.what();
  }
  TempDir dir;
  const absl::Status saved = (*part)->Save(dir.path());
  EXPECT_EQ(saved.code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(saved.message().find("of a model-parallel shard (tp 0/1, ep 1/2, expert_tp 1/2)"),
            std::string::npos) << saved;
  EXPECT_FALSE((*part)->ExportWeights(DType::kF32).ok());
  shard.expert_tp = 3;  // does not divide FFN 20
  EXPECT_FALSE(PolicyModel::CreateShard(c, seed, shard).ok());
}

TEST(PolicyModelTest, OutOfVocabularyTokenIsAnError) {
  auto model = PolicyModel::Create(TinyConfig(), 1);
  ASSERT_TRUE(model.ok());
  auto r = (*model)->TokenLogprobs({{1, 2}, {3, 61}});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("sequence 1, position 1: token id 61"),
            std::string::npos)
      << r.status();
}

TEST(PolicyModelTest, CheckpointProblemsNameTheTensor) {
  TempDir dir;
  auto model = PolicyModel::Create(TinyConfig(), 3);
  ASSERT_TRUE(model.ok());
  ASSERT_TRUE((*model)->Save(dir.path()).ok());
  auto ckpt = SafetensorsCheckpoint::Open(dir.path());
  ASSERT_TRUE(ckpt.ok());
  // Rewrite the file without one tensor, then with a wrong shape, then with an extra one.
  std::vector<TensorData> all;
  std::vector<std::vector<uint8_t>> bytes;
  for (const auto& name : ckpt->Names()) {
    const TensorInfo* t = ckpt->Find(name);
    bytes.emplace_back(t->data, t->data + t->nbytes);
  }
  size_t i = 0;
  for (const auto& name : ckpt->Names()) {
    const TensorInfo* t = ckpt->Find(name);
    all.push_back({name, t->dtype, t->shape, bytes[i].data(), t->nbytes});
    ++i;
  }
  const std::string victim = "model.layers.1.self_attn.k_proj.weight";
  const std::string file = JoinPath(dir.path(), "model.safetensors");

  std::vector<TensorData> missing;
  for (const auto& t : all) if (t.name != victim) missing.push_back(t);
  ASSERT_TRUE(WriteSafetensors(file, missing).ok());
  auto r = PolicyModel::Load(dir.path());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find(victim), std::string::npos) << r.status();

  std::vector<TensorData> misshaped = all;
  for (auto& t : misshaped) {
    if (t.name == victim) t.shape = {t.shape[1], t.shape[0]};
  }
  ASSERT_TRUE(WriteSafetensors(file, misshaped).ok());
  r = PolicyModel::Load(dir.path());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("has shape [24, 12]"), std::string::npos)
      << r.status();

  std::vector<TensorData> extra = all;
  float junk[3] = {1, 2, 3};
  extra.push_back({"model.layers.0.mystery.weight", DType::kF32, {3}, junk, 12});
  ASSERT_TRUE(WriteSafetensors(file, extra).ok());
  r = PolicyModel::Load(dir.path());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("unexpected tensor 'model.layers.0.mystery.weight'"),
            std::string::npos)
      << r.status();
}

TEST(ModelConfigTest, ErrorsNameFileAndField) {
  auto parse = [](const std::string& text) {
    auto j = Json::Parse(text);
    EXPECT_TRUE(j.ok());
    return ModelConfig::FromJson(*j, "cfg.json");
  };
  const std::string base =
      R"("vocab_size": 10, "hidden_size": 8, "intermediate_size": 4, "num_hidden_layers": 2,
         "num_attention_heads": 2, "layer_types": ["linear_attention", "full_attention"])";
  ASSERT_TRUE(parse("{" + base + "}").ok());
  auto r = parse("{" + base + R"(, "hidden_sise": 3})");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "cfg.json: hidden_sise is not a known MiniMax config field");
  r = parse(R"({"vocab_size": 10})");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("cfg.json: hidden_size is required"),
            std::string::npos);
  r = parse("{" + base + R"(, "num_key_value_heads": "two"})");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("num_key_value_heads must be an integer, got \"two\""),
            std::string::npos);
  r = parse(R"({"vocab_size": 10, "hidden_size": 8, "intermediate_size": 4, "num_hidden_layers": 2,
               "num_attention_heads": 2, "attn_type_list": [0, 2]})");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("attn_type_list[1]"), std::string::npos);
}

TEST(ModelConfigTest, M1NamingAndTransformersNamingAgree) {
  auto m1 = Json::Parse(R"({"vocab_size": 10, "hidden_size": 8, "intermediate_size": 4,
      "num_hidden_layers": 2, "num_attention_heads": 2, "attn_type_list": [0, 1],
      "layernorm_full_attention_alpha": 1.5, "layernorm_mlp_beta": 0.5, "rope_theta": 10000000,
      "rotary_dim": 2, "postnorm": true, "head_dim": 4})");
  ASSERT_TRUE(m1.ok());
  auto c = ModelConfig::FromJson(*m1, "m1.json");
  ASSERT_TRUE(c.ok()) << c.status();
  auto again = ModelConfig::FromJson(c->ToJson(), "hf.json");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->layer_kinds, c->layer_kinds);
  EXPECT_EQ(again->full_attn_alpha, 1.5);
  EXPECT_EQ(again->mlp_beta, 0.5);
  EXPECT_EQ(again->rotary_dim, 2);
  EXPECT_EQ(again->rope_theta, 1e7);
}

}  // namespace
}  // namespace lightrl
