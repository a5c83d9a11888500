#include "common/log.h"

#include <sys/time.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <ctime>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace lightrl {
namespace {

constexpr int kUnset = -1;
std::atomic<int> g_level{kUnset};

absl::Mutex& WriteMutex() {
  static absl::Mutex* mu = new absl::Mutex();
  return *mu;
}

LogLevel LevelFromEnv() {
  const char* env = std::getenv("LIGHTRL_LOG_LEVEL");
  if (env == nullptr || *env == '\0') return LogLevel::kInfo;
  absl::StatusOr<LogLevel> level = ParseLogLevel(env);
  if (level.ok()) return *level;
  std::fprintf(stderr, "[W] LIGHTRL_LOG_LEVEL: %s; using info\n",
               std::string(level.status().message()).c_str());
  return LogLevel::kInfo;
}

}  // namespace

absl::StatusOr<LogLevel> ParseLogLevel(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  if (lower == "debug") return LogLevel::kDebug;
  if (lower == "info") return LogLevel::kInfo;
  if (lower == "warning" || lower == "warn") return LogLevel::kWarning;
  if (lower == "error") return LogLevel::kError;
  return absl::InvalidArgumentError(absl::StrCat(
      "log level must be debug, info, warning or error, got \"", name, "\""));
}

const char* LogLevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarning: return "warning";
    case LogLevel::kError: return "error";
  }
  return "info";
}

LogLevel GetLogLevel() {
  int level = g_level.load(std::memory_order_relaxed);
  if (level == kUnset) {
    int expected = kUnset;
    g_level.compare_exchange_strong(expected, static_cast<int>(LevelFromEnv()));
    level = g_level.load(std::memory_order_relaxed);
  }
  return static_cast<LogLevel>(level);
}

void SetLogLevel(LogLevel level) { g_level.store(static_cast<int>(level)); }

std::string FormatLogLine(LogLevel level, absl::string_view message, bool with_time) {
  static constexpr char kTags[] = {'D', 'I', 'W', 'E'};
  std::string line = "[";
  line += kTags[static_cast<int>(level)];
  if (with_time) {
    timeval tv{};
    ::gettimeofday(&tv, nullptr);
    tm local{};
    ::localtime_r(&tv.tv_sec, &local);
    char buf[32];
    std::snprintf(buf, sizeof(buf), " %02d:%02d:%02d.%03d", local.tm_hour, local.tm_min,
                  local.tm_sec, static_cast<int>(tv.tv_usec / 1000));
    line += buf;
  }
  line += "] ";
  while (!message.empty() && message.back() == '\n') message.remove_suffix(1);
  line.append(message.data(), message.size());
  line += '\n';
  return line;
}

void LogMessage(LogLevel level, absl::string_view message) {
  if (!LogEnabled(level)) return;
  const std::string line = FormatLogLine(level, message, /*with_time=*/true);
  absl::MutexLock lock(&WriteMutex());
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

}  // namespace lightrl
