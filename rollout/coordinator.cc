#include "rollout/coordinator.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <random>
#include <thread>
#include <utility>

#include <grpcpp/grpcpp.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "lightrl/v1/coordinator.grpc.pb.h"
#include "proto/grpc_util.h"

namespace lightrl {
namespace {

bool IsKnownRole(const std::string& role) { return role == kRolloutRole || role == kRewardRole; }

// Two controllers started within the same clock tick must still differ, hence the
// random device on top of the time.
std::string NewEpoch() {
  std::random_device device;
  const uint64_t random = (static_cast<uint64_t>(device()) << 32) ^ device();
  const uint64_t now = static_cast<uint64_t>(absl::ToUnixNanos(absl::Now()));
  return absl::StrCat(absl::Hex(now, absl::kZeroPad16), "-",
                      absl::Hex(random, absl::kZeroPad16));
}

void Log(const std::string& line) { LogInfo("coordinator: %s", line); }

// The registry proper; the gRPC service and the public class only delegate to it.
class Registry {
 public:
  Registry(absl::Duration heartbeat_interval, std::string epoch)
      : timeout_(heartbeat_interval * kMissedHeartbeatsBeforeDrop), epoch_(std::move(epoch)) {}

  absl::Status Register(WorkerRecord record) {
    if (record.id.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Register: worker_id is empty (role \"", record.role, "\", address \"",
          record.address, "\")"));
    }
    if (!IsKnownRole(record.role)) {
      return absl::InvalidArgumentError(
          absl::StrCat("Register: worker \"", record.id, "\": role must be \"", kRolloutRole,
                       "\" or \"", kRewardRole, "\", got \"", record.role, "\""));
    }
    std::string host, port;
    int port_number = 0;
    if (!SplitHostPort(record.address, &host, &port) || !absl::SimpleAtoi(port, &port_number) ||
        port_number <= 0 || port_number > 65535) {
      return absl::InvalidArgumentError(
          absl::StrCat("Register: worker \"", record.id,
                       "\": address must be host:port with a port in 1..65535, got \"",
                       record.address, "\""));
    }
    if (record.capacity < 0) {
      return absl::InvalidArgumentError(absl::StrCat("Register: worker \"", record.id,
                                                     "\": capacity must be >= 0, got ",
                                                     record.capacity));
    }
    if (record.capacity == 0) record.capacity = 1;
    const absl::Time now = absl::Now();
    record.registered_at = now;
    record.last_seen = now;
    const std::string line =
        absl::StrCat("worker \"", record.id, "\" (", record.role, ", ", record.address, ", ",
                     record.device.empty() ? "no device" : record.device, ", capacity ",
                     record.capacity, ")");
    bool replaced = false;
    {
      absl::MutexLock lock(&mu_);
      ExpireLocked(now);
      replaced = workers_.count(record.id) > 0;
      workers_[record.id] = std::move(record);
      ++generation_;
    }
    Log(absl::StrCat(line, replaced ? " registered again" : " joined"));
    return absl::OkStatus();
  }

  absl::Status Heartbeat(const std::string& worker_id, int64_t weight_version) {
    if (worker_id.empty()) return absl::InvalidArgumentError("Heartbeat: worker_id is empty");
    const absl::Time now = absl::Now();
    absl::MutexLock lock(&mu_);
    ExpireLocked(now);
    const auto it = workers_.find(worker_id);
    if (it == workers_.end()) {
      return absl::NotFoundError(absl::StrCat("Heartbeat: worker \"", worker_id,
                                              "\" is not registered with coordinator epoch ",
                                              epoch_, "; register again"));
    }
    it->second.last_seen = now;
    it->second.weight_version = weight_version;
    return absl::OkStatus();
  }

  std::vector<WorkerRecord> Workers(const std::string& role) const {
    const absl::Time now = absl::Now();
    std::vector<WorkerRecord> records;
    absl::MutexLock lock(&mu_);
    for (const auto& [id, record] : workers_) {
      if ((role.empty() || record.role == role) && IsLive(record, now)) records.push_back(record);
    }
    return records;
  }

  bool WaitForWorkers(const std::string& role, int count, absl::Duration timeout) const {
    // Evaluated with mu_ held, each time the registry changes: expiry cannot raise the
    // count, so nothing else needs a look.
    const auto enough = [&] {
      const absl::Time now = absl::Now();
      int live = 0;
      for (const auto& [id, record] : workers_) {
        if ((role.empty() || record.role == role) && IsLive(record, now)) ++live;
      }
      return live >= count;
    };
    const auto done = [&] { return shut_down_ || enough(); };
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
    return !shut_down_ && enough();
  }

  void MarkDead(const std::string& worker_id) {
    bool removed = false;
    {
      absl::MutexLock lock(&mu_);
      removed = workers_.erase(worker_id) > 0;
      if (removed) ++generation_;
    }
    if (removed) Log(absl::StrCat("worker \"", worker_id, "\" marked dead by the controller"));
  }

  uint64_t generation() const {
    absl::MutexLock lock(&mu_);
    return generation_;
  }

  uint64_t WaitForChange(uint64_t seen, absl::Duration timeout) const {
    const auto changed = [&] { return shut_down_ || generation_ != seen; };
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(&changed), timeout);
    return generation_;
  }

  // Drops silent workers until ShutDown(); checks twice per heartbeat interval so a
  // worker leaves within 3.5 intervals of its last heartbeat.
  void RunExpiryLoop(absl::Duration check_period) {
    absl::MutexLock lock(&mu_);
    while (!shut_down_) {
      mu_.AwaitWithTimeout(absl::Condition(&shut_down_), check_period);
      if (!shut_down_) ExpireLocked(absl::Now());
    }
  }

  void ShutDown() {
    absl::MutexLock lock(&mu_);
    shut_down_ = true;
  }

 private:
  bool IsLive(const WorkerRecord& record, absl::Time now) const {
    return now - record.last_seen <= timeout_;
  }

  void ExpireLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (auto it = workers_.begin(); it != workers_.end();) {
      if (IsLive(it->second, now)) {
        ++it;
        continue;
      }
      Log(absl::StrCat("worker \"", it->first, "\" (", it->second.role, ", ",
                       it->second.address, ") dropped: no heartbeat for ",
                       absl::FormatDuration(now - it->second.last_seen)));
      it = workers_.erase(it);
      ++generation_;
    }
  }

  const absl::Duration timeout_;
  const std::string epoch_;
  mutable absl::Mutex mu_;
  std::map<std::string, WorkerRecord> workers_ ABSL_GUARDED_BY(mu_);  // sorted by id
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
};

WorkerRecord FromProto(const lightrl::v1::WorkerInfo& info) {
  WorkerRecord record;
  record.id = info.worker_id();
  record.role = info.role();
  record.address = info.address();
  record.capacity = info.capacity();
  record.device = info.device();
  record.weight_version = info.weight_version();
  return record;
}

void ToProto(const WorkerRecord& record, lightrl::v1::WorkerInfo* info) {
  info->set_worker_id(record.id);
  info->set_role(record.role);
  info->set_address(record.address);
  info->set_capacity(record.capacity);
  info->set_device(record.device);
  info->set_weight_version(record.weight_version);
  info->set_last_seen_unix_ms(absl::ToUnixMillis(record.last_seen));
}

using RegisterReactor =
    ParsedUnaryReactor<lightrl::v1::RegisterRequest, lightrl::v1::RegisterResponse>;
using HeartbeatReactor =
    ParsedUnaryReactor<lightrl::v1::HeartbeatRequest, lightrl::v1::HeartbeatResponse>;
using ListWorkersReactor =
    ParsedUnaryReactor<lightrl::v1::ListWorkersRequest, lightrl::v1::ListWorkersResponse>;

// Raw methods, so that bytes that do not parse get INVALID_ARGUMENT naming the type.
using CoordinatorServiceBase = lightrl::v1::Coordinator::WithRawCallbackMethod_Register<
    lightrl::v1::Coordinator::WithRawCallbackMethod_Heartbeat<
        lightrl::v1::Coordinator::WithRawCallbackMethod_ListWorkers<
            lightrl::v1::Coordinator::Service>>>;

// Every call is a short critical section on the registry, so handlers run inline on
// gRPC's callback threads.
class CoordinatorService final : public CoordinatorServiceBase {
 public:
  CoordinatorService(Registry* registry, const CoordinatorOptions& options, std::string epoch)
      : registry_(registry),
        auth_token_(options.auth_token),
        epoch_(std::move(epoch)),
        heartbeat_interval_ms_(
            std::max<int64_t>(1, absl::ToInt64Milliseconds(options.heartbeat_interval))),
        inflight_(InflightBudgetBytes(options.max_inflight_bytes, options.max_request_bytes),
                  "coordinator in-flight budget (CoordinatorOptions::max_inflight_bytes)") {}

  grpc::ServerUnaryReactor* Register(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request_bytes,
                                     grpc::ByteBuffer* response_bytes) override {
    auto* reactor = new RegisterReactor(request_bytes, response_bytes, &inflight_);
    if (!reactor->parsed()) return reactor;
    absl::Status status = CheckAuth(*context);
    if (status.ok()) status = registry_->Register(FromProto(reactor->request().worker()));
    if (status.ok()) {
      reactor->response()->set_heartbeat_interval_ms(heartbeat_interval_ms_);
      reactor->response()->set_coordinator_epoch(epoch_);
    }
    reactor->Reply(ToGrpcStatus(status));
    return reactor;
  }

  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* context,
                                      const grpc::ByteBuffer* request_bytes,
                                      grpc::ByteBuffer* response_bytes) override {
    auto* reactor = new HeartbeatReactor(request_bytes, response_bytes, &inflight_);
    if (!reactor->parsed()) return reactor;
    const lightrl::v1::HeartbeatRequest& request = reactor->request();
    absl::Status status = CheckAuth(*context);
    if (status.ok()) status = registry_->Heartbeat(request.worker_id(), request.weight_version());
    if (status.ok()) reactor->response()->set_coordinator_epoch(epoch_);
    reactor->Reply(ToGrpcStatus(status));
    return reactor;
  }

  grpc::ServerUnaryReactor* ListWorkers(grpc::CallbackServerContext* context,
                                        const grpc::ByteBuffer* request_bytes,
                                        grpc::ByteBuffer* response_bytes) override {
    auto* reactor = new ListWorkersReactor(request_bytes, response_bytes, &inflight_);
    if (!reactor->parsed()) return reactor;
    const lightrl::v1::ListWorkersRequest& request = reactor->request();
    absl::Status status = CheckAuth(*context);
    if (status.ok() && !request.role().empty() && !IsKnownRole(request.role())) {
      status = absl::InvalidArgumentError(
          absl::StrCat("ListWorkers: role must be empty, \"", kRolloutRole, "\" or \"",
                       kRewardRole, "\", got \"", request.role(), "\""));
    }
    if (status.ok()) {
      for (const WorkerRecord& record : registry_->Workers(request.role())) {
        ToProto(record, reactor->response()->add_workers());
      }
    }
    reactor->Reply(ToGrpcStatus(status));
    return reactor;
  }

 private:
  absl::Status CheckAuth(const grpc::CallbackServerContext& context) const {
    absl::Status status = CheckAuthToken(context, auth_token_);
    if (status.ok()) return status;
    return absl::Status(status.code(), absl::StrCat("coordinator: ", status.message()));
  }

  Registry* registry_;
  const std::string auth_token_;
  const std::string epoch_;
  const int64_t heartbeat_interval_ms_;
  ByteBudget inflight_;  // request bytes of the calls being served
};

}  // namespace

absl::Status CoordinatorOptions::Validate() const {
  if (heartbeat_interval < absl::Milliseconds(1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("coordinator: heartbeat_interval must be >= 1ms, got ",
                     absl::FormatDuration(heartbeat_interval)));
  }
  if (absl::Status status =
          ValidateMessageLimit(max_request_bytes, 64 << 10, "coordinator: max_request_bytes");
      !status.ok()) {
    return status;
  }
  if (absl::Status status = ValidateInflightBudget(max_inflight_bytes, max_request_bytes,
                                                   "coordinator: max_inflight_bytes");
      !status.ok()) {
    return status;
  }
  if (absl::Status status = tls.Validate("coordinator: tls"); !status.ok()) return status;
  return ValidateListenAddress(listen_address, auth_token, "coordinator: listen address");
}

class Coordinator::Impl {
 public:
  Impl(const CoordinatorOptions& options, std::string epoch)
      : options_(options),
        epoch_(std::move(epoch)),
        registry_(options.heartbeat_interval, epoch_),
        service_(&registry_, options, epoch_) {}

  ~Impl() { Shutdown(); }

  absl::Status Listen() {
    auto server = StartGrpcServer(options_.listen_address, {&service_}, &port_,
                                  options_.max_request_bytes, options_.tls, "tls");
    if (!server.ok()) {
      return absl::Status(server.status().code(),
                          absl::StrCat("coordinator: ", server.status().message()));
    }
    server_ = *std::move(server);
    address_ = BoundAddress(options_.listen_address, port_);
    expiry_thread_ = std::thread([this] {
      registry_.RunExpiryLoop(std::max(absl::Milliseconds(1), options_.heartbeat_interval / 2));
    });
    return absl::OkStatus();
  }

  void Shutdown() {
    absl::MutexLock lock(&shutdown_mu_);
    if (shut_down_) return;
    shut_down_ = true;
    registry_.ShutDown();
    if (server_ != nullptr) {
      server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Milliseconds(500)));
      server_->Wait();
    }
    if (expiry_thread_.joinable()) expiry_thread_.join();
  }

  const CoordinatorOptions options_;
  const std::string epoch_;
  Registry registry_;
  CoordinatorService service_;
  std::string address_;
  int port_ = 0;

 private:
  std::unique_ptr<grpc::Server> server_;
  std::thread expiry_thread_;
  absl::Mutex shutdown_mu_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;
};

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Start(
    const CoordinatorOptions& options) {
  if (absl::Status status = options.Validate(); !status.ok()) return status;
  auto impl = std::make_unique<Impl>(options, NewEpoch());
  if (absl::Status status = impl->Listen(); !status.ok()) return status;
  Log(absl::StrCat("listening on ", impl->address_, " (epoch ", impl->epoch_,
                   ", heartbeat every ", absl::FormatDuration(options.heartbeat_interval), ")"));
  return std::unique_ptr<Coordinator>(new Coordinator(std::move(impl)));
}

Coordinator::Coordinator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Coordinator::~Coordinator() = default;

std::string Coordinator::address() const { return impl_->address_; }

int Coordinator::port() const { return impl_->port_; }

std::string Coordinator::epoch() const { return impl_->epoch_; }

absl::Duration Coordinator::heartbeat_interval() const {
  return impl_->options_.heartbeat_interval;
}

std::vector<WorkerRecord> Coordinator::Workers(const std::string& role) const {
  return impl_->registry_.Workers(role);
}

bool Coordinator::WaitForWorkers(const std::string& role, int count,
                                 absl::Duration timeout) const {
  return impl_->registry_.WaitForWorkers(role, count, timeout);
}

void Coordinator::MarkDead(const std::string& worker_id) { impl_->registry_.MarkDead(worker_id); }

uint64_t Coordinator::generation() const { return impl_->registry_.generation(); }

uint64_t Coordinator::WaitForChange(uint64_t seen, absl::Duration timeout) const {
  return impl_->registry_.WaitForChange(seen, timeout);
}

void Coordinator::Shutdown() { impl_->Shutdown(); }

}  // namespace lightrl
