#include "rl/run_progress.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace lightrl {

double SecondsSince(RunClock::time_point since) {
  return std::chrono::duration<double>(RunClock::now() - since).count();
}

std::string Duration(double seconds) {
  const int64_t s = static_cast<int64_t>(std::max(0.0, seconds) + 0.5);
  if (s < 60) return absl::StrFormat("%ds", s);
  if (s < 3600) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%dh%02dm", s / 3600, (s % 3600) / 60);
}

std::string Count(int64_t n) {
  const double x = static_cast<double>(n);
  if (x >= 1e9) return absl::StrFormat("%.2fB", x / 1e9);
  if (x >= 1e6) return absl::StrFormat("%.2fM", x / 1e6);
  if (x >= 1e3) return absl::StrFormat("%.1fK", x / 1e3);
  return absl::StrCat(n);
}

std::string PhaseClock::LineAt(RunClock::time_point now, int64_t done) const {
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  std::string line = absl::StrCat("elapsed ", Duration(elapsed));
  if (done > first_ && done < total_) {
    const double per_unit = elapsed / static_cast<double>(done - first_);
    absl::StrAppend(&line, ", ETA ", Duration(per_unit * static_cast<double>(total_ - done)));
  }
  return line;
}

}  // namespace lightrl
