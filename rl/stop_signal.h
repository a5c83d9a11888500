// The names of the signals that ask a run to stop (SIGINT, SIGTERM), for the message a
// stopped run prints. Owns naming only: the handler that records the signal lives with the
// command, and the trainer decides where to stop. Torch-free.
#pragma once

namespace lightrl {

// "SIGINT", "SIGTERM", or "a signal" for any other number.
const char* SignalName(int signal);

}  // namespace lightrl
