// `lightrl rollout-worker`: serves lightrl.v1.RolloutService over the inference engine
// until SIGINT/SIGTERM, registered with the controller's coordinator when one is given.
// With --tp N it is one of the N processes of a tensor-parallel instance (rl/
// rollout_instance.h): rank 0 serves, the others run the batches it announces.
// gRPC side only: this file includes no torch header.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "policy/tokenizer.h"
#include "rl/distributed.h"
#include "rl/parallel_layout.h"
#include "rl/rollout_instance.h"
#include "rl/tools/commands.h"
#include "rl/tools/flags.h"
#include "rollout/coordinator.h"
#include "rollout/rollout_worker.h"
#include "rollout/worker_registration.h"

namespace lightrl {
namespace {

const std::string kRolloutWorkerUsage =
    "usage: lightrl rollout-worker [--listen HOST:PORT] [--coordinator HOST:PORT]\n"
    "                              [--worker-id ID] [--model DIR] [--tokenizer FILE]\n"
    "                              [--device cpu|cuda|cuda:N] [--dtype float32|bfloat16]\n"
    "                              [--capacity N] [--max-num-seqs N] [--kv-cache-mb N]\n"
    "                              [--enforce-eager] [--max-message-mb N] [--max-inflight-mb N]\n"
    "                              [--auth-token-file FILE] [--advertise HOST:PORT]\n"
    "                              [--tls-cert FILE --tls-key FILE] [--tls-ca FILE]\n"
    "                              [--tls-client-auth] [--tp N | --ep N] [--batch-invariant]\n"
    "  --listen       address to serve on (default 127.0.0.1:0; the bound one is printed as\n"
    "                 \"listening on HOST:PORT\")\n"
    "  --coordinator  the controller's coordinator: register there and heartbeat\n"
    "  --worker-id    identity reported to the coordinator (default rollout-HOST-PID)\n"
    "  --model        serve this checkpoint as weight version 0 at once; without it the\n"
    "                 worker waits for the controller to push weights\n"
    "  --tokenizer    tokenizer.json, needed for stop strings\n"
    "  --capacity     prompt groups the controller may send at once (default 8)\n"
    "  --tp           one of the N processes of a tensor-parallel instance (default 1): start\n"
    "                 N with the torchrun variables RANK, WORLD_SIZE=N, MASTER_ADDR,\n"
    "                 MASTER_PORT (LOCAL_RANK picks the GPU) and the same flags; each loads\n"
    "                 its shard of --model (required), rank 0 serves and the others run\n"
    "                 the batches it announces until it stops; weights pushed to rank 0\n"
    "                 (UpdateWeights) reach each rank as its blocks alone\n"
    "  --ep           the same for an expert-parallel instance of N processes: each holds\n"
    "                 its experts of --model (the rest whole) and every token's MoE rows go\n"
    "                 to their experts' ranks and back (CPU / FP32 torch path); with --tp,\n"
    "                 equal to it: each rank its heads, vocabulary rows and experts\n"
    "  --batch-invariant  generate in the batch-invariant numerics mode (numerics.\n"
    "                 batch_invariant: a token's logprob does not depend on its batch) from\n"
    "                 the start; weights pushed by a controller set the mode of its run\n"
    "                 (a --ep instance keeps the mode it starts with: give the flag to\n"
    "                 every rank; --tp instances do not run the mode yet)\n"
    "  --advertise    address the controller should dial (default: the bound address)\n"
    "  --max-message-mb  largest request message accepted, in MiB (default 64, at least 8);\n"
    "                 a bigger one is RESOURCE_EXHAUSTED\n"
    "  --max-inflight-mb  MiB of requests held at once across concurrent calls (default 0:\n"
    "                 4 x --max-message-mb); a call past it is RESOURCE_EXHAUSTED\n"
    "  --auth-token-file  file holding the shared token for every call, served and sent\n"
    "                 (else $LIGHTRL_AUTH_TOKEN); required for any non-loopback address.\n"
    "                 Never on the command line: /proc shows it.\n"
    + std::string(kWorkerTlsUsage);

// The instance of --tp N or --ep N > 1: this process's rank joined, its shard of --model
// loaded.
struct TpRank {
  std::unique_ptr<ProcessGroup> group;
  std::unique_ptr<RolloutInstance> instance;
  std::unique_ptr<PolicyModel> policy;
};

absl::StatusOr<TpRank> JoinInstance(const Flags& flags, int64_t tp, int64_t ep,
                                    const PolicyOptions& policy) {
  const std::string flag = ep > tp ? "--ep" : "--tp";
  const int64_t n = std::max(tp, ep);  // both over the same ranks when both
  if (!flags.Has("model")) {
    return UsageError(flag + " needs --model: each rank loads its shard of it at start (later "
                      "weights pushed by the controller reach every rank)");
  }
  DistributedOptions base;
  base.world_size = n;
  ASSIGN_OR_RETURN(DistributedOptions dist, DistributedOptions::FromEnv(base));
  if (dist.world_size != n) {
    return UsageError(absl::StrCat(flag, " ", n, " needs WORLD_SIZE=", n,
                                   " (one process per rank), got WORLD_SIZE=", dist.world_size));
  }
  RETURN_IF_ERROR(dist.Validate());
  PolicyOptions local = policy;
  if (local.device == "cuda") local.device = absl::StrCat("cuda:", dist.local_rank);
  TpRank r;
  ASSIGN_OR_RETURN(r.group, ProcessGroup::Create(dist, local.device));
  ParallelLayout layout;
  layout.tp = tp;
  layout.ep = ep;
  RETURN_IF_ERROR(r.group->JoinLayoutGroups(layout));
  ASSIGN_OR_RETURN(r.instance, RolloutInstance::Create(r.group.get()));
  ASSIGN_OR_RETURN(r.policy, PolicyModel::Load(flags.Get("model"), local, r.instance->shard()));
  return r;
}

absl::Status Run(const std::vector<std::string>& args) {
  ASSIGN_OR_RETURN(Flags flags,
                   Flags::Parse(args, {"listen", "coordinator", "worker-id", "model", "tokenizer",
                                       "device", "dtype", "capacity", "max-num-seqs",
                                       "kv-cache-mb", "auth-token", "auth-token-file", "advertise",
                                       "max-message-mb", "max-inflight-mb", "tls-cert",
                                       "tls-key", "tls-ca", "tp", "ep"},
                                 {"enforce-eager", "batch-invariant", kWorkerTlsSwitch}));
  RolloutWorkerOptions options;
  options.listen_address = flags.Get("listen", options.listen_address);
  ASSIGN_OR_RETURN(options.auth_token, WorkerAuthToken(flags));
  ASSIGN_OR_RETURN(options.tls, WorkerTlsFlags(flags));
  char host[256] = {0};
  ::gethostname(host, sizeof(host) - 1);
  options.worker_id = flags.Get("worker-id", absl::StrCat("rollout-", host, "-", ::getpid()));
  options.tokenizer_path = flags.Get("tokenizer");
  options.policy.device = flags.Get("device", "cpu");
  options.policy.dtype = flags.Get("dtype", "float32");
  ASSIGN_OR_RETURN(int64_t capacity, flags.GetInt("capacity", 8));
  if (capacity < 1) return UsageError(absl::StrCat("--capacity must be >= 1, got ", capacity));
  ASSIGN_OR_RETURN(options.engine.max_num_seqs, flags.GetInt("max-num-seqs", options.engine.max_num_seqs));
  ASSIGN_OR_RETURN(int64_t kv_mb, flags.GetInt("kv-cache-mb", options.engine.kv_cache_bytes >> 20));
  options.engine.kv_cache_bytes = kv_mb << 20;
  options.engine.cuda_graphs = flags.Get("enforce-eager", "false") != "true";
  options.engine.batch_invariant = flags.Get("batch-invariant", "false") == "true";
  ASSIGN_OR_RETURN(int64_t max_message_mb,
                   flags.GetInt("max-message-mb", options.max_message_bytes >> 20));
  if (max_message_mb < 8 || max_message_mb > 1024) {
    return UsageError(absl::StrCat("--max-message-mb must be in [8, 1024], got ", max_message_mb));
  }
  options.max_message_bytes = static_cast<int>(max_message_mb << 20);
  ASSIGN_OR_RETURN(options.max_inflight_bytes,
                   InflightBudgetFlag(flags, max_message_mb, "--max-message-mb"));

  ASSIGN_OR_RETURN(int64_t tp, flags.GetInt("tp", 1));
  if (tp < 1) return UsageError(absl::StrCat("--tp must be >= 1, got ", tp));
  ASSIGN_OR_RETURN(int64_t ep, flags.GetInt("ep", 1));
  if (ep < 1) return UsageError(absl::StrCat("--ep must be >= 1, got ", ep));
  if (tp > 1 && ep > 1 && ep % tp != 0) {
    return UsageError(absl::StrCat("--tp ", tp, " with --ep ", ep, ": --ep must be a multiple "
                                   "of --tp (equal: each rank holds its heads and its experts; "
                                   "k times: k TP groups generate apart, their experts shared)"));
  }
  std::unique_ptr<PolicyModel> policy;
  TpRank instance;
  if (tp > 1 || ep > 1) {
    ASSIGN_OR_RETURN(instance, JoinInstance(flags, tp, ep, options.policy));
    policy = std::move(instance.policy);
    if (instance.instance->rank() != 0) {
      std::unique_ptr<Tokenizer> tokenizer;
      if (!options.tokenizer_path.empty()) {
        ASSIGN_OR_RETURN(Tokenizer t, Tokenizer::FromFile(options.tokenizer_path));
        tokenizer = std::make_unique<Tokenizer>(std::move(t));
      }
      std::cout << "following rank 0 of the "
                << (tp > 1 && ep > tp ? absl::StrCat("tp ", tp, " x ep ")
                    : tp > 1 && ep > 1 ? std::string("tp x ep ")
                    : tp > 1           ? std::string("tp ")
                                       : std::string("ep "))
                << std::max(tp, ep) << " instance" << std::endl;
      return instance.instance->Follow(policy.get(), options.engine, tokenizer.get());
    }
    options.parallel = instance.instance->parallel();
    options.fanout = instance.instance.get();
  } else if (flags.Has("model")) {
    ASSIGN_OR_RETURN(policy, PolicyModel::Load(flags.Get("model"), options.policy));
  }

  // Block the stop signals before gRPC starts its threads so they inherit the mask and
  // only sigwait below receives them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  ASSIGN_OR_RETURN(std::unique_ptr<RolloutWorker> worker,
                   RolloutWorker::Start(options, std::move(policy), 0));
  std::cout << "listening on " << worker->address() << std::endl;

  std::unique_ptr<WorkerRegistration> registration;
  if (flags.Has("coordinator")) {
    WorkerRegistrationOptions ropts;
    ropts.coordinator_address = flags.Get("coordinator");
    ropts.auth_token = options.auth_token;
    ropts.tls = options.tls;
    ropts.worker.id = options.worker_id;
    ropts.worker.role = kRolloutRole;
    ropts.worker.address = flags.Get("advertise", worker->address());
    ropts.worker.capacity = static_cast<int>(capacity);
    ropts.worker.device = options.policy.device;
    RolloutWorker* raw = worker.get();
    ropts.weight_version = [raw] { return raw->stats().weight_version; };
    ASSIGN_OR_RETURN(registration, WorkerRegistration::Start(ropts));
  }

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  std::cerr << "lightrl rollout-worker: signal " << signal_number << ", shutting down\n";
  if (registration) registration->Stop();
  worker->Shutdown();
  if (instance.instance) RETURN_IF_ERROR(instance.instance->Stop());
  return absl::OkStatus();
}

}  // namespace

int RunRolloutWorkerCommand(const std::vector<std::string>& args) {
  return RunSubcommand("rollout-worker", kRolloutWorkerUsage, args, Run);
}

}  // namespace lightrl
