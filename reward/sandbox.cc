#include "reward/sandbox.h"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "common/status.h"

namespace lightrl {
namespace {

#if defined(__x86_64__)
constexpr uint32_t kAuditArch = AUDIT_ARCH_X86_64;
constexpr bool kHaveSeccompArch = true;
#elif defined(__aarch64__)
constexpr uint32_t kAuditArch = AUDIT_ARCH_AARCH64;
constexpr bool kHaveSeccompArch = true;
#else
constexpr uint32_t kAuditArch = 0;
constexpr bool kHaveSeccompArch = false;
#endif

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
constexpr uint32_t kArg0LowOffset = offsetof(struct seccomp_data, args[0]);
#else
constexpr uint32_t kArg0LowOffset = offsetof(struct seccomp_data, args[0]) + 4;
#endif

// Child-to-parent reports over a close-on-exec pipe: end-of-file without a kFailed
// record means execve succeeded.
enum class ReportKind : int32_t { kIsolation, kUnshareRefused, kFailed };
enum class ChildStep : int32_t {
  kNone,
  kSetpgid,
  kDupFds,
  kCloseFds,
  kChdir,
  kDropPrivileges,
  kUnshare,
  kSetrlimit,
  kNoNewPrivs,
  kParentDeath,
  kSeccomp,
  kExec,
};
struct ChildReport {
  ReportKind kind;
  ChildStep step;
  int32_t value;  // errno for failures, the NetworkIsolation for kIsolation
};

const char* ChildStepName(ChildStep step) {
  switch (step) {
    case ChildStep::kNone: return "none";
    case ChildStep::kSetpgid: return "setpgid";
    case ChildStep::kDupFds: return "dup2 of stdin/stdout/stderr";
    case ChildStep::kCloseFds: return "closing inherited file descriptors";
    case ChildStep::kChdir: return "chdir to the working directory";
    case ChildStep::kDropPrivileges: return "setgroups/setresgid/setresuid";
    case ChildStep::kUnshare: return "unshare(CLONE_NEWUSER|CLONE_NEWNET)";
    case ChildStep::kSetrlimit: return "setrlimit";
    case ChildStep::kNoNewPrivs: return "prctl(PR_SET_NO_NEW_PRIVS)";
    case ChildStep::kParentDeath: return "prctl(PR_SET_PDEATHSIG)";
    case ChildStep::kSeccomp: return "prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER)";
    case ChildStep::kExec: return "execve";
  }
  return "?";
}

std::string ErrnoText(int err) { return absl::StrCat(std::strerror(err), " (errno ", err, ")"); }

absl::Status SyscallError(absl::string_view what, int err) {
  return absl::InternalError(absl::StrCat("sandbox: ", what, " failed: ", ErrnoText(err)));
}

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Closes on scope exit unless released.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { Reset(); }
  int get() const { return fd_; }
  void Reset() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// A BPF program as jumps to named targets; offsets are resolved at the end because
// classic BPF only jumps forward by a relative count.
std::vector<sock_filter> BuildSeccompFilter(bool block_network) {
  // Leaving the process group would put a process out of reach of the group kill;
  // ptrace and the cross-process memory calls reach other processes of the same user;
  // io_uring can open sockets without the socket() syscall.
  std::vector<uint32_t> denied = {SYS_setsid, SYS_setpgid, SYS_ptrace, SYS_process_vm_readv,
                                  SYS_process_vm_writev};
#ifdef SYS_io_uring_setup
  denied.push_back(SYS_io_uring_setup);
#endif
  enum Target { kAllow, kDenyEperm, kSocketCheck };
  struct Check {
    uint32_t op;
    uint32_t value;
    Target target;
  };
  std::vector<Check> checks;
#if defined(__x86_64__)
  // x32 system calls share the x86-64 audit arch and carry this bit in their number.
  checks.push_back({BPF_JMP | BPF_JGE | BPF_K, 0x40000000u, kDenyEperm});
#endif
  for (uint32_t nr : denied) checks.push_back({BPF_JMP | BPF_JEQ | BPF_K, nr, kDenyEperm});
  if (block_network) {
    checks.push_back({BPF_JMP | BPF_JEQ | BPF_K, static_cast<uint32_t>(SYS_socket), kSocketCheck});
#ifdef SYS_socketcall
    // socketcall's arguments sit behind a pointer the filter cannot read.
    checks.push_back({BPF_JMP | BPF_JEQ | BPF_K, static_cast<uint32_t>(SYS_socketcall),
                      kDenyEperm});
#endif
  }

  std::vector<sock_filter> prog;
  prog.push_back(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)));
  prog.push_back(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, kAuditArch, 1, 0));
  // A foreign ABI (e.g. 32-bit calls on a 64-bit kernel) has other syscall numbers.
  prog.push_back(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
  prog.push_back(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)));
  const size_t first_check = prog.size();
  const size_t allow_pos = first_check + checks.size();
  const size_t socket_pos = allow_pos + 1;
  const size_t eperm_pos = block_network ? socket_pos + 4 : allow_pos + 1;
  for (size_t i = 0; i < checks.size(); ++i) {
    size_t pc = first_check + i;
    size_t target = checks[i].target == kAllow       ? allow_pos
                    : checks[i].target == kDenyEperm ? eperm_pos
                                                     : socket_pos;
    prog.push_back(BPF_JUMP(checks[i].op, checks[i].value,
                            static_cast<uint8_t>(target - pc - 1), 0));
  }
  prog.push_back(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));  // allow_pos
  if (block_network) {
    // socket(): only local (AF_UNIX) sockets; everything that can reach a network fails.
    prog.push_back(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, kArg0LowOffset));
    prog.push_back(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_UNIX, 1, 0));
    prog.push_back(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EACCES & SECCOMP_RET_DATA)));
    prog.push_back(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
  }
  prog.push_back(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)));
  return prog;
}

// Everything the child needs, prepared before fork: after fork in a threaded process the
// child may only make async-signal-safe calls, so it must not allocate.
struct ChildPlan {
  const char* exe_path;
  char* const* argv;
  char* const* envp;
  const char* work_dir;
  int stdin_fd, stdout_fd, stderr_fd, report_fd;
  bool drop_privileges;
  uid_t uid;
  gid_t gid;
  pid_t parent_pid;
  NetworkIsolation isolation;
  const SandboxOptions* options;
  const sock_fprog* base_filter;
  const sock_fprog* network_filter;
};

void ChildWrite(int fd, ReportKind kind, ChildStep step, int32_t value) {
  ChildReport report{kind, step, value};
  ssize_t n;
  do {
    n = write(fd, &report, sizeof(report));
  } while (n < 0 && errno == EINTR);
}

[[noreturn]] void ChildFail(int fd, ChildStep step, int err) {
  ChildWrite(fd, ReportKind::kFailed, step, err);
  _exit(127);
}

bool SetLimit(int resource, rlim_t soft, rlim_t hard) {
  struct rlimit limit;
  limit.rlim_cur = soft;
  limit.rlim_max = hard;
  return setrlimit(resource, &limit) == 0;
}

[[noreturn]] void RunChild(const ChildPlan& plan) {
  // Lift the fds above the stdio range first, so that none of them is clobbered by the
  // dup2 onto 0-2 (a daemonised parent may have had 0-2 closed when it made them).
  int in = fcntl(plan.stdin_fd, F_DUPFD_CLOEXEC, 10);
  int out = fcntl(plan.stdout_fd, F_DUPFD_CLOEXEC, 10);
  int err = fcntl(plan.stderr_fd, F_DUPFD_CLOEXEC, 10);
  int rep = fcntl(plan.report_fd, F_DUPFD_CLOEXEC, 10);
  if (rep < 0) _exit(127);
  if (in < 0 || out < 0 || err < 0) ChildFail(rep, ChildStep::kDupFds, errno);
  if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0 || dup3(rep, 3, O_CLOEXEC) < 0) {
    ChildFail(rep, ChildStep::kDupFds, errno);
  }
  rep = 3;
#ifdef SYS_close_range
  const bool closed = syscall(SYS_close_range, 4u, ~0u, 0u) == 0;
#else
  const bool closed = false;
#endif
  if (!closed) {
    struct rlimit nofile;
    if (getrlimit(RLIMIT_NOFILE, &nofile) != 0) ChildFail(rep, ChildStep::kCloseFds, errno);
    rlim_t max_fd = nofile.rlim_cur == RLIM_INFINITY ? 65536 : nofile.rlim_cur;
    for (rlim_t fd = 4; fd < max_fd; ++fd) close(static_cast<int>(fd));
  }

  // A parent that ignores SIGPIPE (servers do) would pass that on through execve.
  struct sigaction dfl;
  std::memset(&dfl, 0, sizeof(dfl));
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) sigaction(sig, &dfl, nullptr);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);

  if (setpgid(0, 0) != 0) ChildFail(rep, ChildStep::kSetpgid, errno);
  if (chdir(plan.work_dir) != 0) ChildFail(rep, ChildStep::kChdir, errno);
  if (plan.drop_privileges) {
    if (setgroups(0, nullptr) != 0 || setresgid(plan.gid, plan.gid, plan.gid) != 0 ||
        setresuid(plan.uid, plan.uid, plan.uid) != 0) {
      ChildFail(rep, ChildStep::kDropPrivileges, errno);
    }
  }

  bool own_userns = false;
  if (plan.isolation != NetworkIsolation::kSeccomp) {
    if (unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0) {
      own_userns = true;
    } else if (plan.isolation == NetworkIsolation::kNamespace) {
      ChildFail(rep, ChildStep::kUnshare, errno);
    } else {
      ChildWrite(rep, ReportKind::kUnshareRefused, ChildStep::kUnshare, errno);
    }
  }

  const SandboxOptions& o = *plan.options;
  const rlim_t cpu = static_cast<rlim_t>(o.cpu_seconds);
  if (!SetLimit(RLIMIT_CPU, cpu, cpu + 1) ||
      !SetLimit(RLIMIT_AS, static_cast<rlim_t>(o.memory_bytes),
                static_cast<rlim_t>(o.memory_bytes)) ||
      !SetLimit(RLIMIT_FSIZE, static_cast<rlim_t>(o.file_size_bytes),
                static_cast<rlim_t>(o.file_size_bytes)) ||
      !SetLimit(RLIMIT_NOFILE, static_cast<rlim_t>(o.max_open_files),
                static_cast<rlim_t>(o.max_open_files)) ||
      !SetLimit(RLIMIT_CORE, 0, 0)) {
    ChildFail(rep, ChildStep::kSetrlimit, errno);
  }
  // Set after unshare: the new namespace records the creator's limit as the cap for the
  // level above, so only the count inside this sandbox meets the modest limit.
  if (own_userns && !SetLimit(RLIMIT_NPROC, static_cast<rlim_t>(o.max_processes),
                              static_cast<rlim_t>(o.max_processes))) {
    ChildFail(rep, ChildStep::kSetrlimit, errno);
  }

  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) ChildFail(rep, ChildStep::kNoNewPrivs, errno);
  // Credential changes clear the death signal, hence here; the getppid check closes the
  // race with a parent that died before it.
  if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) {
    ChildFail(rep, ChildStep::kParentDeath, errno);
  }
  if (getppid() != plan.parent_pid) _exit(127);

  const bool need_network_filter = !own_userns;
  if (kHaveSeccompArch) {
    const sock_fprog* filter = need_network_filter ? plan.network_filter : plan.base_filter;
    // With the namespace in place the filter only hardens (keeps the process group
    // whole, blocks ptrace), so a kernel without seccomp does not stop the run.
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, filter, 0, 0) != 0 && need_network_filter) {
      ChildFail(rep, ChildStep::kSeccomp, errno);
    }
  } else if (need_network_filter) {
    ChildFail(rep, ChildStep::kSeccomp, ENOSYS);
  }
  ChildWrite(rep, ReportKind::kIsolation, ChildStep::kNone,
             static_cast<int32_t>(own_userns ? NetworkIsolation::kNamespace
                                             : NetworkIsolation::kSeccomp));
  execve(plan.exe_path, plan.argv, plan.envp);
  ChildFail(rep, ChildStep::kExec, errno);
}

// Removes everything below `dir_fd`. Directories nested deeper than kMaxDepth are moved
// up to `root_fd` rather than descended into, so a program that built a very deep tree
// cannot exhaust our descriptors; the caller repeats until the root is empty.
constexpr int kMaxDepth = 64;

absl::Status RemoveContents(int dir_fd, int root_fd, int depth, int64_t* moved) {
  int list_fd = dup(dir_fd);
  if (list_fd < 0) return SyscallError("dup", errno);
  DIR* dir = fdopendir(list_fd);
  if (dir == nullptr) {
    int e = errno;
    close(list_fd);
    return SyscallError("fdopendir", e);
  }
  // The duplicate shares the file offset with `dir_fd`, which an earlier pass over the
  // same directory left at the end.
  rewinddir(dir);
  absl::Status status;
  while (true) {
    errno = 0;
    struct dirent* entry = readdir(dir);
    if (entry == nullptr) {
      if (errno != 0) status = SyscallError("readdir", errno);
      break;
    }
    const char* name = entry->d_name;
    if (std::strcmp(name, ".") == 0 || std::strcmp(name, "..") == 0) continue;
    struct stat st;
    if (fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno == ENOENT) continue;
      status = SyscallError(absl::StrCat("fstatat ", name), errno);
      break;
    }
    if (!S_ISDIR(st.st_mode)) {
      if (unlinkat(dir_fd, name, 0) != 0 && errno != ENOENT) {
        status = SyscallError(absl::StrCat("unlinkat ", name), errno);
        break;
      }
      continue;
    }
    if (depth >= kMaxDepth) {
      std::string up = absl::StrCat(".deep-", (*moved)++);
      if (renameat(dir_fd, name, root_fd, up.c_str()) != 0) {
        status = SyscallError(absl::StrCat("renameat ", name), errno);
        break;
      }
      continue;
    }
    // The program may have left a directory without search or write permission.
    fchmodat(dir_fd, name, 0700, 0);
    int sub = openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (sub < 0) {
      status = SyscallError(absl::StrCat("openat ", name), errno);
      break;
    }
    status = RemoveContents(sub, root_fd, depth + 1, moved);
    close(sub);
    if (!status.ok()) break;
    if (unlinkat(dir_fd, name, AT_REMOVEDIR) != 0 && errno != ENOENT) {
      status = SyscallError(absl::StrCat("rmdir ", name), errno);
      break;
    }
  }
  closedir(dir);
  return status;
}

absl::Status RemoveTree(const std::string& path) {
  chmod(path.c_str(), 0700);
  int root = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (root < 0) return SyscallError(absl::StrCat("open ", path), errno);
  absl::Status status;
  int64_t moved = 0;
  // Each pass removes the tree down to kMaxDepth and lifts what is deeper to the root.
  for (int pass = 0; pass < 100000 && status.ok(); ++pass) {
    int64_t moved_before = moved;
    status = RemoveContents(root, root, 0, &moved);
    if (moved == moved_before) break;
  }
  close(root);
  if (!status.ok()) return status;
  if (rmdir(path.c_str()) != 0) return SyscallError(absl::StrCat("rmdir ", path), errno);
  return absl::OkStatus();
}

// The working directory, removed when the run ends however it ends.
class TempDir {
 public:
  ~TempDir() {
    // Only reached on error paths, whose own error is the one worth returning; the path
    // is unique, so a leftover never collides with a later run.
    if (!path_.empty()) RemoveTree(path_).IgnoreError();
  }
  absl::Status Remove() {
    absl::Status status = RemoveTree(path_);
    path_.clear();
    return status;
  }
  absl::Status Create(const std::string& root) {
    std::string tmpl = absl::StrCat(root, "/lightrl-sandbox-XXXXXX");
    if (mkdtemp(tmpl.data()) == nullptr) {
      return SyscallError(absl::StrCat("mkdtemp ", tmpl), errno);
    }
    path_ = tmpl;
    return absl::OkStatus();
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

absl::Status WriteAll(int fd, absl::string_view data, absl::string_view what) {
  while (!data.empty()) {
    ssize_t n = write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return SyscallError(absl::StrCat("write ", what), errno);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ResolveProgram(const std::string& name, const std::string& path) {
  if (name.find('/') != std::string::npos) return name;
  for (absl::string_view dir : absl::StrSplit(path, ':', absl::SkipEmpty())) {
    std::string candidate = absl::StrCat(dir, "/", name);
    struct stat st;
    if (stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
  }
  return absl::NotFoundError(
      absl::StrCat("sandbox: program \"", name, "\" not found in PATH ", path));
}

bool ReportsAllocationFailure(absl::string_view err) {
  return absl::StrContains(err, "MemoryError") || absl::StrContains(err, "bad_alloc") ||
         absl::StrContains(err, "Cannot allocate memory") ||
         absl::StrContains(err, "out of memory");
}

// The limit behind a finished run. Only the wall and output kills are known first hand;
// the rest is read from how the child ended.
SandboxLimit ClassifyLimit(const SandboxResult& r, SandboxLimit killed_for,
                           const SandboxOptions& options) {
  const bool failed = r.exit_code != 0;
  if (killed_for != SandboxLimit::kNone) return killed_for;
  if (r.term_signal == SIGXCPU ||
      (r.term_signal == SIGKILL && r.cpu_seconds >= options.cpu_seconds)) {
    return SandboxLimit::kCpu;
  }
  if (r.term_signal == SIGXFSZ || (failed && absl::StrContains(r.stderr_text, "File too large"))) {
    return SandboxLimit::kFileSize;
  }
  if (failed && ReportsAllocationFailure(r.stderr_text)) return SandboxLimit::kMemory;
  if (r.stdout_truncated || r.stderr_truncated) return SandboxLimit::kOutput;
  return SandboxLimit::kNone;
}

struct Stream {
  Fd* fd = nullptr;
  std::string* text = nullptr;
  bool* truncated = nullptr;
};

}  // namespace

const char* NetworkIsolationName(NetworkIsolation isolation) {
  switch (isolation) {
    case NetworkIsolation::kAuto: return "auto";
    case NetworkIsolation::kNamespace: return "namespace";
    case NetworkIsolation::kSeccomp: return "seccomp";
  }
  return "?";
}

const char* SandboxLimitName(SandboxLimit limit) {
  switch (limit) {
    case SandboxLimit::kNone: return "none";
    case SandboxLimit::kCpu: return "cpu";
    case SandboxLimit::kMemory: return "memory";
    case SandboxLimit::kWall: return "wall";
    case SandboxLimit::kOutput: return "output";
    case SandboxLimit::kFileSize: return "file_size";
  }
  return "?";
}

absl::Status SandboxOptions::Validate() const {
  auto bad = [](absl::string_view field, auto value, absl::string_view want) {
    return absl::InvalidArgumentError(
        absl::StrCat("sandbox options: ", field, " must be ", want, ", got ", value));
  };
  if (!std::isfinite(wall_seconds) || wall_seconds <= 0) {
    return bad("wall_seconds", wall_seconds, "a positive number");
  }
  if (cpu_seconds < 1) return bad("cpu_seconds", cpu_seconds, ">= 1");
  if (memory_bytes < (int64_t{16} << 20)) return bad("memory_bytes", memory_bytes, ">= 16 MiB");
  if (file_size_bytes < 0) return bad("file_size_bytes", file_size_bytes, ">= 0");
  if (max_open_files < 8) return bad("max_open_files", max_open_files, ">= 8");
  if (max_processes < 1) return bad("max_processes", max_processes, ">= 1");
  if (max_output_bytes < 0) return bad("max_output_bytes", max_output_bytes, ">= 0");
  if (temp_root.empty() || temp_root[0] != '/') {
    return bad("temp_root", absl::StrCat("\"", temp_root, "\""), "an absolute path");
  }
  if (path.empty()) return bad("path", "\"\"", "a non-empty PATH");
  return absl::OkStatus();
}

absl::StatusOr<SandboxResult> RunSandboxed(const SandboxOptions& options,
                                           const SandboxCommand& command) {
  RETURN_IF_ERROR(options.Validate());
  if (command.argv.empty() || command.argv[0].empty()) {
    return absl::InvalidArgumentError("sandbox: argv must name a program");
  }
  for (const std::string& arg : command.argv) {
    if (arg.find('\0') != std::string::npos) {
      return absl::InvalidArgumentError("sandbox: argv contains a NUL byte");
    }
  }
  for (const auto& [name, contents] : command.files) {
    if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos ||
        name.find('\0') != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("sandbox: file name \"", name, "\" must be a plain file name"));
    }
  }
  ASSIGN_OR_RETURN(const std::string exe, ResolveProgram(command.argv[0], options.path));

  const bool drop_privileges = geteuid() == 0;
  TempDir work_dir;
  RETURN_IF_ERROR(work_dir.Create(options.temp_root));
  if (drop_privileges &&
      chown(work_dir.path().c_str(), options.unprivileged_uid, options.unprivileged_gid) != 0) {
    return SyscallError(absl::StrCat("chown ", work_dir.path()), errno);
  }
  for (const auto& [name, contents] : command.files) {
    std::string file_path = absl::StrCat(work_dir.path(), "/", name);
    Fd fd(open(file_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644));
    if (fd.get() < 0) return SyscallError(absl::StrCat("create ", file_path), errno);
    RETURN_IF_ERROR(WriteAll(fd.get(), contents, file_path));
    if (drop_privileges &&
        fchown(fd.get(), options.unprivileged_uid, options.unprivileged_gid) != 0) {
      return SyscallError(absl::StrCat("fchown ", file_path), errno);
    }
  }

  // stdin is a memory file rather than a pipe: the whole input is there before the start,
  // so the parent never blocks on (or takes SIGPIPE from) a child that does not read it.
  Fd stdin_fd(static_cast<int>(syscall(SYS_memfd_create, "sandbox-stdin", MFD_CLOEXEC)));
  if (stdin_fd.get() < 0) return SyscallError("memfd_create", errno);
  RETURN_IF_ERROR(WriteAll(stdin_fd.get(), command.stdin_data, "stdin"));
  if (lseek(stdin_fd.get(), 0, SEEK_SET) != 0) return SyscallError("lseek stdin", errno);

  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return SyscallError("pipe2 for stdout", errno);
  Fd out_r(fds[0]), out_w(fds[1]);
  if (pipe2(fds, O_CLOEXEC) != 0) return SyscallError("pipe2 for stderr", errno);
  Fd err_r(fds[0]), err_w(fds[1]);
  if (pipe2(fds, O_CLOEXEC) != 0) return SyscallError("pipe2 for child reports", errno);
  Fd report_r(fds[0]), report_w(fds[1]);
  for (int fd : {out_r.get(), err_r.get()}) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
      return SyscallError("fcntl O_NONBLOCK", errno);
    }
  }

  std::vector<std::string> env_strings = {absl::StrCat("PATH=", options.path), "LANG=C.UTF-8",
                                          absl::StrCat("HOME=", work_dir.path())};
  std::vector<char*> argv_ptrs, envp_ptrs;
  for (const std::string& a : command.argv) argv_ptrs.push_back(const_cast<char*>(a.c_str()));
  argv_ptrs.push_back(nullptr);
  for (std::string& e : env_strings) envp_ptrs.push_back(e.data());
  envp_ptrs.push_back(nullptr);
  std::vector<sock_filter> base_filter = BuildSeccompFilter(/*block_network=*/false);
  std::vector<sock_filter> network_filter = BuildSeccompFilter(/*block_network=*/true);
  sock_fprog base_prog{static_cast<unsigned short>(base_filter.size()), base_filter.data()};
  sock_fprog network_prog{static_cast<unsigned short>(network_filter.size()),
                          network_filter.data()};

  ChildPlan plan;
  plan.exe_path = exe.c_str();
  plan.argv = argv_ptrs.data();
  plan.envp = envp_ptrs.data();
  plan.work_dir = work_dir.path().c_str();
  plan.stdin_fd = stdin_fd.get();
  plan.stdout_fd = out_w.get();
  plan.stderr_fd = err_w.get();
  plan.report_fd = report_w.get();
  plan.drop_privileges = drop_privileges;
  plan.uid = options.unprivileged_uid;
  plan.gid = options.unprivileged_gid;
  plan.parent_pid = getpid();
  plan.isolation = options.network_isolation;
  plan.options = &options;
  plan.base_filter = &base_prog;
  plan.network_filter = &network_prog;

  const auto start = std::chrono::steady_clock::now();
  pid_t pid = fork();
  if (pid < 0) return SyscallError("fork", errno);
  if (pid == 0) RunChild(plan);

  // Also from this side, so the group exists before any kill below whichever of the two
  // runs first; EACCES means the child has already exec'ed (and so set it itself).
  if (setpgid(pid, pid) != 0 && errno != EACCES && errno != ESRCH) {
    int e = errno;
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    return SyscallError("setpgid", e);
  }
  stdin_fd.Reset();
  out_w.Reset();
  err_w.Reset();
  report_w.Reset();

  bool reaped = false;
  int wait_status = 0;
  struct rusage usage;
  std::memset(&usage, 0, sizeof(usage));
  auto kill_group = [pid] {
    killpg(pid, SIGKILL);
    kill(pid, SIGKILL);
  };
  auto reap = [&]() -> absl::Status {
    while (wait4(pid, &wait_status, 0, &usage) < 0) {
      if (errno != EINTR) return SyscallError("wait4", errno);
    }
    reaped = true;
    return absl::OkStatus();
  };

  // The report pipe reaches end-of-file at execve (close-on-exec) or at the child's exit.
  SandboxResult result;
  std::string failure;
  int unshare_errno = 0;
  bool isolation_reported = false;
  while (true) {
    ChildReport report;
    ssize_t n = read(report_r.get(), &report, sizeof(report));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      kill_group();
      reap().IgnoreError();
      return SyscallError("read of child reports", e);
    }
    if (n == 0) break;
    if (n != sizeof(report)) continue;
    switch (report.kind) {
      case ReportKind::kIsolation:
        result.isolation = static_cast<NetworkIsolation>(report.value);
        isolation_reported = true;
        break;
      case ReportKind::kUnshareRefused:
        unshare_errno = report.value;
        break;
      case ReportKind::kFailed:
        failure = absl::StrCat("sandbox: ", ChildStepName(report.step), " failed in the child: ",
                               ErrnoText(report.value));
        if (report.step == ChildStep::kSeccomp) {
          absl::StrAppend(&failure, "; unshare(CLONE_NEWUSER|CLONE_NEWNET) was refused too (",
                          unshare_errno != 0 ? ErrnoText(unshare_errno) : "not tried",
                          "), so the network cannot be isolated and the program was not run");
        }
        if (report.step == ChildStep::kExec) absl::StrAppend(&failure, " (", exe, ")");
        break;
    }
  }
  report_r.Reset();
  if (failure.empty() && !isolation_reported) {
    failure = "sandbox: the child exited during setup without saying why";
  }
  if (!failure.empty()) {
    kill_group();
    RETURN_IF_ERROR(reap());
    return absl::FailedPreconditionError(failure);
  }

  const auto deadline =
      start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                  std::chrono::duration<double>(options.wall_seconds));
  // After the child exits, descendants that still hold the pipes are killed; this bounds
  // the wait for their end-of-file should one have escaped the group anyway.
  constexpr auto kDrainGrace = std::chrono::seconds(1);
  std::chrono::steady_clock::time_point drain_deadline{};
  bool exited = false;
  SandboxLimit killed_for = SandboxLimit::kNone;
  Stream streams[2] = {{&out_r, &result.stdout_text, &result.stdout_truncated},
                       {&err_r, &result.stderr_text, &result.stderr_truncated}};
  std::vector<char> buffer(64 * 1024);
  while (true) {
    if (!exited) {
      // WNOWAIT keeps the exited child a zombie, so its pid (the group id) cannot be
      // reused before the group kill below.
      siginfo_t info;
      std::memset(&info, 0, sizeof(info));
      if (waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) != 0 &&
          errno != EINTR) {
        int e = errno;
        kill_group();
        reap().IgnoreError();
        return SyscallError("waitid", e);
      }
      if (info.si_pid == pid) {
        exited = true;
        killpg(pid, SIGKILL);
        drain_deadline = std::chrono::steady_clock::now() + kDrainGrace;
      }
    }
    const bool open = out_r.get() >= 0 || err_r.get() >= 0;
    const auto now = std::chrono::steady_clock::now();
    if (exited && (!open || now >= drain_deadline)) break;
    if (!exited && now >= deadline) {
      killed_for = SandboxLimit::kWall;
      kill_group();
      exited = true;
      drain_deadline = now + kDrainGrace;
      continue;
    }
    pollfd pfds[2];
    int nfds = 0;
    for (const Stream& s : streams) {
      if (s.fd->get() >= 0) pfds[nfds++] = {s.fd->get(), POLLIN, 0};
    }
    // Short ticks only matter once the streams are closed but the child still runs.
    auto until = exited ? drain_deadline : deadline;
    auto wait_ms = std::chrono::duration_cast<std::chrono::milliseconds>(until - now).count() + 1;
    int timeout_ms = static_cast<int>(std::min<int64_t>(wait_ms, 50));
    int ready = poll(pfds, static_cast<nfds_t>(nfds), timeout_ms);
    if (ready < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      kill_group();
      reap().IgnoreError();
      return SyscallError("poll", e);
    }
    for (Stream& s : streams) {
      if (s.fd->get() < 0) continue;
      while (true) {
        ssize_t n = read(s.fd->get(), buffer.data(), buffer.size());
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (n <= 0) {
          // End-of-file, or a read error that leaves nothing more to read either way.
          s.fd->Reset();
          break;
        }
        size_t room = static_cast<size_t>(options.max_output_bytes) - s.text->size();
        size_t keep = std::min(room, static_cast<size_t>(n));
        s.text->append(buffer.data(), keep);
        if (keep < static_cast<size_t>(n)) {
          *s.truncated = true;
          if (options.kill_on_output_limit && killed_for == SandboxLimit::kNone) {
            killed_for = SandboxLimit::kOutput;
            kill_group();
          }
        }
      }
    }
  }
  out_r.Reset();
  err_r.Reset();
  RETURN_IF_ERROR(reap());
  RETURN_IF_ERROR(work_dir.Remove());
  result.wall_seconds = SecondsSince(start);
  result.cpu_seconds = static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
                       1e-6 * static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec);
  if (WIFEXITED(wait_status)) result.exit_code = WEXITSTATUS(wait_status);
  if (WIFSIGNALED(wait_status)) result.term_signal = WTERMSIG(wait_status);

  result.limit_hit = ClassifyLimit(result, killed_for, options);
  return result;
}

}  // namespace lightrl
