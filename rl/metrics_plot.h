// `lightrl plot`'s work: read runs' metrics.jsonl files as untrusted input (bounded line
// length, line count and metric count; errors name file:line) and draw one PNG line chart
// per metric, the runs overlaid. SFT metrics (logged at steps <= 0) are drawn against
// their own SFT step. Torch-free; the chart and the PNG are common/line_chart.h's and
// common/png.h's, the metric names the trainer's (docs/metrics.md).
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace lightrl {

// The metrics drawn when none are named, each only where some run logged it.
extern const char* const kDefaultPlotMetrics[8];

struct MetricsReadLimits {
  int64_t max_line_bytes = int64_t{1} << 20;  // longer lines are an error
  int64_t max_lines = 2'000'000;              // lines per file
  int64_t max_metrics = 4096;                 // distinct metric names kept per file
};

// Metric name -> (step, value) in step order; a step logged twice keeps its last value,
// null values (non-finite when logged) are skipped.
using MetricsByName = std::map<std::string, std::vector<std::pair<int64_t, double>>>;

// Reads one metrics.jsonl: every non-blank line must be a JSON object with an integer
// "step"; other fields must be numbers or null ("time" is ignored). With `keep` non-null
// only those names are kept. INVALID_ARGUMENT "FILE:LINE: what is wrong" otherwise.
absl::StatusOr<MetricsByName> ReadMetricsJsonl(const std::string& path,
                                               const std::set<std::string>* keep = nullptr,
                                               const MetricsReadLimits& limits = {});

struct PlotOptions {
  // Run directories holding metrics.jsonl, or metrics.jsonl files themselves.
  std::vector<std::string> runs;
  // Where the PNGs go (created if missing): one per metric, '/' in its name as '_'.
  std::string output_dir;
  // Metric names; empty: those of kDefaultPlotMetrics that some run logged.
  std::vector<std::string> metrics;
  int width = 800;
  int height = 480;
  MetricsReadLimits limits;
  absl::Status Validate() const;
};

// Writes the charts; returns the paths written. A named metric no run logged is an error
// listing the metrics the runs have.
absl::StatusOr<std::vector<std::string>> PlotMetrics(const PlotOptions& options);

}  // namespace lightrl
