#include "api/api_server.h"

#include <fcntl.h>
#include <flotilla/runtime.h>
#include <flotilla/security.h>
#include <flotilla/version.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <ctime>
#include <map>
#include <mutex>
#include <optional>
#include <set>

#include "error.h"
#include "flotilla_build_config.h"
#include "jobspec.h"
#include "log.h"
#include "rfc3339.h"
#include "node/reconciler.h"
#include "node/runtime_client.h"

namespace flotilla {
namespace {

using http::Request;
using http::Responder;
using http::Response;
using nlohmann::json;

constexpr std::string_view kLog = "api";
constexpr std::string_view kJobsPrefix = "/flotilla/jobs/";
constexpr std::string_view kAllocsPrefix = "/flotilla/allocs/";
constexpr std::string_view kAllocStatusPrefix = "/flotilla/alloc-status/";
constexpr std::string_view kNodesPrefix = "/flotilla/nodes/";
// A job write that loses a race with another writer reads again and retries.
constexpr int kMaxTxnAttempts = 5;
constexpr size_t kLogChunk = 64 * 1024;
constexpr uint64_t kLogPollMs = 250;
constexpr int kLogStatusEveryTicks = 4;  // check the allocation's status once a second

std::string abi_version() {
  return std::to_string(FLOTILLA_ABI_VERSION_MAJOR) + "." +
         std::to_string(FLOTILLA_ABI_VERSION_MINOR);
}

int http_status_for(flotilla_status s) {
  switch (s) {
    case FLOTILLA_OK:
      return 200;
    case FLOTILLA_E_INVALID:
      return 400;
    case FLOTILLA_E_NOT_FOUND:
      return 404;
    case FLOTILLA_E_EXISTS:
    case FLOTILLA_E_CONFLICT:
      return 409;
    case FLOTILLA_E_UNSUPPORTED:
      return 501;
    case FLOTILLA_E_PERMISSION:
      return 403;
    case FLOTILLA_E_UNAVAILABLE:
    case FLOTILLA_E_CANCELLED:
      return 503;
    case FLOTILLA_E_COMPACTED:
    case FLOTILLA_E_NOMEM:
    case FLOTILLA_E_IO:
    case FLOTILLA_E_INTERNAL:
      return 500;
  }
  return 500;
}

Response error_json(int status, std::string_view code, std::string_view message,
                    json problems = nullptr) {
  json err = {{"code", code}, {"message", message}};
  if (!problems.is_null()) err["problems"] = std::move(problems);
  return Response::json(status, {{"error", std::move(err)}});
}

Response status_error(flotilla_status status, std::string_view message) {
  return error_json(http_status_for(status), status_name(status), message);
}

Response store_failure(const StoreResult &res, std::string_view doing) {
  std::string message = std::string(doing) + ": ";
  message += res.message.empty() ? status_name(res.status) : res.message;
  return status_error(res.status, message);
}

// A stored value as JSON; a value that is not JSON is shown, not hidden.
json parse_record(const std::string &value) {
  json j = json::parse(value, nullptr, false);
  if (j.is_discarded()) return json{{"unparsable_value", value}};
  return j;
}

std::string string_field(const json &j, const char *key) {
  if (j.is_object()) {
    auto it = j.find(key);
    if (it != j.end() && it->is_string()) return it->get<std::string>();
  }
  return {};
}

// The state a node reported for an allocation ("pending" before any report).
std::string alloc_state(const json &status) {
  std::string s = string_field(status, "status");
  if (s.empty()) s = string_field(status, "state");
  return s.empty() ? "pending" : s;
}

bool is_terminal_state(const std::string &state) {
  static const std::set<std::string> terminal = {"complete", "completed", "failed", "stopped",
                                                 "lost",     "dead",      "exited"};
  return terminal.count(state) != 0;
}

// Names become store keys: one path segment, printable, bounded.
// A job's state from its allocations' states: stopped, running, complete
// (every allocation completed), failed (none running, at least one failed),
// else pending.
std::string job_state(bool stop, const std::map<std::string, int> &counts) {
  if (stop) return "stopped";
  int total = 0, complete = 0, failed = 0;
  for (const auto &[state, n] : counts) {
    if (state == "running") return "running";
    total += n;
    if (state == "complete") complete += n;
    if (state == "failed") failed += n;
  }
  if (total > 0 && complete == total) return "complete";
  if (failed > 0 && complete + failed == total) return "failed";
  return "pending";
}

bool valid_name(std::string_view name) {
  if (name.empty() || name.size() > 253 || name == "." || name == "..") return false;
  for (unsigned char c : name)
    if (c == '/' || c < 0x21 || c == 0x7f) return false;
  return true;
}

bool query_flag(const Request &req, const char *key) {
  auto it = req.query.find(key);
  if (it == req.query.end()) return false;
  return it->second.empty() || it->second == "true" || it->second == "1" || it->second == "yes";
}

// The media type of a Content-Type header, lower-cased, without parameters.
std::string media_type(const std::string *content_type) {
  if (!content_type) return {};
  std::string t = content_type->substr(0, content_type->find(';'));
  size_t b = t.find_first_not_of(" \t"), e = t.find_last_not_of(" \t");
  if (b == std::string::npos) return {};
  t = t.substr(b, e - b + 1);
  for (char &c : t) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return t;
}

json problems_json(const std::vector<JobSpecProblem> &problems) {
  json out = json::array();
  for (const auto &p : problems) {
    json j = {{"line", p.line}, {"key", p.key}, {"message", p.message}};
    if (p.column > 0) j["column"] = p.column;
    out.push_back(std::move(j));
  }
  return out;
}

// ---- shared state -----------------------------------------------------------

struct RequestCounters {
  std::mutex mutex;                    // /v1/metrics is rendered on the loop thread, but be safe
  std::array<uint64_t, 5> by_class{};  // 1xx .. 5xx
  double latency_sum = 0;
  uint64_t latency_count = 0;

  void add(int status, double seconds) {
    std::lock_guard lock(mutex);
    int cls = status / 100;
    if (cls >= 1 && cls <= 5) ++by_class[static_cast<size_t>(cls - 1)];
    latency_sum += seconds;
    ++latency_count;
  }

  std::string render() {
    std::lock_guard lock(mutex);
    std::string out =
        "# HELP flotilla_api_requests_total API requests answered, by status class.\n"
        "# TYPE flotilla_api_requests_total counter\n";
    for (size_t i = 0; i < by_class.size(); ++i)
      out += "flotilla_api_requests_total{code=\"" + std::to_string(i + 1) + "xx\"} " +
             std::to_string(by_class[i]) + "\n";
    char sum[64];
    snprintf(sum, sizeof sum, "%.6f", latency_sum);
    out +=
        "# HELP flotilla_api_request_duration_seconds Time from a complete request to the end "
        "of its answer.\n"
        "# TYPE flotilla_api_request_duration_seconds summary\n";
    out += std::string("flotilla_api_request_duration_seconds_sum ") + sum + "\n";
    out += "flotilla_api_request_duration_seconds_count " + std::to_string(latency_count) + "\n";
    return out;
  }
};

// What routes and their pending store callbacks share. It outlives the
// ApiServer while callbacks are pending; `stopped` keeps them from starting
// new work after the server is gone.
struct ApiState {
  ApiServer::Context ctx;
  bool stopped = false;
  RequestCounters counters;

  StoreClient *store() const { return stopped ? nullptr : ctx.store; }

  std::vector<PluginRef> providers(std::string_view interface_id) const {
    if (ctx.find_providers) return ctx.find_providers(interface_id);
    std::vector<PluginRef> out;
    if (!ctx.plugins) return out;
    for (const std::string &name : ctx.plugins->providers(interface_id)) {
      PluginRef ref;
      ref.plugin = name;
      ref.vtable = ctx.plugins->find_interface(interface_id, &ref.self, name);
      if (ref.vtable) out.push_back(std::move(ref));
    }
    return out;
  }

  void clear_plugin_error() const {
    if (!ctx.plugin_error) PluginHost::clear_last_error();
  }
  std::string plugin_error() const {
    return ctx.plugin_error ? ctx.plugin_error() : PluginHost::last_error();
  }
};
using StatePtr = std::shared_ptr<ApiState>;

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

Response no_store() {
  return error_json(503, "unavailable", "no state store: no loaded plugin serves flotilla.store/1");
}

// ---- consistent reads -------------------------------------------------------

// Keys read in one pass at one store revision: a prefix, or an exact key.
struct ReadSpec {
  std::string key;
  bool exact = false;
};
using SnapshotCb =
    std::function<void(StoreResult, std::vector<std::vector<KeyValue>>, int64_t revision)>;

// Read each spec in turn, all at the revision the first read saw, so that a
// job and its allocations are shown as they were at one moment.
void read_snapshot(const StatePtr &s, std::vector<ReadSpec> specs, SnapshotCb cb,
                   std::vector<std::vector<KeyValue>> done = {}, int64_t revision = 0) {
  StoreClient *store = s->store();
  if (!store) {
    cb(StoreResult{FLOTILLA_E_CANCELLED, "the API is shutting down"}, {}, 0);
    return;
  }
  size_t i = done.size();
  std::string key = specs[i].key;
  store->list(
      key,
      [s, specs = std::move(specs), cb = std::move(cb), done = std::move(done), revision](
          StoreResult res, std::vector<KeyValue> kvs, int64_t rev) mutable {
        if (!res.ok()) {
          cb(std::move(res), {}, 0);
          return;
        }
        const ReadSpec &spec = specs[done.size()];
        if (spec.exact) std::erase_if(kvs, [&](const KeyValue &kv) { return kv.key != spec.key; });
        done.push_back(std::move(kvs));
        if (revision == 0) revision = rev;
        if (done.size() == specs.size()) {
          cb(std::move(res), std::move(done), revision);
          return;
        }
        read_snapshot(s, std::move(specs), std::move(cb), std::move(done), revision);
      },
      revision);
}

std::string key_suffix(const std::string &key, std::string_view prefix) {
  return key.substr(std::min(key.size(), prefix.size()));
}

std::map<std::string, json> statuses_by_id(const std::vector<KeyValue> &kvs) {
  std::map<std::string, json> out;
  for (const auto &kv : kvs) out[key_suffix(kv.key, kAllocStatusPrefix)] = parse_record(kv.value);
  return out;
}

// An allocation as the API shows it: its record, "id", and the node's
// report under "status" (null before the first report). Lists leave out
// the copy of the job spec each allocation carries.
json alloc_view(const KeyValue &kv, const std::map<std::string, json> &statuses,
                bool with_spec = false) {
  std::string id = key_suffix(kv.key, kAllocsPrefix);
  json a = parse_record(kv.value);
  if (!a.is_object()) a = json{{"record", a}};
  if (!with_spec) a.erase("spec");
  a["id"] = id;
  auto it = statuses.find(id);
  a["status"] = it == statuses.end() ? json(nullptr) : it->second;
  return a;
}

// ---- simple routes ------------------------------------------------------------

using Params = std::vector<std::string>;

void get_version(const StatePtr &, Request &, const Params &, Responder &r) {
  r.send(Response::json(200, {{"version", FLOTILLA_VERSION}, {"abi", abi_version()}}));
}

void get_health(const StatePtr &, Request &, const Params &, Responder &r) {
  r.send(Response::json(200, {{"status", "ok"}}));
}

void get_plugins(const StatePtr &s, Request &, const Params &, Responder &r) {
  json list = json::array();
  if (s->ctx.plugins) {
    for (const PluginInfo &p : s->ctx.plugins->list()) {
      list.push_back({{"name", p.name},
                      {"id", p.id},
                      {"version", p.version},
                      {"description", p.description},
                      {"path", p.path},
                      {"sha256", p.sha256},
                      {"provides", p.provides},
                      {"depends_on", p.depends_on},
                      {"abi", std::to_string(p.abi_major) + "." + std::to_string(p.abi_minor)}});
    }
  }
  r.send(Response::json(200, {{"plugins", std::move(list)}}));
}

void get_metrics(const StatePtr &s, Request &, const Params &, Responder &r) {
  Response resp;
  resp.headers.emplace_back("Content-Type", "text/plain; version=0.0.4; charset=utf-8");
  if (s->ctx.plugins) resp.body = s->ctx.plugins->metrics().render_prometheus();
  if (!resp.body.empty() && resp.body.back() != '\n') resp.body += '\n';
  resp.body += s->counters.render();
  r.send(std::move(resp));
}

void list_nodes(const StatePtr &s, Request &, const Params &, Responder &r) {
  if (!s->store()) return r.send(no_store());
  read_snapshot(s, {{std::string(kNodesPrefix)}},
                [r](StoreResult res, std::vector<std::vector<KeyValue>> kvs, int64_t rev) mutable {
                  guarded(r, [&] {
                    if (!res.ok()) return r.send(store_failure(res, "reading nodes"));
                    json nodes = json::array();
                    for (const auto &kv : kvs[0]) {
                      json n = parse_record(kv.value);
                      if (!n.is_object()) n = json{{"record", n}};
                      n["name"] = key_suffix(kv.key, kNodesPrefix);
                      nodes.push_back(std::move(n));
                    }
                    r.send(Response::json(200, {{"nodes", nodes}, {"revision", rev}}));
                  });
                });
}

void get_node(const StatePtr &s, Request &, const Params &p, Responder &r) {
  if (!s->store()) return r.send(no_store());
  std::string name = p[0];
  read_snapshot(
      s, {{std::string(kNodesPrefix) + name, true}},
      [r, name](StoreResult res, std::vector<std::vector<KeyValue>> kvs, int64_t rev) mutable {
        guarded(r, [&] {
          if (!res.ok()) return r.send(store_failure(res, "reading node " + name));
          if (kvs[0].empty())
            return r.send(error_json(404, "not_found", "node \"" + name + "\" not found"));
          json n = parse_record(kvs[0][0].value);
          if (!n.is_object()) n = json{{"record", n}};
          n["name"] = name;
          n["revision"] = rev;
          r.send(Response::json(200, n));
        });
      });
}

// POST /v1/nodes/{name}/drain {"drain": true, "eligible": false}: the
// scheduler stops and re-places the node's allocations (drain) or places no
// new ones there (eligible false). Kept under /flotilla/node-control/ so the
// node's own record, which it rewrites, does not undo it.
void post_node_drain(const StatePtr &s, Request &req, const Params &p, Responder &r) {
  if (!s->store()) return r.send(no_store());
  std::string name = p[0];
  json body = json::parse(req.body.empty() ? "{}" : req.body, nullptr, false);
  if (!body.is_object() || (body.contains("drain") && !body["drain"].is_boolean()) ||
      (body.contains("eligible") && !body["eligible"].is_boolean()))
    return r.send(error_json(400, "invalid",
                             "the body must be a JSON object like {\"drain\": true} or "
                             "{\"eligible\": false}; both keys are booleans"));
  // An empty body drains; {"eligible": false} alone only stops new placements.
  bool drain = body.value("drain", !body.contains("eligible"));
  json control = {{"drain", drain}, {"eligible", body.value("eligible", !drain)}};
  read_snapshot(
      s, {{std::string(kNodesPrefix) + name, true}},
      [s, r, name, control](StoreResult res, std::vector<std::vector<KeyValue>> kvs, int64_t) mutable {
        guarded(r, [&] {
          if (!res.ok()) return r.send(store_failure(res, "reading node " + name));
          if (kvs[0].empty())
            return r.send(error_json(404, "not_found", "node \"" + name + "\" not found"));
          StoreClient *store = s->store();
          if (!store) return r.send(no_store());
          store->put("/flotilla/node-control/" + name, control.dump(),
                     [r, name, control](StoreResult w, int64_t rev) mutable {
                       guarded(r, [&] {
                         if (!w.ok()) return r.send(store_failure(w, "writing node " + name));
                         json out = control;
                         out["name"] = name;
                         out["revision"] = rev;
                         r.send(Response::json(200, out));
                       });
                     });
        });
      });
}

// ---- jobs ---------------------------------------------------------------------

void store_job(StatePtr s, std::string name, json job, Responder r, int attempt);

void post_job(const StatePtr &s, Request &req, const Params &, Responder &r) {
  std::string type = media_type(req.header("content-type"));
  bool toml = type == "application/toml" || type == "text/x-toml" || type == "text/plain";
  bool is_json = type == "application/json";
  if (!toml && !is_json)
    return r.send(error_json(415, "unsupported_media_type",
                             (type.empty() ? std::string("a job needs a Content-Type")
                                           : "Content-Type \"" + type + "\" is not accepted") +
                                 ": send TOML as application/toml (or text/x-toml, text/plain) "
                                 "or JSON as application/json"));
  std::string source = "request body";
  if (auto it = req.query.find("source"); it != req.query.end() && !it->second.empty())
    source = it->second;

  json job;
  try {
    if (toml) {
      job = parse_jobspec(req.body, source);
    } else {
      json raw;
      try {
        raw = json::parse(req.body);
      } catch (const json::parse_error &e) {
        // e.byte is 1-based; count the lines before it.
        size_t upto = std::min(req.body.size(), e.byte > 0 ? e.byte - 1 : 0);
        int line = 1 + static_cast<int>(std::count(
                           req.body.begin(), req.body.begin() + static_cast<long>(upto), '\n'));
        std::string what = e.what();
        if (size_t at = what.find("] "); at != std::string::npos) what = what.substr(at + 2);
        return r.send(error_json(400, "invalid", source + " is not valid JSON",
                                 json::array({{{"line", line}, {"key", ""}, {"message", what}}})));
      }
      job = validate_job_json(raw, source);
    }
  } catch (const JobSpecInvalid &e) {
    size_t n = e.problems().size();
    return r.send(error_json(
        400, "invalid",
        source + ": the job has " + std::to_string(n) + (n == 1 ? " problem" : " problems"),
        problems_json(e.problems())));
  }

  std::string name = string_field(job, "name");
  if (!valid_name(name))
    return r.send(error_json(
        400, "invalid", source + ": the job needs a name that is one path segment",
        json::array({{{"line", 0}, {"key", "name"}, {"message", "missing or not a valid name"}}})));

  // Admission: every security plugin may refuse the job. Without one, a
  // task that asks for confinement is refused rather than run unconfined.
  std::string job_text = job.dump(-1, ' ', false, json::error_handler_t::replace);
  const std::vector<PluginRef> security = s->providers(FLOTILLA_SECURITY_INTERFACE_ID);
  if (security.empty() && job.contains("task") && job["task"].is_array())
    for (size_t i = 0; i < job["task"].size(); ++i)
      if (job["task"][i].is_object() && job["task"][i].contains("security")) {
        std::string key = "task[" + std::to_string(i) + "].security";
        return r.send(error_json(
            400, "invalid",
            source + ": " + key + " asks for confinement but no plugin provides " +
                FLOTILLA_SECURITY_INTERFACE_ID + " on this node; load [plugin.security]",
            json::array(
                {{{"line", 0}, {"key", key}, {"message", "no security plugin is loaded"}}})));
      }
  for (const PluginRef &ref : security) {
    auto *sec = static_cast<const flotilla_security_v1 *>(ref.vtable);
    if (!FLOTILLA_HAS_FIELD(sec, flotilla_security_v1, admit) || !sec->admit) continue;
    s->clear_plugin_error();
    flotilla_status st = sec->admit(ref.self, job_text.c_str());
    if (st == FLOTILLA_OK) continue;
    std::string why = s->plugin_error();
    if (why.empty()) why = status_name(st);
    if (st == FLOTILLA_E_PERMISSION)
      return r.send(error_json(
          403, "permission", "job \"" + name + "\" refused by plugin " + ref.plugin + ": " + why));
    return r.send(
        status_error(st, "plugin " + ref.plugin + " could not check job \"" + name + "\": " + why));
  }

  if (query_flag(req, "check"))
    return r.send(Response::json(200, {{"name", name}, {"valid", true}, {"job", job}}));
  if (!s->store()) return r.send(no_store());
  store_job(s, std::move(name), std::move(job), r, 0);
}

// One txn: put the job if the stored one is still the one we read.
void store_job(StatePtr s, std::string name, json job, Responder r, int attempt) {
  StoreClient *store = s->store();
  if (!store) return r.send(no_store());
  std::string key = std::string(kJobsPrefix) + name;
  store->get(key, [s, name, job, r, attempt, key](StoreResult res, std::optional<KeyValue> kv,
                                                  int64_t) mutable {
    guarded(r, [&] {
      if (!res.ok()) return r.send(store_failure(res, "reading job " + name));
      StoreClient *store = s->store();
      if (!store) return r.send(no_store());
      int64_t version = 1;
      StoreCompare cmp = StoreCompare::absent(key);
      if (kv) {
        json old = parse_record(kv->value);
        if (old.is_object() && old.contains("version") && old["version"].is_number_integer())
          version = old["version"].get<int64_t>() + 1;
        cmp = StoreCompare::mod_revision_is(key, kv->mod_revision);
        // The same spec again, on a job that is not stopped: nothing to do
        // (as `nomad job run` with an unchanged job), so running allocations
        // are not replaced.
        if (old.is_object() && !old.value("stop", false)) {
          json same = old;
          for (const char *k : {"version", "submitted_at", "stop"}) same.erase(k);
          if (same == job)
            return r.send(Response::json(200, {{"name", name},
                                               {"version", version - 1},
                                               {"revision", kv->mod_revision},
                                               {"unchanged", true}}));
        }
      }
      bool created = !kv;
      json record = job;
      record["version"] = version;
      record["submitted_at"] = rfc3339_now();
      record["stop"] = false;
      std::string value = record.dump(-1, ' ', false, json::error_handler_t::replace);
      store->txn({cmp}, {StoreOp::put(key, value)}, {},
                 [s, name, job, r, attempt, version, created](StoreResult res, bool succeeded,
                                                              int64_t revision) mutable {
                   guarded(r, [&] {
                     if (!res.ok()) return r.send(store_failure(res, "writing job " + name));
                     if (!succeeded) {
                       if (attempt + 1 < kMaxTxnAttempts)
                         return store_job(s, name, std::move(job), r, attempt + 1);
                       return r.send(error_json(
                           409, "conflict",
                           "job \"" + name + "\" kept changing while it was written; try again"));
                     }
                     log::info(kLog, created ? "job created" : "job updated",
                               {{"job", name}, {"version", std::to_string(version)}});
                     r.send(Response::json(
                         created ? 201 : 200,
                         {{"name", name}, {"version", version}, {"revision", revision}}));
                   });
                 });
    });
  });
}

void list_jobs(const StatePtr &s, Request &, const Params &, Responder &r) {
  if (!s->store()) return r.send(no_store());
  read_snapshot(
      s,
      {{std::string(kJobsPrefix)}, {std::string(kAllocsPrefix)}, {std::string(kAllocStatusPrefix)}},
      [r](StoreResult res, std::vector<std::vector<KeyValue>> kvs, int64_t rev) mutable {
        guarded(r, [&] {
          if (!res.ok()) return r.send(store_failure(res, "reading jobs"));
          auto statuses = statuses_by_id(kvs[2]);
          std::map<std::string, std::map<std::string, int>> counts;  // job -> state -> n
          for (const auto &kv : kvs[1]) {
            json a = alloc_view(kv, statuses);
            counts[string_field(a, "job")][alloc_state(a["status"])]++;
          }
          json jobs = json::array();
          for (const auto &kv : kvs[0]) {
            std::string name = key_suffix(kv.key, kJobsPrefix);
            json job = parse_record(kv.value);
            bool stop = job.is_object() && job.value("stop", false);
            json summary = {{"name", name},
                            {"version", job.is_object() ? job.value("version", 0) : 0},
                            {"submitted_at", string_field(job, "submitted_at")},
                            {"stop", stop},
                            {"allocs", json::object()}};
            if (job.is_object() && job.contains("type")) summary["type"] = job["type"];
            for (const auto &[state, n] : counts[name]) summary["allocs"][state] = n;
            summary["status"] = job_state(stop, counts[name]);
            jobs.push_back(std::move(summary));
          }
          r.send(Response::json(200, {{"jobs", jobs}, {"revision", rev}}));
        });
      });
}

void get_job(const StatePtr &s, Request &, const Params &p, Responder &r) {
  if (!s->store()) return r.send(no_store());
  std::string name = p[0];
  read_snapshot(
      s,
      {{std::string(kJobsPrefix) + name, true},
       {std::string(kAllocsPrefix)},
       {std::string(kAllocStatusPrefix)},
       {"/flotilla/job-status/" + name, true}},
      [r, name](StoreResult res, std::vector<std::vector<KeyValue>> kvs, int64_t rev) mutable {
        guarded(r, [&] {
          if (!res.ok()) return r.send(store_failure(res, "reading job " + name));
          if (kvs[0].empty())
            return r.send(error_json(404, "not_found", "job \"" + name + "\" not found"));
          auto statuses = statuses_by_id(kvs[2]);
          json allocs = json::array();
          std::map<std::string, int> counts;
          for (const auto &kv : kvs[1]) {
            json a = alloc_view(kv, statuses);
            if (string_field(a, "job") != name) continue;
            counts[alloc_state(a["status"])]++;
            allocs.push_back(std::move(a));
          }
          json job = parse_record(kvs[0][0].value);
          json out = {{"job", job},
                      {"status", job_state(job.is_object() && job.value("stop", false), counts)},
                      {"allocs", allocs},
                      {"revision", rev}};
          // Why allocations could not be placed, as the scheduler left it.
          if (!kvs[3].empty()) {
            json js = parse_record(kvs[3][0].value);
            if (js.is_object() && js.contains("placement")) out["placement"] = js["placement"];
          }
          r.send(Response::json(200, out));
        });
      });
}

// One txn: the job gets "stop": true (or goes, with purge) and each of its
// allocations "desired_status": "stop", if none of them changed meanwhile.
// With purge, allocations that were stopped already are touched ("job
// purged") so that their node deletes their records once their containers
// are gone; those of nodes that left the cluster are deleted here.
void stop_job(StatePtr s, std::string name, bool purge, Responder r, int attempt) {
  read_snapshot(
      s,
      {{std::string(kJobsPrefix) + name, true},
       {std::string(kAllocsPrefix)},
       {std::string(kNodesPrefix)}},
      [s, name, purge, r, attempt](StoreResult res, std::vector<std::vector<KeyValue>> kvs,
                                   int64_t rev) mutable {
        guarded(r, [&] {
          if (!res.ok()) return r.send(store_failure(res, "reading job " + name));
          if (kvs[0].empty())
            return r.send(error_json(404, "not_found", "job \"" + name + "\" not found"));
          StoreClient *store = s->store();
          if (!store) return r.send(no_store());
          const KeyValue &job_kv = kvs[0][0];
          std::vector<StoreCompare> compares = {
              StoreCompare::mod_revision_is(job_kv.key, job_kv.mod_revision)};
          std::vector<StoreOp> ops;
          json job = parse_record(job_kv.value);
          if (purge) {
            ops.push_back(StoreOp::remove(job_kv.key));
          } else if (!(job.is_object() && job.value("stop", false))) {
            if (!job.is_object()) job = json::object();
            job["stop"] = true;
            ops.push_back(
                StoreOp::put(job_kv.key, job.dump(-1, ' ', false, json::error_handler_t::replace)));
          }
          std::set<std::string> nodes;
          for (const auto &kv : kvs[2]) nodes.insert(key_suffix(kv.key, kNodesPrefix));
          int stopping = 0;
          for (const auto &kv : kvs[1]) {
            json a = parse_record(kv.value);
            if (string_field(a, "job") != name) continue;
            if (purge && !nodes.count(string_field(a, "node"))) {
              // Nobody is left to stop it or report on it.
              compares.push_back(StoreCompare::mod_revision_is(kv.key, kv.mod_revision));
              ops.push_back(StoreOp::remove(kv.key));
              ops.push_back(StoreOp::remove(std::string(kAllocStatusPrefix) +
                                            key_suffix(kv.key, kAllocsPrefix)));
              continue;
            }
            if (string_field(a, "desired_status") == "stop") {
              if (!purge) continue;
              a["desired_description"] = "job purged";
              compares.push_back(StoreCompare::mod_revision_is(kv.key, kv.mod_revision));
              ops.push_back(
                  StoreOp::put(kv.key, a.dump(-1, ' ', false, json::error_handler_t::replace)));
              continue;
            }
            a["desired_status"] = "stop";
            if (purge) a["desired_description"] = "job purged";
            compares.push_back(StoreCompare::mod_revision_is(kv.key, kv.mod_revision));
            ops.push_back(
                StoreOp::put(kv.key, a.dump(-1, ' ', false, json::error_handler_t::replace)));
            ++stopping;
          }
          json body = {{"name", name}, {"stop", true}, {"purged", purge}, {"allocs_stopped", 0}};
          if (ops.empty()) {  // already stopped, nothing to write
            body["revision"] = rev;
            return r.send(Response::json(200, body));
          }
          store->txn(
              compares, ops, {},
              [s, name, purge, r, attempt, stopping, body](StoreResult res, bool succeeded,
                                                           int64_t revision) mutable {
                guarded(r, [&] {
                  if (!res.ok()) return r.send(store_failure(res, "stopping job " + name));
                  if (!succeeded) {
                    if (attempt + 1 < kMaxTxnAttempts)
                      return stop_job(s, name, purge, r, attempt + 1);
                    return r.send(error_json(
                        409, "conflict",
                        "job \"" + name + "\" kept changing while it was stopped; try again"));
                  }
                  log::info(kLog, purge ? "job stopped and purged" : "job stopped",
                            {{"job", name}, {"allocs", std::to_string(stopping)}});
                  body["allocs_stopped"] = stopping;
                  body["revision"] = revision;
                  r.send(Response::json(200, body));
                });
              });
        });
      });
}

void delete_job(const StatePtr &s, Request &req, const Params &p, Responder &r) {
  if (!s->store()) return r.send(no_store());
  stop_job(s, p[0], query_flag(req, "purge"), r, 0);
}

// ---- allocations --------------------------------------------------------------

void list_allocs(const StatePtr &s, Request &req, const Params &, Responder &r) {
  if (!s->store()) return r.send(no_store());
  std::string job;
  if (auto it = req.query.find("job"); it != req.query.end()) job = it->second;
  read_snapshot(
      s, {{std::string(kAllocsPrefix)}, {std::string(kAllocStatusPrefix)}},
      [r, job](StoreResult res, std::vector<std::vector<KeyValue>> kvs, int64_t rev) mutable {
        guarded(r, [&] {
          if (!res.ok()) return r.send(store_failure(res, "reading allocations"));
          auto statuses = statuses_by_id(kvs[1]);
          json allocs = json::array();
          for (const auto &kv : kvs[0]) {
            json a = alloc_view(kv, statuses);
            if (job.empty() || string_field(a, "job") == job) allocs.push_back(std::move(a));
          }
          r.send(Response::json(200, {{"allocs", allocs}, {"revision", rev}}));
        });
      });
}

void get_alloc(const StatePtr &s, Request &, const Params &p, Responder &r) {
  if (!s->store()) return r.send(no_store());
  std::string id = p[0];
  read_snapshot(
      s, {{std::string(kAllocsPrefix) + id, true}, {std::string(kAllocStatusPrefix) + id, true}},
      [r, id](StoreResult res, std::vector<std::vector<KeyValue>> kvs, int64_t rev) mutable {
        guarded(r, [&] {
          if (!res.ok()) return r.send(store_failure(res, "reading allocation " + id));
          if (kvs[0].empty())
            return r.send(error_json(404, "not_found", "allocation \"" + id + "\" not found"));
          json a = alloc_view(kvs[0][0], statuses_by_id(kvs[1]), true);
          a["revision"] = rev;
          r.send(Response::json(200, a));
        });
      });
}

// Streams one log file to the client, from an offset, optionally following
// it until the allocation ends or the client leaves. File access goes
// through libuv's thread pool so the loop never waits on the disk.
class LogStream : public std::enable_shared_from_this<LogStream> {
 public:
  LogStream(StatePtr s, Responder r, std::string alloc_id, std::string path, int64_t offset,
            bool follow)
      : s_(std::move(s)),
        r_(std::move(r)),
        alloc_id_(std::move(alloc_id)),
        path_(std::move(path)),
        pos_(offset),
        follow_(follow),
        buf_(kLogChunk) {}

  void start() {
    std::weak_ptr<LogStream> weak = weak_from_this();
    r_.on_cancel([weak] {
      if (auto self = weak.lock()) self->cancel();
    });
    if (cancelled_) return;
    fs(&LogStream::on_open, [&](uv_fs_t *req, uv_fs_cb cb) {
      return uv_fs_open(s_->ctx.loop, req, path_.c_str(), O_RDONLY | O_CLOEXEC, 0, cb);
    });
  }

 private:
  struct FsOp {
    uv_fs_t req{};
    std::shared_ptr<LogStream> owner;
    void (LogStream::*then)(ssize_t result, int64_t size) = nullptr;
  };

  // Issue one uv_fs request; `then` runs on the loop with its result.
  template <class Issue>
  void fs(void (LogStream::*then)(ssize_t, int64_t), Issue &&issue) {
    auto op = std::make_unique<FsOp>();
    op->owner = shared_from_this();
    op->then = then;
    op->req.data = op.get();
    int r = issue(&op->req, [](uv_fs_t *req) {
      std::unique_ptr<FsOp> op(static_cast<FsOp *>(req->data));
      ssize_t result = req->result;
      int64_t size = req->fs_type == UV_FS_FSTAT ? static_cast<int64_t>(req->statbuf.st_size) : 0;
      uv_fs_req_cleanup(req);
      auto owner = std::move(op->owner);
      ((*owner).*(op->then))(result, size);
    });
    if (r < 0) {
      op.reset();
      (this->*then)(r, 0);
      return;
    }
    busy_ = true;
    op.release();  // owned by the request until its callback
  }

  void on_open(ssize_t result, int64_t) {
    busy_ = false;
    if (result < 0) {
      if (!cancelled_) {
        int status = result == UV_ENOENT ? 404 : 500;
        r_.send(error_json(status, status == 404 ? "not_found" : "io",
                           "log file " + path_ + " of allocation " + alloc_id_ + ": " +
                               uv_strerror(static_cast<int>(result))));
      }
      return;
    }
    fd_ = static_cast<uv_file>(result);
    if (cancelled_) return close_file();
    r_.begin_stream(200, {{"Content-Type", "text/plain; charset=utf-8"},
                          {"Cache-Control", "no-store"},
                          {"X-Flotilla-Log-Offset", std::to_string(pos_)}});
    read_more();
  }

  void read_more() {
    if (cancelled_ || !r_.open()) return finish();
    fs(&LogStream::on_read, [&](uv_fs_t *req, uv_fs_cb cb) {
      uv_buf_t b = uv_buf_init(buf_.data(), static_cast<unsigned>(buf_.size()));
      return uv_fs_read(s_->ctx.loop, req, fd_, &b, 1, pos_, cb);
    });
  }

  void on_read(ssize_t n, int64_t) {
    busy_ = false;
    if (cancelled_ || !r_.open()) return finish();
    if (n < 0) {
      log::warn(kLog, "reading a log file failed: " + std::string(uv_strerror(static_cast<int>(n))),
                {{"path", path_}});
      return finish();
    }
    if (n > 0) {
      pos_ += n;
      busy_ = true;
      r_.write(std::string(buf_.data(), static_cast<size_t>(n)),
               [self = shared_from_this()](bool ok) {
                 self->busy_ = false;
                 if (ok) {
                   self->read_more();
                 } else {
                   self->finish();
                 }
               });
      return;
    }
    // At the end of the file for now.
    if (!follow_ || terminal_) return finish();
    fs(&LogStream::on_stat,
       [&](uv_fs_t *req, uv_fs_cb cb) { return uv_fs_fstat(s_->ctx.loop, req, fd_, cb); });
  }

  void on_stat(ssize_t result, int64_t size) {
    busy_ = false;
    if (cancelled_ || !r_.open()) return finish();
    if (result == 0 && size < pos_) {  // truncated (e.g. copytruncate): start over
      pos_ = 0;
      return read_more();
    }
    if (!timer_) timer_ = std::make_unique<http::Timer>(s_->ctx.loop);
    timer_->start(kLogPollMs, 0, [self = shared_from_this()] { self->tick(); });
  }

  void tick() {
    if (cancelled_) return finish();
    if (++ticks_ % kLogStatusEveryTicks != 0) return read_more();
    // Is the allocation over? Then read what is left and end.
    StoreClient *store = s_->store();
    if (!store) return finish();
    busy_ = true;
    store->get(std::string(kAllocStatusPrefix) + alloc_id_,
               [self = shared_from_this()](StoreResult res, std::optional<KeyValue> kv, int64_t) {
                 self->busy_ = false;
                 if (res.ok() && kv && is_terminal_state(alloc_state(parse_record(kv->value))))
                   self->terminal_ = true;
                 if (self->terminal_) return self->read_more();
                 StoreClient *store = self->s_->store();
                 if (!store || self->cancelled_) return self->finish();
                 self->busy_ = true;
                 store->get(std::string(kAllocsPrefix) + self->alloc_id_,
                            [self](StoreResult res, std::optional<KeyValue> kv, int64_t) {
                              self->busy_ = false;
                              if (res.ok() && !kv) self->terminal_ = true;  // removed
                              self->read_more();
                            });
               });
  }

  void cancel() {
    if (cancelled_) return;
    cancelled_ = true;
    if (timer_) timer_->stop();
    if (!busy_) finish();
  }

  // End the answer (a no-op if the client is gone), then release the file.
  void finish() {
    if (finished_) return;
    finished_ = true;
    r_.end();
    r_ = Responder();
    timer_.reset();
    close_file();
  }

  void close_file() {
    if (fd_ < 0) return;
    uv_file fd = fd_;
    fd_ = -1;
    fs(&LogStream::on_closed,
       [&](uv_fs_t *req, uv_fs_cb cb) { return uv_fs_close(s_->ctx.loop, req, fd, cb); });
  }

  void on_closed(ssize_t, int64_t) { busy_ = false; }

  StatePtr s_;
  Responder r_;
  std::string alloc_id_, path_;
  int64_t pos_;
  bool follow_;
  bool terminal_ = false;
  bool cancelled_ = false;
  bool finished_ = false;
  bool busy_ = false;  // an fs request, a write or a store read is pending
  int ticks_ = 0;
  uv_file fd_ = -1;
  std::vector<char> buf_;
  std::unique_ptr<http::Timer> timer_;
};

void alloc_logs(const StatePtr &s, Request &req, const Params &p, Responder &r) {
  std::string stream = "stdout";
  if (auto it = req.query.find("stream"); it != req.query.end()) stream = it->second;
  if (stream != "stdout" && stream != "stderr")
    return r.send(
        error_json(400, "invalid", "stream \"" + stream + "\" is not one of stdout, stderr"));
  int64_t offset = 0;
  if (auto it = req.query.find("offset"); it != req.query.end()) {
    char *end = nullptr;
    errno = 0;
    long long v = strtoll(it->second.c_str(), &end, 10);
    if (it->second.empty() || *end || errno || v < 0)
      return r.send(error_json(400, "invalid",
                               "offset \"" + it->second + "\" is not a byte offset (0 or more)"));
    offset = v;
  }
  bool follow = query_flag(req, "follow");
  std::string task;
  if (auto it = req.query.find("task"); it != req.query.end()) task = it->second;
  if (!s->store()) return r.send(no_store());
  std::string id = p[0];
  read_snapshot(
      s, {{std::string(kAllocsPrefix) + id, true}, {std::string(kAllocStatusPrefix) + id, true}},
      [s, r, id, stream, offset, follow, task](
          StoreResult res, std::vector<std::vector<KeyValue>> kvs, int64_t) mutable {
        guarded(r, [&] {
          if (!res.ok()) return r.send(store_failure(res, "reading allocation " + id));
          if (kvs[0].empty())
            return r.send(error_json(404, "not_found", "allocation \"" + id + "\" not found"));
          json alloc = parse_record(kvs[0][0].value);
          json status = kvs[1].empty() ? json(nullptr) : parse_record(kvs[1][0].value);
          if (status.is_object() && status.value("containers_removed", false))
            return r.send(error_json(
                410, "gone",
                "the logs of allocation \"" + id + "\" are gone: it ended and the node's garbage "
                "collection removed its containers ([gc] terminal_after / max_terminal in the "
                "daemon's config)"));

          auto runtimes = s->providers(FLOTILLA_RUNTIME_INTERFACE_ID);
          if (runtimes.empty())
            return r.send(error_json(501, "unsupported",
                                     "no runtime plugin is loaded (none serves "
                                     "flotilla.runtime/1), so there are no logs to show"));
          const PluginRef &rt_ref = runtimes.front();
          auto *rt = static_cast<const flotilla_runtime_v1 *>(rt_ref.vtable);
          if (!FLOTILLA_HAS_FIELD(rt, flotilla_runtime_v1, log_path) || !rt->log_path)
            return r.send(error_json(501, "unsupported",
                                     "runtime plugin " + rt_ref.plugin + " does not serve logs"));
          // Which task: the one asked for, or the only one there is.
          std::vector<std::string> tasks;
          if (alloc.contains("spec") && alloc["spec"].is_object() &&
              alloc["spec"].contains("task") && alloc["spec"]["task"].is_array())
            for (const json &t : alloc["spec"]["task"]) tasks.push_back(string_field(t, "name"));
          if (task.empty()) {
            if (tasks.size() != 1) {
              std::string names;
              for (const auto &t : tasks) names += (names.empty() ? "" : ", ") + t;
              return r.send(error_json(
                  400, "invalid",
                  tasks.empty() ? "allocation \"" + id + "\" names no tasks; give task=NAME"
                                : "allocation \"" + id + "\" has tasks " + names +
                                      "; choose one with task=NAME"));
            }
            task = tasks.front();
          } else if (!tasks.empty() && std::find(tasks.begin(), tasks.end(), task) == tasks.end()) {
            return r.send(error_json(404, "not_found",
                                     "allocation \"" + id + "\" has no task \"" + task + "\""));
          }
          // The container the node reported for the task, else the name the
          // reconciler gives it.
          std::string container;
          if (status.is_object() && status.contains("tasks") && status["tasks"].is_object() &&
              status["tasks"].contains(task))
            container = string_field(status["tasks"][task], "container");
          if (container.empty()) container = Reconciler::container_id(id, task);
          char path[4096] = "";
          s->clear_plugin_error();
          flotilla_status st =
              rt->log_path(rt_ref.self, container.c_str(), stream.c_str(), path, sizeof path);
          if (st != FLOTILLA_OK) {
            std::string why = s->plugin_error();
            std::string node = string_field(alloc, "node");
            std::string here = s->ctx.config ? s->ctx.config->node.name : std::string();
            if (st == FLOTILLA_E_NOT_FOUND && !node.empty() && !here.empty() && node != here)
              why = "allocation \"" + id + "\" runs on node " + node +
                    "; ask the flotillad on that node for its logs";
            else if (why.empty())
              why = "no " + stream + " log for task " + task + " of allocation \"" + id +
                    "\" on this node";
            return r.send(status_error(st, why));
          }
          path[sizeof path - 1] = '\0';
          auto ls = std::make_shared<LogStream>(s, r, id, path, offset,
                                                follow && !is_terminal_state(alloc_state(status)));
          ls->start();
        });
      });
}

// ---- images (served by the runtime plugin, which owns the image store) ------

// The runtime plugin, or a 501 that says which plugin to add.
std::optional<RuntimeClient> runtime_of(const StatePtr &s, Responder &r) {
  auto runtimes = s->providers(FLOTILLA_RUNTIME_INTERFACE_ID);
  if (runtimes.empty()) {
    r.send(error_json(501, "unsupported",
                      "no runtime plugin is loaded (none serves flotilla.runtime/1), so there is "
                      "no image store; add [plugin.runtime-runc] to the config"));
    return std::nullopt;
  }
  return RuntimeClient(static_cast<const flotilla_runtime_v1 *>(runtimes.front().vtable),
                       runtimes.front().self);
}

Response runtime_failure(const StoreResult &res, std::string_view doing) {
  return status_error(res.status, std::string(doing) + ": " +
                                      (res.message.empty() ? status_name(res.status) : res.message));
}

// POST /v1/images {"path": "/abs/oci-layout-or-archive", "tag": "name:tag"}
void post_image(const StatePtr &s, Request &req, const Params &, Responder &r) {
  std::string mt = media_type(req.header("content-type"));
  if (mt != "application/json")
    return r.send(error_json(415, "unsupported_media_type",
                             "POST /v1/images takes application/json: {\"path\": ..., \"tag\": ...}"));
  json body = json::parse(req.body, nullptr, false);
  if (!body.is_object())
    return r.send(error_json(400, "invalid", "the body is not a JSON object"));
  for (auto it = body.begin(); it != body.end(); ++it)
    if (it.key() != "path" && it.key() != "tag")
      return r.send(error_json(400, "invalid", "unknown key \"" + it.key() +
                                                   "\"; an import takes \"path\" and \"tag\""));
  if (!body.contains("path") || !body["path"].is_string() ||
      body["path"].get<std::string>().empty() || body["path"].get<std::string>()[0] != '/')
    return r.send(error_json(400, "invalid",
                             "\"path\" must be the absolute path, on the daemon's host, of an OCI "
                             "image layout directory or an oci-archive tarball"));
  std::string tag;
  if (body.contains("tag")) {
    if (!body["tag"].is_string())
      return r.send(error_json(400, "invalid", "\"tag\" must be a string like \"busybox:latest\""));
    tag = body["tag"].get<std::string>();
  }
  auto rt = runtime_of(s, r);
  if (!rt) return;
  std::string path = body["path"];
  rt->image_import(path, tag, [r, path](StoreResult res, json record) mutable {
    guarded(r, [&] {
      if (!res.ok()) return r.send(runtime_failure(res, "importing " + path));
      r.send(Response::json(201, record));
    });
  });
}

void list_images(const StatePtr &s, Request &, const Params &, Responder &r) {
  auto rt = runtime_of(s, r);
  if (!rt) return;
  rt->image_list([r](StoreResult res, json list) mutable {
    guarded(r, [&] {
      if (!res.ok()) return r.send(runtime_failure(res, "listing images"));
      r.send(Response::json(200, {{"images", list.is_array() ? list : json::array()}}));
    });
  });
}

void delete_image(const StatePtr &s, Request &, const Params &p, Responder &r) {
  auto rt = runtime_of(s, r);
  if (!rt) return;
  std::string ref = p[0];
  rt->image_remove(ref, [r, ref](StoreResult res) mutable {
    guarded(r, [&] {
      if (!res.ok()) return r.send(runtime_failure(res, "removing image " + ref));
      r.send(Response::json(200, {{"removed", ref}}));
    });
  });
}

// ---- routing --------------------------------------------------------------------

using RouteFn = void (*)(const StatePtr &, Request &, const Params &, Responder &);

// ---- blocking queries -----------------------------------------------------------
//
// As Nomad's: a GET with ?index=N answers once something the answer shows
// changed after store revision N -- at once when that happened already --
// or when ?wait= (default 5m, at most 10m) has passed, whichever comes
// first. The answer's "revision" is the next call's index. Clients wait for
// a change without polling, and learn of it as soon as it is durable.

constexpr int64_t kBlockingDefaultWaitMs = 5 * 60 * 1000;
constexpr int64_t kBlockingMaxWaitMs = 10 * 60 * 1000;

// Whether a store change touches what a route shows (for ?index= waits).
using Relevance = bool (*)(const StoreEvent &e, const Request &req, const Params &p);

bool under(const std::string &key, std::string_view prefix) {
  return key.size() >= prefix.size() && std::string_view(key).substr(0, prefix.size()) == prefix;
}

// An allocation's record or status that belongs to job `name`: its "job"
// field or, for a deleted key (no value left), its id, "<job>-<index>-..."
// (a job named "web" may wake on "web-api"'s deletions, which is harmless).
bool alloc_of_job(const StoreEvent &e, const std::string &name) {
  std::string id;
  if (under(e.kv.key, kAllocsPrefix))
    id = key_suffix(e.kv.key, kAllocsPrefix);
  else if (under(e.kv.key, kAllocStatusPrefix))
    id = key_suffix(e.kv.key, kAllocStatusPrefix);
  else
    return false;
  std::string job;
  if (e.type == StoreEvent::Type::put) job = string_field(parse_record(e.kv.value), "job");
  return job.empty() ? under(id, name + "-") : job == name;
}

bool nodes_changed(const StoreEvent &e, const Request &, const Params &) {
  return under(e.kv.key, kNodesPrefix) || under(e.kv.key, "/flotilla/node-control/");
}
bool node_changed(const StoreEvent &e, const Request &, const Params &p) {
  return e.kv.key == std::string(kNodesPrefix) + p[0] ||
         e.kv.key == "/flotilla/node-control/" + p[0];
}
bool jobs_changed(const StoreEvent &e, const Request &, const Params &) {
  return under(e.kv.key, kJobsPrefix) || under(e.kv.key, kAllocsPrefix) ||
         under(e.kv.key, kAllocStatusPrefix);
}
bool job_changed(const StoreEvent &e, const Request &, const Params &p) {
  return e.kv.key == std::string(kJobsPrefix) + p[0] ||
         e.kv.key == "/flotilla/job-status/" + p[0] || alloc_of_job(e, p[0]);
}
bool allocs_changed(const StoreEvent &e, const Request &req, const Params &) {
  if (auto it = req.query.find("job"); it != req.query.end() && !it->second.empty())
    return alloc_of_job(e, it->second);
  return under(e.kv.key, kAllocsPrefix) || under(e.kv.key, kAllocStatusPrefix);
}
bool alloc_changed(const StoreEvent &e, const Request &, const Params &p) {
  return e.kv.key == std::string(kAllocsPrefix) + p[0] ||
         e.kv.key == std::string(kAllocStatusPrefix) + p[0];
}

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

struct Route {
  std::vector<std::string_view> pattern;  // "*" matches one segment
  std::vector<std::pair<std::string_view, RouteFn>> methods;
  // The "*" segment is an image reference, which may hold '/' written as
  // %2F ("library%2Fbusybox:1.36").
  bool slash_in_param = false;
  // GET with ?index= waits for a change this says is relevant.
  Relevance blocking = nullptr;
};

bool valid_image_ref_param(std::string_view ref) {
  if (ref.empty() || ref.size() > 512 || ref.front() == '/' || ref.back() == '/') return false;
  for (unsigned char c : ref)
    if (c < 0x21 || c == 0x7f) return false;
  return ref.find("//") == std::string_view::npos && ref.find("..") == std::string_view::npos;
}

const std::vector<Route> &routes() {
  static const std::vector<Route> table = {
      {{"v1", "version"}, {{"GET", get_version}}},
      {{"v1", "health"}, {{"GET", get_health}}},
      {{"v1", "plugins"}, {{"GET", get_plugins}}},
      {{"v1", "metrics"}, {{"GET", get_metrics}}},
      {{"v1", "nodes"}, {{"GET", list_nodes}}, false, nodes_changed},
      {{"v1", "nodes", "*"}, {{"GET", get_node}}, false, node_changed},
      {{"v1", "nodes", "*", "drain"}, {{"POST", post_node_drain}}},
      {{"v1", "jobs"}, {{"GET", list_jobs}, {"POST", post_job}}, false, jobs_changed},
      {{"v1", "jobs", "*"}, {{"GET", get_job}, {"DELETE", delete_job}}, false, job_changed},
      {{"v1", "allocs"}, {{"GET", list_allocs}}, false, allocs_changed},
      {{"v1", "allocs", "*"}, {{"GET", get_alloc}}, false, alloc_changed},
      {{"v1", "allocs", "*", "logs"}, {{"GET", alloc_logs}}},
      {{"v1", "images"}, {{"GET", list_images}, {"POST", post_image}}},
      {{"v1", "images", "*"}, {{"DELETE", delete_image}}, true},
  };
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
      [s](Request req, Responder r) { route(s, std::move(req), std::move(r)); },
      [s](std::string_view method, std::string_view path, int status, double seconds) {
        s->counters.add(status, seconds);
        log::debug(kLog, "request",
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
