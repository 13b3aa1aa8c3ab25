#include "sched/evaluator.h"

#include <algorithm>
#include <chrono>
#include <ctime>
#include <map>
#include <random>
#include <set>

#include "keyspace.h"
#include "log.h"
#include "rfc3339.h"

namespace flotilla {

using nlohmann::json;

namespace {

// Changes that arrive in the same loop iteration share one evaluation, and
// changes during an evaluation share the next one (eval_again_); waiting
// longer for a job, node or allocation change would only add to every job's
// start latency.
// Allocation status reports are the most frequent change and rarely need an
// answer at once (a failed allocation waits out its reschedule delay
// anyway): they share an evaluation over a few milliseconds, which keeps the
// scheduler off the loop while a container start is being reported.
constexpr uint64_t kStatusEvalDelayMs = 5;

using keyspace::kAllocs;
using keyspace::kAllocStatus;
using keyspace::kJobs;
using keyspace::kJobStatus;
using keyspace::kLeader;
using keyspace::kNodeControl;
using keyspace::kNodes;
using keyspace::kPlacementEpoch;
using keyspace::terminal;

bool starts_with(const std::string &s, const std::string &p) { return s.compare(0, p.size(), p) == 0; }

// A job's tasks: the canonical spec's "task" array (docs/jobspec.md).
const json &tasks_of(const json &job) {
  static const json empty = json::array();
  if (job.contains("task") && job["task"].is_array()) return job["task"];
  return empty;
}

// What one allocation of the job asks for: the sum over its tasks.
flotilla_resources job_ask(const json &job) {
  flotilla_resources r{sizeof(flotilla_resources), 0, 0, 0};
  for (const auto &t : tasks_of(job)) {
    const json &res = t.value("resources", json::object());
    r.cpu_mhz += res.value("cpu", 0);
    r.memory_mb += res.value("memory", 0);
    r.disk_mb += res.value("disk", 0);
  }
  return r;
}

// ---- placement rules and reschedule policy (scheduler issue) ---------------

json member(const json &o, const char *key, json def) {
  if (!o.is_object()) return def;
  auto it = o.find(key);
  return it == o.end() ? def : *it;
}

// Static host ports and device counts one allocation of the job takes.
json job_ports(const json &job) {
  json ports = json::array();
  for (const auto &t : tasks_of(job))
    for (const auto &p : member(member(t, "resources", json::object()), "ports", json::array()))
      // A named mapping counts its host port.
      ports.push_back(p.is_object() ? member(p, "host", json(0)) : p);
  return ports;
}
json job_devices(const json &job) {
  json devices = json::object();
  for (const auto &t : tasks_of(job)) {
    json d = member(member(t, "resources", json::object()), "devices", json::object());
    for (auto it = d.begin(); it != d.end(); ++it)
      devices[it.key()] = devices.value(it.key(), 0) + it.value().get<int64_t>();
  }
  return devices;
}

// The job's placement rules as scheduler/1 takes them (docs/abi-json.md).
json placement_rules(const json &job) {
  json rules = {{"datacenters", member(job, "datacenters", json::array())},
                {"constraints", member(job, "constraint", json::array())},
                {"affinities", member(job, "affinity", json::array())},
                {"spreads", json::array()},
                {"distinct_hosts", job.value("distinct_hosts", false)},
                {"ports", job_ports(job)},
                {"devices", job_devices(job)},
                {"total", job.value("count", 1)}};
  const std::string pool = job.value("node_pool", "all");
  if (pool != "all") rules["pool"] = pool;
  for (const auto &sp : member(job, "spread", json::array())) {
    json s = {{"attribute", sp.value("attribute", "")}, {"weight", sp.value("weight", 50)},
              {"targets", member(sp, "target", json::array())}};
    rules["spreads"].push_back(std::move(s));
  }
  return rules;
}

// A node's attributes with its datacenter and pool filled in.
json node_attributes(const json &rec) {
  json attrs = member(rec, "attributes", json::object());
  if (!attrs.contains("datacenter")) attrs["datacenter"] = rec.value("datacenter", "dc1");
  if (!attrs.contains("pool") && rec.contains("pool")) attrs["pool"] = rec["pool"];
  return attrs;
}

bool node_drained(const json &rec) { return rec.value("drain", false); }

// "2026-11-25T14:38:54.123Z" -> ms since the epoch; -1 when unreadable.
int64_t parse_rfc3339_ms(const std::string &t) {
  struct tm tm{};
  int ms = 0;
  if (t.size() < 20 || sscanf(t.c_str(), "%d-%d-%dT%d:%d:%d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                              &tm.tm_hour, &tm.tm_min, &tm.tm_sec) != 6)
    return -1;
  if (t[19] == '.') ms = std::atoi(t.substr(20, 3).c_str());
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  return static_cast<int64_t>(timegm(&tm)) * 1000 + ms;
}

int64_t wall_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The job's [reschedule] policy, with the defaults of docs/jobspec.md for
// specs stored before it existed.
struct ReschedulePolicy {
  int64_t attempts, interval_ms, delay_ms, max_delay_ms;
  bool exponential, unlimited;
};
ReschedulePolicy reschedule_policy(const json &job) {
  const bool batch = job.value("type", "service") == "batch";
  json r = member(job, "reschedule", json::object());
  return {r.value("attempts", batch ? 1 : 0),
          r.value("interval_ms", batch ? int64_t{24} * 3600 * 1000 : int64_t{3600} * 1000),
          r.value("delay_ms", batch ? int64_t{5000} : int64_t{30000}),
          r.value("max_delay_ms", int64_t{3600} * 1000),
          r.value("delay_function", batch ? "constant" : "exponential") == "exponential",
          r.value("unlimited", !batch)};
}

// [update] of a service job: replace at most max_parallel old-version
// allocations at a time, each step once the new ones have run for
// min_healthy_time; a new one that fails or is not healthy by
// healthy_deadline stops the update, or with auto_revert writes the
// previous version's spec back as a new version. Returns how many old
// allocations may be replaced now, -1 for all.
int64_t rolling_update(const std::string &name, const json &job, const std::vector<json> &list,
                       const json &statuses, int64_t now_ms, Evaluator::Plan &out) {
  if (job.value("type", "service") != "service" || !job.contains("update")) return -1;
  const json update = member(job, "update", json::object());
  const int64_t max_parallel = update.value("max_parallel", 1);
  if (max_parallel <= 0) return -1;
  const int64_t min_healthy = update.value("min_healthy_time_ms", 10000);
  const int64_t deadline = update.value("healthy_deadline_ms", 300000);
  const int64_t version = job.value("version", 1);
  int64_t in_flight = 0;
  bool has_old = false;
  json old_spec;
  std::string unhealthy;
  for (const auto &a : list) {
    if (a.value("desired_status", "") != "run") continue;
    if (a.value("job_version", 0) < version) {
      has_old = true;
      if (a.contains("spec")) old_spec = a["spec"];
      continue;
    }
    const std::string id = a.value("id", "");
    json st = member(statuses, id.c_str(), json::object());
    const std::string status = st.value("status", "pending");
    if (status == "failed") {
      unhealthy = id + " failed";
      continue;
    }
    int64_t started = -1;
    if (status == "running")
      for (const auto &t : member(st, "tasks", json::object()))
        started = std::max(started, parse_rfc3339_ms(t.value("started_at", "")));
    if (started >= 0 && now_ms - started >= min_healthy) continue;  // healthy
    int64_t created = parse_rfc3339_ms(a.value("created_at", ""));
    if (created >= 0 && now_ms >= created + deadline) {
      unhealthy = id + " was not healthy within " + std::to_string(deadline / 1000) + "s";
      continue;
    }
    ++in_flight;
    int64_t due = created >= 0 ? created + deadline : now_ms + deadline;
    if (started >= 0) due = std::min(due, started + min_healthy);
    if (out.next_evaluation_ms == 0 || due < out.next_evaluation_ms) out.next_evaluation_ms = due;
  }
  if (!has_old) return -1;
  if (unhealthy.empty()) return std::max<int64_t>(0, max_parallel - in_flight);
  if (update.value("auto_revert", false) && old_spec.is_object() && !job.contains("reverted_from")) {
    json back = old_spec;
    back.erase("mod_revision");
    back["version"] = version + 1;
    back["reverted_from"] = version;
    out.job_updates.push_back(std::move(back));
    out.failures[name] = {{"message", "update to version " + std::to_string(version) +
                                          " reverted: allocation " + unhealthy},
                          {"unplaced", 0}};
  } else {
    out.failures[name] = {{"message", "update to version " + std::to_string(version) +
                                          " stopped: allocation " + unhealthy},
                          {"unplaced", 0}};
  }
  return 0;
}

// etcd's limits on one transaction (--max-txn-ops, --max-request-bytes),
// with room for the compares and the epoch put every chunk adds.
constexpr size_t kMaxTxnOps = 128;
constexpr size_t kMaxTxnBytes = 1024 * 1024;

struct TxnChunk {
  std::vector<StoreOp> ops;
  std::vector<StoreCompare> job_compares;
};
struct ChunkedWrite {
  StoreCompare fence;
  std::string node;
  std::vector<TxnChunk> chunks;
  // Chunks [0, placements) hold the stops and spec updates, which must land
  // before the placements that take their place; the rest the placements.
  size_t placements = 0;
};

// How an evaluation's changes are written, within etcd's limits, at most
// kChunksInFlight transactions at once:
//
// Chunk 0 claims the epoch: it requires the epoch's mod_revision as the
// evaluation read it and puts a fresh token there (unique: the node, the
// fence, a random number for this write). Every other chunk requires that
// token and puts it back: siblings, whose order does not matter, sent
// together (store-etcd sends them all at once, each answer final). Putting
// the token back moves the epoch's mod_revision with every write, so
// another evaluation that read before one of them landed cannot claim
// after it (its claim requires the mod_revision it read): no double
// booking. The stops and spec updates go first, in the claim and the
// siblings after it; the placements only once all of those were applied.
//
// A refused chunk (a job changed, the epoch or the leadership moved) ends
// the write: nothing more is sent, what was written stays, and the next
// evaluation, reading the epoch afresh, does what is missing. Every chunk
// also requires the fence (the leader key's create_revision) and its jobs
// unchanged, so a stale leader's chunks, siblings included, write
// nothing. done(result, all compares held, highest revision) after the
// last answer, with the first failure if any.
constexpr size_t kChunksInFlight = 64;

struct ChunkWriter {
  StoreClient *store;
  std::shared_ptr<const ChunkedWrite> w;
  StoreCompare epoch;
  std::string token;  // the epoch's value from the claim on
  size_t next = 0, answered = 0;
  StoreResult result;
  bool ok = true;
  int64_t revision = 0;
  std::function<void(StoreResult, bool, int64_t)> done;
};

// The compares and ops of chunk i, as described above.
std::pair<std::vector<StoreCompare>, std::vector<StoreOp>> chunk_txn(const ChunkWriter &s,
                                                                     size_t i) {
  const TxnChunk &c = s.w->chunks[i];
  std::vector<StoreCompare> cmp{s.w->fence};
  if (i == 0)
    cmp.push_back(s.epoch);
  else
    cmp.push_back({kPlacementEpoch, FLOTILLA_CMP_VALUE, FLOTILLA_CMP_EQUAL, 0, s.token});
  cmp.insert(cmp.end(), c.job_compares.begin(), c.job_compares.end());
  std::vector<StoreOp> ops = c.ops;
  ops.push_back(StoreOp::put(kPlacementEpoch, s.token));
  return {std::move(cmp), std::move(ops)};
}

// The first chunk of the step chunk i belongs to: the claim, the siblings
// with the stops and updates, the placements.
size_t step_start(const ChunkedWrite &w, size_t i) {
  if (i == 0) return 0;
  return i < w.placements ? 1 : std::max<size_t>(1, w.placements);
}

void send_chunks(const std::shared_ptr<ChunkWriter> &s) {
  while (s->ok && s->result.ok() && s->next < s->w->chunks.size() &&
         s->next - s->answered < kChunksInFlight) {
    // Not before every chunk of the steps before it was applied (answers
    // come in call order).
    if (s->answered < step_start(*s->w, s->next)) return;
    const size_t i = s->next++;
    auto [cmp, ops] = chunk_txn(*s, i);
    s->store->txn(cmp, ops, {}, [s](StoreResult r, bool ok, int64_t rev) {
      ++s->answered;
      if (s->result.ok() && s->ok && (!r.ok() || !ok)) {
        s->result = std::move(r);
        s->ok = ok;
      }
      s->revision = std::max(s->revision, rev);
      const bool stop = !s->ok || !s->result.ok() || s->next == s->w->chunks.size();
      if (!stop) return send_chunks(s);
      if (s->answered == s->next && s->done) {
        auto done = std::move(s->done);
        s->done = nullptr;
        done(std::move(s->result), s->ok, s->revision);
      }
    });
  }
}

void write_chunks(StoreClient *store, std::shared_ptr<const ChunkedWrite> w, StoreCompare epoch,
                  std::function<void(StoreResult, bool, int64_t)> done) {
  auto s = std::make_shared<ChunkWriter>();
  s->store = store;
  s->w = std::move(w);
  s->epoch = std::move(epoch);
  s->done = std::move(done);
  static std::mt19937_64 rng{std::random_device{}()};
  char run[24];
  snprintf(run, sizeof run, "%016llx", static_cast<unsigned long long>(rng()));
  s->token = s->w->node + "/" + std::to_string(s->w->fence.number) + "/" + run;
  send_chunks(s);
}

}  // namespace

Evaluator::Plan Evaluator::plan(const json &jobs, const json &nodes, const json &allocs,
                                const json &statuses, const flotilla_scheduler_v1 *scheduler,
                                void *scheduler_self,
                                const std::function<std::string(const std::string &, int)> &new_id,
                                int64_t now_ms, bool judge_lost_nodes) {
  Plan out;
  if (now_ms < 0) now_ms = wall_ms();

  // Nodes in name order, with what live allocations already use.
  std::vector<std::string> node_names;
  for (auto it = nodes.begin(); it != nodes.end(); ++it) node_names.push_back(it.key());
  std::map<std::string, flotilla_resources> used;
  for (const auto &n : node_names) used[n] = {sizeof(flotilla_resources), 0, 0, 0};

  auto client_status = [&](const std::string &id) -> std::string {
    if (!statuses.contains(id)) return "pending";
    return statuses[id].value("status", "pending");
  };

  // Beyond CPU, memory and disk: ports, devices and each job's allocations
  // per node, as usage_json (docs/abi-json.md).
  std::map<std::string, json> usage;
  for (const auto &n : node_names)
    usage[n] = {{"ports_used", json::array()},
                {"devices", member(nodes[n], "devices", json::object())},
                {"devices_used", json::object()},
                {"job_allocs", json::object()}};

  std::map<std::string, std::vector<json>> by_job;
  for (auto it = allocs.begin(); it != allocs.end(); ++it) {
    const json &a = it.value();
    by_job[a.value("job", "")].push_back(a);
    if (a.value("desired_status", "") == "run" && !terminal(client_status(a.value("id", "")))) {
      auto u = used.find(a.value("node", ""));
      if (u != used.end()) {
        json r = member(a, "resources", json::object());
        u->second.cpu_mhz += r.value("cpu_mhz", 0);
        u->second.memory_mb += r.value("memory_mb", 0);
        u->second.disk_mb += r.value("disk_mb", 0);
        json &use = usage[u->first];
        for (const auto &p : member(a, "ports", json::array())) use["ports_used"].push_back(p);
        json d = member(a, "devices", json::object());
        for (auto di = d.begin(); di != d.end(); ++di)
          use["devices_used"][di.key()] =
              use["devices_used"].value(di.key(), 0) + di.value().get<int64_t>();
        const std::string job = a.value("job", "");
        use["job_allocs"][job] = use["job_allocs"].value(job, 0) + 1;
      }
    }
  }

  // Jobs by priority (high first), then name: deterministic.
  std::vector<std::string> job_names;
  for (auto it = jobs.begin(); it != jobs.end(); ++it) job_names.push_back(it.key());
  std::stable_sort(job_names.begin(), job_names.end(), [&](const auto &a, const auto &b) {
    return jobs[a].value("priority", 50) > jobs[b].value("priority", 50);
  });

  auto stop_alloc = [&](json a, const std::string &why) {
    a["desired_status"] = "stop";
    a["desired_description"] = why;
    out.updated_allocs.push_back(std::move(a));
  };

  // Allocations whose job is gone (purged) are stopped.
  for (auto &[job, list] : by_job)
    if (!jobs.contains(job))
      for (const auto &a : list)
        if (a.value("desired_status", "") == "run") stop_alloc(a, "job purged");

  for (const auto &name : job_names) {
    const json &job = jobs[name];
    const auto &list = by_job[name];
    if (job.value("stop", false)) {
      for (const auto &a : list)
        if (a.value("desired_status", "") == "run") stop_alloc(a, "job stopped");
      continue;
    }
    const int64_t version = job.value("version", 1);
    const std::string type = job.value("type", "service");
    std::set<int> live;                      // indices already covered
    std::set<std::string> nodes_with_alloc;  // for system jobs
    std::map<int, json> replaces;            // index -> failed allocation it replaces
    const ReschedulePolicy policy = reschedule_policy(job);
    // Rolling update: how many old-version allocations may be replaced now
    // (-1: all of them, no [update] policy).
    int64_t rolling_budget = rolling_update(name, job, list, statuses, now_ms, out);
    for (const auto &a : list) {
      if (a.value("desired_status", "") != "run") continue;
      const std::string node = a.value("node", "");
      const std::string st = client_status(a.value("id", ""));
      if (!nodes.contains(node)) {
        if (!judge_lost_nodes) {
          out.lost_nodes_unjudged = true;
          live.insert(a.value("index", 0));
          continue;
        }
        stop_alloc(a, "node " + node + " lost");
        continue;
      }
      if (node_drained(nodes[node]) && !terminal(st)) {
        stop_alloc(a, "node " + node + " drained");
        continue;
      }
      if (a.value("job_version", 0) < version) {
        if (rolling_budget != 0) {
          if (rolling_budget > 0) --rolling_budget;
          stop_alloc(a, "job updated to version " + std::to_string(version));
          continue;
        }
        live.insert(a.value("index", 0));  // replaced in a later step of the update
        nodes_with_alloc.insert(node);
        continue;
      }
      const int index = a.value("index", 0);
      if (st == "failed" && type != "system") {
        // The reschedule policy: how many times within interval, after
        // which delay (doubling each time when exponential).
        json r = member(a, "reschedule", json::object());
        int64_t attempts = r.value("attempts", 0);
        int64_t recent = 0;
        for (const auto &t : member(r, "times_ms", json::array()))
          if (now_ms - t.get<int64_t>() < policy.interval_ms) ++recent;
        if (!policy.unlimited && recent >= policy.attempts) {
          live.insert(index);
          out.failures[name] = {
              {"message", "allocation " + a.value("id", "") + " failed and has used its " +
                              std::to_string(policy.attempts) + " reschedule attempts"},
              {"unplaced", 0}};
          continue;
        }
        int64_t delay = policy.delay_ms;
        for (int64_t k = 0; policy.exponential && k < attempts && delay < policy.max_delay_ms; ++k)
          delay *= 2;
        delay = std::min(delay, std::max(policy.max_delay_ms, policy.delay_ms));
        json status = member(statuses, a.value("id", "").c_str(), json::object());
        int64_t failed_at = parse_rfc3339_ms(status.value("updated_at", ""));
        if (failed_at < 0) failed_at = now_ms;
        if (now_ms < failed_at + delay) {
          live.insert(index);
          int64_t due = failed_at + delay;
          if (out.next_evaluation_ms == 0 || due < out.next_evaluation_ms)
            out.next_evaluation_ms = due;
          continue;
        }
        stop_alloc(a, "failed; rescheduled");
        replaces[index] = a;
        continue;
      }
      live.insert(index);
      nodes_with_alloc.insert(node);
    }

    flotilla_resources ask = job_ask(job);
    std::vector<int> missing;
    std::vector<std::string> candidates = node_names;
    if (type == "system") {
      // One per eligible node: each missing one is pinned to its node.
      candidates.clear();
      for (const auto &n : node_names)
        if (nodes[n].value("eligible", true) && !node_drained(nodes[n]) &&
            !nodes_with_alloc.count(n))
          candidates.push_back(n);
      int next = 0;
      for (size_t i = 0; i < candidates.size(); ++i) {
        while (live.count(next)) ++next;
        missing.push_back(next++);
      }
    } else {
      int count = job.value("count", 1);
      for (int i = 0; i < count; ++i)
        if (!live.count(i)) missing.push_back(i);
    }
    if (missing.empty()) continue;

    if (!scheduler) {
      out.failures[name] = {{"message", "no plugin provides flotilla.scheduler/1; add "
                                        "[plugin.scheduler-binpack] to the config"},
                            {"unplaced", missing.size()}};
      continue;
    }

    std::vector<flotilla_sched_node> sn;
    std::vector<std::string> attrs, usages;
    attrs.reserve(candidates.size());
    usages.reserve(candidates.size());
    const std::string rules = placement_rules(job).dump();
    for (const auto &n : candidates) {
      const json &rec = nodes[n];
      const json &res = rec.value("resources", json::object());
      flotilla_sched_node s{};
      s.struct_size = sizeof s;
      s.name = n.c_str();
      s.capacity = {sizeof(flotilla_resources), res.value("cpu_mhz", 0), res.value("memory_mb", 0),
                    res.value("disk_mb", 0)};
      s.used = used[n];
      s.eligible = rec.value("eligible", true) && !node_drained(rec) &&
                   rec.value("status", "ready") == "ready";
      attrs.push_back(node_attributes(rec).dump());
      s.attributes_json = attrs.back().c_str();
      usages.push_back(usage[n].dump());
      s.usage_json = usages.back().c_str();
      sn.push_back(s);
    }
    std::vector<flotilla_sched_ask> asks;
    std::vector<flotilla_sched_placement> placements(missing.size());
    for (int idx : missing) {
      flotilla_sched_ask a{};
      a.struct_size = sizeof a;
      a.job = name.c_str();
      a.group = name.c_str();
      a.index = static_cast<uint32_t>(idx);
      a.resources = ask;
      a.constraints_json = rules.c_str();
      asks.push_back(a);
    }
    if (type == "system") {
      // Each ask may only go to its own node: place them one by one.
      for (size_t i = 0; i < asks.size(); ++i) {
        flotilla_buf ex{};
        scheduler->place(scheduler_self, &sn[i], 1, &asks[i], 1, &placements[i], &ex);
        if (placements[i].node_index == 0) placements[i].node_index = static_cast<int64_t>(i);
        if (ex.release) ex.release(&ex);
      }
    } else {
      flotilla_buf ex{};
      PluginHost::clear_last_error();
      flotilla_status st = scheduler->place(scheduler_self, sn.data(), sn.size(), asks.data(),
                                            asks.size(), placements.data(), &ex);
      if (st != FLOTILLA_OK) {
        out.failures[name] = {{"message", "scheduler failed: " + PluginHost::last_error()},
                              {"unplaced", missing.size()}};
        continue;
      }
      if (ex.data) {
        json why = json::parse(std::string(ex.data, ex.len), nullptr, false);
        size_t unplaced = std::count_if(placements.begin(), placements.end(),
                                        [](const auto &p) { return p.node_index < 0; });
        out.failures[name] = {{"message", why.is_object() ? why.value("message", "did not fit")
                                                          : std::string("did not fit")},
                              {"explanation", why},
                              {"unplaced", unplaced}};
      }
      if (ex.release) ex.release(&ex);
    }

    // What every new allocation of this job shares, built once (a job of
    // 100,000 allocations spends most of its planning copying JSON).
    json tmpl = {{"job", name},
                 {"job_version", version},
                 {"desired_status", "run"},
                 {"resources",
                  {{"cpu_mhz", ask.cpu_mhz}, {"memory_mb", ask.memory_mb}, {"disk_mb", ask.disk_mb}}},
                 {"ports", job_ports(job)},
                 {"devices", job_devices(job)},
                 {"created_at", rfc3339_now()}};
    out.specs[name] = job;
    out.specs[name].erase("mod_revision");
    out.new_allocs.reserve(out.new_allocs.size() + missing.size());
    for (size_t i = 0; i < missing.size(); ++i) {
      int64_t ni = placements[i].node_index;
      if (ni < 0 || static_cast<size_t>(ni) >= candidates.size()) continue;
      const std::string &node = candidates[ni];
      json a = tmpl;
      a["id"] = new_id(name, missing[i]);
      a["index"] = missing[i];
      a["node"] = node;
      if (auto prev = replaces.find(missing[i]); prev != replaces.end()) {
        json r = member(prev->second, "reschedule", json::object());
        json times = json::array();
        for (const auto &t : member(r, "times_ms", json::array()))
          if (now_ms - t.get<int64_t>() < policy.interval_ms) times.push_back(t);
        times.push_back(now_ms);
        a["reschedule"] = {{"attempts", r.value("attempts", 0) + 1}, {"times_ms", times}};
        a["previous_alloc"] = prev->second.value("id", "");
      }
      // Later jobs in this evaluation see this one's ports, devices and count.
      json &use = usage[node];
      for (const auto &p : a["ports"]) use["ports_used"].push_back(p);
      for (auto di = a["devices"].begin(); di != a["devices"].end(); ++di)
        use["devices_used"][di.key()] =
            use["devices_used"].value(di.key(), 0) + di.value().get<int64_t>();
      use["job_allocs"][name] = use["job_allocs"].value(name, 0) + 1;
      used[node].cpu_mhz += ask.cpu_mhz;
      used[node].memory_mb += ask.memory_mb;
      used[node].disk_mb += ask.disk_mb;
      out.new_allocs.push_back(std::move(a));
    }
  }
  return out;
}

Evaluator::Evaluator(uv_loop_t *loop, StoreClient *store, PluginHost *plugins, std::string node,
                     int64_t node_lease_ttl_ms, int64_t leader_lease_ttl_ms)
    : loop_(loop),
      store_(store),
      plugins_(plugins),
      node_(std::move(node)),
      node_ttl_ms_(std::max<int64_t>(1000, node_lease_ttl_ms)),
      leader_ttl_ms_(std::max<int64_t>(1000, leader_lease_ttl_ms)) {
  keepalive_timer_ = new uv_timer_t;
  uv_timer_init(loop_, keepalive_timer_);
  keepalive_timer_->data = this;
  eval_timer_ = new uv_timer_t;
  uv_timer_init(loop_, eval_timer_);
  eval_timer_->data = this;
  retry_timer_ = new uv_timer_t;
  uv_timer_init(loop_, retry_timer_);
  retry_timer_->data = this;
}

Evaluator::~Evaluator() {
  leader_watch_.reset();
  cluster_watch_.reset();
  for (uv_timer_t *t : {keepalive_timer_, eval_timer_, retry_timer_}) {
    uv_timer_stop(t);
    uv_close(reinterpret_cast<uv_handle_t *>(t),
             [](uv_handle_t *h) { delete reinterpret_cast<uv_timer_t *>(h); });
  }
}

// A status report that says "pending" changes no plan: an allocation
// without a status counts as pending already, and one that goes back to
// pending (a task restarting) can only lower what a rolling update may
// replace now, which the next evaluation sees. Two or three of them come
// with every container start, while the OCI runtime runs; they wake no
// evaluation.
bool Evaluator::status_wakes_evaluation(const StoreEvent &e) {
  if (e.type == StoreEvent::Type::remove) return true;
  json v = json::parse(e.kv.value, nullptr, false);
  return !v.is_object() || v.value("status", "") != "pending";
}

void Evaluator::start() {
  uv_timer_start(
      keepalive_timer_, [](uv_timer_t *t) { static_cast<Evaluator *>(t->data)->keepalive(); },
      leader_ttl_ms_ / 3, leader_ttl_ms_ / 3);
  campaign();
}

void Evaluator::stop(std::function<void()> done) {
  stopping_ = true;
  uv_timer_stop(keepalive_timer_);
  uv_timer_stop(eval_timer_);
  uv_timer_stop(retry_timer_);
  leader_watch_.reset();
  cluster_watch_.reset();
  leader_ = false;
  if (lease_ == 0) return done();
  // Revoking the lease deletes the leader key: another node takes over now.
  store_->lease_revoke(lease_, [done](StoreResult) { done(); });
  lease_ = 0;
}

void Evaluator::campaign() {
  if (stopping_ || leader_) return;
  if (lease_ == 0) {
    store_->lease_grant(leader_ttl_ms_ / 1000, [this](StoreResult r, int64_t lease, int64_t ttl) {
      if (stopping_) return;
      if (!r.ok()) {
        store_trouble();
        log::warn("scheduler", "cannot get a leader lease: " + r.message + "; will retry");
        return;  // keepalive() retries
      }
      // etcd raises a TTL below its minimum (1.5 election timeouts, rounded
      // up to whole seconds: 2 s with its defaults) to that minimum; a leader
      // that stops is then replaced that much later than configured.
      if (ttl * 1000 > leader_ttl_ms_ && !warned_lease_raised_) {
        warned_lease_raised_ = true;
        log::warn("scheduler", "the store granted the leader lease a TTL of " + std::to_string(ttl) +
                                   " s, longer than [cluster] leader_lease_ttl (" +
                                   std::to_string(leader_ttl_ms_ / 1000) +
                                   " s): its minimum; failover takes that long");
      }
      lease_ = lease;
      campaign();
    });
    return;
  }
  // Take the key if nobody holds it, or if this node held it before a
  // restart (the old lease has not expired yet).
  store_->txn({StoreCompare::absent(kLeader)}, {StoreOp::put(kLeader, node_, lease_)}, {},
              [this](StoreResult r, bool won, int64_t rev) {
                if (stopping_) return;
                if (!r.ok()) {
                  log::warn("scheduler", "leader election failed: " + r.message);
                  store_trouble();
                  return;  // keepalive() campaigns again
                }
                if (won) return confirm_leadership();
                StoreCompare mine{kLeader, FLOTILLA_CMP_VALUE, FLOTILLA_CMP_EQUAL, 0, node_};
                store_->txn({mine}, {StoreOp::put(kLeader, node_, lease_)}, {},
                            [this, rev](StoreResult r2, bool won2, int64_t) {
                              if (stopping_ || !r2.ok()) return;
                              if (won2) return confirm_leadership();
                              // Someone else leads: wait for the key to go.
                              leader_watch_ = store_->watch(
                                  kLeader, false, rev + 1,
                                  [this](StoreResult w, const std::vector<StoreEvent> &evs, int64_t) {
                                    if (!w.ok()) {
                                      leader_watch_.reset();  // keepalive() campaigns again
                                      return;
                                    }
                                    for (const auto &e : evs)
                                      if (e.type == StoreEvent::Type::remove) {
                                        leader_watch_.reset();
                                        return campaign();
                                      }
                                  });
                            });
              });
}

void Evaluator::keepalive() {
  if (stopping_) return;
  if (lease_ == 0) return campaign();
  store_->lease_keepalive(lease_, [this](StoreResult r, int64_t, int64_t) {
    if (stopping_) return;
    if (r.ok()) {
      // Not leading and not waiting for the leader key to go (a campaign
      // or a watch failed): campaign again.
      if (!leader_ && !leader_watch_) campaign();
      // An evaluation the store refused: again, now that it answers.
      if (leader_ && evaluate_when_store_answers_) {
        evaluate_when_store_answers_ = false;
        request_evaluation();
      }
      return;
    }
    store_trouble();
    if (r.status != FLOTILLA_E_NOT_FOUND) return;  // the store is away: keep the lease
    lease_ = 0;
    leader_watch_.reset();
    lose_leadership("leader lease expired: " + r.message);
    campaign();
  });
}

void Evaluator::store_trouble() {
  judge_after_ = uv_now(loop_) + static_cast<uint64_t>(node_ttl_ms_);
  evaluate_when_store_answers_ = true;
}

void Evaluator::confirm_leadership() {
  store_->get(kLeader, [this](StoreResult r, std::optional<KeyValue> kv, int64_t) {
    if (stopping_ || leader_) return;
    if (!r.ok()) {
      store_trouble();
      return;  // keepalive() campaigns again
    }
    // A daemon restarted under the same name may hold it under a newer
    // lease: the same key, the same fence; the epoch keeps the two apart.
    if (!kv || kv->value != node_) return;  // lost it meanwhile
    leader_create_rev_ = kv->create_revision;
    become_leader();
  });
}

void Evaluator::check_leadership() {
  store_->get(kLeader, [this](StoreResult r, std::optional<KeyValue> kv, int64_t) {
    if (stopping_ || !leader_ || !r.ok()) return;
    if (kv && kv->create_revision == leader_create_rev_) return;
    lose_leadership(kv ? "another node (" + kv->value + ") leads now" : "the leader key is gone");
  });
}

void Evaluator::become_leader() {
  leader_ = true;
  // Every node gets one TTL to renew its lease under this leader before a
  // missing record counts as a lost node.
  judge_after_ = std::max(judge_after_, uv_now(loop_) + static_cast<uint64_t>(node_ttl_ms_));
  log::info("scheduler", "this node leads scheduling",
            {{"node", node_}, {"fence", std::to_string(leader_create_rev_)}});
  store_->list("/flotilla/", [this](StoreResult r, std::vector<KeyValue>, int64_t rev) {
    if (!leader_ || stopping_) return;
    if (!r.ok()) {
      store_trouble();
      return lose_leadership("cannot read the cluster: " + r.message);
    }
    cluster_watch_ = store_->watch(
        "/flotilla/", true, rev + 1,
        [this](StoreResult w, const std::vector<StoreEvent> &evs, int64_t) {
          if (!w.ok()) {
            // keepalive() campaigns again, and the new term reads afresh.
            return lose_leadership("cluster watch ended: " + w.message);
          }
          bool changed = false, status_only = false;
          for (const auto &e : evs) {
            if (e.kv.key == kLeader &&
                (e.type == StoreEvent::Type::remove || e.kv.create_revision != leader_create_rev_))
              return lose_leadership("leader key changed");
            if (starts_with(e.kv.key, kJobs) || starts_with(e.kv.key, kNodes) ||
                starts_with(e.kv.key, kAllocs) || starts_with(e.kv.key, kNodeControl))
              changed = true;
            else if (starts_with(e.kv.key, kAllocStatus) && status_wakes_evaluation(e))
              status_only = true;
          }
          if (changed)
            request_evaluation();
          else if (status_only)
            request_evaluation(kStatusEvalDelayMs);
        });
    request_evaluation();
  });
}

void Evaluator::lose_leadership(const std::string &why) {
  if (!leader_) return;
  leader_ = false;
  leader_create_rev_ = 0;
  log::warn("scheduler", "no longer leading scheduling: " + why);
  cluster_watch_.reset();
  uv_timer_stop(eval_timer_);
}

// A failed allocation waits out its reschedule delay: evaluate again then.
void Evaluator::schedule_retry(int64_t at_ms) {
  if (at_ms <= 0 || stopping_) return;
  uint64_t wait = static_cast<uint64_t>(std::max<int64_t>(0, at_ms - wall_ms()));
  uint64_t due = uv_now(loop_) + wait;
  if (uv_is_active(reinterpret_cast<uv_handle_t *>(retry_timer_)) && retry_due_ <= due) return;
  retry_due_ = due;
  uv_timer_start(
      retry_timer_, [](uv_timer_t *t) { static_cast<Evaluator *>(t->data)->request_evaluation(); },
      wait, 0);
}

void Evaluator::request_evaluation(uint64_t delay_ms) {
  if (!leader_ || stopping_) return;
  if (eval_running_) {
    eval_again_ = true;
    return;
  }
  // A pending evaluation that is due sooner covers this request too.
  const uint64_t due = uv_now(loop_) + delay_ms;
  if (uv_is_active(reinterpret_cast<uv_handle_t *>(eval_timer_)) && eval_due_ <= due) return;
  eval_due_ = due;
  uv_timer_start(
      eval_timer_, [](uv_timer_t *t) { static_cast<Evaluator *>(t->data)->evaluate(); },
      delay_ms, 0);
}

void Evaluator::evaluate() {
  if (!leader_ || stopping_) return;
  eval_running_ = true;
  eval_again_ = false;
  const uint64_t t_read = uv_hrtime();
  store_->list("/flotilla/", [this, t_read](StoreResult r, std::vector<KeyValue> kvs, int64_t) {
    const uint64_t t_plan = uv_hrtime();
    auto finish = [this] {
      eval_running_ = false;
      if (eval_again_) request_evaluation();
    };
    if (!leader_ || stopping_) return finish();
    if (!r.ok()) {
      log::error("scheduler", "cannot read the cluster: " + r.message);
      store_trouble();
      // Not at once: keepalive() evaluates again once the store answers.
      eval_running_ = false;
      return;
    }
    json jobs = json::object(), nodes = json::object(), allocs = json::object(),
         statuses = json::object(), job_status = json::object(), control = json::object();
    std::map<std::string, int64_t> job_revs;
    int64_t epoch_rev = 0;  // 0: the placement epoch key does not exist yet
    for (const auto &kv : kvs) {
      if (kv.key == kPlacementEpoch) epoch_rev = kv.mod_revision;
      auto parse = [&](const std::string &prefix, json &into) {
        if (!starts_with(kv.key, prefix)) return false;
        json v = json::parse(kv.value, nullptr, false);
        if (v.is_object()) into[kv.key.substr(prefix.size())] = std::move(v);
        return true;
      };
      if (parse(kJobs, jobs)) {
        job_revs[kv.key.substr(kJobs.size())] = kv.mod_revision;
        continue;
      }
      if (parse(kNodes, nodes) || parse(kAllocs, allocs) || parse(kAllocStatus, statuses) ||
          parse(kJobStatus, job_status) || parse(kNodeControl, control))
        continue;
    }
    // Drain and eligibility set through the API outlive the node's own record.
    for (auto it = control.begin(); it != control.end(); ++it)
      if (nodes.contains(it.key())) {
        if (it.value().contains("drain")) nodes[it.key()]["drain"] = it.value()["drain"];
        if (it.value().contains("eligible") && !it.value().value("eligible", true))
          nodes[it.key()]["eligible"] = false;
      }
    void *sched_self = nullptr;
    auto *sched =
        plugins_->find<flotilla_scheduler_v1>(FLOTILLA_SCHEDULER_INTERFACE_ID, &sched_self);
    static std::mt19937_64 rng{std::random_device{}()};
    const uint64_t now = uv_now(loop_);
    Plan p = plan(jobs, nodes, allocs, statuses, sched, sched_self,
                  [](const std::string &job, int index) {
                    char suffix[8];
                    snprintf(suffix, sizeof suffix, "%06x", static_cast<unsigned>(rng() & 0xffffff));
                    return job + "-" + std::to_string(index) + "-" + suffix;
                  },
                  -1, now >= judge_after_);
    schedule_retry(p.next_evaluation_ms);
    if (p.lost_nodes_unjudged) schedule_retry(wall_ms() + static_cast<int64_t>(judge_after_ - now));

    // The evaluation's writes, each with the job whose unchanged record it
    // depends on ("": none): first those that must land in order before the
    // rest (stops, spec updates), then the rest (placements, job status).
    std::vector<std::pair<std::string, StoreOp>> ordered, ops;
    // A new allocation's record is the plan's with its job's spec added
    // ("spec" is written once per job and joined to each record as text).
    std::map<std::string, std::string> spec_text;
    for (auto it = p.specs.begin(); it != p.specs.end(); ++it) spec_text[it.key()] = it.value().dump();
    for (const auto &a : p.new_allocs) {
      const std::string &job = a["job"].get_ref<const std::string &>();
      std::string record = a.dump();
      if (auto sp = spec_text.find(job); sp != spec_text.end() && !a.contains("spec")) {
        record.pop_back();  // the closing brace
        record += ",\"spec\":";
        record += sp->second;
        record += '}';
      }
      ops.emplace_back(job, StoreOp::put(kAllocs + a["id"].get<std::string>(), std::move(record)));
    }
    for (const auto &a : p.updated_allocs)
      ordered.emplace_back(a["job"], StoreOp::put(kAllocs + a["id"].get<std::string>(), a.dump()));
    for (const auto &j : p.job_updates)  // auto_revert
      ordered.emplace_back(j["name"], StoreOp::put(kJobs + j["name"].get<std::string>(), j.dump()));
    // Placement failures are kept next to the job so `job status` can say why.
    for (auto it = jobs.begin(); it != jobs.end(); ++it) {
      const std::string &name = it.key();
      bool failed = p.failures.contains(name);
      bool had = job_status.contains(name) && job_status[name].contains("placement");
      if (failed && (!had || job_status[name]["placement"]["message"] != p.failures[name]["message"] ||
                     job_status[name]["placement"]["unplaced"] != p.failures[name]["unplaced"])) {
        ops.emplace_back(name, StoreOp::put(kJobStatus + name,
                                            json{{"placement", p.failures[name]}}.dump()));
      } else if (!failed && had) {
        ops.emplace_back(name, StoreOp::remove(kJobStatus + name));
      }
    }
    for (auto it = job_status.begin(); it != job_status.end(); ++it)
      if (!jobs.contains(it.key())) ops.emplace_back("", StoreOp::remove(kJobStatus + it.key()));
    if (ordered.empty() && ops.empty()) return finish();

    // Transactions within etcd's limits (128 operations, 128 compares, 1.5
    // MiB a request), a job's writes together as far as they fit. Each is
    // valid only while this node leads and no job it writes for changed.
    // The first claims the placement epoch (requires it as this evaluation
    // read it, puts a token of its own); the others require that token and
    // put it back, the placements after the stops (write_chunks): two
    // schedulers that both believe they lead can never both place on what
    // they read as free capacity. The fence is the
    // leader key's create_revision: a leader that was paused or cut off
    // past its lease finds a new key there, even one bearing its name, and
    // writes nothing.
    auto plan_write = std::make_shared<ChunkedWrite>();
    plan_write->fence = {kLeader, FLOTILLA_CMP_CREATE, FLOTILLA_CMP_EQUAL, leader_create_rev_, {}};
    plan_write->node = node_;
    std::set<std::string> in_chunk;
    size_t bytes = 0;
    auto add_chunks = [&](std::vector<std::pair<std::string, StoreOp>> &list) {
      std::stable_sort(list.begin(), list.end(),
                       [](const auto &a, const auto &b) { return a.first < b.first; });
      bool fresh = true;  // a phase starts a chunk of its own
      for (auto &[job, op] : list) {
        const size_t size = op.key.size() + op.value.size();
        const bool new_job = !job.empty() && !in_chunk.count(job);
        if (fresh || plan_write->chunks.back().ops.size() + 1 > kMaxTxnOps - 1 ||
            bytes + size > kMaxTxnBytes || (new_job && in_chunk.size() + 2 >= kMaxTxnOps)) {
          plan_write->chunks.emplace_back();
          in_chunk.clear();
          bytes = 0;
          fresh = false;
        }
        TxnChunk &c = plan_write->chunks.back();
        if (!job.empty() && in_chunk.insert(job).second) {
          auto rev = job_revs.find(job);
          c.job_compares.push_back(rev != job_revs.end()
                                       ? StoreCompare::mod_revision_is(kJobs + job, rev->second)
                                       : StoreCompare::absent(kJobs + job));
        }
        c.ops.push_back(std::move(op));
        bytes += size;
      }
    };
    add_chunks(ordered);
    plan_write->placements = plan_write->chunks.size();
    add_chunks(ops);
    const size_t placed = p.new_allocs.size(), stopped = p.updated_allocs.size(),
                 n_txns = plan_write->chunks.size();
    const uint64_t t_write = uv_hrtime();
    auto ms = [](uint64_t from, uint64_t to) { return std::to_string((to - from) / 1000000); };
    const std::string read_ms = ms(t_read, t_plan), plan_ms = ms(t_plan, t_write);
    write_chunks(
        store_, plan_write,
        epoch_rev ? StoreCompare::mod_revision_is(kPlacementEpoch, epoch_rev)
                  : StoreCompare::absent(kPlacementEpoch),
        [this, finish, placed, stopped, n_txns, read_ms, plan_ms, t_write, ms](StoreResult tr,
                                                                                bool ok,
                                                                                int64_t rev) {
          if (!tr.ok()) {
            log::error("scheduler", "cannot write placements: " + tr.message);
            store_trouble();
            // Not at once: keepalive() evaluates again once the store answers.
            eval_running_ = false;
            return;
          } else if (!ok) {
            log::debug("scheduler", "cluster changed during evaluation; evaluating again");
            eval_again_ = true;
            check_leadership();
          } else if (placed || stopped) {
            log::info("scheduler", "evaluation applied",
                      {{"placed", std::to_string(placed)},
                       {"stopped", std::to_string(stopped)},
                       {"transactions", std::to_string(n_txns)},
                       {"revision", std::to_string(rev)},
                       {"read_ms", read_ms},
                       {"plan_ms", plan_ms},
                       {"write_ms", ms(t_write, uv_hrtime())}});
          }
          finish();
        });
  });
}

}  // namespace flotilla
