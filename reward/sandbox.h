// Runs one untrusted program in a child process with resource limits, no network, a
// cleared environment and a fresh working directory that is removed afterwards. Owns the
// process, its pipes and its directory for the duration of one call; it knows nothing
// about languages or tests (reward/code_reward.h does). Linux only; torch- and
// protobuf-free.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lightrl {

// How the child is kept off the network.
enum class NetworkIsolation {
  // An empty network namespace inside a new user namespace; if the kernel refuses that,
  // a seccomp filter. Fails the run when neither can be had.
  kAuto,
  // Only the namespace; fails the run when it cannot be created.
  kNamespace,
  // Only the seccomp filter (socket() for anything but AF_UNIX fails with EACCES).
  kSeccomp,
};
const char* NetworkIsolationName(NetworkIsolation isolation);

struct SandboxOptions {
  // Wall-clock limit; the parent kills the child's whole process group after it.
  double wall_seconds = 10;
  // RLIMIT_CPU (SIGXCPU at the limit, SIGKILL one second later).
  int cpu_seconds = 5;
  // RLIMIT_AS: the child's address space, so allocations past it fail.
  int64_t memory_bytes = int64_t{1} << 30;
  // RLIMIT_FSIZE: the largest file the child may write (SIGXFSZ past it).
  int64_t file_size_bytes = int64_t{16} << 20;
  // RLIMIT_NOFILE.
  int max_open_files = 64;
  // RLIMIT_NPROC, counted per sandbox because it is set inside the child's own user
  // namespace. Not applied under kSeccomp isolation, where it would count every process
  // of the user; the process-group kill at the wall limit bounds a fork bomb there.
  int max_processes = 64;
  // Bytes kept from each of stdout and stderr; the rest is read and discarded.
  int64_t max_output_bytes = int64_t{1} << 20;
  // Kill the child as soon as either stream passes max_output_bytes, instead of letting
  // it run to its other limits while its output is discarded.
  bool kill_on_output_limit = true;
  NetworkIsolation network_isolation = NetworkIsolation::kAuto;
  // Where the per-run working directory is created (mkdtemp). Must be reachable by
  // `unprivileged_uid` when the parent is root.
  std::string temp_root = "/tmp";
  // The child's PATH (also used to resolve a bare program name); LANG is C.UTF-8 and
  // nothing else of the parent's environment is passed on.
  std::string path = "/usr/local/bin:/usr/bin:/bin";
  // When the parent runs as root, the child switches to this uid/gid first, so root's
  // rights (and its exemption from RLIMIT_NPROC) never reach untrusted code. Ignored
  // otherwise.
  uid_t unprivileged_uid = 65534;
  gid_t unprivileged_gid = 65534;

  absl::Status Validate() const;
};

// What to run.
struct SandboxCommand {
  // argv[0] is a path or a name looked up in SandboxOptions::path.
  std::vector<std::string> argv;
  // Files written into the working directory before the start: name -> contents. Names
  // are plain file names (no '/', not "." or "..").
  std::map<std::string, std::string> files;
  // The child's whole stdin; it sees end-of-file after it.
  std::string stdin_data;
};

// The limit that ended (or, for output, clipped) the run.
enum class SandboxLimit { kNone, kCpu, kMemory, kWall, kOutput, kFileSize };
const char* SandboxLimitName(SandboxLimit limit);

struct SandboxResult {
  // The exit status when the child exited, else -1.
  int exit_code = -1;
  // The signal that killed the child, else 0.
  int term_signal = 0;
  // Memory is inferred from a failing run whose stderr reports an allocation failure
  // (MemoryError, std::bad_alloc, "Cannot allocate memory"), since RLIMIT_AS has no
  // signal of its own; likewise file size from "File too large" when the program
  // ignores SIGXFSZ (Python does).
  SandboxLimit limit_hit = SandboxLimit::kNone;
  std::string stdout_text;
  std::string stderr_text;
  bool stdout_truncated = false;
  bool stderr_truncated = false;
  double wall_seconds = 0;
  // User + system CPU of the child and the descendants it waited for.
  double cpu_seconds = 0;
  // The mechanism that kept this run off the network.
  NetworkIsolation isolation = NetworkIsolation::kAuto;

  // Exited with status 0 within every limit.
  bool Succeeded() const {
    return exit_code == 0 && term_signal == 0 && limit_hit == SandboxLimit::kNone;
  }
};

// Runs `command` under `options` and waits for it. Thread-safe: concurrent calls run
// independent children. Whatever the program does (crash, loop, flood, exit non-zero)
// is reported in the result; an error means the sandbox itself could not be set up
// (invalid options, a failing syscall, no way to isolate the network, a program that
// cannot be executed) and names the step that failed. The working directory is removed
// before returning in every case.
absl::StatusOr<SandboxResult> RunSandboxed(const SandboxOptions& options,
                                           const SandboxCommand& command);

}  // namespace lightrl
