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
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "common/status.h"

namespace lightrl {
namespace {

// The program's working directory inside the private filesystem.
constexpr const char* kPrivateWorkDir = "/sandbox";
// Files and directories the private tmpfs may hold.
constexpr int kMaxPrivateInodes = 16384;

thread_local const std::atomic<bool>* current_cancel_flag = nullptr;
const std::atomic<bool>* CurrentCancelFlag() { return current_cancel_flag; }

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

// Child-to-parent reports over a close-on-exec pipe that only the sandbox's own code
// holds (the program's copy closes at execve). kExecStarted: the program is running;
// kExited: its wait status, from the process that reaped it.
enum class ReportKind : int32_t { kIsolation, kUnshareRefused, kFailed, kExecStarted, kExited };
enum class ChildStep : int32_t {
  kNone,
  kSetpgid,
  kDupFds,
  kCloseFds,
  kChdir,
  kJoinCgroup,
  kDropPrivileges,
  kUnshare,
  kIdMap,
  kMount,
  kWriteFile,
  kFork,
  kMountProc,
  kPivotRoot,
  kSetrlimit,
  kNoNewPrivs,
  kParentDeath,
  kOomScore,
  kSeccomp,
  kExec,
};
struct ChildReport {
  ReportKind kind;
  ChildStep step;
  int32_t value;  // errno for failures, the NetworkIsolation for kIsolation, a wait status
  int32_t index;  // the filesystem entry a kMount/kWriteFile failure is about, the
                  // program's CPU milliseconds for kExited, else -1
};

const char* ChildStepName(ChildStep step) {
  switch (step) {
    case ChildStep::kNone: return "none";
    case ChildStep::kSetpgid: return "setpgid";
    case ChildStep::kDupFds: return "dup2 of stdin/stdout/stderr";
    case ChildStep::kCloseFds: return "closing inherited file descriptors";
    case ChildStep::kChdir: return "chdir to the working directory";
    case ChildStep::kJoinCgroup: return "joining the sandbox's cgroup (write to cgroup.procs)";
    case ChildStep::kDropPrivileges: return "setgroups/setresgid/setresuid";
    case ChildStep::kUnshare: return "unshare of the user/mount/pid(/network) namespaces";
    case ChildStep::kIdMap: return "writing /proc/self/{setgroups,uid_map,gid_map}";
    case ChildStep::kMount: return "building the private filesystem";
    case ChildStep::kWriteFile: return "writing the program's files into the private filesystem";
    case ChildStep::kFork: return "fork";
    case ChildStep::kMountProc: return "mount of a fresh /proc";
    case ChildStep::kPivotRoot: return "pivot_root into the private filesystem";
    case ChildStep::kSetrlimit: return "setrlimit";
    case ChildStep::kNoNewPrivs: return "prctl(PR_SET_NO_NEW_PRIVS)";
    case ChildStep::kParentDeath: return "prctl(PR_SET_PDEATHSIG)";
    case ChildStep::kOomScore: return "writing /proc/self/oom_score_adj";
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
  Fd(Fd&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
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

// One entry of the private filesystem, created below the new root in order.
enum class EntryKind { kDir, kBindReadOnly, kBindFileReadOnly, kBindDevice, kSymlink, kFile };
struct FsEntry {
  EntryKind kind;
  std::string path;    // absolute, below the new root
  std::string source;  // host path (binds), link text (symlinks)
  mode_t mode = 0755;
  int memfd = -1;      // kFile: its contents
};

// Everything the child needs, prepared before fork: after fork in a threaded process the
// child may only make async-signal-safe calls, so it must not allocate.
struct ChildPlan {
  const char* exe_path;
  char* const* argv;
  char* const* envp;
  const char* work_dir;  // chdir target of the program (inside the new root when private)
  int stdin_fd, stdout_fd, stderr_fd, report_fd;
  const int* cgroup_procs_fds;  // write "0" to join; -1 ends the list
  bool drop_privileges;
  uid_t uid;
  gid_t gid;
  pid_t parent_pid;
  NetworkIsolation isolation;
  bool private_filesystem;
  const char* new_root;
  const char* tmpfs_data;
  const char* uid_map;
  const char* gid_map;
  const FsEntry* entries;
  size_t num_entries;
  rlim_t max_processes;
  const SandboxOptions* options;
  const sock_fprog* base_filter;
  const sock_fprog* network_filter;
};

void ChildWrite(int fd, ReportKind kind, ChildStep step, int32_t value, int32_t index = -1) {
  ChildReport report{kind, step, value, index};
  ssize_t n;
  do {
    n = write(fd, &report, sizeof(report));
  } while (n < 0 && errno == EINTR);
}

[[noreturn]] void ChildFail(int fd, ChildStep step, int err, int32_t index = -1) {
  ChildWrite(fd, ReportKind::kFailed, step, err, index);
  _exit(127);
}

bool SetLimit(int resource, rlim_t soft, rlim_t hard) {
  struct rlimit limit;
  limit.rlim_cur = soft;
  limit.rlim_max = hard;
  return setrlimit(resource, &limit) == 0;
}

bool WriteString(const char* path, const char* text) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  size_t len = std::strlen(text);
  ssize_t n;
  do {
    n = write(fd, text, len);
  } while (n < 0 && errno == EINTR);
  int e = errno;
  close(fd);
  errno = e;
  return n == static_cast<ssize_t>(len);
}

// A read-only bind of `source` at `target`. The remount must keep the flags the kernel
// locked on the original mount (a user namespace may only add restrictions).
bool BindReadOnly(const char* source, const char* target, bool devices) {
  if (mount(source, target, nullptr, MS_BIND | MS_REC, nullptr) != 0) return false;
  struct statfs st;
  if (statfs(target, &st) != 0) return false;
  unsigned long flags = MS_BIND | MS_REMOUNT | MS_NOSUID;
  if (!devices) flags |= MS_RDONLY | MS_NODEV;
  if (st.f_flags & ST_RDONLY) flags |= MS_RDONLY;
  if (st.f_flags & ST_NODEV) flags |= MS_NODEV;
  if (st.f_flags & ST_NOEXEC) flags |= MS_NOEXEC;
  if (st.f_flags & ST_NOATIME) flags |= MS_NOATIME;
  if (st.f_flags & ST_NODIRATIME) flags |= MS_NODIRATIME;
  if (st.f_flags & ST_RELATIME) flags |= MS_RELATIME;
  return mount(nullptr, target, nullptr, flags, nullptr) == 0;
}

bool CopyFromMemfd(int memfd, int out) {
  char buffer[8192];
  off_t offset = 0;
  while (true) {
    ssize_t n = pread(memfd, buffer, sizeof(buffer), offset);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return false;
    if (n == 0) return true;
    offset += n;
    for (ssize_t done = 0; done < n;) {
      ssize_t w = write(out, buffer + done, static_cast<size_t>(n - done));
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) return false;
      done += w;
    }
  }
}

// The tmpfs root and everything in it, built in the new mount namespace (so nothing of
// it is ever visible on the host, and it all goes when the namespace's last process does).
void BuildPrivateFilesystem(const ChildPlan& plan, int rep) {
  // Nothing mounted below may propagate back to the host's mount namespace.
  if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    ChildFail(rep, ChildStep::kMount, errno);
  }
  if (mount("tmpfs", plan.new_root, "tmpfs", MS_NOSUID | MS_NODEV, plan.tmpfs_data) != 0) {
    ChildFail(rep, ChildStep::kMount, errno);
  }
  umask(0);
  for (size_t i = 0; i < plan.num_entries; ++i) {
    const FsEntry& e = plan.entries[i];
    const int32_t index = static_cast<int32_t>(i);
    const char* path = e.path.c_str();
    bool ok = true;
    switch (e.kind) {
      case EntryKind::kDir:
        ok = mkdir(path, e.mode) == 0;
        break;
      case EntryKind::kBindReadOnly:
        ok = mkdir(path, 0755) == 0 && BindReadOnly(e.source.c_str(), path, false);
        break;
      case EntryKind::kBindFileReadOnly:
      case EntryKind::kBindDevice: {
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        ok = fd >= 0 && close(fd) == 0 &&
             BindReadOnly(e.source.c_str(), path, e.kind == EntryKind::kBindDevice);
        break;
      }
      case EntryKind::kSymlink:
        ok = symlink(e.source.c_str(), path) == 0;
        break;
      case EntryKind::kFile: {
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, e.mode);
        if (fd < 0 || !CopyFromMemfd(e.memfd, fd)) ChildFail(rep, ChildStep::kWriteFile, errno, index);
        close(fd);
        break;
      }
    }
    if (!ok) ChildFail(rep, ChildStep::kMount, errno, index);
  }
  umask(022);
}

// The program itself: limits, the last hardening, execve. `ready_fd` is closed by
// execve; a failure writes its report to `rep` and a byte to `ready_fd`.
[[noreturn]] void RunProgram(const ChildPlan& plan, int rep, int ready_fd, pid_t init_pid,
                             bool own_userns, bool own_netns) {
  auto fail = [&](ChildStep step, int err) {
    char byte = 1;
    ssize_t ignored = write(ready_fd, &byte, 1);
    (void)ignored;
    ChildFail(rep, step, err);
  };
  if (chdir(plan.work_dir) != 0) fail(ChildStep::kChdir, errno);
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
    fail(ChildStep::kSetrlimit, errno);
  }
  // Counted in the sandbox's own user namespace (the setup processes included), so only
  // this sandbox's processes meet the modest limit.
  if (own_userns && !SetLimit(RLIMIT_NPROC, plan.max_processes, plan.max_processes)) {
    fail(ChildStep::kSetrlimit, errno);
  }
  // Under a memory cgroup the OOM killer then takes the program (or its children), never
  // the init process that reports how it ended.
  if (!WriteString("/proc/self/oom_score_adj", "1000")) fail(ChildStep::kOomScore, errno);
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) fail(ChildStep::kNoNewPrivs, errno);
  if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) fail(ChildStep::kParentDeath, errno);
  if (getppid() != init_pid) _exit(127);

  const bool need_network_filter = !own_netns;
  if (kHaveSeccompArch) {
    const sock_fprog* filter = need_network_filter ? plan.network_filter : plan.base_filter;
    // With the namespace in place the filter only hardens (keeps the process group
    // whole, blocks ptrace), so a kernel without seccomp does not stop the run.
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, filter, 0, 0) != 0 && need_network_filter) {
      fail(ChildStep::kSeccomp, errno);
    }
  } else if (need_network_filter) {
    fail(ChildStep::kSeccomp, ENOSYS);
  }
  ChildWrite(rep, ReportKind::kIsolation, ChildStep::kNone,
             static_cast<int32_t>(own_netns ? NetworkIsolation::kNamespace
                                            : NetworkIsolation::kSeccomp));
  execve(plan.exe_path, plan.argv, plan.envp);
  fail(ChildStep::kExec, errno);
  _exit(127);
}

// Starts the program and reaps until it exits, then reports its wait status. Run by the
// pid namespace's init (whose exit kills every process left in the namespace), or without
// namespaces by the setup process itself.
[[noreturn]] void RunInit(const ChildPlan& plan, int rep, bool own_userns, bool own_netns) {
  int ready[2];
  if (pipe2(ready, O_CLOEXEC) != 0) ChildFail(rep, ChildStep::kFork, errno);
  const pid_t init_pid = getpid();
  pid_t program = fork();
  if (program < 0) ChildFail(rep, ChildStep::kFork, errno);
  if (program == 0) {
    close(ready[0]);
    RunProgram(plan, rep, ready[1], init_pid, own_userns, own_netns);
  }
  close(ready[1]);
  // End-of-file without a byte: execve succeeded (the pipe is close-on-exec).
  char byte;
  ssize_t n;
  do {
    n = read(ready[0], &byte, 1);
  } while (n < 0 && errno == EINTR);
  close(ready[0]);
  if (n == 0) ChildWrite(rep, ReportKind::kExecStarted, ChildStep::kNone, 0);
  for (int i = 0; i < 3; ++i) close(i);
  while (true) {
    int status = 0;
    struct rusage usage;
    pid_t reaped = wait4(-1, &status, 0, &usage);
    if (reaped < 0 && errno == EINTR) continue;
    if (reaped < 0) _exit(126);
    if (reaped == program) {
      // The program's CPU (its waited-for descendants included), in milliseconds: the
      // parent kills this process's group at once and may not see it through wait4.
      const int64_t cpu_ms =
          (static_cast<int64_t>(usage.ru_utime.tv_sec) + usage.ru_stime.tv_sec) * 1000 +
          (static_cast<int64_t>(usage.ru_utime.tv_usec) + usage.ru_stime.tv_usec) / 1000;
      ChildWrite(rep, ReportKind::kExited, ChildStep::kNone, status,
                 static_cast<int32_t>(std::min<int64_t>(cpu_ms, INT32_MAX)));
      _exit(0);
    }
  }
}

// Closes every descriptor above the report pipe (the parent's sockets, other runs' pipes).
void CloseInheritedFds(int rep) {
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
  // Joined before anything else (and before the dup2s, which may clobber the cgroup
  // files' descriptors), while still privileged, so every process of the run
  // (the setup, init and the program's descendants) is counted and limited together.
  for (const int* fd = plan.cgroup_procs_fds; *fd >= 0; ++fd) {
    ssize_t n;
    do {
      n = write(*fd, "0", 1);
    } while (n < 0 && errno == EINTR);
    if (n != 1) ChildFail(rep, ChildStep::kJoinCgroup, errno);
  }
  if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0 || dup3(rep, 3, O_CLOEXEC) < 0) {
    ChildFail(rep, ChildStep::kDupFds, errno);
  }
  rep = 3;
  // A parent that ignores SIGPIPE (servers do) would pass that on through execve.
  struct sigaction dfl;
  std::memset(&dfl, 0, sizeof(dfl));
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) sigaction(sig, &dfl, nullptr);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);

  if (setpgid(0, 0) != 0) ChildFail(rep, ChildStep::kSetpgid, errno);
  if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) {
    ChildFail(rep, ChildStep::kParentDeath, errno);
  }
  if (getppid() != plan.parent_pid) _exit(127);
  if (!plan.private_filesystem && chdir(plan.work_dir) != 0) {
    ChildFail(rep, ChildStep::kChdir, errno);
  }
  if (plan.drop_privileges) {
    if (setgroups(0, nullptr) != 0 || setresgid(plan.gid, plan.gid, plan.gid) != 0 ||
        setresuid(plan.uid, plan.uid, plan.uid) != 0) {
      ChildFail(rep, ChildStep::kDropPrivileges, errno);
    }
    // Credential changes clear the death signal.
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) {
      ChildFail(rep, ChildStep::kParentDeath, errno);
    }
    if (getppid() != plan.parent_pid) _exit(127);
  }

  const bool want_netns = plan.isolation != NetworkIsolation::kSeccomp;
  if (plan.private_filesystem) {
    // Dropping root made the process non-dumpable, which leaves its /proc/self files
    // root's and the id maps unwritable. Other sandboxes' programs, the only other
    // processes of this uid, can neither see this one (pid namespace) nor trace it
    // (seccomp), and execve replaces the memory it still shares with the parent.
    if (plan.drop_privileges && prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) != 0) {
      ChildFail(rep, ChildStep::kIdMap, errno);
    }
    int flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | (want_netns ? CLONE_NEWNET : 0);
    if (unshare(flags) != 0) ChildFail(rep, ChildStep::kUnshare, errno);
    if (!WriteString("/proc/self/setgroups", "deny") ||
        !WriteString("/proc/self/uid_map", plan.uid_map) ||
        !WriteString("/proc/self/gid_map", plan.gid_map)) {
      ChildFail(rep, ChildStep::kIdMap, errno);
    }
    // The program's files come from memory files of the parent, so inherited
    // descriptors are closed only after they are written (a few milliseconds).
    BuildPrivateFilesystem(plan, rep);
    CloseInheritedFds(rep);
    // The first child is the new pid namespace's init.
    pid_t init = fork();
    if (init < 0) ChildFail(rep, ChildStep::kFork, errno);
    if (init == 0) {
      if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) {
        ChildFail(rep, ChildStep::kParentDeath, errno);
      }
      // A fresh proc of this pid namespace, mounted before the host's /proc leaves the
      // view (the kernel only allows it while a full proc is visible).
      char proc_path[4096];
      size_t root_len = std::strlen(plan.new_root);
      if (root_len + 6 > sizeof(proc_path)) ChildFail(rep, ChildStep::kMountProc, ENAMETOOLONG);
      std::memcpy(proc_path, plan.new_root, root_len);
      std::memcpy(proc_path + root_len, "/proc", 6);
      if (mount("proc", proc_path, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0) {
        ChildFail(rep, ChildStep::kMountProc, errno);
      }
      if (chdir(plan.new_root) != 0 || syscall(SYS_pivot_root, ".", ".") != 0 ||
          umount2(".", MNT_DETACH) != 0 || chdir("/") != 0) {
        ChildFail(rep, ChildStep::kPivotRoot, errno);
      }
      RunInit(plan, rep, /*own_userns=*/true, want_netns);
    }
    for (int i = 0; i < 3; ++i) close(i);
    int status = 0;
    while (waitpid(init, &status, 0) < 0) {
      if (errno != EINTR) _exit(126);
    }
    _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
  }

  CloseInheritedFds(rep);
  bool own_userns = false;
  if (want_netns) {
    if (unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0) {
      own_userns = true;
    } else if (plan.isolation == NetworkIsolation::kNamespace) {
      ChildFail(rep, ChildStep::kUnshare, errno);
    } else {
      ChildWrite(rep, ReportKind::kUnshareRefused, ChildStep::kUnshare, errno);
    }
  }
  RunInit(plan, rep, own_userns, own_userns);
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

// --- the per-run cgroup ---

// Where this process's memory and pids cgroups are (v1: one hierarchy each; v2: one
// directory for both), found once from /proc/self/cgroup.
struct CgroupLayout {
  bool v2 = false;
  std::string memory_dir;
  std::string pids_dir;
  std::string unavailable;  // why there is no usable cgroup, when there is none
};

bool PathExists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

absl::StatusOr<std::string> ReadSmallFile(const std::string& path) {
  Fd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return SyscallError(absl::StrCat("open ", path), errno);
  std::string text;
  char buffer[4096];
  while (true) {
    ssize_t n = read(fd.get(), buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return SyscallError(absl::StrCat("read ", path), errno);
    if (n == 0) return text;
    text.append(buffer, static_cast<size_t>(n));
  }
}

absl::Status WriteSmallFile(const std::string& path, absl::string_view text) {
  Fd fd(open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (fd.get() < 0) return SyscallError(absl::StrCat("open ", path), errno);
  return WriteAll(fd.get(), text, path);
}

CgroupLayout DetectCgroups() {
  CgroupLayout layout;
  absl::StatusOr<std::string> self = ReadSmallFile("/proc/self/cgroup");
  if (!self.ok()) {
    layout.unavailable = std::string(self.status().message());
    return layout;
  }
  std::string v1_memory, v1_pids, v2_path;
  bool have_v1_memory = false, have_v1_pids = false, have_v2 = false;
  for (absl::string_view line : absl::StrSplit(*self, '\n', absl::SkipEmpty())) {
    std::vector<absl::string_view> parts = absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (parts.size() != 3) continue;
    if (parts[1].empty()) {
      have_v2 = true;
      v2_path = std::string(parts[2]);
    }
    for (absl::string_view controller : absl::StrSplit(parts[1], ',')) {
      if (controller == "memory") {
        have_v1_memory = true;
        v1_memory = std::string(parts[2]);
      } else if (controller == "pids") {
        have_v1_pids = true;
        v1_pids = std::string(parts[2]);
      }
    }
  }
  // A directory of ours when the hierarchy shows it, else the hierarchy's root (a
  // container's cgroup namespace may show paths that are not under the mount).
  auto under = [](const std::string& mount, const std::string& path) {
    std::string dir = absl::StrCat(mount, path == "/" ? "" : path);
    return PathExists(dir) ? dir : mount;
  };
  if (have_v1_memory && have_v1_pids && PathExists("/sys/fs/cgroup/memory/cgroup.procs") &&
      PathExists("/sys/fs/cgroup/pids/cgroup.procs")) {
    layout.memory_dir = under("/sys/fs/cgroup/memory", v1_memory);
    layout.pids_dir = under("/sys/fs/cgroup/pids", v1_pids);
    return layout;
  }
  for (const char* mount : {"/sys/fs/cgroup", "/sys/fs/cgroup/unified"}) {
    const std::string controllers_file = absl::StrCat(mount, "/cgroup.controllers");
    if (!have_v2 || !PathExists(controllers_file)) continue;
    const std::string dir = under(mount, v2_path);
    absl::StatusOr<std::string> controllers = ReadSmallFile(absl::StrCat(dir, "/cgroup.controllers"));
    if (!controllers.ok()) continue;
    std::vector<absl::string_view> names = absl::StrSplit(*controllers, absl::ByAnyChar(" \n"));
    auto has = [&](absl::string_view c) { return std::find(names.begin(), names.end(), c) != names.end(); };
    if (!has("memory") || !has("pids")) continue;
    // Children get the controllers only through the parent's subtree_control, which the
    // kernel refuses while the parent itself holds processes (then there is none to use).
    if (!WriteSmallFile(absl::StrCat(dir, "/cgroup.subtree_control"), "+memory +pids").ok()) {
      continue;
    }
    layout.v2 = true;
    layout.memory_dir = dir;
    layout.pids_dir = dir;
    return layout;
  }
  layout.unavailable =
      "no writable cgroup with the memory and pids controllers (v1 memory+pids hierarchies, "
      "or a v2 directory whose subtree_control can enable them)";
  return layout;
}

const CgroupLayout& Cgroups() {
  static const CgroupLayout* layout = new CgroupLayout(DetectCgroups());
  return *layout;
}

// One run's cgroup (one directory per hierarchy), limiting the memory and the number of
// processes of everything in the sandbox together. Removed by Destroy(), which first
// kills whatever is still inside.
class RunCgroup {
 public:
  RunCgroup() = default;
  RunCgroup(const RunCgroup&) = delete;
  RunCgroup& operator=(const RunCgroup&) = delete;
  ~RunCgroup() { Destroy().IgnoreError(); }

  // kUnavailable when this machine has no cgroup the sandbox may create.
  absl::Status Create(const SandboxOptions& options) {
    const CgroupLayout& layout = Cgroups();
    if (layout.memory_dir.empty()) return absl::UnavailableError(layout.unavailable);
    v2_ = layout.v2;
    static std::atomic<uint64_t> counter{0};
    const std::string name = absl::StrCat("lightrl-sandbox-", getpid(), "-", counter++);
    std::vector<std::string> parents = {layout.memory_dir};
    if (layout.pids_dir != layout.memory_dir) parents.push_back(layout.pids_dir);
    for (const std::string& parent : parents) {
      std::string dir = absl::StrCat(parent, "/", name);
      if (mkdir(dir.c_str(), 0755) != 0) {
        if (errno == EACCES || errno == EPERM || errno == EROFS) {
          return absl::UnavailableError(absl::StrCat("mkdir ", dir, ": ", ErrnoText(errno)));
        }
        return SyscallError(absl::StrCat("mkdir ", dir), errno);
      }
      dirs_.push_back(dir);
    }
    const std::string& memory = dirs_.front();
    const std::string& pids = dirs_.back();
    const std::string bytes = absl::StrCat(options.memory_bytes);
    // The setup process and the namespace's init count too.
    const std::string max_pids = absl::StrCat(options.max_processes + 2);
    if (v2_) {
      RETURN_IF_ERROR(WriteSmallFile(memory + "/memory.max", bytes));
      if (PathExists(memory + "/memory.swap.max")) {
        RETURN_IF_ERROR(WriteSmallFile(memory + "/memory.swap.max", "0"));
      }
    } else {
      RETURN_IF_ERROR(WriteSmallFile(memory + "/memory.limit_in_bytes", bytes));
      if (PathExists(memory + "/memory.memsw.limit_in_bytes")) {
        RETURN_IF_ERROR(WriteSmallFile(memory + "/memory.memsw.limit_in_bytes", bytes));
      }
    }
    RETURN_IF_ERROR(WriteSmallFile(pids + "/pids.max", max_pids));
    for (const std::string& dir : dirs_) {
      std::string procs = dir + "/cgroup.procs";
      int fd = open(procs.c_str(), O_WRONLY | O_CLOEXEC);
      if (fd < 0) return SyscallError(absl::StrCat("open ", procs), errno);
      procs_fds_.push_back(fd);
    }
    procs_fds_.push_back(-1);
    return absl::OkStatus();
  }

  // -1-terminated, for the child to join.
  const int* procs_fds() const { return procs_fds_.data(); }

  // Whether the kernel's OOM killer acted inside the cgroup.
  bool OomKilled() const {
    if (dirs_.empty()) return false;
    absl::StatusOr<std::string> text = ReadSmallFile(
        dirs_.front() + (v2_ ? "/memory.events" : "/memory.oom_control"));
    if (!text.ok()) return false;
    for (absl::string_view line : absl::StrSplit(*text, '\n')) {
      int64_t count = 0;
      if (absl::ConsumePrefix(&line, "oom_kill ") && absl::SimpleAtoi(line, &count)) {
        return count > 0;
      }
    }
    return false;
  }

  // Kills every process left in the cgroup and removes it.
  absl::Status Destroy() {
    for (int fd : procs_fds_) {
      if (fd >= 0) close(fd);
    }
    procs_fds_.clear();
    absl::Status status;
    for (const std::string& dir : dirs_) {
      bool removed = false;
      for (int attempt = 0; attempt < 400 && !removed; ++attempt) {
        absl::StatusOr<std::string> procs = ReadSmallFile(dir + "/cgroup.procs");
        if (!procs.ok()) {
          status.Update(procs.status());
          break;
        }
        for (absl::string_view line : absl::StrSplit(*procs, '\n', absl::SkipEmpty())) {
          int pid = 0;
          if (absl::SimpleAtoi(line, &pid) && pid > 0) kill(pid, SIGKILL);
        }
        if (rmdir(dir.c_str()) == 0) {
          removed = true;
        } else if (errno != EBUSY) {
          status.Update(SyscallError(absl::StrCat("rmdir ", dir), errno));
          break;
        } else {
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
      }
      if (!removed && status.ok()) {
        status = absl::InternalError(absl::StrCat("sandbox: rmdir ", dir,
                                                  " still busy after killing its processes"));
      }
    }
    dirs_.clear();
    return status;
  }

 private:
  bool v2_ = false;
  std::vector<std::string> dirs_;  // memory first, then pids when it is another hierarchy
  std::vector<int> procs_fds_;
};

bool ReportsAllocationFailure(absl::string_view err) {
  return absl::StrContains(err, "MemoryError") || absl::StrContains(err, "bad_alloc") ||
         absl::StrContains(err, "Cannot allocate memory") ||
         absl::StrContains(err, "out of memory");
}

// The limit behind a finished run. Only the wall and output kills are known first hand;
// the rest is read from how the child ended.
SandboxLimit ClassifyLimit(const SandboxResult& r, SandboxLimit killed_for, bool oom_killed,
                           const SandboxOptions& options) {
  const bool failed = r.exit_code != 0;
  if (killed_for != SandboxLimit::kNone) return killed_for;
  // The cgroup's OOM killer took a process of the sandbox (SIGKILL to it, or a failure of
  // the program that waited for it).
  if (oom_killed && !r.Succeeded()) return SandboxLimit::kMemory;
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

SandboxCancelScope::SandboxCancelScope(const std::atomic<bool>* cancelled)
    : previous_(current_cancel_flag) {
  current_cancel_flag = cancelled;
}

SandboxCancelScope::~SandboxCancelScope() { current_cancel_flag = previous_; }

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
  if (disk_bytes < (int64_t{1} << 20)) return bad("disk_bytes", disk_bytes, ">= 1 MiB");
  if (max_processes_without_cgroup < 1) {
    return bad("max_processes_without_cgroup", max_processes_without_cgroup, ">= 1");
  }
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
  const uid_t uid = drop_privileges ? options.unprivileged_uid : geteuid();
  const gid_t gid = drop_privileges ? options.unprivileged_gid : getegid();

  SandboxResult result;
  RunCgroup cgroup;
  const absl::Status cgroup_status = cgroup.Create(options);
  if (!cgroup_status.ok() && (!absl::IsUnavailable(cgroup_status) || options.require_cgroup)) {
    return absl::Status(cgroup_status.code(),
                        absl::StrCat("sandbox: no cgroup to limit the run's memory: ",
                                     cgroup_status.message()));
  }
  result.memory_limit_per_sandbox = cgroup_status.ok();
  const int no_cgroup_fds[] = {-1};

  // Private filesystem: nothing is written on the host; the files travel as memory files
  // and the child writes them into its own tmpfs. Otherwise a host directory.
  TempDir work_dir;
  std::vector<FsEntry> entries;
  std::vector<Fd> file_fds;
  const std::string& root = options.temp_root;
  if (options.private_filesystem) {
    auto add = [&](EntryKind kind, const std::string& path, std::string source = "",
                   mode_t mode = 0755) {
      entries.push_back(FsEntry{kind, root + path, std::move(source), mode, -1});
    };
    for (const char* dir : {"/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"}) {
      struct stat st;
      if (lstat(dir, &st) != 0) continue;
      if (S_ISLNK(st.st_mode)) {
        char target[4096];
        ssize_t n = readlink(dir, target, sizeof(target) - 1);
        if (n < 0) return SyscallError(absl::StrCat("readlink ", dir), errno);
        add(EntryKind::kSymlink, dir, std::string(target, static_cast<size_t>(n)));
      } else if (S_ISDIR(st.st_mode)) {
        add(EntryKind::kBindReadOnly, dir, dir);
      }
    }
    add(EntryKind::kDir, "/etc");
    // The loader's cache only: no passwd, hosts or anything else of the host's /etc.
    if (PathExists("/etc/ld.so.cache")) {
      add(EntryKind::kBindFileReadOnly, "/etc/ld.so.cache", "/etc/ld.so.cache");
    }
    add(EntryKind::kDir, "/dev");
    for (const char* dev : {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"}) {
      if (PathExists(dev)) add(EntryKind::kBindDevice, dev, dev);
    }
    add(EntryKind::kDir, "/dev/shm", "", 01777);
    add(EntryKind::kDir, "/tmp", "", 01777);
    add(EntryKind::kDir, "/proc", "", 0555);
    add(EntryKind::kDir, kPrivateWorkDir);
    for (const auto& [name, contents] : command.files) {
      Fd created(static_cast<int>(syscall(SYS_memfd_create, "sandbox-file", MFD_CLOEXEC)));
      if (created.get() < 0) return SyscallError("memfd_create for a program file", errno);
      // Above 3, which the child overwrites with its stdio and report pipe first.
      Fd fd(fcntl(created.get(), F_DUPFD_CLOEXEC, 4));
      if (fd.get() < 0) return SyscallError("fcntl F_DUPFD_CLOEXEC of a memory file", errno);
      RETURN_IF_ERROR(WriteAll(fd.get(), contents, absl::StrCat("memory file for ", name)));
      entries.push_back(FsEntry{EntryKind::kFile, absl::StrCat(root, kPrivateWorkDir, "/", name),
                                "", 0644, fd.get()});
      file_fds.push_back(std::move(fd));
    }
  } else {
    RETURN_IF_ERROR(work_dir.Create(root));
    if (drop_privileges && chown(work_dir.path().c_str(), uid, gid) != 0) {
      return SyscallError(absl::StrCat("chown ", work_dir.path()), errno);
    }
    for (const auto& [name, contents] : command.files) {
      std::string file_path = absl::StrCat(work_dir.path(), "/", name);
      Fd fd(open(file_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644));
      if (fd.get() < 0) return SyscallError(absl::StrCat("create ", file_path), errno);
      RETURN_IF_ERROR(WriteAll(fd.get(), contents, file_path));
      if (drop_privileges && fchown(fd.get(), uid, gid) != 0) {
        return SyscallError(absl::StrCat("fchown ", file_path), errno);
      }
    }
  }
  const std::string program_dir = options.private_filesystem ? kPrivateWorkDir : work_dir.path();

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
                                          absl::StrCat("HOME=", program_dir)};
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
  // Inside, the program keeps its outside uid/gid number (not root, so execve drops the
  // namespace's capabilities).
  const std::string uid_map = absl::StrCat(uid, " ", uid, " 1\n");
  const std::string gid_map = absl::StrCat(gid, " ", gid, " 1\n");
  const std::string tmpfs_data =
      absl::StrCat("size=", options.disk_bytes, ",nr_inodes=", kMaxPrivateInodes, ",mode=0755");
  const int max_processes = result.memory_limit_per_sandbox
                                ? options.max_processes
                                : std::min(options.max_processes,
                                           options.max_processes_without_cgroup);

  ChildPlan plan;
  plan.exe_path = exe.c_str();
  plan.argv = argv_ptrs.data();
  plan.envp = envp_ptrs.data();
  plan.work_dir = program_dir.c_str();
  plan.stdin_fd = stdin_fd.get();
  plan.stdout_fd = out_w.get();
  plan.stderr_fd = err_w.get();
  plan.report_fd = report_w.get();
  plan.cgroup_procs_fds = result.memory_limit_per_sandbox ? cgroup.procs_fds() : no_cgroup_fds;
  plan.drop_privileges = drop_privileges;
  plan.uid = uid;
  plan.gid = gid;
  plan.parent_pid = getpid();
  plan.isolation = options.network_isolation;
  plan.private_filesystem = options.private_filesystem;
  plan.new_root = root.c_str();
  plan.tmpfs_data = tmpfs_data.c_str();
  plan.uid_map = uid_map.c_str();
  plan.gid_map = gid_map.c_str();
  plan.entries = entries.data();
  plan.num_entries = entries.size();
  // The setup process and init are in the sandbox's user namespace too.
  plan.max_processes = static_cast<rlim_t>(max_processes + (options.private_filesystem ? 2 : 1));
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
  file_fds.clear();

  bool reaped = false;
  int wait_status = 0;
  struct rusage usage;
  std::memset(&usage, 0, sizeof(usage));
  // Killing the setup process's group reaches init and the program; init's death takes
  // the rest of the pid namespace, and the cgroup's removal anything else.
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
  auto abandon = [&](absl::Status status) -> absl::Status {
    kill_group();
    if (!reaped) reap().IgnoreError();
    cgroup.Destroy().IgnoreError();
    return status;
  };

  // Setup reports until the program starts (or setup fails).
  std::string failure;
  int unshare_errno = 0;
  bool started = false;
  bool report_open = true;
  bool program_exited = false;
  int program_status = 0;
  double program_cpu_seconds = 0;
  auto handle_report = [&](const ChildReport& report) {
    switch (report.kind) {
      case ReportKind::kIsolation:
        result.isolation = static_cast<NetworkIsolation>(report.value);
        break;
      case ReportKind::kUnshareRefused:
        unshare_errno = report.value;
        break;
      case ReportKind::kExecStarted:
        started = true;
        break;
      case ReportKind::kExited:
        program_exited = true;
        program_status = report.value;
        program_cpu_seconds = 1e-3 * report.index;
        break;
      case ReportKind::kFailed:
        failure = absl::StrCat("sandbox: ", ChildStepName(report.step), " failed in the child: ",
                               ErrnoText(report.value));
        if (report.index >= 0 && static_cast<size_t>(report.index) < entries.size()) {
          absl::StrAppend(&failure, " (at ", entries[report.index].path, ")");
        }
        if (report.step == ChildStep::kUnshare && options.private_filesystem) {
          absl::StrAppend(&failure,
                          "; the private filesystem needs user, mount and pid namespaces, "
                          "which this kernel refuses (set private_filesystem = false to run "
                          "without file isolation)");
        }
        if (report.step == ChildStep::kSeccomp) {
          absl::StrAppend(&failure, "; unshare(CLONE_NEWUSER|CLONE_NEWNET) was refused too (",
                          unshare_errno != 0 ? ErrnoText(unshare_errno) : "not tried",
                          "), so the network cannot be isolated and the program was not run");
        }
        if (report.step == ChildStep::kExec) absl::StrAppend(&failure, " (", exe, ")");
        break;
    }
  };
  // Reads whatever reports are ready; false on a read error. Clears report_open at EOF.
  auto read_reports = [&]() -> bool {
    ChildReport report;
    ssize_t n = read(report_r.get(), &report, sizeof(report));
    if (n < 0) return errno == EINTR || errno == EAGAIN;
    if (n == 0) {
      report_open = false;
      report_r.Reset();
      return true;
    }
    if (n == sizeof(report)) handle_report(report);
    return true;
  };
  while (report_open && !started && failure.empty()) {
    if (!read_reports()) return abandon(SyscallError("read of child reports", errno));
  }
  if (!started && failure.empty()) {
    failure = "sandbox: the child exited during setup without saying why";
  }
  if (!failure.empty()) return abandon(absl::FailedPreconditionError(failure));
  if (report_open) {
    int flags = fcntl(report_r.get(), F_GETFL);
    if (flags < 0 || fcntl(report_r.get(), F_SETFL, flags | O_NONBLOCK) != 0) {
      return abandon(SyscallError("fcntl O_NONBLOCK on the report pipe", errno));
    }
  }

  const auto deadline =
      start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                  std::chrono::duration<double>(options.wall_seconds));
  // After the program exits, whatever still holds the pipes is killed; this bounds the
  // wait for their end-of-file should one have escaped the group anyway.
  constexpr auto kDrainGrace = std::chrono::seconds(1);
  std::chrono::steady_clock::time_point drain_deadline{};
  bool exited = false;
  bool cancelled = false;
  SandboxLimit killed_for = SandboxLimit::kNone;
  Stream streams[2] = {{&out_r, &result.stdout_text, &result.stdout_truncated},
                       {&err_r, &result.stderr_text, &result.stderr_truncated}};
  std::vector<char> buffer(64 * 1024);
  const std::atomic<bool>* cancel_flag = CurrentCancelFlag();
  while (true) {
    if (!exited && (program_exited || !report_open)) {
      exited = true;
      kill_group();
      drain_deadline = std::chrono::steady_clock::now() + kDrainGrace;
    }
    const bool open = out_r.get() >= 0 || err_r.get() >= 0;
    const auto now = std::chrono::steady_clock::now();
    if (exited && (!open || now >= drain_deadline)) break;
    if (!exited && cancel_flag != nullptr && cancel_flag->load(std::memory_order_relaxed)) {
      cancelled = true;
      kill_group();
      exited = true;
      drain_deadline = now;
      continue;
    }
    if (!exited && now >= deadline) {
      killed_for = SandboxLimit::kWall;
      kill_group();
      exited = true;
      drain_deadline = now + kDrainGrace;
      continue;
    }
    pollfd pfds[3];
    int nfds = 0;
    for (const Stream& s : streams) {
      if (s.fd->get() >= 0) pfds[nfds++] = {s.fd->get(), POLLIN, 0};
    }
    if (report_open) pfds[nfds++] = {report_r.get(), POLLIN, 0};
    auto until = exited ? drain_deadline : deadline;
    auto wait_ms = std::chrono::duration_cast<std::chrono::milliseconds>(until - now).count() + 1;
    int timeout_ms = static_cast<int>(std::min<int64_t>(wait_ms, 50));
    int ready = poll(pfds, static_cast<nfds_t>(nfds), timeout_ms);
    if (ready < 0) {
      if (errno == EINTR) continue;
      return abandon(SyscallError("poll", errno));
    }
    while (report_open) {
      const bool was_exited = program_exited;
      if (!read_reports()) return abandon(SyscallError("read of child reports", errno));
      if (errno == EAGAIN || program_exited == was_exited) break;
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
  report_r.Reset();
  RETURN_IF_ERROR(reap());
  const bool oom_killed = cgroup.OomKilled();
  RETURN_IF_ERROR(cgroup.Destroy());
  if (!options.private_filesystem) RETURN_IF_ERROR(work_dir.Remove());
  if (cancelled) {
    return absl::CancelledError("sandbox: the run was cancelled by its caller and killed");
  }
  result.wall_seconds = SecondsSince(start);
  result.cpu_seconds = static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
                       1e-6 * static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec);
  result.cpu_seconds = std::max(result.cpu_seconds, program_cpu_seconds);
  result.private_filesystem = options.private_filesystem;
  if (program_exited) {
    if (WIFEXITED(program_status)) result.exit_code = WEXITSTATUS(program_status);
    if (WIFSIGNALED(program_status)) result.term_signal = WTERMSIG(program_status);
  } else {
    // Killed before init could report (a limit's kill takes the whole sandbox).
    result.term_signal = SIGKILL;
  }
  result.limit_hit = ClassifyLimit(result, killed_for, oom_killed, options);
  return result;
}

}  // namespace lightrl
