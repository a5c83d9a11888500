#include "rl/learner_group.h"

#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "common/status.h"
#include "rl/sharded_weights.h"

namespace lightrl {
namespace {

// What rank 0 announces. The encoding is private to one run's binary: every rank runs
// the same executable.
enum class Command : uint8_t {
  kTrainRl = 1,
  kTrainSft = 2,
  kSave = 3,
  kFinish = 4,
  kAbort = 5,
  kSaveWeights = 6,
  kFollow = 7,
  kGather = 8,
};

bool IsShard(const PolicyModel& policy) { return !(policy.shard() == ShardCoords{}); }

class Writer {
 public:
  template <typename T>
  void Put(const T& v) {
    out_.append(reinterpret_cast<const char*>(&v), sizeof(T));
  }
  template <typename T>
  void PutVector(const std::vector<T>& v) {
    Put<uint64_t>(v.size());
    out_.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
  }
  void PutString(const std::string& s) {
    Put<uint64_t>(s.size());
    out_.append(s);
  }
  std::string& str() { return out_; }

 private:
  std::string out_;
};

class Reader {
 public:
  explicit Reader(const std::string& in) : in_(in) {}
  template <typename T>
  bool Get(T& v) {
    if (pos_ + sizeof(T) > in_.size()) return false;
    std::memcpy(&v, in_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  template <typename T>
  bool GetVector(std::vector<T>& v) {
    uint64_t n = 0;
    if (!Get(n) || n > (in_.size() - pos_) / sizeof(T)) return false;
    v.resize(n);
    std::memcpy(v.data(), in_.data() + pos_, n * sizeof(T));
    pos_ += n * sizeof(T);
    return true;
  }
  bool GetString(std::string& s) {
    uint64_t n = 0;
    if (!Get(n) || n > in_.size() - pos_) return false;
    s.assign(in_.data() + pos_, n);
    pos_ += n;
    return true;
  }

 private:
  const std::string& in_;
  size_t pos_ = 0;
};

std::string EncodeBatch(Command command, const std::vector<TrainSample>& batch, double lr) {
  Writer w;
  w.Put(static_cast<uint8_t>(command));
  w.Put(lr);
  w.Put<uint64_t>(batch.size());
  for (const TrainSample& s : batch) {
    w.PutString(s.id);
    w.PutVector(s.prompt);
    w.PutVector(s.response);
    w.PutVector(s.rollout_logprobs);
    w.Put(s.advantage);
    w.Put<uint8_t>(s.keep ? 1 : 0);
  }
  return std::move(w.str());
}

bool DecodeBatch(Reader& r, std::vector<TrainSample>& batch, double& lr) {
  uint64_t n = 0;
  if (!r.Get(lr) || !r.Get(n)) return false;
  batch.clear();
  for (uint64_t i = 0; i < n; ++i) {
    TrainSample s;
    uint8_t keep = 0;
    if (!r.GetString(s.id) || !r.GetVector(s.prompt) || !r.GetVector(s.response) ||
        !r.GetVector(s.rollout_logprobs) ||
        !r.Get(s.advantage) || !r.Get(keep)) {
      return false;
    }
    s.keep = keep != 0;
    batch.push_back(std::move(s));
  }
  return true;
}

// Every rank compares its weights with rank 0's checksum; all learn which ranks differ.
absl::Status CheckSameWeights(ProcessGroup* group, const PolicyModel& policy,
                              const std::string& rank0_checksum) {
  ASSIGN_OR_RETURN(std::string mine, WeightsChecksum(policy));
  LogInfo("lightrl run: rank %lld weights checksum %s",
          static_cast<long long>(group->rank()), mine.c_str());
  std::vector<double> differs(group->world_size(), 0);
  differs[group->rank()] = mine == rank0_checksum ? 0 : 1;
  RETURN_IF_ERROR(group->AllReduce(&differs, ReduceOp::kSum));
  std::vector<int64_t> bad;
  for (int64_t r = 0; r < group->world_size(); ++r) {
    if (differs[r] != 0) bad.push_back(r);
  }
  if (!bad.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "learner ranks [", absl::StrJoin(bad, ", "), "] end with weights that differ from rank 0's"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> WeightsChecksum(const PolicyModel& policy) {
  ASSIGN_OR_RETURN(std::vector<PolicyModel::WeightTensor> weights,
                   policy.ExportLocalWeights(DType::kF32));
  uint64_t h = 1469598103934665603ull;
  for (const auto& w : weights) {
    // A shard's blocks differ by rank; what every rank holds whole must agree.
    if (IsShard(policy)) {
      ASSIGN_OR_RETURN(TensorShard held, ShardOf(w.name, policy.config(), policy.shard()));
      if (!held.whole() || ExpertIndexOf(w.name) >= 0) continue;
    }
    for (char c : w.name) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
    for (char c : w.data) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  }
  return absl::StrFormat("%016x", h);
}

absl::StatusOr<LearnerStats> LearnerGroup::TrainRl(const std::vector<TrainSample>& batch) {
  in_call_ = true;
  if (group_ != nullptr) {
    std::string message = EncodeBatch(Command::kTrainRl, batch, 0);
    RETURN_IF_ERROR(group_->BroadcastBytes(&message, 0));
  }
  ASSIGN_OR_RETURN(LearnerStats stats, learner_->TrainRl(batch));
  RETURN_IF_ERROR(GatherAfterUpdate());
  in_call_ = false;
  return stats;
}

absl::StatusOr<LearnerStats> LearnerGroup::TrainSft(const std::vector<TrainSample>& batch, double lr) {
  in_call_ = true;
  if (group_ != nullptr) {
    std::string message = EncodeBatch(Command::kTrainSft, batch, lr);
    RETURN_IF_ERROR(group_->BroadcastBytes(&message, 0));
  }
  ASSIGN_OR_RETURN(LearnerStats stats, learner_->TrainSft(batch, lr));
  RETURN_IF_ERROR(GatherAfterUpdate());
  in_call_ = false;
  return stats;
}

absl::Status LearnerGroup::GatherAfterUpdate() {
  if (!sharded()) return absl::OkStatus();
  if (whole_ != nullptr) return GatherShards(group_, *policy_, whole_);
  if (host_ != nullptr) return GatherShardsToHost(group_, *policy_, host_);
  return absl::OkStatus();
}

absl::Status LearnerGroup::GatherWeights() {
  if (!sharded() || host_ == nullptr) {
    return absl::FailedPreconditionError(
        "LearnerGroup::GatherWeights: the learner holds no shard to gather into host tensors");
  }
  in_call_ = true;
  std::string message(1, static_cast<char>(Command::kGather));
  RETURN_IF_ERROR(group_->BroadcastBytes(&message, 0));
  RETURN_IF_ERROR(GatherShardsToHost(group_, *policy_, host_));
  in_call_ = false;
  return absl::OkStatus();
}

absl::Status LearnerGroup::LeadFollow(const std::string& payload) {
  if (group_ == nullptr) return absl::OkStatus();
  Writer w;
  w.Put(static_cast<uint8_t>(Command::kFollow));
  w.PutString(payload);
  return group_->BroadcastBytes(&w.str(), 0);
}

absl::Status LearnerGroup::SaveState(const std::string& path) {
  in_call_ = true;
  if (group_ != nullptr) {
    Writer w;
    w.Put(static_cast<uint8_t>(Command::kSave));
    w.PutString(path);
    RETURN_IF_ERROR(group_->BroadcastBytes(&w.str(), 0));
  }
  RETURN_IF_ERROR(learner_->SaveState(path));
  in_call_ = false;
  return absl::OkStatus();
}

absl::Status LearnerGroup::SaveWeights(const std::string& dir, DType dtype) {
  if (!sharded()) return policy_->Save(dir, dtype);
  in_call_ = true;
  Writer w;
  w.Put(static_cast<uint8_t>(Command::kSaveWeights));
  w.PutString(dir);
  w.Put(static_cast<uint8_t>(dtype));
  RETURN_IF_ERROR(group_->BroadcastBytes(&w.str(), 0));
  RETURN_IF_ERROR(SaveShards(group_, *policy_, dir, dtype));
  in_call_ = false;
  return absl::OkStatus();
}

absl::Status LearnerGroup::Finish() {
  if (group_ == nullptr) return absl::OkStatus();
  in_call_ = true;
  ASSIGN_OR_RETURN(std::string checksum, WeightsChecksum(*policy_));
  Writer w;
  w.Put(static_cast<uint8_t>(Command::kFinish));
  w.PutString(checksum);
  RETURN_IF_ERROR(group_->BroadcastBytes(&w.str(), 0));
  RETURN_IF_ERROR(CheckSameWeights(group_, *policy_, checksum));
  LogInfo("lightrl run: %s identical on all %lld learner ranks",
          sharded() ? "replicated weights" : "weights", static_cast<long long>(group_->world_size()));
  in_call_ = false;
  return absl::OkStatus();
}

void LearnerGroup::Abort(const absl::Status& status) {
  if (group_ == nullptr) return;
  Writer w;
  w.Put(static_cast<uint8_t>(Command::kAbort));
  w.PutString(std::string(status.message()));
  (void)group_->BroadcastBytes(&w.str(), 0);
}

absl::Status ServeLearner(Learner* learner, ProcessGroup* group, PolicyModel* policy,
                          const LearnerServing& serving) {
  int64_t calls = 0;
  for (;;) {
    std::string message;
    RETURN_IF_ERROR(group->BroadcastBytes(&message, 0));
    Reader r(message);
    uint8_t command = 0;
    if (!r.Get(command)) return absl::DataLossError("empty learner command from rank 0");
    const auto bad = [&] {
      return absl::DataLossError(absl::StrCat("malformed learner command ", int{command}, " from rank 0"));
    };
    switch (static_cast<Command>(command)) {
      case Command::kTrainRl:
      case Command::kTrainSft: {
        std::vector<TrainSample> batch;
        double lr = 0;
        if (!DecodeBatch(r, batch, lr)) return bad();
        if (static_cast<Command>(command) == Command::kTrainRl) {
          RETURN_IF_ERROR(learner->TrainRl(batch).status());
        } else {
          RETURN_IF_ERROR(learner->TrainSft(batch, lr).status());
        }
        if (IsShard(*policy) && serving.gather_shards) {
          RETURN_IF_ERROR(GatherShards(group, *policy, nullptr));
        }
        ++calls;
        break;
      }
      case Command::kGather:
        // Rank 0's side assembles the blocks; this rank's sends its own.
        RETURN_IF_ERROR(GatherShards(group, *policy, nullptr));
        break;
      case Command::kFollow: {
        std::string payload;
        if (!r.GetString(payload)) return bad();
        if (!serving.follow) {
          return absl::FailedPreconditionError(
              "rank 0 asked this learner rank to follow its engine, but it has none");
        }
        RETURN_IF_ERROR(serving.follow(payload));
        break;
      }
      case Command::kSave: {
        std::string path;
        if (!r.GetString(path)) return bad();
        RETURN_IF_ERROR(learner->SaveState(path));
        break;
      }
      case Command::kSaveWeights: {
        std::string dir;
        uint8_t dtype = 0;
        if (!r.GetString(dir) || !r.Get(dtype)) return bad();
        RETURN_IF_ERROR(SaveShards(group, *policy, dir, static_cast<DType>(dtype)));
        break;
      }
      case Command::kFinish: {
        std::string checksum;
        if (!r.GetString(checksum)) return bad();
        RETURN_IF_ERROR(CheckSameWeights(group, *policy, checksum));
        LogInfo("lightrl run: learner rank %lld done after %lld training calls",
                static_cast<long long>(group->rank()), static_cast<long long>(calls));
        return absl::OkStatus();
      }
      case Command::kAbort: {
        std::string why;
        r.GetString(why);
        return absl::AbortedError(absl::StrCat("rank 0 stopped the run: ", why));
      }
      default:
        return bad();
    }
  }
}

}  // namespace lightrl
