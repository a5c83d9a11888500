// The rollout log: every scored prompt group, appended as a checksummed record to
// numbered segment files (rollouts-000001.log, ...) so that a crash loses at most the
// unsynced tail and never corrupts what came before. Owns the record format, the segment
// files and torn-tail recovery; torch-free. Replay and `lightrl rollouts` read it back.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/json.h"

namespace lightrl {

struct RolloutSample {
  std::vector<int32_t> tokens;  // generated tokens only; the prompt is in the group
  std::vector<float> logprobs;  // rollout engine's logprob per token; empty or tokens.size()
  double reward = 0;
  std::vector<std::pair<std::string, double>> reward_components;  // named parts of reward
  double advantage = 0;
  std::string finish_reason;  // "stop", "length", "abort", ...
  std::string text;           // detokenized response
};

struct RolloutGroup {
  int64_t step = 0;            // controller step that consumed the group
  int64_t policy_version = 0;  // weights version that generated the samples
  std::string group_id;
  std::string prompt_text;
  std::vector<int32_t> prompt_tokens;
  std::string ground_truth;
  std::vector<RolloutSample> samples;

  // Logprobs are written with the fewest digits that read back as the same float, so a
  // ToJson/FromJson round trip is exact.
  Json ToJson() const;
  // Errors name the offending field: "samples[2].logprobs[7]: expected a number, got ...".
  // Unknown fields are ignored so that newer logs stay readable.
  static absl::StatusOr<RolloutGroup> FromJson(const Json& json);
};

// On-disk record: magic u32, payload length u32, masked CRC-32C of the payload u32 (all
// little-endian), then the payload: the group's compact JSON.
inline constexpr uint32_t kRolloutRecordMagic = 0x4C52FFD9u;
inline constexpr size_t kRolloutRecordHeaderBytes = 12;

struct RolloutLogOptions {
  // A segment is closed and the next one started before a record would take it past this
  // size; a record larger than the limit gets a segment of its own.
  uint64_t max_segment_bytes = uint64_t{256} << 20;

  absl::Status Validate() const;
};

// Appends groups to the log in `dir`. Durability contract: Append() hands the whole record
// to the OS in one write(), so a killed process loses nothing already appended; Sync()
// fsyncs, so a machine crash or power loss loses at most the records appended after the
// last successful Sync() — only at the tail of the last segment, never earlier records.
// Call Sync() at every checkpoint so the log covers everything the checkpoint trained on.
// One writer per directory (an exclusive flock on rollouts.lock); Append is thread-safe.
class RolloutLogWriter {
 public:
  // Opens the log for append, creating `dir` if needed. A torn record at the end of the
  // last segment (a crash mid-append) is truncated away with a warning on stderr naming
  // the file and byte offset, so new records follow valid ones. A corrupt complete record
  // is never cut: it stays for readers to report (or skip), with a warning.
  static absl::StatusOr<std::unique_ptr<RolloutLogWriter>> Open(
      const std::string& dir, const RolloutLogOptions& options = {});
  ~RolloutLogWriter();
  RolloutLogWriter(const RolloutLogWriter&) = delete;
  RolloutLogWriter& operator=(const RolloutLogWriter&) = delete;

  absl::Status Append(const RolloutGroup& group);
  // Makes every record appended so far durable.
  absl::Status Sync();
  // The segment being appended to.
  std::string current_segment() const;

 private:
  RolloutLogWriter(std::string dir, RolloutLogOptions options)
      : dir_(std::move(dir)), options_(options) {}
  absl::Status AppendRecord(const std::string& record);
  absl::Status StartSegment(int64_t number);

  const std::string dir_;
  const RolloutLogOptions options_;
  mutable std::mutex mu_;
  int lock_fd_ = -1;
  int fd_ = -1;
  int64_t segment_number_ = 0;
  std::string segment_path_;
  uint64_t segment_size_ = 0;
};
using RolloutLogWriterPtr = std::unique_ptr<RolloutLogWriter>;

struct RolloutLogReadOptions {
  // A corrupt record before the end of the log is an error by default; with this set it
  // is skipped (warning on stderr with file and offset) up to the next valid record.
  bool skip_corrupt = false;
};

// Where a record starts, for messages and `lightrl rollouts show`.
struct RolloutLogPosition {
  std::string file;
  uint64_t offset = 0;
};

// Reads the records of the log in `dir` in order, across segments. A torn record at the
// very end of the last segment (an incomplete record: the writer crashed, or is
// mid-append) is skipped with a warning; anything else that fails its checks, a complete
// last record included, is corruption, reported as DataLoss naming the file and byte
// offset. Segments present when Open() ran are read; later ones are not.
class RolloutLogReader {
 public:
  static absl::StatusOr<std::unique_ptr<RolloutLogReader>> Open(
      const std::string& dir, const RolloutLogReadOptions& options = {});
  ~RolloutLogReader();
  RolloutLogReader(const RolloutLogReader&) = delete;
  RolloutLogReader& operator=(const RolloutLogReader&) = delete;

  // Reads the next group into *group; false at the end of the log.
  absl::StatusOr<bool> Next(RolloutGroup* group);
  // Where the group last returned by Next() was stored.
  const RolloutLogPosition& position() const { return position_; }
  // Corrupt records skipped so far (only with skip_corrupt; torn tails are not counted).
  int64_t corrupt_skipped() const { return corrupt_skipped_; }

  // Every group; `corrupt_skipped`, if given, receives corrupt_skipped() at the end.
  static absl::StatusOr<std::vector<RolloutGroup>> ReadAll(
      const std::string& dir, const RolloutLogReadOptions& options = {},
      int64_t* corrupt_skipped = nullptr);

 private:
  RolloutLogReader(std::vector<std::string> segments, RolloutLogReadOptions options)
      : segments_(std::move(segments)), options_(options) {}
  absl::StatusOr<bool> NextPayload(std::string* payload);

  std::vector<std::string> segments_;
  const RolloutLogReadOptions options_;
  size_t segment_index_ = 0;
  int fd_ = -1;
  uint64_t file_size_ = 0;
  uint64_t offset_ = 0;
  RolloutLogPosition position_;
  int64_t corrupt_skipped_ = 0;
};
using RolloutLogReaderPtr = std::unique_ptr<RolloutLogReader>;

// The segment file name for `number`: rollouts-000001.log for 1.
std::string RolloutSegmentName(int64_t number);

}  // namespace lightrl
