#include "rollout/worker_registration.h"

#include <algorithm>
#include <cstdio>
#include <thread>
#include <utility>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "lightrl/v1/coordinator.grpc.pb.h"
#include "proto/grpc_util.h"
#include "rollout/coordinator.h"

namespace lightrl {
namespace {

std::string DescribeStatus(const grpc::Status& status) {
  return absl::StrCat(absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code())),
                      ": ", status.error_message());
}

}  // namespace

absl::Status WorkerRegistrationOptions::Validate() const {
  const std::string where = absl::StrCat("worker registration (worker \"", worker.id, "\")");
  if (coordinator_address.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": coordinator_address is empty"));
  }
  if (worker.id.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": worker id is empty"));
  }
  if (worker.role != kRolloutRole && worker.role != kRewardRole) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": role must be \"", kRolloutRole,
                                                   "\" or \"", kRewardRole, "\", got \"",
                                                   worker.role, "\""));
  }
  if (worker.address.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": worker address is empty"));
  }
  if (worker.capacity < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": capacity must be >= 1, got ", worker.capacity));
  }
  if (call_deadline <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": call_deadline must be > 0, got ",
                                                   absl::FormatDuration(call_deadline)));
  }
  if (initial_backoff <= absl::ZeroDuration() || backoff_multiplier < 1.0 ||
      max_backoff < initial_backoff) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": backoff must start > 0, grow by a multiplier >= 1 and cap at >= its start; got ",
        absl::FormatDuration(initial_backoff), " x", backoff_multiplier, " up to ",
        absl::FormatDuration(max_backoff)));
  }
  return absl::OkStatus();
}

class WorkerRegistration::Impl {
 public:
  explicit Impl(const WorkerRegistrationOptions& options) : options_(options) {
    grpc::ChannelArguments args;
    // gRPC's own reconnect backoff grows to minutes; a worker must notice a controller
    // that came back within its own, much shorter, retry cap.
    const int initial_ms =
        static_cast<int>(std::max<int64_t>(1, absl::ToInt64Milliseconds(options.initial_backoff)));
    const int max_ms = static_cast<int>(std::clamp<int64_t>(
        absl::ToInt64Milliseconds(options.max_backoff), initial_ms, 1 << 30));
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, initial_ms);
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, initial_ms);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, max_ms);
    // Start() made sure the credentials can be built.
    stub_ = lightrl::v1::Coordinator::NewStub(
        *CreateClientChannel(options.coordinator_address, options.tls, args));
    thread_ = std::thread([this] { Run(); });
  }

  ~Impl() { Stop(); }

  void Stop() {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
      if (call_in_flight_ != nullptr) call_in_flight_->TryCancel();
    }
    if (thread_.joinable()) thread_.join();
  }

  bool registered() const {
    absl::MutexLock lock(&mu_);
    return registered_;
  }

  bool WaitUntilRegistered(absl::Duration timeout) const {
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(&registered_), timeout);
    return registered_;
  }

  int64_t num_registrations() const {
    absl::MutexLock lock(&mu_);
    return num_registrations_;
  }

  std::string coordinator_epoch() const {
    absl::MutexLock lock(&mu_);
    return epoch_;
  }

 private:
  // Log lines are written on transitions between these, never per call.
  enum class State { kStarting, kRegistered, kRegisterFailing, kHeartbeatFailing };

  void Run() {
    absl::Duration backoff = options_.initial_backoff;
    absl::Duration interval = absl::Seconds(1);
    while (!stopping()) {
      const absl::Time start = absl::Now();
      if (!registered()) {
        lightrl::v1::RegisterResponse response;
        const grpc::Status status = Register(&response);
        if (stopping()) return;
        if (!status.ok()) {
          if (state_ != State::kRegisterFailing || status.error_code() != last_error_code_) {
            Log(absl::StrCat("cannot register with coordinator ", options_.coordinator_address,
                             " (", DescribeStatus(status), "); retrying every <= ",
                             absl::FormatDuration(options_.max_backoff)));
          }
          state_ = State::kRegisterFailing;
          last_error_code_ = status.error_code();
          SleepUntil(start + backoff);
          backoff = std::min(options_.max_backoff, backoff * options_.backoff_multiplier);
          continue;
        }
        backoff = options_.initial_backoff;
        interval = response.heartbeat_interval_ms() > 0
                       ? absl::Milliseconds(response.heartbeat_interval_ms())
                       : absl::Seconds(1);
        {
          absl::MutexLock lock(&mu_);
          registered_ = true;
          epoch_ = response.coordinator_epoch();
          ++num_registrations_;
        }
        state_ = State::kRegistered;
        Log(absl::StrCat("registered with coordinator ", options_.coordinator_address,
                         " (epoch ", response.coordinator_epoch(), ", heartbeat every ",
                         absl::FormatDuration(interval), ")"));
        SleepUntil(start + interval);
        continue;
      }

      lightrl::v1::HeartbeatResponse response;
      const grpc::Status status = Heartbeat(&response);
      if (stopping()) return;
      if (status.ok()) {
        const std::string epoch = coordinator_epoch();
        if (response.coordinator_epoch() != epoch) {
          Log(absl::StrCat("coordinator ", options_.coordinator_address, " restarted (epoch ",
                           epoch, " -> ", response.coordinator_epoch(), "); registering again"));
          SetUnregistered();
          continue;
        }
        if (state_ == State::kHeartbeatFailing) {
          Log(absl::StrCat("heartbeats to coordinator ", options_.coordinator_address,
                           " resumed"));
        }
        state_ = State::kRegistered;
      } else if (status.error_code() == grpc::StatusCode::NOT_FOUND) {
        Log(absl::StrCat("coordinator ", options_.coordinator_address,
                         " does not know this worker (restarted or declared it dead); "
                         "registering again"));
        SetUnregistered();
        continue;
      } else {
        // Keep the registration: a coordinator that comes back with the same epoch
        // (a network blip) still knows the worker, and a restarted one answers NOT_FOUND.
        if (state_ != State::kHeartbeatFailing || status.error_code() != last_error_code_) {
          Log(absl::StrCat("heartbeat to coordinator ", options_.coordinator_address,
                           " failed (", DescribeStatus(status), "); still trying every ",
                           absl::FormatDuration(interval)));
        }
        state_ = State::kHeartbeatFailing;
        last_error_code_ = status.error_code();
      }
      SleepUntil(start + interval);
    }
  }

  grpc::Status Register(lightrl::v1::RegisterResponse* response) {
    lightrl::v1::RegisterRequest request;
    lightrl::v1::WorkerInfo* info = request.mutable_worker();
    info->set_worker_id(options_.worker.id);
    info->set_role(options_.worker.role);
    info->set_address(options_.worker.address);
    info->set_capacity(options_.worker.capacity);
    info->set_device(options_.worker.device);
    info->set_weight_version(WeightVersion());
    return Call([&](grpc::ClientContext* context) {
      return stub_->Register(context, request, response);
    });
  }

  grpc::Status Heartbeat(lightrl::v1::HeartbeatResponse* response) {
    lightrl::v1::HeartbeatRequest request;
    request.set_worker_id(options_.worker.id);
    request.set_weight_version(WeightVersion());
    return Call([&](grpc::ClientContext* context) {
      return stub_->Heartbeat(context, request, response);
    });
  }

  // One attempt, cancellable by Stop().
  template <typename Rpc>
  grpc::Status Call(const Rpc& rpc) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + options_.call_deadline));
    AddAuthToken(&context, options_.auth_token);
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return grpc::Status(grpc::StatusCode::CANCELLED, "stopping");
      call_in_flight_ = &context;
    }
    const grpc::Status status = rpc(&context);
    absl::MutexLock lock(&mu_);
    call_in_flight_ = nullptr;
    return status;
  }

  int64_t WeightVersion() const { return options_.weight_version ? options_.weight_version() : 0; }

  bool stopping() const {
    absl::MutexLock lock(&mu_);
    return stopping_;
  }

  void SetUnregistered() {
    absl::MutexLock lock(&mu_);
    registered_ = false;
  }

  // Returns early when Stop() is called.
  void SleepUntil(absl::Time deadline) {
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithDeadline(absl::Condition(&stopping_), deadline);
  }

  void Log(const std::string& line) const {
    LogInfo("worker \"%s\": %s", options_.worker.id, line);
  }

  const WorkerRegistrationOptions options_;
  std::unique_ptr<lightrl::v1::Coordinator::Stub> stub_;
  // Touched only by the registration thread.
  State state_ = State::kStarting;
  grpc::StatusCode last_error_code_ = grpc::StatusCode::OK;

  mutable absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool registered_ ABSL_GUARDED_BY(mu_) = false;
  int64_t num_registrations_ ABSL_GUARDED_BY(mu_) = 0;
  std::string epoch_ ABSL_GUARDED_BY(mu_);
  grpc::ClientContext* call_in_flight_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::thread thread_;  // last: started once everything it reads exists
};

absl::StatusOr<std::unique_ptr<WorkerRegistration>> WorkerRegistration::Start(
    const WorkerRegistrationOptions& options) {
  if (absl::Status status = options.Validate(); !status.ok()) return status;
  if (absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
          MakeChannelCredentials(options.tls, "worker registration: tls");
      !credentials.ok()) {
    return credentials.status();
  }
  return std::unique_ptr<WorkerRegistration>(
      new WorkerRegistration(std::make_unique<Impl>(options)));
}

WorkerRegistration::WorkerRegistration(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

WorkerRegistration::~WorkerRegistration() = default;

bool WorkerRegistration::registered() const { return impl_->registered(); }

bool WorkerRegistration::WaitUntilRegistered(absl::Duration timeout) const {
  return impl_->WaitUntilRegistered(timeout);
}

int64_t WorkerRegistration::num_registrations() const { return impl_->num_registrations(); }

std::string WorkerRegistration::coordinator_epoch() const { return impl_->coordinator_epoch(); }

void WorkerRegistration::Stop() { impl_->Stop(); }

}  // namespace lightrl
