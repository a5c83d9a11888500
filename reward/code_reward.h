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
#include "reward/reward_registry.h"
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

// One test case: either stdin/stdout (`is_assert` false) or a statement run after the
// solution that must complete without error (`is_assert` true, held in `input`).
//
// How an assert test is judged. The exit status proves nothing: a solution that calls
// sys.exit(0) or os._exit(0), raises SystemExit, or kills its own process would exit
// "cleanly" without the test having run. So each assert test runs under a harness
// (lightrl_harness.py) that is the sandbox's main program: it reads a fresh 128-bit
// nonce from stdin, wipes stdin (truncates the memory file and replaces fd 0 by
// /dev/null, so the solution cannot read it back), runs the solution's code, then the
// test statement in the same globals, and only then writes the nonce to a duplicate of
// stdout it took before the solution ran. A test passes only when that exact nonce line
// is in stdout: exiting, raising, killing the process, closing or redirecting stdout, or
// rebinding exec/compile/os.write (the harness bound its own references first) all leave
// no nonce, so they fail. Not covered: a solution that introspects the harness's own
// frame to read the nonce while it runs, or one that returns objects whose __eq__
// always holds; stdin/stdout tests are judged by their output alone, which a solution
// cannot produce without computing it.
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

// The registry's row: options python_command, stop_after_timeout and the sandbox's main
// limits (wall_seconds, cpu_seconds, memory_bytes, disk_bytes, max_processes,
// require_cgroup).
RewardKind CodeRewardKind();

}  // namespace lightrl
