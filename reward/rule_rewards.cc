#include "reward/rule_rewards.h"

#include <cctype>
#include <cmath>
#include <cstdlib>

#include "absl/strings/ascii.h"
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

std::string Normalize(absl::string_view s) {
  std::string out = absl::StrReplaceAll(
      absl::AsciiStrToLower(absl::StripAsciiWhitespace(s)),
      {{",", ""}, {"$", ""}, {" ", ""}, {"\\%", ""}, {"%", ""}, {"\\!", ""}, {"\\text{", ""}});
  while (!out.empty() && (out.back() == '.' || out.back() == '}')) {
    if (out.back() == '}' && out.find('{') != std::string::npos) break;
    out.pop_back();
  }
  return out;
}

std::optional<double> ParseNumber(const std::string& s) {
  double v;
  if (absl::SimpleAtod(s, &v) && std::isfinite(v)) return v;
  // \frac{a}{b} and a/b
  std::string t = s;
  if (t.rfind("\\frac{", 0) == 0 || t.rfind("\\dfrac{", 0) == 0) {
    size_t open = t.find('{');
    size_t mid = t.find("}{", open);
    size_t close = t.rfind('}');
    if (mid != std::string::npos && close != std::string::npos && close > mid) {
      double a, b;
      if (absl::SimpleAtod(t.substr(open + 1, mid - open - 1), &a) &&
          absl::SimpleAtod(t.substr(mid + 2, close - mid - 2), &b) && b != 0) {
        return a / b;
      }
    }
  }
  size_t slash = t.find('/');
  if (slash != std::string::npos) {
    double a, b;
    if (absl::SimpleAtod(t.substr(0, slash), &a) && absl::SimpleAtod(t.substr(slash + 1), &b) && b != 0) {
      return a / b;
    }
  }
  return std::nullopt;
}

// Recursive-descent evaluator: expr := term (('+'|'-') term)*, term := factor (('*'|'/')
// factor)*, factor := number | '(' expr ')' | '-' factor.
class ExprParser {
 public:
  ExprParser(absl::string_view s, std::vector<double>* used) : s_(s), used_(used) {}
  std::optional<double> Parse() {
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
  std::vector<double>* used_;
};

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
      if (auto n = LastNumber(rest.substr(0, rest.find('\n')))) return n;
      if (!rest.empty()) return std::string(rest.substr(0, rest.find('\n')));
    }
  }
  return LastNumber(response);
}

bool AnswersMatch(absl::string_view answer, absl::string_view ground_truth) {
  const std::string a = Normalize(answer), g = Normalize(ground_truth);
  if (a.empty() || g.empty()) return false;
  auto x = ParseNumber(a), y = ParseNumber(g);
  if (x && y) return std::fabs(*x - *y) <= 1e-6 * std::max(1.0, std::fabs(*y));
  return a == g;
}

RewardResult MathReward(absl::string_view response, absl::string_view ground_truth) {
  RewardResult r;
  auto answer = ExtractFinalAnswer(response);
  r.score = answer && AnswersMatch(*answer, ground_truth) ? 1.0 : 0.0;
  r.components = {{"correct", r.score}, {"has_answer", answer ? 1.0 : 0.0}};
  return r;
}

std::optional<double> EvaluateExpression(absl::string_view expr, std::vector<double>* numbers_used) {
  return ExprParser(expr, numbers_used).Parse();
}

absl::StatusOr<RewardResult> CountdownReward(absl::string_view response,
                                             absl::string_view ground_truth) {
  // "target: 24; numbers: 3 4 6 1"
  double target = 0;
  std::vector<double> numbers;
  bool have_target = false, have_numbers = false;
  for (absl::string_view part : absl::StrSplit(ground_truth, ';')) {
    std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(part, absl::MaxSplits(':', 1));
    absl::string_view key = absl::StripAsciiWhitespace(kv.first);
    absl::string_view value = absl::StripAsciiWhitespace(kv.second);
    if (key == "target") {
      have_target = absl::SimpleAtod(value, &target);
    } else if (key == "numbers") {
      for (absl::string_view n : absl::StrSplit(value, ' ', absl::SkipEmpty())) {
        double v;
        if (!absl::SimpleAtod(n, &v)) {
          return absl::InvalidArgumentError(absl::StrCat("countdown ground truth: bad number \"", n, "\""));
        }
        numbers.push_back(v);
      }
      have_numbers = !numbers.empty();
    }
  }
  if (!have_target || !have_numbers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "countdown ground truth must be \"target: N; numbers: a b ...\", got \"", ground_truth, "\""));
  }
  absl::string_view expr = response;
  size_t at = response.rfind("nswer:");
  if (at != absl::string_view::npos) expr = response.substr(at + 6);
  expr = absl::StripAsciiWhitespace(expr.substr(0, expr.find('\n')));
  if (size_t eq = expr.find('='); eq != absl::string_view::npos) expr = expr.substr(0, eq);
  RewardResult r;
  std::vector<double> used;
  auto value = EvaluateExpression(expr, &used);
  bool numbers_ok = value.has_value();
  std::vector<double> pool = numbers;
  for (double u : used) {
    auto it = std::find(pool.begin(), pool.end(), u);
    if (it == pool.end()) {
      numbers_ok = false;
      break;
    }
    pool.erase(it);
  }
  const bool correct = numbers_ok && std::fabs(*value - target) < 1e-9;
  r.score = correct ? 1.0 : numbers_ok ? 0.1 : 0.0;
  r.components = {{"correct", correct ? 1.0 : 0.0}, {"well_formed", numbers_ok ? 1.0 : 0.0}};
  return r;
}

double LengthPenalty(int64_t length, int64_t max_len, int64_t buffer) {
  if (buffer <= 0 || length <= max_len - buffer) return 0;
  if (length >= max_len) return -1;
  return -static_cast<double>(length - (max_len - buffer)) / static_cast<double>(buffer);
}

}  // namespace lightrl
