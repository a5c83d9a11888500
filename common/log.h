// A tiny process-wide log: one line per message on stderr, tagged with its level and the
// wall-clock time, e.g. "[W 14:03:07.512] lightrl run: reward worker r0 ... exited".
//
// The level below which messages are dropped is read once from LIGHTRL_LOG_LEVEL (debug,
// info, warning or error; default info) and may be changed with SetLogLevel (the commands'
// --log-level flag). Writes are whole lines under a mutex, so lines of different threads
// never interleave. Libraries log through this; a command's own output (tables, progress
// bars, results) goes to stdout or stderr directly, since it is UI rather than logging.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace lightrl {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// "debug", "info", "warning" (or "warn"), "error", case-insensitive.
absl::StatusOr<LogLevel> ParseLogLevel(absl::string_view name);
const char* LogLevelName(LogLevel level);

// The current threshold (LIGHTRL_LOG_LEVEL on first use; an unknown value there is
// reported once and ignored).
LogLevel GetLogLevel();
void SetLogLevel(LogLevel level);
inline bool LogEnabled(LogLevel level) { return level >= GetLogLevel(); }

// Writes `message` as one line (a trailing newline is not needed) if `level` is enabled.
void LogMessage(LogLevel level, absl::string_view message);

// Test hook: the line LogMessage writes, without the time ("[W] message\n") when
// `with_time` is false.
std::string FormatLogLine(LogLevel level, absl::string_view message, bool with_time);

// printf-style, checked at compile time: LogWarning("worker %s exited (%d)", id, code).
template <typename... Args>
void LogAt(LogLevel level, const absl::FormatSpec<Args...>& format, const Args&... args) {
  if (LogEnabled(level)) LogMessage(level, absl::StrFormat(format, args...));
}
template <typename... Args>
void LogDebug(const absl::FormatSpec<Args...>& format, const Args&... args) {
  LogAt(LogLevel::kDebug, format, args...);
}
template <typename... Args>
void LogInfo(const absl::FormatSpec<Args...>& format, const Args&... args) {
  LogAt(LogLevel::kInfo, format, args...);
}
template <typename... Args>
void LogWarning(const absl::FormatSpec<Args...>& format, const Args&... args) {
  LogAt(LogLevel::kWarning, format, args...);
}
template <typename... Args>
void LogError(const absl::FormatSpec<Args...>& format, const Args&... args) {
  LogAt(LogLevel::kError, format, args...);
}

}  // namespace lightrl
