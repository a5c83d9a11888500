// One options struct's config keys as one table: rows of (key, member or accessor,
// one-line doc, optional check). The table binds a mapping of a parsed config to the
// struct (types checked, unknown keys rejected with a did-you-mean, errors at
// "file:line"), writes the struct back as a mapping (the resolved config), runs the rows'
// checks (the struct's Validate()) and lists the keys for the docs. It knows no
// particular struct and no YAML syntax: it reads the Json tree and the source lines of a
// YamlDocument, whichever parser filled it.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/json.h"
#include "common/yaml.h"

namespace lightrl {

// Where the tree being bound came from.
struct ConfigSource {
  const YamlDocument* doc = nullptr;
  // Absolute directory that relative input paths are resolved against.
  std::string dir;
  // On: input paths must exist, required keys must be given and output directories
  // must be creatable (`lightrl run`). Off: the tree is only bound and type-checked
  // (`lightrl plan` reads a run config whose files live on another machine).
  bool strict = true;

  // "source:line: what", at the line of `path` or of its nearest ancestor.
  absl::Status ErrorAt(absl::string_view path, absl::string_view what) const;
};

// Sets one key of the parsed file from the command line: `assignment` is "KEY=VALUE"
// (`lightrl run --set rollout.group_size=4`), KEY a dotted path, VALUE read as YAML (a
// scalar, or a flow list or mapping: "[a, b]", "{x: 1}"; empty for null, which keeps the
// default). The value replaces the one at KEY, creating the mappings above it; the binder
// then checks it like any key, and its errors name "--set KEY=VALUE" (doc.overrides). A
// relative input path given this way is resolved against the working directory.
absl::Status ApplyConfigOverride(YamlDocument& doc, absl::string_view assignment);

// One key of an options struct.
template <typename Options>
struct ConfigField {
  std::string key;
  // One line for the docs and the key lists.
  std::string doc;
  // What a value must be, for usage text ("an integer", "a list of strings"); empty for
  // rows that are not one value of a plain type.
  std::string type;
  // Reads the key's value into `options`; `value` is nullptr when the key is absent or
  // null (YAML "key:" with nothing after it), which keeps the default. `path` is the
  // key's full path ("rollout.group_size"), which errors name.
  std::function<absl::Status(const Json* value, const std::string& path,
                             const ConfigSource& source, Options& options)>
      bind;
  // The value as the resolved config writes it; unset for keys that are not written
  // back (older spellings of another key).
  std::function<Json(const Options&)> dump;
  // What is wrong with the value; the message starts with `key` (the key relative to the
  // struct, e.g. "overlong.soft_buffer"). Unset: any value of the type is fine.
  std::function<absl::Status(const Options&, const std::string& key)> check;
  // Keys below this one (a nested mapping, or each entry of a map of structs as
  // "NAME.key"), for the key lists.
  std::vector<std::string> subkeys;
};

template <typename Options>
using ConfigTable = std::vector<ConfigField<Options>>;

// A value check: the problem as it follows the key ("must be >= 2, got 1"; an element's
// as "[3] must be ..."), empty when there is none.
template <typename T>
using ValueCheck = std::function<std::string(const T&)>;

ValueCheck<int64_t> AtLeast(int64_t min);
// In [lo, hi]; `note` follows the range ("[1, 1024] (MiB of one Score request)").
ValueCheck<int64_t> IntInRange(int64_t lo, int64_t hi, std::string note = "");
ValueCheck<double> Positive();     // finite and > 0
ValueCheck<double> NonNegative();  // finite and >= 0
ValueCheck<double> InClosedRange(double lo, double hi);
ValueCheck<std::string> OneOf(std::vector<std::string> allowed);  // "a, b or c"
ValueCheck<std::string> NotEmpty();
ValueCheck<std::string> Dtype();  // float32 or bfloat16
ValueCheck<std::vector<int64_t>> EachAtLeast(int64_t min);

namespace config_table_internal {

std::string Describe(const Json& v);  // as messages quote a value
absl::Status Invalid(absl::string_view message);
// `key` followed by `problem` ("[i] ..." joins without a space); OK for no problem.
absl::Status Problem(const std::string& key, const std::string& problem);
absl::Status Prefixed(absl::string_view prefix, const absl::Status& s);

absl::Status Read(const Json& v, const std::string& path, const ConfigSource& s, bool* out);
absl::Status Read(const Json& v, const std::string& path, const ConfigSource& s, int* out);
absl::Status Read(const Json& v, const std::string& path, const ConfigSource& s, int64_t* out);
absl::Status Read(const Json& v, const std::string& path, const ConfigSource& s, double* out);
absl::Status Read(const Json& v, const std::string& path, const ConfigSource& s,
                  std::string* out);
absl::Status Read(const Json& v, const std::string& path, const ConfigSource& s,
                  std::vector<std::string>* out);
absl::Status Read(const Json& v, const std::string& path, const ConfigSource& s,
                  std::vector<int64_t>* out);
Json Write(bool v);
Json Write(int v);
Json Write(int64_t v);
Json Write(double v);
Json Write(const std::string& v);
Json Write(const std::vector<std::string>& v);
Json Write(const std::vector<int64_t>& v);
// The type's name as usage text gives it ("true or false", "an integer", ...).
const char* TypeName(const bool*);
const char* TypeName(const int*);
const char* TypeName(const int64_t*);
const char* TypeName(const double*);
const char* TypeName(const std::string*);
const char* TypeName(const std::vector<std::string>*);
const char* TypeName(const std::vector<int64_t>*);

// The mapping at `path` with its unknown keys rejected; nullptr when absent or null.
absl::StatusOr<const Json*> Mapping(const Json* value, absl::string_view path,
                                    const std::vector<std::string>& known,
                                    const ConfigSource& source);
// An input path written at `path`: resolved against the source's directory, and in
// strict mode required to exist (a directory when `directory`, else a file).
absl::StatusOr<std::string> InputPath(const std::string& written, const std::string& path,
                                      bool directory, const ConfigSource& source);

}  // namespace config_table_internal

// Binds the mapping `value` (the section at `path`; nullptr when absent) to `out` row by
// row, in the table's order.
template <typename Options>
absl::Status BindTable(const ConfigTable<Options>& table, const Json* value,
                       absl::string_view path, const ConfigSource& source, Options& out) {
  std::vector<std::string> known;
  for (const ConfigField<Options>& f : table) known.push_back(f.key);
  absl::StatusOr<const Json*> mapping =
      config_table_internal::Mapping(value, path, known, source);
  if (!mapping.ok()) return mapping.status();
  for (const ConfigField<Options>& f : table) {
    const Json* v = *mapping == nullptr ? nullptr : (*mapping)->find(f.key);
    if (v != nullptr && v->is_null()) v = nullptr;
    const std::string full = path.empty() ? f.key : absl::StrCat(path, ".", f.key);
    absl::Status s = f.bind(v, full, source, out);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

// The struct as a mapping, in the table's order.
template <typename Options>
Json DumpTable(const ConfigTable<Options>& table, const Options& options) {
  Json o = Json::MakeObject();
  for (const ConfigField<Options>& f : table) {
    if (f.dump) o.set(f.key, f.dump(options));
  }
  return o;
}

// The rows' checks in order; the first problem, its message starting with prefix + key.
template <typename Options>
absl::Status CheckTable(const ConfigTable<Options>& table, const Options& options,
                        const std::string& prefix = "") {
  for (const ConfigField<Options>& f : table) {
    if (!f.check) continue;
    absl::Status s = f.check(options, prefix + f.key);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

// Every key, nested ones included, each prefixed with `prefix` ("rollout.").
template <typename Options>
std::vector<std::string> TableKeys(const ConfigTable<Options>& table,
                                   const std::string& prefix = "") {
  std::vector<std::string> keys;
  for (const ConfigField<Options>& f : table) {
    keys.push_back(prefix + f.key);
    for (const std::string& sub : f.subkeys) keys.push_back(absl::StrCat(prefix, f.key, ".", sub));
  }
  return keys;
}

// --- rows ---

// A member of a supported type (bool, int64_t, double, std::string and lists of strings
// or integers). `Base` is Options or a base of it.
template <typename Options, typename Base, typename T>
ConfigField<Options> Field(std::string key, T Base::*member, std::string doc,
                           ValueCheck<T> check = nullptr) {
  ConfigField<Options> f;
  f.key = std::move(key);
  f.doc = std::move(doc);
  f.type = config_table_internal::TypeName(static_cast<const T*>(nullptr));
  f.bind = [member](const Json* v, const std::string& path, const ConfigSource& s,
                    Options& o) {
    if (v == nullptr) return absl::OkStatus();
    return config_table_internal::Read(*v, path, s, &(o.*member));
  };
  f.dump = [member](const Options& o) { return config_table_internal::Write(o.*member); };
  if (check) {
    f.check = [member, check](const Options& o, const std::string& key) {
      return config_table_internal::Problem(key, check(o.*member));
    };
  }
  return f;
}

// A member of a member struct: (options.*outer).*member.
template <typename Options, typename Base, typename Inner, typename T>
ConfigField<Options> Field(std::string key, Inner Base::*outer, T Inner::*member,
                           std::string doc, ValueCheck<T> check = nullptr) {
  ConfigField<Options> f;
  f.key = std::move(key);
  f.doc = std::move(doc);
  f.type = config_table_internal::TypeName(static_cast<const T*>(nullptr));
  f.bind = [outer, member](const Json* v, const std::string& path, const ConfigSource& s,
                           Options& o) {
    if (v == nullptr) return absl::OkStatus();
    return config_table_internal::Read(*v, path, s, &((o.*outer).*member));
  };
  f.dump = [outer, member](const Options& o) {
    return config_table_internal::Write((o.*outer).*member);
  };
  if (check) {
    f.check = [outer, member, check](const Options& o, const std::string& key) {
      return config_table_internal::Problem(key, check((o.*outer).*member));
    };
  }
  return f;
}

// `row`, which must be given (in strict mode): "run.steps is required".
template <typename Options>
ConfigField<Options> Required(ConfigField<Options> row) {
  auto bind = std::move(row.bind);
  row.bind = [bind](const Json* v, const std::string& path, const ConfigSource& s,
                    Options& o) {
    if (v == nullptr && s.strict) return s.ErrorAt(path, absl::StrCat(path, " is required"));
    return bind(v, path, s, o);
  };
  return row;
}

// An input file or directory: a string resolved against the config's directory and
// stored absolute; in the resolved config, null when unset.
template <typename Options, typename Base>
ConfigField<Options> InputPathField(std::string key, std::string Base::*member, std::string doc,
                                    bool directory = false) {
  ConfigField<Options> f;
  f.key = std::move(key);
  f.doc = std::move(doc);
  f.bind = [member, directory](const Json* v, const std::string& path, const ConfigSource& s,
                               Options& o) {
    if (v == nullptr) return absl::OkStatus();
    std::string written;
    absl::Status read = config_table_internal::Read(*v, path, s, &written);
    if (!read.ok()) return read;
    absl::StatusOr<std::string> resolved =
        config_table_internal::InputPath(written, path, directory, s);
    if (!resolved.ok()) return resolved.status();
    o.*member = *std::move(resolved);
    return absl::OkStatus();
  };
  f.dump = [member](const Options& o) {
    return (o.*member).empty() ? Json() : Json(o.*member);
  };
  return f;
}

// A nested mapping whose keys are more members of the same struct (algorithm.overlong).
template <typename Options>
ConfigField<Options> Group(std::string key, std::string doc, ConfigTable<Options> rows) {
  ConfigField<Options> f;
  f.key = std::move(key);
  f.doc = std::move(doc);
  f.subkeys = TableKeys(rows);
  auto shared = std::make_shared<const ConfigTable<Options>>(std::move(rows));
  f.bind = [shared](const Json* v, const std::string& path, const ConfigSource& s,
                    Options& o) { return BindTable(*shared, v, path, s, o); };
  f.dump = [shared](const Options& o) { return DumpTable(*shared, o); };
  f.check = [shared](const Options& o, const std::string& key) {
    return CheckTable(*shared, o, key + ".");
  };
  return f;
}

// A member struct with its own table, as a nested mapping; checked by its owner.
template <typename Options, typename Base, typename Inner>
ConfigField<Options> Nested(std::string key, Inner Base::*member, std::string doc) {
  ConfigField<Options> f;
  f.key = std::move(key);
  f.doc = std::move(doc);
  f.subkeys = TableKeys(Inner::Table());
  f.bind = [member](const Json* v, const std::string& path, const ConfigSource& s,
                    Options& o) { return BindTable(Inner::Table(), v, path, s, o.*member); };
  f.dump = [member](const Options& o) { return DumpTable(Inner::Table(), o.*member); };
  return f;
}

// A member struct with its own table and Validate() (a section of the run config).
template <typename Options, typename Base, typename Inner>
ConfigField<Options> Section(std::string key, Inner Base::*member, std::string doc) {
  ConfigField<Options> f = Nested<Options>(std::move(key), member, std::move(doc));
  f.check = [member](const Options& o, const std::string& key) {
    return config_table_internal::Prefixed(key + ".", (o.*member).Validate());
  };
  return f;
}

// A mapping of names to structs with their own table (reward.servers.NAME); `what`
// names an entry in the type error ("server").
template <typename Options, typename Base, typename Entry>
ConfigField<Options> MapOf(std::string key, std::map<std::string, Entry> Base::*member,
                           std::string doc, std::string what) {
  ConfigField<Options> f;
  f.key = std::move(key);
  f.doc = std::move(doc);
  for (const std::string& k : TableKeys(Entry::Table())) f.subkeys.push_back("NAME." + k);
  f.bind = [member, what](const Json* v, const std::string& path, const ConfigSource& s,
                          Options& o) {
    if (v == nullptr) return absl::OkStatus();
    if (!v->is_object()) {
      return s.ErrorAt(path, absl::StrCat(path, " must be a mapping of name to ", what,
                                          ", got ", config_table_internal::Describe(*v)));
    }
    for (const auto& [name, value] : v->as_object()) {
      Entry entry;
      absl::Status bound =
          BindTable(Entry::Table(), &value, absl::StrCat(path, ".", name), s, entry);
      if (!bound.ok()) return bound;
      (o.*member)[name] = std::move(entry);
    }
    return absl::OkStatus();
  };
  f.dump = [member](const Options& o) {
    Json all = Json::MakeObject();
    for (const auto& [name, entry] : o.*member) all.set(name, DumpTable(Entry::Table(), entry));
    return all;
  };
  f.check = [member](const Options& o, const std::string& key) {
    for (const auto& [name, entry] : o.*member) {
      absl::Status s = CheckTable(Entry::Table(), entry, absl::StrCat(key, ".", name, "."));
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  };
  return f;
}

// The rows of a base struct's table as rows of `Options`, which derives from it (the run
// config's distributed section embeds DataParallelOptions).
template <typename Options, typename Base>
ConfigTable<Options> Embedded(const ConfigTable<Base>& rows) {
  ConfigTable<Options> out;
  for (const ConfigField<Base>& r : rows) {
    ConfigField<Options> f;
    f.key = r.key;
    f.doc = r.doc;
    f.type = r.type;
    f.subkeys = r.subkeys;
    f.bind = [bind = r.bind](const Json* v, const std::string& path, const ConfigSource& s,
                             Options& o) { return bind(v, path, s, static_cast<Base&>(o)); };
    if (r.dump) {
      f.dump = [dump = r.dump](const Options& o) { return dump(static_cast<const Base&>(o)); };
    }
    if (r.check) {
      f.check = [check = r.check](const Options& o, const std::string& key) {
        return check(static_cast<const Base&>(o), key);
      };
    }
    out.push_back(std::move(f));
  }
  return out;
}

// A key the struct does not hold (read by another command); accepted and not written.
template <typename Options>
ConfigField<Options> Ignored(std::string key, std::string doc) {
  ConfigField<Options> f;
  f.key = std::move(key);
  f.doc = std::move(doc);
  f.bind = [](const Json*, const std::string&, const ConfigSource&, Options&) {
    return absl::OkStatus();
  };
  return f;
}

}  // namespace lightrl
