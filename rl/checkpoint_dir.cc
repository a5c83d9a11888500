#include "rl/checkpoint_dir.h"

#include <dirent.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/checkpoint_manifest.h"
#include "common/file_util.h"
#include "common/json.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/status.h"

namespace lightrl {

std::string CheckpointName(int64_t step, int64_t sft_step) {
  return absl::StrFormat("step-%06d-sft-%06d", step, sft_step);
}

absl::Status CutMetricsToCheckpoint(const std::string& checkpoint_dir, const std::string& path) {
  const std::string position_path = JoinPath(checkpoint_dir, kMetricsPositionName);
  if (!FileExists(position_path)) {
    LogWarning("lightrl run: warning: %s has no %s (an older checkpoint): %s keeps "
               "the lines logged after it; readers take the last value per step",
               checkpoint_dir.c_str(), kMetricsPositionName, path.c_str());
    return absl::OkStatus();
  }
  if (!FileExists(path)) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::string text, ReadFile(position_path));
  absl::StatusOr<Json> json = Json::Parse(text);
  const Json* bytes = json.ok() ? json->find("metrics_jsonl_bytes") : nullptr;
  if (bytes == nullptr || !bytes->is_int() || bytes->as_int() < 0) {
    return absl::DataLossError(absl::StrCat(
        position_path, ": expected {\"metrics_jsonl_bytes\": N >= 0}, got ", text));
  }
  ASSIGN_OR_RETURN(int64_t dropped, CutJsonlMetrics(path, static_cast<uint64_t>(bytes->as_int())));
  if (dropped > 0) {
    LogInfo("lightrl run: dropped %lld lines of %s logged after the checkpoint",
            static_cast<long long>(dropped), path.c_str());
  }
  return absl::OkStatus();
}

std::vector<std::string> CheckpointNames(const std::string& root) {
  std::vector<std::string> names;
  if (DIR* d = ::opendir(root.c_str())) {
    while (dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n.rfind("step-", 0) == 0 && n.find(".tmp") == std::string::npos) names.push_back(n);
    }
    ::closedir(d);
  }
  std::sort(names.begin(), names.end());
  return names;
}

absl::StatusOr<bool> VerifyCheckpoint(const std::string& dir) {
  if (!IsDirectory(dir)) return absl::DataLossError(absl::StrCat(dir, ": does not exist"));
  ASSIGN_OR_RETURN(ManifestCheck check, VerifyCheckpointManifest(dir));
  return check.present;
}

}  // namespace lightrl
