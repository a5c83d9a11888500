#include "common/log.h"

#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_split.h"

namespace lightrl {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;

class LogTest : public ::testing::Test {
 protected:
  void SetUp() override { saved_ = GetLogLevel(); }
  void TearDown() override { SetLogLevel(saved_); }
  LogLevel saved_ = LogLevel::kInfo;
};

TEST_F(LogTest, ParsesLevelNames) {
  EXPECT_EQ(*ParseLogLevel("debug"), LogLevel::kDebug);
  EXPECT_EQ(*ParseLogLevel("INFO"), LogLevel::kInfo);
  EXPECT_EQ(*ParseLogLevel("warn"), LogLevel::kWarning);
  EXPECT_EQ(*ParseLogLevel("warning"), LogLevel::kWarning);
  EXPECT_EQ(*ParseLogLevel("error"), LogLevel::kError);
  absl::StatusOr<LogLevel> bad = ParseLogLevel("loud");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("\"loud\""));
  EXPECT_STREQ(LogLevelName(LogLevel::kWarning), "warning");
}

TEST_F(LogTest, FormatsOneTaggedLine) {
  EXPECT_EQ(FormatLogLine(LogLevel::kWarning, "worker r0 exited\n", false),
            "[W] worker r0 exited\n");
  EXPECT_EQ(FormatLogLine(LogLevel::kError, "x", false), "[E] x\n");
  EXPECT_THAT(FormatLogLine(LogLevel::kInfo, "hello", true),
              MatchesRegex("\\[I [0-9][0-9]:[0-9][0-9]:[0-9][0-9]\\.[0-9][0-9][0-9]\\] hello\n"));
}

TEST_F(LogTest, DropsMessagesBelowTheLevel) {
  SetLogLevel(LogLevel::kWarning);
  EXPECT_FALSE(LogEnabled(LogLevel::kInfo));
  EXPECT_TRUE(LogEnabled(LogLevel::kError));
  ::testing::internal::CaptureStderr();
  LogInfo("hidden %d", 1);
  LogDebug("hidden %s", "too");
  LogWarning("shown %d of %s", 2, "three");
  LogError("also shown");
  const std::string out = ::testing::internal::GetCapturedStderr();
  EXPECT_THAT(out, ::testing::Not(HasSubstr("hidden")));
  EXPECT_THAT(out, HasSubstr("] shown 2 of three\n"));
  EXPECT_THAT(out, HasSubstr("[E "));
  SetLogLevel(LogLevel::kDebug);
  ::testing::internal::CaptureStderr();
  LogDebug("now %s", "visible");
  EXPECT_THAT(::testing::internal::GetCapturedStderr(), HasSubstr("] now visible\n"));
}

TEST_F(LogTest, LinesOfManyThreadsDoNotInterleave) {
  SetLogLevel(LogLevel::kInfo);
  constexpr int kThreads = 8, kLines = 200;
  const std::string payload(100, 'x');
  ::testing::internal::CaptureStderr();
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t, &payload] {
      for (int i = 0; i < kLines; ++i) LogInfo("thread %d line %d %s", t, i, payload);
    });
  }
  for (auto& th : threads) th.join();
  const std::string out = ::testing::internal::GetCapturedStderr();
  int lines = 0;
  for (absl::string_view line : absl::StrSplit(out, '\n', absl::SkipEmpty())) {
    EXPECT_THAT(std::string(line),
                MatchesRegex("\\[I [0-9:.]+\\] thread [0-9] line [0-9]+ x{100}"));
    ++lines;
  }
  EXPECT_EQ(lines, kThreads * kLines);
}

}  // namespace
}  // namespace lightrl
