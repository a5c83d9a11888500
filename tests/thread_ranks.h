// Tests that run several ranks of one process group as threads of one process. lightrl
// runs one rank per process; torch's flight recorder (a process-wide trace of every
// collective) registers each group on its first collective without a lock, so ranks that
// share a process can corrupt it. Call before the first group is made: it turns the
// recorder off for this process.
#pragma once

#include <cstdlib>

namespace lightrl {

inline void RanksAreThreadsOfThisProcess() { ::setenv("TORCH_FR_BUFFER_SIZE", "0", /*overwrite=*/1); }

}  // namespace lightrl
