// The HTTP server against real sockets in a temporary directory: a server
// on a libuv loop in a background thread, blocking clients in the test.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/stat.h>
#include <sys/time.h>

#include <atomic>
#include <condition_variable>
#include <csignal>
#include <deque>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "../../tools/flotilla/http_client.h"
#include "error.h"
#include "api/http_server.h"
#include "loop_thread.h"

namespace flotilla::http {
namespace {

namespace fs = std::filesystem;

// As flotillad's main() does: a client that hangs up must cost a write
// error (EPIPE), not the process.
const bool kSigpipeIgnored = [] {
  signal(SIGPIPE, SIG_IGN);
  return true;
}();
using cli::HttpResponse;
using cli::ResponseParser;
using cli::UniqueFd;

using test::LoopThread;

// Blocking reads give up after this, so a bug fails a test instead of
// hanging it. Nothing asserts on how long anything takes.
void set_read_timeout(int fd) {
  timeval tv{30, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

UniqueFd connect_to(const std::string &path) {
  UniqueFd fd = cli::connect_unix(path);
  set_read_timeout(fd.get());
  return fd;
}

// Everything until the server closes the connection.
std::string read_to_eof(int fd) {
  std::string out;
  char buf[16384];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

// Parse every response in raw (the whole conversation).
std::vector<HttpResponse> parse_all(const std::string &raw) {
  ResponseParser p;
  EXPECT_TRUE(p.feed(raw)) << p.error();
  p.finish();
  std::vector<HttpResponse> out;
  while (p.has_response()) out.push_back(p.take());
  return out;
}

// Whether the server closed the connection (read returns 0).
bool server_closed(int fd) {
  char c;
  ssize_t n;
  do {
    n = read(fd, &c, 1);
  } while (n < 0 && errno == EINTR);
  return n == 0;
}

nlohmann::json body_json(const HttpResponse &r) {
  return nlohmann::json::parse(r.body);
}

struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "flotilla-http-XXXXXX").string();
    path = mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

// A server with a handful of test routes.
class HttpServerTest : public ::testing::Test {
 protected:
  void SetUp() override { start_server(Limits{}); }

  void start_server(Limits limits) {
    socket_ = (dir_.path / "api.sock").string();
    loop_.run([&] {
      server_ = std::make_unique<Server>(
          loop_.loop(), limits, [this](Request req, Responder r) { handle(std::move(req), r); },
          [this](std::string_view, std::string_view, int status, double) {
            std::lock_guard lock(mutex_);
            statuses_.push_back(status);
          });
      server_->listen_unix({socket_, 0660, ""});
    });
  }

  void TearDown() override {
    if (server_) shutdown_server(1000);
    loop_.run([&] {
      held_.clear();
      timers_.clear();
    });
    loop_.stop();
  }

  void shutdown_server(uint64_t timeout_ms) {
    std::promise<void> done;
    loop_.run([&] { server_->shutdown(timeout_ms, [&] { done.set_value(); }); });
    done.get_future().get();
    loop_.run([&] { server_.reset(); });
  }

  void handle(Request req, Responder r) {
    if (req.path == "/echo") {
      Response resp;
      resp.headers.emplace_back("Content-Type", "text/plain");
      std::string q;
      for (const auto &[k, v] : req.query) q += k + "=" + v + ";";
      resp.body = req.method + " " + req.path + " q=" + q + " body=" + req.body;
      r.send(std::move(resp));
    } else if (req.path == "/delay") {
      // Answer on a later loop iteration.
      auto &t = timers_.emplace_back(std::make_unique<Timer>(loop_.loop()));
      t->start(20, 0, [r]() mutable {
        Response resp;
        resp.body = "delayed";
        r.send(std::move(resp));
      });
    } else if (req.path == "/stream") {
      int n = std::stoi(req.query["n"]);
      r.begin_stream(200, {{"Content-Type", "text/plain"}});
      for (int i = 0; i < n; ++i) r.write("chunk " + std::to_string(i) + "\n");
      r.end();
    } else if (req.path == "/infinite") {
      r.begin_stream(200, {{"Content-Type", "text/plain"}});
      r.write("first\n");
      size_t i = held_.size();
      held_.push_back(r);
      r.on_cancel([this, i] {
        ++cancels_;
        held_[i].end();
      });
    } else if (req.path == "/hold") {
      held_.push_back(r);  // answered never (until shutdown cuts it)
    } else if (req.path == "/drop") {
      // no answer: the server answers 500 when the last responder goes
    } else if (req.path == "/throw") {
      throw std::runtime_error("handler exploded");
    } else {
      r.send(error_response(404, "not_found", "no such path"));
    }
  }

  // Wait (without any deadline assertion) until pred holds on the loop thread.
  void wait_for(const std::function<bool()> &pred) {
    for (int i = 0; i < 3000; ++i) {
      bool ok = false;
      loop_.run([&] { ok = pred(); });
      if (ok) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    FAIL() << "condition never became true";
  }

  TempDir dir_;
  LoopThread loop_;
  std::string socket_;
  std::unique_ptr<Server> server_;
  std::vector<Responder> held_;
  std::vector<std::unique_ptr<Timer>> timers_;
  std::atomic<int> cancels_{0};
  std::mutex mutex_;
  std::vector<int> statuses_;
};

TEST_F(HttpServerTest, AnswersARequest) {
  UniqueFd fd = connect_to(socket_);
  ASSERT_TRUE(cli::write_all(fd.get(), "GET /echo?a=1&b=x%20y HTTP/1.1\r\nHost: t\r\n\r\n"));
  ResponseParser p;
  HttpResponse r = cli::read_response(fd.get(), p);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "GET /echo q=a=1;b=x y; body=");
  EXPECT_TRUE(r.keep_alive);
}

TEST_F(HttpServerTest, KeepAliveServesSeveralRequestsOnOneConnection) {
  UniqueFd fd = connect_to(socket_);
  ResponseParser p;
  for (int i = 0; i < 3; ++i) {
    std::string body = "n=" + std::to_string(i);
    ASSERT_TRUE(cli::write_all(fd.get(), "POST /echo HTTP/1.1\r\nContent-Length: " +
                                             std::to_string(body.size()) + "\r\n\r\n" + body));
    HttpResponse r = cli::read_response(fd.get(), p);
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, "POST /echo q= body=" + body);
  }
}

TEST_F(HttpServerTest, PipelinedRequestsAreAnsweredInOrder) {
  UniqueFd fd = connect_to(socket_);
  // The first is answered later than the second would be; order must hold.
  ASSERT_TRUE(cli::write_all(fd.get(),
                             "GET /delay HTTP/1.1\r\n\r\n"
                             "GET /echo?n=2 HTTP/1.1\r\n\r\n"
                             "POST /echo HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
                             "GET /echo?n=4 HTTP/1.1\r\nConnection: close\r\n\r\n"));
  auto rs = parse_all(read_to_eof(fd.get()));
  ASSERT_EQ(rs.size(), 4u);
  EXPECT_EQ(rs[0].body, "delayed");
  EXPECT_EQ(rs[1].body, "GET /echo q=n=2; body=");
  EXPECT_EQ(rs[2].body, "POST /echo q= body=abc");
  EXPECT_EQ(rs[3].body, "GET /echo q=n=4; body=");
  EXPECT_FALSE(rs[3].keep_alive);
}

TEST_F(HttpServerTest, MalformedRequestGets400JsonAndTheConnectionCloses) {
  UniqueFd fd = connect_to(socket_);
  ASSERT_TRUE(cli::write_all(fd.get(), "THIS IS NOT HTTP\r\n\r\n"));
  auto rs = parse_all(read_to_eof(fd.get()));
  ASSERT_EQ(rs.size(), 1u);
  EXPECT_EQ(rs[0].status, 400);
  EXPECT_EQ(*rs[0].header("content-type"), "application/json");
  EXPECT_EQ(body_json(rs[0])["error"]["code"], "invalid");
  EXPECT_NE(body_json(rs[0])["error"]["message"].get<std::string>().find("malformed"),
            std::string::npos);
}

TEST_F(HttpServerTest, BrokenPercentEscapeGets400) {
  UniqueFd fd = connect_to(socket_);
  ASSERT_TRUE(cli::write_all(fd.get(), "GET /echo%zz HTTP/1.1\r\n\r\n"));
  auto rs = parse_all(read_to_eof(fd.get()));
  ASSERT_EQ(rs.size(), 1u);
  EXPECT_EQ(rs[0].status, 400);
}

TEST_F(HttpServerTest, LongUrlGets414) {
  UniqueFd fd = connect_to(socket_);
  std::string url = "/echo?x=" + std::string(9000, 'a');
  ASSERT_TRUE(cli::write_all(fd.get(), "GET " + url + " HTTP/1.1\r\n\r\n"));
  auto rs = parse_all(read_to_eof(fd.get()));
  ASSERT_EQ(rs.size(), 1u);
  EXPECT_EQ(rs[0].status, 414);
  EXPECT_EQ(body_json(rs[0])["error"]["code"], "uri_too_long");
}

TEST_F(HttpServerTest, UrlJustUnderTheLimitIsServed) {
  UniqueFd fd = connect_to(socket_);
  std::string url = "/echo?x=" + std::string(8000, 'a');
  ASSERT_TRUE(cli::write_all(fd.get(), "GET " + url + " HTTP/1.1\r\n\r\n"));
  ResponseParser p;
  EXPECT_EQ(cli::read_response(fd.get(), p).status, 200);
}

TEST_F(HttpServerTest, LargeHeadersGet431) {
  UniqueFd fd = connect_to(socket_);
  std::string headers;
  for (int i = 0; i < 20; ++i)
    headers += "X-Filler-" + std::to_string(i) + ": " + std::string(1000, 'h') + "\r\n";
  ASSERT_TRUE(cli::write_all(fd.get(), "GET /echo HTTP/1.1\r\n" + headers + "\r\n"));
  auto rs = parse_all(read_to_eof(fd.get()));
  ASSERT_EQ(rs.size(), 1u);
  EXPECT_EQ(rs[0].status, 431);
}

TEST_F(HttpServerTest, DeclaredLargeBodyGets413BeforeItIsSent) {
  UniqueFd fd = connect_to(socket_);
  ASSERT_TRUE(cli::write_all(fd.get(), "POST /echo HTTP/1.1\r\nContent-Length: " +
                                           std::to_string(4 * 1024 * 1024 + 1) + "\r\n\r\n"));
  auto rs = parse_all(read_to_eof(fd.get()));
  ASSERT_EQ(rs.size(), 1u);
  EXPECT_EQ(rs[0].status, 413);
  EXPECT_EQ(body_json(rs[0])["error"]["code"], "too_large");
}

TEST_F(HttpServerTest, ChunkedBodyOverTheLimitGets413) {
  UniqueFd fd = connect_to(socket_);
  ASSERT_TRUE(
      cli::write_all(fd.get(), "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"));
  std::string chunk(1024 * 1024, 'b');
  char size[32];
  snprintf(size, sizeof size, "%zx\r\n", chunk.size());
  for (int i = 0; i < 5; ++i)
    if (!cli::write_all(fd.get(), size + chunk + "\r\n")) break;  // the server may hang up early
  auto rs = parse_all(read_to_eof(fd.get()));
  ASSERT_EQ(rs.size(), 1u);
  EXPECT_EQ(rs[0].status, 413);
}

TEST_F(HttpServerTest, ChunkedRequestBodyIsDecoded) {
  UniqueFd fd = connect_to(socket_);
  ASSERT_TRUE(cli::write_all(fd.get(),
                             "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                             "3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"));
  ResponseParser p;
  EXPECT_EQ(cli::read_response(fd.get(), p).body, "POST /echo q= body=abcdefg");
}

TEST_F(HttpServerTest, ExpectContinueGetsAnInterimAnswer) {
  UniqueFd fd = connect_to(socket_);
  ASSERT_TRUE(cli::write_all(
      fd.get(), "POST /echo HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"));
  char buf[64];
  ssize_t n = read(fd.get(), buf, sizeof buf);
  ASSERT_GT(n, 0);
  EXPECT_EQ(std::string(buf, static_cast<size_t>(n)), "HTTP/1.1 100 Continue\r\n\r\n");
  ASSERT_TRUE(cli::write_all(fd.get(), "hi"));
  ResponseParser p;
  EXPECT_EQ(cli::read_response(fd.get(), p).body, "POST /echo q= body=hi");
}

TEST_F(HttpServerTest, StreamedAnswerIsChunked) {
  UniqueFd fd = connect_to(socket_);
  ASSERT_TRUE(
      cli::write_all(fd.get(), "GET /stream?n=3 HTTP/1.1\r\n\r\nGET /echo HTTP/1.1\r\n\r\n"));
  ResponseParser p;
  HttpResponse r = cli::read_response(fd.get(), p);
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(r.chunked);
  EXPECT_EQ(r.body, "chunk 0\nchunk 1\nchunk 2\n");
  // The connection is still good for the next (pipelined) request.
  EXPECT_EQ(cli::read_response(fd.get(), p).body, "GET /echo q= body=");
}

TEST_F(HttpServerTest, Http10StreamRunsUntilClose) {
  UniqueFd fd = connect_to(socket_);
  ASSERT_TRUE(cli::write_all(fd.get(), "GET /stream?n=2 HTTP/1.0\r\n\r\n"));
  std::string raw = read_to_eof(fd.get());
  EXPECT_EQ(raw.find("Transfer-Encoding"), std::string::npos);
  EXPECT_NE(raw.find("\r\n\r\nchunk 0\nchunk 1\n"), std::string::npos);
}

TEST_F(HttpServerTest, Http10WithoutKeepAliveIsClosedAfterTheAnswer) {
  UniqueFd fd = connect_to(socket_);
  ASSERT_TRUE(cli::write_all(fd.get(), "GET /echo HTTP/1.0\r\n\r\n"));
  auto rs = parse_all(read_to_eof(fd.get()));
  ASSERT_EQ(rs.size(), 1u);
  EXPECT_EQ(rs[0].status, 200);
}

TEST_F(HttpServerTest, UnansweredRequestGets500) {
  UniqueFd fd = connect_to(socket_);
  ASSERT_TRUE(cli::write_all(fd.get(), "GET /drop HTTP/1.1\r\n\r\nGET /throw HTTP/1.1\r\n\r\n"));
  ResponseParser p;
  EXPECT_EQ(cli::read_response(fd.get(), p).status, 500);
  HttpResponse r = cli::read_response(fd.get(), p);
  EXPECT_EQ(r.status, 500);
  EXPECT_EQ(body_json(r)["error"]["message"], "handler exploded");
}

TEST_F(HttpServerTest, ClientLeavingCancelsAStream) {
  {
    UniqueFd fd = connect_to(socket_);
    ASSERT_TRUE(cli::write_all(fd.get(), "GET /infinite HTTP/1.1\r\n\r\n"));
    ResponseParser p;
    std::string got;
    p.on_body = [&](std::string_view b) { got += b; };
    char buf[4096];
    while (got.empty()) {
      ssize_t n = read(fd.get(), buf, sizeof buf);
      ASSERT_GT(n, 0);
      ASSERT_TRUE(p.feed(buf, static_cast<size_t>(n)));
    }
    EXPECT_EQ(got, "first\n");
  }  // the client hangs up
  wait_for([&] { return cancels_ == 1 && server_->connection_count() == 0; });
}

TEST_F(HttpServerTest, ClientLeavingMidAnswerLeavesTheServerServing) {
  {
    UniqueFd fd = connect_to(socket_);
    ASSERT_TRUE(cli::write_all(fd.get(), "GET /stream?n=200000 HTTP/1.1\r\n\r\n"));
    char buf[4096];
    ASSERT_GT(read(fd.get(), buf, sizeof buf), 0);
  }  // hang up with most of the answer unread
  wait_for([&] { return server_->connection_count() == 0; });
  EXPECT_EQ(cli::HttpClient(socket_).request("GET", "/echo").status, 200);
}

TEST_F(HttpServerTest, ObserverSeesEveryAnswer) {
  UniqueFd fd = connect_to(socket_);
  ASSERT_TRUE(cli::write_all(
      fd.get(), "GET /echo HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\nConnection: close\r\n\r\n"));
  read_to_eof(fd.get());
  wait_for([&] {
    std::lock_guard lock(mutex_);
    return statuses_.size() == 2;
  });
  std::lock_guard lock(mutex_);
  EXPECT_EQ(statuses_, (std::vector<int>{200, 404}));
}

TEST_F(HttpServerTest, ShutdownEndsStreamsAndRefusesNewConnections) {
  UniqueFd fd = connect_to(socket_);
  ASSERT_TRUE(cli::write_all(fd.get(), "GET /infinite HTTP/1.1\r\n\r\n"));
  ResponseParser p;
  p.on_body = [](std::string_view) {};
  char buf[4096];
  ssize_t n = read(fd.get(), buf, sizeof buf);
  ASSERT_GT(n, 0);
  ASSERT_TRUE(p.feed(buf, static_cast<size_t>(n)));

  shutdown_server(10'000);
  // The stream was ended properly (terminating chunk), then closed.
  std::string rest = read_to_eof(fd.get());
  ASSERT_TRUE(p.feed(rest));
  ASSERT_TRUE(p.has_response());
  EXPECT_EQ(p.take().status, 200);
  EXPECT_EQ(cancels_, 1);
  EXPECT_FALSE(fs::exists(socket_)) << "the socket file is removed";
  EXPECT_THROW(cli::connect_unix(socket_), cli::CannotConnect);
}

TEST_F(HttpServerTest, ShutdownLetsAPendingAnswerFinish) {
  UniqueFd fd = connect_to(socket_);
  ASSERT_TRUE(cli::write_all(fd.get(), "GET /hold HTTP/1.1\r\n\r\n"));
  wait_for([&] { return held_.size() == 1; });
  std::promise<void> done;
  loop_.run([&] {
    server_->shutdown(10'000, [&] { done.set_value(); });
    Response late;
    late.body = "answered during shutdown";
    held_[0].send(std::move(late));
  });
  done.get_future().get();
  loop_.run([&] { server_.reset(); });
  auto rs = parse_all(read_to_eof(fd.get()));
  ASSERT_EQ(rs.size(), 1u);
  EXPECT_EQ(rs[0].body, "answered during shutdown");
  EXPECT_FALSE(rs[0].keep_alive);
}

TEST_F(HttpServerTest, ShutdownCutsRequestsStillBusyAtTheDeadline) {
  UniqueFd fd = connect_to(socket_);
  UniqueFd idle = connect_to(socket_);
  ASSERT_TRUE(cli::write_all(fd.get(), "GET /hold HTTP/1.1\r\n\r\n"));
  wait_for([&] { return held_.size() == 1; });
  shutdown_server(1);
  EXPECT_EQ(read_to_eof(fd.get()), "");
  EXPECT_TRUE(server_closed(idle.get()));
}

class HttpIdleTest : public HttpServerTest {
 protected:
  void SetUp() override {
    Limits l;
    l.idle_timeout_ms = 50;
    start_server(l);
  }
};

TEST_F(HttpIdleTest, IdleConnectionIsClosed) {
  UniqueFd fd = connect_to(socket_);
  EXPECT_TRUE(server_closed(fd.get()));
}

TEST_F(HttpIdleTest, HalfSentRequestGets408) {
  UniqueFd fd = connect_to(socket_);
  ASSERT_TRUE(cli::write_all(fd.get(), "GET /echo HTTP/1.1\r\nHost: x\r\n"));
  auto rs = parse_all(read_to_eof(fd.get()));
  ASSERT_EQ(rs.size(), 1u);
  EXPECT_EQ(rs[0].status, 408);
}

// ---- the Unix socket listener -------------------------------------------------

class UnixListenTest : public ::testing::Test {
 protected:
  void TearDown() override { loop_.stop(); }
  std::unique_ptr<Server> make() {
    return std::make_unique<Server>(loop_.loop(), Limits{}, [](Request, Responder r) {
      r.send(Response::json(200, {{"ok", true}}));
    });
  }
  TempDir dir_;
  LoopThread loop_;
};

TEST_F(UnixListenTest, SecondServerOnTheSameSocketIsRefused) {
  std::string path = (dir_.path / "api.sock").string();
  std::unique_ptr<Server> first, second;
  std::string message;
  loop_.run([&] {
    first = make();
    first->listen_unix({path, 0660, ""});
    second = make();
    try {
      second->listen_unix({path, 0660, ""});
    } catch (const Error &e) {
      message = e.what();
    }
  });
  EXPECT_NE(message.find("is listening there"), std::string::npos) << message;
  EXPECT_NE(message.find(path), std::string::npos) << message;
  // The first one still serves.
  cli::HttpClient client(path);
  EXPECT_EQ(client.request("GET", "/").status, 200);
  loop_.run([&] {
    first.reset();
    second.reset();
  });
}

TEST_F(UnixListenTest, StaleSocketIsReplaced) {
  std::string path = (dir_.path / "api.sock").string();
  {  // a socket file nobody listens on, as a crashed daemon leaves it
    UniqueFd fd(socket(AF_UNIX, SOCK_STREAM, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    strcpy(addr.sun_path, path.c_str());
    ASSERT_EQ(bind(fd.get(), reinterpret_cast<sockaddr *>(&addr), sizeof addr), 0);
  }
  ASSERT_TRUE(fs::is_socket(path));
  std::unique_ptr<Server> s;
  loop_.run([&] {
    s = make();
    s->listen_unix({path, 0600, ""});
  });
  EXPECT_EQ(cli::HttpClient(path).request("GET", "/").status, 200);
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  loop_.run([&] { s.reset(); });
}

TEST_F(UnixListenTest, RegularFileAtTheSocketPathIsLeftAlone) {
  std::string path = (dir_.path / "api.sock").string();
  std::ofstream(path) << "precious";
  std::string message;
  loop_.run([&] {
    auto s = make();
    try {
      s->listen_unix({path, 0660, ""});
    } catch (const Error &e) {
      message = e.what();
    }
  });
  EXPECT_NE(message.find("is not a socket"), std::string::npos) << message;
  std::ifstream in(path);
  std::string content((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(content, "precious");
}

TEST_F(UnixListenTest, UnknownGroupIsNamedAndNothingIsLeftBehind) {
  std::string path = (dir_.path / "api.sock").string();
  std::string message;
  loop_.run([&] {
    auto s = make();
    try {
      s->listen_unix({path, 0660, "no-such-group-flotilla-test"});
    } catch (const Error &e) {
      message = e.what();
    }
  });
  EXPECT_NE(message.find("\"no-such-group-flotilla-test\""), std::string::npos) << message;
  EXPECT_FALSE(fs::exists(path));
}

TEST_F(UnixListenTest, MissingParentDirectoryIsCreated) {
  std::string path = (dir_.path / "run" / "flotilla" / "api.sock").string();
  std::unique_ptr<Server> s;
  loop_.run([&] {
    s = make();
    s->listen_unix({path, 0660, ""});
  });
  EXPECT_EQ(cli::HttpClient(path).request("GET", "/").status, 200);
  loop_.run([&] { s.reset(); });
}

// ---- TLS with client certificates ---------------------------------------------

// Certificates made once for the suite with the openssl command line tool:
// a CA, a server certificate, a client certificate, and a client
// certificate from another CA.
class TlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    certs_ = new TempDir();
    std::string d = certs_->path.string();
    auto sh = [&](const std::string &cmd) {
      return std::system(("cd " + d + " && " + cmd + " >/dev/null 2>&1").c_str()) == 0;
    };
    std::ofstream(d + "/server.ext") << "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                        "extendedKeyUsage=serverAuth\n";
    std::ofstream(d + "/client.ext") << "extendedKeyUsage=clientAuth\n";
    auto ca = [&](const std::string &name) {
      return sh(
          "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 "
          "-subj /CN=" +
          name + " -keyout " + name + ".key -out " + name + ".pem");
    };
    auto cert = [&](const std::string &name, const std::string &ca_name, const std::string &ext) {
      return sh("openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=" + name +
                " -keyout " + name + ".key -out " + name + ".csr") &&
             sh("openssl x509 -req -days 2 -in " + name + ".csr -CA " + ca_name + ".pem -CAkey " +
                ca_name + ".key -set_serial 0x" + std::to_string(++serial_) + " -extfile " + ext +
                " -out " + name + ".pem");
    };
    ok_ = ca("ca") && ca("other-ca") && cert("server", "ca", "server.ext") &&
          cert("client", "ca", "client.ext") && cert("stranger", "other-ca", "client.ext");
  }
  static void TearDownTestSuite() {
    delete certs_;
    certs_ = nullptr;
  }

  void SetUp() override {
    if (!ok_) GTEST_SKIP() << "the openssl command line tool could not make test certificates";
    socket_ = (dir_.path / "api.sock").string();
    loop_.run([&] {
      server_ = std::make_unique<Server>(loop_.loop(), Limits{}, [](Request req, Responder r) {
        r.send(Response::json(200, {{"path", req.path}, {"peer", req.peer}}));
      });
      server_->listen_unix({socket_, 0660, ""});
      server_->listen_tls({"127.0.0.1:0", file("server.pem"), file("server.key"), file("ca.pem")});
      port_ = server_->tls_port();
    });
  }
  void TearDown() override {
    if (server_) loop_.run([&] { server_.reset(); });
    loop_.stop();
  }

  static std::string file(const std::string &name) { return (certs_->path / name).string(); }

  struct SslCtxFree {
    void operator()(SSL_CTX *c) const { SSL_CTX_free(c); }
  };
  struct SslFree {
    void operator()(SSL *s) const { SSL_free(s); }
  };

  // A TLS GET / as a client with the given certificate ("" for none).
  // Returns the response, or nullopt if the server refused the client.
  std::optional<HttpResponse> tls_get(const std::string &cert_name) {
    std::unique_ptr<SSL_CTX, SslCtxFree> ctx(SSL_CTX_new(TLS_client_method()));
    SSL_CTX_load_verify_locations(ctx.get(), file("ca.pem").c_str(), nullptr);
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
    if (!cert_name.empty()) {
      EXPECT_EQ(SSL_CTX_use_certificate_file(ctx.get(), file(cert_name + ".pem").c_str(),
                                             SSL_FILETYPE_PEM),
                1);
      EXPECT_EQ(SSL_CTX_use_PrivateKey_file(ctx.get(), file(cert_name + ".key").c_str(),
                                            SSL_FILETYPE_PEM),
                1);
    }
    UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    set_read_timeout(fd.get());
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port_));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(connect(fd.get(), reinterpret_cast<sockaddr *>(&addr), sizeof addr), 0);
    std::unique_ptr<SSL, SslFree> ssl(SSL_new(ctx.get()));
    SSL_set_fd(ssl.get(), fd.get());
    if (SSL_connect(ssl.get()) != 1) {
      ERR_clear_error();
      return std::nullopt;
    }
    std::string req = "GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n";
    if (SSL_write(ssl.get(), req.data(), static_cast<int>(req.size())) <= 0) {
      ERR_clear_error();
      return std::nullopt;
    }
    ResponseParser p;
    char buf[4096];
    for (;;) {
      int n = SSL_read(ssl.get(), buf, sizeof buf);
      if (n <= 0) break;
      EXPECT_TRUE(p.feed(buf, static_cast<size_t>(n)));
      if (p.has_response()) break;
    }
    ERR_clear_error();
    if (!p.has_response()) return std::nullopt;
    return p.take();
  }

  static inline TempDir *certs_ = nullptr;
  static inline bool ok_ = false;
  static inline int serial_ = 0;
  TempDir dir_;
  LoopThread loop_;
  std::string socket_;
  std::unique_ptr<Server> server_;
  int port_ = 0;
};

TEST_F(TlsTest, ClientWithACertificateIsServed) {
  auto r = tls_get("client");
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 200);
  auto j = nlohmann::json::parse(r->body);
  EXPECT_EQ(j["path"], "/hello");
  EXPECT_NE(j["peer"].get<std::string>().find("cn=client"), std::string::npos) << j.dump();
}

TEST_F(TlsTest, ClientWithoutACertificateIsRefused) {
  EXPECT_FALSE(tls_get("").has_value());
}

TEST_F(TlsTest, ClientWithACertificateFromAnotherCaIsRefused) {
  EXPECT_FALSE(tls_get("stranger").has_value());
}

TEST_F(TlsTest, PlainHttpOnTheTlsPortGetsNoAnswer) {
  UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  set_read_timeout(fd.get());
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port_));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(fd.get(), reinterpret_cast<sockaddr *>(&addr), sizeof addr), 0);
  ASSERT_TRUE(cli::write_all(fd.get(), "GET / HTTP/1.1\r\n\r\n"));
  std::string got = read_to_eof(fd.get());
  EXPECT_EQ(got.find("HTTP/1.1"), std::string::npos);
}

TEST_F(TlsTest, TcpWithoutClientCaIsRefusedAtStart) {
  std::string message;
  loop_.run([&] {
    Server s(loop_.loop(), Limits{}, [](Request, Responder) {});
    try {
      s.listen_tls({"127.0.0.1:0", file("server.pem"), file("server.key"), ""});
    } catch (const Error &e) {
      message = e.what();
    }
  });
  EXPECT_NE(message.find("api.tls_client_ca"), std::string::npos) << message;
}

TEST_F(TlsTest, KeyThatDoesNotMatchTheCertificateIsRefused) {
  std::string message;
  loop_.run([&] {
    Server s(loop_.loop(), Limits{}, [](Request, Responder) {});
    try {
      s.listen_tls({"127.0.0.1:0", file("server.pem"), file("client.key"), file("ca.pem")});
    } catch (const Error &e) {
      message = e.what();
    }
  });
  EXPECT_NE(message.find("does not belong"), std::string::npos) << message;
}

}  // namespace
}  // namespace flotilla::http
