// Progress and ETA text for a run's phases: durations ("3m05s"), a phase clock that
// estimates the time left from the units done in this process, and parameter counts.
// Owns formatting only: it prints nothing and knows no trainer state. Torch-free.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace lightrl {

using RunClock = std::chrono::steady_clock;

// Seconds since `since` on RunClock.
double SecondsSince(RunClock::time_point since);

// "45s", "3m05s" or "2h07m": how long `seconds` is, for progress lines.
std::string Duration(double seconds);

// "1.23M", "45.9B": a parameter count for the start-up summary.
std::string Count(int64_t n);

// A long phase's clock: elapsed time and, from the mean time of the units done so far
// in this process, the time the remaining units take.
class PhaseClock {
 public:
  // `done` of `total` units are done when the phase starts (a resumed run).
  PhaseClock(int64_t done, int64_t total) : PhaseClock(RunClock::now(), done, total) {}
  // As above with the phase started at `start`.
  PhaseClock(RunClock::time_point start, int64_t done, int64_t total)
      : start_(start), first_(done), total_(total) {}
  // "elapsed 1m05s, ETA 2m10s" once `done` units are done.
  std::string Line(int64_t done) const { return LineAt(RunClock::now(), done); }
  // The line as of `now`.
  std::string LineAt(RunClock::time_point now, int64_t done) const;

 private:
  RunClock::time_point start_;
  int64_t first_, total_;
};

}  // namespace lightrl
