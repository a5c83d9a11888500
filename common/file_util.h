// Whole-file reads and atomic writes. Writers never leave a half-written file under the
// final name: data goes to a temporary file in the same directory, is fsync'ed, then
// renamed over the target.
#pragma once

#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lightrl {

absl::StatusOr<std::string> ReadFile(const std::string& path);
absl::Status WriteFileAtomic(const std::string& path, absl::string_view data);

// A file being written under a temporary name; Commit() makes it appear under `path`.
// Destroying it without Commit() removes the temporary file.
class AtomicFileWriter {
 public:
  static absl::StatusOr<AtomicFileWriter> Open(const std::string& path);
  AtomicFileWriter(AtomicFileWriter&& other) noexcept;
  AtomicFileWriter& operator=(AtomicFileWriter&&) = delete;
  ~AtomicFileWriter();

  absl::Status Write(const void* data, size_t size);
  absl::Status Commit();

 private:
  AtomicFileWriter(std::string path, std::string tmp_path, int fd)
      : path_(std::move(path)), tmp_path_(std::move(tmp_path)), fd_(fd) {}
  std::string path_;
  std::string tmp_path_;
  int fd_ = -1;
};

bool FileExists(const std::string& path);
bool IsDirectory(const std::string& path);
// Creates the directory and its parents; OK if it exists.
absl::Status MakeDirs(const std::string& path);
std::string JoinPath(absl::string_view a, absl::string_view b);

}  // namespace lightrl
