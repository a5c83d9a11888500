// The multi-process test workers' shared pieces: their argument line, and the checks
// that end a worker (its main catches the exception and exits 2) when a step fails.
#pragma once

#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace lightrl {

// Throws naming `what` unless `s` is OK.
inline void Check(const absl::Status& s, const char* what) {
  if (!s.ok()) throw std::runtime_error(absl::StrCat(what, ": ", s.ToString()));
}

// The value of `v`, or throws naming `what`.
template <typename T>
T Value(absl::StatusOr<T> v, const char* what) {
  Check(v.status(), what);
  return std::move(*v);
}

// The argument line: `count` integers, then any text arguments, checked before a worker
// joins its group. Prints the usage or the bad argument and returns false (exit 2).
inline bool ParseWorkerArgs(int argc, char** argv, int expected_argc, const char* usage,
                            int count, int64_t* ints) {
  if (argc != expected_argc) {
    std::fprintf(stderr, "usage: %s %s\n", argv[0], usage);
    return false;
  }
  for (int i = 0; i < count; ++i) {
    if (!absl::SimpleAtoi(argv[i + 1], &ints[i])) {
      std::fprintf(stderr, "argument %d: \"%s\" is not an integer\n", i + 1, argv[i + 1]);
      return false;
    }
  }
  return true;
}

}  // namespace lightrl
