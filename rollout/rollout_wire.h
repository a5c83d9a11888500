// Conversions between the rollout protocol (lightrl.v1 rollout.proto) and the engine's
// plain structs, and the weight stream's chunking and reassembly. Internal to rollout/:
// included only by .cc files, so public headers stay protobuf-free.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/safetensors.h"
#include "inference_engine/sampling_params.h"
#include "lightrl/v1/rollout.pb.h"
#include "policy/policy_model.h"
#include "rollout/weight_set.h"

namespace lightrl {

// Largest data field of one WeightChunk.
inline constexpr size_t kWeightChunkBytes = size_t{4} << 20;

void ToProto(const SamplingParams& params, lightrl::v1::SamplingOptions* out);
// Fills the engine's params; the engine's Validate() judges the values.
SamplingParams FromProto(const lightrl::v1::SamplingOptions& options);

void ToProto(const GeneratedSample& sample, int index, lightrl::v1::GeneratedSequence* out);
// INVALID_ARGUMENT for an unknown finish reason or mismatched token/logprob counts.
absl::StatusOr<GeneratedSample> FromProto(const lightrl::v1::GeneratedSequence& sequence);

// Calls `emit` with each chunk of `weights`, header first; stops at the first false.
// `replace_newer` asks the worker to install them even over a newer version.
bool ForEachWeightChunk(const WeightSet& weights, bool replace_newer,
                        const std::function<bool(const lightrl::v1::WeightChunk&)>& emit,
                        size_t chunk_bytes = kWeightChunkBytes);

// Rebuilds a WeightSet from a chunk stream, checking each chunk as it comes: the header
// first and once, its tensors those of the served model (when there is one) and their
// total within a byte budget, tensor indices and byte ranges inside the declared tensors,
// no byte written twice, every byte present and the CRC-32C right at the end. A tensor's
// memory is allocated when its first bytes arrive, never on the header's word alone.
// Errors are INVALID_ARGUMENT naming the chunk and the tensor.
class WeightAssembler {
 public:
  // `max_total_bytes` bounds the declared tensors' total; `expected` (empty: no model
  // served yet) is the served model's names and shapes, which the header must match.
  WeightAssembler(int64_t max_total_bytes, std::vector<PolicyModel::WeightSpec> expected = {})
      : max_total_bytes_(max_total_bytes), expected_(std::move(expected)) {}
  absl::Status Add(const lightrl::v1::WeightChunk& chunk);
  absl::StatusOr<WeightSet> Finish();
  // The header's replace_newer (false before the header).
  bool replace_newer() const { return replace_newer_; }

 private:
  absl::Status CheckAgainstExpected(const lightrl::v1::WeightHeader& header) const;

  int64_t max_total_bytes_;
  std::vector<PolicyModel::WeightSpec> expected_;
  int64_t num_chunks_ = 0;
  bool have_header_ = false;
  bool replace_newer_ = false;
  uint32_t crc32c_ = 0;
  WeightSet set_;
  std::vector<int64_t> filled_;  // bytes received per tensor (chunks arrive in order)
  std::vector<int64_t> bytes_;   // bytes declared per tensor
};

}  // namespace lightrl
