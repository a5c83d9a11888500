// TLS on the reward, rollout and coordinator services over real gRPC on loopback, with
// certificates made at run time (tests/tls_test_certs.h): a client without the server's
// CA cannot connect, one with it can, the shared token is still checked on top, and under
// mutual TLS a client without a certificate, or with one of another CA, is refused.
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "proto/grpc_util.h"
#include "reward/reward_client.h"
#include "reward/reward_service.h"
#include "rollout/coordinator.h"
#include "rollout/rollout_client.h"
#include "rollout/rollout_worker.h"
#include "rollout/worker_registration.h"
#include "tests/tls_test_certs.h"

namespace lightrl {
namespace {

const TestCertificates& Certs() {
  static const TestCertificates* certs = [] {
    absl::StatusOr<TestCertificates> made = MakeTestCertificates();
    EXPECT_TRUE(made.ok()) << made.status();
    return new TestCertificates(made.ok() ? *std::move(made) : TestCertificates());
  }();
  return *certs;
}

TlsOptions ServerTls(bool client_auth) {
  TlsOptions tls;
  tls.cert_file = Certs().server_cert;
  tls.key_file = Certs().server_key;
  if (client_auth) {
    tls.ca_file = Certs().ca;
    tls.client_auth = true;
  }
  return tls;
}

TlsOptions ClientTls(const std::string& ca, const std::string& cert = "",
                     const std::string& key = "") {
  TlsOptions tls;
  tls.ca_file = ca;
  tls.cert_file = cert;
  tls.key_file = key;
  return tls;
}

class ConstantReward final : public RewardFunction {
 public:
  std::string Kind() const override { return "constant"; }
  absl::StatusOr<RewardResult> Score(const RewardInput&) override {
    RewardResult r;
    r.score = 0.5;
    return r;
  }
};

std::unique_ptr<RewardServer> StartRewardServer(const TlsOptions& tls, const std::string& token) {
  RewardServerOptions options;
  options.tls = tls;
  options.auth_token = token;
  absl::StatusOr<std::unique_ptr<RewardServer>> server =
      RewardServer::Start(options, std::make_unique<ConstantReward>());
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

// One Score call with one attempt of at most 5 s.
absl::Status ScoreOnce(const std::string& address, const TlsOptions& tls,
                       const std::string& token) {
  RewardClientOptions options;
  options.address = address;
  options.tls = tls;
  options.auth_token = token;
  options.max_attempts = 1;
  options.deadline = absl::Seconds(5);
  absl::StatusOr<std::unique_ptr<RewardClient>> client = RewardClient::Create(options);
  if (!client.ok()) return client.status();
  RewardRequestItem item;
  item.id = "a";
  item.input.response = "r";
  absl::StatusOr<std::vector<RewardResponseItem>> results = (*client)->Score({item});
  if (!results.ok()) return results.status();
  EXPECT_EQ((*results)[0].result.score, 0.5);
  return absl::OkStatus();
}

TEST(TlsTest, RewardServiceNeedsTheCaAndStillChecksTheToken) {
  ASSERT_FALSE(Certs().dir.empty());
  std::unique_ptr<RewardServer> server = StartRewardServer(ServerTls(false), "tok");
  ASSERT_NE(server, nullptr);
  const std::string address = server->address();

  // Plaintext, or TLS that trusts another CA: no connection.
  absl::Status plain = ScoreOnce(address, TlsOptions(), "tok");
  EXPECT_EQ(plain.code(), absl::StatusCode::kUnavailable) << plain;
  absl::Status other_ca = ScoreOnce(address, ClientTls(Certs().other_ca), "tok");
  EXPECT_EQ(other_ca.code(), absl::StatusCode::kUnavailable) << other_ca;

  EXPECT_TRUE(ScoreOnce(address, ClientTls(Certs().ca), "tok").ok());
  absl::Status wrong_token = ScoreOnce(address, ClientTls(Certs().ca), "nope");
  EXPECT_EQ(wrong_token.code(), absl::StatusCode::kUnauthenticated) << wrong_token;
}

TEST(TlsTest, RewardServiceUnderMutualTlsNeedsAClientCertificateOfItsCa) {
  ASSERT_FALSE(Certs().dir.empty());
  std::unique_ptr<RewardServer> server = StartRewardServer(ServerTls(true), "");
  ASSERT_NE(server, nullptr);
  const std::string address = server->address();

  absl::Status no_cert = ScoreOnce(address, ClientTls(Certs().ca), "");
  EXPECT_EQ(no_cert.code(), absl::StatusCode::kUnavailable) << no_cert;
  absl::Status wrong_cert = ScoreOnce(
      address, ClientTls(Certs().ca, Certs().other_client_cert, Certs().other_client_key), "");
  EXPECT_EQ(wrong_cert.code(), absl::StatusCode::kUnavailable) << wrong_cert;
  absl::Status right = ScoreOnce(
      address, ClientTls(Certs().ca, Certs().client_cert, Certs().client_key), "");
  EXPECT_TRUE(right.ok()) << right;
}

TEST(TlsTest, BadTlsSettingsAreClearErrors) {
  ASSERT_FALSE(Certs().dir.empty());
  RewardServerOptions options;
  options.tls.cert_file = Certs().server_cert;
  absl::Status no_key = options.Validate();
  EXPECT_EQ(no_key.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(no_key.message(), "a certificate without a key")) << no_key;

  options.tls.key_file = Certs().dir + "/missing.key";
  absl::StatusOr<std::unique_ptr<RewardServer>> missing =
      RewardServer::Start(options, std::make_unique<ConstantReward>());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound) << missing.status();
  EXPECT_TRUE(absl::StrContains(missing.status().message(), "missing.key")) << missing.status();

  options.tls.key_file = Certs().dir + "/server.ext";  // exists, not PEM
  missing = RewardServer::Start(options, std::make_unique<ConstantReward>());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument) << missing.status();
  EXPECT_TRUE(absl::StrContains(missing.status().message(), "not a PEM file"))
      << missing.status();

  options.tls = ServerTls(false);
  options.tls.client_auth = true;  // without a CA to check clients against
  EXPECT_EQ(options.Validate().code(), absl::StatusCode::kInvalidArgument);
}

// Health of the rollout worker at `address`, one try of at most 5 s.
absl::Status RolloutHealth(const std::string& address, const TlsOptions& tls) {
  RolloutClientOptions options;
  options.address = address;
  options.tls = tls;
  options.rpc_deadline = absl::Seconds(5);
  absl::StatusOr<std::unique_ptr<RolloutClient>> client = RolloutClient::Create(options);
  if (!client.ok()) return client.status();
  return (*client)->Health().status();
}

TEST(TlsTest, RolloutServiceNeedsTheCaAndUnderMutualTlsItsClientCertificate) {
  ASSERT_FALSE(Certs().dir.empty());
  for (bool client_auth : {false, true}) {
    SCOPED_TRACE(client_auth ? "mutual TLS" : "server TLS");
    RolloutWorkerOptions options;
    options.worker_id = "w0";
    options.tls = ServerTls(client_auth);
    absl::StatusOr<std::unique_ptr<RolloutWorker>> worker = RolloutWorker::Start(options);
    ASSERT_TRUE(worker.ok()) << worker.status();
    const std::string address = (*worker)->address();
    const TlsOptions good = ClientTls(Certs().ca, Certs().client_cert, Certs().client_key);

    EXPECT_EQ(RolloutHealth(address, TlsOptions()).code(), absl::StatusCode::kUnavailable);
    EXPECT_EQ(RolloutHealth(address, ClientTls(Certs().other_ca, Certs().client_cert,
                                               Certs().client_key)).code(),
              absl::StatusCode::kUnavailable);
    absl::Status wrong_cert = RolloutHealth(
        address, ClientTls(Certs().ca, Certs().other_client_cert, Certs().other_client_key));
    absl::Status no_cert = RolloutHealth(address, ClientTls(Certs().ca));
    if (client_auth) {
      EXPECT_EQ(wrong_cert.code(), absl::StatusCode::kUnavailable) << wrong_cert;
      EXPECT_EQ(no_cert.code(), absl::StatusCode::kUnavailable) << no_cert;
    } else {
      EXPECT_TRUE(no_cert.ok()) << no_cert;
    }
    absl::Status right = RolloutHealth(address, good);
    EXPECT_TRUE(right.ok()) << right;
    (*worker)->Shutdown();
  }
}

TEST(TlsTest, WorkersRegisterWithAMutualTlsCoordinatorOnlyWithItsCertificates) {
  ASSERT_FALSE(Certs().dir.empty());
  CoordinatorOptions options;
  options.tls = ServerTls(true);
  options.auth_token = "tok";
  absl::StatusOr<std::unique_ptr<Coordinator>> coordinator = Coordinator::Start(options);
  ASSERT_TRUE(coordinator.ok()) << coordinator.status();

  auto registration = [&](const std::string& id, const TlsOptions& tls) {
    WorkerRegistrationOptions r;
    r.coordinator_address = (*coordinator)->address();
    r.auth_token = "tok";
    r.tls = tls;
    r.worker.id = id;
    r.worker.role = kRolloutRole;
    r.worker.address = "127.0.0.1:1";
    r.max_backoff = absl::Milliseconds(200);
    absl::StatusOr<std::unique_ptr<WorkerRegistration>> started = WorkerRegistration::Start(r);
    EXPECT_TRUE(started.ok()) << started.status();
    return started.ok() ? *std::move(started) : nullptr;
  };
  auto outsider = registration(
      "outsider", ClientTls(Certs().ca, Certs().other_client_cert, Certs().other_client_key));
  auto plain = registration("plain", TlsOptions());
  auto member = registration("member", ClientTls(Certs().ca, Certs().client_cert,
                                                 Certs().client_key));
  ASSERT_TRUE(member->WaitUntilRegistered(absl::Seconds(10)));
  // The others retry every 200 ms at most; a second is five more tries each.
  absl::SleepFor(absl::Seconds(1));
  EXPECT_FALSE(outsider->registered());
  EXPECT_FALSE(plain->registered());
  std::vector<WorkerRecord> workers = (*coordinator)->Workers();
  ASSERT_EQ(workers.size(), 1u);
  EXPECT_EQ(workers[0].id, "member");
}

}  // namespace
}  // namespace lightrl
