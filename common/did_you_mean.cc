#include "common/did_you_mean.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace lightrl {

size_t EditDistance(absl::string_view a, absl::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
      diagonal = above;
    }
  }
  return row[b.size()];
}

std::string Suggest(absl::string_view word, const std::vector<std::string>& candidates,
                    bool list_known) {
  const size_t limit = std::min<size_t>(3, std::max<size_t>(1, word.size() / 3));
  size_t best = limit + 1;
  std::string best_name;
  for (const std::string& name : candidates) {
    const size_t d = EditDistance(word, name);
    if (d < best) {
      best = d;
      best_name = name;
    }
  }
  if (!best_name.empty()) return absl::StrCat(" (did you mean ", best_name, "?)");
  return list_known ? absl::StrCat("; known: ", absl::StrJoin(candidates, ", ")) : std::string();
}

}  // namespace lightrl
