// A port for a server a test is about to start, shared by every test that
// needs one (registry_test_support.h, test_discovery_plugin.cc, ...).
//
// Not bind(port 0) then close: that hands out a port of the ephemeral range
// (net.ipv4.ip_local_port_range, 32768-60999 by default), which the
// kernel also gives to the next connect() of any process, so in a parallel
// test run the port can be some connection's local port by the time the
// server binds it. Ports are drawn from 20000-32000 instead, which
// connect() never hands out, and each candidate is checked bindable on the
// protocols the server will use.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <random>
#include <string>

namespace flotilla::testing {

// Whether host:port can be bound for type (SOCK_STREAM, SOCK_DGRAM) now.
inline bool port_bindable(int type, uint16_t port, const std::string &host = "127.0.0.1") {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  if (::inet_pton(AF_INET, host.c_str(), &a.sin_addr) != 1) return false;
  int fd = ::socket(AF_INET, type | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  bool ok = ::bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof a) == 0;
  ::close(fd);
  return ok;
}

enum class PortUse { tcp, tcp_and_udp };

// A port of 20000-32000 free on host for use; 0 when 1000 draws found none.
inline uint16_t free_port_below_ephemeral(PortUse use = PortUse::tcp,
                                          const std::string &host = "127.0.0.1") {
  static std::mt19937 rng(
      static_cast<unsigned>(::getpid()) ^
      static_cast<unsigned>(std::chrono::steady_clock::now().time_since_epoch().count()));
  std::uniform_int_distribution<int> pick(20000, 32000);
  for (int i = 0; i < 1000; ++i) {
    auto port = static_cast<uint16_t>(pick(rng));
    if (!port_bindable(SOCK_STREAM, port, host)) continue;
    if (use == PortUse::tcp_and_udp && !port_bindable(SOCK_DGRAM, port, host)) continue;
    return port;
  }
  return 0;
}

}  // namespace flotilla::testing
