// One call of the standard gRPC health protocol, grpc.health.v1.Health/Check,
// over HTTP/2 in cleartext (h2c with prior knowledge, as grpc-go's and
// grpc++'s servers accept on a plain port). HTTP/2 framing and HPACK are
// libnghttp2's (Debian's libnghttp2-dev, the library libcurl's HTTP/2 uses);
// the two protobuf messages are a string and an enum, encoded here. No
// grpc++ in the plugin: measured with store-etcd, it costs a node about
// 8 MiB of RSS and seven threads of its own, for one unary call.
//
// The object does no I/O. The health check's socket code hands it what it
// reads and sends what output() gives it, on the loop, as the tcp and http
// checks do; the unit tests drive it the same way against a real grpc++
// server.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

struct nghttp2_session;

namespace flotilla::discovery {

// The gRPC status codes' names (grpc/status.h), for check output.
const char *grpc_status_name(int code);

// HealthCheckResponse.ServingStatus names.
const char *grpc_serving_status_name(int status);

// grpc-message is percent-encoded (the gRPC HTTP/2 protocol spec).
std::string grpc_percent_decode(const std::string &s);

// A gRPC message frame holding HealthCheckRequest{service}.
std::string grpc_health_request(const std::string &service);

// The status field of a HealthCheckResponse in a gRPC message frame; -1
// when body is not one (compressed, short, malformed).
int grpc_health_response_status(const std::string &body);

class GrpcHealthCall {
 public:
  // authority: "host:port" for :authority; timeout_ms goes out as
  // grpc-timeout so the server gives up when we do.
  GrpcHealthCall(const std::string &authority, const std::string &service, uint32_t timeout_ms);
  ~GrpcHealthCall();
  GrpcHealthCall(const GrpcHealthCall &) = delete;
  GrpcHealthCall &operator=(const GrpcHealthCall &) = delete;

  // Bytes to write now: the connection preface and SETTINGS, the request,
  // and whatever the session answers (SETTINGS and PING acks, window
  // updates). Empty when nothing is due.
  std::string output();
  // Bytes read from the connection. After it, done() may be true.
  void input(const uint8_t *data, size_t len);
  // The peer closed the connection (read returned 0).
  void closed();

  bool done() const { return done_; }
  // Valid once done(): passed is true only for SERVING with grpc-status 0.
  bool passed() const { return passed_; }
  // "SERVING", "NOT_SERVING", "grpc-status 5 (NOT_FOUND): unknown service",
  // "HTTP 404", "stream reset by the server: REFUSED_STREAM", ...
  const std::string &result() const { return result_; }

 private:
  friend struct GrpcCallbacks;
  void finish(bool passed, std::string result);
  void stream_closed(uint32_t error_code);

  nghttp2_session *session_ = nullptr;
  int32_t stream_ = -1;
  std::string request_body_;
  size_t request_sent_ = 0;
  std::string http_status_, grpc_status_, grpc_message_, content_type_;
  std::string body_;
  std::string error_;  // nghttp2's first protocol error
  bool body_too_large_ = false;
  bool done_ = false, passed_ = false;
  std::string result_;
};

}  // namespace flotilla::discovery
