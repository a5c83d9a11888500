#include "rl/metrics_plot.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/ascii.h"
#include "common/file_util.h"
#include "common/json.h"
#include "common/line_chart.h"
#include "common/png.h"
#include "common/status.h"

namespace lightrl {

const char* const kDefaultPlotMetrics[8] = {
    "reward/mean",  "reward/accuracy",      "eval/accuracy",     "eval/accuracy_sampled",
    "loss/policy",  "is/clip_fraction",     "response/length_mean", "sft/loss"};

namespace {

constexpr size_t kMaxLegendChars = 60;
constexpr size_t kMaxRuns = 64;
constexpr size_t kMaxPlottedMetrics = 256;

absl::Status LineError(const std::string& path, int64_t line, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ":", line, ": ", what));
}

// One line of metrics.jsonl into `out`.
absl::Status ParseLine(const std::string& path, int64_t line_no, absl::string_view line,
                       const std::set<std::string>* keep, const MetricsReadLimits& limits,
                       std::map<std::string, std::map<int64_t, double>>& out) {
  if (line.find_first_not_of(" \t\r") == absl::string_view::npos) return absl::OkStatus();
  auto json = Json::Parse(line);
  if (!json.ok()) return LineError(path, line_no, absl::StrCat("not JSON: ", json.status().message()));
  if (!json->is_object()) {
    return LineError(path, line_no, absl::StrCat("expected a JSON object, got ", json->type_name()));
  }
  const Json* step = json->find("step");
  if (step == nullptr) return LineError(path, line_no, "no \"step\"");
  if (!step->is_int()) {
    return LineError(path, line_no, absl::StrCat("\"step\" must be an integer, got ", step->Dump()));
  }
  for (const auto& [name, value] : json->as_object()) {
    if (name == "step" || name == "time") continue;
    if (keep != nullptr && keep->count(name) == 0) continue;
    if (value.is_null()) continue;
    if (!value.is_number()) {
      std::string shown = value.Dump();
      if (shown.size() > 40) shown = shown.substr(0, 40) + "...";
      return LineError(path, line_no, absl::StrCat("\"", name, "\" must be a number or null, got ", shown));
    }
    if (!std::isfinite(value.as_double())) continue;
    auto it = out.find(name);
    if (it == out.end()) {
      if (static_cast<int64_t>(out.size()) >= limits.max_metrics) {
        return LineError(path, line_no, absl::StrCat("more than ", limits.max_metrics, " metric names"));
      }
      it = out.emplace(name, std::map<int64_t, double>()).first;
    }
    it->second[step->as_int()] = value.as_double();
  }
  return absl::OkStatus();
}

std::string MetricsPath(const std::string& run) {
  return IsDirectory(run) ? JoinPath(run, "metrics.jsonl") : run;
}

// Legend names: each run's last path component, or the whole path where two share one.
std::vector<std::string> RunLabels(const std::vector<std::string>& runs) {
  auto base = [](std::string p) {
    while (p.size() > 1 && p.back() == '/') p.pop_back();
    if (absl::EndsWith(p, "/metrics.jsonl")) p.resize(p.size() - 14);
    const size_t slash = p.rfind('/');
    return slash == std::string::npos ? p : p.substr(slash + 1);
  };
  std::vector<std::string> labels;
  for (const std::string& r : runs) labels.push_back(base(r));
  for (size_t i = 0; i < labels.size(); ++i) {
    for (size_t j = 0; j < labels.size(); ++j) {
      if (i != j && base(runs[i]) == base(runs[j])) labels[i] = runs[i];
    }
  }
  for (std::string& l : labels) {
    if (l.size() > kMaxLegendChars) l = "..." + l.substr(l.size() - kMaxLegendChars + 3);
  }
  return labels;
}

}  // namespace

absl::StatusOr<MetricsByName> ReadMetricsJsonl(const std::string& path,
                                               const std::set<std::string>* keep,
                                               const MetricsReadLimits& limits) {
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (file == nullptr) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  }
  std::map<std::string, std::map<int64_t, double>> by_step;
  std::string line;
  int64_t line_no = 1;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), file.get())) > 0) {
    for (size_t i = 0; i < n; ++i) {
      if (buf[i] != '\n') {
        if (static_cast<int64_t>(line.size()) >= limits.max_line_bytes) {
          return LineError(path, line_no, absl::StrCat("line longer than ", limits.max_line_bytes, " bytes"));
        }
        line.push_back(buf[i]);
        continue;
      }
      RETURN_IF_ERROR(ParseLine(path, line_no, line, keep, limits, by_step));
      line.clear();
      if (++line_no > limits.max_lines) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": more than ", limits.max_lines, " lines"));
      }
    }
  }
  if (std::ferror(file.get())) {
    return absl::InternalError(absl::StrCat(path, ":", line_no, ": read failed: ", std::strerror(errno)));
  }
  RETURN_IF_ERROR(ParseLine(path, line_no, line, keep, limits, by_step));
  MetricsByName out;
  for (auto& [name, steps] : by_step) {
    auto& series = out[name];
    series.assign(steps.begin(), steps.end());
  }
  return out;
}

absl::Status PlotOptions::Validate() const {
  if (runs.empty()) return absl::InvalidArgumentError("--run: name at least one run directory");
  if (runs.size() > kMaxRuns) {
    return absl::InvalidArgumentError(absl::StrCat("--run: at most ", kMaxRuns, " runs, got ", runs.size()));
  }
  if (output_dir.empty()) return absl::InvalidArgumentError("--output: required");
  if (metrics.size() > kMaxPlottedMetrics) {
    return absl::InvalidArgumentError(
        absl::StrCat("--metrics: at most ", kMaxPlottedMetrics, " names, got ", metrics.size()));
  }
  for (const std::string& m : metrics) {
    if (m.empty() || m.size() > 200 || m.find("..") != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("--metrics: \"", m, "\" is not a metric name"));
    }
  }
  LineChartOptions chart;
  chart.width = width;
  chart.height = height;
  return chart.Validate();
}

absl::StatusOr<std::vector<std::string>> PlotMetrics(const PlotOptions& options) {
  RETURN_IF_ERROR(options.Validate());
  const std::set<std::string> named(options.metrics.begin(), options.metrics.end());
  std::vector<MetricsByName> runs;
  for (const std::string& run : options.runs) {
    ASSIGN_OR_RETURN(MetricsByName m, ReadMetricsJsonl(MetricsPath(run), named.empty() ? nullptr : &named,
                                                       options.limits));
    runs.push_back(std::move(m));
  }
  std::vector<std::string> metrics = options.metrics;
  if (metrics.empty()) {
    for (const char* name : kDefaultPlotMetrics) {
      for (const MetricsByName& r : runs) {
        if (r.count(name)) {
          metrics.push_back(name);
          break;
        }
      }
    }
    if (metrics.empty()) {
      std::set<std::string> have;
      for (const MetricsByName& r : runs) for (const auto& [name, _] : r) have.insert(name);
      return absl::NotFoundError(absl::StrCat(
          "the runs log none of the default metrics (", absl::StrJoin(kDefaultPlotMetrics, ", "),
          "); name some with --metrics; they log: ", have.empty() ? "nothing" : absl::StrJoin(have, ", ")));
    }
  } else {
    for (const std::string& name : metrics) {
      bool found = false;
      for (const MetricsByName& r : runs) found = found || r.count(name) > 0;
      if (!found) {
        return absl::NotFoundError(absl::StrCat("no run logged \"", name, "\" (runs: ",
                                                absl::StrJoin(options.runs, ", "), ")"));
      }
    }
  }

  RETURN_IF_ERROR(MakeDirs(options.output_dir));
  const std::vector<std::string> labels = RunLabels(options.runs);
  std::vector<std::string> written;
  for (const std::string& name : metrics) {
    // SFT steps k = 1..N are logged at step k - N; drawn by k, counted from each run's first.
    const bool sft = absl::StartsWith(name, "sft/");
    std::vector<ChartSeries> series;
    for (size_t r = 0; r < runs.size(); ++r) {
      ChartSeries s;
      s.label = labels[r];
      auto it = runs[r].find(name);
      if (it != runs[r].end() && !it->second.empty()) {
        const int64_t first = it->second.front().first;
        for (const auto& [step, value] : it->second) {
          s.points.emplace_back(static_cast<double>(sft ? step - first + 1 : step), value);
        }
      }
      series.push_back(std::move(s));
    }
    LineChartOptions chart;
    chart.width = options.width;
    chart.height = options.height;
    chart.title = name;
    chart.x_label = sft ? "SFT step" : "step";
    chart.y_label = name;
    ASSIGN_OR_RETURN(Canvas canvas, RenderLineChart(chart, series));
    ASSIGN_OR_RETURN(std::string png, EncodePng(canvas.width(), canvas.height(), canvas.pixels()));
    std::string file = name;
    for (char& c : file) {
      if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-') c = '_';
    }
    const std::string path = JoinPath(options.output_dir, file + ".png");
    RETURN_IF_ERROR(WriteFileAtomic(path, png));
    written.push_back(path);
  }
  return written;
}

}  // namespace lightrl
