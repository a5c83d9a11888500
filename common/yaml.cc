#include "common/yaml.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <set>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "yaml-cpp/depthguard.h"
#include "yaml-cpp/eventhandler.h"
#include "yaml-cpp/exceptions.h"
#include "yaml-cpp/mark.h"
#include "yaml-cpp/parser.h"

namespace lightrl {
namespace {

// Deep enough for any config; bounds the nesting of hostile input.
constexpr int kMaxDepth = 200;

bool IsBlank(char c) { return c == ' ' || c == '\t'; }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsHexDigit(char c) {
  return IsDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

bool IsNullWord(absl::string_view s) {
  return s == "~" || s == "null" || s == "Null" || s == "NULL";
}

// YAML 1.2 core-schema float: [-+]? (. digits | digits (. digits*)?) ([eE] [-+]? digits)?
bool LooksLikeFloat(absl::string_view s) {
  size_t i = 0;
  if (i < s.size() && (s[i] == '-' || s[i] == '+')) ++i;
  size_t int_digits = 0;
  while (i < s.size() && IsDigit(s[i])) ++i, ++int_digits;
  size_t frac_digits = 0;
  bool dot = false;
  if (i < s.size() && s[i] == '.') {
    dot = true;
    ++i;
    while (i < s.size() && IsDigit(s[i])) ++i, ++frac_digits;
  }
  if (int_digits == 0 && frac_digits == 0) return false;
  if (int_digits == 0 && !dot) return false;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < s.size() && (s[i] == '-' || s[i] == '+')) ++i;
    size_t exp_digits = 0;
    while (i < s.size() && IsDigit(s[i])) ++i, ++exp_digits;
    if (exp_digits == 0) return false;
  }
  return i == s.size();
}

bool IsSpecialFloat(absl::string_view s) {
  if (!s.empty() && (s[0] == '-' || s[0] == '+')) s.remove_prefix(1);
  return s == ".inf" || s == ".Inf" || s == ".INF" || s == ".nan" || s == ".NaN" ||
         s == ".NAN";
}

// Resolves a plain scalar by the YAML 1.2 core schema; an error is a message only (the
// caller adds the position).
absl::StatusOr<Json> ResolvePlain(absl::string_view s) {
  if (s.empty() || IsNullWord(s)) return Json();
  if (s == "true" || s == "True" || s == "TRUE") return Json(true);
  if (s == "false" || s == "False" || s == "FALSE") return Json(false);
  if (IsSpecialFloat(s)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "infinite and NaN numbers (", s, ") are not supported; quote it for a string"));
  }
  const std::string str(s);
  // Integers: decimal, 0x hex, 0o octal.
  int base = 0;
  size_t digits_at = 0;
  {
    size_t i = (s[0] == '-' || s[0] == '+') ? 1 : 0;
    if (s.size() > i + 2 && s[i] == '0' && s[i + 1] == 'x' && i == 0) {
      bool all = true;
      for (size_t j = i + 2; j < s.size(); ++j) all = all && IsHexDigit(s[j]);
      if (all) {
        base = 16;
        digits_at = 2;
      }
    } else if (s.size() > i + 2 && s[i] == '0' && s[i + 1] == 'o' && i == 0) {
      bool all = true;
      for (size_t j = i + 2; j < s.size(); ++j) all = all && s[j] >= '0' && s[j] <= '7';
      if (all) {
        base = 8;
        digits_at = 2;
      }
    } else if (s.size() > i) {
      bool all = true;
      for (size_t j = i; j < s.size(); ++j) all = all && IsDigit(s[j]);
      if (all) base = 10;
    }
  }
  if (base != 0) {
    errno = 0;
    char* end = nullptr;
    long long v = std::strtoll(str.c_str() + digits_at, &end, base);
    if (errno == ERANGE) {
      return absl::InvalidArgumentError(
          absl::StrCat("integer ", s, " does not fit in 64 bits"));
    }
    return Json(static_cast<int64_t>(v));
  }
  if (LooksLikeFloat(s)) {
    double v = std::strtod(str.c_str(), nullptr);
    if (!std::isfinite(v)) {
      return absl::InvalidArgumentError(absl::StrCat("number ", s, " is out of range"));
    }
    return Json(v);
  }
  return Json(str);
}

// --- reader: yaml-cpp's events into a Json tree with the line of every key and item ---

// Configs are a few KiB; these bound what a hostile file can make the parser hold.
constexpr size_t kMaxBytes = size_t{16} << 20;
// Values and string bytes after expanding aliases (a "billion laughs" file is a few lines).
constexpr int64_t kMaxValues = int64_t{1} << 20;
constexpr int64_t kMaxExpandedBytes = int64_t{64} << 20;

constexpr char kStrTag[] = "tag:yaml.org,2002:str";

// Thrown from the event handler to stop yaml-cpp's parser; caught in ParseYaml.
struct BuildError {
  YAML::Mark mark;
  std::string message;
};

// Values and string bytes in `v`, for the alias budget.
void Measure(const Json& v, int64_t& values, int64_t& bytes) {
  ++values;
  if (v.is_string()) bytes += static_cast<int64_t>(v.as_string().size());
  if (v.is_array()) {
    for (const Json& c : v.as_array()) Measure(c, values, bytes);
  } else if (v.is_object()) {
    for (const auto& [k, c] : v.as_object()) {
      bytes += static_cast<int64_t>(k.size());
      Measure(c, values, bytes);
    }
  }
}

class TreeBuilder final : public YAML::EventHandler {
 public:
  TreeBuilder(absl::string_view text, YamlDocument& doc) : doc_(doc), text_(text) {
    size_t offset = 0;
    while (true) {
      line_offsets_.push_back(offset);
      const size_t nl = text.find('\n');
      absl::string_view line = text.substr(0, nl);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      lines_.push_back(line);
      if (nl == absl::string_view::npos) break;
      text.remove_prefix(nl + 1);
      offset += nl + 1;
    }
  }

  void OnDocumentStart(const YAML::Mark&) override {}
  void OnDocumentEnd() override {}

  void OnNull(const YAML::Mark& mark, YAML::anchor_t anchor) override {
    if (InKeyPosition()) Fail(mark, "empty mapping key");
    Count(mark, 1, 0);
    Value(mark, Json(), anchor, /*null_item=*/true);
  }

  void OnAlias(const YAML::Mark& mark, YAML::anchor_t anchor) override {
    if (InKeyPosition()) Fail(mark, "an alias as a mapping key is not supported");
    if (anchor >= anchors_.size() || !anchors_[anchor].done) {
      Fail(mark, "an alias to a node that contains it (a node cannot include itself)");
    }
    const Anchored& a = anchors_[anchor];
    Count(mark, a.values, a.bytes);
    Value(mark, a.value, YAML::NullAnchor, /*null_item=*/false);
  }

  void OnScalar(const YAML::Mark& mark, const std::string& tag, YAML::anchor_t anchor,
                const std::string& value) override {
    if (tag != "?" && tag != "!" && tag != kStrTag) {
      Fail(mark, absl::StrCat("tags (", ShortTag(tag), ") are not supported"));
    }
    Count(mark, 1, static_cast<int64_t>(value.size()));
    if (InKeyPosition()) {
      Key(mark, value, /*merge=*/tag == "?" && value == "<<");
      if (anchor != YAML::NullAnchor) Anchor(anchor, Json(value));
      return;
    }
    if (tag == "!") CheckQuoteClosed(mark);
    Json v;
    if (tag == "?") {
      absl::StatusOr<Json> resolved = ResolvePlain(value);
      if (!resolved.ok()) Fail(mark, std::string(resolved.status().message()));
      v = *std::move(resolved);
    } else {
      v = Json(value);
    }
    Value(mark, std::move(v), anchor, /*null_item=*/false);
  }

  void OnSequenceStart(const YAML::Mark& mark, const std::string& tag, YAML::anchor_t anchor,
                       YAML::EmitterStyle::value) override {
    Open(mark, tag, anchor, Json::MakeArray());
  }
  void OnSequenceEnd() override { Close(); }

  void OnMapStart(const YAML::Mark& mark, const std::string& tag, YAML::anchor_t anchor,
                  YAML::EmitterStyle::value) override {
    Open(mark, tag, anchor, Json::MakeObject());
  }
  void OnMapEnd() override { Close(); }

 private:
  struct Frame {
    Json value;                 // the collection being built
    std::string path;           // its path in YamlDocument::lines
    YAML::Mark mark;            // where it starts
    YAML::anchor_t anchor = YAML::NullAnchor;
    // Mappings: the key waiting for its value, and every key's first line.
    bool has_key = false;
    bool merge = false;         // the waiting key is "<<"
    std::string key;
    int key_line = 0;
    std::map<std::string, int> key_lines;
    std::set<std::string> merged;  // keys a "<<" brought in, which later keys override
  };
  struct Anchored {
    bool done = false;
    Json value;
    int64_t values = 0;
    int64_t bytes = 0;
  };

  [[noreturn]] static void Fail(const YAML::Mark& mark, std::string message) {
    throw BuildError{mark, std::move(message)};
  }

  static std::string ShortTag(const std::string& tag) {
    constexpr absl::string_view kCore = "tag:yaml.org,2002:";
    if (absl::StartsWith(tag, kCore)) return absl::StrCat("!!", tag.substr(kCore.size()));
    return tag;
  }

  bool InKeyPosition() const {
    return !stack_.empty() && stack_.back().value.is_object() && !stack_.back().has_key;
  }

  void Count(const YAML::Mark& mark, int64_t values, int64_t bytes) {
    values_ += values;
    bytes_ += bytes;
    if (values_ > kMaxValues || bytes_ > kMaxExpandedBytes) {
      Fail(mark, absl::StrCat("the document expands to more than ", kMaxValues,
                              " values or ", kMaxExpandedBytes >> 20,
                              " MiB of text (aliases repeat what they name)"));
    }
  }

  // yaml-cpp 0.7 ends a quoted scalar left open at the end of the file there, taking in
  // every line after the quote; an unclosed quote is an error.
  void CheckQuoteClosed(const YAML::Mark& mark) const {
    if (mark.line < 0 || static_cast<size_t>(mark.line) >= line_offsets_.size()) return;
    size_t i = line_offsets_[mark.line] + static_cast<size_t>(std::max(mark.column, 0));
    if (i >= text_.size() || (text_[i] != '"' && text_[i] != '\'')) return;
    const char quote = text_[i];
    for (++i; i < text_.size(); ++i) {
      if (quote == '"' && text_[i] == '\\') {
        ++i;
      } else if (text_[i] == quote) {
        if (quote == '\'' && i + 1 < text_.size() && text_[i + 1] == '\'') {
          ++i;
        } else {
          return;
        }
      }
    }
    Fail(mark, "unterminated quoted string");
  }

  // 0-based line `i` of the text, empty past the end.
  absl::string_view LineText(int i) const {
    return i >= 0 && static_cast<size_t>(i) < lines_.size() ? lines_[i] : absl::string_view();
  }

  // The 1-based line of the '-' that introduces a block sequence item whose node yaml-cpp
  // marks at `mark` (the item's content, which may sit on a later line, or for an empty
  // item the next token); the mark's own line for flow items.
  int ItemLine(const YAML::Mark& mark) const {
    if (mark.line < 0) return 0;
    int line = mark.line;
    absl::string_view t = LineText(line);
    t = t.substr(0, std::min<size_t>(std::max(mark.column, 0), t.size()));
    while (true) {
      while (!t.empty() && IsBlank(t.back())) t.remove_suffix(1);
      if (!t.empty()) {
        const bool dash = t.back() == '-' && (t.size() == 1 || IsBlank(t[t.size() - 2]));
        return (dash ? line : mark.line) + 1;
      }
      if (--line < 0) return mark.line + 1;
      t = LineText(line);
      for (size_t i = 0; i < t.size(); ++i) {
        if (t[i] == '#' && (i == 0 || IsBlank(t[i - 1]))) {
          t = t.substr(0, i);
          break;
        }
      }
    }
  }

  // A mapping key (the scalar `text` at `mark`) of the mapping on top of the stack.
  void Key(const YAML::Mark& mark, const std::string& text, bool merge) {
    Frame& f = stack_.back();
    const int line = mark.line + 1;
    f.has_key = true;
    f.merge = merge;
    f.key = text;
    f.key_line = line;
    if (merge) return;
    if (auto it = f.key_lines.find(text); it != f.key_lines.end()) {
      Fail(mark, absl::StrCat("duplicate key \"", text, "\" (first defined on line ",
                              it->second, ")"));
    }
    f.key_lines[text] = line;
    f.merged.erase(text);
    doc_.lines[ChildPath(f, text)] = line;
  }

  static std::string ChildPath(const Frame& f, const std::string& key) {
    return f.path.empty() ? key : absl::StrCat(f.path, ".", key);
  }

  // The path (and in `lines`, the line) of a value starting at `mark` in the current
  // collection; "" for the root.
  std::string PlaceValue(const YAML::Mark& mark, bool null_item) {
    if (stack_.empty()) {
      if (!null_item) doc_.lines[""] = mark.line + 1;
      return "";
    }
    Frame& f = stack_.back();
    if (f.value.is_object()) return f.merge ? f.path : ChildPath(f, f.key);
    const std::string path = absl::StrCat(f.path, "[", f.value.size(), "]");
    const int line = ItemLine(mark);
    if (line > 0) doc_.lines[path] = line;
    return path;
  }

  void Anchor(YAML::anchor_t anchor, const Json& value) {
    if (anchors_.size() <= anchor) anchors_.resize(anchor + 1);
    Anchored& a = anchors_[anchor];
    a.value = value;
    Measure(value, a.values, a.bytes);
    a.done = true;
  }

  // A complete value at `mark`: its line recorded, then attached as the root, an item of
  // the sequence on top, or the value of the waiting key of the mapping on top.
  void Value(const YAML::Mark& mark, Json value, YAML::anchor_t anchor, bool null_item) {
    PlaceValue(mark, null_item);
    if (anchor != YAML::NullAnchor) Anchor(anchor, value);
    Attach(mark, std::move(value));
  }

  void Attach(const YAML::Mark& mark, Json value) {
    if (stack_.empty()) {
      doc_.root = std::move(value);
      return;
    }
    Frame& f = stack_.back();
    if (f.value.is_array()) {
      f.value.push_back(std::move(value));
      return;
    }
    f.has_key = false;
    if (!f.merge) {
      f.value.set(f.key, std::move(value));
      return;
    }
    // "<<: *defaults" (or a list of them): their keys, unless given here already; keys
    // written later in this mapping override them.
    std::vector<const Json*> sources;
    if (value.is_object()) {
      sources.push_back(&value);
    } else if (value.is_array()) {
      for (const Json& item : value.as_array()) sources.push_back(&item);
    }
    for (const Json* s : sources) {
      if (!s->is_object()) sources.clear();
    }
    if (sources.empty()) {
      Fail(mark, "a merge key '<<' takes a mapping or a list of mappings");
    }
    for (const Json* s : sources) {
      for (const auto& [k, v] : s->as_object()) {
        if (f.value.contains(k)) continue;
        f.value.set(k, v);
        f.merged.insert(k);
        doc_.lines.emplace(ChildPath(f, k), f.key_line);
      }
    }
  }

  void Open(const YAML::Mark& mark, const std::string& tag, YAML::anchor_t anchor,
            Json empty) {
    if (InKeyPosition()) Fail(mark, "collection keys are not supported");
    if (tag != "?" && tag != "!" && !tag.empty()) {
      Fail(mark, absl::StrCat("tags (", ShortTag(tag), ") are not supported"));
    }
    if (static_cast<int>(stack_.size()) >= kMaxDepth) Fail(mark, "nesting too deep");
    Count(mark, 1, 0);
    Frame f;
    f.path = PlaceValue(mark, /*null_item=*/false);
    f.mark = mark;
    f.anchor = anchor;
    f.value = std::move(empty);
    stack_.push_back(std::move(f));
  }

  void Close() {
    Frame f = std::move(stack_.back());
    stack_.pop_back();
    if (f.anchor != YAML::NullAnchor) Anchor(f.anchor, f.value);
    Attach(f.mark, std::move(f.value));
  }

  YamlDocument& doc_;
  absl::string_view text_;
  std::vector<size_t> line_offsets_;
  std::vector<absl::string_view> lines_;
  std::vector<Frame> stack_;
  std::vector<Anchored> anchors_;
  int64_t values_ = 0;
  int64_t bytes_ = 0;
};

// Stops at a second document. yaml-cpp also starts one at content left over after the
// top-level value ("- a" then "b: 1"), which is an indentation mistake more often.
class SecondDocument final : public YAML::EventHandler {
 public:
  explicit SecondDocument(absl::string_view text) : text_(text) {}
  void OnDocumentStart(const YAML::Mark& mark) override {
    absl::string_view line = text_;
    for (int i = 0; i < mark.line && !line.empty(); ++i) {
      const size_t nl = line.find('\n');
      line = nl == absl::string_view::npos ? absl::string_view() : line.substr(nl + 1);
    }
    if (absl::StartsWith(line, "---") || absl::StartsWith(line, "...") ||
        absl::StartsWith(line, "%")) {
      throw BuildError{mark, "multiple documents are not supported"};
    }
    throw BuildError{mark, "unexpected content after the document's top-level value "
                           "(check the indentation)"};
  }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}

 private:
  absl::string_view text_;
};

// yaml-cpp's terse syntax messages, with what usually causes them in a config.
std::string Explain(const std::string& message) {
  static const std::pair<const char*, const char*> kHints[] = {
      {"illegal map value", "a 'key: value' where no mapping can start: quote a value that "
                            "holds ': ', and start a nested mapping on the next line"},
      {"illegal block entry", "a '- ' list item where no list can start: start the list on "
                              "the line after its key"},
      {"end of map not found", "check the indentation"},
      {"end of sequence not found", "check the indentation"},
      {"end of sequence flow not found", "a '[' is not closed, or its items lack ','"},
      {"end of map flow not found", "a '{' is not closed, or its entries lack ','"},
      {"unknown token", "a character that cannot start a value here, such as '@', '`', or "
                         "'?' inside [...] or {...}: quote the value"},
  };
  for (const auto& [what, hint] : kHints) {
    if (message == what) return absl::StrCat(message, " (", hint, ")");
  }
  return message;
}

absl::Status ErrorAt(const std::string& source, const YAML::Mark& mark,
                     absl::string_view what) {
  if (mark.line < 0) return absl::InvalidArgumentError(absl::StrCat(source, ": ", what));
  return absl::InvalidArgumentError(
      absl::StrCat(source, ":", mark.line + 1, ":", mark.column + 1, ": ", what));
}

// --- writer ---

std::string FormatDoubleForYaml(double v) {
  if (std::isnan(v)) return ".nan";
  if (std::isinf(v)) return v > 0 ? ".inf" : "-.inf";
  char buf[32];
  // Whole numbers read better as "30.0" than as the shortest form "3e+01".
  if (std::fabs(v) < 1e15 && std::floor(v) == v) {
    std::snprintf(buf, sizeof(buf), "%.1f", v);
    return buf;
  }
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  std::string s(buf);
  // Without '.', 'e' the text would read back as an integer.
  if (s.find_first_of(".e") == std::string::npos) s += ".0";
  return s;
}

bool IsPlainSafe(absl::string_view s) {
  if (s.empty()) return false;
  const char first = s[0];
  const bool letter = (first >= 'a' && first <= 'z') || (first >= 'A' && first <= 'Z');
  if (!letter && first != '_' && first != '/' &&
      !(static_cast<unsigned char>(first) >= 0x80)) {
    return false;
  }
  if (IsBlank(s.back())) return false;
  for (char c : s) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) return false;
    if (c == ':' || c == '#' || c == ',' || c == '[' || c == ']' || c == '{' || c == '}' ||
        c == '"' || c == '\'' || c == '\\' || c == '\t') {
      return false;
    }
  }
  absl::StatusOr<Json> v = ResolvePlain(s);
  return v.ok() && v->is_string();
}

void AppendScalar(std::string& out, const Json& v) {
  switch (v.type()) {
    case Json::Type::kNull: out += "null"; break;
    case Json::Type::kBool: out += v.as_bool() ? "true" : "false"; break;
    case Json::Type::kNumber:
      out += v.is_int() ? absl::StrCat(v.as_int()) : FormatDoubleForYaml(v.as_double());
      break;
    case Json::Type::kString:
      // A JSON string literal is a valid YAML double-quoted scalar.
      if (IsPlainSafe(v.as_string())) {
        out += v.as_string();
      } else {
        AppendJsonString(out, v.as_string());
      }
      break;
    case Json::Type::kArray: out += "[]"; break;
    case Json::Type::kObject: out += "{}"; break;
  }
}

bool IsBlockCollection(const Json& v) {
  return (v.is_array() || v.is_object()) && v.size() > 0;
}

void AppendBlock(std::string& out, const Json& v, int indent) {
  const std::string pad(indent, ' ');
  auto append_value = [&](const Json& child) {
    if (IsBlockCollection(child)) {
      out += '\n';
      AppendBlock(out, child, indent + 2);
    } else {
      out += ' ';
      AppendScalar(out, child);
      out += '\n';
    }
  };
  if (v.is_object()) {
    for (const auto& [key, child] : v.as_object()) {
      std::string written;
      AppendScalar(written, Json(key));
      out += pad;
      // An implicit key is at most 1024 characters (YAML 1.2, 7.4.2); longer ones are
      // written as explicit "? key" entries.
      if (written.size() > 1000) out += "? ";
      out += written;
      if (written.size() > 1000) {
        out += '\n';
        out += pad;
      }
      out += ':';
      append_value(child);
    }
  } else {
    for (const Json& child : v.as_array()) {
      out += pad;
      out += '-';
      append_value(child);
    }
  }
}

}  // namespace

int YamlDocument::LineOf(absl::string_view path) const {
  if (path.empty()) {
    auto it = lines.find("");
    return it == lines.end() ? 0 : it->second;
  }
  while (!path.empty()) {
    if (auto it = lines.find(std::string(path)); it != lines.end()) return it->second;
    if (path.back() == ']') {
      size_t open = path.rfind('[');
      path = path.substr(0, open == absl::string_view::npos ? 0 : open);
    } else {
      size_t dot = path.rfind('.');
      path = path.substr(0, dot == absl::string_view::npos ? 0 : dot);
    }
  }
  return 0;
}

const std::string* YamlDocument::OverrideOf(absl::string_view path) const {
  while (!overrides.empty()) {
    if (auto it = overrides.find(std::string(path)); it != overrides.end()) return &it->second;
    if (path.empty()) return nullptr;
    const size_t cut = path.back() == ']' ? path.rfind('[') : path.rfind('.');
    path = path.substr(0, cut == absl::string_view::npos ? 0 : cut);
  }
  return nullptr;
}

std::string YamlDocument::Where(absl::string_view path) const {
  if (const std::string* from = OverrideOf(path)) return *from;
  int line = LineOf(path);
  return line > 0 ? absl::StrCat(source, ":", line) : source;
}

absl::StatusOr<YamlDocument> ParseYaml(absl::string_view text, const std::string& source) {
  YamlDocument doc;
  doc.source = source;
  if (text.size() > kMaxBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": ", text.size(), " bytes; a YAML file may hold at most ", kMaxBytes >> 20,
        " MiB"));
  }
  if (absl::StartsWith(text, "\xEF\xBB\xBF")) text.remove_prefix(3);
  std::istringstream in{std::string(text)};
  try {
    YAML::Parser parser(in);
    TreeBuilder builder(text, doc);
    if (parser.HandleNextDocument(builder)) {
      SecondDocument second(text);
      parser.HandleNextDocument(second);
    }
  } catch (const BuildError& e) {
    return ErrorAt(source, e.mark, e.message);
  } catch (const YAML::DeepRecursion& e) {
    return ErrorAt(source, e.mark, "nesting too deep");
  } catch (const YAML::Exception& e) {
    // A tab in the indentation of the line yaml-cpp stopped at is the likely cause.
    absl::string_view line = text;
    for (int i = 0; i < e.mark.line && !line.empty(); ++i) {
      const size_t nl = line.find('\n');
      line = nl == absl::string_view::npos ? absl::string_view() : line.substr(nl + 1);
    }
    const size_t indent_end = line.find_first_not_of(" \t");
    const size_t tab = line.substr(0, indent_end).find('\t');
    if (e.mark.line >= 0 && tab != absl::string_view::npos) {
      YAML::Mark at = e.mark;
      at.column = static_cast<int>(tab);
      return ErrorAt(source, at, "tabs are not allowed in indentation; use spaces");
    }
    return ErrorAt(source, e.mark, Explain(e.msg));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", e.what()));
  }
  return doc;
}

std::string DumpYaml(const Json& value) {
  std::string out;
  if (IsBlockCollection(value)) {
    AppendBlock(out, value, 0);
  } else {
    AppendScalar(out, value);
    out += '\n';
  }
  return out;
}

}  // namespace lightrl
