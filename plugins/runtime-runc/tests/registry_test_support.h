// Real registries for the pull tests: Debian's docker-registry (the CNCF
// distribution registry) started on 127.0.0.1 by the test, with TLS
// certificates made by openssl and an htpasswd file of bcrypt entries made
// with libcrypt's crypt_gensalt_rn("$2b$") (apache2-utils' htpasswd is not
// needed; `openssl passwd` cannot make bcrypt), a token endpoint that
// signs RS256 JWTs the registry verifies, a fault proxy that can flip a
// byte of a blob or cut a connection mid-blob, and a pusher that uploads
// an OCI layout through the distribution API (skopeo does the same; this
// needs nothing but libcurl).
//
// Every process is started by the test and killed by its pid; every file
// lives in one temp directory removed at the end.
#pragma once

#include <arpa/inet.h>
#include <crypt.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "loopback_port.h"

namespace regtest {

namespace fs = std::filesystem;
using json = nlohmann::json;

inline std::string slurp(const fs::path &p) {
  std::ifstream in(p);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
inline void spit(const fs::path &p, const std::string &s) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << s;
}

// A port for a registry the test starts: below the ephemeral range, so no
// connect() of a parallel test can hold it (loopback_port.h).
inline int free_port() {
  return flotilla::testing::free_port_below_ephemeral();
}

inline int run(const std::string &cmd) {
  return std::system(cmd.c_str());
}

// A bcrypt htpasswd line; docker-registry accepts $2b$ (Go's bcrypt).
inline std::string htpasswd_line(const std::string &user, const std::string &password) {
  char salt[CRYPT_GENSALT_OUTPUT_SIZE];
  if (!crypt_gensalt_rn("$2b$", 5, nullptr, 0, salt, sizeof salt)) return {};
  crypt_data data{};
  const char *hash = crypt_r(password.c_str(), salt, &data);
  if (!hash || hash[0] == '*') return {};
  return user + ":" + hash + "\n";
}

inline std::string b64(const std::string &in, bool url) {
  std::string out(4 * ((in.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char *>(out.data()),
                          reinterpret_cast<const unsigned char *>(in.data()),
                          static_cast<int>(in.size()));
  out.resize(static_cast<size_t>(n));
  if (url) {
    while (!out.empty() && out.back() == '=') out.pop_back();
    for (char &c : out) c = c == '+' ? '-' : c == '/' ? '_' : c;
  }
  return out;
}

// A process the test started; killed by pid.
class Process {
 public:
  Process() = default;
  Process(const Process &) = delete;
  Process &operator=(const Process &) = delete;
  ~Process() { stop(); }
  bool start(const std::vector<std::string> &argv, const fs::path &log) {
    std::vector<char *> args;
    for (const auto &a : argv) args.push_back(const_cast<char *>(a.c_str()));
    args.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    int rc = posix_spawn(&pid_, args[0], &fa, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) pid_ = 0;
    return rc == 0;
  }
  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = 0;
  }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = 0;
};

inline size_t curl_append(char *d, size_t s, size_t n, void *u) {
  static_cast<std::string *>(u)->append(d, s * n);
  return s * n;
}

struct HttpReply {
  long status = 0;
  std::string body;
  std::string location;
  std::string error;
};

// Blocking HTTP for the test's own use (pushing, readiness checks).
inline HttpReply http(const std::string &method, const std::string &url, const std::string &body,
                      const std::vector<std::string> &headers, const std::string &userpwd = {},
                      const std::string &ca = {}) {
  HttpReply r;
  CURL *e = curl_easy_init();
  std::string hdrs;
  curl_slist *list = nullptr;
  for (const auto &h : headers) list = curl_slist_append(list, h.c_str());
  curl_easy_setopt(e, CURLOPT_URL, url.c_str());
  curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method.c_str());
  if (method == "HEAD") curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  if (method == "PUT" || method == "POST") {
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, body.data());
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
  }
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, list);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, curl_append);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &r.body);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, curl_append);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, &hdrs);
  curl_easy_setopt(e, CURLOPT_TIMEOUT, 30L);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  if (!userpwd.empty()) curl_easy_setopt(e, CURLOPT_USERPWD, userpwd.c_str());
  if (!ca.empty()) curl_easy_setopt(e, CURLOPT_CAINFO, ca.c_str());
  CURLcode rc = curl_easy_perform(e);
  if (rc != CURLE_OK) r.error = curl_easy_strerror(rc);
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &r.status);
  std::istringstream hs(hdrs);
  std::string line;
  while (std::getline(hs, line)) {
    if (strncasecmp(line.c_str(), "location:", 9) == 0) {
      r.location = line.substr(9);
      while (!r.location.empty() && (r.location.front() == ' ')) r.location.erase(0, 1);
      while (!r.location.empty() && (r.location.back() == '\r')) r.location.pop_back();
    }
  }
  curl_slist_free_all(list);
  curl_easy_cleanup(e);
  return r;
}

// Uploads blobs and manifests through the distribution API, as skopeo does.
struct Pusher {
  std::string base;  // "http://127.0.0.1:5000"
  std::string error;

  bool blob(const std::string &repo, const std::string &bytes, const std::string &digest) {
    HttpReply head = http("HEAD", base + "/v2/" + repo + "/blobs/" + digest, "", {});
    if (head.status == 200) return true;
    HttpReply start = http("POST", base + "/v2/" + repo + "/blobs/uploads/", "", {});
    if (start.status != 202) {
      error = "start upload: HTTP " + std::to_string(start.status) + " " + start.body + start.error;
      return false;
    }
    std::string loc = start.location;
    if (loc.rfind("http", 0) != 0) loc = base + loc;
    loc += (loc.find('?') == std::string::npos ? "?" : "&") + std::string("digest=") + digest;
    HttpReply put = http("PUT", loc, bytes, {"Content-Type: application/octet-stream"});
    if (put.status != 201) {
      error = "upload " + digest + ": HTTP " + std::to_string(put.status) + " " + put.body;
      return false;
    }
    return true;
  }
  bool manifest(const std::string &repo, const std::string &reference, const std::string &bytes,
                const std::string &media_type) {
    HttpReply put = http("PUT", base + "/v2/" + repo + "/manifests/" + reference, bytes,
                         {"Content-Type: " + media_type});
    if (put.status != 201) {
      error = "put manifest " + reference + ": HTTP " + std::to_string(put.status) + " " + put.body;
      return false;
    }
    return true;
  }
  // Pushes every blob of an OCI layout, then the manifests (children of an
  // index first) and tags index.json's first entry as tag.
  bool layout(const fs::path &dir, const std::string &repo, const std::string &tag) {
    json index = json::parse(slurp(dir / "index.json"));
    std::vector<std::pair<std::string, std::string>> manifests;  // digest, media type
    std::function<bool(const json &)> walk = [&](const json &desc) -> bool {
      std::string digest = desc["digest"];
      std::string text = slurp(dir / "blobs" / "sha256" / digest.substr(7));
      json doc = json::parse(text);
      std::string mt = desc.value("mediaType", doc.value("mediaType", ""));
      if (doc.contains("manifests")) {
        for (const auto &m : doc["manifests"])
          if (!walk(m)) return false;
      } else {
        if (!blob(repo,
                  slurp(dir / "blobs" / "sha256" / std::string(doc["config"]["digest"]).substr(7)),
                  doc["config"]["digest"]))
          return false;
        for (const auto &l : doc["layers"]) {
          std::string d = l["digest"];
          if (!blob(repo, slurp(dir / "blobs" / "sha256" / d.substr(7)), d)) return false;
        }
      }
      manifests.emplace_back(digest, mt);
      return true;
    };
    const json &top = index["manifests"][0];
    if (!walk(top)) return false;
    for (size_t i = 0; i < manifests.size(); ++i) {
      const auto &[d, mt] = manifests[i];
      std::string text = slurp(dir / "blobs" / "sha256" / d.substr(7));
      bool last = i + 1 == manifests.size();
      if (!manifest(repo, last ? tag : d, text, mt)) return false;
    }
    return true;
  }
};

// A docker-registry instance.
struct Registry {
  std::string name;
  int port = 0;
  bool tls = false;
  fs::path log;
  Process proc;
  std::string config_path;

  std::string host() const { return "127.0.0.1:" + std::to_string(port); }
  std::string url() const { return (tls ? "https://" : "http://") + host(); }

  // auth_yaml: "" or an "auth:" block.
  bool start(const fs::path &dir, const fs::path &storage, const std::string &auth_yaml,
             const std::string &tls_cert = {}, const std::string &tls_key = {},
             const std::string &ca = {}) {
    if (port == 0) port = free_port();
    tls = !tls_cert.empty();
    log = dir / (name + ".log");
    config_path = (dir / (name + ".yml")).string();
    std::string y =
        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n"
        "storage:\n  filesystem:\n    rootdirectory: " +
        storage.string() +
        "\n  maintenance:\n    uploadpurging:\n      enabled: false\n"
        "http:\n  addr: " +
        host() + "\n  secret: flotilla-test-secret\n";
    if (tls) y += "  tls:\n    certificate: " + tls_cert + "\n    key: " + tls_key + "\n";
    y += auth_yaml;
    spit(config_path, y);
    return restart(ca);
  }
  bool restart(const std::string &ca = {}) {
    if (!proc.start({"/usr/bin/docker-registry", "serve", config_path}, log)) return false;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < deadline) {
      HttpReply r = http("GET", url() + "/v2/", "", {}, {}, ca);
      if (r.status == 200 || r.status == 401) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }
  void stop() { proc.stop(); }
};

// A tiny threaded HTTP/1.0 server: one request per connection.
class TinyServer {
 public:
  struct Request {
    std::string method, target;
    std::map<std::string, std::string> headers;  // lower-case names
    std::string head;                            // the raw request head
  };
  // handler gets the request and the client socket; it writes the reply.
  using Handler = std::function<void(const Request &, int fd)>;

  explicit TinyServer(Handler h) : handler_(std::move(h)) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(listen_fd_, reinterpret_cast<sockaddr *>(&a), sizeof a);
    socklen_t len = sizeof a;
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr *>(&a), &len);
    port_ = ntohs(a.sin_port);
    ::listen(listen_fd_, 64);
    thread_ = std::thread([this] { accept_loop(); });
  }
  ~TinyServer() {
    stop_ = true;
    ::shutdown(listen_fd_, SHUT_RDWR);
    thread_.join();
    ::close(listen_fd_);
    std::lock_guard<std::mutex> g(mu_);
    for (auto &t : workers_) t.join();
  }
  int port() const { return port_; }

  static void send_all(int fd, const std::string &s) {
    size_t off = 0;
    while (off < s.size()) {
      ssize_t n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return;
      off += static_cast<size_t>(n);
    }
  }

 private:
  void accept_loop() {
    while (!stop_) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      int c = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      std::lock_guard<std::mutex> g(mu_);
      workers_.emplace_back([this, c] {
        Request r;
        if (read_head(c, r)) handler_(r, c);
        ::shutdown(c, SHUT_RDWR);
        ::close(c);
      });
    }
  }
  static bool read_head(int fd, Request &r) {
    std::string buf;
    char c;
    while (buf.size() < 65536) {
      ssize_t n = ::recv(fd, &c, 1, 0);
      if (n <= 0) return false;
      buf += c;
      if (buf.size() >= 4 && buf.compare(buf.size() - 4, 4, "\r\n\r\n") == 0) break;
    }
    r.head = buf;
    std::istringstream in(buf);
    std::string line;
    std::getline(in, line);
    std::istringstream first(line);
    first >> r.method >> r.target;
    while (std::getline(in, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      size_t colon = line.find(':');
      if (colon == std::string::npos) continue;
      std::string k = line.substr(0, colon);
      for (char &ch : k) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      std::string v = line.substr(colon + 1);
      while (!v.empty() && v.front() == ' ') v.erase(0, 1);
      r.headers[k] = v;
    }
    return true;
  }

  Handler handler_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::mutex mu_;
  std::vector<std::thread> workers_;
};

// An HTTP proxy in front of a plain-HTTP registry, one request per
// connection. It counts blob requests and, when armed, flips one byte of a
// chosen blob's body, cuts the connection after half of it (once), or
// stalls it: sends the first stall_after bytes of the body, then nothing
// more, holding the connection open until the client goes (a killed
// puller) or stall_digest is cleared.
class FaultProxy {
 public:
  explicit FaultProxy(int upstream_port)
      : upstream_(upstream_port),
        server_([this](const TinyServer::Request &r, int fd) { handle(r, fd); }) {}
  int port() const { return server_.port(); }
  std::string host() const { return "127.0.0.1:" + std::to_string(port()); }

  std::mutex mu;
  std::string flip_digest;               // flip byte 100 of this blob's body, every time
  std::string cut_digest;                // cut this blob's body in half, once
  std::string stall_digest;              // stall this blob's body, every time
  size_t stall_after = 0;                // ... after this many bytes of it
  int stalls = 0;                        // connections held stalled so far
  std::map<std::string, int> blob_gets;  // digest -> GET count
  std::vector<std::string> ranges;       // Range headers seen
  // Blob GETs in flight at once (from the request to the end of the
  // reply), the most seen. With gate_at > 0 every blob GET waits before it
  // goes upstream until gate_at of them are in flight together; then the
  // gate stays open (gate_opened). So a pull through a gate of N can only
  // finish if it asks N blobs at once: no timing involved.
  int in_flight = 0, max_in_flight = 0;
  int gate_at = 0;
  bool gate_opened = false;

 private:
  // Counts one blob GET in flight for as long as it lives.
  // Ended just before the reply's last bytes go out: the client cannot
  // start its next download before that, so two are never counted for one.
  struct InFlight {
    FaultProxy *p;
    void end() {
      if (!p) return;
      std::lock_guard<std::mutex> g(p->mu);
      --p->in_flight;
      p = nullptr;
    }
    ~InFlight() { end(); }
  };
  // Waits at the gate; false when the client went away meanwhile (then it
  // no longer counts as in flight), or after a minute (against hangs).
  bool pass_gate(int client) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    std::unique_lock<std::mutex> g(mu);
    if (gate_at > 0 && in_flight >= gate_at) {
      gate_opened = true;
      gate_cv_.notify_all();
    }
    while (gate_at > 0 && !gate_opened) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      gate_cv_.wait_for(g, std::chrono::milliseconds(50));
      pollfd p{client, POLLIN, 0};
      char c;
      if (::poll(&p, 1, 0) > 0 && ::recv(client, &c, 1, MSG_PEEK | MSG_DONTWAIT) <= 0) return false;
    }
    return true;
  }

  void handle(const TinyServer::Request &r, int client) {
    std::string digest;
    if (auto p = r.target.find("/blobs/sha256:"); p != std::string::npos)
      digest = r.target.substr(p + 7);
    InFlight counted{nullptr};
    if (!digest.empty() && r.method == "GET") {
      {
        std::lock_guard<std::mutex> g(mu);
        ++in_flight;
        max_in_flight = std::max(max_in_flight, in_flight);
      }
      counted.p = this;
      if (!pass_gate(client)) return;
    }
    bool flip = false, cut = false, stall = false;
    size_t stall_after = 0;
    {
      std::lock_guard<std::mutex> g(mu);
      if (!digest.empty() && r.method == "GET") ++blob_gets[digest];
      if (auto it = r.headers.find("range"); it != r.headers.end()) ranges.push_back(it->second);
      flip = !digest.empty() && digest == flip_digest;
      if (!digest.empty() && digest == cut_digest) {
        cut = true;
        cut_digest.clear();
      }
      if (!digest.empty() && digest == stall_digest && r.method == "GET") {
        stall = true;
        stall_after = this->stall_after;
      }
    }
    int up = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<uint16_t>(upstream_));
    if (::connect(up, reinterpret_cast<sockaddr *>(&a), sizeof a) != 0) {
      ::close(up);
      return;
    }
    // The same head, but the upstream closes after its reply.
    std::string head;
    std::istringstream in(r.head);
    std::string line;
    while (std::getline(in, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty()) break;
      if (strncasecmp(line.c_str(), "connection:", 11) == 0) continue;
      head += line + "\r\n";
    }
    head += "Connection: close\r\n\r\n";
    TinyServer::send_all(up, head);
    std::string resp;
    char buf[65536];
    size_t body_at = std::string::npos;
    size_t content_length = 0;
    size_t sent = 0;
    for (;;) {
      ssize_t n = ::recv(up, buf, sizeof buf, 0);
      if (n <= 0) break;
      resp.append(buf, static_cast<size_t>(n));
      if (body_at == std::string::npos) {
        size_t e = resp.find("\r\n\r\n");
        if (e == std::string::npos) continue;
        body_at = e + 4;
        std::string lowered = resp.substr(0, body_at);
        for (char &ch : lowered)
          ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        if (auto cl = lowered.find("content-length:"); cl != std::string::npos)
          content_length = std::stoul(lowered.substr(cl + 15));
      }
      bool ok_status = resp.compare(9, 1, "2") == 0;
      if (flip && ok_status && resp.size() > body_at + 100) {
        resp[body_at + 100] ^= 0x01;
        flip = false;
      }
      if (cut && ok_status && content_length > 0 && resp.size() >= body_at + content_length / 2) {
        TinyServer::send_all(client, resp.substr(sent, body_at + content_length / 2 - sent));
        ::close(up);
        return;
      }
      if (stall && ok_status) {
        size_t limit = std::min(resp.size(), body_at + stall_after);
        if (limit > sent) TinyServer::send_all(client, resp.substr(sent, limit - sent));
        sent = limit;
        if (resp.size() >= body_at + stall_after) {
          ::close(up);
          hold(client, digest);
          return;
        }
        continue;
      }
      if (!flip && !cut) {
        if (resp.size() >= body_at + content_length) counted.end();
        TinyServer::send_all(client, resp.substr(sent));
        sent = resp.size();
      }
    }
    counted.end();
    TinyServer::send_all(client, resp.substr(sent));
    ::close(up);
  }

  // A stalled transfer: nothing more is sent until the client closes its
  // end or the stall is lifted; then the connection is cut.
  void hold(int client, const std::string &digest) {
    {
      std::lock_guard<std::mutex> g(mu);
      ++stalls;
    }
    for (;;) {
      {
        std::lock_guard<std::mutex> g(mu);
        if (stall_digest != digest) return;
      }
      pollfd p{client, POLLIN, 0};
      if (::poll(&p, 1, 50) > 0) {
        char c[4096];
        if (::recv(client, c, sizeof c, MSG_DONTWAIT) <= 0) return;
      }
    }
  }

  int upstream_;
  std::condition_variable gate_cv_;
  TinyServer server_;
};

// The token endpoint of the Bearer flow: checks the user's password and
// the scope it is asked for, and signs an RS256 JWT with a key whose
// certificate the registry trusts (rootcertbundle), carried in x5c.
class TokenServer {
 public:
  TokenServer(fs::path key_pem, fs::path cert_pem, std::string issuer, std::string service,
              std::string user, std::string password, int lifetime_s)
      : issuer_(std::move(issuer)),
        service_(std::move(service)),
        user_(std::move(user)),
        password_(std::move(password)),
        lifetime_s_(lifetime_s),
        server_([this](const TinyServer::Request &r, int fd) { handle(r, fd); }) {
    FILE *f = std::fopen(key_pem.c_str(), "r");
    if (f) {
      key_ = PEM_read_PrivateKey(f, nullptr, nullptr, nullptr);
      std::fclose(f);
    }
    std::string pem = slurp(cert_pem), der;
    std::istringstream in(pem);
    std::string line;
    while (std::getline(in, line))
      if (line.rfind("-----", 0) != 0) cert_b64_ += line;
  }
  ~TokenServer() {
    if (key_) EVP_PKEY_free(key_);
  }
  int port() const { return server_.port(); }
  std::string realm() const { return "http://127.0.0.1:" + std::to_string(port()) + "/token"; }

  // The lifetime (expires_in and exp) of the tokens handed out from now on.
  void set_lifetime(int seconds) { lifetime_s_ = seconds; }

  std::mutex mu;
  std::vector<std::string> scopes;  // of each token handed out
  int refused = 0;

 private:
  static std::string query_param(const std::string &target, const std::string &key) {
    size_t q = target.find('?');
    if (q == std::string::npos) return {};
    std::string qs = target.substr(q + 1);
    std::istringstream in(qs);
    std::string part;
    while (std::getline(in, part, '&')) {
      if (part.rfind(key + "=", 0) != 0) continue;
      std::string v = part.substr(key.size() + 1), out;
      for (size_t i = 0; i < v.size(); ++i) {
        if (v[i] == '%' && i + 2 < v.size()) {
          out += static_cast<char>(std::stoi(v.substr(i + 1, 2), nullptr, 16));
          i += 2;
        } else {
          out += v[i] == '+' ? ' ' : v[i];
        }
      }
      return out;
    }
    return {};
  }
  void reply(int fd, int status, const std::string &body) {
    TinyServer::send_all(fd, "HTTP/1.0 " + std::to_string(status) +
                                 " X\r\nContent-Type: "
                                 "application/json\r\nContent-Length: " +
                                 std::to_string(body.size()) + "\r\n\r\n" + body);
  }
  void handle(const TinyServer::Request &r, int fd) {
    std::string scope = query_param(r.target, "scope");
    std::string service = query_param(r.target, "service");
    std::string want_auth = "Basic " + b64(user_ + ":" + password_, false);
    auto a = r.headers.find("authorization");
    std::string expected_scope_prefix = "repository:";
    if (a == r.headers.end() || a->second != want_auth) {
      std::lock_guard<std::mutex> g(mu);
      ++refused;
      return reply(fd, 401, R"({"details":"wrong user name or password"})");
    }
    if (service != service_ || scope.rfind(expected_scope_prefix, 0) != 0 || scope.size() < 5 ||
        scope.substr(scope.size() - 5) != ":pull") {
      std::lock_guard<std::mutex> g(mu);
      ++refused;
      return reply(fd, 403, R"({"details":"only pull scopes of this service are granted"})");
    }
    std::string repo = scope.substr(11, scope.size() - 11 - 5);
    long now = static_cast<long>(std::time(nullptr));
    const int lifetime_s = lifetime_s_;
    json header = {{"typ", "JWT"}, {"alg", "RS256"}, {"x5c", {cert_b64_}}};
    json claims = {{"iss", issuer_},
                   {"sub", user_},
                   {"aud", service_},
                   {"exp", now + lifetime_s},
                   {"nbf", now - 5},
                   {"iat", now},
                   {"jti", std::to_string(now) + "-" + std::to_string(counter_++)},
                   {"access", {{{"type", "repository"}, {"name", repo}, {"actions", {"pull"}}}}}};
    std::string signing = b64(header.dump(), true) + "." + b64(claims.dump(), true);
    std::string sig(1024, '\0');
    size_t sig_len = sig.size();
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_DigestSignInit(ctx, nullptr, EVP_sha256(), nullptr, key_);
    EVP_DigestSign(ctx, reinterpret_cast<unsigned char *>(sig.data()), &sig_len,
                   reinterpret_cast<const unsigned char *>(signing.data()), signing.size());
    EVP_MD_CTX_free(ctx);
    sig.resize(sig_len);
    std::string token = signing + "." + b64(sig, true);
    {
      std::lock_guard<std::mutex> g(mu);
      scopes.push_back(scope);
    }
    reply(fd, 200, json{{"token", token}, {"expires_in", lifetime_s}}.dump());
  }

  std::string issuer_, service_, user_, password_;
  std::atomic<int> lifetime_s_;  // set by the test, read by the server's threads
  EVP_PKEY *key_ = nullptr;
  std::string cert_b64_;
  std::atomic<int> counter_{0};
  TinyServer server_;
};

}  // namespace regtest
