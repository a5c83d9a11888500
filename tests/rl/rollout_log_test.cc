#include "rl/rollout_log.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "gtest/gtest.h"

namespace lightrl {
namespace {

namespace fs = std::filesystem;

std::string RandomText(std::mt19937_64& rng, size_t max_len) {
  // ASCII, JSON's troublesome characters and multi-byte UTF-8.
  static const std::vector<std::string> pieces = {
      "a", "b", "Z", "7", " ", "\n", "\t", "\"", "\\", "/", "\x01", "é", "中", "😀", "{", "}"};
  std::string s;
  size_t len = rng() % (max_len + 1);
  for (size_t i = 0; i < len; ++i) s += pieces[rng() % pieces.size()];
  return s;
}

// A group drawn from `seed` alone, so a test can regenerate what a child process wrote.
RolloutGroup RandomGroup(uint64_t seed, int64_t step, size_t max_tokens = 200) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  RolloutGroup g;
  g.step = step;
  g.policy_version = step - static_cast<int64_t>(rng() % 3);
  g.group_id = absl::StrCat("g-", seed, "-", RandomText(rng, 4));
  g.prompt_text = RandomText(rng, 60);
  for (size_t i = 0, n = rng() % 50; i < n; ++i) g.prompt_tokens.push_back(rng() % 200064);
  g.ground_truth = RandomText(rng, 10);
  const char* reasons[] = {"stop", "length", "abort", ""};
  for (size_t k = 0, n = 1 + rng() % 6; k < n; ++k) {
    RolloutSample s;
    size_t len = rng() % (max_tokens + 1);
    for (size_t i = 0; i < len; ++i) {
      s.tokens.push_back(static_cast<int32_t>(rng() % 200064));
      // Logprobs across magnitudes, with the odd exact zero and tiny denormal-ish value.
      float lp = -static_cast<float>(std::pow(10.0, unit(rng) * 8 - 6));
      if (rng() % 50 == 0) lp = 0.0f;
      if (rng() % 97 == 0) lp = -std::numeric_limits<float>::denorm_min();
      s.logprobs.push_back(lp);
    }
    if (rng() % 5 == 0) s.logprobs.clear();  // logprobs are optional
    s.reward = unit(rng) < 0.5 ? 1.0 : unit(rng) * 2 - 1;
    if (rng() % 2) s.reward_components = {{"correct", s.reward}, {"format", unit(rng)}};
    s.advantage = unit(rng) * 4 - 2;
    s.finish_reason = reasons[rng() % 4];
    s.text = RandomText(rng, 80);
    g.samples.push_back(std::move(s));
  }
  return g;
}

void ExpectSameGroup(const RolloutGroup& a, const RolloutGroup& b) {
  EXPECT_EQ(a.step, b.step);
  EXPECT_EQ(a.policy_version, b.policy_version);
  EXPECT_EQ(a.group_id, b.group_id);
  EXPECT_EQ(a.prompt_text, b.prompt_text);
  EXPECT_EQ(a.prompt_tokens, b.prompt_tokens);
  EXPECT_EQ(a.ground_truth, b.ground_truth);
  ASSERT_EQ(a.samples.size(), b.samples.size());
  for (size_t i = 0; i < a.samples.size(); ++i) {
    const RolloutSample& x = a.samples[i];
    const RolloutSample& y = b.samples[i];
    EXPECT_EQ(x.tokens, y.tokens) << "sample " << i;
    ASSERT_EQ(x.logprobs.size(), y.logprobs.size()) << "sample " << i;
    for (size_t t = 0; t < x.logprobs.size(); ++t) {
      // Bit-exact: the compact float text must read back as the same float32.
      uint32_t bx, by;
      std::memcpy(&bx, &x.logprobs[t], 4);
      std::memcpy(&by, &y.logprobs[t], 4);
      ASSERT_EQ(bx, by) << "sample " << i << " logprob " << t << ": " << x.logprobs[t]
                        << " vs " << y.logprobs[t];
    }
    EXPECT_EQ(x.reward, y.reward);
    EXPECT_EQ(x.reward_components, y.reward_components);
    EXPECT_EQ(x.advantage, y.advantage);
    EXPECT_EQ(x.finish_reason, y.finish_reason);
    EXPECT_EQ(x.text, y.text);
  }
}

class RolloutLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = JoinPath(::testing::TempDir(),
                    absl::StrCat("rollout_log_", info->name(), "_", ::getpid()));
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Appends groups seeded first..first+n-1 with a fresh writer; returns them.
  std::vector<RolloutGroup> AppendGroups(int first, int n, RolloutLogOptions options = {}) {
    auto writer = RolloutLogWriter::Open(dir_, options);
    EXPECT_TRUE(writer.ok()) << writer.status();
    std::vector<RolloutGroup> groups;
    for (int i = first; i < first + n; ++i) {
      groups.push_back(RandomGroup(1000 + i, i));
      EXPECT_TRUE((*writer)->Append(groups.back()).ok());
    }
    EXPECT_TRUE((*writer)->Sync().ok());
    return groups;
  }

  std::vector<std::string> Segments() const {
    std::vector<std::string> out;
    for (const auto& entry : fs::directory_iterator(dir_)) {
      std::string name = entry.path().filename().string();
      if (name.rfind("rollouts-", 0) == 0 && name.size() > 4 &&
          name.substr(name.size() - 4) == ".log") {
        out.push_back(entry.path().string());
      }
    }
    std::sort(out.begin(), out.end());
    return out;
  }

  // Offsets of every record, as the reader reports them.
  std::vector<RolloutLogPosition> Positions() const {
    auto reader = RolloutLogReader::Open(dir_);
    EXPECT_TRUE(reader.ok());
    std::vector<RolloutLogPosition> out;
    RolloutGroup g;
    while (true) {
      auto found = (*reader)->Next(&g);
      EXPECT_TRUE(found.ok()) << found.status();
      if (!found.ok() || !*found) break;
      out.push_back((*reader)->position());
    }
    return out;
  }

  void ExpectLogHolds(const std::vector<RolloutGroup>& want) {
    auto got = RolloutLogReader::ReadAll(dir_);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      SCOPED_TRACE(absl::StrCat("group ", i));
      ExpectSameGroup((*got)[i], want[i]);
    }
  }

  std::string dir_;
};

void FlipByte(const std::string& path, uint64_t offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c;
  f.get(c);
  f.seekp(static_cast<std::streamoff>(offset));
  f.put(static_cast<char>(c ^ 0x20));
}

TEST(RolloutGroupTest, JsonRoundTripIsExact) {
  for (uint64_t seed = 0; seed < 50; ++seed) {
    RolloutGroup g = RandomGroup(seed, static_cast<int64_t>(seed) * 3, 2000);
    auto json = Json::Parse(g.ToJson().Dump());
    ASSERT_TRUE(json.ok()) << json.status();
    auto back = RolloutGroup::FromJson(*json);
    ASSERT_TRUE(back.ok()) << back.status();
    ExpectSameGroup(g, *back);
  }
}

TEST(RolloutGroupTest, ErrorsNameTheField) {
  RolloutGroup g = RandomGroup(5, 1);
  g.samples.resize(3);
  g.samples[2].tokens = {1, 2};
  g.samples[2].logprobs = {-1.0f, -2.0f};

  Json bad_reward = g.ToJson();
  Json& sample = bad_reward.as_object().back().second.as_array()[2];
  sample.set("reward", Json("high"));
  EXPECT_NE(RolloutGroup::FromJson(bad_reward).status().message().find("samples[2].reward"),
            absl::string_view::npos)
      << RolloutGroup::FromJson(bad_reward).status();

  Json bad_logprob = g.ToJson();
  Json& lp_sample = bad_logprob.as_object().back().second.as_array()[2];
  Json logprobs = Json::MakeArray();
  logprobs.push_back(Json(-1.0));
  logprobs.push_back(Json("x"));
  lp_sample.set("logprobs", logprobs);
  EXPECT_NE(RolloutGroup::FromJson(bad_logprob).status().message().find("samples[2].logprobs[1]"),
            absl::string_view::npos);

  Json missing = g.ToJson();
  missing.as_object().erase(missing.as_object().begin() + 1);  // policy_version
  EXPECT_NE(RolloutGroup::FromJson(missing).status().message().find("policy_version"),
            absl::string_view::npos);

  Json mismatched = g.ToJson();
  Json short_logprobs = Json::MakeArray();
  short_logprobs.push_back(Json(-1.0));
  mismatched.as_object().back().second.as_array()[2].set("logprobs", short_logprobs);
  EXPECT_NE(RolloutGroup::FromJson(mismatched).status().message().find("samples[2].logprobs"),
            absl::string_view::npos);
}

TEST_F(RolloutLogTest, RoundTripAcrossSegmentsAndReopens) {
  RolloutLogOptions options;
  options.max_segment_bytes = 8192;
  std::vector<RolloutGroup> want = AppendGroups(0, 30, options);
  // A resumed run appends to the same log.
  std::vector<RolloutGroup> more = AppendGroups(30, 20, options);
  want.insert(want.end(), more.begin(), more.end());
  // One record far over the limit gets a segment of its own.
  {
    auto writer = RolloutLogWriter::Open(dir_, options);
    ASSERT_TRUE(writer.ok());
    want.push_back(RandomGroup(77, 50, 5000));
    ASSERT_TRUE((*writer)->Append(want.back()).ok());
    want.push_back(RandomGroup(78, 51));
    ASSERT_TRUE((*writer)->Append(want.back()).ok());
  }
  ExpectLogHolds(want);

  std::vector<std::string> segments = Segments();
  ASSERT_GE(segments.size(), 5u);
  for (size_t i = 0; i < segments.size(); ++i) {
    EXPECT_EQ(fs::path(segments[i]).filename().string(), RolloutSegmentName(i + 1));
  }
  // Every segment respects the limit unless it holds a single oversized record.
  std::map<std::string, int> records_per_segment;
  for (const RolloutLogPosition& p : Positions()) ++records_per_segment[p.file];
  for (const std::string& s : segments) {
    if (records_per_segment[s] > 1) {
      EXPECT_LE(fs::file_size(s), options.max_segment_bytes) << s;
    }
  }
}

TEST_F(RolloutLogTest, EmptyAndMissingDirectories) {
  EXPECT_EQ(RolloutLogReader::Open(dir_).status().code(), absl::StatusCode::kNotFound);
  fs::create_directories(dir_);
  auto all = RolloutLogReader::ReadAll(dir_);
  ASSERT_TRUE(all.ok());
  EXPECT_TRUE(all->empty());
}

TEST_F(RolloutLogTest, TornTailIsSkippedThenTruncatedOnReopen) {
  std::mt19937_64 rng(2024);
  for (int trial = 0; trial < 12; ++trial) {
    SCOPED_TRACE(absl::StrCat("trial ", trial));
    fs::remove_all(dir_);
    std::vector<RolloutGroup> want = AppendGroups(0, 5);
    std::vector<RolloutLogPosition> positions = Positions();
    ASSERT_EQ(positions.size(), 5u);
    const std::string last = positions.back().file;
    const uint64_t start = positions.back().offset;
    const uint64_t end = fs::file_size(last);
    // Half the trials cut inside the 12-byte header, half inside the payload.
    uint64_t cut = trial % 2 == 0 ? start + 1 + rng() % (kRolloutRecordHeaderBytes - 1)
                                  : start + kRolloutRecordHeaderBytes +
                                        rng() % (end - start - kRolloutRecordHeaderBytes);
    fs::resize_file(last, cut);
    want.pop_back();
    ExpectLogHolds(want);

    // Reopening for append cuts the torn bytes so new records follow the valid ones.
    std::vector<RolloutGroup> more = AppendGroups(100, 3);
    EXPECT_EQ(Positions()[4].offset, start);
    want.insert(want.end(), more.begin(), more.end());
    ExpectLogHolds(want);
  }
}

TEST_F(RolloutLogTest, ZeroFilledTailIsTorn) {
  // What a power loss can leave: the file grew but the data never reached the disk.
  std::vector<RolloutGroup> want = AppendGroups(0, 4);
  const std::string segment = Segments().back();
  const uint64_t size = fs::file_size(segment);
  fs::resize_file(segment, size + 300);
  ExpectLogHolds(want);
  std::vector<RolloutGroup> more = AppendGroups(4, 1);
  want.insert(want.end(), more.begin(), more.end());
  ExpectLogHolds(want);
  EXPECT_EQ(Positions().back().offset, size);
}

TEST_F(RolloutLogTest, CorruptLastCompleteRecordIsAnErrorNotATornTail) {
  // One flipped byte in the log's last record, which is whole: in its magic, length, CRC
  // or payload. That is corruption (an error naming the offset, skippable on request and
  // counted), and reopening for append must not cut it away as if it were torn.
  std::mt19937_64 rng(31);
  for (int trial = 0; trial < 8; ++trial) {
    SCOPED_TRACE(absl::StrCat("trial ", trial));
    fs::remove_all(dir_);
    std::vector<RolloutGroup> want = AppendGroups(0, 5);
    const std::vector<RolloutLogPosition> positions = Positions();
    ASSERT_EQ(positions.size(), 5u);
    const RolloutLogPosition last = positions.back();
    const uint64_t size = fs::file_size(last.file);
    const uint64_t field = static_cast<uint64_t>(trial % 4) * 4;  // magic, length, CRC, payload
    const uint64_t where = field < kRolloutRecordHeaderBytes
                               ? last.offset + field + rng() % 4
                               : last.offset + kRolloutRecordHeaderBytes +
                                     rng() % (size - last.offset - kRolloutRecordHeaderBytes);
    FlipByte(last.file, where);

    auto all = RolloutLogReader::ReadAll(dir_);
    ASSERT_FALSE(all.ok()) << "flipped byte " << where << " read as a torn tail";
    EXPECT_EQ(all.status().code(), absl::StatusCode::kDataLoss);
    const std::string message(all.status().message());
    EXPECT_NE(message.find(last.file), std::string::npos) << message;
    EXPECT_NE(message.find(absl::StrCat("byte offset ", last.offset, ":")), std::string::npos)
        << message;

    RolloutLogReadOptions skip;
    skip.skip_corrupt = true;
    int64_t skipped = -1;
    auto read = RolloutLogReader::ReadAll(dir_, skip, &skipped);
    ASSERT_TRUE(read.ok()) << read.status();
    EXPECT_EQ(skipped, 1);
    want.pop_back();
    ASSERT_EQ(read->size(), want.size());

    // A resumed run appends after the corrupt record and leaves it for readers.
    std::vector<RolloutGroup> more = AppendGroups(100, 2);
    EXPECT_GE(fs::file_size(last.file), size) << "the writer cut a complete record";
    want.insert(want.end(), more.begin(), more.end());
    read = RolloutLogReader::ReadAll(dir_, skip, &skipped);
    ASSERT_TRUE(read.ok()) << read.status();
    EXPECT_EQ(skipped, 1);
    ASSERT_EQ(read->size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) ExpectSameGroup((*read)[i], want[i]);
    EXPECT_EQ(RolloutLogReader::ReadAll(dir_).status().code(), absl::StatusCode::kDataLoss);
  }
}

TEST_F(RolloutLogTest, CorruptionInTheMiddleIsAnErrorNamingFileAndOffset) {
  std::mt19937_64 rng(77);
  for (int trial = 0; trial < 8; ++trial) {
    SCOPED_TRACE(absl::StrCat("trial ", trial));
    fs::remove_all(dir_);
    // Odd trials: one segment; even: about a record per segment, so the victim may be the
    // last record of a sealed segment.
    RolloutLogOptions options;
    if (trial % 2 == 0) options.max_segment_bytes = 6000;
    std::vector<RolloutGroup> want = AppendGroups(0, 20, options);
    std::vector<RolloutLogPosition> positions = Positions();
    ASSERT_EQ(positions.size(), 20u);
    // Any record but the very last, which would count as a torn tail. Includes the last
    // record of earlier segments: only the log's final segment may end torn.
    const size_t victim = rng() % 19;
    const RolloutLogPosition& p = positions[victim];
    const uint64_t record_end = victim + 1 < positions.size() &&
                                        positions[victim + 1].file == p.file
                                    ? positions[victim + 1].offset
                                    : fs::file_size(p.file);
    const bool hit_length = trial % 3 == 2;
    const uint64_t where =
        hit_length ? p.offset + 4 + rng() % 4
                   : p.offset + kRolloutRecordHeaderBytes +
                         rng() % (record_end - p.offset - kRolloutRecordHeaderBytes);
    FlipByte(p.file, where);

    auto all = RolloutLogReader::ReadAll(dir_);
    ASSERT_FALSE(all.ok());
    EXPECT_EQ(all.status().code(), absl::StatusCode::kDataLoss);
    const std::string message(all.status().message());
    EXPECT_NE(message.find(p.file), std::string::npos) << message;
    EXPECT_NE(message.find(absl::StrCat("byte offset ", p.offset, ":")), std::string::npos)
        << message;

    RolloutLogReadOptions skip;
    skip.skip_corrupt = true;
    auto skipped = RolloutLogReader::ReadAll(dir_, skip);
    ASSERT_TRUE(skipped.ok()) << skipped.status();
    want.erase(want.begin() + static_cast<std::ptrdiff_t>(victim));
    ASSERT_EQ(skipped->size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) ExpectSameGroup((*skipped)[i], want[i]);
  }
}

TEST_F(RolloutLogTest, MissingSegmentIsReported) {
  RolloutLogOptions options;
  options.max_segment_bytes = 4000;
  AppendGroups(0, 20, options);
  ASSERT_GE(Segments().size(), 3u);
  fs::remove(JoinPath(dir_, RolloutSegmentName(2)));
  auto all = RolloutLogReader::ReadAll(dir_);
  ASSERT_FALSE(all.ok());
  EXPECT_NE(all.status().message().find(RolloutSegmentName(2)), absl::string_view::npos)
      << all.status();
}

TEST_F(RolloutLogTest, OneWriterPerDirectory) {
  auto first = RolloutLogWriter::Open(dir_);
  ASSERT_TRUE(first.ok());
  auto second = RolloutLogWriter::Open(dir_);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition) << second.status();
  first->reset();
  EXPECT_TRUE(RolloutLogWriter::Open(dir_).ok());
}

TEST_F(RolloutLogTest, SurvivesKillDashNine) {
  // A child appends until SIGKILLed at a random moment; whatever the reader returns must
  // be exactly what was appended, in order, and a new writer carries on after it.
  std::mt19937_64 rng(std::random_device{}());
  RolloutLogOptions options;
  options.max_segment_bytes = 1 << 20;  // a few rolls per round
  int64_t count = 0;
  for (int round = 0; round < 4; ++round) {
    SCOPED_TRACE(absl::StrCat("round ", round));
    const int64_t first = count;
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      auto writer = RolloutLogWriter::Open(dir_, options);
      if (!writer.ok()) ::_exit(3);
      for (int64_t i = first;; ++i) {
        // Large groups so that some kills land inside a write().
        if (!(*writer)->Append(RandomGroup(static_cast<uint64_t>(i), i, 3000)).ok()) ::_exit(4);
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200 + rng() % 400));
    ASSERT_EQ(::kill(pid, SIGKILL), 0);
    int wstatus = 0;
    ASSERT_EQ(::waitpid(pid, &wstatus, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(wstatus)) << "child exited early with status " << wstatus;

    auto all = RolloutLogReader::ReadAll(dir_);
    ASSERT_TRUE(all.ok()) << all.status();
    ASSERT_GT(static_cast<int64_t>(all->size()), first) << "the child appended nothing";
    for (size_t i = 0; i < all->size(); ++i) {
      ASSERT_EQ((*all)[i].step, static_cast<int64_t>(i)) << "out of order";
    }
    // Content checks on the records this round wrote (the earlier ones were checked).
    for (int64_t i = first; i < static_cast<int64_t>(all->size()); ++i) {
      SCOPED_TRACE(absl::StrCat("group ", i));
      ExpectSameGroup((*all)[i], RandomGroup(static_cast<uint64_t>(i), i, 3000));
    }
    count = static_cast<int64_t>(all->size());
    std::cerr << "round " << round << ": " << count - first << " groups survived the kill\n";
  }
}

}  // namespace
}  // namespace lightrl
