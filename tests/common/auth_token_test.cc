#include "common/auth_token.h"

#include <string>

#include <gtest/gtest.h>

#include "common/file_util.h"

namespace lightrl {
namespace {

TEST(AuthTokenTest, StripsSurroundingWhitespaceOnly) {
  absl::StatusOr<std::string> token = NormalizeAuthToken("  s3cr3t-T0ken\n", "test");
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(*token, "s3cr3t-T0ken");
}

TEST(AuthTokenTest, EmptyOrWhitespaceOnlyIsAnErrorNamingTheSource) {
  for (const std::string raw : {"", " ", "\n", " \t\r\n "}) {
    absl::StatusOr<std::string> token = NormalizeAuthToken(raw, "LIGHTRL_AUTH_TOKEN");
    ASSERT_FALSE(token.ok()) << "accepted \"" << raw << "\"";
    EXPECT_EQ(token.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(token.status().message(),
              "LIGHTRL_AUTH_TOKEN: the auth token is empty or only whitespace");
  }
  // Inside the token, whitespace and control bytes would corrupt the metadata header.
  EXPECT_FALSE(NormalizeAuthToken("two words", "t").ok());
  EXPECT_FALSE(NormalizeAuthToken(std::string("nul\0byte", 8), "t").ok());
  EXPECT_FALSE(NormalizeAuthToken("del\x7f", "t").ok());
}

TEST(AuthTokenTest, ReadsAFileAndNamesItInErrors) {
  const std::string dir = JoinPath(testing::TempDir(), "auth_token_test");
  ASSERT_TRUE(MakeDirs(dir).ok());
  const std::string good = JoinPath(dir, "token");
  ASSERT_TRUE(WriteFileAtomic(good, "abc123\n").ok());
  absl::StatusOr<std::string> token = ReadAuthTokenFile(good);
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(*token, "abc123");

  const std::string blank = JoinPath(dir, "blank");
  ASSERT_TRUE(WriteFileAtomic(blank, "  \n\n").ok());
  token = ReadAuthTokenFile(blank);
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(token.status().message(), blank + ": the auth token is empty or only whitespace");

  token = ReadAuthTokenFile(JoinPath(dir, "missing"));
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(token.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(std::string(token.status().message()).find(JoinPath(dir, "missing")),
            std::string::npos);
  ASSERT_TRUE(RemoveTree(dir).ok());
}

}  // namespace
}  // namespace lightrl
