// What the API's endpoints share: the state behind every route, the route
// table's shape, error answers and consistent store reads. Internal to
// core/api/; [loop-thread] throughout.
//
// Each resource has one <resource>_endpoint.cc, which defines
// `std::vector<Route> <resource>_routes()`. A new resource is that file, its
// line in FLOTILLA_API_RESOURCES below and its line in core/meson.build.
#pragma once

#include <flotilla/types.h>

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "api/api_server.h"
#include "api/http_server.h"
#include "jobspec.h"
#include "keyspace.h"
#include "log.h"
#include "store_client.h"

#define FLOTILLA_API_RESOURCES(X) \
  X(agent)                        \
  X(plugins)                      \
  X(nodes)                        \
  X(jobs)                         \
  X(allocs)                       \
  X(images)                       \
  X(services)

namespace flotilla::api {

using http::Request;
using http::Responder;
using http::Response;
using nlohmann::json;

inline constexpr std::string_view kLog = "api";

using keyspace::kAllocs;
using keyspace::kAllocStatus;
using keyspace::kHeartbeats;
using keyspace::kJobs;
using keyspace::kJobStatus;
using keyspace::kNetStatus;
using keyspace::kNodeControl;
using keyspace::kNodes;
using keyspace::kServices;
using keyspace::kVips;

// ---- shared state -----------------------------------------------------------

struct RequestCounters {
  std::mutex mutex;                    // /v1/metrics is rendered on the loop thread, but be safe
  std::array<uint64_t, 5> by_class{};  // 1xx .. 5xx
  double latency_sum = 0;
  uint64_t latency_count = 0;

  void add(int status, double seconds);
  std::string render();
};

// What routes and their pending store callbacks share. It outlives the
// ApiServer while callbacks are pending; `stopped` keeps them from starting
// new work after the server is gone.
struct ApiState {
  ApiServer::Context ctx;
  bool stopped = false;
  RequestCounters counters;

  StoreClient *store() const { return stopped ? nullptr : ctx.store; }
  std::vector<PluginRef> providers(std::string_view interface_id) const;
  void clear_plugin_error() const;
  std::string plugin_error() const;
};
using StatePtr = std::shared_ptr<ApiState>;

// ---- routes -------------------------------------------------------------------

using Params = std::vector<std::string>;  // the path's "*" segments, in order
using RouteFn = void (*)(const StatePtr &, Request &, const Params &, Responder &);

// Whether a store change touches what a route shows (for ?index= waits).
using Relevance = bool (*)(const StoreEvent &e, const Request &req, const Params &p);

struct Route {
  std::vector<std::string_view> pattern;  // "*" matches one segment
  std::vector<std::pair<std::string_view, RouteFn>> methods;
  // The "*" segment is an image reference, which may hold '/' written as
  // %2F ("library%2Fbusybox:1.36").
  bool slash_in_param = false;
  // GET with ?index= waits for a change this says is relevant.
  Relevance blocking = nullptr;
};

#define FLOTILLA_API_DECLARE_ROUTES(resource) std::vector<Route> resource##_routes();
FLOTILLA_API_RESOURCES(FLOTILLA_API_DECLARE_ROUTES)
#undef FLOTILLA_API_DECLARE_ROUTES

// ---- answers ------------------------------------------------------------------

int http_status_for(flotilla_status s);
Response error_json(int status, std::string_view code, std::string_view message,
                    json problems = nullptr);
Response status_error(flotilla_status status, std::string_view message);
Response store_failure(const StoreResult &res, std::string_view doing);
Response no_store();

// Run fn; an exception becomes a 500 instead of escaping into libuv or a plugin.
template <class F>
void guarded(Responder &r, F &&fn) {
  try {
    fn();
  } catch (const std::exception &e) {
    log::error(kLog, std::string("request failed: ") + e.what());
    r.send(error_json(500, "internal", e.what()));
  }
}

// ---- requests and records -----------------------------------------------------

// Names become store keys: one path segment, printable, bounded.
bool valid_name(std::string_view name);
bool query_flag(const Request &req, const char *key);
// The media type of a Content-Type header, lower-cased, without parameters.
std::string media_type(const std::string *content_type);

// A stored value as JSON; a value that is not JSON is shown, not hidden.
json parse_record(const std::string &value);
std::string string_field(const json &j, const char *key);
// The state a node reported for an allocation ("pending" before any report).
std::string alloc_state(const json &status);
bool is_terminal_state(const std::string &state);

// ---- consistent reads -------------------------------------------------------

// Keys read in one pass at one store revision: a prefix, or an exact key.
struct ReadSpec {
  std::string key;
  bool exact = false;
};
using SnapshotCb =
    std::function<void(StoreResult, std::vector<std::vector<KeyValue>>, int64_t revision)>;

// Read each spec in turn, all at the revision the first read saw, so that a
// job and its allocations are shown as they were at one moment. While the
// store is unreachable the callback gets the last state this node saw of
// every spec (ok, and the oldest revision among them) if it saw all of them.
//
// `answer`, when given, is the request's responder: a read that succeeded
// puts on its answer (whatever it is, a 404 too) the headers that say what
// the answer reflects, as Nomad's X-Nomad-Index / X-Nomad-KnownLeader:
//   X-Flotilla-Index: <revision>            always
//   X-Flotilla-Stale: true|false            true: the last state seen, the store unreachable
//   X-Flotilla-Last-Contact: <ms>           how old that state is (0 on a live read)
// Pass it for reads the answer shows, not for a read before a write.
void read_snapshot(const StatePtr &s, std::vector<ReadSpec> specs, SnapshotCb cb,
                   Responder answer = {});

std::string key_suffix(const std::string &key, std::string_view prefix);
bool under(const std::string &key, std::string_view prefix);
std::map<std::string, json> statuses_by_id(const std::vector<KeyValue> &kvs);

// An allocation as the API shows it: its record, "id", and the node's
// report under "status" (null before the first report). Lists leave out
// the copy of the job spec each allocation carries.
json alloc_view(const KeyValue &kv, const std::map<std::string, json> &statuses,
                bool with_spec = false);

// An allocation's record or status that belongs to job `name` (for ?index= waits).
bool alloc_of_job(const StoreEvent &e, const std::string &name);

}  // namespace flotilla::api
