// The "format" kind: 1 when a response matches an RE2 pattern (by default: some
// reasoning, then a committed final answer), else 0. Option: pattern. Torch- and
// protobuf-free.
#pragma once

#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "reward/reward_registry.h"

namespace re2 {
class RE2;
}  // namespace re2

namespace lightrl {

// The "format" reward's default pattern: some reasoning, then a committed final answer
// (\boxed{...}, "answer:", "the answer is" or "####" followed by text).
inline constexpr char kDefaultFormatPattern[] =
    R"((?s)\S.*?(?:\\boxed\{\s*[^\s}]|(?i:answer\s*(?:is|:))\s*\S|####\s*\S))";

// A compiled "format" pattern (RE2 syntax, so matching is linear in the response length
// and cannot blow the stack on 80K-token responses). Cheap to copy; thread-safe.
class FormatChecker {
 public:
  // `pattern` empty: kDefaultFormatPattern. INVALID_ARGUMENT naming the pattern and the
  // RE2 error when it does not compile.
  static absl::StatusOr<FormatChecker> Create(absl::string_view pattern = "");
  // True when the pattern matches somewhere in `response` (anchor it for a full match).
  bool Matches(absl::string_view response) const;
  const std::string& pattern() const;

 private:
  explicit FormatChecker(std::shared_ptr<const re2::RE2> regex) : regex_(std::move(regex)) {}
  std::shared_ptr<const re2::RE2> regex_;
};

// 1 when `checker` matches the response, else 0; component "format".
RewardResult FormatReward(absl::string_view response, const FormatChecker& checker);

struct FormatRewardOptions {
  // RE2 pattern required somewhere in a response; empty = kDefaultFormatPattern.
  std::string pattern;

  // INVALID_ARGUMENT when the pattern does not compile.
  absl::Status Validate() const;
};

// The registry's row.
RewardKind FormatRewardKind();

}  // namespace lightrl
