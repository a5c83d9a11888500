// The messages rank 0 of a multi-process rollout instance sends its other ranks
// (rl/rollout_instance.h): batches and weight blocks survive the round trip exactly, and
// every truncation of a valid message, or a bad dtype, is an error rather than a crash or
// an allocation of the size a corrupt count claims.
#include <gtest/gtest.h>

#include <random>
#include <string>

#include "rl/rollout_instance.h"

namespace lightrl {
namespace {

TEST(RolloutInstanceWireTest, BatchesRoundTripAndTruncationsAreErrors) {
  std::mt19937_64 rng(std::random_device{}());
  std::vector<GenerationRequest> batch(1 + rng() % 4);
  for (GenerationRequest& r : batch) {
    r.id = "g" + std::to_string(rng() % 1000);
    for (size_t i = 0; i < 1 + rng() % 9; ++i) r.prompt.push_back(static_cast<int32_t>(rng() % 100));
    r.params.temperature = static_cast<double>(rng() % 100) / 50;
    r.params.max_new_tokens = 1 + static_cast<int64_t>(rng() % 64);
    r.params.stop_token_ids = {static_cast<int64_t>(rng() % 7)};
    r.params.stop_strings = {"</answer>"};
    r.params.seed = rng();
    r.params.n = 1 + static_cast<int64_t>(rng() % 3);
  }
  const std::string bytes = RolloutInstance::EncodeBatch(batch);
  auto back = RolloutInstance::DecodeBatch(bytes);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), batch.size());
  for (size_t i = 0; i < batch.size(); ++i) {
    EXPECT_EQ((*back)[i].id, batch[i].id);
    EXPECT_EQ((*back)[i].prompt, batch[i].prompt);
    EXPECT_EQ((*back)[i].params.seed, batch[i].params.seed);
    EXPECT_EQ((*back)[i].params.stop_strings, batch[i].params.stop_strings);
    EXPECT_EQ((*back)[i].params.n, batch[i].params.n);
  }
  for (size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_FALSE(RolloutInstance::DecodeBatch(bytes.substr(0, n)).ok()) << n;
  }
  EXPECT_FALSE(RolloutInstance::DecodeBatch(bytes + "x").ok());
}

// The results a copy's leader sends rank 0 (rollout.sharded_engine with data-parallel
// copies): every token, logprob bit, finish reason and status survives; truncations, a bad
// finish reason or status code, and trailing bytes are errors.
TEST(RolloutInstanceWireTest, ResultsRoundTripAndBadMessagesAreErrors) {
  std::mt19937_64 rng(std::random_device{}());
  std::uniform_real_distribution<float> logprob(-20.0f, 0.0f);
  std::vector<GenerationResult> results(1 + rng() % 4);
  for (GenerationResult& r : results) {
    r.id = "g" + std::to_string(rng() % 1000);
    if (rng() % 3 == 0) r.status = absl::InvalidArgumentError("prompt of " + std::to_string(rng() % 99));
    r.samples.resize(rng() % 3);
    for (GeneratedSample& s : r.samples) {
      for (size_t i = 0; i < rng() % 9; ++i) {
        s.tokens.push_back(static_cast<int32_t>(rng() % 5000));
        s.logprobs.push_back(logprob(rng));
      }
      s.finish_reason = static_cast<FinishReason>(rng() % 3);
    }
  }
  const std::string bytes = RolloutInstance::EncodeResults(results);
  auto back = RolloutInstance::DecodeResults(bytes);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), results.size());
  for (size_t i = 0; i < results.size(); ++i) {
    EXPECT_EQ((*back)[i].id, results[i].id);
    EXPECT_EQ((*back)[i].status, results[i].status);
    ASSERT_EQ((*back)[i].samples.size(), results[i].samples.size());
    for (size_t j = 0; j < results[i].samples.size(); ++j) {
      EXPECT_EQ((*back)[i].samples[j].tokens, results[i].samples[j].tokens);
      EXPECT_EQ((*back)[i].samples[j].logprobs, results[i].samples[j].logprobs);  // bit for bit
      EXPECT_EQ((*back)[i].samples[j].finish_reason, results[i].samples[j].finish_reason);
    }
  }
  for (size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_FALSE(RolloutInstance::DecodeResults(bytes.substr(0, n)).ok()) << n;
  }
  EXPECT_FALSE(RolloutInstance::DecodeResults(bytes + "x").ok());
  EXPECT_FALSE(RolloutInstance::DecodeResults(RolloutInstance::EncodeBatch({})).ok());
  // A finish reason past the last one: one result, one sample, no tokens.
  GenerationResult one;
  one.samples.resize(1);
  std::string bad = RolloutInstance::EncodeResults({one});
  bad.back() = 7;
  auto refused = RolloutInstance::DecodeResults(bad);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(std::string(refused.status().message()).find("finish reason 7"), std::string::npos)
      << refused.status();
}

TEST(RolloutInstanceWireTest, WeightBlocksRoundTripAndBadMessagesAreErrors) {
  std::mt19937_64 rng(std::random_device{}());
  std::vector<PolicyModel::WeightTensor> blocks(1 + rng() % 5);
  for (size_t i = 0; i < blocks.size(); ++i) {
    blocks[i].name = "model.layers." + std::to_string(i) + ".weight";
    blocks[i].shape = {static_cast<int64_t>(1 + rng() % 4), static_cast<int64_t>(1 + rng() % 4)};
    blocks[i].data.resize(static_cast<size_t>(blocks[i].shape[0] * blocks[i].shape[1] * 2));
    for (char& c : blocks[i].data) c = static_cast<char>(rng());
  }
  const std::string bytes = RolloutInstance::EncodeBlocks(DType::kBF16, blocks);
  auto back = RolloutInstance::DecodeBlocks(bytes);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->first, DType::kBF16);
  ASSERT_EQ(back->second.size(), blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    EXPECT_EQ(back->second[i].name, blocks[i].name);
    EXPECT_EQ(back->second[i].shape, blocks[i].shape);
    EXPECT_EQ(back->second[i].data, blocks[i].data);
  }
  for (size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_FALSE(RolloutInstance::DecodeBlocks(bytes.substr(0, n)).ok()) << n;
  }
  std::string bad_dtype = bytes;
  bad_dtype[0] = 99;
  EXPECT_FALSE(RolloutInstance::DecodeBlocks(bad_dtype).ok());
  // A count far past what the message holds is refused before anything is allocated.
  std::string huge = bytes;
  for (int i = 1; i < 9; ++i) huge[i] = '\xff';
  EXPECT_FALSE(RolloutInstance::DecodeBlocks(huge).ok());
}

}  // namespace
}  // namespace lightrl
