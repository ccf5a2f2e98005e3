#pragma once
// A network namespace of a test's own making (needs root and iproute2's ip): its loopback up with
// one address from 198.18.0.0/15, which exists nowhere else on the machine, so that a server whose
// listening socket is opened inside it is reachable only through the namespace. Deleted when the
// object goes.

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <unistd.h>

#include <cstdlib>
#include <functional>
#include <string>

namespace fabriclab::testing {

// Whether this process can make namespaces: root and /usr/sbin/ip.
inline bool can_make_netns() { return geteuid() == 0 && access("/usr/sbin/ip", X_OK) == 0; }

class TestNetns {
 public:
  TestNetns() = default;
  TestNetns(const TestNetns&) = delete;
  TestNetns& operator=(const TestNetns&) = delete;
  ~TestNetns() {
    if (made_) (void)std::system(("/usr/sbin/ip netns delete " + name_).c_str());
  }

  // Makes namespace `name` with `address`/32 on its loopback.
  ::testing::AssertionResult make(const std::string& name, const std::string& address) {
    name_ = name;
    if (std::system(("/usr/sbin/ip netns add " + name).c_str()) != 0)
      return ::testing::AssertionFailure() << "ip netns add " << name << " failed";
    made_ = true;
    const std::string ns = "/usr/sbin/ip -n " + name;
    if (std::system(
            (ns + " link set lo up && " + ns + " addr add " + address + "/32 dev lo").c_str()) != 0)
      return ::testing::AssertionFailure()
             << "could not bring up lo with " << address << " in " << name;
    return ::testing::AssertionSuccess();
  }

  // Runs `fn` with this thread inside the namespace (a listening socket opened there stays there)
  // and brings the thread back to its own.
  ::testing::AssertionResult run_inside(const std::function<void()>& fn) {
    int target = open(("/run/netns/" + name_).c_str(), O_RDONLY | O_CLOEXEC);
    int self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    auto done = [&](::testing::AssertionResult r) {
      if (target >= 0) close(target);
      if (self >= 0) close(self);
      return r;
    };
    if (target < 0 || self < 0)
      return done(::testing::AssertionFailure() << "cannot open the namespaces of " << name_);
    if (setns(target, CLONE_NEWNET) != 0)
      return done(::testing::AssertionFailure() << "cannot enter " << name_);
    fn();
    if (setns(self, CLONE_NEWNET) != 0)
      return done(::testing::AssertionFailure() << "cannot come back from " << name_);
    return done(::testing::AssertionSuccess());
  }

  const std::string& name() const { return name_; }

 private:
  std::string name_;
  bool made_ = false;
};

}  // namespace fabriclab::testing
