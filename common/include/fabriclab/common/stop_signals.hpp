#pragma once
// A service's shutdown on SIGINT or SIGTERM, for the agent's and the orchestrator's main().
//
// Construct StopSignals before any thread starts: it blocks both signals in the calling thread,
// and every thread started afterwards inherits the mask, so no io or worker thread is interrupted
// by them. wait() then blocks main until one arrives and returns it; the caller stops its servers
// in order, in ordinary code rather than in a signal handler.

#include <pthread.h>
#include <signal.h>

namespace fabriclab {

class StopSignals {
 public:
  StopSignals() {
    sigemptyset(&set_);
    sigaddset(&set_, SIGINT);
    sigaddset(&set_, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set_, nullptr);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  // The signal that arrived (SIGINT or SIGTERM).
  int wait() const {
    int sig = 0;
    sigwait(&set_, &sig);
    return sig;
  }

 private:
  sigset_t set_;
};

}  // namespace fabriclab
