// "Did you mean" suggestions for a misspelt name (config keys, reward kinds, options):
// the closest known name by edit distance. Owns no list of names; callers pass theirs.
#pragma once

#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace lightrl {

// Levenshtein distance between `a` and `b`.
size_t EditDistance(absl::string_view a, absl::string_view b);

// " (did you mean x?)" for the closest of `candidates` within a third of the word's
// length (at least 1, at most 3 edits); else "; known: a, b, c" when `list_known` (in
// the candidates' order), or "".
std::string Suggest(absl::string_view word, const std::vector<std::string>& candidates,
                    bool list_known = true);

}  // namespace lightrl
