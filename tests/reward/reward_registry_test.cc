// The reward registry: every built-in kind is listed once and builds from its options
// object; unknown kinds and option keys are errors that name them and suggest the
// closest.
#include "reward/reward_registry.h"

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"

namespace lightrl {
namespace {

Json Parse(const std::string& text) {
  absl::StatusOr<Json> json = Json::Parse(text);
  EXPECT_TRUE(json.ok()) << json.status();
  return json.ok() ? *json : Json();
}

TEST(RewardRegistryTest, ListsEveryKindOnceAndBuildsEachWithItsDefaults) {
  EXPECT_EQ(RewardKindNames(), (std::vector<std::string>{"arithmetic", "countdown", "math",
                                                         "format", "length", "code"}));
  const std::string usage = DescribeRewardKinds();
  for (const RewardKind& kind : RewardKinds()) {
    EXPECT_FALSE(kind.help.empty()) << kind.name;
    EXPECT_EQ(FindRewardKind(kind.name), &kind);
    EXPECT_TRUE(absl::StrContains(usage, kind.name)) << usage;
    absl::StatusOr<RewardFunctionPtr> function = MakeRewardFunction(kind.name);
    ASSERT_TRUE(function.ok()) << kind.name << ": " << function.status();
    EXPECT_EQ((*function)->Kind(), kind.name);
    // Resolving no options gives every option at its default.
    absl::StatusOr<Json> resolved = ResolveRewardOptions(kind.name, Json());
    ASSERT_TRUE(resolved.ok()) << resolved.status();
    ASSERT_EQ(resolved->size(), kind.options.size()) << kind.name;
    for (const RewardOptionInfo& option : kind.options) {
      ASSERT_NE(resolved->find(option.key), nullptr) << kind.name << "." << option.key;
      EXPECT_EQ(resolved->find(option.key)->Dump(), option.default_value.Dump());
      EXPECT_TRUE(absl::StrContains(usage, option.key)) << usage;
    }
  }
  EXPECT_EQ(FindRewardKind("no_such_kind"), nullptr);
}

TEST(RewardRegistryTest, OptionsRoundTripThroughTheirJsonObject) {
  absl::StatusOr<Json> resolved = ResolveRewardOptions("length", Parse(R"({"buffer": 10})"));
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(resolved->Dump(), R"({"max_length":16384,"buffer":10})");
  absl::StatusOr<Json> again = ResolveRewardOptions("length", Json::Parse(resolved->Dump()).value());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->Dump(), resolved->Dump());
  // YAML writes 1e3 as a float; an integral value is still an integer option.
  resolved = ResolveRewardOptions("length", Parse(R"({"max_length": 1e3, "buffer": 0})"));
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(resolved->Dump(), R"({"max_length":1000,"buffer":0})");
  // Nested sandbox limits of the code kind bind like top-level ones.
  resolved = ResolveRewardOptions(
      "code", Parse(R"({"wall_seconds": 2.5, "python_command": ["python3", "-I"]})"));
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(resolved->find("wall_seconds")->as_double(), 2.5);
  EXPECT_EQ(resolved->find("python_command")->Dump(), R"(["python3","-I"])");

  absl::StatusOr<RewardFunctionPtr> format =
      MakeRewardFunction("format", Parse(R"({"pattern": "^<think>"})"));
  ASSERT_TRUE(format.ok()) << format.status();
  RewardInput input;
  input.response = "<think>so</think> 4";
  EXPECT_EQ((*format)->Score(input)->score, 1.0);
  input.response = "4";
  EXPECT_EQ((*format)->Score(input)->score, 0.0);
}

TEST(RewardRegistryTest, UnknownKindNamesItAndSuggests) {
  absl::Status unknown = MakeRewardFunction("lenght").status();
  EXPECT_EQ(unknown.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(std::string(unknown.message()),
            "unknown reward kind \"lenght\" (did you mean length?); built-in kinds: "
            "arithmetic, countdown, math, format, length, code");
  EXPECT_EQ(ResolveRewardOptions("zzzzzz", Json()).status().message(),
            "unknown reward kind \"zzzzzz\"; built-in kinds: arithmetic, countdown, math, "
            "format, length, code");
}

TEST(RewardRegistryTest, UnknownOptionKeyNamesTheKindAndTheKey) {
  absl::Status status = MakeRewardFunction("length", Parse(R"({"max_lenght": 100})")).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(std::string(status.message()),
            "max_lenght is not a known option of reward kind length (did you mean max_length?)");
  // With the path the options came from, which then starts the message.
  status = MakeRewardFunction("length", Parse(R"({"zzzzzz": 1})"), "reward.options.length")
               .status();
  EXPECT_EQ(std::string(status.message()),
            "reward.options.length.zzzzzz is not a known option of reward kind length; known: "
            "max_length, buffer");
  EXPECT_EQ(MakeRewardFunction("math", Parse(R"({"strict": true})")).status().message(),
            "strict is not a known option of reward kind math; it takes no options");
  EXPECT_EQ(MakeRewardFunction("length", Parse(R"({"buffer": "lots"})")).status().message(),
            "buffer (reward kind length) must be an integer, got \"lots\"");
  EXPECT_EQ(MakeRewardFunction("code", Parse(R"({"python_command": [1]})")).status().message(),
            "python_command (reward kind code) must be a list of strings, got a list");
  EXPECT_EQ(MakeRewardFunction("format", Parse("[1]")).status().message(),
            "the options of reward kind format must be a mapping of option to value, got a list");
  // The kind's own Validate() still runs.
  status = MakeRewardFunction("length", Parse(R"({"max_length": 10, "buffer": 20})"),
                              "reward.options.length")
               .status();
  EXPECT_TRUE(absl::StartsWith(status.message(), "reward.options.length: length reward: need"))
      << status;
  EXPECT_TRUE(absl::StrContains(
      MakeRewardFunction("format", Parse(R"({"pattern": "(unclosed"})")).status().message(),
      "(unclosed"));
}

TEST(RewardRegistryTest, OptionsAreConfigTableRows) {
  // The kind's options are a config table: its rows give the usage text's types and
  // defaults, the resolved options and the reward.options.KIND.key list the docs follow.
  const RewardKind* code = FindRewardKind("code");
  ASSERT_NE(code, nullptr);
  std::map<std::string, RewardOptionInfo> options;
  for (const RewardOptionInfo& o : code->options) options[o.key] = o;
  EXPECT_EQ(options["cpu_seconds"].type, "an integer");
  EXPECT_EQ(options["cpu_seconds"].default_value.Dump(), "5");
  EXPECT_EQ(options["python_command"].type, "a list of strings");
  EXPECT_EQ(options["python_command"].default_value.Dump(), R"(["python3"])");
  EXPECT_EQ(options["require_cgroup"].type, "true or false");
  absl::StatusOr<Json> resolved =
      ResolveRewardOptions("code", Parse(R"({"cpu_seconds": 7, "wall_seconds": 2.5})"));
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(resolved->find("cpu_seconds")->as_int(), 7);
  EXPECT_EQ(resolved->find("wall_seconds")->as_double(), 2.5);
  EXPECT_EQ(resolved->find("max_processes")->as_int(), 64);
  // 1e3 reads as a float from YAML but is a whole number; an int field is bounded.
  EXPECT_TRUE(ResolveRewardOptions("code", Parse(R"({"cpu_seconds": 1e3})")).ok());
  EXPECT_EQ(std::string(
                ResolveRewardOptions("code", Parse(R"({"cpu_seconds": 1e12})")).status().message()),
            "cpu_seconds (reward kind code) must be an integer, got 1000000000000.0");
  EXPECT_EQ(std::string(
                ResolveRewardOptions("code", Parse(R"({"cpu_seconds": 1.5})")).status().message()),
            "cpu_seconds (reward kind code) must be an integer, got 1.5");
}

}  // namespace
}  // namespace lightrl
