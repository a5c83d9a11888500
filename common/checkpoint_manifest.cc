#include "common/checkpoint_manifest.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/crc32c.h"
#include "common/file_util.h"
#include "common/json.h"
#include "common/status.h"

namespace lightrl {
namespace {

constexpr absl::string_view kFormat = "lightrl-checkpoint-manifest-v1";

absl::Status ErrnoError(absl::string_view what, const std::string& path) {
  const int e = errno;
  std::string message = absl::StrCat(path, ": ", what, ": ", std::strerror(e));
  if (e == ENOENT) return absl::NotFoundError(message);
  return absl::InternalError(message);
}

// Regular files under `root`/`rel`, as paths relative to `root`; links are not followed.
absl::Status ListFiles(const std::string& root, const std::string& rel,
                       std::vector<std::string>* out) {
  const std::string dir = rel.empty() ? root : JoinPath(root, rel);
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return ErrnoError("cannot list checkpoint directory", dir);
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  ::closedir(d);
  for (const std::string& name : names) {
    const std::string child = rel.empty() ? name : JoinPath(rel, name);
    if (rel.empty() && name == kCheckpointManifestName) continue;
    struct stat st;
    if (::lstat(JoinPath(root, child).c_str(), &st) != 0) {
      return ErrnoError("cannot stat", JoinPath(root, child));
    }
    if (S_ISDIR(st.st_mode)) {
      RETURN_IF_ERROR(ListFiles(root, child, out));
    } else if (S_ISREG(st.st_mode)) {
      out->push_back(child);
    }
  }
  return absl::OkStatus();
}

std::string Hex(uint32_t crc) { return absl::StrFormat("%08x", crc); }

}  // namespace

absl::StatusOr<uint32_t> FileCrc32c(const std::string& path, uint64_t* size) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot open", path);
  std::vector<char> buf(size_t{4} << 20);
  uint32_t crc = 0;
  uint64_t total = 0;
  while (true) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      absl::Status error = ErrnoError(absl::StrCat("read at byte offset ", total, " failed"), path);
      ::close(fd);
      return error;
    }
    if (n == 0) break;
    crc = Crc32cExtend(crc, buf.data(), static_cast<size_t>(n));
    total += static_cast<uint64_t>(n);
  }
  ::close(fd);
  if (size != nullptr) *size = total;
  return crc;
}

absl::Status WriteCheckpointManifest(const std::string& dir) {
  std::vector<std::string> files;
  RETURN_IF_ERROR(ListFiles(dir, "", &files));
  std::sort(files.begin(), files.end());
  Json list = Json::MakeArray();
  for (const std::string& name : files) {
    uint64_t bytes = 0;
    ASSIGN_OR_RETURN(uint32_t crc, FileCrc32c(JoinPath(dir, name), &bytes));
    Json entry = Json::MakeObject();
    entry.set("name", Json(name));
    entry.set("bytes", Json(static_cast<int64_t>(bytes)));
    entry.set("crc32c", Json(Hex(crc)));
    list.push_back(std::move(entry));
  }
  Json manifest = Json::MakeObject();
  manifest.set("format", Json(std::string(kFormat)));
  manifest.set("files", std::move(list));
  return WriteFileAtomic(JoinPath(dir, kCheckpointManifestName), manifest.Dump(2) + "\n");
}

absl::StatusOr<ManifestCheck> VerifyCheckpointManifest(
    const std::string& dir, const std::function<bool(absl::string_view)>& select) {
  ManifestCheck check;
  const std::string path = JoinPath(dir, kCheckpointManifestName);
  if (!FileExists(path)) return check;
  check.present = true;
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  absl::StatusOr<Json> json = Json::Parse(text);
  if (!json.ok()) {
    return absl::DataLossError(absl::StrCat(path, ": unreadable manifest: ", json.status().message()));
  }
  const Json* format = json->find("format");
  const Json* files = json->find("files");
  if (format == nullptr || !format->is_string() || format->as_string() != kFormat ||
      files == nullptr || !files->is_array()) {
    return absl::DataLossError(absl::StrCat(path, ": not a manifest (expected \"format\": \"",
                                            kFormat, "\" and a \"files\" array)"));
  }
  for (size_t i = 0; i < files->size(); ++i) {
    const Json& entry = files->as_array()[i];
    const Json* name = entry.find("name");
    const Json* bytes = entry.find("bytes");
    const Json* crc = entry.find("crc32c");
    uint32_t want_crc = 0;
    if (name == nullptr || !name->is_string() || name->as_string().empty() ||
        bytes == nullptr || !bytes->is_int() || crc == nullptr || !crc->is_string() ||
        !absl::SimpleHexAtoi(crc->as_string(), &want_crc)) {
      return absl::DataLossError(absl::StrCat(
          path, ": files[", i, "]: expected {\"name\", \"bytes\", \"crc32c\"}, got ", entry.Dump()));
    }
    if (select && !select(name->as_string())) continue;
    const std::string file = JoinPath(dir, name->as_string());
    struct stat st;
    if (::stat(file.c_str(), &st) != 0) {
      return absl::DataLossError(absl::StrCat(file, ": listed in ", kCheckpointManifestName,
                                              " but cannot be read: ", std::strerror(errno)));
    }
    uint64_t got_bytes = 0;
    ASSIGN_OR_RETURN(uint32_t got_crc, FileCrc32c(file, &got_bytes));
    if (static_cast<int64_t>(got_bytes) != bytes->as_int()) {
      return absl::DataLossError(absl::StrCat(file, ": ", got_bytes, " bytes, but ",
                                              kCheckpointManifestName, " recorded ",
                                              bytes->as_int(), " (truncated or overwritten)"));
    }
    if (got_crc != want_crc) {
      return absl::DataLossError(absl::StrCat(file, ": CRC-32C ", Hex(got_crc), " does not match ",
                                              Hex(want_crc), " recorded in ", kCheckpointManifestName,
                                              " (the file is corrupt)"));
    }
    ++check.files_checked;
  }
  return check;
}

}  // namespace lightrl
