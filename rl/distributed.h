// The learner's process group: N processes (one per GPU, or CPU processes in tests)
// joined torchrun-style through a rendezvous at MASTER_ADDR:MASTER_PORT, with LibTorch's
// c10d collectives underneath (Gloo on CPU, NCCL on CUDA). Torch-free header (PIMPL);
// it owns the connection and the few byte/scalar collectives the controller needs, not
// what is reduced (the learner decides that, through rl/distributed_internal.h).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lightrl {

// rl/parallel_layout.h (not included: its config table's names stay out of the learner).
struct ParallelLayout;
struct LayoutGroups;

struct DistributedOptions {
  // This process's rank in [0, world_size); torchrun's RANK.
  int64_t rank = 0;
  // Learner processes in the group; 1 = no group at all (today's single process).
  int64_t world_size = 1;
  // This process's GPU on its host ("cuda" becomes "cuda:<local_rank>"); torchrun's
  // LOCAL_RANK, else the rank.
  int64_t local_rank = 0;
  // Host of rank 0, which serves the rendezvous store; torchrun's MASTER_ADDR.
  std::string master_addr = "127.0.0.1";
  // Port of that store; torchrun's MASTER_PORT.
  int64_t master_port = 29500;
  // "gloo" (CPU tensors), "nccl" (CUDA tensors, CUDA builds only) or "auto" (nccl when
  // the policy is on CUDA, else gloo).
  std::string backend = "auto";
  // Seconds to wait for the other ranks at start-up and in any one collective.
  double timeout_s = 1800;
  // Network interface Gloo binds to (GLOO_SOCKET_IFNAME); empty = loopback when
  // master_addr is loopback, else the interface of this host's name.
  std::string gloo_interface;

  absl::Status Validate() const;
  bool enabled() const { return world_size > 1; }
  // `base` with every field that torchrun's variables set replaced by their values:
  // RANK, WORLD_SIZE, LOCAL_RANK (else the rank), MASTER_ADDR, MASTER_PORT,
  // GLOO_SOCKET_IFNAME. A malformed value
  // is an error naming the variable and the value. The one place that reads them.
  static absl::StatusOr<DistributedOptions> FromEnv(DistributedOptions base);
};

enum class ReduceOp { kSum, kMin, kMax };

// One of a rank's layout groups (rl/parallel_layout.h: LayoutGroups).
enum class LayoutGroup { kTp, kDp, kEp, kExpertTp, kExpertDp };
const char* LayoutGroupName(LayoutGroup group);  // "tp", "dp", "ep", "expert_tp", "expert_dp"

class ProcessGroup {
 public:
  // Joins the group: rank 0 serves the store, the others connect to it; every rank then
  // checks that all agree on world_size and that no rank is claimed twice. `device` is
  // where collective tensors live ("cpu", "cuda", "cuda:N"); it resolves backend "auto".
  // Errors: UNAVAILABLE when the master cannot be reached within timeout_s,
  // INVALID_ARGUMENT for inconsistent ranks, UNIMPLEMENTED for a backend this build lacks.
  static absl::StatusOr<std::unique_ptr<ProcessGroup>> Create(const DistributedOptions& options,
                                                              const std::string& device = "cpu");
  ~ProcessGroup();

  int64_t rank() const;
  int64_t world_size() const;
  // "gloo" or "nccl", after "auto" was resolved.
  const std::string& backend() const;

  // Every rank ends with root's bytes (any size). Ranks other than root may wait here
  // for longer than timeout_s (the controller generating the next batch): they poll the
  // store until root arrives, and fail if rank 0 goes away.
  absl::Status BroadcastBytes(std::string* bytes, int64_t root);
  // Point to point: `dest` ends with the bytes this rank sends it (any size); each
  // SendBytes must meet one RecvBytes on `dest` naming this rank, in the same order.
  absl::Status SendBytes(const std::string& bytes, int64_t dest);
  absl::Status RecvBytes(std::string* bytes, int64_t src);
  // Element-wise reduction of `values` (same length on every rank), in FP64.
  absl::Status AllReduce(std::vector<double>* values, ReduceOp op);
  absl::Status Barrier();

  // Creates this rank's TP, DP, EP, expert-TP and expert-DP groups of `layout` (GroupsOf)
  // on this group's engine, in that order. Every rank must call it at the same point, with
  // the same layout; groups of one rank need no creating. Errors: the layout against the
  // world size (GroupsOf), UNAVAILABLE when a group cannot be formed. Nothing else uses
  // the groups yet: data- and expert-parallel training run as without them.
  absl::Status JoinLayoutGroups(const ParallelLayout& layout);
  // The groups JoinLayoutGroups made; nullptr before.
  const LayoutGroups* layout_groups() const;
  // AllReduce within this rank's `group` (same length on its members), in FP64.
  // FAILED_PRECONDITION before JoinLayoutGroups.
  absl::Status AllReduce(LayoutGroup group, std::vector<double>* values, ReduceOp op);

  struct Impl;
  Impl& impl() { return *impl_; }

 private:
  explicit ProcessGroup(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

using ProcessGroupPtr = std::unique_ptr<ProcessGroup>;

}  // namespace lightrl
