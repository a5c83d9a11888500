#include "common/metrics.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/crc32c.h"
#include "common/file_util.h"
#include "common/json.h"
#include "gtest/gtest.h"

namespace lightrl {
namespace {

// Bit-at-a-time CRC-32C straight from the definition: reflected input and output, init and
// final xor 0xFFFFFFFF, polynomial 0x1EDC6F41 (reflected 0x82F63B78).
uint32_t ReferenceCrc32c(const std::string& data) {
  uint32_t crc = 0xFFFFFFFFu;
  for (unsigned char byte : data) {
    crc ^= byte;
    for (int bit = 0; bit < 8; ++bit) crc = (crc & 1u) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
  }
  return ~crc;
}

std::string RandomBytes(std::mt19937& rng, size_t n) {
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng() & 0xFF);
  return s;
}

std::string TempDir(const std::string& name) {
  std::string dir = JoinPath(::testing::TempDir(), absl::StrCat(name, ".", ::getpid()));
  EXPECT_TRUE(MakeDirs(dir).ok());
  return dir;
}

TEST(Crc32cTest, PublishedCheckValues) {
  // The catalogue check value of CRC-32C over "123456789" (RFC 3720 / Williams' catalogue).
  EXPECT_EQ(Crc32c(std::string("123456789")), 0xE3069283u);
  EXPECT_EQ(Crc32c(std::string("")), 0u);
  // RFC 3720 B.4 test vectors: 32 bytes of zeros, and of 0xFF.
  EXPECT_EQ(Crc32c(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(Crc32c(std::string(32, '\xFF')), 0x62A8AB43u);
}

TEST(Crc32cTest, MatchesBitwiseReferenceOnRandomData) {
  std::mt19937 rng(12345);
  for (int trial = 0; trial < 200; ++trial) {
    std::string data = RandomBytes(rng, rng() % 3000);
    ASSERT_EQ(Crc32c(data), ReferenceCrc32c(data)) << "size " << data.size();
    // Misaligned starts exercise the slicing loop on every offset.
    size_t skip = data.empty() ? 0 : rng() % std::min<size_t>(data.size(), 9);
    ASSERT_EQ(Crc32c(data.data() + skip, data.size() - skip),
              ReferenceCrc32c(data.substr(skip)));
  }
}

TEST(Crc32cTest, ExtendEqualsWhole) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 100; ++trial) {
    std::string data = RandomBytes(rng, 1 + rng() % 500);
    size_t cut = rng() % data.size();
    uint32_t head = Crc32c(data.data(), cut);
    EXPECT_EQ(Crc32cExtend(head, data.data() + cut, data.size() - cut), Crc32c(data));
  }
}

TEST(Crc32cTest, MaskRoundTripsAndMatchesFormula) {
  std::mt19937 rng(99);
  for (int trial = 0; trial < 1000; ++trial) {
    uint32_t crc = static_cast<uint32_t>(rng());
    uint32_t expected = ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
    EXPECT_EQ(MaskCrc32c(crc), expected);
    EXPECT_EQ(UnmaskCrc32c(MaskCrc32c(crc)), crc);
  }
}

uint64_t LoadLe(const std::string& s, size_t pos, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(s[pos + i]);
  return v;
}

TEST(TfRecordTest, FrameLayout) {
  std::mt19937 rng(3);
  std::string data = RandomBytes(rng, 77);
  std::string frame = FrameTfRecord(data);
  ASSERT_EQ(frame.size(), 8 + 4 + data.size() + 4);
  EXPECT_EQ(LoadLe(frame, 0, 8), data.size());
  EXPECT_EQ(LoadLe(frame, 8, 4), MaskCrc32c(ReferenceCrc32c(frame.substr(0, 8))));
  EXPECT_EQ(frame.substr(12, data.size()), data);
  EXPECT_EQ(LoadLe(frame, 12 + data.size(), 4), MaskCrc32c(ReferenceCrc32c(data)));
}

TEST(TfRecordTest, ScalarsEventWireFormat) {
  // Hand-decodes the event: wall_time (fixed64), step (varint), summary { value { tag,
  // simple_value } }.
  std::string event = EncodeScalarsEvent(1.5, 300, {{"a", 0.25}});
  size_t pos = 0;
  ASSERT_EQ(static_cast<unsigned char>(event[pos++]), (1u << 3) | 1u);
  double wall;
  uint64_t bits = LoadLe(event, pos, 8);
  std::memcpy(&wall, &bits, 8);
  EXPECT_EQ(wall, 1.5);
  pos += 8;
  ASSERT_EQ(static_cast<unsigned char>(event[pos++]), (2u << 3) | 0u);
  // 300 = 0b10_0101100 -> 0xAC 0x02.
  EXPECT_EQ(static_cast<unsigned char>(event[pos++]), 0xACu);
  EXPECT_EQ(static_cast<unsigned char>(event[pos++]), 0x02u);
  ASSERT_EQ(static_cast<unsigned char>(event[pos++]), (5u << 3) | 2u);
  size_t summary_len = static_cast<unsigned char>(event[pos++]);
  EXPECT_EQ(pos + summary_len, event.size());
  ASSERT_EQ(static_cast<unsigned char>(event[pos++]), (1u << 3) | 2u);
  size_t value_len = static_cast<unsigned char>(event[pos++]);
  EXPECT_EQ(pos + value_len, event.size());
  ASSERT_EQ(static_cast<unsigned char>(event[pos++]), (1u << 3) | 2u);
  ASSERT_EQ(static_cast<unsigned char>(event[pos++]), 1u);
  EXPECT_EQ(event[pos++], 'a');
  ASSERT_EQ(static_cast<unsigned char>(event[pos++]), (2u << 3) | 5u);
  float value;
  uint32_t fbits = static_cast<uint32_t>(LoadLe(event, pos, 4));
  std::memcpy(&value, &fbits, 4);
  EXPECT_EQ(value, 0.25f);
}

TEST(JsonlMetricsWriterTest, AppendsAcrossReopensAndWritesNullForNonFinite) {
  std::string dir = TempDir("jsonl_metrics");
  std::string path = JoinPath(dir, "metrics.jsonl");
  std::remove(path.c_str());
  {
    auto w = JsonlMetricsWriter::Open(path);
    ASSERT_TRUE(w.ok()) << w.status();
    ASSERT_TRUE((*w)->Write(1, {{"loss", 0.5}, {"reward/mean", -2.0}}).ok());
    ASSERT_TRUE((*w)->Flush().ok());
  }
  {
    auto w = JsonlMetricsWriter::Open(path);
    ASSERT_TRUE(w.ok()) << w.status();
    ASSERT_TRUE((*w)->Write(2, {{"loss", std::nan("")}, {"grad", HUGE_VAL}}).ok());
    EXPECT_FALSE((*w)->Write(3, {{"step", 1.0}}).ok());
    EXPECT_FALSE((*w)->Write(3, {{"x", 1.0}, {"x", 2.0}}).ok());
  }
  auto text = ReadFile(path);
  ASSERT_TRUE(text.ok());
  std::vector<Json> lines;
  size_t start = 0;
  while (start < text->size()) {
    size_t end = text->find('\n', start);
    ASSERT_NE(end, std::string::npos) << "last line unterminated";
    auto line = Json::Parse(text->substr(start, end - start));
    ASSERT_TRUE(line.ok()) << line.status();
    lines.push_back(*line);
    start = end + 1;
  }
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0].find("step")->as_int(), 1);
  EXPECT_GT(lines[0].find("time")->as_double(), 1.6e9);
  EXPECT_EQ(lines[0].find("loss")->as_double(), 0.5);
  EXPECT_EQ(lines[0].find("reward/mean")->as_double(), -2.0);
  EXPECT_EQ(lines[1].find("step")->as_int(), 2);
  EXPECT_TRUE(lines[1].find("loss")->is_null());
  EXPECT_TRUE(lines[1].find("grad")->is_null());
}

TEST(TensorBoardWriterTest, FileStartsWithVersionEventAndFramesEveryWrite) {
  std::string dir = TempDir("tb_metrics");
  std::string path;
  {
    auto w = TensorBoardWriter::Open(dir);
    ASSERT_TRUE(w.ok()) << w.status();
    path = (*w)->path();
    ASSERT_TRUE((*w)->Write(0, {{"x", 1.0}}).ok());
    ASSERT_TRUE((*w)->Write(1, {{"x", 2.0}, {"y", 3.0}}).ok());
    ASSERT_TRUE((*w)->Flush().ok());
  }
  EXPECT_NE(path.find("events.out.tfevents."), std::string::npos);
  EXPECT_EQ(path.substr(path.size() - 8), ".lightrl");
  auto text = ReadFile(path);
  ASSERT_TRUE(text.ok());
  // Walk the frames, checking both CRCs of each against the reference implementation.
  std::vector<std::string> records;
  size_t pos = 0;
  while (pos < text->size()) {
    ASSERT_LE(pos + 12, text->size());
    uint64_t len = LoadLe(*text, pos, 8);
    ASSERT_EQ(LoadLe(*text, pos + 8, 4), MaskCrc32c(ReferenceCrc32c(text->substr(pos, 8))));
    ASSERT_LE(pos + 16 + len, text->size());
    std::string data = text->substr(pos + 12, len);
    ASSERT_EQ(LoadLe(*text, pos + 12 + len, 4), MaskCrc32c(ReferenceCrc32c(data)));
    records.push_back(data);
    pos += 16 + len;
  }
  ASSERT_EQ(records.size(), 3u);
  EXPECT_NE(records[0].find("brain.Event:2"), std::string::npos);
  EXPECT_EQ(records[0].substr(9), EncodeFileVersionEvent(0).substr(9));  // wall time aside
}

class RecordingWriter : public MetricsWriter {
 public:
  RecordingWriter(std::vector<int64_t>* steps, bool fail) : steps_(steps), fail_(fail) {}
  absl::Status Write(int64_t step, const Scalars&) override {
    steps_->push_back(step);
    return fail_ ? absl::InternalError("boom") : absl::OkStatus();
  }
  absl::Status Flush() override { return absl::OkStatus(); }

 private:
  std::vector<int64_t>* steps_;
  bool fail_;
};

TEST(MultiMetricsWriterTest, FansOutAndReportsFirstError) {
  std::vector<int64_t> a, b;
  std::vector<MetricsWriterPtr> writers;
  writers.push_back(std::make_unique<RecordingWriter>(&a, true));
  writers.push_back(std::make_unique<RecordingWriter>(&b, false));
  MultiMetricsWriter multi(std::move(writers));
  absl::Status st = multi.Write(4, {{"x", 1}});
  EXPECT_EQ(st.message(), "boom");
  EXPECT_EQ(a, std::vector<int64_t>{4});
  EXPECT_EQ(b, std::vector<int64_t>{4});  // Still reached after the first failed.
}

}  // namespace
}  // namespace lightrl
