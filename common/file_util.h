// Whole-file reads, atomic writes and directory operations, all by system calls: no file
// operation here or in its callers goes through a shell. Writers never leave a
// half-written file under the final name: data goes to a temporary file in the same
// directory, is fsync'ed, then renamed over the target.
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
// Removes `path` and, if it is a directory, everything under it, like `rm -rf` but with
// no shell: any name is safe (quotes, `$(...)`, spaces, newlines). Symbolic links are
// removed, never followed, so a link inside the tree cannot reach files outside it. OK if
// `path` does not exist. The replacement for every `system("rm -rf ...")` (the trainer's
// checkpoint rotation included). An error names the entry that could not be removed.
absl::Status RemoveTree(const std::string& path);
std::string JoinPath(absl::string_view a, absl::string_view b);

}  // namespace lightrl
