// Charts of metrics: the PNG encoder's checksums, a rendered chart decoded by an
// independent decoder (Python's zlib and Pillow in a child process) pixel for pixel, the
// pixels of known lines, and metrics.jsonl read as hostile input (errors name file:line).
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "common/canvas.h"
#include "common/file_util.h"
#include "common/line_chart.h"
#include "common/png.h"
#include "rl/metrics_plot.h"

namespace lightrl {
namespace {

std::string MakeTempDir() {
  std::string pattern = JoinPath(testing::TempDir(), "plot_test.XXXXXX");
  EXPECT_NE(::mkdtemp(pattern.data()), nullptr);
  return pattern;
}

// Decodes `png` with Python: walks the chunks checking each CRC with zlib.crc32, inflates
// IDAT with zlib (which checks Adler-32), undoes the filters, and compares with Pillow's
// decode; writes the RGB bytes to `raw` and returns the exit status.
int DecodeWithPython(const std::string& png, const std::string& raw) {
  static const char* kScript = R"(
import struct, sys, zlib
from PIL import Image
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", "signature"
pos, idat, width, height = 8, b"", 0, 0
while pos < len(data):
    (n,) = struct.unpack(">I", data[pos:pos + 4])
    kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
    (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
    assert zlib.crc32(kind + body) == crc, f"CRC of {kind}"
    if kind == b"IHDR":
        width, height, depth, color = struct.unpack(">IIBB", body[:10])
        assert (depth, color) == (8, 2), (depth, color)
    elif kind == b"IDAT":
        idat += body
    pos += 12 + n
rows = zlib.decompress(idat)
stride = width * 3 + 1
assert len(rows) == stride * height, (len(rows), stride, height)
assert all(rows[y * stride] == 0 for y in range(height)), "filter type"
plain = b"".join(rows[y * stride + 1:(y + 1) * stride] for y in range(height))
im = Image.open(sys.argv[1])
im.load()
assert im.mode == "RGB" and im.size == (width, height), (im.mode, im.size)
assert im.tobytes() == plain, "Pillow and zlib disagree"
open(sys.argv[2], "wb").write(plain)
)";
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::execl(LIGHTRL_PYTHON, LIGHTRL_PYTHON, "-c", kScript, png.c_str(), raw.c_str(),
            static_cast<char*>(nullptr));
    ::_exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::vector<uint8_t> DecodedPixels(const std::string& png_bytes, const std::string& dir) {
  const std::string png = JoinPath(dir, "chart.png"), raw = JoinPath(dir, "chart.rgb");
  EXPECT_TRUE(WriteFileAtomic(png, png_bytes).ok());
  EXPECT_EQ(DecodeWithPython(png, raw), 0) << "the PNG does not decode";
  auto bytes = ReadFile(raw);
  if (!bytes.ok()) return {};
  return std::vector<uint8_t>(bytes->begin(), bytes->end());
}

TEST(PngTest, Checksums) {
  EXPECT_EQ(Crc32("123456789", 9), 0xCBF43926u);
  EXPECT_EQ(Adler32("Wikipedia", 9), 0x11E60398u);
  EXPECT_FALSE(EncodePng(2, 2, std::vector<uint8_t>(11)).ok());
  EXPECT_FALSE(EncodePng(0, 1, {}).ok());
}

TEST(PngTest, FlatImagesCompress) {
  Canvas canvas(800, 480, Rgb{255, 255, 255});
  auto png = EncodePng(canvas.width(), canvas.height(), canvas.pixels());
  ASSERT_TRUE(png.ok());
  EXPECT_LT(png->size(), canvas.pixels().size() / 50);
}

TEST(LineChartTest, DecodesAndLinesAreWhereTheyShouldBe) {
  std::vector<ChartSeries> series(2);
  series[0].label = "rising";
  series[1].label = "flat";
  for (int x = 0; x <= 10; ++x) {
    series[0].points.emplace_back(x, x);
    series[1].points.emplace_back(x, 2);
  }
  LineChartOptions options;
  options.title = "reward/mean";
  options.x_label = "step";
  options.y_label = "reward/mean";
  ChartFrame frame;
  auto canvas = RenderLineChart(options, series, &frame);
  ASSERT_TRUE(canvas.ok()) << canvas.status();
  // Ticks of 2 over [0, 10] on both axes.
  EXPECT_EQ(frame.x_min, 0);
  EXPECT_EQ(frame.x_max, 10);
  EXPECT_EQ(frame.y_min, 0);
  EXPECT_EQ(frame.y_max, 10);

  auto png = EncodePng(canvas->width(), canvas->height(), canvas->pixels());
  ASSERT_TRUE(png.ok());
  const std::vector<uint8_t> decoded = DecodedPixels(*png, MakeTempDir());
  ASSERT_EQ(decoded, canvas->pixels()) << "the decoded PNG is not the canvas";
  auto pixel = [&](int x, int y) {
    const size_t i = (static_cast<size_t>(y) * canvas->width() + x) * 3;
    return Rgb{decoded[i], decoded[i + 1], decoded[i + 2]};
  };
  // Along the diagonal between the points and along the flat line.
  for (double x : {0.5, 3.25, 5.5, 7.75, 9.5}) {
    EXPECT_EQ(pixel(frame.XPixel(x), frame.YPixel(x)), SeriesColor(0)) << "rising at " << x;
  }
  for (double x : {0.5, 3.5, 8.5}) {
    EXPECT_EQ(pixel(frame.XPixel(x), frame.YPixel(2)), SeriesColor(1)) << "flat at " << x;
  }
  // Away from both lines and off the grid: background.
  EXPECT_EQ(pixel(frame.XPixel(9), frame.YPixel(5)), (Rgb{255, 255, 255}));
  EXPECT_EQ(pixel(frame.XPixel(1), frame.YPixel(7)), (Rgb{255, 255, 255}));
  // The axes.
  EXPECT_EQ(pixel(frame.left, (frame.top + frame.bottom) / 2), (Rgb{0, 0, 0}));
  EXPECT_EQ(pixel((frame.left + frame.right) / 2, frame.bottom), (Rgb{0, 0, 0}));
}

TEST(LineChartTest, NonFinitePointIsAnError) {
  std::vector<ChartSeries> series(1);
  series[0].label = "bad";
  series[0].points.emplace_back(1, std::nan(""));
  auto canvas = RenderLineChart(LineChartOptions(), series);
  ASSERT_FALSE(canvas.ok());
  EXPECT_NE(canvas.status().message().find("\"bad\""), std::string::npos);
}

std::string WriteMetrics(const std::string& dir, const std::string& text) {
  EXPECT_TRUE(MakeDirs(dir).ok());
  const std::string path = JoinPath(dir, "metrics.jsonl");
  EXPECT_TRUE(WriteFileAtomic(path, text).ok());
  return path;
}

void ExpectError(const std::string& text, const std::string& where, const std::string& what,
                 const MetricsReadLimits& limits = {}) {
  const std::string path = WriteMetrics(MakeTempDir(), text);
  auto read = ReadMetricsJsonl(path, nullptr, limits);
  ASSERT_FALSE(read.ok()) << text;
  const std::string message(read.status().message());
  EXPECT_EQ(message.rfind(path + where + ": ", 0), 0u) << message;
  EXPECT_NE(message.find(what), std::string::npos) << message;
}

TEST(MetricsPlotTest, MalformedLinesNameFileAndLine) {
  const std::string good = "{\"step\":1,\"time\":5.5,\"reward/mean\":0.5}\n";
  ExpectError(good + "{\"step\":2,\"reward/mean\":\"high\"}\n", ":2",
              "\"reward/mean\" must be a number or null, got \"high\"");
  ExpectError(good + "\n" + "{\"step\":3,\"reward/mean\":0.1\n", ":3", "not JSON");
  ExpectError(good + "[1,2]\n", ":2", "expected a JSON object");
  ExpectError(good + "{\"reward/mean\":1}\n", ":2", "no \"step\"");
  ExpectError(good + "{\"step\":1.5}\n", ":2", "\"step\" must be an integer");
  ExpectError(good + std::string(600, '[') + "\n", ":2", "not JSON");
  ExpectError(good + "{\"step\":2,\"x\":" + std::string(200, '1') + "}\n", ":2",
              "line longer than 100 bytes", MetricsReadLimits{100, 10, 10});
  ExpectError(good + good + good, "", "more than 2 lines", MetricsReadLimits{100, 2, 10});
  ExpectError(good + "{\"step\":2,\"a\":1,\"b\":2}\n", ":2", "more than 2 metric names",
              MetricsReadLimits{100, 10, 2});
  // A torn last line (no newline) is checked like the others.
  ExpectError(good + "{\"step\":2,\"rew", ":2", "not JSON");
}

TEST(MetricsPlotTest, ReadsStepsInOrderLastValueWins) {
  const std::string path = WriteMetrics(MakeTempDir(),
      "{\"step\":2,\"a\":2}\n{\"step\":1,\"a\":1,\"b\":null}\n{\"step\":2,\"a\":3}\n");
  auto read = ReadMetricsJsonl(path);
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_EQ(read->count("a"), 1u);
  EXPECT_EQ(read->at("a"), (std::vector<std::pair<int64_t, double>>{{1, 1}, {2, 3}}));
  EXPECT_EQ(read->count("b"), 0u);
}

TEST(MetricsPlotTest, PlotsDefaultsPresentOverlayingRuns) {
  const std::string root = MakeTempDir();
  // Three SFT steps (logged at -2..0), eval before RL at step 0, then three RL steps.
  std::string a, b;
  for (int k = 1; k <= 3; ++k) {
    a += "{\"step\":" + std::to_string(k - 3) + ",\"sft/loss\":" + std::to_string(3.0 / k) + "}\n";
  }
  a += "{\"step\":0,\"eval/accuracy\":0.1}\n";
  for (int s = 1; s <= 3; ++s) {
    a += "{\"step\":" + std::to_string(s) + ",\"reward/mean\":" + std::to_string(0.2 * s) + "}\n";
    b += "{\"step\":" + std::to_string(s) + ",\"reward/mean\":" + std::to_string(0.9 - 0.2 * s) + "}\n";
  }
  WriteMetrics(JoinPath(root, "cispo"), a);
  WriteMetrics(JoinPath(root, "grpo"), b);
  PlotOptions options;
  options.runs = {JoinPath(root, "cispo"), JoinPath(root, "grpo")};
  options.output_dir = JoinPath(root, "plots");
  auto written = PlotMetrics(options);
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_EQ(*written, (std::vector<std::string>{JoinPath(options.output_dir, "reward_mean.png"),
                                                JoinPath(options.output_dir, "eval_accuracy.png"),
                                                JoinPath(options.output_dir, "sft_loss.png")}));
  // Both runs are drawn on the reward chart.
  auto png = ReadFile(written->at(0));
  ASSERT_TRUE(png.ok());
  const std::vector<uint8_t> pixels = DecodedPixels(*png, MakeTempDir());
  int first = 0, second = 0;
  for (size_t i = 0; i + 2 < pixels.size(); i += 3) {
    const Rgb p{pixels[i], pixels[i + 1], pixels[i + 2]};
    first += p == SeriesColor(0);
    second += p == SeriesColor(1);
  }
  EXPECT_GT(first, 200);
  EXPECT_GT(second, 200);

  options.metrics = {"reward/mean", "eval/nothing"};
  auto missing = PlotMetrics(options);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("no run logged \"eval/nothing\""), std::string::npos)
      << missing.status();

  // A bad line in the second run fails naming that file and line, and nothing is drawn.
  WriteMetrics(JoinPath(root, "grpo"), b + "{\"step\":4,\"reward/mean\":[1]}\n");
  options.metrics = {};
  options.output_dir = JoinPath(root, "plots2");
  auto bad = PlotMetrics(options);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find(JoinPath(JoinPath(root, "grpo"), "metrics.jsonl") + ":4: "),
            std::string::npos)
      << bad.status();
  EXPECT_FALSE(FileExists(options.output_dir));
}

}  // namespace
}  // namespace lightrl
