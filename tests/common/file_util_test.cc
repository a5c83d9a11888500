#include "common/file_util.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include <gtest/gtest.h>

namespace lightrl {
namespace {

// A fresh directory under the test temp dir; removed (by the code under test) at the end.
std::string MakeTempDir() {
  std::string pattern = JoinPath(testing::TempDir(), "file_util_test.XXXXXX");
  char* made = ::mkdtemp(pattern.data());
  EXPECT_NE(made, nullptr);
  return pattern;
}

void Touch(const std::string& path) { ASSERT_TRUE(WriteFileAtomic(path, "x").ok()) << path; }

TEST(RemoveTreeTest, RemovesNestedTree) {
  const std::string root = MakeTempDir();
  const std::string tree = JoinPath(root, "run");
  ASSERT_TRUE(MakeDirs(JoinPath(tree, "a/b/c")).ok());
  Touch(JoinPath(tree, "top.txt"));
  Touch(JoinPath(tree, "a/b/c/deep.bin"));
  Touch(JoinPath(tree, "a/.hidden"));
  ASSERT_TRUE(MakeDirs(JoinPath(tree, "empty")).ok());
  ASSERT_TRUE(RemoveTree(tree).ok());
  EXPECT_FALSE(FileExists(tree));
  EXPECT_TRUE(IsDirectory(root));
  ASSERT_TRUE(RemoveTree(root).ok());
  EXPECT_FALSE(FileExists(root));
}

// The trainer's checkpoint rotation used `system("rm -rf '<path>'")`: a quote in the path
// ended the quoting and `$(...)` ran. Here every such name is removed and nothing runs.
TEST(RemoveTreeTest, ShellMetacharactersAreJustNames) {
  const std::string root = MakeTempDir();
  const std::string marker = JoinPath(root, "INJECTED");
  const std::string names[] = {
      "bob's-run",
      "x'$(touch " + marker + ")'y",
      "with spaces and\ttab",
      "`touch " + marker + "`",
      "semi; touch " + marker,
      "new\nline",
      "-rf",
      "*",
  };
  for (const std::string& name : names) {
    // Names containing '/' (the marker path) become nested directories; remove the top.
    const std::string dir = JoinPath(root, name);
    ASSERT_TRUE(MakeDirs(JoinPath(dir, "step-000001")).ok()) << name;
    Touch(JoinPath(dir, "step-000001/model.safetensors"));
    const std::string top = JoinPath(root, name.substr(0, name.find('/')));
    ASSERT_TRUE(RemoveTree(top).ok()) << name;
    EXPECT_FALSE(FileExists(top)) << name;
    EXPECT_FALSE(FileExists(marker)) << "a shell ran for " << name;
  }
  EXPECT_FALSE(FileExists("INJECTED"));
  ASSERT_TRUE(RemoveTree(root).ok());
}

TEST(RemoveTreeTest, RemovesLinksWithoutFollowingThem) {
  const std::string root = MakeTempDir();
  const std::string outside = JoinPath(root, "outside");
  ASSERT_TRUE(MakeDirs(outside).ok());
  Touch(JoinPath(outside, "keep.txt"));
  const std::string tree = JoinPath(root, "tree");
  ASSERT_TRUE(MakeDirs(tree).ok());
  ASSERT_EQ(::symlink(outside.c_str(), JoinPath(tree, "dir_link").c_str()), 0);
  ASSERT_EQ(::symlink(JoinPath(outside, "keep.txt").c_str(), JoinPath(tree, "file_link").c_str()),
            0);
  ASSERT_EQ(::symlink("/nonexistent/target", JoinPath(tree, "dangling").c_str()), 0);
  ASSERT_TRUE(RemoveTree(tree).ok());
  EXPECT_FALSE(FileExists(tree));
  EXPECT_TRUE(FileExists(JoinPath(outside, "keep.txt")));

  // A link given as the path itself is removed; its target stays.
  const std::string link = JoinPath(root, "link");
  ASSERT_EQ(::symlink(outside.c_str(), link.c_str()), 0);
  ASSERT_TRUE(RemoveTree(link).ok());
  struct stat st;
  EXPECT_NE(::lstat(link.c_str(), &st), 0);
  EXPECT_TRUE(FileExists(JoinPath(outside, "keep.txt")));
  ASSERT_TRUE(RemoveTree(root).ok());
}

TEST(RemoveTreeTest, MissingPathIsOkAndFileIsRemoved) {
  const std::string root = MakeTempDir();
  EXPECT_TRUE(RemoveTree(JoinPath(root, "never-created")).ok());
  const std::string file = JoinPath(root, "plain");
  Touch(file);
  ASSERT_TRUE(RemoveTree(file).ok());
  EXPECT_FALSE(FileExists(file));
  EXPECT_FALSE(RemoveTree("").ok());
  // A path through a plain file is an error that names it, not a silent success.
  absl::Status through_file = RemoveTree(JoinPath(root, "plain2/child"));
  EXPECT_TRUE(through_file.ok()) << through_file;  // plain2 does not exist yet
  Touch(JoinPath(root, "plain2"));
  through_file = RemoveTree(JoinPath(root, "plain2/child"));
  EXPECT_FALSE(through_file.ok());
  EXPECT_NE(std::string(through_file.message()).find("plain2/child"), std::string::npos)
      << through_file;
  ASSERT_TRUE(RemoveTree(root).ok());
}

TEST(RemoveTreeTest, ErrorNamesTheEntryThatCouldNotBeRemoved) {
  if (::geteuid() == 0) GTEST_SKIP() << "root ignores directory permissions";
  const std::string root = MakeTempDir();
  const std::string locked = JoinPath(root, "locked");
  ASSERT_TRUE(MakeDirs(locked).ok());
  Touch(JoinPath(locked, "stuck"));
  ASSERT_EQ(::chmod(locked.c_str(), 0500), 0);
  absl::Status status = RemoveTree(root);
  EXPECT_FALSE(status.ok());
  EXPECT_NE(std::string(status.message()).find(JoinPath(locked, "stuck")), std::string::npos)
      << status;
  ASSERT_EQ(::chmod(locked.c_str(), 0700), 0);
  ASSERT_TRUE(RemoveTree(root).ok());
}

}  // namespace
}  // namespace lightrl
