#include "common/yaml.h"

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/utf8.h"

namespace lightrl {
namespace {

// Deep enough for any config; bounds the recursion on hostile input.
constexpr int kMaxDepth = 200;

bool IsBlank(char c) { return c == ' ' || c == '\t'; }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsHexDigit(char c) {
  return IsDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

// From `col`: nothing but blanks, then end of line or a comment.
bool RestIsEmpty(absl::string_view text, size_t col) {
  while (col < text.size() && IsBlank(text[col])) ++col;
  return col >= text.size() || text[col] == '#';
}

size_t SkipBlanks(absl::string_view text, size_t col) {
  while (col < text.size() && IsBlank(text[col])) ++col;
  return col;
}

// "---" or "..." at column 0, alone or followed by a blank.
bool IsDocumentMarker(absl::string_view text) {
  if (text.size() < 3) return false;
  absl::string_view head = text.substr(0, 3);
  if (head != "---" && head != "...") return false;
  return text.size() == 3 || IsBlank(text[3]);
}

bool IsSequenceEntry(absl::string_view text, size_t col) {
  return col < text.size() && text[col] == '-' &&
         (col + 1 == text.size() || IsBlank(text[col + 1]));
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

struct Line {
  int number = 0;          // 1-based
  absl::string_view text;  // without the line break
};

class Parser {
 public:
  Parser(absl::string_view text, YamlDocument& doc) : doc_(doc) {
    if (text.substr(0, 3) == "\xEF\xBB\xBF") text.remove_prefix(3);
    int number = 1;
    while (true) {
      size_t nl = text.find('\n');
      absl::string_view line = text.substr(0, nl);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      lines_.push_back({number++, line});
      if (nl == absl::string_view::npos) break;
      text.remove_prefix(nl + 1);
      if (text.empty()) break;  // the final line break ends a line, it does not start one
    }
  }

  absl::Status Parse() {
    RETURN_IF_ERROR(SkipEmptyLines());
    // Directives and one leading "---".
    if (li_ < lines_.size() && Text()[0] == '%') {
      return Error(li_, 0, "directives (%...) are not supported");
    }
    if (li_ < lines_.size() && IsDocumentMarker(Text())) {
      if (Text()[0] == '.') return Error(li_, 0, "unexpected document end marker '...'");
      if (!RestIsEmpty(Text(), 3)) {
        return Error(li_, SkipBlanks(Text(), 3),
                     "content on the '---' line is not supported; start it on the next line");
      }
      ++li_;
      RETURN_IF_ERROR(SkipEmptyLines());
    }
    if (li_ < lines_.size() && !IsDocumentMarker(Text())) {
      doc_.lines[""] = lines_[li_].number;
    }
    RETURN_IF_ERROR(ParseBlockValue(-1, "", 0, false, doc_.root));
    RETURN_IF_ERROR(SkipEmptyLines());
    if (li_ < lines_.size() && IsDocumentMarker(Text()) && Text()[0] == '.') {
      ++li_;
      RETURN_IF_ERROR(SkipEmptyLines());
      if (li_ < lines_.size()) {
        return Error(li_, col_, "multiple documents are not supported");
      }
    }
    if (li_ < lines_.size()) {
      if (IsDocumentMarker(Text())) {
        return Error(li_, 0, "multiple documents are not supported");
      }
      return Error(li_, col_, "unexpected content after the document's top-level value "
                              "(check the indentation)");
    }
    return absl::OkStatus();
  }

 private:
  absl::string_view Text() const { return lines_[li_].text; }

  absl::Status Error(size_t li, size_t col, absl::string_view what) const {
    int line = li < lines_.size() ? lines_[li].number : lines_.back().number;
    return absl::InvalidArgumentError(
        absl::StrCat(doc_.source, ":", line, ":", col + 1, ": ", what));
  }

  // Moves to the next line with content, col_ at its indentation. Tabs are rejected there
  // because YAML forbids them in indentation and a tab's width is a guess.
  absl::Status SkipEmptyLines() {
    while (li_ < lines_.size()) {
      absl::string_view t = Text();
      size_t c = 0;
      while (c < t.size() && t[c] == ' ') ++c;
      if (RestIsEmpty(t, c)) {
        ++li_;
        continue;
      }
      if (t[c] == '\t') {
        return Error(li_, c, "tabs are not allowed in indentation; use spaces");
      }
      col_ = c;
      return absl::OkStatus();
    }
    col_ = 0;
    return absl::OkStatus();
  }

  // End of the document's content: end of input or a "---"/"..." line.
  bool AtBoundary() const { return li_ >= lines_.size() || IsDocumentMarker(Text()); }

  std::string ChildKey(const std::string& path, absl::string_view key) const {
    return path.empty() ? std::string(key) : absl::StrCat(path, ".", key);
  }

  // The value of a key or sequence entry that has nothing after its indicator on its own
  // line: a block node on the following lines, indented deeper than `parent_indent`, or
  // null. `allow_same_indent_sequence`: a mapping's value may be a sequence at the key's
  // own indentation ("key:\n- a").
  absl::Status ParseBlockValue(int parent_indent, const std::string& path, int depth,
                               bool allow_same_indent_sequence, Json& out) {
    RETURN_IF_ERROR(SkipEmptyLines());
    out = Json();
    if (AtBoundary()) return absl::OkStatus();
    int indent = static_cast<int>(col_);
    if (indent > parent_indent) return ParseNodeHere(parent_indent, path, depth, true, out);
    if (allow_same_indent_sequence && indent == parent_indent &&
        IsSequenceEntry(Text(), col_)) {
      return ParseSequence(indent, path, depth, out);
    }
    return absl::OkStatus();
  }

  // A node starting at (li_, col_), which is not blank. `allow_collections` is false after
  // "key: " on the same line, where YAML allows no block collection.
  absl::Status ParseNodeHere(int parent_indent, const std::string& path, int depth,
                             bool allow_collections, Json& out) {
    if (depth > kMaxDepth) return Error(li_, col_, "nesting too deep");
    absl::string_view t = Text();
    if (IsSequenceEntry(t, col_)) {
      if (!allow_collections) {
        return Error(li_, col_, "a block sequence cannot start on the line of its key; "
                                "put the '- ' entries on the next lines");
      }
      return ParseSequence(static_cast<int>(col_), path, depth, out);
    }
    bool is_key = false;
    RETURN_IF_ERROR(LooksLikeKey(li_, col_, is_key));
    if (is_key) {
      if (!allow_collections) {
        return Error(li_, col_, "a mapping cannot start on the line of its key (or the value "
                                "contains ': '; quote it)");
      }
      return ParseMapping(static_cast<int>(col_), path, depth, out);
    }
    return ParseScalar(parent_indent, path, depth, out);
  }

  // An error for a node that starts with an indicator this subset does not support.
  absl::Status CheckNodeStart(size_t li, size_t col) const {
    absl::string_view t = lines_[li].text;
    char c = t[col];
    size_t end = col;
    while (end < t.size() && !IsBlank(t[end]) && t[end] != ',' && t[end] != ']' &&
           t[end] != '}') {
      ++end;
    }
    absl::string_view word = t.substr(col, end - col);
    switch (c) {
      case '&': return Error(li, col, absl::StrCat("anchors (", word, ") are not supported"));
      case '*': return Error(li, col, absl::StrCat("aliases (", word, ") are not supported"));
      case '!': return Error(li, col, absl::StrCat("tags (", word, ") are not supported"));
      case '?':
        if (col + 1 == t.size() || IsBlank(t[col + 1])) {
          return Error(li, col, "complex keys ('? ') are not supported");
        }
        break;
      case '%': return Error(li, col, "directives (%...) are not supported");
      case '@':
      case '`':
        return Error(li, col, absl::StrCat("'", std::string(1, c),
                                           "' is reserved and cannot start a plain scalar; "
                                           "quote the string"));
      default: break;
    }
    return absl::OkStatus();
  }

  // Reads a quoted scalar starting at `col` (on its quote) on line `li`; `end` is the
  // column after the closing quote.
  absl::Status ReadQuoted(size_t li, size_t col, std::string& out, size_t& end) const {
    absl::string_view t = lines_[li].text;
    const char quote = t[col];
    out.clear();
    size_t i = col + 1;
    while (true) {
      if (i >= t.size()) {
        return Error(li, col, "unterminated quoted string (quoted strings must end on the "
                              "line they start; use '|' for multi-line text)");
      }
      char c = t[i];
      if (quote == '\'') {
        if (c == '\'') {
          if (i + 1 < t.size() && t[i + 1] == '\'') {
            out += '\'';
            i += 2;
            continue;
          }
          end = i + 1;
          return absl::OkStatus();
        }
        out += c;
        ++i;
        continue;
      }
      if (c == '"') {
        end = i + 1;
        return absl::OkStatus();
      }
      if (c != '\\') {
        out += c;
        ++i;
        continue;
      }
      if (i + 1 >= t.size()) {
        return Error(li, i, "a line-continuation backslash is not supported");
      }
      char e = t[i + 1];
      i += 2;
      switch (e) {
        case '0': out += '\0'; break;
        case 'a': out += '\a'; break;
        case 'b': out += '\b'; break;
        case 't': case '\t': out += '\t'; break;
        case 'n': out += '\n'; break;
        case 'v': out += '\v'; break;
        case 'f': out += '\f'; break;
        case 'r': out += '\r'; break;
        case 'e': out += '\x1b'; break;
        case ' ': out += ' '; break;
        case '"': out += '"'; break;
        case '/': out += '/'; break;
        case '\\': out += '\\'; break;
        case 'N': AppendUtf8(out, 0x85); break;
        case '_': AppendUtf8(out, 0xA0); break;
        case 'L': AppendUtf8(out, 0x2028); break;
        case 'P': AppendUtf8(out, 0x2029); break;
        case 'x': case 'u': case 'U': {
          size_t n = e == 'x' ? 2 : e == 'u' ? 4 : 8;
          uint32_t cp = 0;
          RETURN_IF_ERROR(ReadHex(li, i, n, cp));
          i += n;
          // A UTF-16 surrogate pair written as two \u escapes (as JSON writers do).
          if (e == 'u' && cp >= 0xD800 && cp <= 0xDBFF && i + 6 <= t.size() &&
              t[i] == '\\' && t[i + 1] == 'u') {
            uint32_t low = 0;
            RETURN_IF_ERROR(ReadHex(li, i + 2, 4, low));
            if (low >= 0xDC00 && low <= 0xDFFF) {
              cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
              i += 6;
            }
          }
          if ((cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) {
            return Error(li, i - n - 2, "escape is not a valid Unicode code point");
          }
          AppendUtf8(out, cp);
          break;
        }
        default:
          return Error(li, i - 2, absl::StrCat("unknown escape \\", std::string(1, e)));
      }
    }
  }

  absl::Status ReadHex(size_t li, size_t at, size_t n, uint32_t& cp) const {
    absl::string_view t = lines_[li].text;
    cp = 0;
    for (size_t k = 0; k < n; ++k) {
      if (at + k >= t.size() || !IsHexDigit(t[at + k])) {
        return Error(li, at, absl::StrCat("expected ", n, " hex digits in the escape"));
      }
      char h = t[at + k];
      uint32_t v = IsDigit(h) ? h - '0' : (h | 0x20) - 'a' + 10;
      cp = cp * 16 + v;
    }
    return absl::OkStatus();
  }

  // Whether the block content at (li, col) is a "key: value" entry.
  absl::Status LooksLikeKey(size_t li, size_t col, bool& is_key) const {
    absl::string_view t = lines_[li].text;
    is_key = false;
    char c = t[col];
    size_t i = col;
    if (c == '"' || c == '\'') {
      std::string ignored;
      size_t end = 0;
      if (!ReadQuoted(li, col, ignored, end).ok()) return absl::OkStatus();
      i = SkipBlanks(t, end);
      is_key = i < t.size() && t[i] == ':' && (i + 1 == t.size() || IsBlank(t[i + 1]));
      return absl::OkStatus();
    }
    if (c == '[' || c == '{' || c == '|' || c == '>') return absl::OkStatus();
    for (; i < t.size(); ++i) {
      if (t[i] == '#' && i > col && IsBlank(t[i - 1])) return absl::OkStatus();
      if (t[i] == ':' && (i + 1 == t.size() || IsBlank(t[i + 1]))) {
        is_key = true;
        return absl::OkStatus();
      }
    }
    return absl::OkStatus();
  }

  absl::Status ParseMapping(int indent, const std::string& path, int depth, Json& out) {
    out = Json::MakeObject();
    std::map<std::string, int> first_line;  // key -> line, for duplicate messages
    while (true) {
      absl::string_view t = Text();
      const size_t key_col = col_;
      std::string key;
      size_t colon = 0;
      if (t[key_col] == '"' || t[key_col] == '\'') {
        size_t end = 0;
        RETURN_IF_ERROR(ReadQuoted(li_, key_col, key, end));
        colon = SkipBlanks(t, end);
      } else {
        RETURN_IF_ERROR(CheckNodeStart(li_, key_col));
        colon = key_col;
        while (!(t[colon] == ':' && (colon + 1 == t.size() || IsBlank(t[colon + 1])))) {
          ++colon;
        }
        size_t key_end = colon;
        while (key_end > key_col && IsBlank(t[key_end - 1])) --key_end;
        key = std::string(t.substr(key_col, key_end - key_col));
        if (key.empty()) return Error(li_, key_col, "empty mapping key");
      }
      const int line = lines_[li_].number;
      if (auto it = first_line.find(key); it != first_line.end()) {
        return Error(li_, key_col, absl::StrCat("duplicate key \"", key,
                                                "\" (first defined on line ", it->second,
                                                ")"));
      }
      first_line[key] = line;
      const std::string child = ChildKey(path, key);
      doc_.lines[child] = line;
      Json value;
      col_ = SkipBlanks(t, colon + 1);
      if (RestIsEmpty(t, col_)) {
        ++li_;
        RETURN_IF_ERROR(ParseBlockValue(indent, child, depth + 1, true, value));
      } else {
        RETURN_IF_ERROR(ParseNodeHere(indent, child, depth + 1, false, value));
      }
      out.as_object().emplace_back(std::move(key), std::move(value));

      RETURN_IF_ERROR(SkipEmptyLines());
      if (AtBoundary()) return absl::OkStatus();
      const int next = static_cast<int>(col_);
      if (next < indent) return absl::OkStatus();
      if (next > indent) {
        return Error(li_, col_, "unexpected indentation (a multi-line plain value is not "
                                "supported; a nested block needs its key to end with ':')");
      }
      if (IsSequenceEntry(Text(), col_)) {
        return Error(li_, col_, "expected a mapping key, found a sequence entry '- '");
      }
      bool is_key = false;
      RETURN_IF_ERROR(LooksLikeKey(li_, col_, is_key));
      if (!is_key) {
        RETURN_IF_ERROR(CheckNodeStart(li_, col_));
        return Error(li_, col_, "expected a mapping key (\"key: value\")");
      }
    }
  }

  absl::Status ParseSequence(int indent, const std::string& path, int depth, Json& out) {
    out = Json::MakeArray();
    while (true) {
      absl::string_view t = Text();
      const std::string child = absl::StrCat(path, "[", out.size(), "]");
      doc_.lines[child] = lines_[li_].number;
      Json item;
      col_ = SkipBlanks(t, col_ + 1);
      if (RestIsEmpty(t, col_)) {
        ++li_;
        RETURN_IF_ERROR(ParseBlockValue(indent, child, depth + 1, false, item));
      } else {
        RETURN_IF_ERROR(ParseNodeHere(indent, child, depth + 1, true, item));
      }
      out.push_back(std::move(item));

      RETURN_IF_ERROR(SkipEmptyLines());
      if (AtBoundary()) return absl::OkStatus();
      const int next = static_cast<int>(col_);
      if (next < indent) return absl::OkStatus();
      if (next > indent) {
        return Error(li_, col_, "unexpected indentation (a multi-line plain value is not "
                                "supported)");
      }
      // At the same indentation but no '- ': the end of a sequence nested in a mapping at
      // this indentation; the mapping checks what follows.
      if (!IsSequenceEntry(Text(), col_)) return absl::OkStatus();
    }
  }

  // A scalar, flow collection or block scalar at (li_, col_); leaves li_ on the next line.
  absl::Status ParseScalar(int parent_indent, const std::string& path, int depth,
                           Json& out) {
    absl::string_view t = Text();
    const char c = t[col_];
    if (c == '[' || c == '{') {
      RETURN_IF_ERROR(ParseFlowNode(path, depth, out));
      absl::string_view rest_line = Text();
      if (!RestIsEmpty(rest_line, col_)) {
        return Error(li_, SkipBlanks(rest_line, col_),
                     "unexpected text after the flow collection");
      }
      ++li_;
      return absl::OkStatus();
    }
    if (c == '|' || c == '>') return ParseBlockScalar(parent_indent, out);
    if (c == '"' || c == '\'') {
      std::string s;
      size_t end = 0;
      RETURN_IF_ERROR(ReadQuoted(li_, col_, s, end));
      if (!RestIsEmpty(t, end)) {
        return Error(li_, SkipBlanks(t, end), "unexpected text after the quoted string");
      }
      out = Json(std::move(s));
      ++li_;
      return absl::OkStatus();
    }
    RETURN_IF_ERROR(CheckNodeStart(li_, col_));
    size_t end = col_;
    while (end < t.size() && !(t[end] == '#' && IsBlank(t[end - 1]))) {
      if (t[end] == ':' && (end + 1 == t.size() || IsBlank(t[end + 1]))) {
        return Error(li_, end, "': ' is not allowed in a plain value; quote the string");
      }
      ++end;
    }
    while (end > col_ && IsBlank(t[end - 1])) --end;
    absl::StatusOr<Json> v = ResolvePlain(t.substr(col_, end - col_));
    if (!v.ok()) return Error(li_, col_, v.status().message());
    out = *std::move(v);
    ++li_;
    return absl::OkStatus();
  }

  // `|` (literal) and `>` (folded) with optional chomping (-, +) and indentation digit.
  absl::Status ParseBlockScalar(int parent_indent, Json& out) {
    absl::string_view t = Text();
    const bool folded = t[col_] == '>';
    char chomp = 'c';  // clip: one final newline
    int explicit_indent = 0;
    size_t i = col_ + 1;
    for (int k = 0; k < 2 && i < t.size(); ++k) {
      if ((t[i] == '-' || t[i] == '+') && chomp == 'c') {
        chomp = t[i++];
      } else if (t[i] >= '1' && t[i] <= '9' && explicit_indent == 0) {
        explicit_indent = t[i++] - '0';
      }
    }
    if (!RestIsEmpty(t, i) || (i < t.size() && t[i] == '#' && !IsBlank(t[i - 1]))) {
      return Error(li_, i, "unexpected text after the block scalar indicator");
    }
    const int base = parent_indent < 0 ? 0 : parent_indent;
    ++li_;
    // Content indentation: explicit, else that of the first non-empty line.
    int content_indent = explicit_indent > 0 ? base + explicit_indent : -1;
    if (content_indent < 0) {
      for (size_t k = li_; k < lines_.size(); ++k) {
        absl::string_view lt = lines_[k].text;
        size_t sp = 0;
        while (sp < lt.size() && lt[sp] == ' ') ++sp;
        if (sp == lt.size()) continue;
        content_indent = static_cast<int>(sp);
        break;
      }
      if (content_indent <= parent_indent) content_indent = parent_indent + 1;
    }
    std::vector<std::string> body;
    while (li_ < lines_.size()) {
      absl::string_view lt = Text();
      size_t sp = 0;
      while (sp < lt.size() && lt[sp] == ' ') ++sp;
      if (sp == lt.size()) {  // empty (spaces only): kept, beyond the indent as content
        body.push_back(sp > static_cast<size_t>(content_indent)
                           ? std::string(lt.substr(content_indent))
                           : std::string());
        ++li_;
        continue;
      }
      if (static_cast<int>(sp) < content_indent) break;
      if (content_indent == 0 && IsDocumentMarker(lt)) break;
      body.emplace_back(lt.substr(content_indent));
      ++li_;
    }
    // Trailing empty lines are subject to chomping, not part of the text.
    size_t last = body.size();
    while (last > 0 && body[last - 1].empty()) --last;
    const size_t trailing = body.size() - last;
    std::string text;
    if (!folded) {
      for (size_t k = 0; k < last; ++k) {
        if (k) text += '\n';
        text += body[k];
      }
    } else {
      // Folding: a line break between two normal lines becomes a space, each empty line
      // between them a newline; breaks around more-indented lines are kept.
      auto more_indented = [](const std::string& s) {
        return !s.empty() && IsBlank(s[0]);
      };
      size_t k = 0;
      while (k < last && body[k].empty()) text += '\n', ++k;
      if (k < last) text += body[k];
      size_t prev = k;
      for (++k; k < last; ++k) {
        if (body[k].empty()) continue;
        const size_t empties = k - prev - 1;
        if (!more_indented(body[prev]) && !more_indented(body[k])) {
          text += empties == 0 ? std::string(" ") : std::string(empties, '\n');
        } else {
          text += std::string(empties + 1, '\n');
        }
        text += body[k];
        prev = k;
      }
    }
    if (last > 0) {
      if (chomp != '-') text += '\n';
      if (chomp == '+') text += std::string(trailing, '\n');
    } else if (chomp == '+') {
      text += std::string(trailing, '\n');
    }
    out = Json(std::move(text));
    return absl::OkStatus();
  }

  // --- flow collections: may span lines; (li_, col_) moves through the text ---

  absl::Status SkipFlowSpace(size_t open_li, size_t open_col) {
    while (true) {
      if (li_ >= lines_.size()) {
        return Error(open_li, open_col, "unterminated flow collection");
      }
      absl::string_view t = Text();
      col_ = SkipBlanks(t, col_);
      if (col_ < t.size() && t[col_] != '#') return absl::OkStatus();
      ++li_;
      col_ = 0;
      if (li_ < lines_.size() && IsDocumentMarker(Text())) {
        return Error(open_li, open_col, "unterminated flow collection");
      }
    }
  }

  static bool EndsFlowPlain(absl::string_view t, size_t i) {
    char c = t[i];
    if (c == ',' || c == '[' || c == ']' || c == '{' || c == '}') return true;
    if (c == '#' && i > 0 && IsBlank(t[i - 1])) return true;
    if (c == ':') {
      return i + 1 == t.size() || IsBlank(t[i + 1]) || t[i + 1] == ',' || t[i + 1] == ']' ||
             t[i + 1] == '}';
    }
    return false;
  }

  // A quoted or plain scalar inside a flow collection, as a string (`resolve` false, for
  // keys) or resolved.
  absl::Status ParseFlowScalar(bool resolve, Json& out) {
    absl::string_view t = Text();
    const char c = t[col_];
    if (c == '"' || c == '\'') {
      std::string s;
      size_t end = 0;
      RETURN_IF_ERROR(ReadQuoted(li_, col_, s, end));
      col_ = end;
      out = Json(std::move(s));
      return absl::OkStatus();
    }
    RETURN_IF_ERROR(CheckNodeStart(li_, col_));
    size_t end = col_;
    while (end < t.size() && !EndsFlowPlain(t, end)) ++end;
    size_t trimmed = end;
    while (trimmed > col_ && IsBlank(t[trimmed - 1])) --trimmed;
    absl::string_view s = t.substr(col_, trimmed - col_);
    if (s.empty()) return Error(li_, col_, "expected a value");
    if (resolve) {
      absl::StatusOr<Json> v = ResolvePlain(s);
      if (!v.ok()) return Error(li_, col_, v.status().message());
      out = *std::move(v);
    } else {
      out = Json(s);
    }
    col_ = end;
    return absl::OkStatus();
  }

  absl::Status ParseFlowNode(const std::string& path, int depth, Json& out) {
    if (depth > kMaxDepth) return Error(li_, col_, "nesting too deep");
    const char c = Text()[col_];
    if (c != '[' && c != '{') return ParseFlowScalar(true, out);
    const size_t open_li = li_, open_col = col_;
    const bool is_map = c == '{';
    const char close = is_map ? '}' : ']';
    out = is_map ? Json::MakeObject() : Json::MakeArray();
    std::map<std::string, int> first_line;
    ++col_;
    while (true) {
      RETURN_IF_ERROR(SkipFlowSpace(open_li, open_col));
      if (Text()[col_] == close) {
        ++col_;
        return absl::OkStatus();
      }
      const int line = lines_[li_].number;
      if (is_map) {
        const size_t key_li = li_, key_col = col_;
        if (Text()[col_] == '[' || Text()[col_] == '{') {
          return Error(li_, col_, "collection keys are not supported");
        }
        Json key;
        RETURN_IF_ERROR(ParseFlowScalar(false, key));
        const std::string& k = key.as_string();
        if (auto it = first_line.find(k); it != first_line.end()) {
          return Error(key_li, key_col, absl::StrCat("duplicate key \"", k,
                                                     "\" (first defined on line ",
                                                     it->second, ")"));
        }
        first_line[k] = line;
        const std::string child = ChildKey(path, k);
        doc_.lines[child] = line;
        RETURN_IF_ERROR(SkipFlowSpace(open_li, open_col));
        if (Text()[col_] != ':') return Error(li_, col_, "expected ':' after the key");
        ++col_;
        RETURN_IF_ERROR(SkipFlowSpace(open_li, open_col));
        Json value;
        if (Text()[col_] != ',' && Text()[col_] != '}') {
          RETURN_IF_ERROR(ParseFlowNode(child, depth + 1, value));
        }
        out.as_object().emplace_back(k, std::move(value));
      } else {
        const std::string child = absl::StrCat(path, "[", out.size(), "]");
        doc_.lines[child] = line;
        Json item;
        RETURN_IF_ERROR(ParseFlowNode(child, depth + 1, item));
        out.push_back(std::move(item));
      }
      RETURN_IF_ERROR(SkipFlowSpace(open_li, open_col));
      const char next = Text()[col_];
      if (next == ',') {
        ++col_;
        continue;
      }
      if (next == close) continue;
      if (!is_map && next == ':') {
        return Error(li_, col_, "'key: value' inside [...] is not supported; use {...}");
      }
      std::string what = absl::StrCat("expected ',' or '", std::string(1, close), "'");
      if (li_ != open_li) {
        absl::StrAppend(&what, " (the '", std::string(1, c), "' on line ",
                        lines_[open_li].number, " is not closed)");
      }
      return Error(li_, col_, what);
    }
  }

  YamlDocument& doc_;
  std::vector<Line> lines_;
  size_t li_ = 0;   // current line
  size_t col_ = 0;  // current column (0-based) in lines_[li_]
};

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
      out += pad;
      AppendScalar(out, Json(key));
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

std::string YamlDocument::Where(absl::string_view path) const {
  int line = LineOf(path);
  return line > 0 ? absl::StrCat(source, ":", line) : source;
}

absl::StatusOr<YamlDocument> ParseYaml(absl::string_view text, const std::string& source) {
  YamlDocument doc;
  doc.source = source;
  Parser parser(text, doc);
  absl::Status status = parser.Parse();
  if (!status.ok()) return status;
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
