// Spawned reward workers as real `lightrl reward-worker` processes on loopback, scored
// through the reward router: one killed with SIGKILL between Score calls is restarted on
// its address and scoring goes on; one that dies past its restarts fails the call naming
// the worker and how it ended. Options of a kind reach its worker as one JSON object
// (--options, or --options-file when long), and the worker command rejects unknown
// kinds and option keys by name. Managed Python reward servers (a function in a file)
// score with components over the same router, are restarted when killed, and a file that
// cannot serve fails the start quoting the server's log.
#include "rl/tools/reward_workers.h"

#include <signal.h>
#include <unistd.h>

#include <sys/stat.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "reward/reward_registry.h"
#include "reward/reward_router.h"
#include "rl/tools/child_process.h"
#include "rl/tools/process_launcher.h"
#include "rollout/coordinator.h"

namespace lightrl {
namespace {

std::vector<RewardInput> Inputs() {
  std::vector<RewardInput> inputs(2);
  inputs[0].prompt = "2+2=";
  inputs[0].response = "The answer is 4";
  inputs[0].ground_truth = "4";
  inputs[1].prompt = "3+3=";
  inputs[1].response = "The answer is 7";
  inputs[1].ground_truth = "6";
  return inputs;
}

void ExpectScored(RewardRouter& router) {
  absl::StatusOr<std::vector<RewardResult>> results = router.ScoreBatch(Inputs());
  ASSERT_TRUE(results.ok()) << results.status();
  EXPECT_DOUBLE_EQ((*results)[0].score, 1.0);
  EXPECT_DOUBLE_EQ((*results)[1].score, 0.0);
}

TEST(RewardWorkersTest, AKilledWorkerIsRestartedOnItsAddressUntilItsRestartsRunOut) {
  const char* exe = std::getenv("LIGHTRL_BIN");
  ASSERT_NE(exe, nullptr) << "set LIGHTRL_BIN to the lightrl executable (CTest does)";
  absl::StatusOr<std::unique_ptr<Coordinator>> coordinator = Coordinator::Start({});
  ASSERT_TRUE(coordinator.ok()) << coordinator.status();
  RewardWorkersOptions options;
  options.exe = exe;
  options.coordinator = coordinator->get();
  options.kinds = {"math"};
  options.log_dir = absl::StrCat(::testing::TempDir(), "reward_workers_test_", ::getpid());
  options.start_timeout = absl::Seconds(60);
  options.max_restarts = 1;
  absl::StatusOr<std::unique_ptr<RewardWorkers>> workers =
      RewardWorkers::Start(options);
  ASSERT_TRUE(workers.ok()) << workers.status();
  const std::string address = (*workers)->Addresses().at("math");
  ASSERT_FALSE(address.empty());

  RewardRouterOptions router_options;
  RewardRouterEntry entry;
  entry.name = "math";
  entry.address = address;
  entry.reward_kind = "math";
  router_options.entries = {entry};
  router_options.initial_backoff = absl::Milliseconds(20);
  router_options.max_backoff = absl::Milliseconds(200);
  router_options.server_wait = absl::Seconds(60);
  RewardWorkers* supervisor = workers->get();
  router_options.check_server = [supervisor](const std::string& down) {
    return supervisor->Check(down);
  };
  absl::StatusOr<std::unique_ptr<RewardRouter>> router = RewardRouter::Create(router_options);
  ASSERT_TRUE(router.ok()) << router.status();
  ExpectScored(**router);

  // Killed between Score calls: the next call restarts it on the same address.
  const pid_t first = (*workers)->Pid("math");
  ASSERT_EQ(::kill(first, SIGKILL), 0);
  ExpectScored(**router);
  const pid_t restarted = (*workers)->Pid("math");
  EXPECT_NE(restarted, first);
  EXPECT_EQ((*workers)->Addresses().at("math"), address);
  // The restarted process outlives the call that found its predecessor dead (its
  // parent-death signal is not tied to that call's thread) and keeps scoring.
  absl::SleepFor(absl::Seconds(1));
  ExpectScored(**router);
  EXPECT_EQ((*workers)->Pid("math"), restarted);

  // Killed again, past its one restart: the call fails naming the worker.
  ASSERT_EQ(::kill((*workers)->Pid("math"), SIGKILL), 0);
  absl::StatusOr<std::vector<RewardResult>> failed = (*router)->ScoreBatch(Inputs());
  ASSERT_EQ(failed.status().code(), absl::StatusCode::kUnavailable) << failed.status();
  EXPECT_TRUE(absl::StrContains(
      failed.status().message(),
      absl::StrCat("reward worker reward-local-math (", address,
                   ") killed by signal 9 (Killed) after 1 restart(s); "
                   "fleet.reward_worker_restarts = 1 allows no more")))
      << failed.status();
}

// A router over the workers' addresses, one remote entry per kind.
std::unique_ptr<RewardRouter> RouterOver(const RewardWorkers& workers,
                                         const std::vector<std::string>& kinds) {
  RewardRouterOptions options;
  for (const std::string& kind : kinds) {
    RewardRouterEntry entry;
    entry.name = kind;
    entry.address = workers.Addresses().at(kind);
    entry.reward_kind = kind;
    options.entries.push_back(entry);
  }
  absl::StatusOr<std::unique_ptr<RewardRouter>> router = RewardRouter::Create(options);
  EXPECT_TRUE(router.ok()) << router.status();
  return router.ok() ? *std::move(router) : nullptr;
}

TEST(RewardWorkersTest, SpawnedWorkersScoreWithTheOptionsTheyWereGiven) {
  const char* exe = std::getenv("LIGHTRL_BIN");
  ASSERT_NE(exe, nullptr) << "set LIGHTRL_BIN to the lightrl executable (CTest does)";
  absl::StatusOr<std::unique_ptr<Coordinator>> coordinator = Coordinator::Start({});
  ASSERT_TRUE(coordinator.ok()) << coordinator.status();
  RewardWorkersOptions options;
  options.exe = exe;
  options.coordinator = coordinator->get();
  options.kinds = {"length", "format"};
  // Not the defaults (16384, 4096): 90 bytes then score -0.5 instead of 0.
  options.options_json["length"] = R"({"max_length":100,"buffer":20})";
  // A pattern too long for a command line goes by file: (?:a0|a1|...|b).
  std::string pattern = "^(?:";
  for (int i = 0; i < 1200; ++i) absl::StrAppend(&pattern, "a", i, "|");
  pattern += "b)$";
  Json format = Json::MakeObject();
  format.set("pattern", Json(pattern));
  options.options_json["format"] = format.Dump();
  ASSERT_GT(options.options_json["format"].size(), kMaxInlineRewardOptionsBytes);
  options.log_dir = absl::StrCat(::testing::TempDir(), "reward_workers_options_", ::getpid());
  options.start_timeout = absl::Seconds(60);
  absl::StatusOr<std::unique_ptr<RewardWorkers>> workers =
      RewardWorkers::Start(options);
  ASSERT_TRUE(workers.ok()) << workers.status();
  struct stat file;
  ASSERT_EQ(::stat((options.log_dir + "/reward-local-format.options.json").c_str(), &file), 0);
  EXPECT_EQ(file.st_mode & 0777, 0600u);

  std::unique_ptr<RewardRouter> router = RouterOver(**workers, {"length"});
  ASSERT_NE(router, nullptr);
  std::vector<RewardInput> inputs(2);
  inputs[0].response = std::string(90, 'x');
  inputs[1].response = std::string(10, 'x');
  inputs[1].metadata["response_tokens"] = "95";
  absl::StatusOr<std::vector<RewardResult>> scored = router->ScoreBatch(inputs);
  ASSERT_TRUE(scored.ok()) << scored.status();
  EXPECT_DOUBLE_EQ((*scored)[0].score, -0.5);
  EXPECT_DOUBLE_EQ((*scored)[1].score, -0.75);

  router = RouterOver(**workers, {"format"});
  ASSERT_NE(router, nullptr);
  inputs[0].response = "a1199";
  inputs[1].response = "Two plus two.\n\\boxed{4}";  // the default pattern's match
  scored = router->ScoreBatch(inputs);
  ASSERT_TRUE(scored.ok()) << scored.status();
  EXPECT_DOUBLE_EQ((*scored)[0].score, 1.0);
  EXPECT_DOUBLE_EQ((*scored)[1].score, 0.0);
}

// Runs `lightrl ARGS` (no shell: each argument as given) and returns its exit code and
// output (stdout and stderr).
std::pair<int, std::string> RunLightrl(const std::vector<std::string>& args) {
  char log_template[] = "/tmp/lightrl_reward_worker_cmd_XXXXXX";
  const int fd = ::mkstemp(log_template);
  if (fd < 0) return {-1, "mkstemp failed"};
  ::close(fd);
  std::vector<std::string> argv = {std::getenv("LIGHTRL_BIN")};
  argv.insert(argv.end(), args.begin(), args.end());
  absl::StatusOr<pid_t> pid = SpawnChild(argv, log_template, "");
  int status = -1;
  if (pid.ok()) ::waitpid(*pid, &status, 0);
  std::string output = pid.ok() ? "" : pid.status().ToString();
  if (FILE* log = std::fopen(log_template, "r")) {
    char buffer[4096];
    size_t n;
    while ((n = std::fread(buffer, 1, sizeof(buffer), log)) > 0) output.append(buffer, n);
    std::fclose(log);
  }
  std::remove(log_template);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

TEST(RewardWorkerCommandTest, NamesUnknownKindsAndOptionKeysAndListsTheKinds) {
  ASSERT_NE(std::getenv("LIGHTRL_BIN"), nullptr);
  auto [code, output] = RunLightrl(
      {"reward-worker", "--kind", "length", "--options", R"({"max_length": 100, "max_lenght": 1})"});
  // Malformed flag values are usage errors: exit 2, pointing at --help (docs/cli.md).
  EXPECT_EQ(code, 2) << output;
  EXPECT_EQ(output,
            "lightrl reward-worker: --options: max_lenght is not a known option of reward kind "
            "length (did you mean max_length?)\n"
            "run `lightrl reward-worker --help` for its usage\n");
  std::tie(code, output) = RunLightrl({"reward-worker", "--kind", "lenght"});
  EXPECT_EQ(code, 2) << output;
  EXPECT_TRUE(absl::StrContains(output, "--kind: unknown reward kind \"lenght\" (did you mean "
                                        "length?); built-in kinds: "))
      << output;
  std::tie(code, output) = RunLightrl({"reward-worker", "--kind", "math", "--format-pattern", "x"});
  EXPECT_EQ(code, 2) << output;
  std::tie(code, output) = RunLightrl({"reward-worker", "--help"});
  EXPECT_EQ(code, 0) << output;
  for (const RewardKind& kind : RewardKinds()) {
    EXPECT_TRUE(absl::StrContains(output, absl::StrCat("    ", kind.name, " "))) << output;
    for (const RewardOptionInfo& option : kind.options) {
      EXPECT_TRUE(absl::StrContains(output, absl::StrCat(option.key, " (default "))) << output;
    }
  }
}

// --- managed Python reward servers ---

// Writes `text` as a .py file in a fresh folder and returns its path.
std::string WritePythonFile(const std::string& name, const std::string& text) {
  const std::string dir = absl::StrCat(::testing::TempDir(), "python_reward_", name, "_", ::getpid());
  ::mkdir(dir.c_str(), 0755);
  const std::string path = dir + "/" + name + ".py";
  FILE* f = std::fopen(path.c_str(), "w");
  EXPECT_NE(f, nullptr) << path;
  std::fputs(text.c_str(), f);
  std::fclose(f);
  return path;
}

PythonRewardServerProgram BuildPythonProgram() {
  PythonRewardServerProgram program;
  program.interpreter = LIGHTRL_PYTHON;
  program.script = absl::StrCat(LIGHTRL_SOURCE_DIR, "/reward/python/function_server.py");
  return program;
}

PythonRewardLaunch PythonLaunch(const std::string& name, const std::string& file,
                                const std::string& function) {
  PythonRewardLaunch launch;
  launch.name = name;
  launch.file = file;
  launch.function = function;
  launch.log_dir = absl::StrCat(::testing::TempDir(), "python_reward_logs_", ::getpid());
  launch.start_timeout = absl::Seconds(60);
  launch.max_restarts = 1;
  return launch;
}

// The component `name` of `r`; NaN when it has none.
double ComponentOf(const RewardResult& r, const std::string& name) {
  for (const auto& [key, value] : r.components) {
    if (key == name) return value;
  }
  return std::nan("");
}

constexpr const char* kKeywordReward = R"(
import helper  # a module beside the file

def score(prompt, response, metadata):
    hit = metadata["ground_truth"] in response
    if metadata.get("source") == "raise":
        raise ValueError("no score for " + prompt)
    if metadata.get("source") == "nan":
        return float("nan")
    if metadata.get("source") == "plain":
        return 0.25
    return {"score": helper.WEIGHT * hit, "correct": hit, "chars": len(response)}
)";

TEST(PythonRewardTest, AFunctionInAFileScoresWithComponentsAndIsRestartedWhenKilled) {
  const std::string file = WritePythonFile("keyword", kKeywordReward);
  {
    FILE* helper = std::fopen((file.substr(0, file.rfind('/')) + "/helper.py").c_str(), "w");
    ASSERT_NE(helper, nullptr);
    std::fputs("WEIGHT = 2.0\n", helper);
    std::fclose(helper);
  }
  absl::StatusOr<std::unique_ptr<RewardWorkers>> servers =
      RewardWorkers::StartPython({PythonLaunch("keyword", file, "score")}, BuildPythonProgram());
  ASSERT_TRUE(servers.ok()) << servers.status();
  const std::string address = (*servers)->Addresses().at("keyword");
  ASSERT_TRUE(absl::StartsWith(address, "127.0.0.1:")) << address;

  RewardRouterOptions options;
  RewardRouterEntry entry;
  entry.name = "keyword";
  entry.address = address;
  options.entries = {entry};
  options.initial_backoff = absl::Milliseconds(20);
  options.max_backoff = absl::Milliseconds(200);
  options.server_wait = absl::Seconds(60);
  RewardWorkers* supervisor = servers->get();
  options.check_server = [supervisor](const std::string& down) { return supervisor->Check(down); };
  absl::StatusOr<std::unique_ptr<RewardRouter>> router = RewardRouter::Create(options);
  ASSERT_TRUE(router.ok()) << router.status();

  std::vector<RewardInput> inputs = Inputs();
  inputs.push_back(inputs[0]);
  inputs[2].metadata["source"] = "plain";
  auto expect_scores = [&] {
    absl::StatusOr<std::vector<RewardResult>> scored = (*router)->ScoreBatch(inputs);
    ASSERT_TRUE(scored.ok()) << scored.status();
    ASSERT_EQ(scored->size(), 3u);
    EXPECT_DOUBLE_EQ((*scored)[0].score, 2.0);
    EXPECT_DOUBLE_EQ((*scored)[1].score, 0.0);
    EXPECT_DOUBLE_EQ((*scored)[2].score, 0.25);
    // The router names a server's components NAME/COMPONENT.
    EXPECT_EQ(ComponentOf((*scored)[0], "keyword/correct"), 1.0);
    EXPECT_EQ(ComponentOf((*scored)[1], "keyword/correct"), 0.0);
    EXPECT_EQ(ComponentOf((*scored)[0], "keyword/chars"), 15.0);
    EXPECT_TRUE(std::isnan(ComponentOf((*scored)[2], "keyword/correct")));
  };
  expect_scores();

  // The function's own errors fail the call naming the item; the server goes on.
  std::vector<RewardInput> bad = Inputs();
  bad[1].metadata["source"] = "raise";
  absl::StatusOr<std::vector<RewardResult>> raised = (*router)->ScoreBatch(bad);
  ASSERT_FALSE(raised.ok());
  EXPECT_TRUE(absl::StrContains(raised.status().message(), "ValueError: no score for 3+3="))
      << raised.status();
  bad[1].metadata["source"] = "nan";
  absl::StatusOr<std::vector<RewardResult>> nan = (*router)->ScoreBatch(bad);
  ASSERT_FALSE(nan.ok());
  EXPECT_TRUE(absl::StrContains(nan.status().message(), "not finite")) << nan.status();
  expect_scores();

  // Killed: restarted on its address, and scoring goes on.
  const pid_t first = (*servers)->Pid("keyword");
  ASSERT_EQ(::kill(first, SIGKILL), 0);
  expect_scores();
  EXPECT_NE((*servers)->Pid("keyword"), first);
  EXPECT_EQ((*servers)->Addresses().at("keyword"), address);

  // Past its one restart: the call fails naming the server and its restart bound.
  ASSERT_EQ(::kill((*servers)->Pid("keyword"), SIGKILL), 0);
  absl::StatusOr<std::vector<RewardResult>> failed = (*router)->ScoreBatch(inputs);
  ASSERT_EQ(failed.status().code(), absl::StatusCode::kUnavailable) << failed.status();
  EXPECT_TRUE(absl::StrContains(failed.status().message(),
                                "reward worker reward-python-keyword (" + address + ") killed by "
                                "signal 9 (Killed) after 1 restart(s); "
                                "reward.servers.keyword.restarts = 1 allows no more"))
      << failed.status();
}

TEST(PythonRewardTest, AFileThatCannotServeFailsTheStartQuotingItsLog) {
  const std::string file = WritePythonFile("misnamed", "def scor(prompt, response, metadata):\n"
                                                       "    return 1.0\n");
  absl::StatusOr<std::unique_ptr<RewardWorkers>> missing =
      RewardWorkers::StartPython({PythonLaunch("misnamed", file, "score")}, BuildPythonProgram());
  ASSERT_EQ(missing.status().code(), absl::StatusCode::kFailedPrecondition) << missing.status();
  EXPECT_TRUE(absl::StrContains(missing.status().message(),
                                "reward.servers.misnamed: the Python reward " + file +
                                    " (function score) exited with status 1 before serving"))
      << missing.status();
  EXPECT_TRUE(absl::StrContains(missing.status().message(), "defines no function 'score' "
                                                            "(it defines: scor)"))
      << missing.status();

  const std::string two_args = WritePythonFile("two_args", "def score(prompt, response):\n"
                                                           "    return 1.0\n");
  absl::StatusOr<std::unique_ptr<RewardWorkers>> arity =
      RewardWorkers::StartPython({PythonLaunch("two_args", two_args, "score")}, BuildPythonProgram());
  ASSERT_FALSE(arity.ok());
  EXPECT_TRUE(absl::StrContains(arity.status().message(), "must accept three arguments"))
      << arity.status();

  // Through the CLI's launcher: a missing interpreter is named.
  ProcessLauncherOptions launcher_options;
  launcher_options.exe = std::getenv("LIGHTRL_BIN") ? std::getenv("LIGHTRL_BIN") : "/bin/false";
  absl::StatusOr<std::unique_ptr<WorkerLauncher>> launcher = MakeProcessLauncher(launcher_options);
  ASSERT_TRUE(launcher.ok()) << launcher.status();
  PythonRewardLaunch no_python = PythonLaunch("no_python", two_args, "score");
  no_python.interpreter = "/nonexistent/python3";
  absl::StatusOr<LaunchedWorkersPtr> none = (*launcher)->StartPythonRewards({no_python});
  ASSERT_FALSE(none.ok());
  EXPECT_TRUE(absl::StrContains(none.status().message(), "reward.servers.no_python"))
      << none.status();
}

}  // namespace
}  // namespace lightrl
