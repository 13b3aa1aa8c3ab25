// grpc health checks against a real gRPC server: grpc++'s own
// implementation of grpc.health.v1 (grpc::EnableDefaultHealthCheckService),
// on loopback. The call object is driven over a plain socket here, as the
// health check's loop code drives it; tests/discovery drives the whole check
// through the plugin on the daemon's loop.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <thread>

#include "grpc_health.h"
#include "grpc_test_server.h"

namespace flotilla::discovery {
namespace {

int connect_to(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  if (connect(fd, reinterpret_cast<sockaddr *>(&a), sizeof a) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// Runs one call to completion over a blocking socket (a 10 s hang guard).
struct Outcome {
  bool done = false, passed = false;
  std::string result, first_bytes;
};
Outcome call(int port, const std::string &service, uint32_t timeout_ms = 2000) {
  Outcome o;
  int fd = connect_to(port);
  if (fd < 0) {
    o.result = "connect failed";
    return o;
  }
  GrpcHealthCall c("127.0.0.1:" + std::to_string(port), service, timeout_ms);
  std::string out = c.output();
  o.first_bytes = out.substr(0, 24);
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!c.done() && std::chrono::steady_clock::now() < end) {
    if (!out.empty()) {
      if (send(fd, out.data(), out.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(out.size())) break;
      out.clear();
    }
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 100) <= 0) continue;
    uint8_t buf[4096];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) {
      c.closed();
      break;
    }
    c.input(buf, static_cast<size_t>(n));
    out = c.output();
  }
  close(fd);
  o.done = c.done();
  o.passed = c.passed();
  o.result = c.result();
  return o;
}

TEST(GrpcHealth, MessagesAreEncodedAndDecodedByTheWireRules) {
  // HealthCheckRequest{service: "api"}: field 1, length 3, framed.
  EXPECT_EQ(grpc_health_request("api"), std::string("\0\0\0\0\x05\x0a\x03" "api", 10));
  // proto3 leaves an empty string out: an empty message.
  EXPECT_EQ(grpc_health_request(""), std::string(5, '\0'));
  // HealthCheckResponse{status: SERVING}
  EXPECT_EQ(grpc_health_response_status(std::string("\0\0\0\0\x02\x08\x01", 7)), 1);
  // status absent: 0 (UNKNOWN); an unknown field before it is skipped.
  EXPECT_EQ(grpc_health_response_status(std::string(5, '\0')), 0);
  EXPECT_EQ(grpc_health_response_status(std::string("\0\0\0\0\x06\x12\x02hi\x08\x02", 11)), 2);
  // compressed, cut short, or a truncated varint: not a response.
  EXPECT_EQ(grpc_health_response_status(std::string("\x01\0\0\0\x02\x08\x01", 7)), -1);
  EXPECT_EQ(grpc_health_response_status(std::string("\0\0\0\0\x05\x08\x01", 7)), -1);
  EXPECT_EQ(grpc_health_response_status(std::string("\0\0\0\0\x02\x08\x81", 7)), -1);
  EXPECT_EQ(grpc_percent_decode("unknown%20service%ZZ%"), "unknown service%ZZ%");
  EXPECT_STREQ(grpc_status_name(5), "NOT_FOUND");
  EXPECT_STREQ(grpc_status_name(99), "an unknown code");
}

TEST(GrpcHealth, ServingNotServingAndUnknownFromARealGrpcServer) {
  test::GrpcServer server;
  ASSERT_TRUE(server.up()) << "grpc++ could not listen on 127.0.0.1";
  server.set("api", true);

  auto whole = call(server.port(), "");
  EXPECT_EQ(whole.first_bytes, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") << "the h2c preface goes first";
  ASSERT_TRUE(whole.done) << whole.result;
  EXPECT_TRUE(whole.passed) << whole.result;
  EXPECT_EQ(whole.result, "SERVING");

  auto api = call(server.port(), "api");
  EXPECT_TRUE(api.passed) << api.result;
  EXPECT_EQ(api.result, "SERVING");

  server.set("api", false);
  auto down = call(server.port(), "api");
  ASSERT_TRUE(down.done);
  EXPECT_FALSE(down.passed);
  EXPECT_EQ(down.result, "NOT_SERVING");

  // A service the server does not know: grpc-status NOT_FOUND, its message.
  auto unknown = call(server.port(), "no.such.Service");
  ASSERT_TRUE(unknown.done);
  EXPECT_FALSE(unknown.passed);
  EXPECT_EQ(unknown.result.rfind("grpc-status 5 (NOT_FOUND)", 0), 0u) << unknown.result;
}

// Something that is not a gRPC server: an HTTP/1.1 server answering 400 to
// the preface, and one that closes at once. Each is a clear failure.
TEST(GrpcHealth, ANonGrpcPeerIsAClearFailure) {
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  ASSERT_EQ(bind(lfd, reinterpret_cast<sockaddr *>(&a), sizeof a), 0);
  ASSERT_EQ(listen(lfd, 4), 0);
  getsockname(lfd, reinterpret_cast<sockaddr *>(&a), &len);
  const int port = ntohs(a.sin_port);
  std::thread peer([lfd] {
    for (int i = 0; i < 2; ++i) {
      int c = accept(lfd, nullptr, nullptr);
      if (c < 0) return;
      if (i == 0) {
        char buf[256];
        (void)!recv(c, buf, sizeof buf, 0);
        const char reply[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
        (void)!send(c, reply, sizeof reply - 1, MSG_NOSIGNAL);
      }
      close(c);
    }
  });
  auto http1 = call(port, "");
  auto closes = call(port, "");
  peer.join();
  close(lfd);
  ASSERT_TRUE(http1.done);
  EXPECT_FALSE(http1.passed);
  EXPECT_NE(http1.result.find("not an HTTP/2 gRPC server"), std::string::npos) << http1.result;
  ASSERT_TRUE(closes.done);
  EXPECT_FALSE(closes.passed);
  EXPECT_NE(closes.result.find("closed before an HTTP/2 response"), std::string::npos)
      << closes.result;
}

}  // namespace
}  // namespace flotilla::discovery
