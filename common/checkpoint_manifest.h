// The checksum manifest of a checkpoint directory: the size and CRC-32C of every file in
// it, written last (its presence says the directory is complete) and checked before any
// file in the directory is trusted. Owns manifest.json's format; knows nothing of what
// the files hold (the trainer and the policy decide what a checkpoint contains).
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lightrl {

inline constexpr absl::string_view kCheckpointManifestName = "manifest.json";

// Writes DIR/manifest.json (atomically) listing every regular file under DIR, subfolders
// included, by path relative to DIR. Call it once every other file is in place.
absl::Status WriteCheckpointManifest(const std::string& dir);

struct ManifestCheck {
  bool present = false;  // false: DIR has no manifest (written before checksums existed)
  int64_t files_checked = 0;
};

// Checks DIR against its manifest: each listed file (or, with `select`, each listed file
// it accepts) must exist with the recorded size and CRC-32C. No manifest is not an error
// (present = false). A mismatch is DATA_LOSS naming the file and what differs.
absl::StatusOr<ManifestCheck> VerifyCheckpointManifest(
    const std::string& dir, const std::function<bool(absl::string_view)>& select = nullptr);

// The CRC-32C of a whole file, read in fixed-size chunks.
absl::StatusOr<uint32_t> FileCrc32c(const std::string& path, uint64_t* size = nullptr);

}  // namespace lightrl
