// Coordinator and WorkerRegistration over real gRPC on loopback: registration and role
// filters, heartbeats that keep a worker listed and expiry of one that falls silent,
// re-registration after MarkDead, after a controller restart on the same port and when
// the controller comes up after the worker, rejection of bad input without harm to the
// server, and the shared token off loopback. Timings use short heartbeat intervals with
// waits many intervals long, so a loaded machine slows the test without failing it.
#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "lightrl/v1/coordinator.grpc.pb.h"
#include "rollout/coordinator.h"
#include "rollout/worker_registration.h"
#include "tests/raw_grpc_call.h"

namespace lightrl {
namespace {

// Generous: a bound on what should take a few heartbeat intervals.
constexpr absl::Duration kPatience = absl::Seconds(5);

std::unique_ptr<Coordinator> StartCoordinator(absl::Duration interval,
                                              const std::string& address = "127.0.0.1:0",
                                              const std::string& token = "") {
  CoordinatorOptions options;
  options.listen_address = address;
  options.auth_token = token;
  options.heartbeat_interval = interval;
  absl::StatusOr<std::unique_ptr<Coordinator>> coordinator = Coordinator::Start(options);
  EXPECT_TRUE(coordinator.ok()) << coordinator.status();
  return coordinator.ok() ? *std::move(coordinator) : nullptr;
}

WorkerRegistrationOptions RegistrationOptions(const std::string& coordinator_address,
                                              const std::string& id,
                                              const std::string& role = kRolloutRole) {
  WorkerRegistrationOptions options;
  options.coordinator_address = coordinator_address;
  options.worker.id = id;
  options.worker.role = role;
  options.worker.address = absl::StrCat("127.0.0.1:", 40000 + id.size());
  options.worker.capacity = 4;
  options.worker.device = "cpu";
  options.call_deadline = absl::Seconds(2);
  options.initial_backoff = absl::Milliseconds(20);
  options.max_backoff = absl::Milliseconds(200);
  return options;
}

std::unique_ptr<WorkerRegistration> StartRegistration(const WorkerRegistrationOptions& options) {
  absl::StatusOr<std::unique_ptr<WorkerRegistration>> registration =
      WorkerRegistration::Start(options);
  EXPECT_TRUE(registration.ok()) << registration.status();
  return registration.ok() ? *std::move(registration) : nullptr;
}

// Polls `done` until it holds or `timeout` passes.
bool Eventually(const std::function<bool()>& done, absl::Duration timeout = kPatience) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (done()) return true;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return done();
}

// Speaks the protocol directly, for what WorkerRegistration never sends.
class RawClient {
 public:
  explicit RawClient(const std::string& address, std::string token = "")
      : stub_(lightrl::v1::Coordinator::NewStub(
            grpc::CreateChannel(address, grpc::InsecureChannelCredentials()))),
        token_(std::move(token)) {}

  grpc::Status Register(const std::string& id, const std::string& role,
                        const std::string& address, int capacity = 1,
                        lightrl::v1::RegisterResponse* response = nullptr) {
    lightrl::v1::RegisterRequest request;
    request.mutable_worker()->set_worker_id(id);
    request.mutable_worker()->set_role(role);
    request.mutable_worker()->set_address(address);
    request.mutable_worker()->set_capacity(capacity);
    lightrl::v1::RegisterResponse ignored;
    grpc::ClientContext context;
    Prepare(&context);
    return stub_->Register(&context, request, response != nullptr ? response : &ignored);
  }

  grpc::Status Heartbeat(const std::string& id) {
    lightrl::v1::HeartbeatRequest request;
    request.set_worker_id(id);
    lightrl::v1::HeartbeatResponse response;
    grpc::ClientContext context;
    Prepare(&context);
    return stub_->Heartbeat(&context, request, &response);
  }

  grpc::Status List(const std::string& role, lightrl::v1::ListWorkersResponse* response) {
    lightrl::v1::ListWorkersRequest request;
    request.set_role(role);
    grpc::ClientContext context;
    Prepare(&context);
    return stub_->ListWorkers(&context, request, response);
  }

  void set_token(std::string token) { token_ = std::move(token); }

 private:
  void Prepare(grpc::ClientContext* context) const {
    context->set_deadline(absl::ToChronoTime(absl::Now() + kPatience));
    if (!token_.empty()) context->AddMetadata("authorization", token_);
  }

  std::unique_ptr<lightrl::v1::Coordinator::Stub> stub_;
  std::string token_;
};

std::vector<std::string> Ids(const std::vector<WorkerRecord>& records) {
  std::vector<std::string> ids;
  for (const WorkerRecord& record : records) ids.push_back(record.id);
  return ids;
}

TEST(CoordinatorTest, RegistersListsAndFiltersByRole) {
  std::unique_ptr<Coordinator> coordinator = StartCoordinator(absl::Seconds(1));
  ASSERT_NE(coordinator, nullptr);
  EXPECT_TRUE(absl::StartsWith(coordinator->address(), "127.0.0.1:"));
  EXPECT_GT(coordinator->port(), 0);
  EXPECT_FALSE(coordinator->epoch().empty());
  const uint64_t generation = coordinator->generation();

  std::atomic<int64_t> weight_version{3};
  WorkerRegistrationOptions rollout_a = RegistrationOptions(coordinator->address(), "rollout-a");
  rollout_a.weight_version = [&] { return weight_version.load(); };
  rollout_a.worker.device = "cuda:1";
  std::unique_ptr<WorkerRegistration> a = StartRegistration(rollout_a);
  std::unique_ptr<WorkerRegistration> b =
      StartRegistration(RegistrationOptions(coordinator->address(), "rollout-b"));
  std::unique_ptr<WorkerRegistration> scorer =
      StartRegistration(RegistrationOptions(coordinator->address(), "scorer", kRewardRole));
  ASSERT_TRUE(coordinator->WaitForWorkers(kRolloutRole, 2, kPatience));
  ASSERT_TRUE(coordinator->WaitForWorkers(kRewardRole, 1, kPatience));
  ASSERT_TRUE(coordinator->WaitForWorkers("", 3, kPatience));
  EXPECT_FALSE(coordinator->WaitForWorkers(kRewardRole, 2, absl::Milliseconds(50)));
  EXPECT_GE(coordinator->generation(), generation + 3);
  EXPECT_TRUE(a->WaitUntilRegistered(kPatience));
  EXPECT_EQ(a->coordinator_epoch(), coordinator->epoch());

  EXPECT_EQ(Ids(coordinator->Workers()),
            (std::vector<std::string>{"rollout-a", "rollout-b", "scorer"}));
  EXPECT_EQ(Ids(coordinator->Workers(kRolloutRole)),
            (std::vector<std::string>{"rollout-a", "rollout-b"}));
  EXPECT_EQ(Ids(coordinator->Workers(kRewardRole)), std::vector<std::string>{"scorer"});
  const WorkerRecord record = coordinator->Workers(kRolloutRole)[0];
  EXPECT_EQ(record.role, kRolloutRole);
  EXPECT_EQ(record.address, rollout_a.worker.address);
  EXPECT_EQ(record.capacity, 4);
  EXPECT_EQ(record.device, "cuda:1");
  EXPECT_EQ(record.weight_version, 3);
  EXPECT_LE(record.registered_at, record.last_seen);
  EXPECT_LE(record.last_seen, absl::Now());

  // The wire view matches the in-process one.
  RawClient client(coordinator->address());
  lightrl::v1::ListWorkersResponse listed;
  ASSERT_TRUE(client.List(kRewardRole, &listed).ok());
  ASSERT_EQ(listed.workers_size(), 1);
  EXPECT_EQ(listed.workers(0).worker_id(), "scorer");
  EXPECT_EQ(listed.workers(0).role(), kRewardRole);
  EXPECT_GT(listed.workers(0).last_seen_unix_ms(), 0);
  listed.Clear();
  ASSERT_TRUE(client.List("", &listed).ok());
  EXPECT_EQ(listed.workers_size(), 3);

  // Re-registering an id replaces its record rather than adding one, and counts as a join.
  const uint64_t before_replace = coordinator->generation();
  lightrl::v1::RegisterResponse response;
  ASSERT_TRUE(client.Register("rollout-b", kRolloutRole, "127.0.0.1:9", 8, &response).ok());
  EXPECT_EQ(response.coordinator_epoch(), coordinator->epoch());
  EXPECT_EQ(response.heartbeat_interval_ms(), 1000);
  EXPECT_GT(coordinator->generation(), before_replace);
  const std::vector<WorkerRecord> rollouts = coordinator->Workers(kRolloutRole);
  ASSERT_EQ(rollouts.size(), 2u);
  EXPECT_EQ(rollouts[1].address, "127.0.0.1:9");
  EXPECT_EQ(rollouts[1].capacity, 8);
}

TEST(CoordinatorTest, HeartbeatsKeepWorkerAliveAndCarryWeightVersion) {
  std::unique_ptr<Coordinator> coordinator = StartCoordinator(absl::Milliseconds(200));
  ASSERT_NE(coordinator, nullptr);
  std::atomic<int64_t> weight_version{0};
  WorkerRegistrationOptions options = RegistrationOptions(coordinator->address(), "steady");
  options.weight_version = [&] { return weight_version.load(); };
  std::unique_ptr<WorkerRegistration> registration = StartRegistration(options);
  ASSERT_TRUE(coordinator->WaitForWorkers(kRolloutRole, 1, kPatience));
  const uint64_t generation = coordinator->generation();

  weight_version = 7;
  // Five times the drop deadline: only heartbeats keep it listed this long.
  absl::SleepFor(absl::Milliseconds(200) * kMissedHeartbeatsBeforeDrop * 5);
  ASSERT_EQ(Ids(coordinator->Workers()), std::vector<std::string>{"steady"});
  EXPECT_EQ(coordinator->Workers()[0].weight_version, 7);
  EXPECT_EQ(registration->num_registrations(), 1);
  EXPECT_EQ(coordinator->generation(), generation) << "heartbeats must not count as changes";

  // Once the worker stops, the coordinator lets it go.
  registration->Stop();
  EXPECT_EQ(coordinator->WaitForChange(generation, kPatience), generation + 1);
  EXPECT_TRUE(coordinator->Workers().empty());
}

TEST(CoordinatorTest, SilentWorkerExpires) {
  std::unique_ptr<Coordinator> coordinator = StartCoordinator(absl::Milliseconds(100));
  ASSERT_NE(coordinator, nullptr);
  RawClient client(coordinator->address());
  const absl::Time registered = absl::Now();
  ASSERT_TRUE(client.Register("mute", kRewardRole, "127.0.0.1:7000").ok());
  const uint64_t generation = coordinator->generation();
  ASSERT_TRUE(client.Heartbeat("mute").ok());

  EXPECT_EQ(coordinator->WaitForChange(generation, kPatience), generation + 1);
  EXPECT_GE(absl::Now() - registered, absl::Milliseconds(100) * kMissedHeartbeatsBeforeDrop);
  EXPECT_TRUE(coordinator->Workers().empty());
  const grpc::Status late = client.Heartbeat("mute");
  EXPECT_EQ(late.error_code(), grpc::StatusCode::NOT_FOUND) << late.error_message();
  EXPECT_TRUE(absl::StrContains(late.error_message(), "mute")) << late.error_message();
}

TEST(CoordinatorTest, MarkDeadMakesALiveWorkerRegisterAgain) {
  std::unique_ptr<Coordinator> coordinator = StartCoordinator(absl::Milliseconds(100));
  ASSERT_NE(coordinator, nullptr);
  std::unique_ptr<WorkerRegistration> registration =
      StartRegistration(RegistrationOptions(coordinator->address(), "flaky"));
  ASSERT_TRUE(coordinator->WaitForWorkers(kRolloutRole, 1, kPatience));
  ASSERT_TRUE(registration->WaitUntilRegistered(kPatience));
  EXPECT_EQ(registration->num_registrations(), 1);

  const uint64_t generation = coordinator->generation();
  coordinator->MarkDead("flaky");
  coordinator->MarkDead("never-registered");  // ignored
  EXPECT_EQ(coordinator->generation(), generation + 1);
  EXPECT_TRUE(coordinator->Workers().empty());

  ASSERT_TRUE(coordinator->WaitForWorkers(kRolloutRole, 1, kPatience));
  EXPECT_TRUE(Eventually([&] { return registration->num_registrations() == 2; }));
  EXPECT_EQ(registration->coordinator_epoch(), coordinator->epoch());
}

TEST(CoordinatorTest, WorkerRegistersAgainWithARestartedCoordinatorOnTheSamePort) {
  std::unique_ptr<Coordinator> first = StartCoordinator(absl::Milliseconds(100));
  ASSERT_NE(first, nullptr);
  const std::string address = first->address();
  const std::string first_epoch = first->epoch();
  std::unique_ptr<WorkerRegistration> registration =
      StartRegistration(RegistrationOptions(address, "survivor"));
  ASSERT_TRUE(first->WaitForWorkers(kRolloutRole, 1, kPatience));
  ASSERT_TRUE(registration->WaitUntilRegistered(kPatience));

  first->Shutdown();
  first.reset();
  // The worker keeps failing heartbeats for a while, which must not hurt it.
  absl::SleepFor(absl::Milliseconds(300));
  std::unique_ptr<Coordinator> second = StartCoordinator(absl::Milliseconds(100), address);
  ASSERT_NE(second, nullptr);
  EXPECT_EQ(second->address(), address);
  EXPECT_NE(second->epoch(), first_epoch);
  // A second controller on a taken port fails loudly instead of sharing it.
  CoordinatorOptions duplicate;
  duplicate.listen_address = address;
  EXPECT_EQ(Coordinator::Start(duplicate).status().code(), absl::StatusCode::kUnavailable);

  ASSERT_TRUE(second->WaitForWorkers(kRolloutRole, 1, kPatience))
      << "the worker did not register with the restarted coordinator";
  EXPECT_TRUE(Eventually([&] { return registration->coordinator_epoch() == second->epoch(); }));
  EXPECT_EQ(registration->num_registrations(), 2);
}

TEST(CoordinatorTest, WorkerRegistersOnceTheCoordinatorComesUp) {
  // A port that was free a moment ago and has nothing listening now.
  std::string address;
  {
    std::unique_ptr<Coordinator> probe = StartCoordinator(absl::Seconds(1));
    ASSERT_NE(probe, nullptr);
    address = probe->address();
  }
  std::unique_ptr<WorkerRegistration> registration =
      StartRegistration(RegistrationOptions(address, "early", kRewardRole));
  absl::SleepFor(absl::Milliseconds(400));
  EXPECT_FALSE(registration->registered());
  EXPECT_EQ(registration->num_registrations(), 0);

  std::unique_ptr<Coordinator> coordinator = StartCoordinator(absl::Milliseconds(100), address);
  ASSERT_NE(coordinator, nullptr);
  ASSERT_TRUE(coordinator->WaitForWorkers(kRewardRole, 1, kPatience));
  EXPECT_TRUE(registration->WaitUntilRegistered(kPatience));
  EXPECT_EQ(registration->coordinator_epoch(), coordinator->epoch());

  // Stop is prompt even with the coordinator gone again.
  coordinator.reset();
  const absl::Time stop_started = absl::Now();
  registration->Stop();
  registration->Stop();
  EXPECT_LT(absl::Now() - stop_started, absl::Seconds(2));
}

TEST(CoordinatorTest, RejectsBadInputAndKeepsServing) {
  std::unique_ptr<Coordinator> coordinator = StartCoordinator(absl::Seconds(1));
  ASSERT_NE(coordinator, nullptr);
  RawClient client(coordinator->address());
  struct BadRegistration {
    std::string id, role, address;
    int capacity;
    std::string message_part;
  };
  const std::vector<BadRegistration> cases = {
      {"", kRolloutRole, "127.0.0.1:1", 1, "worker_id is empty"},
      {"w", "", "127.0.0.1:1", 1, "role"},
      {"w", "trainer", "127.0.0.1:1", 1, "\"trainer\""},
      {"w", kRolloutRole, "", 1, "address"},
      {"w", kRolloutRole, "nohost", 1, "\"nohost\""},
      {"w", kRolloutRole, "127.0.0.1:0", 1, "127.0.0.1:0"},
      {"w", kRolloutRole, "127.0.0.1:1", -2, "capacity"},
  };
  for (const BadRegistration& bad : cases) {
    const grpc::Status status = client.Register(bad.id, bad.role, bad.address, bad.capacity);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << bad.id << "/" << bad.role << "/" << bad.address << ": " << status.error_message();
    EXPECT_TRUE(absl::StrContains(status.error_message(), bad.message_part))
        << status.error_message();
  }
  EXPECT_EQ(client.Heartbeat("").error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(client.Heartbeat("stranger").error_code(), grpc::StatusCode::NOT_FOUND);
  lightrl::v1::ListWorkersResponse listed;
  EXPECT_EQ(client.List("trainer", &listed).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(coordinator->Workers().empty());
  EXPECT_EQ(coordinator->generation(), 0u);

  // Capacity 0 means 1; the server still serves after all of the above.
  ASSERT_TRUE(client.Register("fine", kRolloutRole, "localhost:5000", 0).ok());
  ASSERT_EQ(coordinator->Workers().size(), 1u);
  EXPECT_EQ(coordinator->Workers()[0].capacity, 1);
  EXPECT_TRUE(client.Heartbeat("fine").ok());

  // The worker side refuses the same mistakes before sending anything.
  WorkerRegistrationOptions options = RegistrationOptions(coordinator->address(), "w");
  options.worker.role = "trainer";
  EXPECT_EQ(WorkerRegistration::Start(options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = RegistrationOptions(coordinator->address(), "");
  EXPECT_EQ(WorkerRegistration::Start(options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = RegistrationOptions("", "w");
  EXPECT_EQ(WorkerRegistration::Start(options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = RegistrationOptions(coordinator->address(), "w");
  options.max_backoff = absl::Milliseconds(1);
  EXPECT_EQ(WorkerRegistration::Start(options).status().code(),
            absl::StatusCode::kInvalidArgument);

  CoordinatorOptions bad_options;
  bad_options.listen_address = "127.0.0.1";
  EXPECT_EQ(Coordinator::Start(bad_options).status().code(), absl::StatusCode::kInvalidArgument);
  bad_options.listen_address = "127.0.0.1:0";
  bad_options.heartbeat_interval = absl::ZeroDuration();
  EXPECT_EQ(Coordinator::Start(bad_options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CoordinatorTest, MalformedBytesAreInvalidArgumentNamingTheTypeAndServerKeepsServing) {
  std::unique_ptr<Coordinator> coordinator = StartCoordinator(absl::Seconds(1));
  ASSERT_NE(coordinator, nullptr);
  const std::pair<std::string, std::string> methods[] = {
      {"/lightrl.v1.Coordinator/Register", "lightrl.v1.RegisterRequest"},
      {"/lightrl.v1.Coordinator/Heartbeat", "lightrl.v1.HeartbeatRequest"},
      {"/lightrl.v1.Coordinator/ListWorkers", "lightrl.v1.ListWorkersRequest"}};
  for (const auto& [method, type] : methods) {
    const grpc::Status status = RawCall(coordinator->address(), method, MalformedProtobufBytes());
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << method;
    EXPECT_TRUE(absl::StrContains(status.error_message(), "malformed " + type))
        << method << ": " << status.error_message();
  }
  EXPECT_TRUE(coordinator->Workers().empty());

  RawClient client(coordinator->address());
  ASSERT_TRUE(client.Register("fine", kRolloutRole, "localhost:5000", 2).ok());
  lightrl::v1::ListWorkersResponse listed;
  ASSERT_TRUE(client.List("", &listed).ok());
  ASSERT_EQ(listed.workers_size(), 1);
  EXPECT_EQ(listed.workers(0).worker_id(), "fine");
}

TEST(CoordinatorTest, RequestOverTheLimitIsResourceExhaustedNamingItAndServerKeepsServing) {
  std::unique_ptr<Coordinator> coordinator = StartCoordinator(absl::Seconds(1));
  ASSERT_NE(coordinator, nullptr);
  lightrl::v1::RegisterRequest request;
  request.mutable_worker()->set_worker_id(std::string(CoordinatorOptions().max_request_bytes, 'w'));
  const grpc::Status status = RawCall(coordinator->address(), "/lightrl.v1.Coordinator/Register",
                                      request.SerializeAsString());
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(absl::StrContains(status.error_message(), "1048576")) << status.error_message();
  EXPECT_TRUE(coordinator->Workers().empty());
  RawClient client(coordinator->address());
  EXPECT_TRUE(client.Register("fine", kRolloutRole, "localhost:5000", 1).ok());

  CoordinatorOptions bad;
  bad.max_request_bytes = 100;
  EXPECT_EQ(Coordinator::Start(bad).status().code(), absl::StatusCode::kInvalidArgument);
  // An in-flight budget must take at least one request of the largest size.
  CoordinatorOptions small_budget;
  small_budget.max_inflight_bytes = CoordinatorOptions().max_request_bytes - 1;
  const absl::Status budget = small_budget.Validate();
  EXPECT_EQ(budget.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(budget.message(), "coordinator: max_inflight_bytes")) << budget;
}

TEST(CoordinatorTest, OffLoopbackNeedsAToken) {
  CoordinatorOptions options;
  options.listen_address = "0.0.0.0:0";
  const absl::StatusOr<std::unique_ptr<Coordinator>> refused = Coordinator::Start(options);
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "0.0.0.0:0"))
      << refused.status();
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "auth token")) << refused.status();

  std::unique_ptr<Coordinator> coordinator =
      StartCoordinator(absl::Seconds(1), "0.0.0.0:0", "s3cret");
  ASSERT_NE(coordinator, nullptr);
  const std::string loopback = absl::StrCat("127.0.0.1:", coordinator->port());

  RawClient client(loopback);
  lightrl::v1::ListWorkersResponse listed;
  EXPECT_EQ(client.Register("w", kRolloutRole, "127.0.0.1:1").error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(client.List("", &listed).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  client.set_token("Bearer wrong");
  EXPECT_EQ(client.Heartbeat("w").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  client.set_token("Bearer s3cret");
  EXPECT_TRUE(client.Register("w", kRolloutRole, "127.0.0.1:1").ok());
  client.set_token("s3cret");
  EXPECT_TRUE(client.Heartbeat("w").ok());
  EXPECT_TRUE(client.List("", &listed).ok());
  EXPECT_EQ(listed.workers_size(), 1);

  WorkerRegistrationOptions with_token = RegistrationOptions(loopback, "tokened");
  with_token.auth_token = "s3cret";
  std::unique_ptr<WorkerRegistration> registration = StartRegistration(with_token);
  EXPECT_TRUE(registration->WaitUntilRegistered(kPatience));
  EXPECT_TRUE(coordinator->WaitForWorkers(kRolloutRole, 2, kPatience));
}

}  // namespace
}  // namespace lightrl
