#include "reward/answer_parsers.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <iterator>
#include <limits>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace lightrl {
namespace {

bool IsNumberChar(char c) { return std::isdigit(static_cast<unsigned char>(c)) || c == '.'; }

// The last run that parses as a number (with sign, commas inside digits, decimal point).
std::optional<std::string> LastNumber(absl::string_view text) {
  for (size_t end = text.size(); end > 0; --end) {
    if (!std::isdigit(static_cast<unsigned char>(text[end - 1]))) continue;
    size_t begin = end;
    while (begin > 0 && (IsNumberChar(text[begin - 1]) ||
                         (text[begin - 1] == ',' && begin >= 2 &&
                          std::isdigit(static_cast<unsigned char>(text[begin - 2]))))) {
      --begin;
    }
    if (begin > 0 && text[begin - 1] == '-') --begin;
    if (begin > 0 && text[begin - 1] == '/' ) {
      // a fraction "a/b": include the numerator
      size_t b2 = begin - 1;
      while (b2 > 0 && std::isdigit(static_cast<unsigned char>(text[b2 - 1]))) --b2;
      if (b2 < begin - 1) begin = b2;
    }
    return std::string(absl::StripSuffix(text.substr(begin, end - begin), "."));
  }
  return std::nullopt;
}

// Recursive-descent evaluator: expr := term (('+'|'-') term)*, term := factor (('*'|'/')
// factor)*, factor := number | '(' expr ')' | '-' factor. Every recursion passes through
// Factor(), which counts the depth against kMaxCountdownExpressionDepth.
class ExprParser {
 public:
  ExprParser(absl::string_view s, std::vector<double>* used) : s_(s), used_(used) {}
  std::optional<double> Parse() {
    if (s_.size() > kMaxCountdownExpressionChars) return std::nullopt;
    auto v = Expr();
    Skip();
    if (!v || pos_ != s_.size()) return std::nullopt;
    return v;
  }

 private:
  void Skip() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  std::optional<double> Expr() {
    auto v = Term();
    while (v) {
      Skip();
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) {
        char op = s_[pos_++];
        auto r = Term();
        if (!r) return std::nullopt;
        *v = op == '+' ? *v + *r : *v - *r;
      } else {
        break;
      }
    }
    return v;
  }
  std::optional<double> Term() {
    auto v = Factor();
    while (v) {
      Skip();
      if (pos_ < s_.size() && (s_[pos_] == '*' || s_[pos_] == '/' || s_[pos_] == 'x')) {
        char op = s_[pos_++];
        auto r = Factor();
        if (!r) return std::nullopt;
        if (op == '/') {
          if (*r == 0) return std::nullopt;
          *v /= *r;
        } else {
          *v *= *r;
        }
      } else {
        break;
      }
    }
    return v;
  }
  std::optional<double> Factor() {
    if (++depth_ > kMaxCountdownExpressionDepth) return std::nullopt;
    std::optional<double> v = FactorAtDepth();
    --depth_;
    return v;
  }
  std::optional<double> FactorAtDepth() {
    Skip();
    if (pos_ >= s_.size()) return std::nullopt;
    if (s_[pos_] == '(') {
      ++pos_;
      auto v = Expr();
      Skip();
      if (!v || pos_ >= s_.size() || s_[pos_] != ')') return std::nullopt;
      ++pos_;
      return v;
    }
    if (s_[pos_] == '-') {
      ++pos_;
      auto v = Factor();
      if (!v) return std::nullopt;
      return -*v;
    }
    size_t begin = pos_;
    while (pos_ < s_.size() && IsNumberChar(s_[pos_])) ++pos_;
    if (begin == pos_) return std::nullopt;
    double v;
    if (!absl::SimpleAtod(s_.substr(begin, pos_ - begin), &v)) return std::nullopt;
    if (used_) used_->push_back(v);
    return v;
  }

  absl::string_view s_;
  size_t pos_ = 0;
  int depth_ = 0;
  std::vector<double>* used_;
};

// ---- Final-answer equivalence (AnswersMatch) ----

// Deeper nesting than this in an answer is not a real answer; the limit keeps the
// recursive parsers off the stack's edge on adversarial responses.
constexpr int kMaxAnswerDepth = 64;
// Relative tolerance of numeric agreement.
constexpr double kAnswerRelTol = 1e-6;
// Longer answers are compared as strings only: normalising them costs more than a
// reward should, and no real final answer is that long.
constexpr size_t kMaxAnswerChars = 2048;
constexpr double kPi = 3.14159265358979323846;
constexpr double kE = 2.71828182845904523536;

bool IsAsciiAlpha(char c) { return std::isalpha(static_cast<unsigned char>(c)) != 0; }
bool IsAsciiDigit(char c) { return std::isdigit(static_cast<unsigned char>(c)) != 0; }

// Values given to the variables in the symbolic check: irrational-looking, positive (so
// sqrt and fractional powers stay real) and different per letter and per point.
double VariableValue(int letter, int point) {
  return 0.731 + 0.4171 * point + 0.1093 * letter + 0.0371 * letter * point;
}

// Real-valued evaluator for final answers after LatexToExpr: + - * / ^ (right-assoc.),
// unary signs, sqrt, pi, e, inf, implicit multiplication ("2sqrt(2)", "3(x+1)", "2pi")
// and scientific notation ("1.5e-3"). Letters other than those names are variables,
// one letter each: a longer run ("cm", "yes") is not an expression. Variables read
// `point` and are recorded in `*variables` (bit i = letter 'a' + i).
class RealExprParser {
 public:
  RealExprParser(absl::string_view s, int point, uint32_t* variables)
      : s_(s), point_(point), variables_(variables) {}

  std::optional<double> Parse() {
    if (s_.empty() || !LetterRunsAreNames()) return std::nullopt;
    std::optional<double> v = Sum();
    if (!v || pos_ != s_.size() || std::isnan(*v)) return std::nullopt;
    return v;
  }

 private:
  static constexpr absl::string_view kNames[] = {"sqrt", "infty", "inf", "pi"};

  bool LetterRunsAreNames() const {
    for (size_t i = 0; i < s_.size();) {
      if (!IsAsciiAlpha(s_[i])) {
        ++i;
        continue;
      }
      size_t j = i;
      while (j < s_.size() && IsAsciiAlpha(s_[j])) ++j;
      const absl::string_view run = s_.substr(i, j - i);
      if (run.size() > 1 && std::find(std::begin(kNames), std::end(kNames), run) ==
                                std::end(kNames)) {
        return false;
      }
      i = j;
    }
    return true;
  }
  char Peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
  bool Eat(char c) {
    if (Peek() != c) return false;
    ++pos_;
    return true;
  }
  bool EatName(absl::string_view name) {
    if (s_.substr(pos_, name.size()) != name) return false;
    pos_ += name.size();
    return true;
  }
  bool AtPrimary() const {
    const char c = Peek();
    return IsAsciiDigit(c) || c == '.' || c == '(' || IsAsciiAlpha(c);
  }

  std::optional<double> Sum() {
    std::optional<double> v = Product();
    while (v) {
      if (Eat('+')) {
        std::optional<double> r = Product();
        if (!r) return std::nullopt;
        *v += *r;
      } else if (Eat('-')) {
        std::optional<double> r = Product();
        if (!r) return std::nullopt;
        *v -= *r;
      } else {
        break;
      }
    }
    return v;
  }
  std::optional<double> Product() {
    std::optional<double> v = Signed();
    while (v) {
      std::optional<double> r;
      if (Eat('*')) {
        if (!(r = Signed())) return std::nullopt;
        *v *= *r;
      } else if (Eat('/')) {
        if (!(r = Signed()) || *r == 0) return std::nullopt;
        *v /= *r;
      } else if (AtPrimary()) {
        if (!(r = Power())) return std::nullopt;
        *v *= *r;
      } else {
        break;
      }
    }
    return v;
  }
  std::optional<double> Signed() {
    if (++depth_ > kMaxAnswerDepth) return std::nullopt;
    std::optional<double> v;
    if (Eat('-')) {
      v = Signed();
      if (v) *v = -*v;
    } else if (Eat('+')) {
      v = Signed();
    } else {
      v = Power();
    }
    --depth_;
    return v;
  }
  std::optional<double> Power() {
    std::optional<double> base = Primary();
    if (!base || !Eat('^')) return base;
    std::optional<double> exponent = Signed();
    if (!exponent) return std::nullopt;
    return std::pow(*base, *exponent);
  }
  std::optional<double> Primary() {
    if (++depth_ > kMaxAnswerDepth) return std::nullopt;
    std::optional<double> v = PrimaryAtDepth();
    --depth_;
    return v;
  }
  std::optional<double> PrimaryAtDepth() {
    const char c = Peek();
    if (Eat('(')) {
      std::optional<double> v = Sum();
      if (!v || !Eat(')')) return std::nullopt;
      return v;
    }
    if (IsAsciiDigit(c) || c == '.') return Number();
    if (!IsAsciiAlpha(c)) return std::nullopt;
    if (EatName("sqrt")) {
      std::optional<double> v = Primary();
      if (!v || *v < 0) return std::nullopt;
      return std::sqrt(*v);
    }
    if (EatName("infty") || EatName("inf")) return std::numeric_limits<double>::infinity();
    if (EatName("pi")) return kPi;
    ++pos_;
    if (c == 'e') return kE;
    const int letter = std::tolower(static_cast<unsigned char>(c)) - 'a';
    *variables_ |= 1u << letter;
    return VariableValue(letter, point_);
  }
  std::optional<double> Number() {
    const size_t begin = pos_;
    while (IsAsciiDigit(Peek()) || Peek() == '.') ++pos_;
    // "2e3" is scientific notation, "2e" and "2e+x" are 2 times Euler's number.
    if (Peek() == 'e') {
      size_t end = pos_ + 1;
      if (end < s_.size() && (s_[end] == '+' || s_[end] == '-')) ++end;
      if (end < s_.size() && IsAsciiDigit(s_[end])) {
        pos_ = end;
        while (IsAsciiDigit(Peek())) ++pos_;
      }
    }
    double v;
    if (!absl::SimpleAtod(s_.substr(begin, pos_ - begin), &v)) return std::nullopt;
    return v;
  }

  absl::string_view s_;
  int point_;
  uint32_t* variables_;
  size_t pos_ = 0;
  int depth_ = 0;
};

// The end of the group opened at `open` ('{', '(' or '['), counting all three kinds;
// npos when unbalanced.
size_t MatchingClose(absl::string_view s, size_t open) {
  int depth = 0;
  for (size_t i = open; i < s.size(); ++i) {
    const char c = s[i];
    if (c == '{' || c == '(' || c == '[') ++depth;
    if (c == '}' || c == ')' || c == ']') {
      if (--depth == 0) return i;
      if (depth < 0) return absl::string_view::npos;
    }
  }
  return absl::string_view::npos;
}

// One argument of a LaTeX command at `*pos`: a {group}'s inside, a \command, or one
// character ("\frac12"). nullopt at the end or on an unbalanced group.
std::optional<absl::string_view> ReadLatexArg(absl::string_view s, size_t* pos) {
  while (*pos < s.size() && s[*pos] == ' ') ++*pos;
  if (*pos >= s.size()) return std::nullopt;
  const size_t begin = *pos;
  if (s[begin] == '{') {
    const size_t close = MatchingClose(s, begin);
    if (close == absl::string_view::npos) return std::nullopt;
    *pos = close + 1;
    return s.substr(begin + 1, close - begin - 1);
  }
  if (s[begin] == '\\') {
    size_t end = begin + 1;
    while (end < s.size() && IsAsciiAlpha(s[end])) ++end;
    *pos = end;
    return s.substr(begin, end - begin);
  }
  *pos = begin + 1;
  return s.substr(begin, 1);
}

bool IsUnsignedInteger(absl::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), IsAsciiDigit);
}

// Rewrites normalised LaTeX into RealExprParser syntax. nullopt for a command it does not
// know: such answers are compared as strings only.
std::optional<std::string> LatexToExpr(absl::string_view s, int depth = 0) {
  if (depth > kMaxAnswerDepth) return std::nullopt;
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    const char c = s[i];
    if (c == ' ') {
      ++i;
      continue;
    }
    if (c == '*' && i + 1 < s.size() && s[i + 1] == '*') {  // Python's power
      out += '^';
      i += 2;
      continue;
    }
    if (c == '{' || c == '[') {
      out += '(';
    } else if (c == '}' || c == ']') {
      out += ')';
    } else if (c != '\\') {
      out += c;
    }
    if (c != '\\') {
      ++i;
      continue;
    }
    size_t end = i + 1;
    while (end < s.size() && IsAsciiAlpha(s[end])) ++end;
    const absl::string_view name = s.substr(i + 1, end - i - 1);
    i = end;
    if (name == "frac") {
      std::optional<absl::string_view> num = ReadLatexArg(s, &i);
      std::optional<absl::string_view> den = num ? ReadLatexArg(s, &i) : std::nullopt;
      if (!den) return std::nullopt;
      std::optional<std::string> a = LatexToExpr(*num, depth + 1);
      std::optional<std::string> b = LatexToExpr(*den, depth + 1);
      if (!a || !b) return std::nullopt;
      // "2\frac{1}{2}" is the mixed number 2 1/2, the way answers write it.
      size_t whole = out.size();
      while (whole > 0 && IsAsciiDigit(out[whole - 1])) --whole;
      const bool mixed = whole < out.size() && IsUnsignedInteger(*a) && IsUnsignedInteger(*b) &&
                         (whole == 0 || absl::string_view("(+-=,").find(out[whole - 1]) !=
                                            absl::string_view::npos);
      if (mixed) {
        const std::string integer = out.substr(whole);
        out.resize(whole);
        absl::StrAppend(&out, "(", integer, "+", *a, "/", *b, ")");
      } else {
        absl::StrAppend(&out, "((", *a, ")/(", *b, "))");
      }
    } else if (name == "sqrt") {
      std::optional<std::string> index;
      if (i < s.size() && s[i] == '[') {
        const size_t close = MatchingClose(s, i);
        if (close == absl::string_view::npos) return std::nullopt;
        index = LatexToExpr(s.substr(i + 1, close - i - 1), depth + 1);
        if (!index) return std::nullopt;
        i = close + 1;
      }
      std::optional<absl::string_view> arg = ReadLatexArg(s, &i);
      if (!arg) return std::nullopt;
      std::optional<std::string> radicand = LatexToExpr(*arg, depth + 1);
      if (!radicand) return std::nullopt;
      if (index) {
        absl::StrAppend(&out, "((", *radicand, ")^(1/(", *index, ")))");
      } else {
        absl::StrAppend(&out, "sqrt(", *radicand, ")");
      }
    } else if (name == "pi") {
      out += "(pi)";
    } else if (name == "cdot" || name == "times" || name == "ast") {
      out += '*';
    } else if (name == "div") {
      out += '/';
    } else if (name == "infty") {
      out += "inf";
    } else if (name.empty() && i < s.size() && (s[i] == '{' || s[i] == '}')) {
      out += s[i] == '{' ? '(' : ')';
      ++i;
    } else {
      return std::nullopt;
    }
  }
  return out;
}

// Units an answer may carry after its number ("5 cm", "12\text{ dollars}"): the short
// ones by name; any word of three letters or more ("7 apples") except the evaluator's.
bool IsUnitWord(absl::string_view word) {
  if (word.size() >= 3) return word != "sqrt" && word != "inf" && word != "infty";
  static constexpr absl::string_view kShortUnits[] = {
      "mm", "cm", "m", "km", "in", "ft", "yd", "mi", "mg", "g", "kg", "lb",
      "oz", "ml", "l", "s", "h", "hr", "sq", "kb", "mb", "gb"};
  return std::find(std::begin(kShortUnits), std::end(kShortUnits), word) !=
         std::end(kShortUnits);
}

// What LaTeX answers wrap their value in, removed: math delimiters, \boxed and \text-like
// wrappers (their text kept), sizing and spacing commands, degree marks, dollar signs.
// Lower-cased, spaces collapsed to one.
std::string StripAnswerDressing(absl::string_view raw) {
  std::string s = absl::StrReplaceAll(
      raw, {{"\xCF\x80", "\\pi "},   // π
            {"\xE2\x88\x9A", "\\sqrt"},  // √
            {"\xC3\x97", "*"},      // ×
            {"\xC2\xB7", "*"},      // ·
            {"\xE2\x88\x92", "-"},  // − (minus sign)
            {"\xC2\xB0", ""},       // °
            {"\xE2\x88\x9E", "\\infty "}});
  // Wrappers whose argument is the answer (or its unit) and whose name is not.
  for (const std::string wrapper :
       {"\\boxed", "\\fbox", "\\text", "\\textbf", "\\textit", "\\textrm", "\\mathrm",
        "\\mathbf", "\\mathit", "\\mbox", "\\hbox", "\\operatorname"}) {
    for (size_t at = s.find(wrapper); at != std::string::npos; at = s.find(wrapper, at)) {
      const size_t open = at + wrapper.size();
      size_t close;
      if (open >= s.size() || s[open] != '{' ||
          (close = MatchingClose(s, open)) == std::string::npos) {
        at = open;
        continue;
      }
      s = absl::StrCat(s.substr(0, at), " ", s.substr(open + 1, close - open - 1), " ",
                       s.substr(close + 1));
    }
  }
  s = absl::StrReplaceAll(
      s, {{"\\left", ""},      {"\\right", ""},      {"\\displaystyle", ""},
          {"\\!", ""},         {"\\,", ""},          {"\\;", ""},
          {"\\:", ""},         {"\\ ", " "},         {"~", " "},
          {"{,}", ""},         {"\\dfrac", "\\frac"}, {"\\tfrac", "\\frac"},
          {"\\cfrac", "\\frac"}, {"^{\\circ}", ""},   {"^\\circ", ""},
          {"\\circ", ""},      {"\\degree", ""},     {"\\$", ""},
          {"$", ""},           {"\\%", "%"}});
  s = absl::AsciiStrToLower(s);
  std::string collapsed;
  for (char c : s) {
    if (std::isspace(static_cast<unsigned char>(c))) {
      if (!collapsed.empty() && collapsed.back() != ' ') collapsed += ' ';
    } else {
      collapsed += c;
    }
  }
  absl::string_view view = absl::StripAsciiWhitespace(collapsed);
  bool changed = true;
  while (changed) {
    changed = false;
    for (absl::string_view delimiter : {"\\(", "\\["}) {
      changed |= absl::ConsumePrefix(&view, delimiter);
    }
    for (absl::string_view delimiter : {"\\)", "\\]", "."}) {
      changed |= absl::ConsumeSuffix(&view, delimiter);
    }
    view = absl::StripAsciiWhitespace(view);
  }
  return std::string(view);
}

// A comparable final answer: a scalar (text and, where LatexToExpr manages, an
// expression) or a list of them.
struct MathAnswer {
  std::string text;                 // whitespace-free normal form; compared as a last resort
  std::optional<std::string> expr;  // RealExprParser syntax
  bool percent = false;             // "50%": 50 or 0.5
  bool is_list = false;
  char open = 0;                    // '(' or '[' (tuple, interval), '{' (set), 0 (bare list)
  char close = 0;
  std::vector<MathAnswer> elements;
};

// Splits at commas outside any brackets.
std::vector<absl::string_view> SplitTopLevelCommas(absl::string_view s) {
  std::vector<absl::string_view> parts;
  int depth = 0;
  size_t begin = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (c == '{' || c == '(' || c == '[') ++depth;
    if (c == '}' || c == ')' || c == ']') --depth;
    if (c == ',' && depth == 0) {
      parts.push_back(absl::StripAsciiWhitespace(s.substr(begin, i - begin)));
      begin = i + 1;
    }
  }
  parts.push_back(absl::StripAsciiWhitespace(s.substr(begin)));
  return parts;
}

// "1,234,567.5": commas that only group thousands.
bool IsThousandsGrouped(absl::string_view s) {
  absl::ConsumePrefix(&s, "-");
  const size_t point = s.find('.');
  if (point != absl::string_view::npos) {
    if (!IsUnsignedInteger(s.substr(point + 1))) return false;
    s = s.substr(0, point);
  }
  const std::vector<absl::string_view> groups = absl::StrSplit(s, ',');
  if (groups.size() < 2 || groups[0].empty() || groups[0].size() > 3) return false;
  for (size_t i = 0; i < groups.size(); ++i) {
    if (!IsUnsignedInteger(groups[i]) || (i > 0 && groups[i].size() != 3)) return false;
  }
  return true;
}

bool EvaluatesWithoutVariables(absl::string_view s) {
  std::optional<std::string> expr = LatexToExpr(s);
  uint32_t variables = 0;
  return expr && RealExprParser(*expr, 0, &variables).Parse() && variables == 0;
}

MathAnswer ParseMathAnswer(absl::string_view raw, int depth) {
  MathAnswer answer;
  if (depth > kMaxAnswerDepth) return answer;
  std::string s = StripAnswerDressing(raw);
  // "x = 5", "y=2x+1", "x \in [1, 2]": the value is what follows.
  if (s.size() >= 2 && IsAsciiAlpha(s[0]) && !IsAsciiAlpha(s[1])) {
    absl::string_view rest = absl::StripLeadingAsciiWhitespace(absl::string_view(s).substr(1));
    if ((absl::ConsumePrefix(&rest, "=") && !absl::StartsWith(rest, "=")) ||
        absl::ConsumePrefix(&rest, "\\in")) {
      s = std::string(absl::StripAsciiWhitespace(rest));
    }
  }
  if (IsThousandsGrouped(s)) s = absl::StrReplaceAll(s, {{",", ""}});

  // Lists: \{a, b\}, (a, b], a, b.
  absl::string_view view = s;
  std::vector<absl::string_view> parts;
  if (absl::StartsWith(view, "\\{") && absl::EndsWith(view, "\\}") && view.size() >= 4) {
    answer.open = '{';
    answer.close = '}';
    parts = SplitTopLevelCommas(view.substr(2, view.size() - 4));
  } else if (view.size() >= 2 && (view[0] == '(' || view[0] == '[') &&
             (view.back() == ')' || view.back() == ']') &&
             MatchingClose(view, 0) == view.size() - 1 &&
             SplitTopLevelCommas(view.substr(1, view.size() - 2)).size() > 1) {
    answer.open = view[0];
    answer.close = view.back();
    parts = SplitTopLevelCommas(view.substr(1, view.size() - 2));
  } else if (SplitTopLevelCommas(view).size() > 1) {
    parts = SplitTopLevelCommas(view);
  }
  if (!parts.empty()) {
    answer.is_list = true;
    for (absl::string_view part : parts) {
      answer.elements.push_back(ParseMathAnswer(part, depth + 1));
    }
    answer.text = absl::StrReplaceAll(s, {{" ", ""}});
    return answer;
  }

  absl::string_view scalar = s;
  if (absl::ConsumeSuffix(&scalar, "%") || absl::ConsumeSuffix(&scalar, " percent")) {
    answer.percent = true;
    scalar = absl::StripTrailingAsciiWhitespace(scalar);
  }
  // Trailing unit words go when a number remains ("5 cm", "3 square feet", "4 m^2").
  for (absl::string_view candidate = scalar;;) {
    for (absl::string_view power : {"^2", "^{2}", "^3", "^{3}"}) {
      if (absl::ConsumeSuffix(&candidate, power)) break;
    }
    candidate = absl::StripTrailingAsciiWhitespace(candidate);
    size_t word = candidate.size();
    while (word > 0 && IsAsciiAlpha(candidate[word - 1])) --word;
    if (word == candidate.size() || !IsUnitWord(candidate.substr(word))) break;
    candidate = absl::StripTrailingAsciiWhitespace(candidate.substr(0, word));
    if (candidate.empty()) break;
    if (EvaluatesWithoutVariables(candidate)) {
      scalar = candidate;
      break;
    }
  }
  answer.text = absl::StrReplaceAll(scalar, {{" ", ""}});
  answer.expr = LatexToExpr(scalar);
  return answer;
}

bool ValuesClose(double a, double b) {
  if (std::isinf(a) || std::isinf(b)) return a == b;
  const double diff = std::fabs(a - b);
  if (a == 0 || b == 0) return diff <= 1e-12;
  return diff <= kAnswerRelTol * std::max(std::fabs(a), std::fabs(b));
}

bool ScalarsEquivalent(const MathAnswer& a, const MathAnswer& b) {
  if (a.text.empty() || b.text.empty()) return false;
  if (a.text == b.text) return true;
  if (!a.expr || !b.expr) return false;
  uint32_t variables_a = 0, variables_b = 0;
  std::optional<double> x = RealExprParser(*a.expr, 0, &variables_a).Parse();
  std::optional<double> y = RealExprParser(*b.expr, 0, &variables_b).Parse();
  if (!x || !y || variables_a != variables_b) return false;
  if (variables_a == 0) {
    for (double u : {*x, a.percent ? *x / 100 : *x}) {
      for (double v : {*y, b.percent ? *y / 100 : *y}) {
        if (ValuesClose(u, v)) return true;
      }
    }
    return false;
  }
  // Equal as functions, to the precision that three generic points can tell.
  for (int point = 0; point < 3; ++point) {
    x = RealExprParser(*a.expr, point, &variables_a).Parse();
    y = RealExprParser(*b.expr, point, &variables_b).Parse();
    if (!x || !y || !ValuesClose(*x, *y)) return false;
  }
  return true;
}

bool Equivalent(const MathAnswer& a, const MathAnswer& b) {
  if (!a.is_list && !b.is_list) return ScalarsEquivalent(a, b);
  if (a.is_list != b.is_list || a.elements.size() != b.elements.size()) return false;
  const bool a_ordered = a.open == '(' || a.open == '[';
  const bool b_ordered = b.open == '(' || b.open == '[';
  if (a_ordered && b_ordered && (a.open != b.open || a.close != b.close)) return false;
  const bool ordered = (a_ordered || b_ordered) && a.open != '{' && b.open != '{';
  if (ordered) {
    for (size_t i = 0; i < a.elements.size(); ++i) {
      if (!Equivalent(a.elements[i], b.elements[i])) return false;
    }
    return true;
  }
  std::vector<bool> used(b.elements.size(), false);
  for (const MathAnswer& element : a.elements) {
    bool found = false;
    for (size_t j = 0; j < b.elements.size() && !found; ++j) {
      if (!used[j] && Equivalent(element, b.elements[j])) used[j] = found = true;
    }
    if (!found) return false;
  }
  return true;
}

bool IsNumericAnswer(const MathAnswer& answer) {
  if (answer.is_list) {
    return std::all_of(answer.elements.begin(), answer.elements.end(),
                       [](const MathAnswer& e) { return !e.is_list && IsNumericAnswer(e); });
  }
  uint32_t variables = 0;
  return answer.expr && RealExprParser(*answer.expr, 0, &variables).Parse() && variables == 0;
}

// The text after an answer marker, when all of it reads as the answer (a number, an
// expression, a tuple, possibly with a unit or a percent sign); the caller falls back
// to the last number in it otherwise ("42 apples because ...").
std::optional<std::string> WholeMarkerAnswer(absl::string_view text) {
  absl::ConsumePrefix(&text, ":");
  text = absl::StripAsciiWhitespace(text);
  while (absl::ConsumeSuffix(&text, ".")) text = absl::StripTrailingAsciiWhitespace(text);
  if (text.empty() || text.size() > kMaxAnswerChars ||
      !IsNumericAnswer(ParseMathAnswer(text, 0))) {
    return std::nullopt;
  }
  return std::string(text);
}

}  // namespace

std::optional<std::string> ExtractFinalAnswer(absl::string_view response) {
  size_t boxed = response.rfind("\\boxed{");
  if (boxed != absl::string_view::npos) {
    size_t i = boxed + 7;
    int depth = 1;
    size_t start = i;
    for (; i < response.size() && depth > 0; ++i) {
      if (response[i] == '{') ++depth;
      if (response[i] == '}') --depth;
    }
    if (depth == 0) return std::string(absl::StripAsciiWhitespace(response.substr(start, i - 1 - start)));
  }
  for (absl::string_view marker : {"####", "answer is", "Answer:", "answer:"}) {
    size_t at = response.rfind(marker);
    if (at != absl::string_view::npos) {
      absl::string_view rest = absl::StripAsciiWhitespace(response.substr(at + marker.size()));
      if (auto whole = WholeMarkerAnswer(rest.substr(0, rest.find('\n')))) return whole;
      if (auto n = LastNumber(rest.substr(0, rest.find('\n')))) return n;
      if (!rest.empty()) return std::string(rest.substr(0, rest.find('\n')));
    }
  }
  return LastNumber(response);
}

bool AnswersMatch(absl::string_view answer, absl::string_view ground_truth) {
  if (answer.size() > kMaxAnswerChars || ground_truth.size() > kMaxAnswerChars) {
    const absl::string_view a = absl::StripAsciiWhitespace(answer);
    return !a.empty() && absl::EqualsIgnoreCase(a, absl::StripAsciiWhitespace(ground_truth));
  }
  return Equivalent(ParseMathAnswer(answer, 0), ParseMathAnswer(ground_truth, 0));
}

std::optional<double> EvaluateExpression(absl::string_view expr, std::vector<double>* numbers_used) {
  return ExprParser(expr, numbers_used).Parse();
}

}  // namespace lightrl
