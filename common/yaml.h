// The YAML subset that lightrl configs are written in, read into a lightrl::Json tree plus
// the source line of every mapping key and sequence item, so that config errors can point
// at "configs/x.yaml:14". Owns parsing and a plain block-style writer; what the keys mean
// is the business of the config loaders (rl/run_config.h), not of this file.
//
// Supported: block mappings and sequences (space indentation), flow `[..]` and `{..}`,
// plain/single-quoted/double-quoted scalars, `|` and `>` block scalars, comments, one
// optional `---`. Not supported, each with a clear error: anchors, aliases, tags,
// directives, complex `?` keys, several documents, multi-line plain or quoted scalars.
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
  // 1-based line of every mapping key and sequence item, by path: mapping keys joined by
  // '.', sequence items as "[i]" ("rollout.group_size", "data.files[2]", "a[0].b").
  // The root is "" (its first line). Keys containing '.' or '[' make paths ambiguous;
  // config keys never do.
  std::map<std::string, int> lines;

  // The line of `path`, else of its nearest ancestor that has one, the root excepted (a
  // key missing from a missing section has no line worth pointing at); 0 when none does.
  int LineOf(absl::string_view path) const;
  // "source:line" of `path` (as LineOf), or just "source" when the line is unknown.
  std::string Where(absl::string_view path) const;
};

// Parses `text`; errors read "source:line:col: what" (line and column 1-based).
absl::StatusOr<YamlDocument> ParseYaml(absl::string_view text, const std::string& source);

// Writes `value` as block YAML that ParseYaml reads back to an equal value (numbers keep
// their int/float kind). Strings are plain when that is unambiguous, else double-quoted.
std::string DumpYaml(const Json& value);

}  // namespace lightrl
