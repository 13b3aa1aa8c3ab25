// A small blocking HTTP/1.1 client over a Unix socket, for the `flotilla`
// CLI. Responses are parsed with nodejs http-parser, the one HTTP library of
// the tree, chunked bodies included. Header-only so that the API tests
// (core/tests/test_api.cc, test_http.cc) parse responses with the very code
// the CLI uses.
#pragma once

#include <http_parser.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <deque>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace flotilla::cli {

// An owned file descriptor.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { reset(); }
  UniqueFd(UniqueFd &&o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  UniqueFd &operator=(UniqueFd &&o) noexcept {
    if (this != &o) {
      reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  UniqueFd(const UniqueFd &) = delete;
  UniqueFd &operator=(const UniqueFd &) = delete;
  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// The daemon could not be reached at all (exit code 3 in the CLI).
class CannotConnect : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The daemon answered something that is not HTTP, or hung up mid-answer.
class ProtocolError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct HttpResponse {
  int status = 0;
  std::vector<std::pair<std::string, std::string>> headers;  // names lower-cased
  std::string body;  // de-chunked; empty when a body sink took it
  bool keep_alive = false;
  bool chunked = false;

  const std::string *header(std::string_view name) const {
    for (const auto &[k, v] : headers)
      if (k == name) return &v;
    return nullptr;
  }
};

// Incremental response parser: feed it bytes as they arrive; complete
// responses queue up in order (pipelining). Interim 1xx responses are
// skipped.
class ResponseParser {
 public:
  // Called when a response's status and headers are known.
  std::function<void(const HttpResponse &)> on_headers;
  // When set, body bytes go here as they arrive instead of into body.
  std::function<void(std::string_view)> on_body;

  ResponseParser() {
    http_parser_init(&parser_, HTTP_RESPONSE);
    parser_.data = this;
  }
  ResponseParser(const ResponseParser &) = delete;
  ResponseParser &operator=(const ResponseParser &) = delete;

  // False on malformed input; error() says why.
  bool feed(const char *data, size_t len) {
    if (!error_.empty()) return false;
    if (len == 0) return true;
    size_t n = http_parser_execute(&parser_, &settings(), data, len);
    auto err = HTTP_PARSER_ERRNO(&parser_);
    if (err != HPE_OK || (n != len && !parser_.upgrade)) {
      error_ = std::string("malformed HTTP response: ") +
               http_errno_description(static_cast<http_errno>(err));
      return false;
    }
    return true;
  }
  bool feed(std::string_view s) { return feed(s.data(), s.size()); }

  // The peer closed the connection: completes a body that runs until close.
  bool finish() {
    if (!error_.empty()) return false;
    http_parser_execute(&parser_, &settings(), nullptr, 0);
    if (HTTP_PARSER_ERRNO(&parser_) != HPE_OK) {
      error_ = std::string("the connection closed in the middle of a response: ") +
               http_errno_description(static_cast<http_errno>(HTTP_PARSER_ERRNO(&parser_)));
      return false;
    }
    return true;
  }

  bool has_response() const { return !done_.empty(); }
  HttpResponse take() {
    HttpResponse r = std::move(done_.front());
    done_.pop_front();
    return r;
  }
  // A response has started (status line seen) but is not complete.
  bool in_response() const { return in_message_; }
  const std::string &error() const { return error_; }

 private:
  static ResponseParser *self(http_parser *p) { return static_cast<ResponseParser *>(p->data); }

  static const http_parser_settings &settings() {
    static const http_parser_settings s = [] {
      http_parser_settings st{};
      http_parser_settings_init(&st);
      st.on_message_begin = [](http_parser *p) {
        ResponseParser *r = self(p);
        r->cur_ = HttpResponse{};
        r->field_.clear();
        r->value_.clear();
        r->in_value_ = false;
        r->in_message_ = true;
        return 0;
      };
      st.on_header_field = [](http_parser *p, const char *at, size_t n) {
        ResponseParser *r = self(p);
        if (r->in_value_) r->commit_header();
        r->in_value_ = false;
        r->field_.append(at, n);
        return 0;
      };
      st.on_header_value = [](http_parser *p, const char *at, size_t n) {
        ResponseParser *r = self(p);
        r->in_value_ = true;
        r->value_.append(at, n);
        return 0;
      };
      st.on_headers_complete = [](http_parser *p) {
        ResponseParser *r = self(p);
        r->commit_header();
        r->cur_.status = static_cast<int>(p->status_code);
        r->cur_.chunked = (p->flags & F_CHUNKED) != 0;
        if (r->cur_.status >= 200 && r->on_headers) r->on_headers(r->cur_);
        return 0;
      };
      st.on_body = [](http_parser *p, const char *at, size_t n) {
        ResponseParser *r = self(p);
        if (r->on_body && r->cur_.status >= 200) {
          r->on_body(std::string_view(at, n));
        } else {
          r->cur_.body.append(at, n);
        }
        return 0;
      };
      st.on_message_complete = [](http_parser *p) {
        ResponseParser *r = self(p);
        r->in_message_ = false;
        r->cur_.keep_alive = http_should_keep_alive(p) != 0;
        if (r->cur_.status >= 200) r->done_.push_back(std::move(r->cur_));
        return 0;
      };
      return st;
    }();
    return s;
  }

  void commit_header() {
    if (field_.empty()) return;
    for (char &c : field_) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    cur_.headers.emplace_back(std::move(field_), std::move(value_));
    field_.clear();
    value_.clear();
  }

  http_parser parser_{};
  HttpResponse cur_;
  std::string field_, value_;
  bool in_value_ = false;
  bool in_message_ = false;
  std::deque<HttpResponse> done_;
  std::string error_;
};

// Connect to a Unix stream socket. Throws CannotConnect naming the path.
inline UniqueFd connect_unix(const std::string &path) {
  sockaddr_un addr{};
  if (path.size() >= sizeof addr.sun_path)
    throw CannotConnect("socket path " + path + " is too long for a Unix socket");
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) throw CannotConnect(std::string("cannot create a socket: ") + strerror(errno));
  addr.sun_family = AF_UNIX;
  memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int r;
  do {
    r = connect(fd.get(), reinterpret_cast<sockaddr *>(&addr), sizeof addr);
  } while (r != 0 && errno == EINTR);
  if (r != 0) throw CannotConnect("cannot connect to " + path + ": " + strerror(errno));
  return fd;
}

// Write everything; false when the peer went away.
inline bool write_all(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

// Read until parser has a complete response or the peer closes. Throws
// ProtocolError when the response is malformed or cut short.
inline HttpResponse read_response(int fd, ResponseParser &parser) {
  char buf[64 * 1024];
  while (!parser.has_response()) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw ProtocolError(std::string("reading the response failed: ") + strerror(errno));
    if (n == 0) {
      if (!parser.finish()) throw ProtocolError(parser.error());
      if (!parser.has_response())
        throw ProtocolError("the daemon closed the connection without an answer");
      break;
    }
    if (!parser.feed(buf, static_cast<size_t>(n))) throw ProtocolError(parser.error());
  }
  return parser.take();
}

// One request per connection, as a command line tool needs.
class HttpClient {
 public:
  explicit HttpClient(std::string socket_path) : socket_(std::move(socket_path)) {}
  const std::string &socket_path() const { return socket_; }

  // body_sink: receive the body as it streams (logs -f) instead of in
  // HttpResponse::body; on_headers: look at the status before the body.
  HttpResponse request(const std::string &method, const std::string &target,
                       const std::string &body = {}, const std::string &content_type = {},
                       std::function<void(std::string_view)> body_sink = {},
                       std::function<void(const HttpResponse &)> on_headers = {}) const {
    UniqueFd fd = connect_unix(socket_);
    std::string req = method + " " + target +
                      " HTTP/1.1\r\nHost: flotilla\r\nUser-Agent: flotilla-cli\r\n"
                      "Accept: application/json\r\nConnection: close\r\n";
    if (!content_type.empty()) req += "Content-Type: " + content_type + "\r\n";
    if (!body.empty() || method == "POST" || method == "PUT")
      req += "Content-Length: " + std::to_string(body.size()) + "\r\n";
    req += "\r\n";
    req += body;
    if (!write_all(fd.get(), req))
      throw ProtocolError("the daemon closed the connection while the request was sent");
    ResponseParser parser;
    parser.on_body = std::move(body_sink);
    parser.on_headers = std::move(on_headers);
    return read_response(fd.get(), parser);
  }

 private:
  std::string socket_;
};

// Percent-encode one path segment or query value.
inline std::string url_escape(std::string_view s) {
  static const char hex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

}  // namespace flotilla::cli
