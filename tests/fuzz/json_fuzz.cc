// Fuzz target: common/json's parser, which reads wire data (model configs sent to rollout
// workers, rollout-log payloads, safetensors headers). What it accepts must dump and
// parse back to the same text; what it rejects must be an INVALID_ARGUMENT.
#include <string>

#include "common/json.h"
#include "tests/fuzz/fuzz_target.h"

namespace lightrl::fuzz {

std::vector<std::string> Seeds() {
  return {R"({"b": [1, 2.5, -3e2, true, null], "a": {"x": "y\n\u00e9\ud83d\ude00"}})",
          R"([[[[[]]]]])", R"({"": {"": {"": []}}})", R"("\ud800")", R"([1,])", "NaN",
          "-Infinity", R"({"hidden_size": 64, "num_layers": 2, "rope_theta": 1e6})",
          "1e400", "-0", R"("\u0000")"};
}

}  // namespace lightrl::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const absl::StatusOr<lightrl::Json> parsed = lightrl::Json::Parse(input);
  if (!parsed.ok()) {
    if (parsed.status().code() != absl::StatusCode::kInvalidArgument) {
      lightrl::fuzz::Fail("a parse error that is not INVALID_ARGUMENT", input);
    }
    return 0;
  }
  const std::string dumped = parsed->Dump();
  const absl::StatusOr<lightrl::Json> again = lightrl::Json::Parse(dumped);
  if (!again.ok()) lightrl::fuzz::Fail("a parsed value dumps to text that does not parse", input);
  if (again->Dump() != dumped) lightrl::fuzz::Fail("dump, parse, dump is not stable", input);
  return 0;
}
