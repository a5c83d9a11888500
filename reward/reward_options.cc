#include "reward/reward_options.h"

#include <cmath>
#include <limits>
#include <utility>

namespace lightrl::reward_options_internal {
namespace {

// 1e3 reads as a float from YAML but is an obvious integer; 2^53 bounds exact doubles.
bool AsInteger(const Json& value, int64_t* out) {
  if (value.is_int()) {
    *out = value.as_int();
    return true;
  }
  if (!value.is_number()) return false;
  const double v = value.as_double();
  if (std::floor(v) != v || std::fabs(v) > 9007199254740992.0) return false;
  *out = static_cast<int64_t>(v);
  return true;
}

}  // namespace

Json ToJson(bool v) { return Json(v); }
Json ToJson(int v) { return Json(v); }
Json ToJson(int64_t v) { return Json(v); }
Json ToJson(double v) { return Json(v); }
Json ToJson(const std::string& v) { return Json(v); }
Json ToJson(const std::vector<std::string>& v) {
  Json list = Json::MakeArray();
  for (const std::string& item : v) list.push_back(Json(item));
  return list;
}

const char* TypeName(const bool*) { return "true or false"; }
const char* TypeName(const int*) { return "an integer"; }
const char* TypeName(const int64_t*) { return "an integer"; }
const char* TypeName(const double*) { return "a number"; }
const char* TypeName(const std::string*) { return "a string"; }
const char* TypeName(const std::vector<std::string>*) { return "a list of strings"; }

bool FromJson(const Json& value, bool* out) {
  if (!value.is_bool()) return false;
  *out = value.as_bool();
  return true;
}

bool FromJson(const Json& value, int* out) {
  int64_t v = 0;
  if (!AsInteger(value, &v) || v < std::numeric_limits<int>::min() ||
      v > std::numeric_limits<int>::max()) {
    return false;
  }
  *out = static_cast<int>(v);
  return true;
}

bool FromJson(const Json& value, int64_t* out) { return AsInteger(value, out); }

bool FromJson(const Json& value, double* out) {
  if (!value.is_number()) return false;
  *out = value.as_double();
  return true;
}

bool FromJson(const Json& value, std::string* out) {
  if (!value.is_string()) return false;
  *out = value.as_string();
  return true;
}

bool FromJson(const Json& value, std::vector<std::string>* out) {
  if (!value.is_array()) return false;
  std::vector<std::string> items;
  for (const Json& item : value.as_array()) {
    if (!item.is_string()) return false;
    items.push_back(item.as_string());
  }
  *out = std::move(items);
  return true;
}

}  // namespace lightrl::reward_options_internal
