#include "grpc_health.h"

#include <nghttp2/nghttp2.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace flotilla::discovery {

namespace {

// A response body larger than this is not a HealthCheckResponse.
constexpr size_t kBodyLimit = 64 * 1024;
constexpr char kPath[] = "/grpc.health.v1.Health/Check";

void put_varint(std::string &out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

bool get_varint(const std::string &in, size_t &at, uint64_t &v) {
  v = 0;
  for (int shift = 0; shift < 64 && at < in.size(); shift += 7) {
    const auto b = static_cast<uint8_t>(in[at++]);
    v |= static_cast<uint64_t>(b & 0x7f) << shift;
    if (!(b & 0x80)) return true;
  }
  return false;
}

nghttp2_nv header(const char *name, const std::string &value) {
  return {reinterpret_cast<uint8_t *>(const_cast<char *>(name)),
          reinterpret_cast<uint8_t *>(const_cast<char *>(value.data())), std::strlen(name),
          value.size(), NGHTTP2_NV_FLAG_NONE};
}

}  // namespace

const char *grpc_status_name(int code) {
  static const char *const names[] = {"OK",
                                      "CANCELLED",
                                      "UNKNOWN",
                                      "INVALID_ARGUMENT",
                                      "DEADLINE_EXCEEDED",
                                      "NOT_FOUND",
                                      "ALREADY_EXISTS",
                                      "PERMISSION_DENIED",
                                      "RESOURCE_EXHAUSTED",
                                      "FAILED_PRECONDITION",
                                      "ABORTED",
                                      "OUT_OF_RANGE",
                                      "UNIMPLEMENTED",
                                      "INTERNAL",
                                      "UNAVAILABLE",
                                      "DATA_LOSS",
                                      "UNAUTHENTICATED"};
  return code >= 0 && code <= 16 ? names[code] : "an unknown code";
}

const char *grpc_serving_status_name(int status) {
  switch (status) {
    case 0:
      return "UNKNOWN";
    case 1:
      return "SERVING";
    case 2:
      return "NOT_SERVING";
    case 3:
      return "SERVICE_UNKNOWN";
    default:
      return "an unknown serving status";
  }
}

std::string grpc_percent_decode(const std::string &s) {
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size()) {
      int hi = hex(s[i + 1]), lo = hex(s[i + 2]);
      if (hi >= 0 && lo >= 0) {
        out.push_back(static_cast<char>(hi * 16 + lo));
        i += 2;
        continue;
      }
    }
    out.push_back(s[i]);
  }
  return out;
}

// A gRPC message: a compressed flag (0), a 4-byte big-endian length, then
// the protobuf. HealthCheckRequest has one field, 1: string service, which
// proto3 leaves out when empty.
std::string grpc_health_request(const std::string &service) {
  std::string msg;
  if (!service.empty()) {
    msg.push_back(0x0a);  // field 1, length-delimited
    put_varint(msg, service.size());
    msg += service;
  }
  std::string frame(5, '\0');
  const auto n = static_cast<uint32_t>(msg.size());
  frame[1] = static_cast<char>(n >> 24);
  frame[2] = static_cast<char>(n >> 16);
  frame[3] = static_cast<char>(n >> 8);
  frame[4] = static_cast<char>(n);
  return frame + msg;
}

// HealthCheckResponse: field 1, ServingStatus status (an enum, a varint).
// Absent means 0 (UNKNOWN). Unknown fields are skipped by wire type.
int grpc_health_response_status(const std::string &body) {
  if (body.size() < 5 || body[0] != 0) return -1;  // short, or compressed
  const uint32_t n = (static_cast<uint32_t>(static_cast<uint8_t>(body[1])) << 24) |
                     (static_cast<uint32_t>(static_cast<uint8_t>(body[2])) << 16) |
                     (static_cast<uint32_t>(static_cast<uint8_t>(body[3])) << 8) |
                     static_cast<uint32_t>(static_cast<uint8_t>(body[4]));
  if (body.size() < 5 + static_cast<size_t>(n)) return -1;
  const std::string msg = body.substr(5, n);
  int status = 0;
  size_t at = 0;
  while (at < msg.size()) {
    uint64_t key = 0, v = 0;
    if (!get_varint(msg, at, key)) return -1;
    switch (key & 7) {
      case 0:
        if (!get_varint(msg, at, v)) return -1;
        if (key >> 3 == 1) status = static_cast<int>(v & 0x7fffffff);
        break;
      case 1:
        if (msg.size() - at < 8) return -1;
        at += 8;
        break;
      case 2:
        if (!get_varint(msg, at, v) || msg.size() - at < v) return -1;
        at += static_cast<size_t>(v);
        break;
      case 5:
        if (msg.size() - at < 4) return -1;
        at += 4;
        break;
      default:
        return -1;
    }
  }
  return status;
}

// nghttp2's callbacks, with the call as user data.
struct GrpcCallbacks {
  static GrpcHealthCall *call(void *user) { return static_cast<GrpcHealthCall *>(user); }

  static int on_header(nghttp2_session *, const nghttp2_frame *frame, const uint8_t *name,
                       size_t namelen, const uint8_t *value, size_t valuelen, uint8_t,
                       void *user) {
    auto *c = call(user);
    if (frame->hd.type != NGHTTP2_HEADERS || frame->hd.stream_id != c->stream_) return 0;
    const std::string n(reinterpret_cast<const char *>(name), namelen);
    std::string v(reinterpret_cast<const char *>(value), valuelen);
    if (n == ":status") c->http_status_ = std::move(v);
    else if (n == "grpc-status") c->grpc_status_ = std::move(v);
    else if (n == "grpc-message") c->grpc_message_ = grpc_percent_decode(v).substr(0, 512);
    return 0;
  }

  static int on_data(nghttp2_session *, uint8_t, int32_t stream, const uint8_t *data, size_t len,
                     void *user) {
    auto *c = call(user);
    if (stream != c->stream_) return 0;
    if (c->body_.size() + len > kBodyLimit) c->body_too_large_ = true;
    else c->body_.append(reinterpret_cast<const char *>(data), len);
    return 0;
  }

  static int on_close(nghttp2_session *, int32_t stream, uint32_t error_code, void *user) {
    auto *c = call(user);
    if (stream == c->stream_) c->stream_closed(error_code);
    return 0;
  }

  // A protocol error, e.g. an HTTP/1 server's answer to the preface.
  static int on_error(nghttp2_session *, int, const char *msg, size_t len, void *user) {
    auto *c = call(user);
    if (c->error_.empty()) c->error_.assign(msg, std::min<size_t>(len, 200));
    return 0;
  }

  static ssize_t read_request(nghttp2_session *, int32_t, uint8_t *buf, size_t length,
                              uint32_t *flags, nghttp2_data_source *, void *user) {
    auto *c = call(user);
    const size_t n = std::min(length, c->request_body_.size() - c->request_sent_);
    std::memcpy(buf, c->request_body_.data() + c->request_sent_, n);
    c->request_sent_ += n;
    if (c->request_sent_ == c->request_body_.size()) *flags |= NGHTTP2_DATA_FLAG_EOF;
    return static_cast<ssize_t>(n);
  }
};

GrpcHealthCall::GrpcHealthCall(const std::string &authority, const std::string &service,
                               uint32_t timeout_ms)
    : request_body_(grpc_health_request(service)) {
  nghttp2_session_callbacks *cbs = nullptr;
  if (nghttp2_session_callbacks_new(&cbs) != 0) {
    finish(false, "out of memory for an HTTP/2 session");
    return;
  }
  nghttp2_session_callbacks_set_on_header_callback(cbs, &GrpcCallbacks::on_header);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, &GrpcCallbacks::on_data);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, &GrpcCallbacks::on_close);
  nghttp2_session_callbacks_set_error_callback2(cbs, &GrpcCallbacks::on_error);
  const int rc = nghttp2_session_client_new(&session_, cbs, this);
  nghttp2_session_callbacks_del(cbs);
  if (rc != 0) {
    session_ = nullptr;
    finish(false, std::string("HTTP/2 session: ") + nghttp2_strerror(rc));
    return;
  }
  // One stream, and no server push.
  nghttp2_settings_entry settings[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
                                       {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 1}};
  nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings, 2);
  // grpc-timeout: at most 8 digits, then a unit (m = milliseconds).
  const std::string timeout = std::to_string(std::min<uint32_t>(timeout_ms, 99999999)) + "m";
  const std::string method = "POST", scheme = "http", path = kPath,
                    type = "application/grpc", te = "trailers",
                    agent = "flotilla-health-check";
  std::vector<nghttp2_nv> nva = {header(":method", method),     header(":scheme", scheme),
                                 header(":path", path),         header(":authority", authority),
                                 header("content-type", type),  header("te", te),
                                 header("grpc-timeout", timeout), header("user-agent", agent)};
  nghttp2_data_provider body{};
  body.read_callback = &GrpcCallbacks::read_request;
  // nghttp2 copies the header names and values.
  stream_ = nghttp2_submit_request(session_, nullptr, nva.data(), nva.size(), &body, nullptr);
  if (stream_ < 0)
    finish(false, std::string("HTTP/2 request: ") + nghttp2_strerror(stream_));
}

GrpcHealthCall::~GrpcHealthCall() {
  if (session_) nghttp2_session_del(session_);
}

std::string GrpcHealthCall::output() {
  std::string out;
  if (!session_) return out;
  for (;;) {
    const uint8_t *data = nullptr;
    const ssize_t n = nghttp2_session_mem_send(session_, &data);
    if (n < 0) {
      finish(false, std::string("HTTP/2: ") + nghttp2_strerror(static_cast<int>(n)));
      break;
    }
    if (n == 0) break;
    out.append(reinterpret_cast<const char *>(data), static_cast<size_t>(n));
  }
  return out;
}

void GrpcHealthCall::input(const uint8_t *data, size_t len) {
  if (done_ || !session_) return;
  const ssize_t n = nghttp2_session_mem_recv(session_, data, len);
  if (done_) return;
  if (n < 0) {
    finish(false, std::string("not an HTTP/2 gRPC server (") +
                      nghttp2_strerror(static_cast<int>(n)) + ")");
  } else if (!error_.empty() && !nghttp2_session_want_read(session_)) {
    // The session ended on a protocol error (a GOAWAY is queued).
    finish(false, "not an HTTP/2 gRPC server: " + error_);
  }
}

void GrpcHealthCall::closed() {
  if (done_) return;
  if (!error_.empty()) return finish(false, "not an HTTP/2 gRPC server: " + error_);
  finish(false, http_status_.empty()
                      ? "the connection closed before an HTTP/2 response (is the port a "
                        "cleartext gRPC server?)"
                      : "the connection closed before the response ended");
}

void GrpcHealthCall::finish(bool passed, std::string result) {
  if (done_) return;
  done_ = true;
  passed_ = passed;
  result_ = std::move(result);
}

void GrpcHealthCall::stream_closed(uint32_t error_code) {
  if (error_code != NGHTTP2_NO_ERROR)
    return finish(false, std::string("stream reset by the server: ") +
                             nghttp2_http2_strerror(error_code));
  if (http_status_ != "200") return finish(false, "HTTP " + http_status_ + ", not a gRPC response");
  if (grpc_status_.empty()) return finish(false, "no grpc-status in the response");
  if (grpc_status_ != "0") {
    const int code = std::atoi(grpc_status_.c_str());
    std::string r = "grpc-status " + grpc_status_ + " (" + grpc_status_name(code) + ")";
    if (!grpc_message_.empty()) r += ": " + grpc_message_;
    return finish(false, r);
  }
  if (body_too_large_) return finish(false, "the response is larger than a HealthCheckResponse");
  const int status = grpc_health_response_status(body_);
  if (status < 0) return finish(false, "the response is not a HealthCheckResponse");
  finish(status == 1, grpc_serving_status_name(status));
}

}  // namespace flotilla::discovery
