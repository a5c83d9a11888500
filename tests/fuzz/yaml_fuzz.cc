// Fuzz target: common/yaml's parser (configs and plans). What it accepts must write back
// as YAML that parses to the same value; what it rejects must be an INVALID_ARGUMENT.
#include <string>

#include "common/yaml.h"
#include "tests/fuzz/fuzz_target.h"

namespace lightrl::fuzz {

std::vector<std::string> Seeds() {
  return {"run:\n  output_dir: runs/x\n  steps: 10\nrollout:\n  group_size: 8\n",
          "a: [1, {b: c}, \"d\\n\"]\n",
          "- x\n- - y\n  - z\n- {k: v}\n",
          "key: 'it''s'\nother: |\n  block\n  text\n",
          "fleet:\n  rollout_workers: 2\n  coordinator_address: 127.0.0.1:0  # comment\n",
          "a:\n  b:\n    c:\n      d: [[[]]]\n",
          "x: -1.5e3\ny: true\nz: null\nw: ~\n",
          "base: &b {lr: 1, betas: [0.9, 0.95]}\nrun:\n  <<: *b\n  lr: 2\nl: [*b, *b]\n",
          "plain: one\n  two\nq: \"a\n  b\"\nf: >\n  x\n  y\n"};
}

}  // namespace lightrl::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const absl::StatusOr<lightrl::YamlDocument> parsed = lightrl::ParseYaml(input, "fuzz.yaml");
  if (!parsed.ok()) {
    if (parsed.status().code() != absl::StatusCode::kInvalidArgument) {
      lightrl::fuzz::Fail("a parse error that is not INVALID_ARGUMENT", input);
    }
    return 0;
  }
  const std::string dumped = lightrl::DumpYaml(parsed->root);
  const absl::StatusOr<lightrl::YamlDocument> again = lightrl::ParseYaml(dumped, "dumped.yaml");
  if (!again.ok()) lightrl::fuzz::Fail("a parsed value writes YAML that does not parse", input);
  if (again->root.Dump() != parsed->root.Dump()) {
    lightrl::fuzz::Fail("write then parse changes the value", input);
  }
  return 0;
}
