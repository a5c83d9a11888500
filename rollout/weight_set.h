// One version of the policy's weights as plain bytes: what the learner publishes and a
// rollout worker installs. Torch-free and protobuf-free.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "common/safetensors.h"
#include "policy/policy_model.h"

namespace lightrl {

struct WeightSet {
  int64_t version = 0;
  DType dtype = DType::kF32;  // of every tensor: F32 or BF16
  std::string model_config_json;
  std::vector<PolicyModel::WeightTensor> tensors;  // as PolicyModel::ExportWeights gives
  // The run's numerics.batch_invariant: the worker's engine generates in this mode from
  // this version on, so its logprobs are the learner's bit for bit when on.
  bool batch_invariant = false;
};

// One version broadcast to the group's members: the tensors' names and byte sizes in the
// order rank 0 sends them, which must be exactly the served model's parameter buffers.
struct WeightBroadcast {
  int64_t group_id = -1;
  int64_t version = 0;
  bool replace_newer = false;
  std::string model_config_json;
  std::vector<std::string> tensor_names;
  std::vector<int64_t> tensor_bytes;
  absl::Duration timeout = absl::Seconds(300);
  bool batch_invariant = false;  // as WeightSet::batch_invariant
};

}  // namespace lightrl
