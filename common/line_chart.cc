#include "common/line_chart.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace lightrl {
namespace {

constexpr Rgb kWhite{255, 255, 255};
constexpr Rgb kBlack{0, 0, 0};
constexpr Rgb kGrid{225, 225, 225};
constexpr Rgb kPalette[] = {{31, 119, 180}, {255, 127, 14}, {44, 160, 44},  {214, 39, 40},
                            {148, 103, 189}, {140, 86, 75}, {227, 119, 194}, {127, 127, 127}};
constexpr int kMaxTicks = 8;

struct Axis {
  double min = 0, max = 1, step = 1;
};

// Ticks at multiples of 1, 2 or 5 x 10^k covering [lo, hi] in about six steps.
Axis NiceAxis(double lo, double hi) {
  if (hi < lo) std::swap(lo, hi);
  if (hi == lo) {
    const double pad = lo == 0 ? 1 : std::abs(lo) * 0.1;
    lo -= pad;
    hi += pad;
  }
  const double raw = (hi - lo) / 6;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double norm = raw / mag;
  const double step = (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
  Axis a;
  a.step = step;
  a.min = std::floor(lo / step) * step;
  a.max = std::ceil(hi / step) * step;
  if (a.max == a.min) a.max = a.min + step;
  return a;
}

std::string TickLabel(double v, double step) {
  if (std::abs(v) < step * 1e-9) v = 0;  // -0 and rounding noise
  const double big = std::max(std::abs(v), step);
  if (big >= 1e6 || step < 1e-4) return absl::StrFormat("%.3g", v);
  const int decimals = std::max(0, static_cast<int>(-std::floor(std::log10(step) + 1e-9)));
  return absl::StrFormat("%.*f", decimals, v);
}

}  // namespace

absl::Status LineChartOptions::Validate() const {
  if (width < 200 || width > 4096 || height < 150 || height > 4096) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chart size must be 200..4096 x 150..4096 pixels, got ", width, "x", height));
  }
  return absl::OkStatus();
}

int ChartFrame::XPixel(double x) const {
  return left + static_cast<int>(std::lround((x - x_min) / (x_max - x_min) * (right - left)));
}

int ChartFrame::YPixel(double y) const {
  return bottom - static_cast<int>(std::lround((y - y_min) / (y_max - y_min) * (bottom - top)));
}

Rgb SeriesColor(size_t i) { return kPalette[i % (sizeof(kPalette) / sizeof(kPalette[0]))]; }

absl::StatusOr<Canvas> RenderLineChart(const LineChartOptions& options,
                                       const std::vector<ChartSeries>& series,
                                       ChartFrame* frame_out) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  double x_lo = INFINITY, x_hi = -INFINITY, y_lo = INFINITY, y_hi = -INFINITY;
  for (const ChartSeries& s : series) {
    for (const auto& [x, y] : s.points) {
      if (!std::isfinite(x) || !std::isfinite(y)) {
        return absl::InvalidArgumentError(
            absl::StrCat("series \"", s.label, "\" has a non-finite point (", x, ", ", y, ")"));
      }
      x_lo = std::min(x_lo, x);
      x_hi = std::max(x_hi, x);
      y_lo = std::min(y_lo, y);
      y_hi = std::max(y_hi, y);
    }
  }
  if (x_lo > x_hi) x_lo = x_hi = y_lo = y_hi = 0;
  const Axis xa = NiceAxis(x_lo, x_hi), ya = NiceAxis(y_lo, y_hi);

  Canvas canvas(options.width, options.height, kWhite);
  ChartFrame f;
  f.left = 78;
  f.right = options.width - 24;
  f.bottom = options.height - 52;

  // Legend: entries flow left to right under the title, wrapping, above the plot so that
  // it never hides data.
  constexpr int kRowHeight = 12, kSwatch = 14;
  int lx = f.left, ly = 36;
  for (size_t i = 0; i < series.size(); ++i) {
    const int entry = kSwatch + 4 + Canvas::TextWidth(series[i].label) + 16;
    if (lx + entry > f.right && lx > f.left) {
      lx = f.left;
      ly += kRowHeight;
    }
    canvas.FillRect(lx, ly + 2, lx + kSwatch - 1, ly + 4, SeriesColor(i));
    canvas.DrawText(lx + kSwatch + 4, ly, series[i].label, kBlack);
    lx += entry;
  }
  f.top = series.empty() ? 40 : ly + kRowHeight + 8;
  f.top = std::min(f.top, f.bottom - 40);
  f.x_min = xa.min;
  f.x_max = xa.max;
  f.y_min = ya.min;
  f.y_max = ya.max;

  // Grid and tick labels.
  const int x_ticks = static_cast<int>(std::lround((xa.max - xa.min) / xa.step));
  const int x_every = x_ticks / kMaxTicks + 1;
  for (int i = 0; i <= x_ticks; i += x_every) {
    const double v = xa.min + i * xa.step;
    const int px = f.XPixel(v);
    canvas.DrawLine(px, f.top, px, f.bottom, kGrid);
    const std::string label = TickLabel(v, xa.step);
    canvas.DrawText(px - Canvas::TextWidth(label) / 2, f.bottom + 6, label, kBlack);
  }
  const int y_ticks = static_cast<int>(std::lround((ya.max - ya.min) / ya.step));
  const int y_every = y_ticks / kMaxTicks + 1;
  for (int i = 0; i <= y_ticks; i += y_every) {
    const double v = ya.min + i * ya.step;
    const int py = f.YPixel(v);
    canvas.DrawLine(f.left, py, f.right, py, kGrid);
    const std::string label = TickLabel(v, ya.step);
    canvas.DrawText(f.left - 6 - Canvas::TextWidth(label), py - 3, label, kBlack);
  }
  canvas.DrawLine(f.left, f.top, f.left, f.bottom, kBlack);
  canvas.DrawLine(f.left, f.bottom, f.right, f.bottom, kBlack);

  // Titles.
  canvas.DrawText((options.width - Canvas::TextWidth(options.title, 2)) / 2, 12, options.title,
                  kBlack, 2);
  canvas.DrawText((f.left + f.right - Canvas::TextWidth(options.x_label)) / 2, f.bottom + 24,
                  options.x_label, kBlack);
  canvas.DrawTextVertical(8, (f.top + f.bottom + Canvas::TextWidth(options.y_label)) / 2,
                          options.y_label, kBlack);

  // Series: lines 2 pixels wide, and a dot on each point when there are few.
  for (size_t i = 0; i < series.size(); ++i) {
    const Rgb color = SeriesColor(i);
    const auto& pts = series[i].points;
    const bool dots = pts.size() <= 40;
    for (size_t k = 0; k < pts.size(); ++k) {
      const int px = f.XPixel(pts[k].first), py = f.YPixel(pts[k].second);
      if (k > 0) {
        canvas.DrawLine(f.XPixel(pts[k - 1].first), f.YPixel(pts[k - 1].second), px, py, color, 2);
      }
      if (dots || pts.size() == 1) canvas.FillRect(px - 1, py - 1, px + 1, py + 1, color);
    }
  }

  if (frame_out != nullptr) *frame_out = f;
  return canvas;
}

}  // namespace lightrl
