#pragma once
// What the tests that drive a real HAProxy share: a loopback port held for HAProxy until the test
// ends, the binary, and the master process started as the rack starts it (`haproxy -W -S SOCK -f
// CFG`, its output in a log file) and stopped with SIGTERM (then SIGKILL).
//
// Why a port is held, not just picked: tests run in parallel, and a port picked by binding port 0
// and closing the socket is free again until HAProxy binds it, which may be seconds later (at
// the first reload). Another test could take it meanwhile; HAProxy binds with SO_REUSEPORT, so a
// second HAProxy on the same port is no error: the kernel spreads the connections over both and
// a client reaches the wrong one. A ReservedPort stays bound (never listening, so it receives no
// connection) with SO_REUSEPORT: HAProxy, running as the same user, may bind it too, and nobody
// else is handed the port while the test holds it.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace fabriclab::testing {

class ReservedPort {
 public:
  ReservedPort() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) return;
    int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      ::close(fd_);
      fd_ = -1;
      return;
    }
    port_ = ntohs(a.sin_port);
  }
  ~ReservedPort() {
    if (fd_ >= 0) ::close(fd_);
  }
  ReservedPort(const ReservedPort&) = delete;
  ReservedPort& operator=(const ReservedPort&) = delete;

  // 0 when no port could be bound.
  uint16_t port() const { return port_; }
  std::string loopback() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  int fd_ = -1;
  uint16_t port_ = 0;
};

inline std::string haproxy_bin() {
  if (const char* e = std::getenv("FABRICLAB_HAPROXY"); e && *e) return e;
  for (const char* p : {"/usr/sbin/haproxy", "/usr/local/sbin/haproxy", "/usr/bin/haproxy"}) {
    if (::access(p, X_OK) == 0) return p;
  }
  return "haproxy";
}

// HAProxy in master-worker mode, stdout and stderr to `log`. start() returns posix_spawn's error
// (0 on success); the destructor stops it.
class HaproxyProcess {
 public:
  HaproxyProcess() = default;
  HaproxyProcess(const HaproxyProcess&) = delete;
  HaproxyProcess& operator=(const HaproxyProcess&) = delete;
  ~HaproxyProcess() { stop(); }

  int start(const std::string& config, const std::string& master_socket, const std::string& log) {
    std::vector<std::string> argv{haproxy_bin(), "-W", "-S", master_socket, "-f", config};
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    int rc = ::posix_spawn(&pid_, args[0], &fa, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) pid_ = -1;
    return rc;
  }

  // SIGTERM, up to 10 s for the master to go, then SIGKILL.
  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    int status = 0;
    bool gone = false;
    for (int i = 0; i < 200 && !(gone = ::waitpid(pid_, &status, WNOHANG) == pid_); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (!gone) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &status, 0);
    }
    pid_ = -1;
  }

 private:
  pid_t pid_ = -1;
};

}  // namespace fabriclab::testing
