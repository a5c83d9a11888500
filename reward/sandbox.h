// Runs one untrusted program in a child process with resource limits, no network, a
// cleared environment and a private, empty filesystem. Owns the processes, pipes, mount
// and cgroup of one call; it knows nothing about languages or tests
// (reward/code_reward.h does). Linux only; torch- and protobuf-free.
//
// What a run guarantees (docs/security.md has the whole list, and what it does not):
// - Files: the program sees a fresh tmpfs root (its working directory /sandbox, /tmp,
//   /dev/shm, all under one size quota, `disk_bytes`), read-only binds of /usr and the
//   /bin, /lib* links or directories, /etc/ld.so.cache, five harmless /dev nodes, and a
//   /proc of its own pid namespace. Nothing of the host's /etc, /tmp, /dev/shm, /home,
//   /root, the run's directories or other processes is visible. The tmpfs lives only in
//   the run's mount namespace, so it vanishes with the run's last process: nothing is
//   written on the host and nothing can be left behind. Needs user, mount and pid
//   namespaces; where the kernel refuses them the run fails, naming the refused call,
//   unless `private_filesystem` is false.
// - Memory and processes: limited for the whole sandbox by a cgroup made per run (v1
//   memory + pids hierarchies, or v2 memory + pids; found at runtime), so N processes
//   share one `memory_bytes`. Without a usable cgroup (the first run reports why in
//   `SandboxResult::memory_limit_per_sandbox` = false) each process keeps RLIMIT_AS and
//   the sandbox may have at most `max_processes_without_cgroup` processes (RLIMIT_NPROC
//   inside its user namespace), bounding the total at that many times memory_bytes.
// - Cancellation: a SandboxCancelScope on the calling thread kills a run the moment its
//   flag is set.
#pragma once

#include <sys/types.h>

#include <atomic>
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
  // Memory of the whole sandbox (cgroup memory.max / memory.limit_in_bytes, swap
  // included), and also RLIMIT_AS of each process, so one large allocation fails cleanly.
  int64_t memory_bytes = int64_t{1} << 30;
  // RLIMIT_FSIZE: the largest file the child may write (SIGXFSZ past it).
  int64_t file_size_bytes = int64_t{16} << 20;
  // RLIMIT_NOFILE.
  int max_open_files = 64;
  // Processes (and threads) of the program: the cgroup's pids.max, and RLIMIT_NPROC
  // inside the sandbox's own user namespace.
  int max_processes = 64;
  // The bound on processes where no cgroup limits the sandbox's memory as a whole.
  int max_processes_without_cgroup = 4;
  // Fail the run when no cgroup can be made, instead of the fallback above.
  bool require_cgroup = false;
  // Size of the private tmpfs (working directory, /tmp, /dev/shm together): the disk quota.
  int64_t disk_bytes = int64_t{64} << 20;
  // The private, empty filesystem described at the top. false runs the program in a host
  // directory under `temp_root` with the host's filesystem in view: only for kernels
  // without user namespaces, and never for untrusted code that may read secrets.
  bool private_filesystem = true;
  // Bytes kept from each of stdout and stderr; the rest is read and discarded.
  int64_t max_output_bytes = int64_t{1} << 20;
  // Kill the child as soon as either stream passes max_output_bytes, instead of letting
  // it run to its other limits while its output is discarded.
  bool kill_on_output_limit = true;
  NetworkIsolation network_isolation = NetworkIsolation::kAuto;
  // An existing directory. With the private filesystem the sandbox's tmpfs root is
  // mounted over it inside the sandbox's own mount namespace (the host's directory is
  // never written); without it, where the per-run working directory is created
  // (mkdtemp), which must be reachable by `unprivileged_uid` when the parent is root.
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
  // Memory: the cgroup's OOM killer acted, or a failing run's stderr reports an
  // allocation failure
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
  // Whether the program ran in the private filesystem.
  bool private_filesystem = false;
  // Whether a cgroup limited the sandbox's memory and processes as a whole.
  bool memory_limit_per_sandbox = false;

  // Exited with status 0 within every limit.
  bool Succeeded() const {
    return exit_code == 0 && term_signal == 0 && limit_hit == SandboxLimit::kNone;
  }
};

// While alive, RunSandboxed calls on this thread poll `*cancelled` (every 50 ms at most)
// and, once it is true, kill their sandbox and return CANCELLED. Scopes nest; the flag
// must outlive the scope.
class SandboxCancelScope {
 public:
  explicit SandboxCancelScope(const std::atomic<bool>* cancelled);
  ~SandboxCancelScope();
  SandboxCancelScope(const SandboxCancelScope&) = delete;
  SandboxCancelScope& operator=(const SandboxCancelScope&) = delete;

 private:
  const std::atomic<bool>* previous_;
};

// Runs `command` under `options` and waits for it. Thread-safe: concurrent calls run
// independent children. Whatever the program does (crash, loop, flood, exit non-zero)
// is reported in the result; an error means the sandbox itself could not be set up
// (invalid options, a failing syscall, no way to isolate the network, a program that
// cannot be executed, namespaces the kernel refuses) and names the step that failed;
// CANCELLED means a SandboxCancelScope's flag ended it. The working directory, the
// cgroup and every process of the run are gone before it returns in every case.
absl::StatusOr<SandboxResult> RunSandboxed(const SandboxOptions& options,
                                           const SandboxCommand& command);

}  // namespace lightrl
