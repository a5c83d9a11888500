#include "reward/code_reward.h"

#include <sys/random.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/json.h"
#include "common/status.h"

namespace lightrl {
namespace {

constexpr const char* kSolutionFile = "solution.py";
constexpr const char* kHarnessFile = "lightrl_harness.py";
constexpr const char* kAssertFile = "lightrl_test.py";
// Written by the harness to stderr, before any solution code runs, when the solution
// does not compile.
constexpr const char* kHarnessCompileError = "lightrl-harness: the solution does not compile";
constexpr int kHarnessCompileErrorExit = 3;

// Runs the solution, then the test, then proves it got there (see code_reward.h). Every
// name it needs after the solution ran is bound before, so a solution that rebinds
// builtins (exec, compile, os.write) cannot skip the test and still report. Explicit
// optimize=0 keeps the asserts whatever the interpreter's flags.
constexpr const char* kHarness = R"py(import os, sys, traceback
def _lightrl_run(_read=os.read, _write=os.write, _exec=exec, _compile=compile,
                 _dup=os.dup, _dup2=os.dup2, _open=os.open, _close=os.close,
                 _ftruncate=os.ftruncate, _exit=os._exit):
    nonce = b""
    while True:
        chunk = _read(0, 4096)
        if not chunk:
            break
        nonce += chunk
    _ftruncate(0, 0)
    null = _open("/dev/null", os.O_RDONLY)
    _dup2(null, 0)
    _close(null)
    report = _dup(1)
    with open("solution.py", encoding="utf-8", errors="replace") as f:
        source = f.read()
    with open("lightrl_test.py", encoding="utf-8", errors="replace") as f:
        test = f.read()
    try:
        code = _compile(source, "solution.py", "exec", dont_inherit=True, optimize=0)
    except (SyntaxError, ValueError):
        sys.stderr.write("lightrl-harness: the solution does not compile\n")
        traceback.print_exc(limit=0)
        sys.stderr.flush()
        _exit(3)
    check = _compile(test, "lightrl_test.py", "exec", dont_inherit=True, optimize=0)
    scope = {"__name__": "__main__", "__builtins__": __builtins__}
    _exec(code, scope)
    _exec(check, scope)
    _write(report, b"\n" + nonce + b"\n")
_lightrl_run()
)py";

absl::Status BadGroundTruth(absl::string_view field, absl::string_view problem) {
  return absl::InvalidArgumentError(
      absl::StrCat("code ground truth: ", field, " ", problem));
}

bool IsPythonTag(absl::string_view tag) {
  return tag.empty() || tag == "python" || tag == "py" || tag == "python3";
}

// A fresh 128-bit nonce as hex, from the kernel's CSPRNG.
absl::StatusOr<std::string> MakeNonce() {
  unsigned char bytes[16];
  size_t got = 0;
  while (got < sizeof(bytes)) {
    ssize_t n = getrandom(bytes + got, sizeof(bytes) - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(
          absl::StrCat("code reward: getrandom for the test nonce failed: ", std::strerror(errno)));
    }
    got += static_cast<size_t>(n);
  }
  std::string hex = "lightrl-pass-";
  static constexpr char kDigits[] = "0123456789abcdef";
  for (unsigned char b : bytes) {
    hex.push_back(kDigits[b >> 4]);
    hex.push_back(kDigits[b & 15]);
  }
  return hex;
}

// Python reports a compile-time error without a traceback: "Traceback (most recent call
// last)" appears only once the module runs, so its absence tells the two apart. The
// assert harness says so itself, with its own exit code.
bool IsPythonCompileError(const SandboxResult& run) {
  if (run.exit_code == 0) return false;
  if (run.exit_code == kHarnessCompileErrorExit &&
      absl::StartsWith(run.stderr_text, kHarnessCompileError)) {
    return true;
  }
  const std::string& err = run.stderr_text;
  if (absl::StrContains(err, "Traceback (most recent call last)")) return false;
  return absl::StrContains(err, "SyntaxError") || absl::StrContains(err, "IndentationError") ||
         absl::StrContains(err, "TabError");
}

std::vector<absl::string_view> NormalisedLines(absl::string_view text) {
  std::vector<absl::string_view> lines = absl::StrSplit(text, '\n');
  for (absl::string_view& line : lines) line = absl::StripTrailingAsciiWhitespace(line);
  while (!lines.empty() && lines.back().empty()) lines.pop_back();
  return lines;
}

}  // namespace

absl::Status CodeRewardOptions::Validate() const {
  RETURN_IF_ERROR(sandbox.Validate());
  if (python_command.empty() || python_command[0].empty()) {
    return absl::InvalidArgumentError("code reward options: python_command must name a program");
  }
  return absl::OkStatus();
}

absl::StatusOr<CodeTestSuite> ParseCodeTestSuite(absl::string_view ground_truth) {
  absl::StatusOr<Json> parsed = Json::Parse(ground_truth);
  if (!parsed.ok()) {
    return BadGroundTruth("(the whole text)",
                          absl::StrCat("is not valid JSON: ", parsed.status().message()));
  }
  const Json& root = *parsed;
  if (!root.is_object()) {
    return BadGroundTruth("(the whole text)",
                          absl::StrCat("must be a JSON object, got ", root.type_name()));
  }
  CodeTestSuite suite;
  if (const Json* language = root.find("language")) {
    if (!language->is_string()) {
      return BadGroundTruth("language", absl::StrCat("must be a string, got ",
                                                     language->type_name()));
    }
    suite.language = absl::AsciiStrToLower(language->as_string());
    if (suite.language != "python" && suite.language != "python3") {
      return BadGroundTruth("language", absl::StrCat("\"", language->as_string(),
                                                     "\" is not supported (python is)"));
    }
    suite.language = "python";
  }
  const Json* tests = root.find("tests");
  if (tests == nullptr) return BadGroundTruth("tests", "is missing");
  if (!tests->is_array()) {
    return BadGroundTruth("tests", absl::StrCat("must be an array, got ", tests->type_name()));
  }
  if (tests->size() == 0) return BadGroundTruth("tests", "must not be empty");
  for (size_t i = 0; i < tests->size(); ++i) {
    const Json& test = tests->as_array()[i];
    const std::string field = absl::StrCat("tests[", i, "]");
    CodeTestCase test_case;
    if (test.is_string()) {
      if (absl::StripAsciiWhitespace(test.as_string()).empty()) {
        return BadGroundTruth(field, "is an empty assert statement");
      }
      test_case.is_assert = true;
      test_case.input = test.as_string();
    } else if (test.is_object()) {
      const Json* input = test.find("input");
      if (input != nullptr) {
        if (!input->is_string()) {
          return BadGroundTruth(absl::StrCat(field, ".input"),
                                absl::StrCat("must be a string, got ", input->type_name()));
        }
        test_case.input = input->as_string();
      }
      const Json* output = test.find("output");
      if (output == nullptr) return BadGroundTruth(absl::StrCat(field, ".output"), "is missing");
      if (!output->is_string()) {
        return BadGroundTruth(absl::StrCat(field, ".output"),
                              absl::StrCat("must be a string, got ", output->type_name()));
      }
      test_case.expected_output = output->as_string();
    } else {
      return BadGroundTruth(field, absl::StrCat("must be an object {input, output} or an "
                                                "assert string, got ", test.type_name()));
    }
    suite.tests.push_back(std::move(test_case));
  }
  return suite;
}

std::string ExtractCode(absl::string_view response) {
  std::vector<absl::string_view> lines = absl::StrSplit(response, '\n');
  // A final line break ends the last line rather than starting an empty one.
  if (lines.size() > 1 && lines.back().empty()) lines.pop_back();
  bool in_block = false;
  bool block_wanted = false;
  std::string current;
  std::optional<std::string> last;
  for (absl::string_view raw : lines) {
    absl::string_view line = absl::StripAsciiWhitespace(raw);
    if (!in_block) {
      if (absl::StartsWith(line, "```")) {
        in_block = true;
        absl::string_view tag = absl::StripAsciiWhitespace(line.substr(3));
        block_wanted = IsPythonTag(absl::AsciiStrToLower(tag));
        current.clear();
      }
      continue;
    }
    if (line == "```") {
      in_block = false;
      if (block_wanted) last = current;
      continue;
    }
    absl::StrAppend(&current, raw, "\n");
  }
  // A response cut off inside its final block still commits to that code.
  if (in_block && block_wanted) last = current;
  if (last.has_value()) return *last;
  return std::string(response);
}

bool OutputsMatch(absl::string_view actual, absl::string_view expected) {
  return NormalisedLines(actual) == NormalisedLines(expected);
}

absl::StatusOr<RewardResult> CodeRewardFunction::Score(const RewardInput& input) {
  ASSIGN_OR_RETURN(const CodeTestSuite suite, ParseCodeTestSuite(input.ground_truth));
  const std::string code = ExtractCode(input.response);
  SandboxCommand stdio_command;
  stdio_command.argv = options_.python_command;
  stdio_command.argv.push_back(kSolutionFile);
  stdio_command.files[kSolutionFile] = code;
  SandboxCommand assert_command;
  assert_command.argv = options_.python_command;
  assert_command.argv.push_back(kHarnessFile);
  assert_command.files[kSolutionFile] = code;
  assert_command.files[kHarnessFile] = kHarness;

  int passed = 0;
  bool compile_error = false;
  bool timeout = false;
  for (const CodeTestCase& test : suite.tests) {
    if (compile_error || (timeout && options_.stop_after_timeout)) break;
    std::string nonce;
    if (test.is_assert) {
      ASSIGN_OR_RETURN(nonce, MakeNonce());
      assert_command.files[kAssertFile] = test.input;
      assert_command.stdin_data = nonce;
    } else {
      stdio_command.stdin_data = test.input;
    }
    ASSIGN_OR_RETURN(const SandboxResult run,
                     RunSandboxed(options_.sandbox, test.is_assert ? assert_command : stdio_command));
    if (run.limit_hit == SandboxLimit::kWall || run.limit_hit == SandboxLimit::kCpu) {
      timeout = true;
    }
    if (IsPythonCompileError(run)) compile_error = true;
    if (!run.Succeeded()) continue;
    const bool pass = test.is_assert
                          ? absl::StrContains(run.stdout_text, absl::StrCat("\n", nonce, "\n"))
                          : OutputsMatch(run.stdout_text, test.expected_output);
    if (pass) ++passed;
  }
  const double total = static_cast<double>(suite.tests.size());
  RewardResult result;
  result.score = passed / total;
  result.components = {{"passed", static_cast<double>(passed)},
                       {"total", total},
                       {"compile_error", compile_error ? 1.0 : 0.0},
                       {"timeout", timeout ? 1.0 : 0.0}};
  return result;
}

absl::StatusOr<RewardFunctionPtr> MakeCodeRewardFunction(CodeRewardOptions options) {
  RETURN_IF_ERROR(options.Validate());
  return std::make_unique<CodeRewardFunction>(std::move(options));
}

RewardKind CodeRewardKind() {
  using O = CodeRewardOptions;
  using S = SandboxOptions;
  return DefineRewardKind<CodeRewardOptions>(
      "code", "runs the response's program against the ground truth's tests in the sandbox",
      {OptionField("python_command", &O::python_command,
                   "interpreter of python solutions; the solution file is appended"),
       OptionField("stop_after_timeout", &O::stop_after_timeout,
                   "after a test times out, count the remaining ones failed unrun"),
       OptionField("wall_seconds", &O::sandbox, &S::wall_seconds, "wall-clock limit per test"),
       OptionField("cpu_seconds", &O::sandbox, &S::cpu_seconds, "CPU limit per test"),
       OptionField("memory_bytes", &O::sandbox, &S::memory_bytes, "memory of the sandbox"),
       OptionField("disk_bytes", &O::sandbox, &S::disk_bytes, "size of its private tmpfs"),
       OptionField("max_processes", &O::sandbox, &S::max_processes,
                   "processes and threads of the program"),
       OptionField("require_cgroup", &O::sandbox, &S::require_cgroup,
                   "fail instead of running without a memory cgroup")},
      [](const CodeRewardOptions& options) { return MakeCodeRewardFunction(options); });
}

}  // namespace lightrl
