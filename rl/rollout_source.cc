#include "rl/rollout_source.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/file_util.h"
#include "common/status.h"
#include "rollout/coordinator.h"
#include "rollout/rollout_client.h"

namespace lightrl {
namespace {

class EngineRolloutSource final : public RolloutSource {
 public:
  explicit EngineRolloutSource(Engine* engine) : engine_(engine) {}

  std::vector<GroupGeneration> Generate(const std::vector<GenerationRequest>& requests,
                                        int64_t /*min_weight_version*/) override {
    std::vector<GroupGeneration> out(requests.size());
    std::vector<GenerationResult> results = engine_->Generate(requests);
    for (size_t i = 0; i < results.size(); ++i) {
      out[i].status = results[i].status;
      out[i].weight_version = version_;
      out[i].samples = std::move(results[i].samples);
    }
    return out;
  }
  absl::Status PublishWeights(int64_t version) override {
    version_ = version;
    return absl::OkStatus();
  }
  std::vector<std::pair<std::string, double>> Stats() const override { return {}; }

 private:
  Engine* engine_;
  int64_t version_ = 0;
};

class EngineCopyRolloutSource final : public RolloutSource {
 public:
  absl::Status Start(PolicyModel* policy, const EngineOptions& options, const Tokenizer* tokenizer) {
    policy_ = policy;
    ASSIGN_OR_RETURN(copy_, PolicyModel::Create(policy->config(), /*seed=*/0, policy->options()));
    // FP32 carries bf16 parameters exactly.
    ASSIGN_OR_RETURN(std::vector<PolicyModel::WeightTensor> weights, policy->ExportWeights(DType::kF32));
    RETURN_IF_ERROR(copy_->ImportWeights(DType::kF32, weights));
    ASSIGN_OR_RETURN(engine_, Engine::Create(copy_.get(), options, tokenizer));
    return absl::OkStatus();
  }

  std::vector<GroupGeneration> Generate(const std::vector<GenerationRequest>& requests,
                                        int64_t /*min_weight_version*/) override {
    absl::MutexLock lock(&mu_);
    std::vector<GroupGeneration> out(requests.size());
    std::vector<GenerationResult> results = engine_->Generate(requests);
    for (size_t i = 0; i < results.size(); ++i) {
      out[i].status = results[i].status;
      out[i].weight_version = version_;
      out[i].samples = std::move(results[i].samples);
    }
    return out;
  }

  absl::Status PublishWeights(int64_t version) override {
    {
      absl::MutexLock lock(&mu_);
      if (version == version_) return absl::OkStatus();
    }
    // Read from the policy on the caller's thread, which is the one that updates it.
    ASSIGN_OR_RETURN(std::vector<PolicyModel::WeightTensor> weights, policy_->ExportWeights(DType::kF32));
    absl::MutexLock lock(&mu_);
    RETURN_IF_ERROR(copy_->ImportWeights(DType::kF32, weights));
    version_ = version;
    return absl::OkStatus();
  }

  std::vector<std::pair<std::string, double>> Stats() const override { return {}; }

 private:
  PolicyModel* policy_ = nullptr;
  absl::Mutex mu_;  // held across a Generate call and a weight swap
  std::unique_ptr<PolicyModel> copy_;
  std::unique_ptr<Engine> engine_;
  int64_t version_ = -1;
};

// Starts `argv` with stdout and stderr appended to `log_path`; the child gets SIGTERM if
// the controller dies, so spawned workers never outlive their run.
absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& argv, const std::string& log_path) {
  const int log_fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) return absl::InternalError(absl::StrCat("cannot open ", log_path));
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(log_fd);
    return absl::InternalError("fork failed while starting a rollout worker");
  }
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) ::_exit(1);  // the controller died before prctl
    ::dup2(log_fd, 1);
    ::dup2(log_fd, 2);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  ::close(log_fd);
  return pid;
}

class FleetRolloutSource final : public RolloutSource {
 public:
  FleetRolloutSource(const RunConfig& config, PolicyModel* policy)
      : config_(config), policy_(policy) {}

  ~FleetRolloutSource() override {
    fleet_.reset();
    for (pid_t pid : children_) ::kill(pid, SIGTERM);
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    for (pid_t pid : children_) {
      while (::waitpid(pid, nullptr, WNOHANG) == 0) {
        if (absl::Now() > deadline) {
          ::kill(pid, SIGKILL);
          ::waitpid(pid, nullptr, 0);
          break;
        }
        absl::SleepFor(absl::Milliseconds(20));
      }
    }
    if (coordinator_) coordinator_->Shutdown();
  }

  absl::Status Start() {
    const FleetSection& f = config_.fleet;
    if (f.weight_sync == "nccl" && policy_->device_index() < 0) {
      return absl::InvalidArgumentError(
          "fleet.weight_sync: nccl broadcasts from the learner's GPU, but the policy is on the CPU");
    }
    std::string token;
    if (!f.auth_token_file.empty()) {
      ASSIGN_OR_RETURN(token, ReadFile(f.auth_token_file));
      token = std::string(absl::StripAsciiWhitespace(token));
    }
    CoordinatorOptions copts;
    copts.listen_address = f.coordinator_address;
    copts.auth_token = token;
    auto coordinator = Coordinator::Start(copts);
    if (!coordinator.ok()) {
      return absl::Status(coordinator.status().code(),
                          absl::StrCat("fleet.coordinator_address: ", coordinator.status().message()));
    }
    coordinator_ = *std::move(coordinator);
    std::fprintf(stderr, "lightrl run: coordinator listening on %s (%s mode)\n",
                 coordinator_->address().c_str(), f.mode.c_str());

    if (f.mode == "spawn") {
      char exe[4096] = {0};
      const ssize_t n = ::readlink("/proc/self/exe", exe, sizeof(exe) - 1);
      if (n <= 0) return absl::InternalError("cannot find the lightrl executable (/proc/self/exe)");
      const std::string logs = JoinPath(config_.run.output_dir, "logs");
      RETURN_IF_ERROR(MakeDirs(logs));
      // "cuda:1,cuda:2": spawned worker k runs on the k-th device (round robin).
      const std::vector<std::string> devices = absl::StrSplit(f.worker_device, ',');
      for (int64_t k = 0; k < f.rollout_workers; ++k) {
        std::vector<std::string> argv = {
            exe, "rollout-worker", "--listen", "127.0.0.1:0",
            "--coordinator", coordinator_->address(),
            "--worker-id", absl::StrCat("rollout-local-", k),
            "--capacity", absl::StrCat(f.worker_capacity),
            "--device", devices[k % devices.size()], "--dtype", config_.run.dtype,
            "--max-num-seqs", absl::StrCat(config_.rollout.max_num_seqs)};
        if (!config_.model.tokenizer.empty()) {
          argv.push_back("--tokenizer");
          argv.push_back(config_.model.tokenizer);
        }
        if (!token.empty()) {
          argv.push_back("--auth-token");
          argv.push_back(token);
        }
        ASSIGN_OR_RETURN(pid_t pid, Spawn(argv, JoinPath(logs, absl::StrCat("rollout-local-", k, ".log"))));
        children_.push_back(pid);
      }
    }
    if (!coordinator_->WaitForWorkers(kRolloutRole, static_cast<int>(f.min_workers),
                                      absl::Seconds(f.worker_wait_s))) {
      return absl::DeadlineExceededError(absl::StrCat(
          "fleet: ", coordinator_->Workers(kRolloutRole).size(), " of fleet.min_workers = ",
          f.min_workers, " rollout workers registered with ", coordinator_->address(),
          " within fleet.worker_wait_s = ", f.worker_wait_s, " s"));
    }

    RolloutFleetOptions fopts;
    fopts.auth_token = token;
    fopts.default_capacity = static_cast<int>(f.worker_capacity);
    fopts.max_group_attempts = static_cast<int>(f.max_group_attempts);
    fopts.no_worker_timeout = absl::Seconds(f.worker_wait_s);
    RolloutFleetHooks hooks;
    Coordinator* c = coordinator_.get();
    hooks.list_workers = [c] {
      std::vector<WorkerEndpoint> live;
      for (const WorkerRecord& r : c->Workers(kRolloutRole)) {
        live.push_back({r.id, r.address, r.capacity});
      }
      return live;
    };
    hooks.on_worker_failed = [c](const std::string& id) { c->MarkDead(id); };
    ASSIGN_OR_RETURN(fleet_, RolloutFleet::Create(fopts, std::move(hooks)));
    return absl::OkStatus();
  }

  std::vector<GroupGeneration> Generate(const std::vector<GenerationRequest>& requests,
                                        int64_t min_weight_version) override {
    std::vector<GroupOutcome> outcomes = fleet_->Generate(requests, min_weight_version);
    std::vector<GroupGeneration> out(outcomes.size());
    for (size_t i = 0; i < outcomes.size(); ++i) {
      out[i].status = outcomes[i].status;
      out[i].weight_version = outcomes[i].output.weight_version;
      out[i].samples = std::move(outcomes[i].output.samples);
    }
    return out;
  }

  absl::Status PublishWeights(int64_t version) override {
    // The learner's version moves with every update, so an unchanged version means
    // unchanged weights (and a worker would refuse them as stale).
    if (version == fleet_->published_version()) return absl::OkStatus();
    // The host copy of this version (the gRPC stream, and the fallback of a broadcast).
    auto export_host = [this, version]() -> absl::StatusOr<WeightSet> {
      WeightSet set;
      set.version = version;
      set.dtype = config_.fleet.weight_dtype == "bfloat16" ? DType::kBF16 : DType::kF32;
      set.model_config_json = policy_->config().ToJson().Dump();
      ASSIGN_OR_RETURN(set.tensors, policy_->ExportWeights(set.dtype));
      return set;
    };
    if (config_.fleet.weight_sync != "nccl") {
      ASSIGN_OR_RETURN(WeightSet set, export_host());
      return fleet_->PublishWeights(std::move(set));
    }
    DeviceWeights w;
    w.version = version;
    w.model_config_json = policy_->config().ToJson().Dump();
    w.device = policy_->device_index();
    ASSIGN_OR_RETURN(std::vector<PolicyModel::ParameterBuffer> params, policy_->ParameterBuffers());
    for (const auto& p : params) {
      w.names.push_back(p.name);
      w.buffers.push_back({p.data, p.bytes});
    }
    w.export_host = export_host;
    return fleet_->PublishDeviceWeights(w);
  }

  std::vector<std::pair<std::string, double>> Stats() const override {
    const RolloutFleetStats s = fleet_->stats();
    return {{"fleet/workers", static_cast<double>(coordinator_->Workers(kRolloutRole).size())},
            {"fleet/groups_requeued", static_cast<double>(s.groups_requeued)},
            {"fleet/worker_failures", static_cast<double>(s.worker_failures)},
            {"fleet/weight_pushes", static_cast<double>(s.weight_pushes)},
            {"fleet/weight_broadcasts", static_cast<double>(s.weight_broadcasts)},
            {"fleet/broadcast_fallbacks", static_cast<double>(s.broadcast_fallbacks)}};
  }
 private:
  const RunConfig& config_;
  PolicyModel* policy_;
  std::unique_ptr<Coordinator> coordinator_;
  std::unique_ptr<RolloutFleet> fleet_;
  std::vector<pid_t> children_;
};

}  // namespace

RolloutSourcePtr MakeEngineRolloutSource(Engine* engine) {
  return std::make_unique<EngineRolloutSource>(engine);
}

absl::StatusOr<RolloutSourcePtr> MakeEngineCopyRolloutSource(PolicyModel* policy,
                                                             const EngineOptions& options,
                                                             const Tokenizer* tokenizer) {
  auto source = std::make_unique<EngineCopyRolloutSource>();
  RETURN_IF_ERROR(source->Start(policy, options, tokenizer));
  return RolloutSourcePtr(std::move(source));
}

absl::StatusOr<RolloutSourcePtr> StartFleetRolloutSource(const RunConfig& config,
                                                         PolicyModel* policy) {
  auto source = std::make_unique<FleetRolloutSource>(config, policy);
  RETURN_IF_ERROR(source->Start());
  return RolloutSourcePtr(std::move(source));
}

}  // namespace lightrl
