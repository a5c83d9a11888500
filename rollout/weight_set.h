// One version of the policy's weights as plain bytes: what the learner publishes and a
// rollout worker installs. Torch-free and protobuf-free.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/safetensors.h"
#include "policy/policy_model.h"

namespace lightrl {

struct WeightSet {
  int64_t version = 0;
  DType dtype = DType::kF32;  // of every tensor: F32 or BF16
  std::string model_config_json;
  std::vector<PolicyModel::WeightTensor> tensors;  // as PolicyModel::ExportWeights gives
};

}  // namespace lightrl
