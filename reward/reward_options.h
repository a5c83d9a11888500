// How a reward kind's options struct is read from the JSON object its options travel as
// (the run config's reward.options.KIND, `lightrl reward-worker --options`): one
// ConfigTable per kind (common/config_table.h), each row binding a key to a member with a
// one-line help, the same rows the run config's sections are made of. The table gives
// the registry its known keys, types, defaults and resolved options, and the run
// config its reward.options.KIND.* keys for the docs. Each kind owns its struct and the
// struct's Validate(). Torch- and protobuf-free.
#pragma once

#include <string>
#include <utility>

#include "absl/status/status.h"
#include "common/config_table.h"

namespace lightrl {

// One option of a kind whose settings are an `Options` struct: a config table row.
template <typename Options>
using RewardOptionField = ConfigField<Options>;

// A row bound to `Options::*member`.
template <typename Options, typename T>
ConfigField<Options> OptionField(std::string key, T Options::*member, std::string help) {
  return Field<Options>(std::move(key), member, std::move(help));
}

// A row bound to a member of a nested struct: `(Options::*outer).*member`.
template <typename Options, typename Inner, typename T>
ConfigField<Options> OptionField(std::string key, Inner Options::*outer, T Inner::*member,
                                 std::string help) {
  return Field<Options>(std::move(key), outer, member, std::move(help));
}

// The settings of a kind that has none.
struct NoRewardOptions {
  absl::Status Validate() const { return absl::OkStatus(); }
};

}  // namespace lightrl
