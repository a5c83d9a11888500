// A fresh directory under /tmp for one test, removed with everything in it when the test
// ends (gtest-side: a failed removal fails the test).
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <string>

#include "common/file_util.h"

namespace lightrl {

class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "lightrl") {
    std::string tmpl = "/tmp/" + prefix + "_XXXXXX";
    if (::mkdtemp(tmpl.data()) != nullptr) path_ = tmpl;
    EXPECT_FALSE(path_.empty()) << "mkdtemp " << tmpl;
  }
  ~TempDir() {
    if (!path_.empty()) EXPECT_TRUE(RemoveTree(path_).ok()) << path_;
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace lightrl
