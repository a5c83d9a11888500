#include "rl/stop_signal.h"

#include <csignal>

namespace lightrl {

const char* SignalName(int signal) {
  switch (signal) {
    case SIGINT: return "SIGINT";
    case SIGTERM: return "SIGTERM";
    default: return "a signal";
  }
}

}  // namespace lightrl
