// HTTP transfers through libcurl's multi-socket API, driven by the host's
// loop: curl tells us which sockets to watch and when to wake it, the
// host's fd_watch and timers tell curl when that happened. Every transfer
// of every pull shares one curl multi handle (and its connection cache)
// and runs on the loop thread; there is no thread per download.
//
// Threading: [loop-thread] only, callbacks included.
#pragma once

#include <flotilla/host.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace flotilla::runc {

// What on_body did with the bytes it was given.
enum class BodyAction {
  take,   // consumed
  pause,  // not consumed: curl keeps them and pauses the transfer until resume()
  abort,  // stop the transfer (HttpResponse::aborted)
};

struct HttpRequest {
  std::string url;
  std::vector<std::string> headers;  // "Accept: ...", "Authorization: ..."
  uint64_t range_from = 0;           // > 0: "Range: bytes=N-"
  std::string ca_file;               // PEM bundle; empty: the system's
  long low_speed_timeout_s = 30;     // fail when under 1 KiB/s this long
  long connect_timeout_s = 10;
  size_t max_body = 4 << 20;  // bodies kept in HttpResponse::body beyond this abort the transfer
  // Bytes of a 2xx response (200 or 206, given as status) go here instead
  // of into body.
  std::function<BodyAction(long status, const char *data, size_t len)> on_body;
};

struct HttpResponse {
  int curl_code = 0;  // CURLE_OK (0) when the exchange completed
  std::string error;  // curl's message when curl_code != 0
  long status = 0;    // HTTP status of the last response (after redirects)
  // Headers of the last response, names lower-case; repeated ones joined
  // by ", " except www-authenticate, kept apart.
  std::map<std::string, std::string> headers;
  std::vector<std::string> www_authenticate;
  std::string body;  // when no on_body or not 2xx
  bool aborted = false;
  bool too_large = false;
  uint64_t body_bytes = 0;  // bytes received in the body, either way
  std::string header(const std::string &lower_name) const;
};

class CurlLoop {
 public:
  explicit CurlLoop(const flotilla_host *host);
  // Cancels every transfer without calling its callback.
  ~CurlLoop();
  CurlLoop(const CurlLoop &) = delete;
  CurlLoop &operator=(const CurlLoop &) = delete;

  using Done = std::function<void(HttpResponse)>;
  // done runs later, never inside start(). Returns an id for cancel().
  uint64_t start(HttpRequest request, Done done);
  // Stops a transfer; its done never runs. Unknown ids are ignored.
  void cancel(uint64_t id);
  // Continues a transfer whose on_body said pause; on_body may run inside
  // (with the bytes it refused). Unknown ids are ignored.
  void resume(uint64_t id);
  size_t active() const { return transfers_.size(); }
  const flotilla_host *host() const { return host_; }

 private:
  struct Transfer;
  struct SocketWatch;
  static int on_socket(void *easy, int fd, int what, void *userp, void *socketp);
  static int on_timer_change(void *multi, long timeout_ms, void *userp);
  static void on_fd(void *user, int fd, uint32_t events);
  static void on_timer(void *user);
  static size_t on_write(char *data, size_t size, size_t n, void *user);
  static size_t on_header(char *data, size_t size, size_t n, void *user);
  void drive(int fd, int ev_bitmask);

  const flotilla_host *host_;
  void *multi_ = nullptr;  // CURLM*
  flotilla_handle timer_ = 0;
  uint64_t next_id_ = 1;
  std::map<uint64_t, std::unique_ptr<Transfer>> transfers_;
  std::map<int, std::unique_ptr<SocketWatch>> watches_;
};

}  // namespace flotilla::runc
