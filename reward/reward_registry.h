// The registry of built-in reward kinds: one table of (name, one-line help, options with
// their defaults, factory) that every consumer reads: the run config's checks of
// reward.kind, reward.weights and reward.options, `lightrl reward-worker` (its usage,
// --kind and --options), the spawned reward workers' command lines, the in-process
// trainer and the reward router. A kind's options travel as one JSON object.
// Adding a kind: one file that defines it with DefineRewardKind (reward/length_reward.cc
// is a small example) and one row in RewardKinds() (reward_registry.cc); nothing else
// lists kinds. Owns the table and the option errors; the scoring is each kind's.
// Torch- and protobuf-free.
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/json.h"
#include "reward/reward_function.h"
#include "reward/reward_options.h"

namespace lightrl {

// One option of a kind, as usage text and docs show it.
struct RewardOptionInfo {
  std::string key;
  std::string type;  // "an integer", "a number", "a string", "true or false", ...
  std::string help;  // one line
  Json default_value;
};

// A built-in reward kind. `where`, in the functions below, names the options in errors:
// "" for a message that names the kind itself ("buffer is not a known option of reward
// kind length"), or the path they came from ("reward.options.length"), which then
// starts every message ("reward.options.length.buffer must be an integer, got ...").
struct RewardKind {
  std::string name;
  std::string help;  // one line
  std::vector<RewardOptionInfo> options;
  // `options` (a JSON object; null = {}) with every default filled in, after the kind's
  // checks: unknown keys, types, the options struct's Validate().
  std::function<absl::StatusOr<Json>(const Json& options, absl::string_view where)> resolve;
  // The function scoring this kind with `options`, checked as `resolve` does.
  std::function<absl::StatusOr<RewardFunctionPtr>(const Json& options, absl::string_view where)>
      make;
  // Items of one Score call a reward server hands the function at once, each on a thread
  // of its own; 0 = the server's default. A kind that batches items itself (genrm) asks
  // for its largest batch.
  int parallel_items = 0;
};

// Every built-in kind, in the order usage text and errors list them, then the kinds added.
const std::vector<RewardKind>& RewardKinds();
// Adds a kind defined above reward/ (one that needs the engine, rl/genrm_reward.h) after
// the built-in ones; a name already listed is left as it is. Programs call it at start-up,
// before any thread reads the registry.
void AddRewardKind(RewardKind kind);
std::vector<std::string> RewardKindNames();
// nullptr for a name that is not a built-in kind.
const RewardKind* FindRewardKind(absl::string_view name);
// INVALID_ARGUMENT: "unknown reward kind "x" (did you mean y?); built-in kinds: a, b, ...".
absl::Status UnknownRewardKindError(absl::string_view name);

// RewardKind::resolve of `kind`; UnknownRewardKindError for an unknown one.
absl::StatusOr<Json> ResolveRewardOptions(absl::string_view kind, const Json& options,
                                          absl::string_view where = "");
// RewardKind::make of `kind`; UnknownRewardKindError for an unknown one. Null `options`:
// the kind's defaults.
absl::StatusOr<RewardFunctionPtr> MakeRewardFunction(absl::string_view kind,
                                                     const Json& options = Json(),
                                                     absl::string_view where = "");

// The kinds for usage text: a line per kind ("  math  final-answer match ...") and an
// indented line per option with its type and default.
std::string DescribeRewardKinds();

namespace reward_registry_internal {

// Errors of the options binding, formatted as RewardKind says.
absl::Status CheckOptionKeys(const std::string& kind, const Json& options,
                             const std::vector<std::string>& keys, absl::string_view where);
absl::Status WrongOptionType(const std::string& kind, const std::string& key,
                             const std::string& type, const Json& value,
                             absl::string_view where);
absl::Status InvalidOptions(const absl::Status& status, absl::string_view where);

template <typename Options>
absl::StatusOr<Options> BindOptions(const std::string& kind,
                                    const std::vector<RewardOptionField<Options>>& fields,
                                    const Json& json, absl::string_view where) {
  std::vector<std::string> keys;
  for (const RewardOptionField<Options>& field : fields) keys.push_back(field.key);
  if (absl::Status status = CheckOptionKeys(kind, json, keys, where); !status.ok()) {
    return status;
  }
  Options options;
  for (const RewardOptionField<Options>& field : fields) {
    const Json* value = json.find(field.key);
    if (value == nullptr || value->is_null()) continue;
    // The row's own message names a config path; the registry names the kind.
    if (!field.bind(value, field.key, ConfigSource(), options).ok()) {
      return WrongOptionType(kind, field.key, field.type, *value, where);
    }
  }
  if (absl::Status status = options.Validate(); !status.ok()) {
    return InvalidOptions(status, where);
  }
  return options;
}

}  // namespace reward_registry_internal

// A kind whose settings are an `Options` struct (defaults as its members say, with a
// Validate()), bound from JSON by `fields`; `make` builds the function from valid
// options.
template <typename Options>
RewardKind DefineRewardKind(
    std::string name, std::string help, std::vector<RewardOptionField<Options>> fields,
    std::function<absl::StatusOr<RewardFunctionPtr>(const Options&)> make) {
  RewardKind kind;
  kind.name = std::move(name);
  kind.help = std::move(help);
  const Options defaults;
  for (const RewardOptionField<Options>& field : fields) {
    kind.options.push_back({field.key, field.type, field.doc, field.dump(defaults)});
  }
  kind.resolve = [name = kind.name, fields](const Json& json,
                                            absl::string_view where) -> absl::StatusOr<Json> {
    absl::StatusOr<Options> options =
        reward_registry_internal::BindOptions(name, fields, json, where);
    if (!options.ok()) return options.status();
    return DumpTable(fields, *options);
  };
  kind.make = [name = kind.name, fields, make = std::move(make)](
                  const Json& json, absl::string_view where) -> absl::StatusOr<RewardFunctionPtr> {
    absl::StatusOr<Options> options =
        reward_registry_internal::BindOptions(name, fields, json, where);
    if (!options.ok()) return options.status();
    return make(*options);
  };
  return kind;
}

}  // namespace lightrl
