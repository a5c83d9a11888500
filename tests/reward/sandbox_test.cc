// The sandbox and the "code" reward against real processes (python3 and /bin/sh): limits,
// output capping, network isolation, clean-up, fork bombs and concurrency. Time bounds
// are generous on purpose: CI runs this on two loaded cores.
#include "reward/sandbox.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"
#include "reward/code_reward.h"
#include "reward/reward_function.h"

namespace lightrl {
namespace {

// A private temp_root, so a test can tell that nothing was left behind.
class ScratchRoot {
 public:
  ScratchRoot() {
    std::string tmpl = "/tmp/lightrl-sandbox-test-XXXXXX";
    EXPECT_NE(mkdtemp(tmpl.data()), nullptr) << std::strerror(errno);
    // The child may run as an unprivileged user, which must reach its directory.
    chmod(tmpl.c_str(), 0755);
    path_ = tmpl;
  }
  // Whatever a failing test left is cleared so that it does not pile up in /tmp.
  ~ScratchRoot() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }
  std::vector<std::string> Entries() const {
    std::vector<std::string> names;
    DIR* dir = opendir(path_.c_str());
    if (dir == nullptr) return names;
    while (struct dirent* e = readdir(dir)) {
      std::string name = e->d_name;
      if (name != "." && name != "..") names.push_back(name);
    }
    closedir(dir);
    return names;
  }

 private:
  std::string path_;
};

SandboxOptions TestOptions() {
  SandboxOptions options;
  options.wall_seconds = 20;
  options.cpu_seconds = 10;
  options.memory_bytes = int64_t{512} << 20;
  return options;
}

SandboxResult MustRun(const SandboxOptions& options, const SandboxCommand& command) {
  absl::StatusOr<SandboxResult> result = RunSandboxed(options, command);
  EXPECT_TRUE(result.ok()) << result.status();
  return result.ok() ? *std::move(result) : SandboxResult{};
}

SandboxResult RunPython(const SandboxOptions& options, const std::string& code,
                        const std::string& stdin_data = "") {
  SandboxCommand command;
  command.argv = {"python3", "main.py"};
  command.files["main.py"] = code;
  command.stdin_data = stdin_data;
  return MustRun(options, command);
}

std::string Describe(const SandboxResult& r) {
  return absl::StrCat("exit=", r.exit_code, " signal=", r.term_signal,
                      " limit=", SandboxLimitName(r.limit_hit), " wall=", r.wall_seconds,
                      " cpu=", r.cpu_seconds, " isolation=", NetworkIsolationName(r.isolation),
                      "\nstdout: ", r.stdout_text.substr(0, 2000),
                      "\nstderr: ", r.stderr_text.substr(0, 2000));
}

// A process is gone once it is absent or a zombie waiting for its reaper.
bool ProcessGone(int pid) {
  std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
  if (!stat) return true;
  std::string line;
  std::getline(stat, line);
  size_t paren = line.rfind(')');
  return paren == std::string::npos || paren + 2 >= line.size() || line[paren + 2] == 'Z' ||
         line[paren + 2] == 'X';
}

// Host processes (not zombies) whose command line has `token` as an argument; sandboxed
// processes live in their own pid namespace, so their printed pids mean nothing here.
int CountLiveProcessesWithArg(const std::string& token) {
  int count = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    int pid = 0;
    if (!absl::SimpleAtoi(entry.path().filename().string(), &pid)) continue;
    std::ifstream in(entry.path() / "cmdline", std::ios::binary);
    std::string cmdline((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    for (absl::string_view arg : absl::StrSplit(cmdline, '\0')) {
      if (arg == token && !ProcessGone(pid)) ++count;
    }
  }
  return count;
}

// Waits up to 10 s for every process with `token` to be gone.
bool AllGone(const std::string& token) {
  auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (CountLiveProcessesWithArg(token) > 0 && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return CountLiveProcessesWithArg(token) == 0;
}

// A TCP listener on 127.0.0.1 that the sandboxed program tries to reach.
class Listener {
 public:
  Listener() {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    EXPECT_GE(fd_, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(listen(fd_, 16), 0);
    socklen_t len = sizeof(addr);
    EXPECT_EQ(getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len), 0);
    port_ = ntohs(addr.sin_port);
  }
  ~Listener() { close(fd_); }
  int port() const { return port_; }
  // True when a connection is waiting (the listener never blocks).
  bool HasConnection() const {
    int c = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) return false;
    close(c);
    return true;
  }

 private:
  int fd_ = -1;
  int port_ = 0;
};

TEST(SandboxTest, FeedsStdinAndCapturesBothStreams) {
  std::string big(300000, 'a');
  SandboxResult r = RunPython(TestOptions(),
                              "import sys\n"
                              "data = sys.stdin.read()\n"
                              "first, rest = data.split('\\n', 1)\n"
                              "a, b = map(int, first.split())\n"
                              "print(a + b)\n"
                              "print(len(rest))\n"
                              "print('to stderr', file=sys.stderr)\n",
                              "1 2\n" + big);
  EXPECT_TRUE(r.Succeeded()) << Describe(r);
  EXPECT_EQ(r.stdout_text, "3\n300000\n");
  EXPECT_EQ(r.stderr_text, "to stderr\n");
  EXPECT_FALSE(r.stdout_truncated);
  EXPECT_NE(r.isolation, NetworkIsolation::kAuto);
}

TEST(SandboxTest, ReportsExitCodeAndClearsEnvironment) {
  setenv("LIGHTRL_SANDBOX_SECRET", "leak", 1);
  SandboxCommand command;
  command.argv = {"/bin/sh", "-c", "env; echo oops >&2; exit 3"};
  SandboxResult r = MustRun(TestOptions(), command);
  EXPECT_EQ(r.exit_code, 3) << Describe(r);
  EXPECT_EQ(r.term_signal, 0);
  EXPECT_FALSE(r.Succeeded());
  EXPECT_EQ(r.limit_hit, SandboxLimit::kNone);
  EXPECT_EQ(r.stderr_text, "oops\n");
  EXPECT_FALSE(absl::StrContains(r.stdout_text, "LIGHTRL_SANDBOX_SECRET"));
  EXPECT_TRUE(absl::StrContains(r.stdout_text, "PATH=/usr/local/bin:/usr/bin:/bin"));
  for (absl::string_view line : absl::StrSplit(r.stdout_text, '\n', absl::SkipEmpty())) {
    // sh adds PWD (and sometimes SHLVL, _) itself.
    bool known = absl::StartsWith(line, "PATH=") || absl::StartsWith(line, "LANG=") ||
                 absl::StartsWith(line, "HOME=") || absl::StartsWith(line, "PWD=") ||
                 absl::StartsWith(line, "SHLVL=") || absl::StartsWith(line, "_=") ||
                 absl::StartsWith(line, "OLDPWD=");
    EXPECT_TRUE(known) << line;
  }
}

TEST(SandboxTest, InfiniteLoopHitsCpuLimit) {
  SandboxOptions options = TestOptions();
  options.cpu_seconds = 1;
  options.wall_seconds = 60;
  SandboxResult r = RunPython(options, "while True:\n    pass\n");
  EXPECT_EQ(r.limit_hit, SandboxLimit::kCpu) << Describe(r);
  EXPECT_FALSE(r.Succeeded());
  // It ran to the limit, not stopped early; the kernel's CPU accounting of a killed child
  // has read as low as 0.87 s on a loaded machine, so the bound leaves room.
  EXPECT_GE(r.cpu_seconds, 0.5);
  EXPECT_LT(r.wall_seconds, 45);
}

TEST(SandboxTest, SleeperHitsWallLimitAndIsKilled) {
  SandboxOptions options = TestOptions();
  options.wall_seconds = 1;
  SandboxResult r = RunPython(options, "import time\nprint('started', flush=True)\n"
                                       "time.sleep(120)\n");
  EXPECT_EQ(r.limit_hit, SandboxLimit::kWall) << Describe(r);
  EXPECT_EQ(r.term_signal, SIGKILL);
  EXPECT_EQ(r.stdout_text, "started\n");
  EXPECT_GE(r.wall_seconds, 0.9);
  EXPECT_LT(r.wall_seconds, 15);
}

TEST(SandboxTest, BackgroundChildDoesNotOutliveTheRun) {
  // The program exits at once but leaves a child holding stdout open; the run must not
  // wait for it to the wall limit, and the child must be killed.
  SandboxOptions options = TestOptions();
  options.wall_seconds = 30;
  const std::string token = absl::StrCat("lightrl-bg-", getpid());
  SandboxCommand command;
  command.argv = {"python3", "main.py", token};
  command.files["main.py"] =
      "import os, sys, time\n"
      "pid = os.fork()\n"
      "if pid == 0:\n"
      "    time.sleep(100)\n"
      "    os._exit(0)\n"
      "print(pid, flush=True)\n";
  SandboxResult r = MustRun(options, command);
  EXPECT_TRUE(r.Succeeded()) << Describe(r);
  EXPECT_LT(r.wall_seconds, 15);
  EXPECT_TRUE(AllGone(token)) << "a process of the run survived it";
}

TEST(SandboxTest, MemoryBombHitsMemoryLimit) {
  SandboxOptions options = TestOptions();
  options.memory_bytes = int64_t{256} << 20;
  SandboxResult one_shot = RunPython(options, "x = bytearray(1 << 31)\nprint(len(x))\n");
  EXPECT_EQ(one_shot.limit_hit, SandboxLimit::kMemory) << Describe(one_shot);
  EXPECT_FALSE(one_shot.Succeeded());

  SandboxResult growing = RunPython(options,
                                    "chunks = []\n"
                                    "while True:\n"
                                    "    chunks.append(bytearray(8 << 20))\n");
  EXPECT_EQ(growing.limit_hit, SandboxLimit::kMemory) << Describe(growing);
  EXPECT_LT(growing.wall_seconds, 15);
}

TEST(SandboxTest, OutputFloodIsTruncatedAndKilled) {
  SandboxOptions options = TestOptions();
  options.max_output_bytes = 4096;
  SandboxResult r = RunPython(options, "while True:\n    print('x' * 1000)\n");
  EXPECT_EQ(r.limit_hit, SandboxLimit::kOutput) << Describe(r);
  EXPECT_TRUE(r.stdout_truncated);
  EXPECT_EQ(r.stdout_text.size(), 4096u);
  EXPECT_FALSE(r.Succeeded());
  EXPECT_LT(r.wall_seconds, 15);
}

TEST(SandboxTest, OutputFloodWithoutKillRunsToTheWallLimitWithoutBlocking) {
  SandboxOptions options = TestOptions();
  options.max_output_bytes = 1000;
  options.kill_on_output_limit = false;
  options.wall_seconds = 2;
  options.cpu_seconds = 30;
  SandboxResult r = RunPython(options,
                              "import sys\n"
                              "while True:\n"
                              "    sys.stdout.write('y' * 65536)\n"
                              "    sys.stderr.write('z' * 65536)\n");
  EXPECT_EQ(r.limit_hit, SandboxLimit::kWall) << Describe(r);
  EXPECT_TRUE(r.stdout_truncated);
  EXPECT_TRUE(r.stderr_truncated);
  EXPECT_EQ(r.stdout_text, std::string(1000, 'y'));
  EXPECT_EQ(r.stderr_text, std::string(1000, 'z'));
  EXPECT_LT(r.wall_seconds, 15);
}

TEST(SandboxTest, FileSizeLimit) {
  SandboxOptions options = TestOptions();
  options.file_size_bytes = 1 << 20;
  SandboxCommand command;
  command.argv = {"/bin/sh", "-c", "exec head -c 4000000 /dev/zero > big"};
  SandboxResult r = MustRun(options, command);
  EXPECT_EQ(r.limit_hit, SandboxLimit::kFileSize) << Describe(r);

  SandboxResult py = RunPython(options, "open('big', 'wb').write(b'0' * 4000000)\n");
  EXPECT_EQ(py.limit_hit, SandboxLimit::kFileSize) << Describe(py);
}

class SandboxNetworkTest : public ::testing::TestWithParam<NetworkIsolation> {};

TEST_P(SandboxNetworkTest, CannotConnectToLoopbackListener) {
  Listener listener;
  SandboxOptions options = TestOptions();
  options.network_isolation = GetParam();
  absl::StatusOr<SandboxResult> run = RunSandboxed(
      options, SandboxCommand{{"python3", "net.py"},
                              {{"net.py", absl::StrCat(
                                              "import socket\n"
                                              "for family, host in ((socket.AF_INET, '127.0.0.1'),"
                                              " (socket.AF_INET6, '::1')):\n"
                                              "    try:\n"
                                              "        s = socket.socket(family)\n"
                                              "        s.settimeout(3)\n"
                                              "        s.connect((host, ",
                                              listener.port(),
                                              "))\n"
                                              "        print('CONNECTED')\n"
                                              "    except OSError as e:\n"
                                              "        print('BLOCKED', e.errno)\n"
                                              "a, b = socket.socketpair()\n"
                                              "a.sendall(b'local ok')\n"
                                              "print(b.recv(100).decode())\n")}},
                              ""});
  if (GetParam() == NetworkIsolation::kNamespace && !run.ok()) {
    GTEST_SKIP() << "user+network namespaces unavailable here: " << run.status();
  }
  ASSERT_TRUE(run.ok()) << run.status();
  const SandboxResult& r = *run;
  EXPECT_TRUE(r.Succeeded()) << Describe(r);
  EXPECT_FALSE(absl::StrContains(r.stdout_text, "CONNECTED")) << Describe(r);
  std::vector<absl::string_view> lines = absl::StrSplit(r.stdout_text, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u) << Describe(r);
  EXPECT_TRUE(absl::StartsWith(lines[0], "BLOCKED")) << Describe(r);
  EXPECT_TRUE(absl::StartsWith(lines[1], "BLOCKED")) << Describe(r);
  EXPECT_TRUE(absl::StrContains(r.stdout_text, "local ok")) << Describe(r);
  if (GetParam() == NetworkIsolation::kSeccomp) {
    EXPECT_EQ(r.isolation, NetworkIsolation::kSeccomp);
    EXPECT_EQ(r.stdout_text, absl::StrCat("BLOCKED ", EACCES, "\nBLOCKED ", EACCES,
                                          "\nlocal ok\n"));
  }
  if (GetParam() == NetworkIsolation::kNamespace) {
    EXPECT_EQ(r.isolation, NetworkIsolation::kNamespace);
  }
  EXPECT_FALSE(listener.HasConnection());
  std::cout << "isolation used: " << NetworkIsolationName(r.isolation) << "\n";
}

INSTANTIATE_TEST_SUITE_P(Modes, SandboxNetworkTest,
                         ::testing::Values(NetworkIsolation::kAuto, NetworkIsolation::kNamespace,
                                           NetworkIsolation::kSeccomp),
                         [](const auto& info) { return NetworkIsolationName(info.param); });

TEST(SandboxTest, WorkingDirectoryIsRemovedEvenWhenKilled) {
  ScratchRoot root;
  SandboxOptions options = TestOptions();
  options.temp_root = root.path();
  const std::string writer =
      "import os\n"
      "print(os.getcwd(), flush=True)\n"
      "open('a.txt', 'w').write('x' * 1000)\n"
      "os.makedirs('d1/d2/d3')\n"
      "open('d1/d2/d3/f', 'w').write('y')\n"
      "os.symlink('/etc/passwd', 'link')\n"
      "os.makedirs('locked/inner')\n"
      "open('locked/inner/f', 'w').write('z')\n"
      "os.chmod('locked/inner', 0)\n"
      "os.chmod('locked', 0)\n"
      "p = 'deep'\n"
      "for i in range(150):\n"
      "    os.mkdir(p)\n"
      "    os.chdir(p)\n";
  SandboxResult done = RunPython(options, writer);
  EXPECT_TRUE(done.Succeeded()) << Describe(done);
  std::string cwd(absl::StripTrailingAsciiWhitespace(done.stdout_text));
  // The working directory is in the sandbox's private tmpfs, mounted over temp_root only
  // inside its own mount namespace.
  EXPECT_EQ(cwd, "/sandbox");
  struct stat st;
  EXPECT_NE(stat(cwd.c_str(), &st), 0) << cwd << " still exists";
  EXPECT_EQ(stat("/etc/passwd", &st), 0);  // the symlink's target is not followed

  options.wall_seconds = 1;
  SandboxResult killed = RunPython(options, writer + "import time\ntime.sleep(60)\n");
  EXPECT_EQ(killed.limit_hit, SandboxLimit::kWall) << Describe(killed);
  EXPECT_TRUE(root.Entries().empty()) << root.Entries().front();
}

// Issue 15: the program sees a private, empty filesystem. It cannot read the host's
// /etc/passwd, a file the host put in /tmp, or other processes under /proc, and what it
// writes to /tmp and /dev/shm (300 MiB tried) neither fits the quota nor outlives it.
TEST(SandboxTest, FilesystemIsPrivateQuotaBoundAndLeavesNothing) {
  const std::string secret_path = absl::StrCat("/tmp/lightrl-secret-", getpid());
  {
    std::ofstream secret(secret_path);
    secret << "host secret";
  }
  chmod(secret_path.c_str(), 0644);
  auto list = [](const char* dir) {
    std::set<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator(dir)) names.insert(e.path().string());
    return names;
  };
  const std::set<std::string> tmp_before = list("/tmp");
  const std::set<std::string> shm_before = list("/dev/shm");

  SandboxOptions options = TestOptions();
  options.file_size_bytes = int64_t{512} << 20;  // the quota, not RLIMIT_FSIZE, must stop it
  options.disk_bytes = int64_t{32} << 20;
  const std::string probe = absl::StrCat(
      "import os\n"
      "def check(name, fn):\n"
      "    try:\n"
      "        print(name, 'SEEN', repr(fn())[:60])\n"
      "    except Exception as e:\n"
      "        print(name, 'hidden', type(e).__name__)\n"
      "check('passwd', lambda: open('/etc/passwd').read())\n"
      "check('secret', lambda: open('", secret_path, "').read())\n"
      "check('work', lambda: os.listdir('/work'))\n"
      "check('root', lambda: os.listdir('/root'))\n"
      "pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
      "others = [open('/proc/%s/cmdline' % p, 'rb').read() for p in pids]\n"
      "print('pids', len(pids), b'sandbox_test' in b''.join(others))\n"
      "def fill(directory):\n"
      "    written = 0\n"
      "    try:\n"
      "        for i in range(30):\n"
      "            with open(os.path.join(directory, 'fill%d' % i), 'wb') as f:\n"
      "                f.write(b'x' * (10 << 20))\n"
      "            written += 10\n"
      "    except OSError as e:\n"
      "        pass\n"
      "    print(directory, 'wrote', written, 'MiB')\n"
      "fill('/tmp')\n"
      "fill('/dev/shm')\n");
  SandboxResult r = RunPython(options, probe);
  ASSERT_TRUE(r.Succeeded()) << Describe(r);
  EXPECT_TRUE(r.private_filesystem);
  EXPECT_TRUE(absl::StrContains(r.stdout_text, "passwd hidden")) << r.stdout_text;
  EXPECT_TRUE(absl::StrContains(r.stdout_text, "secret hidden")) << r.stdout_text;
  EXPECT_TRUE(absl::StrContains(r.stdout_text, "work hidden")) << r.stdout_text;
  EXPECT_TRUE(absl::StrContains(r.stdout_text, "root hidden")) << r.stdout_text;
  // Only the namespace's init and the program itself. (Init is a copy of the parent, so
  // its command line is the parent's: docs/security.md, secrets never go on it.)
  EXPECT_TRUE(absl::StrContains(r.stdout_text, "pids 2 ")) << r.stdout_text;
  int tmp_mib = -1, shm_mib = -1;
  for (absl::string_view line : absl::StrSplit(r.stdout_text, '\n')) {
    std::vector<absl::string_view> f = absl::StrSplit(line, ' ');
    if (f.size() == 4 && f[0] == "/tmp") {
      EXPECT_TRUE(absl::SimpleAtoi(f[2], &tmp_mib));
    }
    if (f.size() == 4 && f[0] == "/dev/shm") {
      EXPECT_TRUE(absl::SimpleAtoi(f[2], &shm_mib));
    }
  }
  EXPECT_GE(tmp_mib, 0) << r.stdout_text;
  EXPECT_LE(tmp_mib + shm_mib, 32) << r.stdout_text;

  EXPECT_EQ(list("/tmp"), tmp_before);
  EXPECT_EQ(list("/dev/shm"), shm_before);
  std::filesystem::remove(secret_path);
}

// Issue 15: memory is limited for the sandbox as a whole. Four processes of 200 MiB each
// fit every per-process limit (RLIMIT_AS is 512 MiB) but not the sandbox's 512 MiB.
TEST(SandboxTest, MemoryLimitCoversAllProcessesOfTheSandbox) {
  SandboxOptions options = TestOptions();
  options.memory_bytes = int64_t{512} << 20;
  const std::string hog =
      "import os, sys, time\n"
      "kids = []\n"
      "for i in range(4):\n"
      "    pid = os.fork()\n"
      "    if pid == 0:\n"
      "        block = bytearray(b'\\x01') * (200 << 20)\n"
      "        print('allocated', flush=True)\n"
      "        time.sleep(3)\n"
      "        os._exit(0)\n"
      "    kids.append(pid)\n"
      "ok = sum(os.waitpid(p, 0)[1] == 0 for p in kids)\n"
      "print('ok', ok, flush=True)\n"
      "sys.exit(0 if ok == 4 else 1)\n";
  SandboxResult r = RunPython(options, hog);
  if (!r.memory_limit_per_sandbox) {
    GTEST_SKIP() << "no writable memory cgroup on this machine; the sandbox falls back to "
                    "max_processes_without_cgroup, which the fork-bomb test covers";
  }
  EXPECT_FALSE(r.Succeeded()) << Describe(r);
  EXPECT_EQ(r.limit_hit, SandboxLimit::kMemory) << Describe(r);
  EXPECT_FALSE(absl::StrContains(r.stdout_text, "ok 4")) << Describe(r);
  // One such process alone fits.
  SandboxResult one = RunPython(options, "x = bytearray(b'\\x01') * (200 << 20)\nprint('fine')\n");
  EXPECT_TRUE(one.Succeeded()) << Describe(one);
}

TEST(SandboxTest, ForkBombIsContained) {
  SandboxOptions options = TestOptions();
  options.max_processes = 16;
  options.wall_seconds = 3;
  const std::string token = absl::StrCat("lightrl-forkbomb-", getpid());
  SandboxCommand command;
  command.argv = {"python3", "main.py", token};
  command.files["main.py"] = std::string(
                              "import os, time\n"
                              "print(os.getpid(), flush=True)\n"
                              "while True:\n"
                              "    try:\n"
                              "        if os.fork() == 0:\n"
                              "            print(os.getpid(), flush=True)\n"
                              "    except OSError:\n"
                              "        time.sleep(0.01)\n");
  SandboxResult r = MustRun(options, command);
  EXPECT_EQ(r.limit_hit, SandboxLimit::kWall) << Describe(r);
  EXPECT_LT(r.wall_seconds, 20);
  std::set<int> pids;
  for (absl::string_view line : absl::StrSplit(r.stdout_text, '\n', absl::SkipEmpty())) {
    int pid = 0;
    if (absl::SimpleAtoi(line, &pid)) pids.insert(pid);
  }
  EXPECT_GE(pids.size(), 1u) << Describe(r);
  // RLIMIT_NPROC in the sandbox's user namespace and the cgroup's pids.max both count
  // the program's processes (and threads).
  EXPECT_LE(pids.size(), static_cast<size_t>(options.max_processes)) << Describe(r);
  EXPECT_TRUE(AllGone(token)) << "a process of the fork bomb survived the run";
  // The machine can still start processes afterwards.
  SandboxResult after = RunPython(TestOptions(), "print('fine')\n");
  EXPECT_EQ(after.stdout_text, "fine\n") << Describe(after);
}

TEST(SandboxTest, ConcurrentRunsAreIndependent) {
  constexpr int kThreads = 4;
  constexpr int kRunsPerThread = 3;
  ScratchRoot root;
  SandboxOptions options = TestOptions();
  options.temp_root = root.path();
  std::vector<std::vector<std::string>> outputs(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kRunsPerThread; ++i) {
        std::string token = absl::StrCat("t", t, "-r", i);
        absl::StatusOr<SandboxResult> r = RunSandboxed(
            options, SandboxCommand{{"python3", "main.py"},
                                    {{"main.py",
                                      "import os, sys\n"
                                      "token = sys.stdin.read().strip()\n"
                                      "assert sorted(os.listdir('.')) == ['main.py'], "
                                      "os.listdir('.')\n"
                                      "open('mine', 'w').write(token)\n"
                                      "print(token, open('mine').read())\n"}},
                                    token + "\n"});
        outputs[t].push_back(r.ok() ? (r->Succeeded() ? r->stdout_text : Describe(*r))
                                    : std::string(r.status().message()));
      }
    });
  }
  for (std::thread& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) {
    ASSERT_EQ(outputs[t].size(), static_cast<size_t>(kRunsPerThread));
    for (int i = 0; i < kRunsPerThread; ++i) {
      std::string token = absl::StrCat("t", t, "-r", i);
      EXPECT_EQ(outputs[t][i], absl::StrCat(token, " ", token, "\n"));
    }
  }
  EXPECT_TRUE(root.Entries().empty());
}

TEST(SandboxTest, RejectsBadOptionsAndCommands) {
  SandboxOptions options = TestOptions();
  options.wall_seconds = 0;
  absl::Status s = options.Validate();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(s.message(), "wall_seconds")) << s;
  options = TestOptions();
  options.temp_root = "relative";
  EXPECT_TRUE(absl::StrContains(options.Validate().message(), "temp_root"));

  EXPECT_EQ(RunSandboxed(TestOptions(), SandboxCommand{}).status().code(),
            absl::StatusCode::kInvalidArgument);
  SandboxCommand bad_file{{"/bin/sh", "-c", "true"}, {{"../escape", "x"}}, ""};
  EXPECT_EQ(RunSandboxed(TestOptions(), bad_file).status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::StatusOr<SandboxResult> missing =
      RunSandboxed(TestOptions(), SandboxCommand{{"no-such-program-lightrl"}, {}, ""});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(missing.status().message(), "no-such-program-lightrl"));
}

// --- the "code" reward ---

CodeRewardOptions TestRewardOptions() {
  CodeRewardOptions options;
  options.sandbox = TestOptions();
  options.sandbox.wall_seconds = 5;
  options.sandbox.cpu_seconds = 3;
  return options;
}

RewardResult MustScore(const std::string& response, const std::string& ground_truth,
                       CodeRewardOptions options = TestRewardOptions()) {
  CodeRewardFunction reward(std::move(options));
  absl::StatusOr<RewardResult> r = reward.Score({"", response, ground_truth, {}});
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : RewardResult{};
}

double Component(const RewardResult& r, const std::string& name) {
  for (const auto& [key, value] : r.components) {
    if (key == name) return value;
  }
  ADD_FAILURE() << "no component " << name;
  return -1;
}

const char kSumTests[] =
    R"({"language":"python","tests":[{"input":"1 2\n","output":"3\n"},)"
    R"({"input":"10 -4\n","output":"6"},{"input":"0 0\n","output":"0  \n\n"}]})";

TEST(CodeRewardTest, ExtractsTheLastPythonBlock) {
  EXPECT_EQ(ExtractCode("text\n```python\nprint(1)\n```\nmore\n```\nprint(2)\n```\n"),
            "print(2)\n");
  EXPECT_EQ(ExtractCode("```py\nx = 1\n```\nthen\n```text\nnot code\n```"), "x = 1\n");
  EXPECT_EQ(ExtractCode("answer:\n```python\nprint(3)\n"), "print(3)\n");
  EXPECT_EQ(ExtractCode("print(4)"), "print(4)");
  EXPECT_EQ(ExtractCode("```cpp\nint main(){}\n```"), "```cpp\nint main(){}\n```");
}

TEST(CodeRewardTest, ComparesOutputsIgnoringTrailingWhitespace) {
  EXPECT_TRUE(OutputsMatch("3 \n4\n\n", "3\n4"));
  EXPECT_TRUE(OutputsMatch("a\r\n", "a\n"));
  EXPECT_FALSE(OutputsMatch(" 3\n", "3\n"));
  EXPECT_FALSE(OutputsMatch("3\n\n4\n", "3\n4\n"));
}

TEST(CodeRewardTest, RejectsMalformedGroundTruthNamingTheField) {
  struct Case {
    const char* ground_truth;
    const char* field;
  } cases[] = {
      {"not json", "valid JSON"},
      {"[1]", "object"},
      {R"({"language":"python"})", "tests is missing"},
      {R"({"tests":[]})", "tests must not be empty"},
      {R"({"tests":{"input":"1"}})", "tests must be an array"},
      {R"({"tests":[{"input":"1","output":"1"},{"input":"2"}]})", "tests[1].output"},
      {R"({"tests":[{"input":3,"output":"1"}]})", "tests[0].input"},
      {R"({"tests":[7]})", "tests[0]"},
      {R"({"language":"cpp","tests":["assert True"]})", "language"},
  };
  CodeRewardFunction reward(TestRewardOptions());
  for (const Case& c : cases) {
    absl::StatusOr<RewardResult> r = reward.Score({"", "print(1)", c.ground_truth, {}});
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << c.ground_truth;
    EXPECT_TRUE(absl::StrContains(r.status().message(), c.field))
        << c.ground_truth << ": " << r.status();
  }
}

TEST(CodeRewardTest, CorrectSolutionScoresOne) {
  RewardResult r = MustScore(
      "Read two ints.\n```python\na, b = map(int, input().split())\nprint(a + b)\n```\n",
      kSumTests);
  EXPECT_DOUBLE_EQ(r.score, 1.0);
  EXPECT_EQ(Component(r, "passed"), 3);
  EXPECT_EQ(Component(r, "total"), 3);
  EXPECT_EQ(Component(r, "compile_error"), 0);
  EXPECT_EQ(Component(r, "timeout"), 0);
}

TEST(CodeRewardTest, PartialSolutionScoresTheFractionPassed) {
  RewardResult r = MustScore(
      "```python\na, b = map(int, input().split())\nprint(abs(a) + abs(b))\n```", kSumTests);
  EXPECT_NEAR(r.score, 2.0 / 3.0, 1e-12);
  EXPECT_EQ(Component(r, "passed"), 2);
}

TEST(CodeRewardTest, AssertStyleTests) {
  const std::string truth = R"({"tests":["assert f(1) == 2","assert f(3) == 6",)"
                            R"("assert f(0) == 1"]})";
  RewardResult r = MustScore("```python\ndef f(x):\n    return 2 * x\n```", truth);
  EXPECT_NEAR(r.score, 2.0 / 3.0, 1e-12);
  EXPECT_EQ(Component(r, "total"), 3);
}

// Issue 15: an assert test is judged by the harness's nonce, not by the exit status, so
// no way of ending the program before the test ran can pass it.
TEST(CodeRewardTest, AssertTestsCannotBePassedByExitingEarly) {
  const std::string truth = R"({"tests":["assert f(1) == 3"]})";
  const std::string wrong = "def f(x):\n    return 0\n";
  const char* const kShortcuts[] = {
      "import sys\nsys.exit(0)\n",
      "import os\nos._exit(0)\n",
      "raise SystemExit\n",
      "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
      "import builtins\nbuiltins.exec = lambda *a, **k: None\n",
      "import atexit, os\natexit.register(lambda: os._exit(0))\n",
      "import sys\nprint('lightrl-pass-' + '0' * 32)\nsys.stdout.flush()\nsys.exit(0)\n",
      "import os\nos.close(1)\nos.close(2)\n",
  };
  for (const char* shortcut : kShortcuts) {
    RewardResult r = MustScore(absl::StrCat("```python\n", wrong, shortcut, "```"), truth);
    EXPECT_EQ(r.score, 0) << shortcut;
    EXPECT_EQ(Component(r, "compile_error"), 0) << shortcut;
  }
  // The same harness passes the right function, also when it exits afterwards at module
  // level inside a main guard that the test does not need.
  RewardResult right = MustScore(
      "```python\ndef f(x):\n    return 3 * x\nif __name__ == '__main__':\n    print('hi')\n```",
      truth);
  EXPECT_EQ(right.score, 1.0);
}

TEST(CodeRewardTest, CompileErrorScoresZero) {
  RewardResult r = MustScore("```python\ndef broken(:\n    pass\n```", kSumTests);
  EXPECT_EQ(r.score, 0);
  EXPECT_EQ(Component(r, "compile_error"), 1);
  EXPECT_EQ(Component(r, "passed"), 0);
}

TEST(CodeRewardTest, CrashingSolutionScoresZeroWithoutCompileError) {
  RewardResult r = MustScore("```python\nraise SystemExit(input() and 1/0)\n```", kSumTests);
  EXPECT_EQ(r.score, 0);
  EXPECT_EQ(Component(r, "compile_error"), 0);
}

TEST(CodeRewardTest, LoopingSolutionTimesOutOnce) {
  CodeRewardOptions options = TestRewardOptions();
  options.sandbox.wall_seconds = 1;
  auto start = std::chrono::steady_clock::now();
  RewardResult r = MustScore("```python\nimport time\nwhile True:\n    time.sleep(1)\n```",
                             kSumTests, options);
  double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(r.score, 0);
  EXPECT_EQ(Component(r, "timeout"), 1);
  // stop_after_timeout: one test's limit, not three.
  EXPECT_LT(elapsed, 20);
}

TEST(CodeRewardTest, NetworkUsingSolutionScoresZero) {
  Listener listener;
  const std::string response = absl::StrCat(
      "```python\nimport socket\ns = socket.create_connection(('127.0.0.1', ", listener.port(),
      "), timeout=3)\nprint(3)\n```");
  RewardResult r = MustScore(response, R"({"tests":[{"input":"","output":"3"}]})");
  EXPECT_EQ(r.score, 0);
  EXPECT_FALSE(listener.HasConnection());
}

TEST(CodeRewardTest, IsABuiltinKind) {
  absl::StatusOr<RewardFunctionPtr> fn = MakeRewardFunction("code");
  ASSERT_TRUE(fn.ok()) << fn.status();
  EXPECT_EQ((*fn)->Kind(), "code");
  absl::StatusOr<RewardResult> r =
      (*fn)->Score({"", "print(int(input()) * 2)", R"({"tests":[{"input":"21","output":"42"}]})",
                    {}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->score, 1.0);

  CodeRewardOptions bad;
  bad.python_command.clear();
  EXPECT_EQ(MakeCodeRewardFunction(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lightrl
