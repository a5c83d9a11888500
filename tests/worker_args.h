// The argument line of the multi-process test workers: `count` integers, then any text
// arguments, checked before a worker joins its group. Prints the usage or the bad
// argument and returns false (the worker exits 2).
#pragma once

#include <cstdint>
#include <cstdio>

#include "absl/strings/numbers.h"

namespace lightrl {

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
