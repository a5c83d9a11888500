// The "code" reward: runs the response's program against the ground truth's test cases
// in the sandbox (reward/sandbox.h) and scores the fraction that pass. Owns the parsing
// of responses and test suites and the comparison of outputs; process control and
// isolation stay in the sandbox. Torch- and protobuf-free.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "reward/reward_function.h"
#include "reward/sandbox.h"

namespace lightrl {

struct CodeRewardOptions {
  // Limits for each test's run; every test is a fresh process and directory.
  SandboxOptions sandbox;
  // The interpreter for "python" solutions; the solution file's name is appended.
  std::vector<std::string> python_command = {"python3"};
  // Once a test runs into the wall or CPU limit, the remaining tests count as failed
  // without running: a looping solution would otherwise cost every test's full limit.
  bool stop_after_timeout = true;

  absl::Status Validate() const;
};

// One test case: either stdin/stdout (`is_assert` false) or a statement appended to the
// solution that must run without error (`is_assert` true, held in `input`).
struct CodeTestCase {
  bool is_assert = false;
  std::string input;
  std::string expected_output;
};

struct CodeTestSuite {
  std::string language = "python";
  std::vector<CodeTestCase> tests;
};

// Parses {"language":"python","tests":[{"input":"1 2\n","output":"3\n"}, "assert f(1)==2",
// ...]}. "language" is optional (python, the only one supported); "input" defaults to "".
// INVALID_ARGUMENT naming the offending field otherwise.
absl::StatusOr<CodeTestSuite> ParseCodeTestSuite(absl::string_view ground_truth);

// The program a response commits to: the body of its last fenced block tagged python
// (py, python3) or untagged, an unclosed final block included; else the whole response.
std::string ExtractCode(absl::string_view response);

// Equality after removing trailing whitespace from each line and trailing empty lines.
bool OutputsMatch(absl::string_view actual, absl::string_view expected);

// Kind "code". Score = passed / total; components "passed", "total", "compile_error"
// (1 when the solution does not compile, which fails every test) and "timeout" (1 when
// any test hit the wall or CPU limit). Errors: a malformed ground truth, or a sandbox
// that cannot be set up.
class CodeRewardFunction final : public RewardFunction {
 public:
  explicit CodeRewardFunction(CodeRewardOptions options) : options_(std::move(options)) {}
  std::string Kind() const override { return "code"; }
  absl::StatusOr<RewardResult> Score(const RewardInput& input) override;

 private:
  const CodeRewardOptions options_;
};

// Validates the options; INVALID_ARGUMENT naming the field otherwise.
absl::StatusOr<RewardFunctionPtr> MakeCodeRewardFunction(CodeRewardOptions options = {});

}  // namespace lightrl
