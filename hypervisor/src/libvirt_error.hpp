#pragma once
// Private: turning libvirt's thread-local last error into an Error value. Call right after the
// failing libvirt call, on the same thread, before anything else that may touch libvirt.

#include <string_view>

#include "fabriclab/common/result.hpp"

namespace fabriclab::hypervisor::detail {

// Maps a virErrorNumber to the condition callers branch on.
Condition condition_of(int libvirt_code);

// Copies and resets the last libvirt error: "<what>: <libvirt's message>".
Error last_error(std::string_view what);

// Installs the no-op error handler (libvirt never prints to stderr), registers the default event
// implementation and starts the thread that runs it. Idempotent and thread safe.
Status ensure_event_loop();

}  // namespace fabriclab::hypervisor::detail
