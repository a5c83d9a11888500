// The contract between a fuzz target and its drivers. A target defines the libFuzzer
// entry point (parse one input; crash or hang on a bug, return 0 otherwise) and its seed
// inputs; it owns no generation. standalone_driver.cc feeds it a bounded, seeded stream
// of random and mutated inputs for CTest; under LIGHTRL_LIBFUZZER the same file links
// against clang's libFuzzer instead.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace lightrl::fuzz {

// Well-formed and near-miss inputs the mutations start from; their fragments also serve
// as the dictionary of tokens spliced into mutated inputs.
std::vector<std::string> Seeds();

// Stops the process with a message naming the target and the broken property: a failed
// check is a finding, like a crash.
[[noreturn]] void Fail(const char* what, const std::string& input);

}  // namespace lightrl::fuzz
