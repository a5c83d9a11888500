// An RGB raster for charts: pixels, filled rectangles, lines and text in a built-in 5x7
// bitmap font (digits, letters, common punctuation; other characters draw as '?'). Owns
// pixels only; chart layout is common/line_chart.h's, the file format common/png.h's.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace lightrl {

struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
  bool operator==(const Rgb& o) const { return r == o.r && g == o.g && b == o.b; }
  bool operator!=(const Rgb& o) const { return !(*this == o); }
};

class Canvas {
 public:
  // Glyph cell of the font at scale 1: 5x7 pixels plus one column and row of spacing.
  static constexpr int kGlyphWidth = 6;
  static constexpr int kGlyphHeight = 8;

  Canvas(int width, int height, Rgb background);

  int width() const { return width_; }
  int height() const { return height_; }
  // Row-major, 3 bytes a pixel, top row first (what EncodePng takes).
  const std::vector<uint8_t>& pixels() const { return pixels_; }

  // Pixels outside the canvas are ignored by every drawing call.
  void Set(int x, int y, Rgb color);
  Rgb Get(int x, int y) const;
  void FillRect(int x0, int y0, int x1, int y1, Rgb color);  // inclusive corners
  // A line from (x0, y0) to (x1, y1), both ends included, `thickness` pixels wide (extra
  // pixels go below/right of the centre line).
  void DrawLine(int x0, int y0, int x1, int y1, Rgb color, int thickness = 1);
  // Text with its top-left corner at (x, y); each font pixel is `scale` x `scale`.
  void DrawText(int x, int y, absl::string_view text, Rgb color, int scale = 1);
  // The same text drawn rotated a quarter turn anticlockwise (reading bottom to top), its
  // first character's bottom-left at (x, y).
  void DrawTextVertical(int x, int y, absl::string_view text, Rgb color, int scale = 1);
  static int TextWidth(absl::string_view text, int scale = 1) {
    return static_cast<int>(text.size()) * kGlyphWidth * scale;
  }

 private:
  int width_;
  int height_;
  std::vector<uint8_t> pixels_;
};

}  // namespace lightrl
