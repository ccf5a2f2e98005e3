// The host side of the integration channel against a fake guest: a unix socket the test binds,
// as QEMU would.

#include "fabriclab/agent/guest_link.hpp"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "fabriclab/testbed/lab_vm.hpp"

namespace fabriclab::agent {
namespace {

using namespace std::chrono_literals;

class FakeGuest {
 public:
  explicit FakeGuest(const std::string& path) {
    listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strcpy(addr.sun_path, path.c_str());
    EXPECT_EQ(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(::listen(listen_fd_, 1), 0);
  }
  ~FakeGuest() {
    if (fd_ >= 0) ::close(fd_);
    ::close(listen_fd_);
  }
  void accept() { fd_ = ::accept(listen_fd_, nullptr, nullptr); }
  void write(const std::string& s) {
    size_t off = 0;
    while (off < s.size()) {
      ssize_t w = ::write(fd_, s.data() + off, s.size() - off);
      ASSERT_GT(w, 0);
      off += w;
    }
  }
  std::string read_some() {
    char buf[4096];
    ssize_t r = ::read(fd_, buf, sizeof(buf));
    return r > 0 ? std::string(buf, r) : std::string();
  }
  void close() {
    ::close(fd_);
    fd_ = -1;
  }

 private:
  int listen_fd_ = -1;
  int fd_ = -1;
};

std::string heartbeat(int seq, int counter) {
  return R"({"type":"heartbeat","seq":)" + std::to_string(seq) +
         R"(,"boot_id":"b1","image":"v1","counter":)" + std::to_string(counter) +
         R"(,"uptime_ms":100})" + "\n";
}

TEST(GuestLink, DropsAndCountsBadLinesAndKeepsTheGoodOnes) {
  auto dir = testbed::make_short_tmpdir("fl-link-");
  ASSERT_TRUE(dir.ok());
  const std::string path = *dir + "/ch.sock";
  FakeGuest guest(path);
  auto link = GuestLink::connect(path, 2s);
  ASSERT_TRUE(link.ok()) << link.error().describe();
  guest.accept();

  guest.write(heartbeat(1, 10));
  guest.write("this is not json\n");
  guest.write(std::string(200 * 1024, 'x'));  // oversized, split across many reads
  guest.write("\n");
  guest.write(R"({"type":"heartbeat","seq":2})"
              "\n");                            // schema violation
  guest.write(heartbeat(2, 11).substr(0, 20));  // a line split in two writes
  guest.write(heartbeat(2, 11).substr(20));

  auto second = (*link)->wait_for(
      [](const GuestMessage& m) {
        auto* h = std::get_if<Heartbeat>(&m);
        return h && h->seq == 2;
      },
      5s);
  ASSERT_TRUE(second.ok()) << second.error().describe();
  EXPECT_EQ(std::get<Heartbeat>(second->message).counter, 11);
  auto stats = (*link)->stats();
  EXPECT_EQ(stats.lines, 2u);
  EXPECT_EQ(stats.malformed, 2u);
  EXPECT_EQ(stats.oversized, 1u);
  ASSERT_TRUE((*link)->last_heartbeat().has_value());
  EXPECT_EQ(std::get<Heartbeat>((*link)->last_heartbeat()->message).seq, 2u);

  ASSERT_TRUE((*link)->send_line(R"({"type":"instance","service":"web"})").ok());
  EXPECT_EQ(guest.read_some(), std::string(R"({"type":"instance","service":"web"})") + "\n");
  EXPECT_EQ((*link)->send_line("two\nlines").condition(), Condition::invalid_argument);

  guest.close();
  EXPECT_TRUE((*link)->wait_closed(5s));
  auto after = (*link)->wait_for_heartbeat(1s, second->index);
  EXPECT_EQ(after.condition(), Condition::transient);
  std::filesystem::remove_all(*dir);
}

TEST(GuestLink, ConnectTimesOutWhenNoGuestListens) {
  auto r = GuestLink::connect("/tmp/fl-no-such-socket.sock", 100ms);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.condition(), Condition::timeout);
  EXPECT_NE(r.error().message.find("fl-no-such-socket"), std::string::npos);
}

TEST(GuestLink, WaitForTimesOutWithoutMessages) {
  auto dir = testbed::make_short_tmpdir("fl-link-");
  ASSERT_TRUE(dir.ok());
  FakeGuest guest(*dir + "/ch.sock");
  auto link = GuestLink::connect(*dir + "/ch.sock", 2s);
  ASSERT_TRUE(link.ok());
  guest.accept();
  EXPECT_EQ((*link)->wait_for_heartbeat(200ms).condition(), Condition::timeout);
  std::filesystem::remove_all(*dir);
}

}  // namespace
}  // namespace fabriclab::agent
