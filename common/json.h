// A JSON value with a strict parser and a compact writer: config.json, safetensors
// headers, tokenizer.json, JSONL datasets. Objects keep their key order so a line read
// and written back keeps its shape. Owns no files; callers name the source in errors.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace lightrl {

class Json {
 public:
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };
  using Array = std::vector<Json>;
  using Object = std::vector<std::pair<std::string, Json>>;

  Json() = default;
  Json(std::nullptr_t) {}
  Json(bool b) : type_(Type::kBool), bool_(b) {}
  Json(int v) : Json(static_cast<int64_t>(v)) {}
  Json(int64_t v) : type_(Type::kNumber), num_(static_cast<double>(v)), int_(v), is_int_(true) {}
  Json(uint64_t v) : Json(static_cast<int64_t>(v)) {}
  Json(double v) : type_(Type::kNumber), num_(v) {}
  Json(const char* s) : type_(Type::kString), str_(s) {}
  Json(std::string s) : type_(Type::kString), str_(std::move(s)) {}
  Json(absl::string_view s) : type_(Type::kString), str_(s) {}
  Json(Array a) : type_(Type::kArray), arr_(std::move(a)) {}
  Json(Object o) : type_(Type::kObject), obj_(std::move(o)) {}
  static Json MakeArray() { return Json(Array{}); }
  static Json MakeObject() { return Json(Object{}); }

  // Parses one JSON text; trailing non-space is an error. Errors carry line:column.
  static absl::StatusOr<Json> Parse(absl::string_view text);

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::kNull; }
  bool is_bool() const { return type_ == Type::kBool; }
  bool is_number() const { return type_ == Type::kNumber; }
  // A number written without fraction or exponent that fits int64.
  bool is_int() const { return type_ == Type::kNumber && is_int_; }
  bool is_string() const { return type_ == Type::kString; }
  bool is_array() const { return type_ == Type::kArray; }
  bool is_object() const { return type_ == Type::kObject; }
  static const char* TypeName(Type t);
  const char* type_name() const { return TypeName(type_); }

  bool as_bool() const { return bool_; }
  double as_double() const { return num_; }
  int64_t as_int() const { return is_int_ ? int_ : static_cast<int64_t>(num_); }
  const std::string& as_string() const { return str_; }
  const Array& as_array() const { return arr_; }
  Array& as_array() { return arr_; }
  const Object& as_object() const { return obj_; }
  Object& as_object() { return obj_; }

  // Object access. find() returns nullptr when absent (or when this is not an object).
  const Json* find(absl::string_view key) const;
  bool contains(absl::string_view key) const { return find(key) != nullptr; }
  // Sets or replaces a key, keeping the position of an existing one.
  void set(absl::string_view key, Json value);
  void push_back(Json value) { arr_.push_back(std::move(value)); }
  size_t size() const { return type_ == Type::kArray ? arr_.size() : obj_.size(); }

  // Compact JSON (no spaces); indent > 0 pretty-prints.
  std::string Dump(int indent = 0) const;

 private:
  void DumpTo(std::string& out, int indent, int depth) const;

  Type type_ = Type::kNull;
  bool bool_ = false;
  double num_ = 0;
  int64_t int_ = 0;
  bool is_int_ = false;
  std::string str_;
  Array arr_;
  Object obj_;
};

// Appends `s` to `out` as a JSON string literal, quotes included.
void AppendJsonString(std::string& out, absl::string_view s);
// Shortest text that reads back as the same float (for float32 log-probabilities).
std::string FormatFloat(float v);

}  // namespace lightrl
