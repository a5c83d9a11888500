#include "rl/rollout_log.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/crc32c.h"
#include "common/file_util.h"
#include "common/log.h"
#include "common/status.h"

namespace lightrl {
namespace {

constexpr absl::string_view kSegmentPrefix = "rollouts-";
constexpr absl::string_view kSegmentSuffix = ".log";
constexpr absl::string_view kLockName = "rollouts.lock";

void Warn(absl::string_view message) {
  LogWarning("lightrl: warning: %s", message);
}

absl::Status ErrnoError(absl::string_view what, absl::string_view path) {
  int e = errno;
  std::string message = absl::StrCat(path, ": ", what, ": ", std::strerror(e));
  if (e == ENOENT) return absl::NotFoundError(message);
  return absl::InternalError(message);
}

// ---------------------------------------------------------------- JSON

// The shortest decimal that reads back as `f`, as a double: logprobs are float32 and
// their float64 expansion would cost ~17 digits each over traces of 80K tokens.
double CompactFloat(float f) {
  if (!std::isfinite(f)) return f;
  char buf[32];
  // Shortest round-trip text for the float (Ryu in libstdc++), an order of magnitude
  // faster than probing precisions with snprintf; this runs per generated token.
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), f);
  if (ec != std::errc()) return f;
  *end = '\0';
  double d = std::strtod(buf, nullptr);
  return static_cast<float>(d) == f ? d : static_cast<double>(f);
}

Json TokensToJson(const std::vector<int32_t>& tokens) {
  Json::Array out;
  out.reserve(tokens.size());
  for (int32_t t : tokens) out.emplace_back(static_cast<int64_t>(t));
  return Json(std::move(out));
}

absl::StatusOr<const Json*> GetField(const Json& object, absl::string_view prefix,
                                     absl::string_view name, Json::Type type) {
  const Json* value = object.find(name);
  if (value == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, name, ": missing"));
  }
  if (value->type() != type) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, name, ": expected ",
                                                   Json::TypeName(type), ", got ",
                                                   value->type_name()));
  }
  return value;
}

absl::StatusOr<int64_t> GetInt(const Json& object, absl::string_view prefix,
                               absl::string_view name) {
  ASSIGN_OR_RETURN(const Json* value, GetField(object, prefix, name, Json::Type::kNumber));
  if (!value->is_int()) {
    return absl::InvalidArgumentError(
        absl::StrCat(prefix, name, ": expected an integer, got ", value->Dump()));
  }
  return value->as_int();
}

absl::StatusOr<double> GetNumber(const Json& object, absl::string_view prefix,
                                 absl::string_view name) {
  ASSIGN_OR_RETURN(const Json* value, GetField(object, prefix, name, Json::Type::kNumber));
  return value->as_double();
}

absl::StatusOr<std::string> GetString(const Json& object, absl::string_view prefix,
                                      absl::string_view name) {
  ASSIGN_OR_RETURN(const Json* value, GetField(object, prefix, name, Json::Type::kString));
  return value->as_string();
}

absl::StatusOr<std::vector<int32_t>> GetTokens(const Json& object, absl::string_view prefix,
                                               absl::string_view name) {
  ASSIGN_OR_RETURN(const Json* array, GetField(object, prefix, name, Json::Type::kArray));
  std::vector<int32_t> out;
  out.reserve(array->size());
  for (size_t i = 0; i < array->size(); ++i) {
    const Json& v = array->as_array()[i];
    if (!v.is_int() || v.as_int() < INT32_MIN || v.as_int() > INT32_MAX) {
      return absl::InvalidArgumentError(
          absl::StrCat(prefix, name, "[", i, "]: expected an int32, got ", v.Dump()));
    }
    out.push_back(static_cast<int32_t>(v.as_int()));
  }
  return out;
}

absl::StatusOr<std::vector<float>> GetFloats(const Json& object, absl::string_view prefix,
                                             absl::string_view name) {
  ASSIGN_OR_RETURN(const Json* array, GetField(object, prefix, name, Json::Type::kArray));
  std::vector<float> out;
  out.reserve(array->size());
  for (size_t i = 0; i < array->size(); ++i) {
    const Json& v = array->as_array()[i];
    if (!v.is_number()) {
      return absl::InvalidArgumentError(
          absl::StrCat(prefix, name, "[", i, "]: expected a number, got ", v.Dump()));
    }
    out.push_back(static_cast<float>(v.as_double()));
  }
  return out;
}

Json SampleToJson(const RolloutSample& s) {
  Json out = Json::MakeObject();
  out.set("tokens", TokensToJson(s.tokens));
  Json::Array logprobs;
  logprobs.reserve(s.logprobs.size());
  for (float lp : s.logprobs) logprobs.emplace_back(CompactFloat(lp));
  out.set("logprobs", Json(std::move(logprobs)));
  out.set("reward", Json(s.reward));
  // An object reads best; pushed directly so that repeated names survive the round trip.
  Json components = Json::MakeObject();
  for (const auto& [name, value] : s.reward_components) {
    components.as_object().emplace_back(name, Json(value));
  }
  out.set("reward_components", std::move(components));
  out.set("advantage", Json(s.advantage));
  out.set("finish_reason", Json(s.finish_reason));
  out.set("text", Json(s.text));
  return out;
}

absl::StatusOr<RolloutSample> SampleFromJson(const Json& json, const std::string& prefix) {
  if (!json.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(prefix.substr(0, prefix.size() - 1), ": expected object, got ",
                     json.type_name()));
  }
  RolloutSample s;
  ASSIGN_OR_RETURN(s.tokens, GetTokens(json, prefix, "tokens"));
  ASSIGN_OR_RETURN(s.logprobs, GetFloats(json, prefix, "logprobs"));
  if (!s.logprobs.empty() && s.logprobs.size() != s.tokens.size()) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, "logprobs: has ", s.logprobs.size(),
                                                   " entries for ", s.tokens.size(),
                                                   " tokens (expected 0 or one per token)"));
  }
  ASSIGN_OR_RETURN(s.reward, GetNumber(json, prefix, "reward"));
  ASSIGN_OR_RETURN(const Json* components,
                   GetField(json, prefix, "reward_components", Json::Type::kObject));
  for (const auto& [name, value] : components->as_object()) {
    if (!value.is_number()) {
      return absl::InvalidArgumentError(absl::StrCat(
          prefix, "reward_components.", name, ": expected number, got ", value.type_name()));
    }
    s.reward_components.emplace_back(name, value.as_double());
  }
  ASSIGN_OR_RETURN(s.advantage, GetNumber(json, prefix, "advantage"));
  ASSIGN_OR_RETURN(s.finish_reason, GetString(json, prefix, "finish_reason"));
  ASSIGN_OR_RETURN(s.text, GetString(json, prefix, "text"));
  return s;
}

// ---------------------------------------------------------------- records

void PutU32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out += static_cast<char>((v >> (8 * i)) & 0xFF);
}

uint32_t GetU32(const char* p) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  return static_cast<uint32_t>(u[0]) | static_cast<uint32_t>(u[1]) << 8 |
         static_cast<uint32_t>(u[2]) << 16 | static_cast<uint32_t>(u[3]) << 24;
}

std::string MagicBytes() {
  std::string magic;
  PutU32(magic, kRolloutRecordMagic);
  return magic;
}

absl::Status ReadAt(int fd, const std::string& path, uint64_t offset, size_t size,
                    std::string* out) {
  out->resize(size);
  size_t done = 0;
  while (done < size) {
    ssize_t n = ::pread(fd, &(*out)[done], size - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(absl::StrCat("read at byte offset ", offset + done, " failed"), path);
    }
    if (n == 0) {
      return absl::DataLossError(
          absl::StrCat(path, ": file shrank while reading at byte offset ", offset + done));
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

// An open segment file, read by offset.
struct SegmentView {
  int fd;
  const std::string& path;
  uint64_t size;
};

// The record at `offset`: valid (payload filled, `size` its total length), or why not.
// `torn` says the bytes from `offset` to the end of the file are what an interrupted
// append leaves: a prefix of one record (the magic as far as it goes, a payload shorter
// than its length field that does not checksum as it stands) or zeros (a power loss after
// the file grew). A complete record that fails its checks is corruption, never torn.
struct Probe {
  bool valid = false;
  bool torn = false;
  uint64_t size = 0;
  std::string problem;
};

absl::StatusOr<bool> AllZeroFrom(const SegmentView& seg, uint64_t offset) {
  constexpr uint64_t kChunk = 1 << 20;
  std::string chunk;
  for (uint64_t pos = offset; pos < seg.size; pos += kChunk) {
    RETURN_IF_ERROR(ReadAt(seg.fd, seg.path, pos, std::min(kChunk, seg.size - pos), &chunk));
    if (chunk.find_first_not_of('\0') != std::string::npos) return false;
  }
  return true;
}

absl::StatusOr<Probe> ProbeRecord(const SegmentView& seg, uint64_t offset, std::string* payload) {
  Probe probe;
  const uint64_t left = seg.size - offset;
  std::string header;
  RETURN_IF_ERROR(ReadAt(seg.fd, seg.path, offset, std::min<uint64_t>(left, kRolloutRecordHeaderBytes),
                      &header));
  static const std::string magic_bytes = MagicBytes();
  const size_t magic_seen = std::min(header.size(), magic_bytes.size());
  const bool magic_prefix = header.compare(0, magic_seen, magic_bytes, 0, magic_seen) == 0;
  if (left < kRolloutRecordHeaderBytes) {
    probe.problem = absl::StrCat("only ", left, " bytes left, a record header needs ",
                                 kRolloutRecordHeaderBytes);
    ASSIGN_OR_RETURN(const bool zeros, AllZeroFrom(seg, offset));
    probe.torn = magic_prefix || zeros;
    return probe;
  }
  const uint32_t magic = GetU32(header.data());
  const uint32_t length = GetU32(header.data() + 4);
  const uint32_t masked_crc = GetU32(header.data() + 8);
  if (magic != kRolloutRecordMagic) {
    probe.problem = absl::StrFormat("bad magic 0x%08x", magic);
    ASSIGN_OR_RETURN(probe.torn, AllZeroFrom(seg, offset));
    return probe;
  }
  if (length > left - kRolloutRecordHeaderBytes) {
    probe.problem = absl::StrCat("payload length ", length, " runs past the end of the file (",
                                 left - kRolloutRecordHeaderBytes, " bytes left)");
    // A whole payload under a damaged length field still checksums: that is corruption.
    RETURN_IF_ERROR(ReadAt(seg.fd, seg.path, offset + kRolloutRecordHeaderBytes,
                           left - kRolloutRecordHeaderBytes, payload));
    probe.torn = Crc32c(*payload) != UnmaskCrc32c(masked_crc);
    return probe;
  }
  RETURN_IF_ERROR(ReadAt(seg.fd, seg.path, offset + kRolloutRecordHeaderBytes, length, payload));
  if (Crc32c(*payload) != UnmaskCrc32c(masked_crc)) {
    probe.problem = absl::StrCat("checksum mismatch over ", length, " payload bytes");
    return probe;
  }
  probe.valid = true;
  probe.size = kRolloutRecordHeaderBytes + length;
  return probe;
}

// The first offset >= `from` where a valid record starts. The magic holds 0xFF, a byte
// UTF-8 never uses, so it does not turn up inside JSON payloads and the scan stays cheap.
absl::StatusOr<std::optional<uint64_t>> FindNextValid(const SegmentView& seg, uint64_t from) {
  static const std::string magic = MagicBytes();
  constexpr uint64_t kChunk = 1 << 20;
  std::string chunk, payload;
  uint64_t pos = from;
  while (pos + magic.size() <= seg.size) {
    const uint64_t n = std::min(kChunk, seg.size - pos);
    RETURN_IF_ERROR(ReadAt(seg.fd, seg.path, pos, n, &chunk));
    for (size_t i = chunk.find(magic); i != std::string::npos; i = chunk.find(magic, i + 1)) {
      ASSIGN_OR_RETURN(Probe probe, ProbeRecord(seg, pos + i, &payload));
      if (probe.valid) return std::optional<uint64_t>(pos + i);
    }
    if (pos + n >= seg.size) break;
    pos += n - (magic.size() - 1);  // overlap so a magic across chunks is still seen
  }
  return std::optional<uint64_t>();
}

// Numbered segments in `dir`, ascending.
absl::StatusOr<std::vector<std::pair<int64_t, std::string>>> ListSegments(
    const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return ErrnoError("cannot open rollout log directory", dir);
  std::vector<std::pair<int64_t, std::string>> out;
  while (dirent* entry = ::readdir(d)) {
    absl::string_view name = entry->d_name;
    if (!absl::StartsWith(name, kSegmentPrefix) || !absl::EndsWith(name, kSegmentSuffix)) {
      continue;
    }
    absl::string_view digits = name.substr(
        kSegmentPrefix.size(), name.size() - kSegmentPrefix.size() - kSegmentSuffix.size());
    int64_t number;
    if (digits.empty() ||
        !std::all_of(digits.begin(), digits.end(), [](char c) { return absl::ascii_isdigit(c); }) ||
        !absl::SimpleAtoi(digits, &number)) {
      continue;
    }
    out.emplace_back(number, JoinPath(dir, name));
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

absl::Status FsyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot open directory to fsync", dir);
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return ErrnoError("fsync failed", dir);
  return absl::OkStatus();
}

}  // namespace

// ---------------------------------------------------------------- RolloutGroup

Json RolloutGroup::ToJson() const {
  Json out = Json::MakeObject();
  out.set("step", Json(step));
  out.set("policy_version", Json(policy_version));
  out.set("group_id", Json(group_id));
  out.set("prompt_text", Json(prompt_text));
  out.set("prompt_tokens", TokensToJson(prompt_tokens));
  out.set("ground_truth", Json(ground_truth));
  Json::Array sample_array;
  sample_array.reserve(samples.size());
  for (const RolloutSample& s : samples) sample_array.push_back(SampleToJson(s));
  out.set("samples", Json(std::move(sample_array)));
  return out;
}

absl::StatusOr<RolloutGroup> RolloutGroup::FromJson(const Json& json) {
  if (!json.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("rollout group: expected object, got ", json.type_name()));
  }
  RolloutGroup g;
  ASSIGN_OR_RETURN(g.step, GetInt(json, "", "step"));
  ASSIGN_OR_RETURN(g.policy_version, GetInt(json, "", "policy_version"));
  ASSIGN_OR_RETURN(g.group_id, GetString(json, "", "group_id"));
  ASSIGN_OR_RETURN(g.prompt_text, GetString(json, "", "prompt_text"));
  ASSIGN_OR_RETURN(g.prompt_tokens, GetTokens(json, "", "prompt_tokens"));
  ASSIGN_OR_RETURN(g.ground_truth, GetString(json, "", "ground_truth"));
  ASSIGN_OR_RETURN(const Json* samples, GetField(json, "", "samples", Json::Type::kArray));
  g.samples.reserve(samples->size());
  for (size_t i = 0; i < samples->size(); ++i) {
    ASSIGN_OR_RETURN(RolloutSample s,
                     SampleFromJson(samples->as_array()[i], absl::StrCat("samples[", i, "].")));
    g.samples.push_back(std::move(s));
  }
  return g;
}

std::string RolloutSegmentName(int64_t number) {
  return absl::StrFormat("%s%06d%s", kSegmentPrefix, number, kSegmentSuffix);
}

absl::Status RolloutLogOptions::Validate() const {
  if (max_segment_bytes < kRolloutRecordHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rollout log max_segment_bytes must be >= ", kRolloutRecordHeaderBytes, ", got ",
        max_segment_bytes));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------- writer

absl::StatusOr<std::unique_ptr<RolloutLogWriter>> RolloutLogWriter::Open(
    const std::string& dir, const RolloutLogOptions& options) {
  RETURN_IF_ERROR(options.Validate());
  RETURN_IF_ERROR(MakeDirs(dir));
  std::unique_ptr<RolloutLogWriter> w(new RolloutLogWriter(dir, options));

  // Two writers would interleave records and each would "repair" the other's in-flight
  // append as a torn tail; the kernel drops the lock when a writer dies, even by SIGKILL.
  const std::string lock_path = JoinPath(dir, kLockName);
  w->lock_fd_ = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (w->lock_fd_ < 0) return ErrnoError("cannot open lock file", lock_path);
  if (::flock(w->lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return absl::FailedPreconditionError(absl::StrCat(
          dir, ": another process is writing this rollout log (", kLockName, " is locked)"));
    }
    return ErrnoError("cannot lock", lock_path);
  }

  ASSIGN_OR_RETURN(auto segments, ListSegments(dir));
  if (segments.empty()) {
    RETURN_IF_ERROR(w->StartSegment(1));
    return w;
  }
  w->segment_number_ = segments.back().first;
  w->segment_path_ = segments.back().second;
  w->fd_ = ::open(w->segment_path_.c_str(), O_RDWR | O_APPEND | O_CLOEXEC);
  if (w->fd_ < 0) return ErrnoError("cannot open for append", w->segment_path_);
  struct stat st;
  if (::fstat(w->fd_, &st) != 0) return ErrnoError("cannot stat", w->segment_path_);
  SegmentView seg{w->fd_, w->segment_path_, static_cast<uint64_t>(st.st_size)};

  // Walk the whole last segment: only a checksum proves where the valid records end.
  std::string payload;
  uint64_t offset = 0;
  while (offset < seg.size) {
    ASSIGN_OR_RETURN(Probe probe, ProbeRecord(seg, offset, &payload));
    if (probe.valid) {
      offset += probe.size;
      continue;
    }
    ASSIGN_OR_RETURN(std::optional<uint64_t> next, FindNextValid(seg, offset + 1));
    if (next.has_value() || !probe.torn) {
      // Not ours to repair: readers report it (or skip it with skip_corrupt).
      Warn(absl::StrCat(seg.path, ": corrupt record at byte offset ", offset, " (",
                        probe.problem, "); leaving it for readers"));
      offset = next.value_or(seg.size);
      continue;
    }
    Warn(absl::StrCat(seg.path, ": truncating a torn record at byte offset ", offset, " (",
                      probe.problem, "; ", seg.size - offset,
                      " bytes) left by an interrupted append"));
    if (::ftruncate(w->fd_, static_cast<off_t>(offset)) != 0 || ::fsync(w->fd_) != 0) {
      return ErrnoError(absl::StrCat("cannot truncate to byte offset ", offset), seg.path);
    }
    break;
  }
  w->segment_size_ = offset;
  return w;
}

RolloutLogWriter::~RolloutLogWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

absl::Status RolloutLogWriter::StartSegment(int64_t number) {
  std::string path = JoinPath(dir_, RolloutSegmentName(number));
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError("cannot create rollout log segment", path);
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
  segment_number_ = number;
  segment_path_ = std::move(path);
  segment_size_ = 0;
  // The new name must be durable before anything in it is promised durable by Sync().
  return FsyncDir(dir_);
}

absl::Status RolloutLogWriter::Append(const RolloutGroup& group) {
  const std::string payload = group.ToJson().Dump();
  if (payload.size() > UINT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("rollout group ", group.group_id, ": ",
                                                   payload.size(),
                                                   " bytes of JSON exceed a record's 4 GiB"));
  }
  std::string record;
  record.reserve(kRolloutRecordHeaderBytes + payload.size());
  PutU32(record, kRolloutRecordMagic);
  PutU32(record, static_cast<uint32_t>(payload.size()));
  PutU32(record, MaskCrc32c(Crc32c(payload)));
  record += payload;
  return AppendRecord(record);
}

absl::Status RolloutLogWriter::AppendRecord(const std::string& record) {
  std::lock_guard<std::mutex> lock(mu_);
  if (fd_ < 0) return absl::FailedPreconditionError(absl::StrCat(dir_, ": writer is closed"));
  if (segment_size_ > 0 && segment_size_ + record.size() > options_.max_segment_bytes) {
    // A sealed segment is fsynced: readers forgive a torn record only at the end of the
    // last segment, so an earlier one must never be torn by a later power loss.
    if (::fsync(fd_) != 0) return ErrnoError("fsync failed", segment_path_);
    RETURN_IF_ERROR(StartSegment(segment_number_ + 1));
  }
  // One write() in the normal case; a short write (signal, quota) continues from where it
  // stopped, and a failed one is cut back so the segment still ends on a whole record.
  size_t done = 0;
  while (done < record.size()) {
    ssize_t n = ::write(fd_, record.data() + done, record.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      absl::Status error =
          ErrnoError(absl::StrCat("append at byte offset ", segment_size_, " failed"),
                     segment_path_);
      if (::ftruncate(fd_, static_cast<off_t>(segment_size_)) != 0) {
        Warn(absl::StrCat(segment_path_, ": cannot cut a failed append back to byte offset ",
                          segment_size_, "; the next open will truncate it"));
      }
      return error;
    }
    done += static_cast<size_t>(n);
  }
  segment_size_ += record.size();
  return absl::OkStatus();
}

absl::Status RolloutLogWriter::Sync() {
  std::lock_guard<std::mutex> lock(mu_);
  if (fd_ < 0) return absl::FailedPreconditionError(absl::StrCat(dir_, ": writer is closed"));
  if (::fsync(fd_) != 0) return ErrnoError("fsync failed", segment_path_);
  return absl::OkStatus();
}

std::string RolloutLogWriter::current_segment() const {
  std::lock_guard<std::mutex> lock(mu_);
  return segment_path_;
}

// ---------------------------------------------------------------- reader

absl::StatusOr<std::unique_ptr<RolloutLogReader>> RolloutLogReader::Open(
    const std::string& dir, const RolloutLogReadOptions& options) {
  if (!IsDirectory(dir)) {
    return absl::NotFoundError(absl::StrCat(dir, ": no such rollout log directory"));
  }
  ASSIGN_OR_RETURN(auto segments, ListSegments(dir));
  std::vector<std::string> paths;
  for (size_t i = 0; i < segments.size(); ++i) {
    if (i > 0 && segments[i].first != segments[i - 1].first + 1) {
      std::string message =
          absl::StrCat(dir, ": segment ", RolloutSegmentName(segments[i - 1].first + 1),
                       " is missing (the log goes from ", RolloutSegmentName(segments[i - 1].first),
                       " to ", RolloutSegmentName(segments[i].first), ")");
      if (!options.skip_corrupt) return absl::DataLossError(message);
      Warn(message);
    }
    paths.push_back(segments[i].second);
  }
  return std::unique_ptr<RolloutLogReader>(new RolloutLogReader(std::move(paths), options));
}

RolloutLogReader::~RolloutLogReader() {
  if (fd_ >= 0) ::close(fd_);
}

absl::StatusOr<bool> RolloutLogReader::NextPayload(std::string* payload) {
  while (true) {
    if (fd_ < 0) {
      if (segment_index_ >= segments_.size()) return false;
      const std::string& path = segments_[segment_index_];
      fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd_ < 0) return ErrnoError("cannot open rollout log segment", path);
      struct stat st;
      if (::fstat(fd_, &st) != 0) return ErrnoError("cannot stat", path);
      file_size_ = static_cast<uint64_t>(st.st_size);
      offset_ = 0;
    }
    const std::string& path = segments_[segment_index_];
    if (offset_ >= file_size_) {
      ::close(fd_);
      fd_ = -1;
      ++segment_index_;
      continue;
    }
    SegmentView seg{fd_, path, file_size_};
    ASSIGN_OR_RETURN(Probe probe, ProbeRecord(seg, offset_, payload));
    if (probe.valid) {
      position_ = {path, offset_};
      offset_ += probe.size;
      return true;
    }
    // A torn tail is what a crash mid-append leaves: nothing valid may follow it, and
    // only the last segment is ever appended to.
    ASSIGN_OR_RETURN(std::optional<uint64_t> next, FindNextValid(seg, offset_ + 1));
    const bool last_segment = segment_index_ + 1 == segments_.size();
    if (!next.has_value() && last_segment && probe.torn) {
      Warn(absl::StrCat(path, ": skipping a torn record at byte offset ", offset_, " (",
                        probe.problem, "; ", file_size_ - offset_,
                        " bytes to the end of the log)"));
      offset_ = file_size_;
      continue;
    }
    std::string message =
        absl::StrCat(path, ": corrupt record at byte offset ", offset_, ": ", probe.problem);
    if (!options_.skip_corrupt) return absl::DataLossError(message);
    const uint64_t resume = next.value_or(file_size_);
    Warn(absl::StrCat(message, "; skipping ", resume - offset_, " bytes"));
    ++corrupt_skipped_;
    offset_ = resume;
  }
}

absl::StatusOr<bool> RolloutLogReader::Next(RolloutGroup* group) {
  std::string payload;
  ASSIGN_OR_RETURN(bool found, NextPayload(&payload));
  if (!found) return false;
  const std::string where =
      absl::StrCat(position_.file, ": record at byte offset ", position_.offset, ": ");
  absl::StatusOr<Json> json = Json::Parse(payload);
  if (!json.ok()) {
    return absl::DataLossError(absl::StrCat(where, json.status().message()));
  }
  absl::StatusOr<RolloutGroup> parsed = RolloutGroup::FromJson(*json);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(where, parsed.status().message()));
  }
  *group = *std::move(parsed);
  return true;
}

absl::StatusOr<std::vector<RolloutGroup>> RolloutLogReader::ReadAll(
    const std::string& dir, const RolloutLogReadOptions& options, int64_t* corrupt_skipped) {
  ASSIGN_OR_RETURN(RolloutLogReaderPtr reader, Open(dir, options));
  std::vector<RolloutGroup> out;
  RolloutGroup group;
  while (true) {
    ASSIGN_OR_RETURN(bool found, reader->Next(&group));
    if (!found) break;
    out.push_back(std::move(group));
  }
  if (corrupt_skipped != nullptr) *corrupt_skipped = reader->corrupt_skipped();
  return out;
}

}  // namespace lightrl
