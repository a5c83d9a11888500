// Scalar metrics sinks: a JSONL file (one object per step) and a TensorBoard event file
// written by hand in the protobuf wire format, so this stays protobuf-free. Owns the files
// it writes; it does not decide what is logged or when (the controller and learner do).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lightrl {

using Scalars = std::vector<std::pair<std::string, double>>;

class MetricsWriter {
 public:
  virtual ~MetricsWriter() = default;
  // Records `scalars` for `step`. Each call reaches the OS as one write(), so a crashed
  // process never leaves half a step behind (a power loss may, until Flush()).
  virtual absl::Status Write(int64_t step, const Scalars& scalars) = 0;
  // Makes everything written so far durable (fsync).
  virtual absl::Status Flush() = 0;
};
using MetricsWriterPtr = std::unique_ptr<MetricsWriter>;

// Appends {"step": N, "time": unix seconds, "<name>": value, ...} lines to `path`; a
// resumed run appends to the same file after CutJsonlMetrics() has removed what the
// killed run wrote past its checkpoint. Non-finite values are written as null so every
// line is strict JSON (jq, JSON.parse and pandas all reject NaN/Infinity tokens); the
// TensorBoard file keeps the exact NaN/inf. "step" and "time" are reserved names.
class JsonlMetricsWriter final : public MetricsWriter {
 public:
  static absl::StatusOr<std::unique_ptr<JsonlMetricsWriter>> Open(const std::string& path);
  ~JsonlMetricsWriter() override;
  absl::Status Write(int64_t step, const Scalars& scalars) override;
  absl::Status Flush() override;

 private:
  JsonlMetricsWriter(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  std::string path_;
  int fd_ = -1;
};

// Writes events.out.tfevents.<unix time>.<hostname>.<pid>.lightrl under `logdir`: TFRecord
// framed `Event` messages, the first carrying file_version "brain.Event:2", then one event
// per Write() whose summary holds every scalar as a simple_value (float32).
class TensorBoardWriter final : public MetricsWriter {
 public:
  static absl::StatusOr<std::unique_ptr<TensorBoardWriter>> Open(const std::string& logdir);
  ~TensorBoardWriter() override;
  absl::Status Write(int64_t step, const Scalars& scalars) override;
  absl::Status Flush() override;
  // Marks a restart from a checkpoint: a SessionLog START event at `step`, on which
  // TensorBoard drops what earlier event files hold at steps >= `step` (the steps the
  // resumed run writes again). Other readers take the last value per step.
  absl::Status MarkRestart(int64_t step);
  const std::string& path() const { return path_; }

 private:
  TensorBoardWriter(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  std::string path_;
  int fd_ = -1;
};

// Forwards every call to each writer; all are tried even after one fails, and the first
// error is returned.
class MultiMetricsWriter final : public MetricsWriter {
 public:
  explicit MultiMetricsWriter(std::vector<MetricsWriterPtr> writers)
      : writers_(std::move(writers)) {}
  absl::Status Write(int64_t step, const Scalars& scalars) override;
  absl::Status Flush() override;

 private:
  std::vector<MetricsWriterPtr> writers_;
};

// Cuts the JSONL file at `path` back to its first `bytes` bytes, which must end a line:
// a resumed run drops what the killed run logged after the checkpoint it resumes from.
// Returns the number of lines dropped; a file shorter than `bytes`, or a cut that is not
// at a line end, is an error naming the file and offset (the file is left as it is).
absl::StatusOr<int64_t> CutJsonlMetrics(const std::string& path, uint64_t bytes);

// Exposed for tests: the TFRecord frame around one serialized record, and the serialized
// `Event` messages the TensorBoard writer emits.
std::string FrameTfRecord(const std::string& data);
std::string EncodeFileVersionEvent(double wall_time);
std::string EncodeScalarsEvent(double wall_time, int64_t step, const Scalars& scalars);
std::string EncodeSessionStartEvent(double wall_time, int64_t step);

}  // namespace lightrl
