// The prompt dataset's reward metadata: which fields of a JSONL row it keeps, its bound,
// and its way to a reward server, over a real RewardServer on loopback that records what
// arrives.
#include "rl/dataset.h"

#include <unistd.h>

#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "reward/reward_router.h"
#include "reward/reward_service.h"

namespace lightrl {
namespace {

std::string WriteRows(const std::string& name, const std::vector<std::string>& rows) {
  const std::string path = absl::StrCat(::testing::TempDir(), "/", name, "_", getpid(), ".jsonl");
  std::ofstream out(path);
  for (const std::string& row : rows) out << row << "\n";
  return path;
}

const std::vector<std::string> kRows = {
    R"({"prompt": "2+2?", "answer": "4", "difficulty": 1, "source": "gsm", "tags": ["easy"]})",
    R"({"prompt": "3*3?", "answer": 9, "source": "mmlu", "flag": true})",
};

TEST(DatasetTest, KeepsEveryExtraFieldByDefault) {
  absl::StatusOr<Dataset> ds = Dataset::Load(WriteRows("all", kRows), "prompt", "answer", true);
  ASSERT_TRUE(ds.ok()) << ds.status();
  ASSERT_EQ(ds->size(), 2);
  const std::map<std::string, std::string> first = {
      {"difficulty", "1"}, {"source", "gsm"}, {"tags", "[\"easy\"]"}};
  EXPECT_EQ(ds->at(0).metadata, first);
  const std::map<std::string, std::string> second = {{"flag", "true"}, {"source", "mmlu"}};
  EXPECT_EQ(ds->at(1).metadata, second);
  EXPECT_EQ(ds->at(1).answer, "9");
}

TEST(DatasetTest, KeepsOnlyTheListedFields) {
  DatasetMetadataOptions options;
  options.fields = {"difficulty", "source"};
  absl::StatusOr<Dataset> ds =
      Dataset::Load(WriteRows("listed", kRows), "prompt", "answer", true, options);
  ASSERT_TRUE(ds.ok()) << ds.status();
  const std::map<std::string, std::string> first = {{"difficulty", "1"}, {"source", "gsm"}};
  EXPECT_EQ(ds->at(0).metadata, first);
  // The second row has no difficulty: left out, not an error.
  const std::map<std::string, std::string> second = {{"source", "mmlu"}};
  EXPECT_EQ(ds->at(1).metadata, second);

  options.fields = {};
  ds = Dataset::Load(WriteRows("none", kRows), "prompt", "answer", true, options);
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_TRUE(ds->at(0).metadata.empty());
  EXPECT_TRUE(ds->at(1).metadata.empty());
}

TEST(DatasetTest, ARowOverTheMetadataLimitNamesItsLine) {
  DatasetMetadataOptions options;
  options.max_bytes = 100;
  const std::string path = WriteRows(
      "big", {kRows[0], absl::StrCat(R"({"prompt": "p", "answer": "a", "tests": ")",
                                     std::string(200, 'x'), "\"}")});
  absl::StatusOr<Dataset> ds = Dataset::Load(path, "prompt", "answer", true, options);
  ASSERT_FALSE(ds.ok());
  EXPECT_EQ(ds.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(ds.status().message(), absl::StrCat(path, ":2"))) << ds.status();
  EXPECT_TRUE(absl::StrContains(ds.status().message(), "205 bytes")) << ds.status();
  EXPECT_TRUE(absl::StrContains(ds.status().message(), "reward.metadata_max_kb")) << ds.status();

  options.max_bytes = -1;
  ds = Dataset::Load(path, "prompt", "answer", true, options);
  EXPECT_EQ(ds.status().code(), absl::StatusCode::kInvalidArgument) << ds.status();
}

// Records the metadata of every item it scores; scores 1 when the item's "source" is "gsm".
class MetadataRecorder final : public RewardFunction {
 public:
  std::string Kind() const override { return "recorder"; }
  absl::StatusOr<RewardResult> Score(const RewardInput& input) override {
    absl::MutexLock lock(&mu_);
    seen_[input.prompt].push_back(input.metadata);
    const auto it = input.metadata.find("source");
    return RewardResult{it != input.metadata.end() && it->second == "gsm" ? 1.0 : 0.0, {}};
  }
  std::map<std::string, std::vector<std::map<std::string, std::string>>> seen() {
    absl::MutexLock lock(&mu_);
    return seen_;
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, std::vector<std::map<std::string, std::string>>> seen_;
};

TEST(DatasetTest, MetadataReachesARewardServerOverTheWire) {
  auto recorder = std::make_unique<MetadataRecorder>();
  MetadataRecorder* seen = recorder.get();
  absl::StatusOr<std::unique_ptr<RewardServer>> server =
      RewardServer::Start(RewardServerOptions{}, std::move(recorder));
  ASSERT_TRUE(server.ok()) << server.status();

  DatasetMetadataOptions options;
  options.fields = {"source", "tags"};
  absl::StatusOr<Dataset> ds =
      Dataset::Load(WriteRows("wire", kRows), "prompt", "answer", true, options);
  ASSERT_TRUE(ds.ok()) << ds.status();

  RewardRouterOptions router_options;
  RewardRouterEntry entry;
  entry.name = "recorder";
  entry.address = (*server)->address();
  router_options.entries = {entry};
  absl::StatusOr<std::unique_ptr<RewardRouter>> router = RewardRouter::Create(router_options);
  ASSERT_TRUE(router.ok()) << router.status();

  // The inputs the controller builds: the row's metadata plus the response's length.
  std::vector<RewardInput> inputs;
  for (const Example& ex : ds->examples()) {
    RewardInput in;
    in.prompt = ex.prompt;
    in.response = "4";
    in.ground_truth = ex.answer;
    in.metadata = ex.metadata;
    in.metadata["response_tokens"] = "1";
    inputs.push_back(in);
  }
  absl::StatusOr<std::vector<RewardResult>> scores = (*router)->ScoreBatch(inputs);
  ASSERT_TRUE(scores.ok()) << scores.status();
  ASSERT_EQ(scores->size(), 2u);
  EXPECT_EQ((*scores)[0].score, 1.0);
  EXPECT_EQ((*scores)[1].score, 0.0);

  const auto by_prompt = seen->seen();
  ASSERT_EQ(by_prompt.size(), 2u);
  const std::map<std::string, std::string> first = {
      {"response_tokens", "1"}, {"source", "gsm"}, {"tags", "[\"easy\"]"}};
  ASSERT_EQ(by_prompt.at("2+2?").size(), 1u);
  EXPECT_EQ(by_prompt.at("2+2?")[0], first);
  const std::map<std::string, std::string> second = {{"response_tokens", "1"}, {"source", "mmlu"}};
  ASSERT_EQ(by_prompt.at("3*3?").size(), 1u);
  EXPECT_EQ(by_prompt.at("3*3?")[0], second);
}

}  // namespace
}  // namespace lightrl
