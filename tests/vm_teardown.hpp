#pragma once
// Teardown for tests that run VMs on their own embedded libvirt driver (qemu:///embed): no VM may
// outlive its test, and a failed test shows how its guests' boots ended.

#include <cstddef>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "fabriclab/hypervisor/connection.hpp"

namespace fabriclab::testing {

// Destroys (when not shut off) and undefines every domain the connection knows. Errors are
// ignored: this is cleanup, and a domain that went away on its own is what it wants anyway.
inline void remove_all_domains(hypervisor::Connection& conn) {
  auto list = conn.list();
  if (!list.ok()) return;
  for (const auto& info : *list) {
    if (auto d = conn.lookup(info.name); d.ok()) {
      if (info.state != hypervisor::DomainState::shut_off) (void)d->destroy();
      (void)d->undefine();
    }
  }
}

// The last `max_bytes` of every *.console.log in `dir`, on stderr.
inline void dump_console_tails(const std::string& dir, size_t max_bytes) {
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    if (!e.path().string().ends_with(".console.log")) continue;
    std::ifstream in(e.path());
    std::stringstream ss;
    ss << in.rdbuf();
    std::string s = ss.str();
    if (s.size() > max_bytes) s = s.substr(s.size() - max_bytes);
    std::cerr << "---- " << e.path() << " (tail)\n" << s << "\n";
  }
}

}  // namespace fabriclab::testing
