// The libvirt event loop and error capture.
//
// libvirt delivers domain events (and runs keepalives, and drives the embedded QEMU driver's
// monitor I/O) only while someone runs its event loop. We register the default implementation
// once per process, before the first connection opens, and run it forever on a detached thread:
// connections come and go (the embedded driver is closed and reopened across an emulated host
// reboot), the loop stays.

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include <cstdlib>
#include <mutex>
#include <thread>

#include "fabriclab/common/logging.hpp"
#include "libvirt_error.hpp"

namespace fabriclab::hypervisor::detail {

Condition condition_of(int code) {
  switch (code) {
    case VIR_ERR_NO_DOMAIN:
    case VIR_ERR_NO_DOMAIN_METADATA:
    case VIR_ERR_NO_DOMAIN_SNAPSHOT:
    case VIR_ERR_NO_STORAGE_VOL:
    case VIR_ERR_NO_STORAGE_POOL:
    case VIR_ERR_NO_NETWORK:
      return Condition::not_found;
    case VIR_ERR_OPERATION_INVALID:
      return Condition::invalid_state;
    case VIR_ERR_NO_SUPPORT:
    case VIR_ERR_ARGUMENT_UNSUPPORTED:
    case VIR_ERR_CONFIG_UNSUPPORTED:
    case VIR_ERR_NO_CONNECT:
    case VIR_ERR_OPERATION_UNSUPPORTED:
      return Condition::unsupported;
    case VIR_ERR_XML_ERROR:
    case VIR_ERR_XML_DETAIL:
    case VIR_ERR_XML_INVALID_SCHEMA:
    case VIR_ERR_INVALID_ARG:
      return Condition::invalid_argument;
    case VIR_ERR_DOM_EXIST:
      return Condition::already_exists;
    case VIR_ERR_OPERATION_TIMEOUT:
    case VIR_ERR_AGENT_UNRESPONSIVE:
      return Condition::timeout;
    case VIR_ERR_OPERATION_ABORTED:
      return Condition::cancelled;
    case VIR_ERR_AUTH_FAILED:
    case VIR_ERR_AUTH_CANCELLED:
    case VIR_ERR_AUTH_UNAVAILABLE:
      return Condition::unauthenticated;
    case VIR_ERR_ACCESS_DENIED:
      return Condition::permission_denied;
    case VIR_ERR_SYSTEM_ERROR:
    case VIR_ERR_RPC:
    case VIR_ERR_OPERATION_FAILED:
    case VIR_ERR_NO_MEMORY:
    case VIR_ERR_RESOURCE_BUSY:
      return Condition::transient;
    default:
      return Condition::internal;
  }
}

Error last_error(std::string_view what) {
  virErrorPtr e = virGetLastError();
  Error out;
  out.condition = e ? condition_of(e->code) : Condition::internal;
  out.message =
      std::string(what) + ": " +
      ((e && e->message) ? std::string(e->message) : std::string("unknown libvirt error"));
  virResetLastError();
  return out;
}

namespace {
void silence(void*, virErrorPtr) {}
}  // namespace

Status ensure_event_loop() {
  static std::once_flag once;
  static Status result;
  std::call_once(once, [] {
    virSetErrorFunc(nullptr, silence);
    // libvirt's own log (the embedded driver's warnings included) would go to stderr; errors
    // reach callers as values, so unless the user chose outputs, keep errors in a file only.
    if (!std::getenv("LIBVIRT_LOG_OUTPUTS")) {
      ::setenv("LIBVIRT_LOG_OUTPUTS", "4:file:/tmp/fabriclab-libvirt.log", 0);
    }
    if (!std::getenv("LIBVIRT_DEBUG")) ::setenv("LIBVIRT_DEBUG", "4", 0);  // errors only
    if (virInitialize() < 0) {
      result = last_error("virInitialize");
      return;
    }
    if (virEventRegisterDefaultImpl() < 0) {
      result = last_error("virEventRegisterDefaultImpl");
      return;
    }
    std::thread([] {
      for (;;) {
        if (virEventRunDefaultImpl() < 0) {
          logger("hypervisor")
              ->error("event loop iteration failed: {}",
                      last_error("virEventRunDefaultImpl").message);
        }
      }
    }).detach();
  });
  return result;
}

}  // namespace fabriclab::hypervisor::detail
