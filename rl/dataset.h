// A prompt dataset read from JSONL (configurable prompt and ground-truth keys, the row's
// other fields kept as reward metadata), iterated in a seeded shuffled order per epoch
// from a resumable position. Torch-free; owns the examples and the cursor, nothing else.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace lightrl {

struct Example {
  std::string id;  // "file:line"
  std::string prompt;
  std::string answer;
  // The row's fields that reach reward servers as ScoreItem.metadata: strings as they
  // are, other JSON values as their JSON text.
  std::map<std::string, std::string> metadata;
};

// Largest metadata_max_bytes: a row's metadata travels with each of its group's responses.
inline constexpr int64_t kMaxDatasetMetadataBytes = int64_t{16} << 20;

// Which fields of a row become its Example::metadata.
struct DatasetMetadataOptions {
  // Field names; "*" = every field but the prompt and answer keys; empty = none. A listed
  // field a row lacks is left out of that row's metadata.
  std::vector<std::string> fields = {"*"};
  // Bytes of one row's metadata (keys plus values) at most; a bigger row is an error
  // naming file:line. In [0, kMaxDatasetMetadataBytes].
  int64_t max_bytes = int64_t{64} << 10;
};

struct DatasetPosition {
  int64_t epoch = 0;
  int64_t index = 0;  // next example within the epoch's order
};

class Dataset {
 public:
  // Every non-blank line must be an object with a string `prompt_key`; `answer_key` must
  // be a string or number when `require_answer`. The fields `metadata` names are kept as
  // each example's metadata. Errors name file:line and the key.
  static absl::StatusOr<Dataset> Load(const std::string& path, const std::string& prompt_key,
                                      const std::string& answer_key, bool require_answer,
                                      const DatasetMetadataOptions& metadata = {});

  int64_t size() const { return static_cast<int64_t>(examples_.size()); }
  const Example& at(int64_t i) const { return examples_[i]; }
  const std::vector<Example>& examples() const { return examples_; }

  // The next `n` examples in epoch order (shuffled with `seed` + epoch when `shuffle`),
  // advancing `position` across epoch boundaries.
  std::vector<const Example*> Next(int64_t n, uint64_t seed, bool shuffle,
                                   DatasetPosition& position) const;

 private:
  std::vector<int64_t> Order(int64_t epoch, uint64_t seed, bool shuffle) const;
  std::vector<Example> examples_;
};

}  // namespace lightrl
