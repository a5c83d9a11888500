// Activation checkpointing per decoder layer (ForwardOptions::checkpoint_layers): the
// layers' forward runs again in backward, so values and every parameter's gradient must
// equal the plain forward's, on ragged packed documents with the MoE aux loss and token
// dropping in the loss. Its tensor-parallel form runs in tests/python/tensor_parallel_test.py.
#include <gtest/gtest.h>

#include <random>

#include "policy/minimax_model.h"
#include "tests/test_models.h"

namespace lightrl {
namespace {

struct PassResult {
  torch::Tensor logp, aux;
  std::vector<torch::Tensor> grads;
};

PassResult ForwardBackward(MiniMaxForCausalLM& model, const torch::Tensor& tokens,
                    const PackedLayout& layout, const torch::Tensor& upstream, bool checkpoint) {
  model->zero_grad();
  ForwardOptions o;
  o.train_lightning = true;
  o.moe_capacity_factor = 1.0;
  o.checkpoint_layers = checkpoint;
  auto out = model->Forward(tokens, layout, o);
  auto logp = model->TokenLogprobs(out.hidden, torch::roll(tokens, -1));
  ((logp * upstream).sum() + 0.3 * out.aux_loss).backward();
  PassResult r{logp.detach(), out.aux_loss.detach(), {}};
  for (auto& p : model->parameters()) {
    r.grads.push_back(p.grad().defined() ? p.grad().clone() : torch::zeros_like(p));
  }
  return r;
}

TEST(ActivationCheckpointingTest, SameValuesAndGradientsAsThePlainForward) {
  const uint64_t seed = std::random_device{}();
  MiniMaxForCausalLM model(TinyParallelConfig());
  model->InitRandom(seed);
  model->train();
  std::mt19937_64 rng(seed);
  const PackedLayout layout = PackedLayout::FromLengths(
      {5 + static_cast<int64_t>(rng() % 7), 1, 9 + static_cast<int64_t>(rng() % 5)});
  std::vector<int64_t> ids;
  for (int64_t t = 0; t < layout.num_tokens(); ++t) ids.push_back(static_cast<int64_t>(rng() % 48));
  const auto tokens = torch::tensor(ids, torch::kInt64);
  torch::manual_seed(seed);
  const auto upstream = torch::randn({layout.num_tokens()});

  const PassResult plain = ForwardBackward(model, tokens, layout, upstream, false);
  const PassResult ckpt = ForwardBackward(model, tokens, layout, upstream, true);
  EXPECT_TRUE(torch::allclose(ckpt.logp, plain.logp, 0, 1e-6)) << "seed " << seed;
  EXPECT_TRUE(torch::allclose(ckpt.aux, plain.aux, 0, 1e-6)) << "seed " << seed;
  const auto names = model->named_parameters().keys();
  ASSERT_EQ(ckpt.grads.size(), plain.grads.size());
  int64_t nonzero = 0;
  for (size_t i = 0; i < plain.grads.size(); ++i) {
    const double scale = plain.grads[i].abs().max().item<double>();
    if (scale > 0) ++nonzero;
    EXPECT_LE((ckpt.grads[i] - plain.grads[i]).abs().max().item<double>(), 1e-6 * scale + 1e-12)
        << names[i] << ", seed " << seed;
  }
  // The attention, norms, router and the experts some token reached all learn.
  EXPECT_GT(nonzero, 30);

  // Without gradients recorded, checkpointing changes nothing and keeps nothing.
  torch::NoGradGuard no_grad;
  ForwardOptions o;
  o.checkpoint_layers = true;
  auto hidden = model->Forward(tokens, layout, o).hidden;
  EXPECT_FALSE(hidden.requires_grad());
}

}  // namespace
}  // namespace lightrl
