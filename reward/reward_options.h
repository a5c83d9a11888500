// How a reward kind's options struct is read from the JSON object its options travel as
// (the run config's reward.options.KIND, `lightrl reward-worker --options`): one table of
// fields per kind, each binding a key to a member, with a one-line help. Owns the
// conversions and the unknown-key and type errors; each kind owns its struct and the
// struct's Validate(). Torch- and protobuf-free.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "common/json.h"

namespace lightrl {
namespace reward_options_internal {

// The value as JSON; the type's name as errors and the usage text give it.
Json ToJson(bool v);
Json ToJson(int v);
Json ToJson(int64_t v);
Json ToJson(double v);
Json ToJson(const std::string& v);
Json ToJson(const std::vector<std::string>& v);
const char* TypeName(const bool*);
const char* TypeName(const int*);
const char* TypeName(const int64_t*);
const char* TypeName(const double*);
const char* TypeName(const std::string*);
const char* TypeName(const std::vector<std::string>*);
// Stores `value` in `out`; false (out unchanged) when it is not of that type or range.
bool FromJson(const Json& value, bool* out);
bool FromJson(const Json& value, int* out);
bool FromJson(const Json& value, int64_t* out);
bool FromJson(const Json& value, double* out);
bool FromJson(const Json& value, std::string* out);
bool FromJson(const Json& value, std::vector<std::string>* out);

}  // namespace reward_options_internal

// One option of a kind whose settings are an `Options` struct.
template <typename Options>
struct RewardOptionField {
  std::string key;
  std::string help;  // one line
  std::string type;  // "an integer", "a number", "a string", "true or false", ...
  std::function<Json(const Options&)> get;
  // False when `value` is not of the field's type.
  std::function<bool(const Json& value, Options& options)> set;
};

// A field bound to `Options::*member`.
template <typename Options, typename T>
RewardOptionField<Options> OptionField(std::string key, T Options::*member, std::string help) {
  using namespace reward_options_internal;
  return {std::move(key), std::move(help), TypeName(static_cast<const T*>(nullptr)),
          [member](const Options& o) { return ToJson(o.*member); },
          [member](const Json& v, Options& o) { return FromJson(v, &(o.*member)); }};
}

// A field bound to a member of a nested struct: `(Options::*outer).*member`.
template <typename Options, typename Inner, typename T>
RewardOptionField<Options> OptionField(std::string key, Inner Options::*outer, T Inner::*member,
                                       std::string help) {
  using namespace reward_options_internal;
  return {std::move(key), std::move(help), TypeName(static_cast<const T*>(nullptr)),
          [outer, member](const Options& o) { return ToJson(o.*outer.*member); },
          [outer, member](const Json& v, Options& o) { return FromJson(v, &(o.*outer.*member)); }};
}

// The settings of a kind that has none.
struct NoRewardOptions {
  absl::Status Validate() const { return absl::OkStatus(); }
};

}  // namespace lightrl
