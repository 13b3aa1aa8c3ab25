#include "api/endpoint.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <set>

#include "error.h"
#include "plugin_host.h"

namespace flotilla::api {

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
                    json problems) {
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
  if (res.status == FLOTILLA_E_UNAVAILABLE)
    message = "the state store is unreachable (" + message +
              "); changes are refused until it answers again, reads answer from the last "
              "state this node saw";
  return status_error(res.status, message);
}

Response no_store() {
  return error_json(503, "unavailable", "no state store: no loaded plugin serves flotilla.store/1");
}

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

// ---- shared state -----------------------------------------------------------

void RequestCounters::add(int status, double seconds) {
  std::lock_guard lock(mutex);
  int cls = status / 100;
  if (cls >= 1 && cls <= 5) ++by_class[static_cast<size_t>(cls - 1)];
  latency_sum += seconds;
  ++latency_count;
}

std::string RequestCounters::render() {
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

std::vector<PluginRef> ApiState::providers(std::string_view interface_id) const {
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

void ApiState::clear_plugin_error() const {
  if (!ctx.plugin_error) PluginHost::clear_last_error();
}

std::string ApiState::plugin_error() const {
  return ctx.plugin_error ? ctx.plugin_error() : PluginHost::last_error();
}

// ---- consistent reads -------------------------------------------------------

namespace {

// What each read last saw, per store. While the store cannot be reached
// (etcd down, this node cut off), a read answers from it; its "revision"
// (and X-Flotilla-Index) says which state it shows. Running containers do
// not depend on the store, and neither should looking at them.
struct LastSeen {
  std::vector<KeyValue> kvs;
  int64_t revision = 0;
  std::chrono::steady_clock::time_point at;
};
std::map<std::pair<const StoreClient *, std::string>, LastSeen> &last_seen() {
  static std::map<std::pair<const StoreClient *, std::string>, LastSeen> seen;
  return seen;
}
std::string seen_key(const ReadSpec &spec) { return (spec.exact ? "=" : "*") + spec.key; }

void mark_answer(Responder &answer, int64_t revision, bool stale, int64_t age_ms) {
  answer.add_header("X-Flotilla-Index", std::to_string(revision));
  answer.add_header("X-Flotilla-Stale", stale ? "true" : "false");
  answer.add_header("X-Flotilla-Last-Contact", std::to_string(age_ms));
}

void read_step(const StatePtr &s, std::vector<ReadSpec> specs, SnapshotCb cb, Responder answer,
               std::vector<std::vector<KeyValue>> done, int64_t revision) {
  StoreClient *store = s->store();
  if (!store) {
    cb(StoreResult{FLOTILLA_E_CANCELLED, "the API is shutting down"}, {}, 0);
    return;
  }
  size_t i = done.size();
  std::string key = specs[i].key;
  store->list(
      key,
      [s, store, specs = std::move(specs), cb = std::move(cb), answer = std::move(answer),
       done = std::move(done),
       revision](StoreResult res, std::vector<KeyValue> kvs, int64_t rev) mutable {
        if (!res.ok()) {
          if (res.status == FLOTILLA_E_UNAVAILABLE) {
            // Unreachable: the last state seen, if every part was seen.
            std::vector<std::vector<KeyValue>> cached;
            int64_t oldest = 0;
            auto oldest_at = std::chrono::steady_clock::now();
            for (const ReadSpec &sp : specs) {
              auto it = last_seen().find({store, seen_key(sp)});
              if (it == last_seen().end()) break;
              cached.push_back(it->second.kvs);
              if (oldest == 0 || it->second.revision < oldest) oldest = it->second.revision;
              oldest_at = std::min(oldest_at, it->second.at);
            }
            if (cached.size() == specs.size()) {
              auto age = std::chrono::duration_cast<std::chrono::milliseconds>(
                  std::chrono::steady_clock::now() - oldest_at);
              mark_answer(answer, oldest, true, age.count());
              cb(StoreResult{}, std::move(cached), oldest);
              return;
            }
          }
          cb(std::move(res), {}, 0);
          return;
        }
        const ReadSpec &spec = specs[done.size()];
        if (spec.exact) std::erase_if(kvs, [&](const KeyValue &kv) { return kv.key != spec.key; });
        if (revision == 0) revision = rev;
        last_seen()[{store, seen_key(spec)}] =
            LastSeen{kvs, revision, std::chrono::steady_clock::now()};
        done.push_back(std::move(kvs));
        if (done.size() == specs.size()) {
          mark_answer(answer, revision, false, 0);
          cb(std::move(res), std::move(done), revision);
          return;
        }
        read_step(s, std::move(specs), std::move(cb), std::move(answer), std::move(done), revision);
      },
      revision);
}

}  // namespace

void read_snapshot(const StatePtr &s, std::vector<ReadSpec> specs, SnapshotCb cb,
                   Responder answer) {
  read_step(s, std::move(specs), std::move(cb), std::move(answer), {}, 0);
}

std::string key_suffix(const std::string &key, std::string_view prefix) {
  return key.substr(std::min(key.size(), prefix.size()));
}

std::map<std::string, json> statuses_by_id(const std::vector<KeyValue> &kvs) {
  std::map<std::string, json> out;
  for (const auto &kv : kvs) out[key_suffix(kv.key, kAllocStatus)] = parse_record(kv.value);
  return out;
}

bool under(const std::string &key, std::string_view prefix) {
  return key.size() >= prefix.size() && std::string_view(key).substr(0, prefix.size()) == prefix;
}

// An allocation's record or status that belongs to job `name`: its "job"
// field or, for a deleted key (no value left), its id, "<job>-<index>-..."
// (a job named "web" may wake on "web-api"'s deletions, which is harmless).
bool alloc_of_job(const StoreEvent &e, const std::string &name) {
  std::string id;
  if (under(e.kv.key, kAllocs))
    id = key_suffix(e.kv.key, kAllocs);
  else if (under(e.kv.key, kAllocStatus))
    id = key_suffix(e.kv.key, kAllocStatus);
  else
    return false;
  std::string job;
  if (e.type == StoreEvent::Type::put) job = string_field(parse_record(e.kv.value), "job");
  return job.empty() ? under(id, name + "-") : job == name;
}

json alloc_view(const KeyValue &kv, const std::map<std::string, json> &statuses, bool with_spec) {
  std::string id = key_suffix(kv.key, kAllocs);
  json a = parse_record(kv.value);
  if (!a.is_object()) a = json{{"record", a}};
  if (!with_spec) a.erase("spec");
  a["id"] = id;
  auto it = statuses.find(id);
  a["status"] = it == statuses.end() ? json(nullptr) : it->second;
  return a;
}

}  // namespace flotilla::api
