// The router: matches a request to its resource's route, answers 400/404/405,
// and holds blocking queries (?index=) until something they show changed.
#include "api/api_server.h"

#include <memory>
#include <string>

#include "api/endpoint.h"
#include "error.h"
#include "jobspec.h"
#include "log.h"

namespace flotilla {
namespace api {
namespace {

// ---- blocking queries -----------------------------------------------------------
//
// As Nomad's: a GET with ?index=N answers once something the answer shows
// changed after store revision N -- at once when that happened already --
// or when ?wait= (default 5m, at most 10m) has passed, whichever comes
// first. The answer's "revision" is the next call's index. Clients wait for
// a change without polling, and learn of it as soon as it is durable.

constexpr int64_t kBlockingDefaultWaitMs = 5 * 60 * 1000;
constexpr int64_t kBlockingMaxWaitMs = 10 * 60 * 1000;

// ?index= and ?wait=. Answers 400 and returns false when either is malformed.
bool parse_blocking(const Request &req, Responder &r, int64_t &index, int64_t &wait_ms) {
  auto bad = [&](const std::string &why) {
    r.send(error_json(400, "invalid", why));
    return false;
  };
  const std::string &text = req.query.at("index");
  try {
    size_t used = 0;
    index = std::stoll(text, &used);
    if (used != text.size() || index < 0) throw std::invalid_argument("");
  } catch (const std::exception &) {
    return bad("index=\"" + text + "\" is not a store revision (a whole number >= 0, as the "
               "\"revision\" of an earlier answer)");
  }
  wait_ms = kBlockingDefaultWaitMs;
  if (auto it = req.query.find("wait"); it != req.query.end()) {
    try {
      wait_ms = parse_duration_ms(it->second);
    } catch (const std::invalid_argument &e) {
      return bad("wait=\"" + it->second + "\": " + e.what());
    }
    if (wait_ms > kBlockingMaxWaitMs)
      return bad("wait=\"" + it->second + "\" is longer than the 10m a query may wait");
  }
  return true;
}

// One GET waiting for a change: a store watch from index + 1 (which first
// replays what changed since then), a timer, and the client's departure or
// the server's shutdown; the first of them answers with a fresh read.
class BlockingQuery : public std::enable_shared_from_this<BlockingQuery> {
 public:
  BlockingQuery(StatePtr s, Request req, Params p, Responder r, RouteFn fn, Relevance relevant)
      : s_(std::move(s)),
        req_(std::move(req)),
        p_(std::move(p)),
        r_(std::move(r)),
        fn_(fn),
        relevant_(relevant) {}

  void start(int64_t index, int64_t wait_ms) {
    std::weak_ptr<BlockingQuery> weak = weak_from_this();
    r_.on_cancel([weak] {
      if (auto self = weak.lock()) self->answer();
    });
    if (done_) return;
    StoreClient *store = s_->store();
    if (!store) return answer();
    timer_ = std::make_unique<http::Timer>(s_->ctx.loop);
    timer_->start(static_cast<uint64_t>(wait_ms), 0, [weak] {
      if (auto self = weak.lock()) self->answer();
    });
    self_ = shared_from_this();  // alive until it answered
    watch_ = store->watch("/flotilla/", true, index + 1,
                          [weak](StoreResult res, const std::vector<StoreEvent> &evs, int64_t) {
                            auto self = weak.lock();
                            if (!self) return;
                            // An error (history compacted, store gone): answer
                            // with what is there now.
                            if (!res.ok()) return self->answer();
                            for (const auto &e : evs)
                              if (self->relevant_(e, self->req_, self->p_)) return self->answer();
                          });
  }

 private:
  void answer() {
    if (done_) return;
    done_ = true;
    auto keep = std::move(self_);
    if (timer_) timer_->stop();
    timer_.reset();
    watch_.reset();
    guarded(r_, [&] { fn_(s_, req_, p_, r_); });
  }

  StatePtr s_;
  Request req_;
  Params p_;
  Responder r_;
  RouteFn fn_;
  Relevance relevant_;
  bool done_ = false;
  std::shared_ptr<BlockingQuery> self_;
  std::unique_ptr<http::Timer> timer_;
  std::unique_ptr<StoreClient::Watch> watch_;
};

bool valid_image_ref_param(std::string_view ref) {
  if (ref.empty() || ref.size() > 512 || ref.front() == '/' || ref.back() == '/') return false;
  for (unsigned char c : ref)
    if (c < 0x21 || c == 0x7f) return false;
  return ref.find("//") == std::string_view::npos && ref.find("..") == std::string_view::npos;
}

// Every resource's routes, in FLOTILLA_API_RESOURCES order.
const std::vector<Route> &routes() {
  static const std::vector<Route> table = [] {
    std::vector<Route> all;
#define FLOTILLA_API_ADD_ROUTES(resource) \
  for (Route &route : resource##_routes()) all.push_back(std::move(route));
    FLOTILLA_API_RESOURCES(FLOTILLA_API_ADD_ROUTES)
#undef FLOTILLA_API_ADD_ROUTES
    return all;
  }();
  return table;
}

void route(const StatePtr &s, Request req, Responder r) {
  const std::vector<std::string> &segs = req.segments;
  for (const Route &route : routes()) {
    if (route.pattern.size() != segs.size()) continue;
    Params params;
    bool match = true;
    for (size_t i = 0; i < segs.size() && match; ++i) {
      if (route.pattern[i] == "*") {
        match = !segs[i].empty();
        params.push_back(segs[i]);
      } else {
        match = route.pattern[i] == segs[i];
      }
    }
    if (!match) continue;
    for (const std::string &p : params)
      if (!(route.slash_in_param ? valid_image_ref_param(p) : valid_name(p)))
        return r.send(
            error_json(400, "invalid", "\"" + p + "\" is not a valid name in " + req.path));
    for (const auto &[method, fn] : route.methods) {
      if (method != req.method) continue;
      if (method == "GET" && route.blocking && req.query.count("index")) {
        int64_t index = 0, wait_ms = 0;
        if (!parse_blocking(req, r, index, wait_ms)) return;
        if (!s->store()) return r.send(no_store());
        auto q = std::make_shared<BlockingQuery>(s, std::move(req), std::move(params), r, fn,
                                                 route.blocking);
        return q->start(index, wait_ms);
      }
      return guarded(r, [&] { fn(s, req, params, r); });
    }
    std::string allow;
    for (const auto &[method, fn] : route.methods)
      allow += (allow.empty() ? "" : ", ") + std::string(method);
    Response resp = error_json(405, "method_not_allowed",
                               req.method + " is not allowed on " + req.path + "; use " + allow);
    resp.headers.emplace_back("Allow", allow);
    return r.send(std::move(resp));
  }
  r.send(error_json(404, "not_found", "no such API path: " + req.path));
}

}  // namespace
}  // namespace api

using api::ApiState;
using api::StatePtr;
using http::Request;
using http::Responder;

// ---- ApiServer ----------------------------------------------------------------

struct ApiServer::Impl {
  StatePtr state;
  std::unique_ptr<http::Server> server;
};

ApiServer::ApiServer(Context ctx) : impl_(std::make_unique<Impl>()) {
  impl_->state = std::make_shared<ApiState>();
  impl_->state->ctx = std::move(ctx);
  StatePtr s = impl_->state;
  impl_->server = std::make_unique<http::Server>(
      s->ctx.loop, s->ctx.limits,
      [s](Request req, Responder r) { api::route(s, std::move(req), std::move(r)); },
      [s](std::string_view method, std::string_view path, int status, double seconds) {
        s->counters.add(status, seconds);
        log::debug(api::kLog, "request",
                   {{"method", std::string(method)},
                    {"path", std::string(path)},
                    {"status", std::to_string(status)},
                    {"ms", std::to_string(static_cast<int64_t>(seconds * 1000))}});
      });
}

ApiServer::~ApiServer() {
  impl_->state->stopped = true;
  impl_->server.reset();
}

void ApiServer::listen() {
  const DaemonConfig *config = impl_->state->ctx.config;
  if (!config) throw Error(FLOTILLA_E_INVALID, "the API has no configuration");
  http::UnixListenOptions unix_options;
  unix_options.path = config->api.socket;
  unix_options.mode = config->api.socket_mode;
  unix_options.group = config->api.socket_group;
  impl_->server->listen_unix(unix_options);
  if (config->api.tcp_listen.empty()) return;
  http::TlsListenOptions tls;
  tls.address = config->api.tcp_listen;
  tls.cert_file = config->api.tls_cert;
  tls.key_file = config->api.tls_key;
  tls.client_ca_file = config->api.tls_client_ca;
  try {
    impl_->server->listen_tls(tls);
  } catch (...) {
    impl_->server->stop_accepting();
    throw;
  }
}

int ApiServer::tls_port() const {
  return impl_->server->tls_port();
}

void ApiServer::stop_accepting() {
  impl_->server->stop_accepting();
}

void ApiServer::shutdown(uint64_t timeout_ms, std::function<void()> done) {
  // Once every connection is closed, store callbacks still in flight (the
  // store may finish them as cancelled when it stops) start nothing new.
  impl_->server->shutdown(timeout_ms, [s = impl_->state, done = std::move(done)] {
    s->stopped = true;
    if (done) done();
  });
}

}  // namespace flotilla
