// Tests that run several ranks of one process group as threads of one process. lightrl
// runs one rank per process; torch's flight recorder (a process-wide trace of every
// collective) registers each group on its first collective without a lock, so ranks that
// share a process can corrupt it. Call before the first group is made: it turns the
// recorder off for this process.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <exception>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "rl/distributed.h"
#include "tests/loopback_group.h"
#include "tests/test_ports.h"

namespace lightrl {

inline void RanksAreThreadsOfThisProcess() { ::setenv("TORCH_FR_BUFFER_SIZE", "0", /*overwrite=*/1); }

// Runs `body(rank, group)` on `world` CPU ranks, threads of this process, each with its own
// group over loopback (kept until every rank is done). Returns each rank's status: the
// group's error (UNIMPLEMENTED in a build without Gloo), INTERNAL for an exception `body`
// threw, else what `body` returned (a body returning void gives OK).
template <typename Body>
std::vector<absl::Status> RunThreadRanks(int64_t world, Body body) {
  RanksAreThreadsOfThisProcess();
  const int port = FreeLoopbackPort();
  std::vector<absl::Status> status(world);
  std::vector<std::unique_ptr<ProcessGroup>> groups(world);
  std::vector<std::thread> threads;
  for (int64_t r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      try {
        auto group = LoopbackGroup(r, world, port);
        if (!group.ok()) {
          status[r] = group.status();
          return;
        }
        groups[r] = std::move(*group);
        if constexpr (std::is_void_v<decltype(body(r, groups[r].get()))>) {
          body(r, groups[r].get());
        } else {
          status[r] = body(r, groups[r].get());
        }
      } catch (const std::exception& e) {
        status[r] = absl::InternalError(e.what());
      }
    });
  }
  for (auto& t : threads) t.join();
  return status;
}

}  // namespace lightrl
