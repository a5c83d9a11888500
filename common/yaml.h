// YAML files (configs, cluster plans) read into a lightrl::Json tree plus the source line
// of every mapping key and sequence item, so that config errors can point at
// "configs/x.yaml:14". Parsing is yaml-cpp's (its event parser and marks); this file adds
// what configs need on top: plain scalars resolved by the YAML 1.2 core schema (so `yes`
// stays a string and ints stay apart from floats), duplicate keys rejected (yaml-cpp keeps
// both), "<<" merge keys, and bounds on hostile files (16 MiB of text, 200 levels of
// nesting, 2^20 values and 64 MiB after expanding aliases). Also a plain block-style
// writer. What the keys mean is the business of the config loaders (common/config_table.h,
// rl/run_config.h), not of this file.
//
// Supported: everything YAML 1.2 (block and flow collections, all scalar styles, multi-line
// scalars, anchors and aliases, merge keys, `!!str`). Rejected, each with its position:
// other tags, collection keys, several documents, .inf/.nan, integers beyond 64 bits.
// yaml-cpp 0.7 folds the first trailing line break of a `>+` scalar.
#pragma once

#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/json.h"

namespace lightrl {

struct YamlDocument {
  // The parsed value; an empty document is null. Mapping key order is kept.
  Json root;
  // The name given to ParseYaml, used in messages (usually the file path).
  std::string source;
  // 1-based line of every mapping key and sequence item (its '-' in block style), by path:
  // mapping keys joined by '.', sequence items as "[i]" ("rollout.group_size",
  // "data.files[2]", "a[0].b"). Keys a "<<" merges in have the merge's line; what an alias
  // repeats has only the alias's line (LineOf falls back to it).
  // The root is "" (its first line). Keys containing '.' or '[' make paths ambiguous;
  // config keys never do.
  std::map<std::string, int> lines;
  // Values set on the command line over the file's (`lightrl run --set KEY=VALUE`), by
  // path: the "--set KEY=VALUE" that errors name instead of a line.
  std::map<std::string, std::string> overrides;

  // The line of `path`, else of its nearest ancestor that has one, the root excepted (a
  // key missing from a missing section has no line worth pointing at); 0 when none does.
  int LineOf(absl::string_view path) const;
  // The override at `path` or at its nearest ancestor, nullptr when none (a key that a
  // --set wrote, or one inside a mapping that a --set wrote whole).
  const std::string* OverrideOf(absl::string_view path) const;
  // Where `path` came from: its override ("--set rollout.group_size=1") if OverrideOf
  // finds one, else "source:line" (as LineOf), or just "source" when the line is
  // unknown.
  std::string Where(absl::string_view path) const;
};

// Parses `text`; errors read "source:line:col: what" (line and column 1-based, from
// yaml-cpp's marks, with a hint for its terser syntax messages).
absl::StatusOr<YamlDocument> ParseYaml(absl::string_view text, const std::string& source);

// Writes `value` as block YAML that ParseYaml reads back to an equal value (numbers keep
// their int/float kind). Strings are plain when that is unambiguous, else double-quoted.
std::string DumpYaml(const Json& value);

}  // namespace lightrl
