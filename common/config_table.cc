#include "common/config_table.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/did_you_mean.h"
#include "common/file_util.h"
#include "common/status.h"

namespace lightrl {

absl::Status ConfigSource::ErrorAt(absl::string_view path, absl::string_view what) const {
  const std::string where = doc == nullptr ? std::string("config") : doc->Where(path);
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", what));
}

absl::Status ApplyConfigOverride(YamlDocument& doc, absl::string_view assignment) {
  const std::string flag = absl::StrCat("--set ", assignment);
  const size_t eq = assignment.find('=');
  const absl::string_view key = assignment.substr(0, eq);
  const std::vector<absl::string_view> parts = absl::StrSplit(key, '.');
  bool well_formed = eq != absl::string_view::npos;
  for (absl::string_view part : parts) well_formed = well_formed && !part.empty();
  if (!well_formed) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": expected KEY=VALUE with a dotted key, e.g. rollout.group_size=4"));
  }
  absl::StatusOr<YamlDocument> value =
      ParseYaml(assignment.substr(eq + 1), absl::StrCat("--set ", key));
  if (!value.ok()) return value.status();
  if (!doc.root.is_object()) {
    if (!doc.root.is_null()) {
      return absl::InvalidArgumentError(
          absl::StrCat(flag, ": ", doc.source, " is not a mapping of sections"));
    }
    doc.root = Json::MakeObject();
  }
  Json* node = &doc.root;
  std::string path;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    path = path.empty() ? std::string(parts[i]) : absl::StrCat(path, ".", parts[i]);
    Json* child = nullptr;
    for (auto& [k, v] : node->as_object()) {
      if (k == parts[i]) child = &v;
    }
    if (child == nullptr || child->is_null()) {
      node->set(parts[i], Json::MakeObject());
      for (auto& [k, v] : node->as_object()) {
        if (k == parts[i]) child = &v;
      }
    } else if (!child->is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(flag, ": ", path, " is ", config_table_internal::Describe(*child),
                       " in ", doc.Where(path), ", not a mapping"));
    }
    node = child;
  }
  node->set(parts.back(), std::move(value->root));
  doc.overrides[std::string(key)] = flag;
  return absl::OkStatus();
}

ValueCheck<int64_t> AtLeast(int64_t min) {
  return [min](const int64_t& v) {
    return v >= min ? std::string() : absl::StrCat("must be >= ", min, ", got ", v);
  };
}

ValueCheck<int64_t> IntInRange(int64_t lo, int64_t hi, std::string note) {
  return [lo, hi, note](const int64_t& v) {
    if (v >= lo && v <= hi) return std::string();
    return absl::StrCat("must be in [", lo, ", ", hi, "]", note.empty() ? "" : " ", note,
                        ", got ", v);
  };
}

ValueCheck<double> Positive() {
  return [](const double& v) {
    return std::isfinite(v) && v > 0 ? std::string() : absl::StrCat("must be > 0, got ", v);
  };
}

ValueCheck<double> NonNegative() {
  return [](const double& v) {
    return std::isfinite(v) && v >= 0 ? std::string() : absl::StrCat("must be >= 0, got ", v);
  };
}

ValueCheck<double> InClosedRange(double lo, double hi) {
  return [lo, hi](const double& v) {
    if (v >= lo && v <= hi) return std::string();
    return absl::StrCat("must be in [", lo, ", ", hi, "], got ", v);
  };
}

ValueCheck<std::string> OneOf(std::vector<std::string> allowed) {
  return [allowed](const std::string& v) {
    for (const std::string& a : allowed) {
      if (v == a) return std::string();
    }
    std::string list = allowed.back();
    if (allowed.size() > 1) {
      list = absl::StrCat(
          absl::StrJoin(allowed.begin(), allowed.end() - 1, ", "), " or ", allowed.back());
    }
    return absl::StrCat("must be ", list, ", got \"", v, "\"");
  };
}

ValueCheck<std::string> NotEmpty() {
  return [](const std::string& v) { return v.empty() ? "must not be empty" : std::string(); };
}

ValueCheck<std::string> Dtype() { return OneOf({"float32", "bfloat16"}); }

ValueCheck<std::vector<int64_t>> EachAtLeast(int64_t min) {
  return [min](const std::vector<int64_t>& v) {
    for (size_t i = 0; i < v.size(); ++i) {
      if (v[i] < min) return absl::StrCat("[", i, "] must be >= ", min, ", got ", v[i]);
    }
    return std::string();
  };
}

namespace config_table_internal {
namespace {

bool IsIntegral(const Json& v) {
  if (v.is_int()) return true;
  // 1e3 is a float in YAML but an obvious integer; 2^53 bounds exact doubles.
  return v.is_number() && std::floor(v.as_double()) == v.as_double() &&
         std::fabs(v.as_double()) <= 9007199254740992.0;
}

int64_t AsInt(const Json& v) {
  return v.is_int() ? v.as_int() : static_cast<int64_t>(v.as_double());
}

}  // namespace

std::string Describe(const Json& v) {
  if (v.is_array()) return "a list";
  if (v.is_object()) return "a mapping";
  return v.Dump();
}

absl::Status Invalid(absl::string_view message) { return absl::InvalidArgumentError(message); }

absl::Status Problem(const std::string& key, const std::string& problem) {
  if (problem.empty()) return absl::OkStatus();
  return Invalid(absl::StrCat(key, problem.front() == '[' ? "" : " ", problem));
}

absl::Status Prefixed(absl::string_view prefix, const absl::Status& s) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(prefix, s.message()));
}

absl::Status Read(const Json& v, const std::string& path, const ConfigSource& s, bool* out) {
  if (!v.is_bool()) {
    return s.ErrorAt(path, absl::StrCat(path, " must be true or false, got ", Describe(v)));
  }
  *out = v.as_bool();
  return absl::OkStatus();
}

absl::Status Read(const Json& v, const std::string& path, const ConfigSource& s, int64_t* out) {
  if (!IsIntegral(v)) {
    return s.ErrorAt(path, absl::StrCat(path, " must be an integer, got ", Describe(v)));
  }
  *out = AsInt(v);
  return absl::OkStatus();
}

absl::Status Read(const Json& v, const std::string& path, const ConfigSource& s, int* out) {
  int64_t wide = 0;
  RETURN_IF_ERROR(Read(v, path, s, &wide));
  if (wide < std::numeric_limits<int>::min() || wide > std::numeric_limits<int>::max()) {
    return s.ErrorAt(path, absl::StrCat(path, " must be an integer in [",
                                        std::numeric_limits<int>::min(), ", ",
                                        std::numeric_limits<int>::max(), "], got ", wide));
  }
  *out = static_cast<int>(wide);
  return absl::OkStatus();
}

absl::Status Read(const Json& v, const std::string& path, const ConfigSource& s, double* out) {
  if (!v.is_number()) {
    return s.ErrorAt(path, absl::StrCat(path, " must be a number, got ", Describe(v)));
  }
  *out = v.as_double();
  return absl::OkStatus();
}

absl::Status Read(const Json& v, const std::string& path, const ConfigSource& s,
                  std::string* out) {
  if (!v.is_string()) {
    return s.ErrorAt(path, absl::StrCat(path, " must be a string, got ", Describe(v),
                                        v.is_number() || v.is_bool() ? " (quote it)" : ""));
  }
  *out = v.as_string();
  return absl::OkStatus();
}

absl::Status Read(const Json& v, const std::string& path, const ConfigSource& s,
                  std::vector<std::string>* out) {
  if (!v.is_array()) {
    return s.ErrorAt(path, absl::StrCat(path, " must be a list of strings, got ", Describe(v)));
  }
  std::vector<std::string> items;
  for (size_t i = 0; i < v.size(); ++i) {
    const Json& item = v.as_array()[i];
    if (!item.is_string()) {
      const std::string at = absl::StrCat(path, "[", i, "]");
      return s.ErrorAt(at, absl::StrCat(at, " must be a string, got ", Describe(item)));
    }
    items.push_back(item.as_string());
  }
  *out = std::move(items);
  return absl::OkStatus();
}

absl::Status Read(const Json& v, const std::string& path, const ConfigSource& s,
                  std::vector<int64_t>* out) {
  if (!v.is_array()) {
    return s.ErrorAt(path,
                     absl::StrCat(path, " must be a list of integers, got ", Describe(v)));
  }
  std::vector<int64_t> items;
  for (size_t i = 0; i < v.size(); ++i) {
    const Json& item = v.as_array()[i];
    if (!IsIntegral(item)) {
      const std::string at = absl::StrCat(path, "[", i, "]");
      return s.ErrorAt(at, absl::StrCat(at, " must be an integer, got ", Describe(item)));
    }
    items.push_back(AsInt(item));
  }
  *out = std::move(items);
  return absl::OkStatus();
}

Json Write(bool v) { return Json(v); }
Json Write(int v) { return Json(v); }
Json Write(int64_t v) { return Json(v); }

const char* TypeName(const bool*) { return "true or false"; }
const char* TypeName(const int*) { return "an integer"; }
const char* TypeName(const int64_t*) { return "an integer"; }
const char* TypeName(const double*) { return "a number"; }
const char* TypeName(const std::string*) { return "a string"; }
const char* TypeName(const std::vector<std::string>*) { return "a list of strings"; }
const char* TypeName(const std::vector<int64_t>*) { return "a list of integers"; }
Json Write(double v) { return Json(v); }
Json Write(const std::string& v) { return Json(v); }
Json Write(const std::vector<std::string>& v) {
  Json list = Json::MakeArray();
  for (const std::string& item : v) list.push_back(Json(item));
  return list;
}
Json Write(const std::vector<int64_t>& v) {
  Json list = Json::MakeArray();
  for (int64_t item : v) list.push_back(Json(item));
  return list;
}

absl::StatusOr<const Json*> Mapping(const Json* value, absl::string_view path,
                                    const std::vector<std::string>& known,
                                    const ConfigSource& source) {
  if (value == nullptr || value->is_null()) return nullptr;
  if (!value->is_object()) {
    return source.ErrorAt(path, absl::StrCat(path.empty() ? "the run config" : path,
                                             " must be a mapping, got ", Describe(*value)));
  }
  for (const auto& [key, unused] : value->as_object()) {
    if (std::find(known.begin(), known.end(), key) != known.end()) continue;
    const std::string full = path.empty() ? key : absl::StrCat(path, ".", key);
    return source.ErrorAt(full, absl::StrCat(full, " is not a known ",
                                             path.empty() ? "section" : "key",
                                             Suggest(key, known)));
  }
  return value;
}

absl::StatusOr<std::string> InputPath(const std::string& written, const std::string& path,
                                      bool directory, const ConfigSource& s) {
  if (written.empty()) return s.ErrorAt(path, absl::StrCat(path, " must not be empty"));
  // A path typed on the command line is the shell's, relative to the working directory.
  const bool typed = s.doc != nullptr && s.doc->OverrideOf(path) != nullptr;
  const std::string base = typed ? std::filesystem::current_path().string() : s.dir;
  const std::string resolved =
      std::filesystem::path(JoinPath(base, written)).lexically_normal().string();
  if (!s.strict) return resolved;
  const char* what = directory ? "directory" : "file";
  if (!FileExists(resolved)) {
    std::string message = absl::StrCat(path, ": ", what, " ", written, " does not exist");
    if (resolved != written) absl::StrAppend(&message, " (looked for ", resolved, ")");
    return s.ErrorAt(path, message);
  }
  if (IsDirectory(resolved) != directory) {
    return s.ErrorAt(path, absl::StrCat(path, ": ", written, " is ",
                                        directory ? "not a directory" : "a directory",
                                        ", expected a ", what));
  }
  return resolved;
}

}  // namespace config_table_internal
}  // namespace lightrl
