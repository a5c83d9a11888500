#include "rl/rollout_instance.h"

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "common/json.h"
#include "common/log.h"
#include "common/status.h"
#include "rl/parallel_layout.h"
#include "rl/expert_comm.h"
#include "rl/tp_comm.h"

namespace lightrl {
namespace {

// A message is a kind byte, then for a batch the request count and each request's fields
// in a fixed order: little-endian fixed-width numbers, strings and lists length-first.
constexpr char kBatch = 'B', kStop = 'S', kWeights = 'W', kResults = 'R';

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
    return absl::InternalError(absl::StrCat("rollout instance: a message of ", in_.size(),
                                            " bytes ends early at byte ", pos_));
  }
  const std::string& in_;
  size_t pos_ = 0;
};

}  // namespace

struct RolloutInstance::Impl {
  ProcessGroup* group = nullptr;
  // The instance's ranks in the group, ascending; the first leads. All of the group's, or
  // (data-parallel copies) this rank's TP group, or its EP group without TP.
  std::vector<int64_t> members;
  bool whole_group() const { return static_cast<int64_t>(members.size()) == group->world_size(); }
  bool leads() const { return group->rank() == members.front(); }
  // A message from the leader to the other members: one broadcast over the whole group,
  // else point to point.
  absl::Status Send(std::string* bytes) {
    if (whole_group()) return group->BroadcastBytes(bytes, 0);
    for (size_t i = 1; i < members.size(); ++i) RETURN_IF_ERROR(group->SendBytes(*bytes, members[i]));
    return absl::OkStatus();
  }
  absl::Status Receive(std::string* bytes) {
    if (whole_group()) return group->BroadcastBytes(bytes, 0);
    return group->RecvBytes(bytes, members.front());
  }
  ShardCoords shard;
  // A whole-group instance whose EP group holds several TP groups (attention data
  // parallelism): how many, and this rank's (the TP groups are blocks of tp ranks).
  int64_t tp_groups = 1;
  int64_t tp_group = 0;
  std::unique_ptr<ProcessGroupTpComm> comm;
  // An expert-parallel instance's: over the whole group, or (one of several copies) over
  // its EP group alone.
  std::unique_ptr<ExpertParallelComm> experts;
  bool stopped = false;
  // Set when a weight update may have reached only some ranks: no batch runs after it.
  absl::Status broken = absl::OkStatus();
};

RolloutInstance::RolloutInstance(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RolloutInstance::~RolloutInstance() = default;

absl::StatusOr<std::unique_ptr<RolloutInstance>> RolloutInstance::Create(ProcessGroup* group,
                                                                         bool copies) {
  const LayoutGroups* groups = group->layout_groups();
  if (groups == nullptr) {
    return absl::FailedPreconditionError(
        "rollout instance: the process group has not joined its layout groups");
  }
  const auto world = group->world_size();
  const auto tp = static_cast<int64_t>(groups->tp.size()), ep = static_cast<int64_t>(groups->ep.size());
  const auto etp = static_cast<int64_t>(groups->expert_tp.size());
  // One TP group, one EP group, or both over the same ranks (with copies: each rank's);
  // under expert-TP (without TP) the EP groups of the expert-TP group's members.
  std::vector<int64_t> members = tp > 1 ? groups->tp : groups->ep;
  if (etp > 1 && tp == 1) {
    members.clear();
    for (int64_t m : groups->expert_tp) {
      for (int64_t r : ProcessGroupExpertComm::EpGroupRanks(m, world, ep, etp)) members.push_back(r);
    }
  }
  // With copies, an EP group of several TP groups is attention data parallelism: each TP
  // group is an instance of its own whose engine steps with the others' (their MoE blocks
  // are collectives of the EP group).
  const bool attention_dp = tp > 1 && ep > tp && ep % tp == 0 && etp == 1;
  // Without copies, one instance of the whole group: its EP group, each TP group
  // generating its share of every batch.
  if (attention_dp && !copies) members = groups->ep;
  const bool shape =
      etp == 1 ? tp == 1 || ep == 1 || groups->ep == groups->tp || attention_dp : tp == 1;
  const bool size = copies || static_cast<int64_t>(members.size()) == world;
  if (!((shape && size && tp * ep * etp > 1) || world == 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rollout instance: its ranks must form ", copies ? "TP groups, EP groups" : "one TP group, "
        "one EP group", " or both over the same ranks, or EP x expert-TP without TP",
        copies ? ", or TP groups inside EP groups" : "", "; the "
        "layout's TP group has ", tp, ", its EP group ", ep, " of the ", world,
        " ranks, expert-TP ", etp));
  }
  auto impl = std::make_unique<Impl>();
  impl->group = group;
  std::sort(members.begin(), members.end());
  impl->members = std::move(members);
  impl->shard.tp = tp;
  impl->shard.tp_rank = groups->tp_rank;
  impl->shard.ep = ep;
  impl->shard.ep_rank = groups->ep_rank;
  impl->shard.expert_tp = etp;
  impl->shard.expert_tp_rank = groups->expert_tp_rank;
  if (attention_dp && !copies) {
    impl->tp_groups = ep / tp;
    impl->tp_group = group->rank() / tp;
  }
  impl->comm = std::make_unique<ProcessGroupTpComm>(group);
  if (ep * etp > 1) {
    impl->experts = impl->whole_group()
                        ? std::unique_ptr<ExpertParallelComm>(new ProcessGroupExpertComm(group, ep, etp))
                        : std::unique_ptr<ExpertParallelComm>(new InstanceExpertComm(group, ep, etp));
  }
  return std::unique_ptr<RolloutInstance>(new RolloutInstance(std::move(impl)));
}

int64_t RolloutInstance::rank() const { return impl_->group->rank(); }
bool RolloutInstance::leads() const { return impl_->leads(); }
int64_t RolloutInstance::copy() const { return impl_->members.front() / static_cast<int64_t>(impl_->members.size()); }
int64_t RolloutInstance::LeaderOf(int64_t c) const {
  return c * static_cast<int64_t>(impl_->members.size());
}
int64_t RolloutInstance::copies() const {
  return impl_->group->world_size() / static_cast<int64_t>(impl_->members.size());
}
ShardCoords RolloutInstance::shard() const { return impl_->shard; }

EngineParallel RolloutInstance::parallel() const {
  EngineParallel p;
  if (impl_->shard.tp > 1) p.tensor_parallel = impl_->comm.get();
  p.expert_parallel = impl_->experts.get();
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
  if (!leads() || impl_->stopped) {
    return absl::FailedPreconditionError(
        absl::StrCat("rollout instance: rank ", rank(), " cannot announce a batch",
                     impl_->stopped ? " after Stop" : "; only its first rank serves"));
  }
  RETURN_IF_ERROR(impl_->broken);
  std::string bytes = EncodeBatch(batch);
  return impl_->Send(&bytes);
}

std::string RolloutInstance::EncodeResults(const std::vector<GenerationResult>& results) {
  Writer w;
  w.Put<char>(kResults);
  w.Put<uint64_t>(results.size());
  for (const GenerationResult& r : results) {
    w.PutString(r.id);
    w.Put<int32_t>(static_cast<int32_t>(r.status.code()));
    w.PutString(std::string(r.status.message()));
    w.Put<uint64_t>(r.samples.size());
    for (const GeneratedSample& sample : r.samples) {
      w.Put<uint64_t>(sample.tokens.size());
      for (int32_t t : sample.tokens) w.Put<int32_t>(t);
      w.Put<uint64_t>(sample.logprobs.size());
      for (float l : sample.logprobs) w.Put<float>(l);
      w.Put<uint8_t>(static_cast<uint8_t>(sample.finish_reason));
    }
  }
  return w.Take();
}

absl::StatusOr<std::vector<GenerationResult>> RolloutInstance::DecodeResults(const std::string& bytes) {
  Reader r(bytes);
  ASSIGN_OR_RETURN(char kind, r.Get<char>());
  if (kind != kResults) {
    return absl::InternalError(absl::StrCat("rollout instance: not a results message (kind ",
                                            static_cast<int>(kind), ")"));
  }
  ASSIGN_OR_RETURN(uint64_t count, r.GetCount(8 + 4 + 8 + 8));
  std::vector<GenerationResult> results(count);
  for (GenerationResult& g : results) {
    ASSIGN_OR_RETURN(g.id, r.GetString());
    ASSIGN_OR_RETURN(int32_t code, r.Get<int32_t>());
    ASSIGN_OR_RETURN(std::string message, r.GetString());
    if (code < 0 || code > static_cast<int32_t>(absl::StatusCode::kUnauthenticated)) {
      return absl::InternalError(absl::StrCat("rollout instance: status code ", code));
    }
    g.status = absl::Status(static_cast<absl::StatusCode>(code), message);
    ASSIGN_OR_RETURN(uint64_t samples, r.GetCount(8 + 8 + 1));
    g.samples.resize(samples);
    for (GeneratedSample& sample : g.samples) {
      ASSIGN_OR_RETURN(uint64_t tokens, r.GetCount(sizeof(int32_t)));
      sample.tokens.resize(tokens);
      for (int32_t& t : sample.tokens) {
        ASSIGN_OR_RETURN(t, r.Get<int32_t>());
      }
      ASSIGN_OR_RETURN(uint64_t logprobs, r.GetCount(sizeof(float)));
      sample.logprobs.resize(logprobs);
      for (float& l : sample.logprobs) {
        ASSIGN_OR_RETURN(l, r.Get<float>());
      }
      ASSIGN_OR_RETURN(uint8_t reason, r.Get<uint8_t>());
      if (reason > static_cast<uint8_t>(FinishReason::kEarlyStop)) {
        return absl::InternalError(absl::StrCat("rollout instance: finish reason ", int{reason}));
      }
      sample.finish_reason = static_cast<FinishReason>(reason);
    }
  }
  if (!r.done()) return absl::InternalError("rollout instance: bytes after the results");
  return results;
}

std::string RolloutInstance::EncodeBlocks(DType dtype,
                                          const std::vector<PolicyModel::WeightTensor>& blocks) {
  Writer w;
  w.Put<uint8_t>(static_cast<uint8_t>(dtype));
  w.Put<uint64_t>(blocks.size());
  for (const PolicyModel::WeightTensor& t : blocks) {
    w.PutString(t.name);
    w.Put<uint64_t>(t.shape.size());
    for (int64_t d : t.shape) w.Put<int64_t>(d);
    w.PutString(t.data);
  }
  return w.Take();
}

absl::StatusOr<std::pair<DType, std::vector<PolicyModel::WeightTensor>>>
RolloutInstance::DecodeBlocks(const std::string& bytes) {
  Reader r(bytes);
  ASSIGN_OR_RETURN(uint8_t dtype, r.Get<uint8_t>());
  if (dtype != static_cast<uint8_t>(DType::kF32) && dtype != static_cast<uint8_t>(DType::kBF16)) {
    return absl::InternalError(absl::StrCat("rollout instance: weight blocks of dtype code ",
                                            int{dtype}));
  }
  ASSIGN_OR_RETURN(uint64_t count, r.GetCount(24));
  std::vector<PolicyModel::WeightTensor> blocks(count);
  for (PolicyModel::WeightTensor& t : blocks) {
    ASSIGN_OR_RETURN(t.name, r.GetString());
    ASSIGN_OR_RETURN(uint64_t dims, r.GetCount(sizeof(int64_t)));
    if (dims > 8) return absl::InternalError(absl::StrCat("rollout instance: ", dims, " dimensions"));
    t.shape.resize(dims);
    for (int64_t& d : t.shape) {
      ASSIGN_OR_RETURN(d, r.Get<int64_t>());
    }
    ASSIGN_OR_RETURN(t.data, r.GetString());
  }
  if (!r.done()) return absl::InternalError("rollout instance: bytes after the weight blocks");
  return std::make_pair(static_cast<DType>(dtype), std::move(blocks));
}

absl::Status RolloutInstance::AnnounceWeights(const WeightSet& set) {
  if (!impl_->whole_group()) {
    return absl::UnimplementedError(
        "rollout instance: weight updates into one of several copies over a group");
  }
  if (rank() != 0 || impl_->stopped) {
    return absl::FailedPreconditionError(
        absl::StrCat("rollout instance: rank ", rank(), " cannot announce weights",
                     impl_->stopped ? " after Stop" : "; only rank 0 serves"));
  }
  RETURN_IF_ERROR(impl_->broken);
  // Each rank's blocks, sliced here from the whole tensors before any rank hears of the
  // update (an error here changes nothing).
  ASSIGN_OR_RETURN(std::vector<std::string> parts, SliceForRanks(set));
  absl::Status status = [&]() -> absl::Status {
    std::string header(1, kWeights);
    RETURN_IF_ERROR(impl_->group->BroadcastBytes(&header, 0));
    for (int64_t r = 1; r < impl_->group->world_size(); ++r) {
      RETURN_IF_ERROR(impl_->group->SendBytes(parts[r], r));
    }
    // Every rank says whether it took its part.
    std::vector<double> failed{0};
    RETURN_IF_ERROR(impl_->group->AllReduce(&failed, ReduceOp::kMax));
    if (failed[0] != 0) return absl::InternalError("a follower could not import its weight blocks");
    return absl::OkStatus();
  }();
  if (!status.ok()) {
    impl_->broken = absl::InternalError(absl::StrCat(
        "rollout instance: a weight update reached only some ranks (", status.message(),
        "); restart the instance"));
    return impl_->broken;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> RolloutInstance::SliceForRanks(const WeightSet& set) const {
  auto parsed = Json::Parse(set.model_config_json);
  if (!parsed.ok()) return parsed.status();
  ASSIGN_OR_RETURN(ModelConfig config, ModelConfig::FromJson(*parsed, "model_config_json"));
  const int64_t elem = set.dtype == DType::kBF16 ? 2 : 4;
  std::vector<std::string> parts(impl_->group->world_size());
  for (int64_t r = 1; r < impl_->group->world_size(); ++r) {
    ShardCoords coords = impl_->shard;
    // Rank r is member r of the instance's TP group and of its EP group; under expert-TP
    // (ProcessGroupExpertComm's order) EP rank r / expert_tp, expert-TP rank r % expert_tp.
    if (coords.tp > 1) coords.tp_rank = r % coords.tp;
    if (coords.ep > 1) coords.ep_rank = coords.tp > 1 ? r : r / coords.expert_tp;
    if (coords.expert_tp > 1) coords.expert_tp_rank = r % coords.expert_tp;
    std::vector<PolicyModel::WeightTensor> blocks;
    for (const PolicyModel::WeightTensor& t : set.tensors) {
      ASSIGN_OR_RETURN(TensorShard part, ShardOf(t.name, config, coords));
      if (!part.held) continue;
      PolicyModel::WeightTensor b;
      b.name = t.name;
      b.shape = part.LocalShape(t.shape);
      if (part.whole()) {
        b.data = t.data;
      } else {
        // Block `index` along `dim`: `outer` runs of `length * inner` bytes.
        int64_t outer = 1, inner = elem;
        for (int d = 0; d < part.dim; ++d) outer *= t.shape[d];
        for (size_t d = part.dim + 1; d < t.shape.size(); ++d) inner *= t.shape[d];
        const int64_t extent = t.shape[part.dim];
        const int64_t begin = part.begin(extent), length = part.length(extent);
        b.data.reserve(static_cast<size_t>(outer * length * inner));
        for (int64_t o = 0; o < outer; ++o) {
          b.data.append(t.data, static_cast<size_t>((o * extent + begin) * inner),
                        static_cast<size_t>(length * inner));
        }
      }
      blocks.push_back(std::move(b));
    }
    parts[r] = EncodeBlocks(set.dtype, blocks);
  }
  return parts;
}

absl::Status RolloutInstance::Stop() {
  if (!leads() || impl_->stopped) return absl::OkStatus();
  impl_->stopped = true;
  std::string bytes(1, kStop);
  return impl_->Send(&bytes);
}

absl::Status RolloutInstance::Pause() {
  if (!leads() || impl_->stopped) {
    return absl::FailedPreconditionError(absl::StrCat(
        "rollout instance: rank ", rank(), " cannot pause", impl_->stopped ? " after Stop" : ""));
  }
  std::string bytes(1, kStop);
  return impl_->Send(&bytes);
}

absl::Status RolloutInstance::Follow(PolicyModel* policy, const EngineOptions& options,
                                     const Tokenizer* tokenizer) {
  ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine,
                   Engine::Create(policy, options, tokenizer, parallel()));
  return Follow(engine.get(), policy);
}

absl::Status RolloutInstance::Follow(Engine* engine, PolicyModel* policy) {
  if (leads()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "rollout instance: rank ", rank(), " leads its instance; it does not follow"));
  }
  while (true) {
    std::string bytes;
    RETURN_IF_ERROR(impl_->Receive(&bytes));
    if (bytes.size() == 1 && bytes[0] == kStop) return absl::OkStatus();
    if (bytes.size() == 1 && bytes[0] == kWeights) {
      // This rank's blocks of rank 0's update; every rank then reports whether it took them.
      std::string blocks;
      RETURN_IF_ERROR(impl_->group->RecvBytes(&blocks, 0));
      absl::Status took = [&]() -> absl::Status {
        ASSIGN_OR_RETURN(auto decoded, DecodeBlocks(blocks));
        return policy->ImportLocalWeights(decoded.first, decoded.second);
      }();
      if (!took.ok()) {
        LogWarning("rollout instance rank %lld: weight update failed: %s",
                   static_cast<long long>(rank()), std::string(took.message()).c_str());
      }
      std::vector<double> failed{took.ok() ? 0.0 : 1.0};
      RETURN_IF_ERROR(impl_->group->AllReduce(&failed, ReduceOp::kMax));
      if (failed[0] != 0) {
        return absl::InternalError("rollout instance: a weight update failed on some rank");
      }
      continue;
    }
    ASSIGN_OR_RETURN(std::vector<GenerationRequest> batch, DecodeBatch(bytes));
    // The results are rank 0's to deliver; a failed step fails there too.
    if (impl_->tp_groups == 1) {
      engine->Generate(batch);
      continue;
    }
    // This TP group's share; its leader sends the results to rank 0 (Run).
    std::vector<GenerationResult> results =
        engine->Generate(ShareOf(batch, impl_->tp_group, impl_->tp_groups));
    if (impl_->shard.tp_rank == 0) {
      RETURN_IF_ERROR(impl_->group->SendBytes(EncodeResults(results), 0));
    }
  }
}

std::vector<GenerationResult> RolloutInstance::Run(Engine& engine,
                                                   const std::vector<GenerationRequest>& batch) {
  const int64_t k = impl_->tp_groups;
  if (k == 1) return engine.Generate(batch);
  std::vector<GenerationResult> results(batch.size());
  PlaceShare(&results, engine.Generate(ShareOf(batch, 0, k)), 0, k);
  for (int64_t c = 1; c < k; ++c) {
    std::string bytes;
    const absl::Status got = impl_->group->RecvBytes(&bytes, c * impl_->shard.tp);
    absl::StatusOr<std::vector<GenerationResult>> theirs =
        got.ok() ? DecodeResults(bytes) : absl::StatusOr<std::vector<GenerationResult>>(got);
    const size_t want = ShareSize(batch.size(), c, k);
    if (theirs.ok() && theirs->size() != want) {
      theirs = absl::InternalError(absl::StrCat("rollout instance: TP group ", c, " returned ",
                                                theirs->size(), " results for ", want, " requests"));
    }
    if (!theirs.ok()) {
      impl_->broken = theirs.status();
      std::vector<GenerationResult> failed(want);
      for (GenerationResult& r : failed) r.status = theirs.status();
      PlaceShare(&results, std::move(failed), c, k);
      continue;
    }
    PlaceShare(&results, *std::move(theirs), c, k);
  }
  for (size_t i = 0; i < batch.size(); ++i) results[i].id = batch[i].id;
  return results;
}

std::vector<GenerationRequest> RolloutInstance::ShareOf(const std::vector<GenerationRequest>& batch,
                                                        int64_t c, int64_t copies) {
  std::vector<GenerationRequest> share;
  for (size_t i = static_cast<size_t>(c); i < batch.size(); i += static_cast<size_t>(copies)) {
    share.push_back(batch[i]);
  }
  return share;
}

void RolloutInstance::PlaceShare(std::vector<GenerationResult>* all,
                                 std::vector<GenerationResult> share, int64_t c, int64_t copies) {
  for (size_t j = 0; j < share.size(); ++j) {
    const size_t at = static_cast<size_t>(c) + j * static_cast<size_t>(copies);
    if (at < all->size()) (*all)[at] = std::move(share[j]);
  }
}

}  // namespace lightrl
