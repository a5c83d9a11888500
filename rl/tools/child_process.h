// Processes the `lightrl` CLI starts for a run (spawn-mode workers, managed reward
// servers): start one with its output appended to a log and its auth token in its
// environment, say how one ended, stop several. Part of the CLI, not of the library:
// the library asks for processes through rl/worker_launcher.h. Owns no process beyond
// the calls; torch-free and protobuf-free.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace lightrl {

// This executable's path ("" if /proc/self/exe cannot be read).
std::string SelfExe();

// Starts `argv` with stdout and stderr appended to `log_path`; the child gets SIGTERM if
// the controller dies, so spawned workers never outlive their run. A non-empty
// `auth_token` reaches the child as LIGHTRL_AUTH_TOKEN in its environment (readable only
// by its own user), never in argv (readable by every local user in /proc). `env` entries
// ("NAME=value") replace the inherited variables of the same names.
absl::StatusOr<pid_t> SpawnChild(const std::vector<std::string>& argv, const std::string& log_path,
                                 const std::string& auth_token,
                                 const std::vector<std::string>& env = {});

// A loopback port nobody listens on now (a child binds it a moment later); -1 if none.
int FreeLoopbackPort();

// How a child ended, from waitpid's `wait_status`: "exited with status 1", "killed by
// signal 9 (Killed)".
std::string DescribeExit(int wait_status);

// Sends SIGTERM to every child in `pids`, waits up to `grace` for them all, then kills
// and reaps those still running.
void StopChildren(const std::vector<pid_t>& pids, absl::Duration grace = absl::Seconds(10));

}  // namespace lightrl
