// /v1/jobs: submitting (with admission by the security plugins), reading and
// stopping jobs.
#include <flotilla/security.h>

#include <algorithm>
#include <map>
#include <optional>
#include <set>
#include <string>

#include "api/endpoint.h"
#include "error.h"
#include "rfc3339.h"

namespace flotilla::api {
namespace {

constexpr int kMaxTxnAttempts = 5;  // a write that loses a race reads again and retries

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

json problems_json(const std::vector<JobSpecProblem> &problems) {
  json out = json::array();
  for (const auto &p : problems) {
    json j = {{"line", p.line}, {"key", p.key}, {"message", p.message}};
    if (p.column > 0) j["column"] = p.column;
    out.push_back(std::move(j));
  }
  return out;
}

void store_job(StatePtr s, std::string name, json job, Responder r, int attempt);

// The discovery registry's records (/flotilla/services/<svc>/<alloc>, as
// the discovery plugin writes them) by allocation: what the deploy monitor
// waits on. [{"name", "health", "output", "node"}], by service name.
std::map<std::string, json> service_health_by_alloc(const std::vector<KeyValue> &records) {
  std::map<std::string, json> out;
  for (const auto &kv : records) {
    std::string rest = key_suffix(kv.key, kServices);
    auto slash = rest.find('/');
    if (slash == std::string::npos || slash == 0 || slash + 1 == rest.size()) continue;
    json rec = parse_record(kv.value);
    if (!rec.is_object()) rec = json::object();
    json one = {{"name", rest.substr(0, slash)},
                {"health", rec.contains("health") ? rec["health"] : json("unknown")},
                {"output", rec.value("output", json(""))},
                {"node", rec.value("node", json(nullptr))}};
    auto &list = out[rest.substr(slash + 1)];
    if (list.is_null()) list = json::array();
    list.push_back(std::move(one));
  }
  return out;
}

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
  std::string key = kJobs + name;
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
      s, {{kJobs}, {kAllocs}, {kAllocStatus}},
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
            std::string name = key_suffix(kv.key, kJobs);
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
      },
      r);
}

void get_job(const StatePtr &s, Request &, const Params &p, Responder &r) {
  if (!s->store()) return r.send(no_store());
  std::string name = p[0];
  read_snapshot(
      s, {{kJobs + name, true}, {kAllocs}, {kAllocStatus}, {kJobStatus + name, true}, {kServices}},
      [r, name](StoreResult res, std::vector<std::vector<KeyValue>> kvs, int64_t rev) mutable {
        guarded(r, [&] {
          if (!res.ok()) return r.send(store_failure(res, "reading job " + name));
          if (kvs[0].empty())
            return r.send(error_json(404, "not_found", "job \"" + name + "\" not found"));
          auto statuses = statuses_by_id(kvs[2]);
          auto services = service_health_by_alloc(kvs[4]);
          json allocs = json::array();
          std::map<std::string, int> counts;
          for (const auto &kv : kvs[1]) {
            json a = alloc_view(kv, statuses);
            if (string_field(a, "job") != name) continue;
            counts[alloc_state(a["status"])]++;
            auto it = services.find(string_field(a, "id"));
            a["services"] = it == services.end() ? json::array() : it->second;
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
      },
      r);
}

// One txn: the job gets "stop": true (or goes, with purge) and each of its
// allocations "desired_status": "stop", if none of them changed meanwhile.
// With purge, allocations that were stopped already are touched ("job
// purged") so that their node deletes their records once their containers
// are gone; those of nodes that left the cluster are deleted here.
void stop_job(StatePtr s, std::string name, bool purge, Responder r, int attempt) {
  read_snapshot(
      s, {{kJobs + name, true}, {kAllocs}, {kNodes}},
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
          for (const auto &kv : kvs[2]) nodes.insert(key_suffix(kv.key, kNodes));
          int stopping = 0;
          for (const auto &kv : kvs[1]) {
            json a = parse_record(kv.value);
            if (string_field(a, "job") != name) continue;
            if (purge && !nodes.count(string_field(a, "node"))) {
              // Nobody is left to stop it or report on it.
              compares.push_back(StoreCompare::mod_revision_is(kv.key, kv.mod_revision));
              ops.push_back(StoreOp::remove(kv.key));
              ops.push_back(StoreOp::remove(kAllocStatus + key_suffix(kv.key, kAllocs)));
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

bool jobs_changed(const StoreEvent &e, const Request &, const Params &) {
  return under(e.kv.key, kJobs) || under(e.kv.key, kAllocs) || under(e.kv.key, kAllocStatus);
}
// A service record wakes the job's watchers when its allocation's id is
// one of the job's (ids begin "<job>-"): a record of job "web-x" also
// wakes those of "web", which only costs them a read.
bool job_changed(const StoreEvent &e, const Request &, const Params &p) {
  if (under(e.kv.key, kServices)) {
    std::string rest = key_suffix(e.kv.key, kServices);
    auto slash = rest.find('/');
    return slash != std::string::npos && under(rest.substr(slash + 1), p[0] + "-");
  }
  return e.kv.key == kJobs + p[0] || e.kv.key == kJobStatus + p[0] || alloc_of_job(e, p[0]);
}

}  // namespace

std::vector<Route> jobs_routes() {
  return {
      {{"v1", "jobs"}, {{"GET", list_jobs}, {"POST", post_job}}, false, jobs_changed},
      {{"v1", "jobs", "*"}, {{"GET", get_job}, {"DELETE", delete_job}}, false, job_changed},
  };
}

}  // namespace flotilla::api
