// A run's checkpoint folder: the step-NNNNNN-sft-NNNNNN names, the scan of the folders
// under a checkpoint root, their manifest check, and cutting metrics.jsonl back to where it
// ended at a checkpoint. Owns naming and reading only: it does not write checkpoints or
// load weights. Torch-free.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lightrl {

// The checkpoint file recording where metrics.jsonl ended when the checkpoint was taken.
inline constexpr const char* kMetricsPositionName = "metrics_position.json";

// "step-000012-sft-000003": the folder name of the checkpoint after `step` RL steps and
// `sft_step` SFT steps.
std::string CheckpointName(int64_t step, int64_t sft_step);

// Checkpoint directories under `root` (step-NNNNNN-sft-NNNNNN), oldest first; names sort
// in training order.
std::vector<std::string> CheckpointNames(const std::string& root);

// A checkpoint directory checked against its manifest: OK with whether it had one, or
// DATA_LOSS naming the file that failed.
absl::StatusOr<bool> VerifyCheckpoint(const std::string& dir);

// Cuts metrics.jsonl (`path`) back to where it ended at the checkpoint in
// `checkpoint_dir`, so that the steps a resumed run trains again are logged once.
absl::Status CutMetricsToCheckpoint(const std::string& checkpoint_dir, const std::string& path);

}  // namespace lightrl
