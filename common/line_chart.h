// A line chart rendered to a Canvas: series of (x, y) points overlaid on one pair of axes
// with "nice" ticks (1, 2 or 5 times a power of ten), grid, tick labels, axis labels, a
// title and a legend. Owns the layout and the data-to-pixel mapping; drawing primitives
// are common/canvas.h's, reading metrics and writing files are its callers'.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "common/canvas.h"

namespace lightrl {

struct ChartSeries {
  std::string label;                              // the legend's text
  std::vector<std::pair<double, double>> points;  // (x, y), drawn in this order; finite
};

struct LineChartOptions {
  int width = 800;   // pixels, 200..4096
  int height = 480;  // pixels, 150..4096
  std::string title;
  std::string x_label;
  std::string y_label;
  absl::Status Validate() const;
};

// Where the data landed: the plot rectangle in pixels and the axis ranges it spans.
struct ChartFrame {
  int left = 0, top = 0, right = 0, bottom = 0;  // inclusive pixel bounds of the plot
  double x_min = 0, x_max = 1, y_min = 0, y_max = 1;
  int XPixel(double x) const;
  int YPixel(double y) const;
};

// The colour series `i` is drawn in (a fixed palette, repeated past its end).
Rgb SeriesColor(size_t i);

// Renders the chart; series without points are listed in the legend only. A non-finite
// point is INVALID_ARGUMENT naming the series. `frame` (may be null) receives the layout.
absl::StatusOr<Canvas> RenderLineChart(const LineChartOptions& options,
                                       const std::vector<ChartSeries>& series,
                                       ChartFrame* frame = nullptr);

}  // namespace lightrl
