#include "common/metrics.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/crc32c.h"
#include "common/file_util.h"
#include "common/json.h"

namespace lightrl {
namespace {

absl::Status ErrnoError(absl::string_view what, const std::string& path) {
  return absl::InternalError(absl::StrCat(path, ": ", what, ": ", std::strerror(errno)));
}

double UnixSeconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

absl::Status WriteAll(int fd, const std::string& data, const std::string& path) {
  const char* p = data.data();
  size_t left = data.size();
  while (left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("write failed", path);
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::StatusOr<int> OpenForAppend(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError("cannot open for append", path);
  return fd;
}

// --- protobuf wire format, just the field kinds Event and Summary use ---

void PutVarint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out += static_cast<char>((v & 0x7F) | 0x80);
    v >>= 7;
  }
  out += static_cast<char>(v);
}

void PutFixed32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out += static_cast<char>((v >> (8 * i)) & 0xFF);
}

void PutFixed64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out += static_cast<char>((v >> (8 * i)) & 0xFF);
}

enum WireType : uint32_t { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

void PutTag(std::string& out, uint32_t field, WireType type) {
  PutVarint(out, (static_cast<uint64_t>(field) << 3) | type);
}

void PutBytesField(std::string& out, uint32_t field, const std::string& bytes) {
  PutTag(out, field, kLengthDelimited);
  PutVarint(out, bytes.size());
  out += bytes;
}

void PutDoubleField(std::string& out, uint32_t field, double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  PutTag(out, field, kFixed64);
  PutFixed64(out, bits);
}

// Field numbers from tensorflow/core/util/event.proto and framework/summary.proto.
constexpr uint32_t kEventWallTime = 1;
constexpr uint32_t kEventStep = 2;
constexpr uint32_t kEventFileVersion = 3;
constexpr uint32_t kEventSummary = 5;
constexpr uint32_t kEventSessionLog = 7;
constexpr uint32_t kSessionLogStatus = 1;
constexpr uint64_t kSessionLogStart = 1;
constexpr uint32_t kSummaryValue = 1;
constexpr uint32_t kValueTag = 1;
constexpr uint32_t kValueSimpleValue = 2;

}  // namespace

std::string FrameTfRecord(const std::string& data) {
  std::string out;
  out.reserve(data.size() + 16);
  PutFixed64(out, data.size());
  PutFixed32(out, MaskCrc32c(Crc32c(out.data(), 8)));
  out += data;
  PutFixed32(out, MaskCrc32c(Crc32c(data)));
  return out;
}

std::string EncodeFileVersionEvent(double wall_time) {
  std::string event;
  PutDoubleField(event, kEventWallTime, wall_time);
  PutBytesField(event, kEventFileVersion, "brain.Event:2");
  return event;
}

std::string EncodeScalarsEvent(double wall_time, int64_t step, const Scalars& scalars) {
  std::string summary;
  for (const auto& [tag, value] : scalars) {
    std::string entry;
    PutBytesField(entry, kValueTag, tag);
    float f = static_cast<float>(value);
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof(bits));
    PutTag(entry, kValueSimpleValue, kFixed32);
    PutFixed32(entry, bits);
    PutBytesField(summary, kSummaryValue, entry);
  }
  std::string event;
  PutDoubleField(event, kEventWallTime, wall_time);
  PutTag(event, kEventStep, kVarint);
  PutVarint(event, static_cast<uint64_t>(step));  // int64 negatives take ten bytes.
  PutBytesField(event, kEventSummary, summary);
  return event;
}

std::string EncodeSessionStartEvent(double wall_time, int64_t step) {
  std::string session_log;
  PutTag(session_log, kSessionLogStatus, kVarint);
  PutVarint(session_log, kSessionLogStart);
  std::string event;
  PutDoubleField(event, kEventWallTime, wall_time);
  PutTag(event, kEventStep, kVarint);
  PutVarint(event, static_cast<uint64_t>(step));
  PutBytesField(event, kEventSessionLog, session_log);
  return event;
}

// --- JSONL ---

absl::StatusOr<int64_t> CutJsonlMetrics(const std::string& path, uint64_t bytes) {
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) return text.status();
  if (text->size() < bytes) {
    return absl::FailedPreconditionError(absl::StrCat(
        path, ": ", text->size(), " bytes, shorter than the ", bytes,
        " the checkpoint recorded (the file was replaced or cut)"));
  }
  if (bytes > 0 && (*text)[bytes - 1] != '\n') {
    return absl::FailedPreconditionError(absl::StrCat(
        path, ": byte offset ", bytes, " recorded by the checkpoint is not a line end"));
  }
  const int64_t dropped = static_cast<int64_t>(
      std::count(text->begin() + static_cast<std::ptrdiff_t>(bytes), text->end(), '\n'));
  if (bytes == text->size()) return dropped;
  if (::truncate(path.c_str(), static_cast<off_t>(bytes)) != 0) {
    return ErrnoError(absl::StrCat("cannot truncate to byte offset ", bytes), path);
  }
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot open to fsync", path);
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return ErrnoError("fsync failed", path);
  return dropped;
}

absl::StatusOr<std::unique_ptr<JsonlMetricsWriter>> JsonlMetricsWriter::Open(
    const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash != std::string::npos && slash > 0) {
    if (absl::Status st = MakeDirs(path.substr(0, slash)); !st.ok()) return st;
  }
  absl::StatusOr<int> fd = OpenForAppend(path);
  if (!fd.ok()) return fd.status();
  return std::unique_ptr<JsonlMetricsWriter>(new JsonlMetricsWriter(path, *fd));
}

JsonlMetricsWriter::~JsonlMetricsWriter() {
  if (fd_ >= 0) ::close(fd_);
}

absl::Status JsonlMetricsWriter::Write(int64_t step, const Scalars& scalars) {
  std::set<std::string> seen = {"step", "time"};
  std::string line = absl::StrCat("{\"step\":", step, ",\"time\":");
  // Milliseconds are all a metrics timeline needs, and a fixed width keeps lines tidy.
  line += absl::StrFormat("%.3f", UnixSeconds());
  for (const auto& [name, value] : scalars) {
    if (!seen.insert(name).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          path_, ": step ", step, ": metric name \"", name, "\" is reserved or repeated"));
    }
    line += ',';
    AppendJsonString(line, name);
    line += ':';
    line += std::isfinite(value) ? Json(value).Dump() : "null";
  }
  line += "}\n";
  return WriteAll(fd_, line, path_);
}

absl::Status JsonlMetricsWriter::Flush() {
  if (::fsync(fd_) != 0) return ErrnoError("fsync failed", path_);
  return absl::OkStatus();
}

// --- TensorBoard ---

absl::StatusOr<std::unique_ptr<TensorBoardWriter>> TensorBoardWriter::Open(
    const std::string& logdir) {
  if (absl::Status st = MakeDirs(logdir); !st.ok()) return st;
  char host[256] = {0};
  if (::gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') {
    std::strcpy(host, "localhost");
  }
  const double now = UnixSeconds();
  std::string path = JoinPath(
      logdir, absl::StrCat("events.out.tfevents.", static_cast<int64_t>(now), ".", host, ".",
                           ::getpid(), ".lightrl"));
  // Two writers opened by one process within a second share the name; appending keeps
  // that a valid event stream rather than one clobbering the other.
  absl::StatusOr<int> fd = OpenForAppend(path);
  if (!fd.ok()) return fd.status();
  std::unique_ptr<TensorBoardWriter> writer(new TensorBoardWriter(path, *fd));
  if (::lseek(*fd, 0, SEEK_END) == 0) {
    absl::Status st = WriteAll(*fd, FrameTfRecord(EncodeFileVersionEvent(now)), path);
    if (!st.ok()) return st;
  }
  return writer;
}

TensorBoardWriter::~TensorBoardWriter() {
  if (fd_ >= 0) ::close(fd_);
}

absl::Status TensorBoardWriter::Write(int64_t step, const Scalars& scalars) {
  return WriteAll(fd_, FrameTfRecord(EncodeScalarsEvent(UnixSeconds(), step, scalars)), path_);
}

absl::Status TensorBoardWriter::MarkRestart(int64_t step) {
  return WriteAll(fd_, FrameTfRecord(EncodeSessionStartEvent(UnixSeconds(), step)), path_);
}

absl::Status TensorBoardWriter::Flush() {
  if (::fsync(fd_) != 0) return ErrnoError("fsync failed", path_);
  return absl::OkStatus();
}

// --- fan-out ---

absl::Status MultiMetricsWriter::Write(int64_t step, const Scalars& scalars) {
  absl::Status first;
  for (const MetricsWriterPtr& w : writers_) first.Update(w->Write(step, scalars));
  return first;
}

absl::Status MultiMetricsWriter::Flush() {
  absl::Status first;
  for (const MetricsWriterPtr& w : writers_) first.Update(w->Flush());
  return first;
}

}  // namespace lightrl
