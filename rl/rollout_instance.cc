#include "rl/rollout_instance.h"

#include <cstring>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "rl/parallel_layout.h"
#include "rl/tp_comm.h"

namespace lightrl {
namespace {

// A message is a kind byte, then for a batch the request count and each request's fields
// in a fixed order: little-endian fixed-width numbers, strings and lists length-first.
constexpr char kBatch = 'B', kStop = 'S';

class Writer {
 public:
  template <typename T>
  void Put(T v) {
    static_assert(std::is_arithmetic_v<T>);
    out_.append(reinterpret_cast<const char*>(&v), sizeof(v));
  }
  void PutString(const std::string& s) {
    Put<uint64_t>(s.size());
    out_.append(s);
  }
  std::string Take() { return std::move(out_); }

 private:
  std::string out_;
};

class Reader {
 public:
  explicit Reader(const std::string& in) : in_(in) {}
  template <typename T>
  absl::StatusOr<T> Get() {
    T v;
    if (in_.size() - pos_ < sizeof(v)) return Truncated();
    std::memcpy(&v, in_.data() + pos_, sizeof(v));
    pos_ += sizeof(v);
    return v;
  }
  absl::StatusOr<std::string> GetString() {
    ASSIGN_OR_RETURN(uint64_t n, Get<uint64_t>());
    if (in_.size() - pos_ < n) return Truncated();
    std::string s = in_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  // A count of items of at least `min_bytes` each that the rest of the message can hold.
  absl::StatusOr<uint64_t> GetCount(uint64_t min_bytes) {
    ASSIGN_OR_RETURN(uint64_t n, Get<uint64_t>());
    if (n > (in_.size() - pos_) / min_bytes) return Truncated();
    return n;
  }
  bool done() const { return pos_ == in_.size(); }

 private:
  absl::Status Truncated() const {
    return absl::InternalError(absl::StrCat("rollout instance: a batch message of ", in_.size(),
                                            " bytes ends early at byte ", pos_));
  }
  const std::string& in_;
  size_t pos_ = 0;
};

}  // namespace

struct RolloutInstance::Impl {
  ProcessGroup* group = nullptr;
  ShardCoords shard;
  std::unique_ptr<ProcessGroupTpComm> comm;
  bool stopped = false;
};

RolloutInstance::RolloutInstance(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RolloutInstance::~RolloutInstance() = default;

absl::StatusOr<std::unique_ptr<RolloutInstance>> RolloutInstance::Create(ProcessGroup* group) {
  const LayoutGroups* groups = group->layout_groups();
  if (groups == nullptr) {
    return absl::FailedPreconditionError(
        "rollout instance: the process group has not joined its layout groups");
  }
  if (static_cast<int64_t>(groups->tp.size()) != group->world_size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rollout instance: its ranks must form one TP group; the layout's TP group has ",
        groups->tp.size(), " of the ", group->world_size(), " ranks"));
  }
  auto impl = std::make_unique<Impl>();
  impl->group = group;
  impl->shard.tp = static_cast<int64_t>(groups->tp.size());
  impl->shard.tp_rank = groups->tp_rank;
  impl->comm = std::make_unique<ProcessGroupTpComm>(group);
  return std::unique_ptr<RolloutInstance>(new RolloutInstance(std::move(impl)));
}

int64_t RolloutInstance::rank() const { return impl_->group->rank(); }
ShardCoords RolloutInstance::shard() const { return impl_->shard; }

EngineParallel RolloutInstance::parallel() const {
  EngineParallel p;
  if (impl_->shard.tp > 1) p.tensor_parallel = impl_->comm.get();
  return p;
}

std::string RolloutInstance::EncodeBatch(const std::vector<GenerationRequest>& batch) {
  Writer w;
  w.Put<char>(kBatch);
  w.Put<uint64_t>(batch.size());
  for (const GenerationRequest& r : batch) {
    w.PutString(r.id);
    w.Put<uint64_t>(r.prompt.size());
    for (int32_t t : r.prompt) w.Put<int32_t>(t);
    const SamplingParams& p = r.params;
    w.Put<double>(p.temperature);
    w.Put<double>(p.top_p);
    w.Put<int64_t>(p.top_k);
    w.Put<int64_t>(p.max_new_tokens);
    w.Put<uint64_t>(p.stop_token_ids.size());
    for (int64_t t : p.stop_token_ids) w.Put<int64_t>(t);
    w.Put<uint64_t>(p.stop_strings.size());
    for (const std::string& s : p.stop_strings) w.PutString(s);
    w.Put<uint64_t>(p.seed);
    w.Put<int64_t>(p.n);
    w.Put<int64_t>(p.early_stop_window);
    w.Put<double>(p.early_stop_prob);
  }
  return w.Take();
}

absl::StatusOr<std::vector<GenerationRequest>> RolloutInstance::DecodeBatch(const std::string& bytes) {
  Reader r(bytes);
  ASSIGN_OR_RETURN(char kind, r.Get<char>());
  if (kind != kBatch) {
    return absl::InternalError(absl::StrCat("rollout instance: not a batch message (kind ",
                                            static_cast<int>(kind), ")"));
  }
  ASSIGN_OR_RETURN(uint64_t count, r.GetCount(8));
  std::vector<GenerationRequest> batch(count);
  for (GenerationRequest& q : batch) {
    ASSIGN_OR_RETURN(q.id, r.GetString());
    ASSIGN_OR_RETURN(uint64_t len, r.GetCount(sizeof(int32_t)));
    q.prompt.resize(len);
    for (int32_t& t : q.prompt) {
      ASSIGN_OR_RETURN(t, r.Get<int32_t>());
    }
    SamplingParams& p = q.params;
    ASSIGN_OR_RETURN(p.temperature, r.Get<double>());
    ASSIGN_OR_RETURN(p.top_p, r.Get<double>());
    ASSIGN_OR_RETURN(p.top_k, r.Get<int64_t>());
    ASSIGN_OR_RETURN(p.max_new_tokens, r.Get<int64_t>());
    ASSIGN_OR_RETURN(uint64_t stops, r.GetCount(sizeof(int64_t)));
    p.stop_token_ids.resize(stops);
    for (int64_t& t : p.stop_token_ids) {
      ASSIGN_OR_RETURN(t, r.Get<int64_t>());
    }
    ASSIGN_OR_RETURN(uint64_t strings, r.GetCount(8));
    p.stop_strings.resize(strings);
    for (std::string& s : p.stop_strings) {
      ASSIGN_OR_RETURN(s, r.GetString());
    }
    ASSIGN_OR_RETURN(p.seed, r.Get<uint64_t>());
    ASSIGN_OR_RETURN(p.n, r.Get<int64_t>());
    ASSIGN_OR_RETURN(p.early_stop_window, r.Get<int64_t>());
    ASSIGN_OR_RETURN(p.early_stop_prob, r.Get<double>());
  }
  if (!r.done()) return absl::InternalError("rollout instance: bytes after the batch message");
  return batch;
}

absl::Status RolloutInstance::Announce(const std::vector<GenerationRequest>& batch) {
  if (rank() != 0 || impl_->stopped) {
    return absl::FailedPreconditionError(
        absl::StrCat("rollout instance: rank ", rank(), " cannot announce a batch",
                     impl_->stopped ? " after Stop" : "; only rank 0 serves"));
  }
  std::string bytes = EncodeBatch(batch);
  return impl_->group->BroadcastBytes(&bytes, 0);
}

absl::Status RolloutInstance::Stop() {
  if (rank() != 0 || impl_->stopped) return absl::OkStatus();
  impl_->stopped = true;
  std::string bytes(1, kStop);
  return impl_->group->BroadcastBytes(&bytes, 0);
}

absl::Status RolloutInstance::Follow(PolicyModel* policy, const EngineOptions& options,
                                     const Tokenizer* tokenizer) {
  if (rank() == 0) {
    return absl::FailedPreconditionError("rollout instance: rank 0 serves; it does not follow");
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine,
                   Engine::Create(policy, options, tokenizer, parallel()));
  while (true) {
    std::string bytes;
    RETURN_IF_ERROR(impl_->group->BroadcastBytes(&bytes, 0));
    if (bytes.size() == 1 && bytes[0] == kStop) return absl::OkStatus();
    ASSIGN_OR_RETURN(std::vector<GenerationRequest> batch, DecodeBatch(bytes));
    // The results are rank 0's to deliver; a failed step fails there too.
    engine->Generate(batch);
  }
}

}  // namespace lightrl
