// The qemu-guest-agent, through libvirt.
//
// A guest that runs qemu-guest-agent opens the virtio-serial port org.qemu.guest_agent.0; libvirt
// sees the port change state (QEMU's VSERPORT_CHANGE), connects its agent client to the host side
// of the channel and emits the agent lifecycle event. Commands go through
// virDomainQemuAgentCommand (libvirt-qemu), which first sends guest-sync to flush a stale reply
// and then the command, each bounded by the timeout we pass (whole seconds).
//
// libvirt reports "no agent" and "agent silent" with the same error code (AGENT_UNRESPONSIVE) and
// different messages; callers need to tell them apart (an OS that is still booting versus an agent
// that hangs), so we classify on the message and say which in ours.
//
// guest-exec is asynchronous in the agent: it returns a pid, and guest-exec-status reports
// "exited" with the exit code and base64 output once the process is gone. We poll with a short,
// growing interval (each agent round trip costs tens of milliseconds under TCG) until exited or
// the caller's deadline. Every reply is parsed with limits and checked field by field.

#include <libvirt/libvirt-qemu.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <openssl/evp.h>

#include <algorithm>
#include <boost/json/serialize.hpp>
#include <memory>
#include <thread>

#include "fabriclab/common/json.hpp"
#include "fabriclab/hypervisor/connection.hpp"
#include "libvirt_error.hpp"

namespace fabriclab::hypervisor {

using detail::last_error;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

constexpr size_t kMaxCommandBytes = 1024 * 1024;
// libvirt refuses agent replies above 10 MiB; we accept what it passes, with a margin.
constexpr size_t kMaxReplyBytes = 12 * 1024 * 1024;
constexpr int kMaxReplyDepth = 16;
constexpr milliseconds kMaxTimeout = std::chrono::hours(1);

Status check_timeout(milliseconds t) {
  if (t.count() < 1 || t > kMaxTimeout) {
    return make_error(
        Condition::invalid_argument,
        "guest agent timeout must be in 1 ms..1 h, not " + std::to_string(t.count()) + " ms");
  }
  return {};
}

// libvirt takes whole seconds; never round a short timeout down to 0 (NOWAIT: no reply at all).
int whole_seconds(milliseconds t) {
  return static_cast<int>(std::max<int64_t>(1, (t.count() + 999) / 1000));
}

// Turns the failed virDomainQemuAgentCommand's error into ours (see the header for the contract).
Error agent_error(const std::string& domain, const std::string& command, int seconds) {
  virErrorPtr raw = virGetLastError();
  const int code = raw ? raw->code : VIR_ERR_INTERNAL_ERROR;
  const std::string text = (raw && raw->message) ? raw->message : "";
  Error e = last_error("guest agent command '" + command + "' on '" + domain + "'");
  auto has = [&](const char* s) { return text.find(s) != std::string::npos; };
  switch (code) {
    case VIR_ERR_AGENT_UNRESPONSIVE:
      if (has("not connected") || has("due to an error")) {
        e.condition = Condition::transient;
        e.message = "guest agent of '" + domain + "' is not connected (" + text + ")";
      } else {
        e.condition = Condition::timeout;
        e.message = "guest agent of '" + domain + "' did not answer '" + command + "' within " +
                    std::to_string(seconds) + " s (" + text + ")";
      }
      break;
    case VIR_ERR_ARGUMENT_UNSUPPORTED:
      if (has("not configured")) {
        e.condition = Condition::unsupported;
        e.message = "'" + domain + "' has no guest agent channel (" + text + ")";
      }
      break;
    case VIR_ERR_INTERNAL_ERROR:
      // The agent answered with an error object ("unable to execute QEMU agent command ...").
      if (has("agent command")) e.condition = Condition::invalid_argument;
      break;
    default:
      break;
  }
  return e;
}

// The value of "return" in an agent reply; anything else is an error naming the command.
Result<json::value> reply_return(const std::string& reply, const std::string& command) {
  auto o = parse_json_object(reply, kMaxReplyBytes, kMaxReplyDepth,
                             "guest agent reply to '" + command + "'");
  if (!o.ok()) return make_error(Condition::internal, o.error().message);
  auto it = o->find("return");
  if (it == o->end()) {
    return make_error(Condition::internal, "guest agent reply to '" + command +
                                               "' has no \"return\": " + reply.substr(0, 200));
  }
  return it->value();
}

// Standard base64 (the agent's out-data / err-data) through OpenSSL's EVP decoder.
Result<std::string> base64_decode(std::string_view in, const std::string& what) {
  if (in.size() % 4 != 0) {
    return make_error(Condition::internal,
                      what + " is not base64 (length " + std::to_string(in.size()) + ")");
  }
  std::unique_ptr<EVP_ENCODE_CTX, void (*)(EVP_ENCODE_CTX*)> ctx(EVP_ENCODE_CTX_new(),
                                                                 EVP_ENCODE_CTX_free);
  if (!ctx) return make_error(Condition::internal, "out of memory decoding " + what);
  EVP_DecodeInit(ctx.get());
  std::string out(in.size() / 4 * 3 + 3, '\0');
  int n = 0, tail = 0;
  // The EVP decoder takes an int length; 12 MiB replies stay far below it.
  if (EVP_DecodeUpdate(ctx.get(), reinterpret_cast<unsigned char*>(out.data()), &n,
                       reinterpret_cast<const unsigned char*>(in.data()),
                       static_cast<int>(in.size())) < 0 ||
      EVP_DecodeFinal(ctx.get(), reinterpret_cast<unsigned char*>(out.data()) + n, &tail) < 0) {
    return make_error(Condition::internal, what + " is not valid base64");
  }
  out.resize(static_cast<size_t>(n + tail));
  return out;
}

Status check_argv(const std::vector<std::string>& argv) {
  if (argv.empty()) return make_error(Condition::invalid_argument, "guest_exec: argv is empty");
  if (argv.size() > kGuestExecMaxArgs) {
    return make_error(Condition::invalid_argument,
                      "guest_exec: more than " + std::to_string(kGuestExecMaxArgs) + " arguments");
  }
  if (argv[0].empty() || argv[0][0] != '/') {
    return make_error(Condition::invalid_argument,
                      "guest_exec: argv[0] must be an absolute path: '" + argv[0] + "'");
  }
  for (size_t i = 0; i < argv.size(); ++i) {
    if (argv[i].size() > kGuestExecMaxArgBytes) {
      return make_error(Condition::invalid_argument,
                        "guest_exec: argv[" + std::to_string(i) + "] is longer than " +
                            std::to_string(kGuestExecMaxArgBytes) + " bytes");
    }
    if (argv[i].find('\0') != std::string::npos) {
      return make_error(Condition::invalid_argument,
                        "guest_exec: argv[" + std::to_string(i) + "] contains a NUL byte");
    }
  }
  return {};
}

// One stream of a finished guest-exec-status reply into `out` (capped), noting truncation.
Status take_output(const json::object& st, const char* data_key, const char* truncated_key,
                   const std::string& what, std::string& out, bool& truncated) {
  if (auto it = st.find(data_key); it != st.end()) {
    if (!it->value().is_string())
      return make_error(Condition::internal, what + ": \"" + data_key + "\" is not a string");
    const auto& s = it->value().get_string();
    FL_ASSIGN_OR_RETURN(out,
                        base64_decode(std::string_view(s.data(), s.size()), what + " " + data_key));
    if (out.size() > kGuestExecOutputCap) {
      out.resize(kGuestExecOutputCap);
      truncated = true;
    }
  }
  if (auto it = st.find(truncated_key);
      it != st.end() && it->value().is_bool() && it->value().get_bool()) {
    truncated = true;
  }
  return {};
}

// A guest-exec-status "return" object for an exited process.
Result<GuestExecResult> exec_result(const json::object& st, const std::string& what) {
  GuestExecResult r;
  auto code = get_optional_int(st, "exitcode", -255, 255);
  if (!code.ok()) return make_error(Condition::internal, what + ": " + code.error().message);
  auto sig = get_optional_int(st, "signal", 1, 255);
  if (!sig.ok()) return make_error(Condition::internal, what + ": " + sig.error().message);
  if (code->has_value()) {
    r.exit_code = static_cast<int>(**code);
  } else if (sig->has_value()) {
    r.signal = static_cast<int>(**sig);
    r.exit_code = 128 + r.signal;
  } else {
    return make_error(Condition::internal, what + ": exited without \"exitcode\" or \"signal\"");
  }
  FL_RETURN_IF_ERROR(take_output(st, "out-data", "out-truncated", what, r.out, r.truncated));
  FL_RETURN_IF_ERROR(take_output(st, "err-data", "err-truncated", what, r.err, r.truncated));
  return r;
}

bool is_boot_id(const std::string& s) {
  if (s.size() != 36) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    const bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash != (s[i] == '-')) return false;
    if (!dash && !((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
  }
  return true;
}

}  // namespace

Result<std::string> Domain::agent_command(const std::string& command_json, milliseconds timeout) {
  FL_RETURN_IF_ERROR(check_timeout(timeout));
  auto cmd =
      parse_json_object(command_json, kMaxCommandBytes, kMaxReplyDepth, "guest agent command");
  if (!cmd.ok()) return cmd.error();
  auto execute = get_string(*cmd, "execute", 128);
  if (!execute.ok())
    return make_error(Condition::invalid_argument,
                      "guest agent command: " + execute.error().message);
  const int seconds = whole_seconds(timeout);
  char* reply = virDomainQemuAgentCommand(dom_, command_json.c_str(), seconds, 0);
  if (!reply) return agent_error(name_, *execute, seconds);
  std::string out(reply);
  free(reply);
  return out;
}

Status Domain::guest_ping(milliseconds timeout) {
  FL_ASSIGN_OR_RETURN(std::string reply, agent_command(R"({"execute":"guest-ping"})", timeout));
  FL_RETURN_IF_ERROR(reply_return(reply, "guest-ping"));
  return {};
}

Result<bool> Domain::guest_agent_connected() const {
  FL_ASSIGN_OR_RETURN(std::string x, xml(false));
  // <target type='virtio' name='org.qemu.guest_agent.0' state='connected'/> (live XML only).
  const auto name = x.find(std::string("name='") + kGuestAgentChannelName + "'");
  if (name == std::string::npos) return false;
  const auto begin = x.rfind("<target", name);
  const auto end = x.find('>', name);
  if (begin == std::string::npos || end == std::string::npos) return false;
  return x.substr(begin, end - begin).find("state='connected'") != std::string::npos;
}

Result<GuestExecResult> Domain::guest_exec(const std::vector<std::string>& argv,
                                           milliseconds timeout) {
  FL_RETURN_IF_ERROR(check_argv(argv));
  FL_RETURN_IF_ERROR(check_timeout(timeout));
  const auto deadline = Clock::now() + timeout;
  const std::string what = "guest-exec of " + argv[0] + " on '" + name_ + "'";

  json::object args{{"path", argv[0]}, {"capture-output", true}};
  json::array rest;
  for (size_t i = 1; i < argv.size(); ++i) rest.emplace_back(argv[i]);
  args["arg"] = std::move(rest);
  json::object exec{{"execute", "guest-exec"}, {"arguments", std::move(args)}};
  FL_ASSIGN_OR_RETURN(std::string reply, agent_command(json::serialize(exec), timeout));
  FL_ASSIGN_OR_RETURN(json::value ret, reply_return(reply, "guest-exec"));
  const json::value* pid = ret.is_object() ? ret.get_object().if_contains("pid") : nullptr;
  if (!pid || !pid->is_int64() || pid->get_int64() < 1 || pid->get_int64() > INT32_MAX) {
    return make_error(Condition::internal,
                      what + ": the reply has no valid pid: " + reply.substr(0, 200));
  }

  const std::string status_cmd = json::serialize(json::object{
      {"execute", "guest-exec-status"}, {"arguments", json::object{{"pid", pid->get_int64()}}}});
  milliseconds pause{50};
  for (;;) {
    auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
    FL_ASSIGN_OR_RETURN(reply, agent_command(status_cmd, std::max(left, milliseconds(1))));
    FL_ASSIGN_OR_RETURN(json::value st, reply_return(reply, "guest-exec-status"));
    if (!st.is_object())
      return make_error(Condition::internal, what + ": guest-exec-status returned no object");
    auto exited = get_bool(st.get_object(), "exited");
    if (!exited.ok()) return make_error(Condition::internal, what + ": " + exited.error().message);
    if (*exited) return exec_result(st.get_object(), what);
    left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      return make_error(Condition::timeout,
                        what + " did not exit within " + std::to_string(timeout.count()) +
                            " ms (guest pid " + std::to_string(pid->get_int64()) + ")");
    }
    std::this_thread::sleep_for(std::min(pause, left));
    pause = std::min(pause * 2, milliseconds(500));
  }
}

Result<std::string> Domain::guest_boot_id(milliseconds timeout) {
  FL_ASSIGN_OR_RETURN(GuestExecResult r,
                      guest_exec({"/bin/cat", "/proc/sys/kernel/random/boot_id"}, timeout));
  if (r.exit_code != 0) {
    return make_error(Condition::internal, "reading the boot id of '" + name_ + "' failed (exit " +
                                               std::to_string(r.exit_code) +
                                               "): " + r.err.substr(0, 200));
  }
  std::string id = r.out;
  while (!id.empty() && (id.back() == '\n' || id.back() == '\r')) id.pop_back();
  if (!is_boot_id(id)) {
    return make_error(Condition::internal,
                      "the boot id of '" + name_ + "' is not a UUID: '" + id.substr(0, 64) + "'");
  }
  return id;
}

}  // namespace fabriclab::hypervisor
