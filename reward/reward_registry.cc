#include "reward/reward_registry.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/did_you_mean.h"
#include "reward/code_reward.h"
#include "reward/countdown_reward.h"
#include "reward/format_reward.h"
#include "reward/length_reward.h"
#include "reward/math_reward.h"

namespace lightrl {
namespace {

// A value as an error message quotes it: scalars as JSON, collections by kind.
std::string Describe(const Json& value) {
  if (value.is_array()) return "a list";
  if (value.is_object()) return "a mapping";
  return value.Dump();
}

std::string OptionPath(absl::string_view where, absl::string_view key) {
  return where.empty() ? std::string(key) : absl::StrCat(where, ".", key);
}

std::vector<RewardKind>& MutableRewardKinds() {
  // The one list of built-in kinds.
  static std::vector<RewardKind>* const kinds = new std::vector<RewardKind>{
      MathRewardKind("arithmetic"),
      CountdownRewardKind(),
      MathRewardKind("math"),
      FormatRewardKind(),
      LengthRewardKind(),
      CodeRewardKind(),
  };
  return *kinds;
}

}  // namespace

const std::vector<RewardKind>& RewardKinds() { return MutableRewardKinds(); }

void AddRewardKind(RewardKind kind) {
  if (FindRewardKind(kind.name) != nullptr) return;
  MutableRewardKinds().push_back(std::move(kind));
}

std::vector<std::string> RewardKindNames() {
  std::vector<std::string> names;
  for (const RewardKind& kind : RewardKinds()) names.push_back(kind.name);
  return names;
}

const RewardKind* FindRewardKind(absl::string_view name) {
  const std::vector<RewardKind>& kinds = RewardKinds();
  auto it = std::find_if(kinds.begin(), kinds.end(),
                         [name](const RewardKind& kind) { return kind.name == name; });
  return it == kinds.end() ? nullptr : &*it;
}

absl::Status UnknownRewardKindError(absl::string_view name) {
  const std::vector<std::string> names = RewardKindNames();
  return absl::InvalidArgumentError(absl::StrCat("unknown reward kind \"", name, "\"",
                                                 Suggest(name, names, /*list_known=*/false),
                                                 "; built-in kinds: ", absl::StrJoin(names, ", ")));
}

absl::StatusOr<Json> ResolveRewardOptions(absl::string_view kind, const Json& options,
                                          absl::string_view where) {
  const RewardKind* found = FindRewardKind(kind);
  if (found == nullptr) return UnknownRewardKindError(kind);
  return found->resolve(options, where);
}

absl::StatusOr<RewardFunctionPtr> MakeRewardFunction(absl::string_view kind, const Json& options,
                                                     absl::string_view where) {
  const RewardKind* found = FindRewardKind(kind);
  if (found == nullptr) return UnknownRewardKindError(kind);
  return found->make(options, where);
}

std::string DescribeRewardKinds() {
  size_t width = 0;
  for (const RewardKind& kind : RewardKinds()) width = std::max(width, kind.name.size());
  std::string out;
  for (const RewardKind& kind : RewardKinds()) {
    absl::StrAppend(&out, "    ", kind.name, std::string(width + 2 - kind.name.size(), ' '),
                    kind.help, "\n");
    for (const RewardOptionInfo& option : kind.options) {
      absl::StrAppend(&out, "      ", option.key, " (default ", option.default_value.Dump(),
                      "): ", option.help, "\n");
    }
  }
  return out;
}

namespace reward_registry_internal {

absl::Status CheckOptionKeys(const std::string& kind, const Json& options,
                             const std::vector<std::string>& keys, absl::string_view where) {
  if (options.is_null()) return absl::OkStatus();
  if (!options.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        where.empty() ? absl::StrCat("the options of reward kind ", kind) : std::string(where),
        " must be a mapping of option to value, got ", Describe(options)));
  }
  for (const auto& [key, unused] : options.as_object()) {
    if (std::find(keys.begin(), keys.end(), key) != keys.end()) continue;
    return absl::InvalidArgumentError(
        absl::StrCat(OptionPath(where, key), " is not a known option of reward kind ", kind,
                     keys.empty() ? "; it takes no options" : Suggest(key, keys)));
  }
  return absl::OkStatus();
}

absl::Status WrongOptionType(const std::string& kind, const std::string& key,
                             const std::string& type, const Json& value,
                             absl::string_view where) {
  return absl::InvalidArgumentError(
      absl::StrCat(OptionPath(where, key), where.empty() ? absl::StrCat(" (reward kind ", kind, ")") : "",
                   " must be ", type, ", got ", Describe(value)));
}

absl::Status InvalidOptions(const absl::Status& status, absl::string_view where) {
  if (where.empty()) return status;
  return absl::Status(status.code(), absl::StrCat(where, ": ", status.message()));
}

}  // namespace reward_registry_internal
}  // namespace lightrl
