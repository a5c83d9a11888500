// Reporting a failed property from a fuzz target, shared by both drivers.
#include <cstdio>
#include <cstdlib>

#include "tests/fuzz/fuzz_target.h"

namespace lightrl::fuzz {

void Fail(const char* what, const std::string& input) {
  std::fprintf(stderr, "fuzz check failed: %s\ninput (%zu bytes, first 200): %.200s\n", what,
               input.size(), input.c_str());
  std::abort();
}

}  // namespace lightrl::fuzz
