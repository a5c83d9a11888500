#include "rollout/nccl_weight_group.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status.h"

#ifdef LIGHTRL_HAVE_NCCL
#include <cuda_runtime.h>
#include <nccl.h>
#endif

namespace lightrl {

#ifdef LIGHTRL_HAVE_NCCL

namespace {

absl::Status CudaStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("weight group: ", what, ": ", cudaGetErrorName(err),
                                          " (", cudaGetErrorString(err), ")"));
}

absl::Status NcclStatus(ncclResult_t res, const char* what) {
  if (res == ncclSuccess || res == ncclInProgress) return absl::OkStatus();
  return absl::UnavailableError(
      absl::StrCat("weight group: ", what, ": ", ncclGetErrorString(res)));
}

}  // namespace

struct NcclWeightGroup::Impl {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  int rank = 0, world_size = 0, device = 0;
  bool broken = false;

  // Polls the communicator's asynchronous state (and the stream, when `stream_work`)
  // until both are done, an error shows, or the deadline passes; aborts on failure.
  absl::Status Wait(absl::Time deadline, bool stream_work, const char* what) {
    while (true) {
      ncclResult_t state = ncclSuccess;
      ncclResult_t res = ncclCommGetAsyncError(comm, &state);
      if (res != ncclSuccess) state = res;
      if (state != ncclSuccess && state != ncclInProgress) {
        Abort();
        return NcclStatus(state, what);
      }
      bool done = state == ncclSuccess;
      if (done && stream_work) {
        const cudaError_t q = cudaStreamQuery(stream);
        if (q != cudaSuccess && q != cudaErrorNotReady) {
          Abort();
          return CudaStatus(q, what);
        }
        done = q == cudaSuccess;
      }
      if (done) return absl::OkStatus();
      if (absl::Now() > deadline) {
        Abort();
        return absl::DeadlineExceededError(
            absl::StrCat("weight group: ", what, " did not finish in time (a peer is missing)"));
      }
      absl::SleepFor(absl::Microseconds(200));
    }
  }

  void Abort() {
    if (comm != nullptr) ncclCommAbort(comm);
    comm = nullptr;
    broken = true;
  }
};

bool NcclWeightGroup::Available() { return true; }

absl::StatusOr<std::string> NcclWeightGroup::NewUniqueId() {
  ncclUniqueId id;
  const ncclResult_t res = ncclGetUniqueId(&id);
  if (res != ncclSuccess) return NcclStatus(res, "ncclGetUniqueId");
  return std::string(id.internal, sizeof(id.internal));
}

absl::StatusOr<std::unique_ptr<NcclWeightGroup>> NcclWeightGroup::Join(
    const std::string& unique_id, int rank, int world_size, int device, absl::Duration timeout) {
  ncclUniqueId id;
  if (unique_id.size() != sizeof(id.internal)) {
    return absl::InvalidArgumentError(absl::StrCat("weight group: unique id of ",
                                                   unique_id.size(), " bytes, want ",
                                                   sizeof(id.internal)));
  }
  if (world_size < 2 || rank < 0 || rank >= world_size || device < 0) {
    return absl::InvalidArgumentError(absl::StrCat("weight group: rank ", rank, " of ",
                                                   world_size, " on device ", device));
  }
  std::copy(unique_id.begin(), unique_id.end(), id.internal);
  auto impl = std::make_unique<Impl>();
  impl->rank = rank;
  impl->world_size = world_size;
  impl->device = device;
  if (auto st = CudaStatus(cudaSetDevice(device), "cudaSetDevice"); !st.ok()) return st;
  if (auto st = CudaStatus(cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking),
                           "cudaStreamCreate");
      !st.ok()) {
    return st;
  }
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  const ncclResult_t res = ncclCommInitRankConfig(&impl->comm, world_size, id, rank, &config);
  if (res != ncclSuccess && res != ncclInProgress) {
    if (impl->comm != nullptr) impl->Abort();
    return NcclStatus(res, "ncclCommInitRank");
  }
  if (auto st = impl->Wait(absl::Now() + timeout, /*stream_work=*/false, "joining");
      !st.ok()) {
    return st;
  }
  return std::unique_ptr<NcclWeightGroup>(new NcclWeightGroup(std::move(impl)));
}

NcclWeightGroup::~NcclWeightGroup() {
  // Abort, not destroy: destroying may wait on peers, which at shutdown may be gone. No
  // operation is pending here (every broadcast was waited for).
  if (impl_->comm != nullptr) {
    cudaSetDevice(impl_->device);
    ncclCommAbort(impl_->comm);
  }
  if (impl_->stream != nullptr) cudaStreamDestroy(impl_->stream);
}

absl::Status NcclWeightGroup::Broadcast(const std::vector<DeviceBuffer>& buffers,
                                        absl::Duration timeout) {
  Impl& m = *impl_;
  if (m.broken) return absl::FailedPreconditionError("weight group: aborted by an earlier error");
  if (auto st = CudaStatus(cudaSetDevice(m.device), "cudaSetDevice"); !st.ok()) return st;
  const absl::Time deadline = absl::Now() + timeout;
  ncclResult_t res = ncclGroupStart();
  if (res == ncclSuccess) {
    for (const DeviceBuffer& b : buffers) {
      res = ncclBroadcast(b.data, b.data, static_cast<size_t>(b.bytes), ncclUint8, /*root=*/0,
                          m.comm, m.stream);
      if (res != ncclSuccess && res != ncclInProgress) break;
    }
    const ncclResult_t end = ncclGroupEnd();
    if (res == ncclSuccess || res == ncclInProgress) res = end;
  }
  if (res != ncclSuccess && res != ncclInProgress) {
    m.Abort();
    return NcclStatus(res, "broadcast");
  }
  return m.Wait(deadline, /*stream_work=*/true, "broadcast");
}

#else  // !LIGHTRL_HAVE_NCCL

struct NcclWeightGroup::Impl {
  int rank = 0, world_size = 0;
};

bool NcclWeightGroup::Available() { return false; }

absl::StatusOr<std::string> NcclWeightGroup::NewUniqueId() {
  return absl::UnimplementedError("weight group: this build has no NCCL (a CUDA build has)");
}

absl::StatusOr<std::unique_ptr<NcclWeightGroup>> NcclWeightGroup::Join(const std::string&, int,
                                                                        int, int,
                                                                        absl::Duration) {
  return absl::UnimplementedError("weight group: this build has no NCCL (a CUDA build has)");
}

NcclWeightGroup::~NcclWeightGroup() = default;

absl::Status NcclWeightGroup::Broadcast(const std::vector<DeviceBuffer>&, absl::Duration) {
  return absl::UnimplementedError("weight group: this build has no NCCL (a CUDA build has)");
}

#endif  // LIGHTRL_HAVE_NCCL

#ifdef LIGHTRL_HAVE_NCCL
absl::StatusOr<std::unique_ptr<DeviceStaging>> DeviceStaging::Allocate(int64_t bytes, int device) {
  RETURN_IF_ERROR(CudaStatus(cudaSetDevice(device), "cudaSetDevice"));
  void* data = nullptr;
  const cudaError_t err = cudaMalloc(&data, static_cast<size_t>(std::max<int64_t>(bytes, 1)));
  if (err != cudaSuccess) {
    return absl::ResourceExhaustedError(absl::StrCat("weight staging: cudaMalloc of ", bytes,
                                                     " bytes: ", cudaGetErrorString(err)));
  }
  return std::unique_ptr<DeviceStaging>(new DeviceStaging(data, bytes, device));
}

DeviceStaging::~DeviceStaging() {
  cudaSetDevice(device_);
  cudaFree(data_);
}

absl::Status DeviceStaging::Copy(const std::vector<DeviceBuffer>& from,
                                 const std::vector<DeviceBuffer>& to, int device) {
  if (from.size() != to.size()) return absl::InternalError("weight staging: buffer counts differ");
  RETURN_IF_ERROR(CudaStatus(cudaSetDevice(device), "cudaSetDevice"));
  for (size_t i = 0; i < from.size(); ++i) {
    if (from[i].bytes != to[i].bytes) return absl::InternalError("weight staging: sizes differ");
    RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(to[i].data, from[i].data,
                                               static_cast<size_t>(from[i].bytes),
                                               cudaMemcpyDeviceToDevice, cudaStreamPerThread),
                               "cudaMemcpyAsync"));
  }
  return CudaStatus(cudaStreamSynchronize(cudaStreamPerThread), "cudaStreamSynchronize");
}
#else
absl::StatusOr<std::unique_ptr<DeviceStaging>> DeviceStaging::Allocate(int64_t, int) {
  return absl::UnimplementedError("weight staging: this build has no CUDA");
}
DeviceStaging::~DeviceStaging() = default;
absl::Status DeviceStaging::Copy(const std::vector<DeviceBuffer>&,
                                 const std::vector<DeviceBuffer>&, int) {
  return absl::UnimplementedError("weight staging: this build has no CUDA");
}
#endif

int64_t DeviceStaging::Footprint(const std::vector<int64_t>& sizes) {
  int64_t total = 0;
  for (int64_t s : sizes) total += (s + 255) / 256 * 256;
  return total;
}

std::vector<DeviceBuffer> DeviceStaging::Slices(const std::vector<int64_t>& sizes) const {
  if (Footprint(sizes) > bytes_) return {};
  std::vector<DeviceBuffer> out;
  char* at = static_cast<char*>(data_);
  for (int64_t s : sizes) {
    out.push_back({at, s});
    at += (s + 255) / 256 * 256;
  }
  return out;
}

NcclWeightGroup::NcclWeightGroup(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
int NcclWeightGroup::rank() const { return impl_->rank; }
int NcclWeightGroup::world_size() const { return impl_->world_size; }

}  // namespace lightrl
