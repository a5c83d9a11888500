#include "common/safetensors.h"

#include <unistd.h>

#include <cstring>
#include <fstream>
#include <random>

#include <gtest/gtest.h>

#include "common/file_util.h"

namespace lightrl {
namespace {

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/lightrl_st_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { EXPECT_TRUE(RemoveTree(dir_).ok()); }
  std::string dir_;
};

std::vector<float> RandomFloats(size_t n, std::mt19937& rng) {
  std::normal_distribution<float> dist;
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

TEST_F(SafetensorsTest, RoundTripsSingleFile) {
  std::mt19937 rng(std::random_device{}());
  auto a = RandomFloats(6, rng);
  std::vector<uint16_t> b(10);
  for (auto& x : b) x = static_cast<uint16_t>(rng());
  std::string path = JoinPath(dir_, "x.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"a", DType::kF32, {2, 3}, a.data(), a.size() * 4},
                                      {"b.w", DType::kBF16, {10}, b.data(), b.size() * 2}},
                               {{"format", "pt"}})
                  .ok());
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  const TensorInfo* ta = (*f)->Find("a");
  ASSERT_NE(ta, nullptr);
  EXPECT_EQ(ta->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(std::memcmp(ta->data, a.data(), 24), 0);
  const TensorInfo* tb = (*f)->Find("b.w");
  ASSERT_NE(tb, nullptr);
  EXPECT_EQ(tb->dtype, DType::kBF16);
  EXPECT_EQ(std::memcmp(tb->data, b.data(), 20), 0);
  EXPECT_EQ((*f)->metadata().at("format"), "pt");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(ta->data) % 8, 0u);
}

TEST_F(SafetensorsTest, TruncatedFileIsAClearError) {
  std::mt19937 rng(std::random_device{}());
  auto a = RandomFloats(100, rng);
  std::string path = JoinPath(dir_, "t.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"weight", DType::kF32, {100}, a.data(), 400}}).ok());
  auto full = ReadFile(path);
  ASSERT_TRUE(full.ok());
  ASSERT_TRUE(WriteFileAtomic(path, full->substr(0, full->size() - 7)).ok());
  auto f = SafetensorsFile::Open(path);
  ASSERT_FALSE(f.ok());
  std::string msg(f.status().message());
  EXPECT_NE(msg.find("'weight'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
  EXPECT_NE(msg.find(path), std::string::npos) << msg;

  ASSERT_TRUE(WriteFileAtomic(path, full->substr(0, 5)).ok());
  EXPECT_FALSE(SafetensorsFile::Open(path).ok());
}

TEST_F(SafetensorsTest, ShapeAndByteCountMismatchIsRejected) {
  std::string header = R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})";
  std::string blob(8, '\0');
  uint64_t n = header.size();
  blob.replace(0, 8, reinterpret_cast<const char*>(&n), 8);
  blob += header + std::string(8, '\0');
  std::string path = JoinPath(dir_, "bad.safetensors");
  ASSERT_TRUE(WriteFileAtomic(path, blob).ok());
  auto f = SafetensorsFile::Open(path);
  ASSERT_FALSE(f.ok());
  EXPECT_NE(std::string(f.status().message()).find("needs 12 bytes"), std::string::npos)
      << f.status();
}

TEST_F(SafetensorsTest, ShardedCheckpointRoundTripsAndReplacesOldShards) {
  std::mt19937 rng(std::random_device{}());
  std::vector<std::vector<float>> data;
  std::vector<TensorData> tensors;
  for (int i = 0; i < 5; ++i) data.push_back(RandomFloats(64 + i, rng));
  for (int i = 0; i < 5; ++i) {
    tensors.push_back({"t" + std::to_string(i), DType::kF32, {64 + i}, data[i].data(),
                       data[i].size() * 4});
  }
  ASSERT_TRUE(WriteSafetensorsCheckpoint(dir_, tensors, 300).ok());
  EXPECT_TRUE(FileExists(JoinPath(dir_, "model.safetensors.index.json")));
  EXPECT_TRUE(FileExists(JoinPath(dir_, "model-00005-of-00005.safetensors")));
  auto ckpt = SafetensorsCheckpoint::Open(dir_);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ(ckpt->Names().size(), 5u);
  for (int i = 0; i < 5; ++i) {
    const TensorInfo* t = ckpt->Find("t" + std::to_string(i));
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(std::memcmp(t->data, data[i].data(), data[i].size() * 4), 0);
  }
  // Saving again unsharded must not leave the old index shadowing the new file.
  ASSERT_TRUE(WriteSafetensorsCheckpoint(dir_, tensors).ok());
  EXPECT_FALSE(FileExists(JoinPath(dir_, "model.safetensors.index.json")));
  EXPECT_FALSE(FileExists(JoinPath(dir_, "model-00001-of-00005.safetensors")));
  auto single = SafetensorsCheckpoint::Open(dir_);
  ASSERT_TRUE(single.ok()) << single.status();
  EXPECT_EQ(single->Names().size(), 5u);
}

TEST_F(SafetensorsTest, IndexListingAMissingTensorIsAnError) {
  std::vector<float> a(4, 1.f);
  ASSERT_TRUE(WriteSafetensors(JoinPath(dir_, "s1.safetensors"),
                               {{"a", DType::kF32, {4}, a.data(), 16}})
                  .ok());
  ASSERT_TRUE(WriteFileAtomic(JoinPath(dir_, "model.safetensors.index.json"),
                              R"({"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors"}})")
                  .ok());
  auto ckpt = SafetensorsCheckpoint::Open(dir_);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_NE(std::string(ckpt.status().message()).find("'b'"), std::string::npos);
}

}  // namespace
}  // namespace lightrl
