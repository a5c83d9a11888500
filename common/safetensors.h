// Reads and writes the safetensors format: a single file, or a sharded checkpoint with a
// model.safetensors.index.json. Torch-free: tensors are raw bytes with a dtype and shape;
// policy/ turns them into torch tensors. Files are mapped read-only and written atomically.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"
#include "common/json.h"

namespace lightrl {

enum class DType { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool };

absl::StatusOr<DType> ParseDType(absl::string_view name);
const char* DTypeName(DType dtype);  // the safetensors spelling: "F32", "BF16", ...
size_t DTypeSize(DType dtype);

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // valid while the file that owns it is open
  size_t nbytes = 0;
  int64_t numel() const;
};

std::string ShapeString(const std::vector<int64_t>& shape);  // "[2, 3]"

class SafetensorsFile {
 public:
  // Maps `path` and validates the header: every tensor's dtype, shape and byte range,
  // ranges inside the file and not overlapping. Errors name the file and tensor.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* Find(absl::string_view name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// A tensor to write: the bytes are copied out during the call.
struct TensorData {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;
};

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorData>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

// The tensors of a checkpoint directory: model.safetensors, or the shards that
// model.safetensors.index.json lists (every listed tensor must be in its shard and every
// shard tensor must be listed).
class SafetensorsCheckpoint {
 public:
  static absl::StatusOr<SafetensorsCheckpoint> Open(const std::string& dir);
  const TensorInfo* Find(absl::string_view name) const;
  // Every tensor name, sorted.
  std::vector<std::string> Names() const;
  const std::string& dir() const { return dir_; }
  // The file holding `name`, for error messages.
  std::string FileOf(absl::string_view name) const;

 private:
  std::string dir_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::pair<size_t, const TensorInfo*>> by_name_;
};

// Writes `tensors` into `dir` as model.safetensors, or as model-0000N-of-0000M.safetensors
// shards plus an index when their total exceeds `max_shard_bytes`. Removes the shards and
// index of an earlier checkpoint in `dir` that the new one does not overwrite.
absl::Status WriteSafetensorsCheckpoint(const std::string& dir,
                                        const std::vector<TensorData>& tensors,
                                        size_t max_shard_bytes = size_t{5} << 30);

}  // namespace lightrl
