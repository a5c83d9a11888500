// A NCCL communicator for weight sync: rank 0 (the learner's process) broadcasts its
// parameters' device buffers to every rollout worker's GPU. The unique id travels over
// gRPC (the controller hands it out), so no extra rendezvous service is needed. Every
// call runs against a deadline: the communicator is nonblocking, and a peer that dies or
// never arrives makes the call abort the communicator and fail (UNAVAILABLE /
// DEADLINE_EXCEEDED) instead of hanging; the caller then falls back to the gRPC stream.
// Built with NCCL in CUDA builds (LIGHTRL_HAVE_NCCL); elsewhere every call is
// UNIMPLEMENTED. Torch-free and protobuf-free.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace lightrl {

// One device buffer to send (rank 0) or fill (other ranks).
struct DeviceBuffer {
  void* data = nullptr;
  int64_t bytes = 0;
};

class NcclWeightGroup {
 public:
  // Whether this build can create groups.
  static bool Available();
  // A fresh NCCL unique id (opaque bytes) for a new group.
  static absl::StatusOr<std::string> NewUniqueId();
  // Joins group `unique_id` as `rank` of `world_size` on CUDA device `device`; returns
  // once every rank has joined, or fails at the deadline.
  static absl::StatusOr<std::unique_ptr<NcclWeightGroup>> Join(const std::string& unique_id,
                                                                int rank, int world_size,
                                                                int device,
                                                                absl::Duration timeout);
  ~NcclWeightGroup();

  // Broadcasts `buffers` from rank 0, in order (the same sizes on every rank), and waits
  // for the transfer. After an error the group is aborted and unusable.
  absl::Status Broadcast(const std::vector<DeviceBuffer>& buffers, absl::Duration timeout);

  int rank() const;
  int world_size() const;

  struct Impl;

 private:
  explicit NcclWeightGroup(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Device memory a worker receives a broadcast into, so that the new weights land while
// the engine keeps generating with the old ones, and are then copied in between batches.
class DeviceStaging {
 public:
  static absl::StatusOr<std::unique_ptr<DeviceStaging>> Allocate(int64_t bytes, int device);
  ~DeviceStaging();
  int64_t bytes() const { return bytes_; }
  // Consecutive 256-byte-aligned slices of the given sizes; empty if they do not fit.
  std::vector<DeviceBuffer> Slices(const std::vector<int64_t>& sizes) const;
  // Copies each `from[i]` to `to[i]` (same sizes) on `device` and waits.
  static absl::Status Copy(const std::vector<DeviceBuffer>& from,
                           const std::vector<DeviceBuffer>& to, int device);
  // Bytes Slices() needs for these sizes.
  static int64_t Footprint(const std::vector<int64_t>& sizes);

 private:
  DeviceStaging(void* data, int64_t bytes, int device) : data_(data), bytes_(bytes), device_(device) {}
  void* data_;
  int64_t bytes_;
  int device_;
};

}  // namespace lightrl
