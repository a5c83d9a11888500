#include "rollout/rollout_client.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <map>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/json.h"
#include "common/log.h"
#include "common/status.h"
#include "lightrl/v1/rollout.grpc.pb.h"
#include "policy/model_config.h"
#include "proto/grpc_util.h"
#include "rollout/rollout_wire.h"

namespace lightrl {

struct RolloutClient::Stub {
  std::unique_ptr<lightrl::v1::RolloutService::Stub> stub;
};

RolloutClient::RolloutClient(const RolloutClientOptions& options)
    : options_(options), stub_(std::make_unique<Stub>()) {}
RolloutClient::~RolloutClient() = default;

absl::StatusOr<std::unique_ptr<RolloutClient>> RolloutClient::Create(
    const RolloutClientOptions& options) {
  std::string host, port;
  if (!SplitHostPort(options.address, &host, &port)) {
    return absl::InvalidArgumentError(
        absl::StrCat("rollout worker address must be host:port, got \"", options.address, "\""));
  }
  std::unique_ptr<RolloutClient> client(new RolloutClient(options));
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::Channel> channel,
                   CreateClientChannel(options.address, options.tls, {},
                                       absl::StrCat("rollout client ", options.address, " tls")));
  client->stub_->stub = lightrl::v1::RolloutService::NewStub(std::move(channel));
  return client;
}

absl::Status CheckGroupOutput(const GenerationRequest& request, const GroupOutput& output,
                              int64_t vocab_size) {
  const std::string where = absl::StrCat("group ", request.id);
  if (static_cast<int64_t>(output.samples.size()) != request.params.n) {
    return absl::InternalError(absl::StrCat(where, ": ", output.samples.size(),
                                            " samples, asked for ", request.params.n));
  }
  for (size_t i = 0; i < output.samples.size(); ++i) {
    const GeneratedSample& s = output.samples[i];
    const std::string sample = absl::StrCat(where, ": sample ", i);
    if (s.tokens.empty() || static_cast<int64_t>(s.tokens.size()) > request.params.max_new_tokens) {
      return absl::InternalError(absl::StrCat(sample, ": ", s.tokens.size(),
                                              " tokens, outside [1, max_new_tokens = ",
                                              request.params.max_new_tokens, "]"));
    }
    if (s.logprobs.size() != s.tokens.size()) {
      return absl::InternalError(absl::StrCat(sample, ": ", s.tokens.size(), " tokens but ",
                                              s.logprobs.size(), " logprobs"));
    }
    for (size_t t = 0; t < s.tokens.size(); ++t) {
      if (s.tokens[t] < 0 || (vocab_size > 0 && s.tokens[t] >= vocab_size)) {
        return absl::InternalError(absl::StrCat(sample, ": token ", t, " has id ", s.tokens[t],
                                                ", outside the vocabulary [0, ", vocab_size, ")"));
      }
      if (!std::isfinite(s.logprobs[t]) || s.logprobs[t] > kMaxSampleLogprob) {
        return absl::InternalError(absl::StrCat(sample, ": token ", t, " has logprob ",
                                                s.logprobs[t], " (must be finite and <= 0)"));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<GroupOutput> RolloutClient::Generate(const GenerationRequest& request,
                                                    int64_t min_weight_version,
                                                    int64_t vocab_size) {
  lightrl::v1::GenerateRequest proto;
  proto.set_group_id(request.id);
  proto.mutable_prompt_tokens()->Add(request.prompt.begin(), request.prompt.end());
  ToProto(request.params, proto.mutable_sampling());
  proto.set_min_weight_version(min_weight_version);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + options_.generate_deadline));
  AddAuthToken(&context, options_.auth_token);
  auto reader = stub_->stub->Generate(&context, proto);
  const std::string where = absl::StrCat("rollout worker ", options_.address, ": group ", request.id);
  GroupOutput out;
  out.group_id = request.id;
  const size_t n = static_cast<size_t>(std::max<int64_t>(request.params.n, 1));
  std::vector<std::optional<GeneratedSample>> samples(n);
  lightrl::v1::GenerateResponse response;
  absl::Status bad;
  while (reader->Read(&response)) {
    if (!bad.ok()) continue;
    const int index = response.sample().index();
    if (index < 0 || static_cast<size_t>(index) >= n || samples[index]) {
      bad = absl::InternalError(absl::StrCat(where, ": bad or repeated sample index ", index));
      continue;
    }
    if (out.weight_version >= 0 && response.weight_version() != out.weight_version) {
      bad = absl::InternalError(absl::StrCat(where, ": samples of weight versions ",
                                             out.weight_version, " and ", response.weight_version()));
      continue;
    }
    out.weight_version = response.weight_version();
    auto sample = FromProto(response.sample());
    if (!sample.ok()) {
      bad = absl::InternalError(absl::StrCat(where, ": ", sample.status().message()));
      continue;
    }
    samples[index] = *std::move(sample);
  }
  RETURN_IF_ERROR(FromGrpcStatus(reader->Finish(), where));
  RETURN_IF_ERROR(bad);
  for (size_t i = 0; i < n; ++i) {
    if (!samples[i]) {
      return absl::InternalError(absl::StrCat(where, ": sample ", i, " of ", n, " is missing"));
    }
    out.samples.push_back(*std::move(samples[i]));
  }
  if (absl::Status st = CheckGroupOutput(request, out, vocab_size); !st.ok()) {
    return absl::InternalError(absl::StrCat("rollout worker ", options_.address, ": ", st.message()));
  }
  return out;
}

absl::Status RolloutClient::UpdateWeights(const WeightSet& weights, bool replace_newer) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + options_.rpc_deadline));
  AddAuthToken(&context, options_.auth_token);
  lightrl::v1::UpdateWeightsResponse response;
  auto writer = stub_->stub->UpdateWeights(&context, &response);
  ForEachWeightChunk(weights, replace_newer, [&](const lightrl::v1::WeightChunk& chunk) {
    return writer->Write(chunk);
  });
  writer->WritesDone();
  return FromGrpcStatus(writer->Finish(), absl::StrCat("rollout worker ", options_.address,
                                                       ": UpdateWeights to version ",
                                                       weights.version));
}

absl::StatusOr<RolloutWorkerHealth> RolloutClient::Health() {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + options_.rpc_deadline));
  AddAuthToken(&context, options_.auth_token);
  lightrl::v1::RolloutHealthRequest request;
  lightrl::v1::RolloutHealthResponse response;
  RETURN_IF_ERROR(FromGrpcStatus(stub_->stub->Health(&context, request, &response),
                                 absl::StrCat("rollout worker ", options_.address, ": Health")));
  RolloutWorkerHealth h;
  h.serving = response.serving();
  h.worker_id = response.worker_id();
  h.weight_version = response.weight_version();
  h.active_groups = response.active_groups();
  h.queued_groups = response.queued_groups();
  h.generated_tokens = response.generated_tokens();
  h.device = response.device();
  h.engine_batches = response.engine_batches();
  h.batch_invariant = response.batch_invariant();
  return h;
}

namespace {

// Weight-group calls last as long as their collective, plus time for the RPC itself.
void PrepareGroupCall(grpc::ClientContext* context, absl::Duration timeout,
                      const std::string& auth_token) {
  context->set_deadline(absl::ToChronoTime(absl::Now() + timeout + absl::Seconds(10)));
  AddAuthToken(context, auth_token);
}

}  // namespace

absl::Status RolloutClient::JoinWeightGroup(const std::string& nccl_unique_id, int rank,
                                            int world_size, int64_t group_id,
                                            absl::Duration timeout) {
  grpc::ClientContext context;
  PrepareGroupCall(&context, timeout, options_.auth_token);
  lightrl::v1::JoinWeightGroupRequest request;
  request.set_nccl_unique_id(nccl_unique_id);
  request.set_rank(rank);
  request.set_world_size(world_size);
  request.set_group_id(group_id);
  request.set_timeout_s(absl::ToDoubleSeconds(timeout));
  lightrl::v1::JoinWeightGroupResponse response;
  return FromGrpcStatus(stub_->stub->JoinWeightGroup(&context, request, &response),
                        absl::StrCat("rollout worker ", options_.address, ": JoinWeightGroup"));
}

absl::Status RolloutClient::ReceiveWeights(const WeightBroadcast& b) {
  grpc::ClientContext context;
  PrepareGroupCall(&context, b.timeout, options_.auth_token);
  lightrl::v1::ReceiveWeightsRequest request;
  request.set_group_id(b.group_id);
  request.set_version(b.version);
  request.set_replace_newer(b.replace_newer);
  request.set_model_config_json(b.model_config_json);
  for (const auto& n : b.tensor_names) request.add_tensor_names(n);
  for (int64_t n : b.tensor_bytes) request.add_tensor_bytes(n);
  request.set_timeout_s(absl::ToDoubleSeconds(b.timeout));
  request.set_batch_invariant(b.batch_invariant);
  lightrl::v1::UpdateWeightsResponse response;
  return FromGrpcStatus(stub_->stub->ReceiveWeights(&context, request, &response),
                        absl::StrCat("rollout worker ", options_.address, ": ReceiveWeights"));
}

// --- the fleet ---

absl::Status RolloutFleetOptions::Validate() const {
  if (default_capacity < 1) {
    return absl::InvalidArgumentError(absl::StrCat("default_capacity must be >= 1, got ", default_capacity));
  }
  if (max_group_attempts < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_group_attempts must be >= 1, got ", max_group_attempts));
  }
  return absl::OkStatus();
}

namespace {

struct WorkerState {
  WorkerEndpoint endpoint;
  std::unique_ptr<RolloutClient> client;
  int in_flight = 0;
  int64_t synced_version = -1;  // the published version it is known to serve
  bool syncing = false;
  bool failed = false;
};

// The vocabulary size of a model_config_json; 0 (unchecked) when it does not parse, as
// the workers refuse such weights anyway.
int64_t VocabSize(const std::string& model_config_json) {
  auto json = Json::Parse(model_config_json);
  if (!json.ok()) return 0;
  auto config = ModelConfig::FromJson(*json, "published weights");
  return config.ok() ? config->vocab_size : 0;
}

// Codes that mean "this worker cannot serve now", not "this group is bad".
bool IsWorkerFault(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kCancelled:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kUnknown:
    case absl::StatusCode::kDataLoss:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kUnauthenticated:
      return true;
    default:
      return false;
  }
}

}  // namespace

struct RolloutFleet::Impl {
  RolloutFleetOptions options;
  RolloutFleetHooks hooks;

  mutable absl::Mutex mu;
  std::map<std::string, std::shared_ptr<WorkerState>> workers ABSL_GUARDED_BY(mu);
  std::shared_ptr<const WeightSet> weights ABSL_GUARDED_BY(mu);
  int64_t published ABSL_GUARDED_BY(mu) = -1;  // the version every worker must serve
  // The published model's vocabulary, which bounds the token ids workers return (0 until
  // weights are published).
  int64_t vocab_size ABSL_GUARDED_BY(mu) = 0;
  // After a device publish: the host copy of that version, made when a worker outside the
  // group needs it.
  std::function<absl::StatusOr<WeightSet>()> export_host ABSL_GUARDED_BY(mu);
  // The NCCL group of the last device publish and its members (worker ids), if any.
  std::unique_ptr<NcclWeightGroup> group ABSL_GUARDED_BY(mu);
  std::vector<std::string> group_members ABSL_GUARDED_BY(mu);
  int64_t group_id ABSL_GUARDED_BY(mu) = 0;
  RolloutFleetStats stats ABSL_GUARDED_BY(mu);
  absl::Time last_refresh ABSL_GUARDED_BY(mu) = absl::InfinitePast();
  uint64_t changes ABSL_GUARDED_BY(mu) = 0;  // bumped by every finished call
  // Sync threads, and those that have finished (joined at the next sync, so a long run
  // does not collect them).
  std::map<std::thread::id, std::thread> background ABSL_GUARDED_BY(mu);
  std::vector<std::thread::id> finished ABSL_GUARDED_BY(mu);

  ~Impl() {
    std::map<std::thread::id, std::thread> threads;
    {
      absl::MutexLock lock(&mu);
      threads.swap(background);
    }
    for (auto& [id, t] : threads) t.join();
  }

  int Capacity(const WorkerState& w) const {
    return w.endpoint.capacity > 0 ? w.endpoint.capacity : options.default_capacity;
  }

  int64_t PublishedVersion() const ABSL_SHARED_LOCKS_REQUIRED(mu) { return published; }

  bool Ready(const WorkerState& w) const ABSL_SHARED_LOCKS_REQUIRED(mu) {
    return !w.failed && w.synced_version >= PublishedVersion() && !w.syncing;
  }

  void MarkFailed(const std::shared_ptr<WorkerState>& w, const absl::Status& why)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (w->failed) return;
    w->failed = true;
    ++stats.worker_failures;
    LogWarning("lightrl: rollout worker %s (%s) failed: %s",
               w->endpoint.worker_id.c_str(), w->endpoint.address.c_str(),
               std::string(why.message()).c_str());
    if (hooks.on_worker_failed) hooks.on_worker_failed(w->endpoint.worker_id);
  }

  // Re-reads the live workers: new ones (and failed ones that registered again) start
  // fresh and must sync before they get work; those no longer listed are dropped.
  void Refresh(bool force) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (!force && absl::Now() - last_refresh < options.refresh_interval) return;
    last_refresh = absl::Now();
    if (!hooks.list_workers) return;
    std::vector<WorkerEndpoint> live = hooks.list_workers();
    std::map<std::string, std::shared_ptr<WorkerState>> next;
    for (const WorkerEndpoint& e : live) {
      auto it = workers.find(e.worker_id);
      if (it != workers.end() && !it->second->failed && it->second->endpoint.address == e.address) {
        next[e.worker_id] = it->second;
        continue;
      }
      RolloutClientOptions copts;
      copts.address = e.address;
      copts.auth_token = options.auth_token;
      copts.tls = IsLoopbackAddress(e.address) ? TlsOptions() : options.tls;
      copts.generate_deadline = options.generate_deadline;
      copts.rpc_deadline = options.rpc_deadline;
      auto client = RolloutClient::Create(copts);
      if (!client.ok()) continue;
      auto w = std::make_shared<WorkerState>();
      w->endpoint = e;
      w->client = *std::move(client);
      next[e.worker_id] = std::move(w);
    }
    workers.swap(next);
  }

  // Brings a worker to the published weights on a background thread.
  void StartSync(const std::shared_ptr<WorkerState>& w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    for (const std::thread::id& id : finished) {
      background[id].join();
      background.erase(id);
    }
    finished.clear();
    w->syncing = true;
    std::shared_ptr<const WeightSet> set = weights;
    // A device publish left no host copy of the version: make one (once) for this worker.
    std::function<absl::StatusOr<WeightSet>()> exporter;
    if ((set == nullptr || set->version < published) && export_host) exporter = export_host;
    std::thread thread([this, w, set, exporter]() mutable {
      absl::Status status = absl::OkStatus();
      if (exporter) {
        auto exported = exporter();
        absl::MutexLock lock(&mu);
        if (exported.ok()) {
          if (weights == nullptr || weights->version < exported->version) {
            weights = std::make_shared<const WeightSet>(*std::move(exported));
          }
          set = weights;
        } else {
          status = exported.status();
        }
      }
      auto health = status.ok() ? w->client->Health() : absl::StatusOr<RolloutWorkerHealth>(status);
      if (!health.ok()) {
        status = health.status();
      } else if (set && health->weight_version != set->version) {
        // Whatever it holds (older, or newer from an interrupted run) gives way.
        status = w->client->UpdateWeights(*set, /*replace_newer=*/true);
      }
      absl::MutexLock lock(&mu);
      w->syncing = false;
      if (status.ok()) {
        w->synced_version = set ? set->version : -1;
        if (set) ++stats.weight_pushes;
      } else {
        MarkFailed(w, status);
      }
      ++changes;
      finished.push_back(std::this_thread::get_id());
    });
    const std::thread::id id = thread.get_id();
    background.emplace(id, std::move(thread));
  }
};

RolloutFleet::RolloutFleet(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RolloutFleet::~RolloutFleet() = default;

absl::StatusOr<std::unique_ptr<RolloutFleet>> RolloutFleet::Create(
    const RolloutFleetOptions& options, RolloutFleetHooks hooks) {
  RETURN_IF_ERROR(options.Validate());
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->hooks = std::move(hooks);
  return std::unique_ptr<RolloutFleet>(new RolloutFleet(std::move(impl)));
}

absl::Status RolloutFleet::PublishWeights(WeightSet weights) {
  Impl& s = *impl_;
  auto set = std::make_shared<const WeightSet>(std::move(weights));
  std::vector<std::shared_ptr<WorkerState>> targets;
  bool replace_newer = false;
  {
    absl::MutexLock lock(&s.mu);
    // The fleet's first weights replace whatever the workers hold (the controller may
    // have resumed from a checkpoint older than their weights).
    replace_newer = s.published < 0;
    s.weights = set;
    s.published = set->version;
    s.vocab_size = VocabSize(set->model_config_json);
    s.Refresh(/*force=*/true);
    for (auto& [id, w] : s.workers) {
      if (!w->failed && !w->syncing) {
        w->syncing = true;
        targets.push_back(w);
      }
    }
  }
  std::vector<absl::Status> results(targets.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < targets.size(); ++i) {
    threads.emplace_back(
        [&, i] { results[i] = targets[i]->client->UpdateWeights(*set, replace_newer); });
  }
  for (std::thread& t : threads) t.join();
  int ok = 0;
  absl::Status last = absl::OkStatus();
  absl::MutexLock lock(&s.mu);
  for (size_t i = 0; i < targets.size(); ++i) {
    targets[i]->syncing = false;
    if (results[i].ok()) {
      targets[i]->synced_version = set->version;
      ++s.stats.weight_pushes;
      ++ok;
    } else {
      last = results[i];
      s.MarkFailed(targets[i], results[i]);
    }
  }
  ++s.changes;
  if (targets.empty() || ok > 0) return absl::OkStatus();
  // Every worker pushed to failed; workers that were busy syncing an older version are
  // still live, and Generate brings them to this one before they take work.
  for (const auto& [id, w] : s.workers) {
    if (!w->failed) return absl::OkStatus();
  }
  return absl::UnavailableError(absl::StrCat("no rollout worker took weight version ",
                                             set->version, "; last error: ", last.message()));
}

namespace {

// Runs fn(i) for i < n on n threads plus `local` on this one; returns their statuses
// (local's last).
std::vector<absl::Status> RunTogether(size_t n, const std::function<absl::Status(size_t)>& fn,
                                      const std::function<absl::Status()>& local) {
  std::vector<absl::Status> results(n + 1);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < n; ++i) threads.emplace_back([&, i] { results[i] = fn(i); });
  results[n] = local();
  for (std::thread& t : threads) t.join();
  return results;
}

absl::Status FirstError(const std::vector<absl::Status>& results) {
  for (const absl::Status& r : results) {
    if (!r.ok()) return r;
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status RolloutFleet::PublishDeviceWeights(const DeviceWeights& w) {
  Impl& s = *impl_;
  if (w.names.size() != w.buffers.size() || !w.export_host) {
    return absl::InvalidArgumentError("device weights need a name per buffer and export_host");
  }
  std::vector<std::shared_ptr<WorkerState>> members;
  std::vector<std::string> ids;
  bool replace_newer = false;
  int64_t group_id = 0;
  NcclWeightGroup* group = nullptr;
  {
    absl::MutexLock lock(&s.mu);
    s.Refresh(/*force=*/true);
    for (auto& [id, worker] : s.workers) {  // std::map: sorted by id, so ranks are stable
      if (worker->failed || worker->syncing) continue;
      members.push_back(worker);
      ids.push_back(id);
    }
    replace_newer = s.published < 0;
    for (auto& m : members) m->syncing = true;
    if (s.group != nullptr && s.group_members == ids) {
      group = s.group.get();
      group_id = s.group_id;
    } else {
      s.group.reset();
      s.group_members.clear();
      group_id = ++s.group_id;
    }
  }
  absl::Status status = members.empty()
                            ? absl::UnavailableError("no live rollout worker to broadcast to")
                            : absl::OkStatus();
  const int world = static_cast<int>(members.size()) + 1;
  std::unique_ptr<NcclWeightGroup> formed;
  if (status.ok() && group == nullptr) {
    // A new group: every member joins with the id made here; this process is rank 0.
    absl::StatusOr<std::string> uid = NcclWeightGroup::NewUniqueId();
    status = uid.status();
    if (status.ok()) {
      status = FirstError(RunTogether(
          members.size(),
          [&](size_t i) {
            return members[i]->client->JoinWeightGroup(*uid, static_cast<int>(i) + 1, world,
                                                       group_id, w.timeout);
          },
          [&]() -> absl::Status {
            ASSIGN_OR_RETURN(formed, NcclWeightGroup::Join(*uid, 0, world, w.device, w.timeout));
            return absl::OkStatus();
          }));
      group = status.ok() ? formed.get() : nullptr;
    }
  }
  if (status.ok()) {
    WeightBroadcast b;
    b.group_id = group_id;
    b.version = w.version;
    b.replace_newer = replace_newer;
    b.model_config_json = w.model_config_json;
    b.tensor_names = w.names;
    for (const DeviceBuffer& buffer : w.buffers) b.tensor_bytes.push_back(buffer.bytes);
    b.timeout = w.timeout;
    b.batch_invariant = w.batch_invariant;
    status = FirstError(RunTogether(
        members.size(), [&](size_t i) { return members[i]->client->ReceiveWeights(b); },
        [&] { return group->Broadcast(w.buffers, w.timeout); }));
  }
  {
    absl::MutexLock lock(&s.mu);
    for (auto& m : members) m->syncing = false;
    if (status.ok()) {
      if (formed != nullptr) {
        s.group = std::move(formed);
        s.group_members = ids;
        s.group_id = group_id;
      }
      for (auto& m : members) m->synced_version = w.version;
      s.published = w.version;
      s.vocab_size = VocabSize(w.model_config_json);
      s.export_host = w.export_host;
      ++s.stats.weight_broadcasts;
      ++s.changes;
      return absl::OkStatus();
    }
    // The group is spent (a member failed or never joined): the next publish forms a new
    // one, and this version goes by the gRPC stream, which also finds who is gone.
    s.group.reset();
    s.group_members.clear();
    ++s.stats.broadcast_fallbacks;
    LogWarning("lightrl: weight broadcast of version %lld failed (%s); sending it by gRPC",
               static_cast<long long>(w.version), std::string(status.message()).c_str());
  }
  ASSIGN_OR_RETURN(WeightSet set, w.export_host());
  return PublishWeights(std::move(set));
}

std::vector<GroupOutcome> RolloutFleet::Generate(
    const std::vector<GenerationRequest>& requests, int64_t min_weight_version,
    const std::function<void(size_t index, GroupOutcome outcome)>& on_group) {
  Impl& s = *impl_;
  std::vector<GroupOutcome> outcomes(requests.size());
  std::deque<size_t> pending;
  for (size_t i = 0; i < requests.size(); ++i) pending.push_back(i);
  size_t remaining = requests.size();
  std::vector<std::thread> calls;
  absl::Time idle_since = absl::Now();

  absl::MutexLock lock(&s.mu);
  while (remaining > 0) {
    s.Refresh(/*force=*/false);
    bool any_live = false;
    for (auto& [id, w] : s.workers) {
      if (w->failed) continue;
      any_live = true;
      if (!s.Ready(*w)) {
        if (!w->syncing) s.StartSync(w);
        continue;
      }
      while (w->in_flight < s.Capacity(*w) && !pending.empty()) {
        const size_t index = pending.front();
        pending.pop_front();
        ++w->in_flight;
        ++outcomes[index].attempts;
        std::shared_ptr<WorkerState> worker = w;
        const int64_t vocab_size = s.vocab_size;
        calls.emplace_back([&, worker, index, vocab_size] {
          absl::StatusOr<GroupOutput> out =
              worker->client->Generate(requests[index], min_weight_version, vocab_size);
          // Once done, the group's outcome is this thread's alone: it is handed over
          // outside the lock, before `remaining` lets Generate return.
          auto finish = [&](absl::Status status) {
            s.mu.AssertHeld();
            outcomes[index].status = std::move(status);
            if (!on_group) {
              --remaining;
              return;
            }
            s.mu.Unlock();
            on_group(index, std::move(outcomes[index]));
            s.mu.Lock();
            --remaining;
            ++s.changes;
          };
          absl::MutexLock call_lock(&s.mu);
          --worker->in_flight;
          ++s.changes;
          if (out.ok()) {
            outcomes[index].output = *std::move(out);
            ++s.stats.groups_done;
            finish(absl::OkStatus());
            return;
          }
          if (!IsWorkerFault(out.status().code())) {
            finish(out.status());
            return;
          }
          if (out.status().code() == absl::StatusCode::kFailedPrecondition ||
              out.status().code() == absl::StatusCode::kResourceExhausted) {
            worker->synced_version = -1;  // re-check its weights before more work
          } else {
            s.MarkFailed(worker, out.status());
          }
          if (outcomes[index].attempts < s.options.max_group_attempts) {
            pending.push_back(index);
            ++s.stats.groups_requeued;
          } else {
            finish(absl::Status(
                out.status().code(),
                absl::StrCat("group ", requests[index].id, " failed on ", outcomes[index].attempts,
                             " workers; last: ", out.status().message())));
          }
        });
      }
    }
    if (any_live) {
      idle_since = absl::Now();
    } else if (absl::Now() - idle_since > s.options.no_worker_timeout) {
      std::vector<size_t> failed(pending.begin(), pending.end());
      pending.clear();
      for (size_t index : failed) {
        outcomes[index].status = absl::UnavailableError(absl::StrCat(
            "group ", requests[index].id, ": no live rollout worker for ",
            absl::FormatDuration(s.options.no_worker_timeout)));
      }
      if (on_group) {
        s.mu.Unlock();
        for (size_t index : failed) on_group(index, std::move(outcomes[index]));
        s.mu.Lock();
      }
      remaining -= failed.size();
      if (remaining == 0) break;
    }
    std::pair<Impl*, uint64_t> seen(&s, s.changes);
    s.mu.AwaitWithTimeout(absl::Condition(
                              +[](std::pair<Impl*, uint64_t>* arg) {
                                return arg->first->changes != arg->second;
                              },
                              &seen),
                          s.options.refresh_interval);
  }
  s.mu.Unlock();
  for (std::thread& t : calls) t.join();
  s.mu.Lock();
  return outcomes;
}

RolloutFleetStats RolloutFleet::stats() const {
  absl::MutexLock lock(&impl_->mu);
  return impl_->stats;
}

int64_t RolloutFleet::published_version() const {
  absl::MutexLock lock(&impl_->mu);
  return impl_->PublishedVersion();
}

}  // namespace lightrl
