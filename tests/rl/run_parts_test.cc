// The trainer's torch-free parts on their own: progress and ETA text (rl/run_progress.h)
// and the checkpoint folder's names, scan, checks and metrics cut (rl/checkpoint_dir.h),
// on real files in a fresh temporary folder.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <chrono>
#include <string>
#include <vector>

#include "common/file_util.h"
#include "rl/checkpoint_dir.h"
#include "rl/run_progress.h"
#include "rl/stop_signal.h"

namespace lightrl {
namespace {

TEST(RunProgress, DurationRoundsAndPicksUnits) {
  EXPECT_EQ(Duration(0), "0s");
  EXPECT_EQ(Duration(-3), "0s");
  EXPECT_EQ(Duration(44.6), "45s");
  EXPECT_EQ(Duration(59.4), "59s");
  EXPECT_EQ(Duration(59.5), "1m00s");
  EXPECT_EQ(Duration(185), "3m05s");
  EXPECT_EQ(Duration(3599), "59m59s");
  EXPECT_EQ(Duration(3600), "1h00m");
  EXPECT_EQ(Duration(2 * 3600 + 7 * 60 + 59), "2h07m");
}

TEST(RunProgress, CountUsesThousandsMillionsBillions) {
  EXPECT_EQ(Count(999), "999");
  EXPECT_EQ(Count(1000), "1.0K");
  EXPECT_EQ(Count(45'900), "45.9K");
  EXPECT_EQ(Count(1'234'567), "1.23M");
  EXPECT_EQ(Count(45'900'000'000), "45.90B");
}

TEST(RunProgress, PhaseClockEtaFromUnitsDoneInThisProcess) {
  const RunClock::time_point start{};
  // A resumed phase: 4 of 10 units done at its start, 2 more in 60 s: 30 s a unit, 4 left.
  const PhaseClock clock(start, 4, 10);
  EXPECT_EQ(clock.LineAt(start + std::chrono::seconds(60), 6), "elapsed 1m00s, ETA 2m00s");
  // Nothing done yet in this process: no estimate.
  EXPECT_EQ(clock.LineAt(start + std::chrono::seconds(5), 4), "elapsed 5s");
  // All done: no ETA.
  EXPECT_EQ(clock.LineAt(start + std::chrono::seconds(7200), 10), "elapsed 2h00m");
}

TEST(StopSignal, Names) {
  EXPECT_STREQ(SignalName(2), "SIGINT");
  EXPECT_STREQ(SignalName(15), "SIGTERM");
  EXPECT_STREQ(SignalName(9), "a signal");
}

class CheckpointDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/checkpoint_dir_test.XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    root_ = pattern;
  }
  void TearDown() override { ASSERT_TRUE(RemoveTree(root_).ok()); }
  std::string root_;
};

TEST_F(CheckpointDirTest, NamesSortInTrainingOrderAndSkipUnfinished) {
  EXPECT_EQ(CheckpointName(12, 3), "step-000012-sft-000003");
  EXPECT_TRUE(CheckpointNames(JoinPath(root_, "missing")).empty());
  for (const std::string& n : {CheckpointName(10, 5), CheckpointName(2, 5), CheckpointName(0, 5),
                              CheckpointName(11, 5) + ".tmp", std::string("latest-notes"),
                              std::string("other")}) {
    ASSERT_TRUE(MakeDirs(JoinPath(root_, n)).ok()) << n;
  }
  ASSERT_TRUE(WriteFileAtomic(JoinPath(root_, "latest"), CheckpointName(10, 5) + "\n").ok());
  const std::vector<std::string> want = {"step-000000-sft-000005", "step-000002-sft-000005",
                                         "step-000010-sft-000005"};
  EXPECT_EQ(CheckpointNames(root_), want);
}

TEST_F(CheckpointDirTest, VerifyNamesAMissingFolderAndAcceptsOneWithoutManifest) {
  const absl::StatusOr<bool> missing = VerifyCheckpoint(JoinPath(root_, "step-000001-sft-000000"));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(missing.status().message().find("step-000001-sft-000000: does not exist"),
            std::string::npos);
  const std::string dir = JoinPath(root_, "step-000002-sft-000000");
  ASSERT_TRUE(MakeDirs(dir).ok());
  const absl::StatusOr<bool> bare = VerifyCheckpoint(dir);
  ASSERT_TRUE(bare.ok()) << bare.status();
  EXPECT_FALSE(*bare);
}

TEST_F(CheckpointDirTest, CutMetricsToTheCheckpointsPosition) {
  const std::string ckpt = JoinPath(root_, CheckpointName(1, 0));
  ASSERT_TRUE(MakeDirs(ckpt).ok());
  const std::string metrics = JoinPath(root_, "metrics.jsonl");
  const std::string kept = "{\"step\":1}\n";
  ASSERT_TRUE(WriteFileAtomic(metrics, kept + "{\"step\":2}\n{\"step\":3}\n").ok());
  // No position file (an older checkpoint): the file is left as it is.
  ASSERT_TRUE(CutMetricsToCheckpoint(ckpt, metrics).ok());
  EXPECT_EQ(*ReadFile(metrics), kept + "{\"step\":2}\n{\"step\":3}\n");
  ASSERT_TRUE(WriteFileAtomic(JoinPath(ckpt, kMetricsPositionName),
                              "{\"metrics_jsonl_bytes\": " + std::to_string(kept.size()) + "}\n")
                  .ok());
  ASSERT_TRUE(CutMetricsToCheckpoint(ckpt, metrics).ok());
  EXPECT_EQ(*ReadFile(metrics), kept);
  // A position file that is not the expected object is named with what it held.
  ASSERT_TRUE(WriteFileAtomic(JoinPath(ckpt, kMetricsPositionName), "{\"bytes\": 3}").ok());
  const absl::Status bad = CutMetricsToCheckpoint(ckpt, metrics);
  EXPECT_EQ(bad.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(bad.message().find(std::string(kMetricsPositionName) +
                               ": expected {\"metrics_jsonl_bytes\": N >= 0}, got {\"bytes\": 3}"),
            std::string::npos)
      << bad;
}

}  // namespace
}  // namespace lightrl
