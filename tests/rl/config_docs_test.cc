// docs/config.md against the config tables: every key of every table (the run config's
// sections, reward servers, `plan:`) has a row, and every row's first key exists, so the
// reference cannot drift from the code. A row may list several keys, the later ones
// short: "`optimizer.lr`, `betas`" names optimizer.lr and optimizer.betas.
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "rl/plan.h"
#include "rl/run_config.h"

namespace lightrl {
namespace {

std::vector<std::string> AllKeys() {
  std::vector<std::string> keys = RunConfigKeys();
  for (const std::string& key : PlanConfigKeys()) keys.push_back(key);
  return keys;
}

// The `code` spans of a table row's first cell.
std::vector<std::string> FirstCellKeys(const std::string& line) {
  std::vector<std::string> keys;
  const size_t end = line.find('|', 1);
  const std::string cell = line.substr(1, end == std::string::npos ? std::string::npos : end - 1);
  for (size_t open = cell.find('`'); open != std::string::npos; open = cell.find('`', open)) {
    const size_t close = cell.find('`', open + 1);
    if (close == std::string::npos) break;
    keys.push_back(cell.substr(open + 1, close - open - 1));
    open = close + 1;
  }
  return keys;
}

struct Documented {
  std::set<std::string> keys;   // every reading of every key a row names, and its parents
  std::vector<std::string> first;  // each row's first, full key
};

Documented ReadDocs() {
  absl::StatusOr<std::string> text = ReadFile(JoinPath(LIGHTRL_SOURCE_DIR, "docs/config.md"));
  EXPECT_TRUE(text.ok()) << text.status();
  Documented docs;
  std::istringstream lines(text.ok() ? *text : "");
  for (std::string line; std::getline(lines, line);) {
    if (!absl::StartsWith(line, "| `")) continue;
    const std::vector<std::string> keys = FirstCellKeys(line);
    if (keys.empty() || keys[0].find('.') == std::string::npos) continue;
    const std::string& full = keys[0];
    docs.first.push_back(full);
    const std::string section = full.substr(0, full.find('.'));
    const std::string parent = full.substr(0, full.rfind('.'));
    for (const std::string& key : keys) {
      for (const std::string& reading :
           {key, absl::StrCat(section, ".", key), absl::StrCat(parent, ".", key)}) {
        for (size_t dot = reading.find('.'); dot != std::string::npos;
             dot = reading.find('.', dot + 1)) {
          docs.keys.insert(reading.substr(0, dot));
        }
        docs.keys.insert(reading);
      }
    }
  }
  return docs;
}

TEST(ConfigDocs, ListEveryKeyOfEveryTable) {
  const Documented docs = ReadDocs();
  for (const std::string& key : AllKeys()) {
    EXPECT_TRUE(docs.keys.count(key)) << key << " has no row in docs/config.md";
  }
}

TEST(ConfigDocs, EveryRowNamesAKey) {
  const std::vector<std::string> keys = AllKeys();
  const Documented docs = ReadDocs();
  ASSERT_FALSE(docs.first.empty());
  for (const std::string& row : docs.first) {
    bool found = false;
    for (const std::string& key : keys) found = found || key == row;
    EXPECT_TRUE(found) << "docs/config.md documents " << row << ", which no table has";
  }
}

}  // namespace
}  // namespace lightrl
