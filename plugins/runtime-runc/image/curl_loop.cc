#include "curl_loop.h"

#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <mutex>

namespace flotilla::runc {

namespace {

CURLM *M(void *p) {
  return static_cast<CURLM *>(p);
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\r' || s.back() == '\n' || s.back() == ' ')) s.pop_back();
  size_t i = 0;
  while (i < s.size() && s[i] == ' ') ++i;
  return s.substr(i);
}

}  // namespace

std::string HttpResponse::header(const std::string &lower_name) const {
  auto it = headers.find(lower_name);
  return it == headers.end() ? std::string() : it->second;
}

struct CurlLoop::Transfer {
  CurlLoop *loop = nullptr;
  uint64_t id = 0;
  CURL *easy = nullptr;
  curl_slist *headers = nullptr;
  HttpRequest request;
  HttpResponse response;
  Done done;
  char error[CURL_ERROR_SIZE] = {};

  ~Transfer() {
    if (easy) {
      curl_multi_remove_handle(M(loop->multi_), easy);
      curl_easy_cleanup(easy);
    }
    if (headers) curl_slist_free_all(headers);
  }
};

struct CurlLoop::SocketWatch {
  CurlLoop *loop;
  int fd;
  uint32_t events;
  flotilla_handle watch;
};

CurlLoop::CurlLoop(const flotilla_host *host) : host_(host) {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  multi_ = curl_multi_init();
  // Exact libcurl signatures, forwarding to the members.
  curl_socket_callback sock = [](CURL *e, curl_socket_t s, int what, void *userp, void *sp) {
    return CurlLoop::on_socket(e, s, what, userp, sp);
  };
  curl_multi_timer_callback timer = [](CURLM *m, long timeout_ms, void *userp) {
    return CurlLoop::on_timer_change(m, timeout_ms, userp);
  };
  curl_multi_setopt(M(multi_), CURLMOPT_SOCKETFUNCTION, sock);
  curl_multi_setopt(M(multi_), CURLMOPT_SOCKETDATA, this);
  curl_multi_setopt(M(multi_), CURLMOPT_TIMERFUNCTION, timer);
  curl_multi_setopt(M(multi_), CURLMOPT_TIMERDATA, this);
}

CurlLoop::~CurlLoop() {
  transfers_.clear();  // removes each easy handle from the multi
  for (auto &[fd, w] : watches_) host_->fd_unwatch(host_->host_ctx, w->watch);
  watches_.clear();
  if (timer_) host_->timer_stop(host_->host_ctx, timer_);
  timer_ = 0;
  // curl_multi_cleanup may still call the socket callback; nothing to watch any more.
  curl_multi_setopt(M(multi_), CURLMOPT_SOCKETFUNCTION, nullptr);
  curl_multi_setopt(M(multi_), CURLMOPT_TIMERFUNCTION, nullptr);
  curl_multi_cleanup(M(multi_));
}

uint64_t CurlLoop::start(HttpRequest request, Done done) {
  auto t = std::make_unique<Transfer>();
  t->loop = this;
  t->id = next_id_++;
  t->request = std::move(request);
  t->done = std::move(done);
  CURL *e = curl_easy_init();
  t->easy = e;
  const HttpRequest &r = t->request;
  curl_easy_setopt(e, CURLOPT_URL, r.url.c_str());
  curl_easy_setopt(e, CURLOPT_PRIVATE, t.get());
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->error);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(e, CURLOPT_MAXREDIRS, 5L);
  // Never hand the registry's Authorization header to the host a redirect
  // leads to (blob storage): curl drops it on a host change unless told.
  curl_easy_setopt(e, CURLOPT_UNRESTRICTED_AUTH, 0L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, r.connect_timeout_s);
  curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1024L);
  curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, r.low_speed_timeout_s);
  curl_easy_setopt(e, CURLOPT_USERAGENT, "flotilla-runtime-runc/0.1");
  curl_write_callback write = [](char *d, size_t s, size_t n, void *u) {
    return CurlLoop::on_write(d, s, n, u);
  };
  curl_write_callback header = [](char *d, size_t s, size_t n, void *u) {
    return CurlLoop::on_header(d, s, n, u);
  };
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, t.get());
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, t.get());
  if (!r.ca_file.empty()) curl_easy_setopt(e, CURLOPT_CAINFO, r.ca_file.c_str());
  if (r.range_from > 0) {
    std::string range = std::to_string(r.range_from) + "-";
    curl_easy_setopt(e, CURLOPT_RANGE, range.c_str());  // copied by curl
  }
  for (const auto &h : r.headers) t->headers = curl_slist_append(t->headers, h.c_str());
  if (t->headers) curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->headers);
  uint64_t id = t->id;
  transfers_[id] = std::move(t);
  curl_multi_add_handle(M(multi_), e);  // asks for a 0 ms timer: the transfer starts from the loop
  return id;
}

void CurlLoop::cancel(uint64_t id) {
  transfers_.erase(id);
}

void CurlLoop::resume(uint64_t id) {
  auto it = transfers_.find(id);
  if (it == transfers_.end()) return;
  curl_easy_pause(it->second->easy, CURLPAUSE_CONT);
}

size_t CurlLoop::on_header(char *data, size_t size, size_t n, void *user) {
  auto *t = static_cast<Transfer *>(user);
  std::string line(data, size * n);
  if (line.rfind("HTTP/", 0) == 0) {  // a new response (redirect, 100, auth retry)
    t->response.headers.clear();
    t->response.www_authenticate.clear();
    return size * n;
  }
  size_t colon = line.find(':');
  if (colon == std::string::npos) return size * n;
  std::string name = lower(line.substr(0, colon));
  std::string value = trim(line.substr(colon + 1));
  if (name == "www-authenticate") {
    t->response.www_authenticate.push_back(value);
  } else {
    std::string &slot = t->response.headers[name];
    slot = slot.empty() ? value : slot + ", " + value;
  }
  return size * n;
}

size_t CurlLoop::on_write(char *data, size_t size, size_t n, void *user) {
  auto *t = static_cast<Transfer *>(user);
  size_t len = size * n;
  long status = 0;
  curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
  t->response.body_bytes += len;
  if (status >= 200 && status < 300 && t->request.on_body) {
    switch (t->request.on_body(status, data, len)) {
      case BodyAction::take:
        break;
      case BodyAction::pause:
        t->response.body_bytes -= len;  // delivered again after resume()
        return CURL_WRITEFUNC_PAUSE;
      case BodyAction::abort:
        t->response.aborted = true;
        return 0;  // CURLE_WRITE_ERROR
    }
    return len;
  }
  if (t->response.body.size() + len > t->request.max_body) {
    t->response.too_large = true;
    return 0;
  }
  t->response.body.append(data, len);
  return len;
}

int CurlLoop::on_socket(void *, int fd, int what, void *userp, void *) {
  auto *self = static_cast<CurlLoop *>(userp);
  auto it = self->watches_.find(fd);
  if (what == CURL_POLL_REMOVE) {
    if (it != self->watches_.end()) {
      self->host_->fd_unwatch(self->host_->host_ctx, it->second->watch);
      self->watches_.erase(it);
    }
    return 0;
  }
  uint32_t events = ((what & CURL_POLL_IN) ? FLOTILLA_FD_READABLE : 0u) |
                    ((what & CURL_POLL_OUT) ? FLOTILLA_FD_WRITABLE : 0u);
  if (it != self->watches_.end()) {
    if (it->second->events == events) return 0;
    self->host_->fd_unwatch(self->host_->host_ctx, it->second->watch);
    self->watches_.erase(it);
  }
  auto w = std::make_unique<SocketWatch>(SocketWatch{self, fd, events, 0});
  w->watch = self->host_->fd_watch(self->host_->host_ctx, fd, events, &CurlLoop::on_fd, w.get());
  if (w->watch == 0) return -1;  // curl fails the transfers on this socket
  self->watches_[fd] = std::move(w);
  return 0;
}

int CurlLoop::on_timer_change(void *, long timeout_ms, void *userp) {
  auto *self = static_cast<CurlLoop *>(userp);
  if (self->timer_) self->host_->timer_stop(self->host_->host_ctx, self->timer_);
  self->timer_ = 0;
  if (timeout_ms >= 0) {
    self->timer_ = self->host_->timer_start(
        self->host_->host_ctx, static_cast<uint64_t>(timeout_ms), 0, &CurlLoop::on_timer, self);
  }
  return 0;
}

void CurlLoop::on_fd(void *user, int fd, uint32_t events) {
  auto *w = static_cast<SocketWatch *>(user);
  CurlLoop *self = w->loop;  // w may be gone once curl has run
  int mask = ((events & FLOTILLA_FD_READABLE) ? CURL_CSELECT_IN : 0) |
             ((events & FLOTILLA_FD_WRITABLE) ? CURL_CSELECT_OUT : 0);
  self->drive(fd, mask);
}

void CurlLoop::on_timer(void *user) {
  auto *self = static_cast<CurlLoop *>(user);
  self->timer_ = 0;  // a one-shot timer's handle is released by the host
  self->drive(CURL_SOCKET_TIMEOUT, 0);
}

void CurlLoop::drive(int fd, int ev_bitmask) {
  int running = 0;
  curl_multi_socket_action(M(multi_), fd, ev_bitmask, &running);
  // Collect first: a callback may start or cancel transfers.
  std::vector<std::pair<uint64_t, CURLcode>> finished;
  int left = 0;
  while (CURLMsg *msg = curl_multi_info_read(M(multi_), &left)) {
    if (msg->msg != CURLMSG_DONE) continue;
    Transfer *t = nullptr;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, reinterpret_cast<char **>(&t));
    if (t) finished.emplace_back(t->id, msg->data.result);
  }
  for (auto [id, code] : finished) {
    auto it = transfers_.find(id);
    if (it == transfers_.end()) continue;
    std::unique_ptr<Transfer> t = std::move(it->second);
    transfers_.erase(it);
    t->response.curl_code = code;
    if (code != CURLE_OK) t->response.error = t->error[0] ? t->error : curl_easy_strerror(code);
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &t->response.status);
    Done done = std::move(t->done);
    HttpResponse response = std::move(t->response);
    t.reset();  // the easy handle leaves the multi before done may start others
    done(std::move(response));
  }
}

}  // namespace flotilla::runc
