// The one translation unit that sees the Gloo and NCCL process-group headers (built with
// LIGHTRL_C10D_GLOO where gloo's headers were found, and LIGHTRL_C10D_NCCL in CUDA builds
// that found nccl.h; a CUDA LibTorch defines USE_C10D_GLOO itself, with or without them).
#include "rl/distributed.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef LIGHTRL_C10D_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef LIGHTRL_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <limits>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/match.h"
#include "common/status.h"
#include "rl/distributed_internal.h"
#include "rl/parallel_layout.h"

namespace lightrl {
namespace {

std::chrono::milliseconds Millis(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
}

bool IsLoopback(const std::string& host) {
  return host == "localhost" || absl::StartsWith(host, "127.") || host == "::1";
}

std::string Where(const DistributedOptions& o) {
  return absl::StrCat("rank ", o.rank, " of ", o.world_size, ", master ", o.master_addr, ":",
                      o.master_port);
}

// A process group over `store` in which this process is `rank` of `size`, on the engine
// `impl` was set up with. Throws what c10d throws.
absl::StatusOr<c10::intrusive_ptr<c10d::Backend>> MakeBackend(const ProcessGroup::Impl& impl,
                                                              c10::intrusive_ptr<c10d::Store> store,
                                                              int64_t rank, int64_t size) {
  const DistributedOptions& options = impl.options;
  if (impl.backend_name == "gloo") {
#ifdef LIGHTRL_C10D_GLOO
    auto gopts = c10d::ProcessGroupGloo::Options::create(Millis(options.timeout_s));
    if (!options.gloo_interface.empty()) {
      gopts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(options.gloo_interface));
    } else if (IsLoopback(options.master_addr)) {
      gopts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    } else {
      gopts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    return c10::intrusive_ptr<c10d::Backend>(c10::make_intrusive<c10d::ProcessGroupGloo>(
        store, static_cast<int>(rank), static_cast<int>(size), gopts));
#else
    return absl::UnimplementedError(
        "this build has no Gloo process group (the gloo headers were not found at configure time; "
        "install libgloo-dev and reconfigure)");
#endif
  }
#ifdef LIGHTRL_C10D_NCCL
  auto nopts = c10d::ProcessGroupNCCL::Options::create();
  nopts->timeout = Millis(options.timeout_s);
  return c10::intrusive_ptr<c10d::Backend>(c10::make_intrusive<c10d::ProcessGroupNCCL>(
      store, static_cast<int>(rank), static_cast<int>(size), nopts));
#else
  return absl::UnimplementedError(
      "this build has no NCCL process group (build with LIGHTRL_TORCH_CUDA and NCCL headers)");
#endif
}

}  // namespace

c10::intrusive_ptr<c10d::Backend> ProcessGroup::Impl::Subgroup(const std::vector<int64_t>& ranks) {
  if (static_cast<int64_t>(ranks.size()) == options.world_size) return backend;
  if (auto it = subgroups.find(ranks); it != subgroups.end()) return it->second;
  const auto me = std::find(ranks.begin(), ranks.end(), options.rank);
  TORCH_CHECK(me != ranks.end(), "rank ", options.rank, " asked for a process group of ranks [",
              absl::StrJoin(ranks, ", "), "] that it is not in");
  // Named by its members, so that the members meet under one prefix and no other group
  // shares it.
  auto store = c10::make_intrusive<c10d::PrefixStore>(
      absl::StrCat(backend_name, "/group/", absl::StrJoin(ranks, ",")), this->store);
  auto made = MakeBackend(*this, store, me - ranks.begin(), static_cast<int64_t>(ranks.size()));
  TORCH_CHECK(made.ok(), made.status().message());
  subgroups[ranks] = *made;
  return *made;
}

absl::Status DistributedOptions::Validate() const {
  if (world_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("world_size must be >= 1, got ", world_size));
  }
  if (rank < 0 || rank >= world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank must be in [0, world_size) = [0, ", world_size, "), got ", rank));
  }
  if (master_addr.empty()) return absl::InvalidArgumentError("master_addr must not be empty");
  if (master_port < 1 || master_port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("master_port must be in [1, 65535], got ", master_port));
  }
  if (backend != "auto" && backend != "gloo" && backend != "nccl") {
    return absl::InvalidArgumentError(
        absl::StrCat("backend must be auto, gloo or nccl, got \"", backend, "\""));
  }
  if (!(timeout_s > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("timeout_s must be > 0, got ", timeout_s));
  }
  return absl::OkStatus();
}

absl::StatusOr<DistributedOptions> DistributedOptions::FromEnv(DistributedOptions base) {
  auto integer = [](const char* name, int64_t& out) -> absl::Status {
    const char* v = std::getenv(name);
    if (v == nullptr || *v == '\0') return absl::OkStatus();
    if (!absl::SimpleAtoi(v, &out)) {
      return absl::InvalidArgumentError(
          absl::StrCat("environment variable ", name, "=\"", v, "\" is not an integer"));
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(integer("RANK", base.rank));
  RETURN_IF_ERROR(integer("WORLD_SIZE", base.world_size));
  RETURN_IF_ERROR(integer("MASTER_PORT", base.master_port));
  base.local_rank = base.rank;
  RETURN_IF_ERROR(integer("LOCAL_RANK", base.local_rank));
  if (const char* v = std::getenv("MASTER_ADDR"); v != nullptr && *v != '\0') base.master_addr = v;
  if (const char* v = std::getenv("GLOO_SOCKET_IFNAME"); v != nullptr && *v != '\0') {
    base.gloo_interface = v;
  }
  if (base.rank < 0 || base.rank >= base.world_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "RANK=", base.rank, " is not in [0, WORLD_SIZE) with WORLD_SIZE=", base.world_size,
        " (from the environment where set, else the config)"));
  }
  return base;
}

ProcessGroup::ProcessGroup(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ProcessGroup::~ProcessGroup() = default;
int64_t ProcessGroup::rank() const { return impl_->options.rank; }
int64_t ProcessGroup::world_size() const { return impl_->options.world_size; }
const std::string& ProcessGroup::backend() const { return impl_->backend_name; }

absl::StatusOr<std::unique_ptr<ProcessGroup>> ProcessGroup::Create(const DistributedOptions& options,
                                                                   const std::string& device) {
  RETURN_IF_ERROR(options.Validate());
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  const bool cuda = absl::StartsWith(device, "cuda");
  impl->backend_name = options.backend == "auto" ? (cuda ? "nccl" : "gloo") : options.backend;
  if (impl->backend_name == "nccl" && !cuda) {
    return absl::InvalidArgumentError(
        absl::StrCat("distributed backend nccl needs the policy on CUDA, got device \"", device, "\""));
  }
  if (impl->backend_name == "gloo" && cuda) {
    return absl::InvalidArgumentError(absl::StrCat(
        "distributed backend gloo reduces CPU tensors; device \"", device, "\" needs nccl"));
  }
  const std::string where = Where(options);
  const auto timeout = Millis(options.timeout_s);
  try {
    impl->device = torch::Device(device);
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(options.master_port);
    so.isServer = options.rank == 0;
    so.numWorkers = static_cast<size_t>(options.world_size);
    // The ranks' own keys below check who came, with messages that say what went wrong.
    so.waitWorkers = false;
    so.timeout = timeout;
    impl->store = c10::make_intrusive<c10d::TCPStore>(options.master_addr, so);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat(
        "cannot reach the rendezvous store at MASTER_ADDR:MASTER_PORT = ", options.master_addr, ":",
        options.master_port, " within ", options.timeout_s, " s (", where, "): ", e.what()));
  }
  try {
    c10d::Store& store = *impl->store;
    if (store.add(absl::StrCat("lightrl/claim/", options.rank), 1) != 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "RANK=", options.rank, " is claimed by two processes (", where, "); every process needs its own rank"));
    }
    store.set(absl::StrCat("lightrl/world_size/", options.rank),
              std::vector<uint8_t>{static_cast<uint8_t>(options.world_size & 0xff),
                                   static_cast<uint8_t>((options.world_size >> 8) & 0xff)});
    std::vector<std::string> keys;
    for (int64_t r = 0; r < options.world_size; ++r) keys.push_back(absl::StrCat("lightrl/world_size/", r));
    try {
      store.wait(keys, timeout);
    } catch (const std::exception&) {
      std::vector<int64_t> missing;
      for (int64_t r = 0; r < options.world_size; ++r) {
        if (!store.check({keys[r]})) missing.push_back(r);
      }
      return absl::DeadlineExceededError(absl::StrCat(
          "ranks [", absl::StrJoin(missing, ", "), "] did not join within ", options.timeout_s,
          " s (", where, "): are WORLD_SIZE processes started, all with WORLD_SIZE=", options.world_size, "?"));
    }
    for (int64_t r = 0; r < options.world_size; ++r) {
      const std::vector<uint8_t> v = store.get(keys[r]);
      const int64_t theirs = v.size() == 2 ? (int64_t{v[0]} | (int64_t{v[1]} << 8)) : -1;
      if (theirs != options.world_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            "rank ", r, " was started with WORLD_SIZE=", theirs, ", this rank with WORLD_SIZE=",
            options.world_size, " (", where, ")"));
      }
    }
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>(impl->backend_name, impl->store);
    ASSIGN_OR_RETURN(impl->backend, MakeBackend(*impl, prefixed, options.rank, options.world_size));
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("cannot set up the ", impl->backend_name, " process group (", where, "): ", e.what()));
  }
  return std::unique_ptr<ProcessGroup>(new ProcessGroup(std::move(impl)));
}

absl::Status ProcessGroup::BroadcastBytes(std::string* bytes, int64_t root) {
  Impl& m = *impl_;
  const int64_t seq = ++m.broadcasts;
  try {
    if (m.options.rank == root) {
      m.store->add("lightrl/broadcasts", 1);
    } else {
      // The root may be busy for long (generating the next batch); wait on the store,
      // which has no deadline here, rather than in a collective, which has one.
      auto sleep = std::chrono::milliseconds(1);
      while (m.store->add("lightrl/broadcasts", 0) < seq) {
        std::this_thread::sleep_for(sleep);
        sleep = std::min(sleep * 2, std::chrono::milliseconds(50));
      }
    }
    auto i64 = torch::TensorOptions().dtype(torch::kInt64).device(m.device);
    std::vector<at::Tensor> size{torch::full({1}, static_cast<int64_t>(bytes->size()), i64)};
    c10d::BroadcastOptions bo;
    bo.rootRank = root;
    m.backend->broadcast(size, bo)->wait();
    const int64_t n = size[0].cpu().item<int64_t>();
    at::Tensor data;
    if (m.options.rank == root) {
      data = torch::from_blob(bytes->data(), {n}, torch::kUInt8).to(m.device, /*non_blocking=*/false, /*copy=*/true);
    } else {
      data = torch::empty({n}, torch::TensorOptions().dtype(torch::kUInt8).device(m.device));
    }
    if (n > 0) {
      std::vector<at::Tensor> d{data};
      m.backend->broadcast(d, bo)->wait();
    }
    if (m.options.rank != root) {
      at::Tensor host = data.cpu().contiguous();
      bytes->assign(reinterpret_cast<const char*>(host.data_ptr<uint8_t>()), static_cast<size_t>(n));
    }
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("broadcast from rank ", root, " failed (",
                                               Where(m.options), "): ", e.what()));
  }
  return absl::OkStatus();
}

namespace {

// The tag of point-to-point messages (sizes then bytes, in order on one pair of ranks).
constexpr int kBytesTag = 7;

}  // namespace

absl::Status ProcessGroup::SendBytes(const std::string& bytes, int64_t dest) {
  Impl& m = *impl_;
  try {
    auto i64 = torch::TensorOptions().dtype(torch::kInt64).device(m.device);
    std::vector<at::Tensor> size{torch::full({1}, static_cast<int64_t>(bytes.size()), i64)};
    m.backend->send(size, static_cast<int>(dest), kBytesTag)->wait();
    if (!bytes.empty()) {
      std::vector<at::Tensor> data{
          torch::from_blob(const_cast<char*>(bytes.data()), {static_cast<int64_t>(bytes.size())},
                           torch::kUInt8)
              .to(m.device, /*non_blocking=*/false, /*copy=*/true)};
      m.backend->send(data, static_cast<int>(dest), kBytesTag)->wait();
    }
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("send of ", bytes.size(), " bytes to rank ", dest,
                                               " failed (", Where(m.options), "): ", e.what()));
  }
  return absl::OkStatus();
}

absl::Status ProcessGroup::RecvBytes(std::string* bytes, int64_t src) {
  Impl& m = *impl_;
  try {
    auto i64 = torch::TensorOptions().dtype(torch::kInt64).device(m.device);
    std::vector<at::Tensor> size{torch::zeros({1}, i64)};
    m.backend->recv(size, static_cast<int>(src), kBytesTag)->wait();
    const int64_t n = size[0].cpu().item<int64_t>();
    if (n < 0) return absl::DataLossError(absl::StrCat("rank ", src, " announced ", n, " bytes"));
    bytes->clear();
    if (n > 0) {
      std::vector<at::Tensor> data{
          torch::empty({n}, torch::TensorOptions().dtype(torch::kUInt8).device(m.device))};
      m.backend->recv(data, static_cast<int>(src), kBytesTag)->wait();
      at::Tensor host = data[0].cpu().contiguous();
      bytes->assign(reinterpret_cast<const char*>(host.data_ptr<uint8_t>()), static_cast<size_t>(n));
    }
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("receive from rank ", src, " failed (",
                                               Where(m.options), "): ", e.what()));
  }
  return absl::OkStatus();
}

absl::Status ProcessGroup::AllReduce(std::vector<double>* values, ReduceOp op) {
  Impl& m = *impl_;
  try {
    auto t = torch::tensor(*values, torch::TensorOptions().dtype(torch::kFloat64)).to(m.device);
    std::vector<at::Tensor> ts{t};
    c10d::AllreduceOptions ao;
    ao.reduceOp = op == ReduceOp::kSum   ? c10d::ReduceOp::SUM
                  : op == ReduceOp::kMin ? c10d::ReduceOp::MIN
                                         : c10d::ReduceOp::MAX;
    m.backend->allreduce(ts, ao)->wait();
    auto host = ts[0].cpu().contiguous();
    values->assign(host.data_ptr<double>(), host.data_ptr<double>() + host.numel());
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("all-reduce failed (", Where(m.options), "): ", e.what()));
  }
  return absl::OkStatus();
}

const char* LayoutGroupName(LayoutGroup group) {
  switch (group) {
    case LayoutGroup::kTp: return "tp";
    case LayoutGroup::kDp: return "dp";
    case LayoutGroup::kEp: return "ep";
    case LayoutGroup::kExpertTp: return "expert_tp";
    case LayoutGroup::kExpertDp: return "expert_dp";
  }
  return "?";
}

const std::vector<int64_t>& ProcessGroup::Impl::LayoutRanks(LayoutGroup group) const {
  TORCH_CHECK(layout != nullptr, "the layout groups are not made yet (JoinLayoutGroups)");
  switch (group) {
    case LayoutGroup::kTp: return layout->tp;
    case LayoutGroup::kDp: return layout->dp;
    case LayoutGroup::kEp: return layout->ep;
    case LayoutGroup::kExpertTp: return layout->expert_tp;
    case LayoutGroup::kExpertDp: return layout->expert_dp;
  }
  return layout->tp;
}

c10::intrusive_ptr<c10d::Backend> ProcessGroup::Impl::LayoutBackend(LayoutGroup group) {
  const std::vector<int64_t>& ranks = LayoutRanks(group);
  if (ranks.size() == 1) return {};
  return Subgroup(ranks);
}

absl::Status ProcessGroup::JoinLayoutGroups(const ParallelLayout& layout) {
  Impl& m = *impl_;
  absl::StatusOr<LayoutGroups> groups = GroupsOf(layout, m.options.world_size, m.options.rank);
  if (!groups.ok()) return groups.status();
  m.layout = std::make_unique<LayoutGroups>(*std::move(groups));
  // One order on every rank: a group's members all reach it after the same earlier kinds,
  // and the groups of one kind are disjoint, so no rank waits on one that waits on it.
  for (LayoutGroup g : {LayoutGroup::kTp, LayoutGroup::kDp, LayoutGroup::kEp,
                        LayoutGroup::kExpertTp, LayoutGroup::kExpertDp}) {
    try {
      m.LayoutBackend(g);
    } catch (const std::exception& e) {
      m.layout.reset();
      return absl::UnavailableError(absl::StrCat("cannot form the ", LayoutGroupName(g),
                                                 " group (", Where(m.options), "): ", e.what()));
    }
  }
  return absl::OkStatus();
}

const LayoutGroups* ProcessGroup::layout_groups() const { return impl_->layout.get(); }

absl::Status ProcessGroup::AllReduce(LayoutGroup group, std::vector<double>* values,
                                     ReduceOp op) {
  Impl& m = *impl_;
  if (m.layout == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "all-reduce over the ", LayoutGroupName(group),
        " group before JoinLayoutGroups (", Where(m.options), ")"));
  }
  try {
    c10::intrusive_ptr<c10d::Backend> backend = m.LayoutBackend(group);
    if (!backend) return absl::OkStatus();  // this rank alone
    auto t = torch::tensor(*values, torch::TensorOptions().dtype(torch::kFloat64)).to(m.device);
    std::vector<at::Tensor> ts{t};
    c10d::AllreduceOptions ao;
    ao.reduceOp = op == ReduceOp::kSum   ? c10d::ReduceOp::SUM
                  : op == ReduceOp::kMin ? c10d::ReduceOp::MIN
                                         : c10d::ReduceOp::MAX;
    backend->allreduce(ts, ao)->wait();
    auto host = ts[0].cpu().contiguous();
    values->assign(host.data_ptr<double>(), host.data_ptr<double>() + host.numel());
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("all-reduce over the ", LayoutGroupName(group),
                                               " group failed (", Where(m.options), "): ",
                                               e.what()));
  }
  return absl::OkStatus();
}

absl::Status ProcessGroup::Barrier() {
  std::vector<double> one{1};
  return AllReduce(&one, ReduceOp::kSum);
}

}  // namespace lightrl
