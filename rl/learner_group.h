// The learner as the controller drives it in a multi-process run: rank 0 (the controller)
// announces every learner call, with its batch, to the other ranks, which only serve
// learner calls (ServeLearner); with one process it is the Learner alone. Torch-free; it
// owns the command channel, not the training (rl/learner.h) nor the connection
// (rl/distributed.h).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "policy/policy_model.h"
#include "rl/distributed.h"
#include "rl/learner.h"

namespace lightrl {

class LearnerGroup {
 public:
  // `group` may be null (one process); none is owned. `policy` is the learner's model.
  // When it holds only a shard (PolicyModel::CreateShard / LoadShard), `whole` is rank
  // 0's whole model for generation: every update ends by gathering all ranks' shards into
  // it (rl/sharded_weights.h), so that it always holds the learner's weights. Without
  // `whole` nothing is gathered: rank 0's engine runs on the ranks' shards (LeadFollow).
  LearnerGroup(Learner* learner, ProcessGroup* group, PolicyModel* policy,
               PolicyModel* whole = nullptr)
      : learner_(learner), group_(group), policy_(policy), whole_(whole) {}

  // With `host` instead of a whole model (rank 0 of a sharded learner whose fleet
  // generates), every update ends by gathering the ranks' shards into these host tensors
  // (FP32, GatherShardsToHost), so no device holds the whole model. Not owned.
  void GatherIntoHost(std::vector<PolicyModel::WeightTensor>* host) { host_ = host; }
  // Gathers the current weights into the host tensors now (before the first update): a
  // call of all ranks, announced as the others wait between calls.
  absl::Status GatherWeights();

  absl::StatusOr<LearnerStats> TrainRl(const std::vector<TrainSample>& batch);
  absl::StatusOr<LearnerStats> TrainSft(const std::vector<TrainSample>& batch, double lr);
  // Every rank saves its part of the optimizer state under `path` (a shared file system).
  absl::Status SaveState(const std::string& path);
  // The model's weights into checkpoint folder `dir` in `dtype`: a whole model's by rank 0
  // (PolicyModel::Save); a sharded one's by every rank as a sharded checkpoint
  // (SaveShards: shard files, then the index and config.json).
  absl::Status SaveWeights(const std::string& dir, DType dtype);
  // Whether the learner's model is a shard.
  bool sharded() const { return !(policy_->shard() == ShardCoords{}); }
  // Between learner calls: the other ranks run their LearnerServing::follow with `payload`
  // (an engine on their shards following their instance's leader, the batch for the
  // leaders of other copies) until their leader ends it (RolloutInstance::Pause), then
  // serve learner calls again.
  absl::Status LeadFollow(const std::string& payload);
  // Ends the other ranks' ServeLearner and checks that every rank holds the same weights
  // (FAILED_PRECONDITION naming the ranks otherwise). Call once, at the end of the run.
  absl::Status Finish();
  // Tells the other ranks that the run failed, so they exit instead of waiting. Only
  // between learner calls (the other ranks are then waiting for the next one).
  void Abort(const absl::Status& status);
  // True from the start of a call until it returns OK: an error left the other ranks
  // somewhere inside that call, not waiting for the next one.
  bool in_call() const { return in_call_; }

 private:
  bool in_call_ = false;
  Learner* learner_;
  ProcessGroup* group_;
  // The gather that ends an update of a shard: into `whole_`, or into `host_`.
  absl::Status GatherAfterUpdate();

  PolicyModel* policy_;
  PolicyModel* whole_;
  std::vector<PolicyModel::WeightTensor>* host_ = nullptr;
};

// What a learner-only rank does besides training, as rank 0's LearnerGroup has it.
struct LearnerServing {
  // A shard joins the gather into rank 0's whole model (or host tensors) after every
  // update (LearnerGroup with `whole` or GatherIntoHost).
  bool gather_shards = true;
  // Run with the payload when rank 0 calls LeadFollow (null: refused).
  std::function<absl::Status(const std::string& payload)> follow;
};

// A learner-only rank: runs the calls rank 0's LearnerGroup announces until Finish
// (OK) or Abort (the error rank 0 reported). `policy` is the learner's model (a shard
// joins the gathers and sharded saves).
absl::Status ServeLearner(Learner* learner, ProcessGroup* group, PolicyModel* policy,
                          const LearnerServing& serving = {});

// FNV-1a 64 over every parameter's bytes (ExportWeights, FP32), as 16 hex digits; of a
// shard, over the parameters it holds whole (those every rank of its layout holds alike).
absl::StatusOr<std::string> WeightsChecksum(const PolicyModel& policy);

}  // namespace lightrl
