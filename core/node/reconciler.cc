#include "node/reconciler.h"

#include <flotilla/discovery.h>
#include <flotilla/network.h>
#include <flotilla/security.h>

#include <algorithm>
#include <random>
#include <set>

#include "jobspec.h"
#include "keyspace.h"
#include "log.h"
#include "rfc3339.h"

namespace flotilla {

using nlohmann::json;

namespace {

using keyspace::kAllocs;
using keyspace::kAllocStatus;
using keyspace::kJobs;
using keyspace::terminal;
// After a failed read or an ended watch: soon, but not in a tight loop
// while the store is away.
constexpr uint64_t kResyncDelayMs = 1000;

}  // namespace

// One task of an allocation: one container at a time.
struct Reconciler::Task {
  std::string name;
  json spec;
  std::string container;
  // pending -> starting -> running -> (restarting -> starting ...) -> dead
  std::string state = "pending";
  bool failed = false;
  int restarts = 0;
  std::vector<uint64_t> failures_ms;  // loop times of failures inside the restart interval
  int64_t exit_code = -1;
  int signal = 0;
  std::string started_at, finished_at, message;
  uint64_t attempt = 0;  // bumped for every start, so stale callbacks are ignored
  uv_timer_t *restart_timer = nullptr;
  json pull;                   // the image pull's progress while it runs, else null
  uint64_t pull_report_ms = 0;  // loop time of the last status write for it
  std::string check_restart;    // why discovery asked for a restart; "" otherwise
  // The names of the services registered with discovery for this task (the
  // deploy monitor waits for their health), or why they could not be:
  // "no discovery on this node" must not read as "not registered yet".
  json services = json::array();
  std::string services_unregistered;
};

struct Reconciler::Alloc {
  std::string id;
  json record;
  int64_t mod_revision = 0;  // of its record in the store
  std::vector<Task> tasks;
  bool stopping = false;
  bool stopped = false;  // its tasks ended (failed, complete or stopped)
  bool removed = false;  // its containers were removed after a stop
  bool collected = false;  // ... by garbage collection, after it ended
  uint64_t ended_ms = 0;   // loop time the node first saw it ended; 0: it has not
  std::string final_status;  // set when the allocation was stopped
  json addresses = json::array();  // the network attachment's, for services
  // The network attachment (flotilla.network/1), made once before its
  // first bridge-mode task is created and shared by all of them.
  bool net_attached = false;
  bool net_attaching = false;
  json net;                           // the attach result
  std::vector<std::string> net_waiting;  // tasks to create once attached
  std::string last_report;               // the last status written, without updated_at
};

namespace {

// Deleting a timer safely: uv_close, free in the close callback.
void close_timer(uv_timer_t *&t) {
  if (!t) return;
  uv_timer_stop(t);
  uv_close(reinterpret_cast<uv_handle_t *>(t),
           [](uv_handle_t *h) { delete reinterpret_cast<uv_timer_t *>(h); });
  t = nullptr;
}

// Restart timers carry what they restart by value: the alloc may be gone.
struct RestartCtx {
  Reconciler *self;
  std::string alloc, task;
  uint64_t attempt;
  std::function<void(RestartCtx *)> fire;
};

}  // namespace

Reconciler::Reconciler(uv_loop_t *loop, StoreClient *store, RuntimeClient *runtime,
                       PluginHost *plugins, std::string node)
    : loop_(loop), store_(store), runtime_(runtime), plugins_(plugins), node_(std::move(node)) {}

Reconciler::~Reconciler() {
  *alive_ = false;
  stop();
}

std::string Reconciler::container_id(const std::string &alloc, const std::string &task) {
  return alloc + "." + task;
}

void Reconciler::set_gc(int64_t after_ms, int64_t max_terminal) {
  gc_after_ms_ = after_ms;
  gc_max_terminal_ = max_terminal;
  if (!stopped_) schedule_gc_sweep(true);  // new limits apply now (no-op before start)
}

void Reconciler::stop() {
  if (stopped_) return;
  stopped_ = true;
  watch_.reset();
  if (gc_timer_) close_timer(gc_timer_);
  if (sync_timer_) close_timer(sync_timer_);
  if (exit_sub_) plugins_->events().unsubscribe(exit_sub_);
  if (check_restart_sub_) plugins_->events().unsubscribe(check_restart_sub_);
  exit_sub_ = check_restart_sub_ = 0;
  for (auto &[id, a] : allocs_)
    for (auto &t : a->tasks) {
      if (t.restart_timer) delete static_cast<RestartCtx *>(t.restart_timer->data);
      close_timer(t.restart_timer);
    }
}

Reconciler::Alloc *Reconciler::find_alloc(const std::string &id) {
  auto it = allocs_.find(id);
  return it == allocs_.end() ? nullptr : it->second.get();
}

void Reconciler::start() {
  // Often enough that a container outlives its time by at most a quarter
  // of it (at most 30 s).
  gc_timer_ = new uv_timer_t;
  uv_timer_init(loop_, gc_timer_);
  gc_timer_->data = this;
  schedule_gc_sweep(false);
  exit_sub_ = plugins_->events().subscribe("runtime.exit", [this](const std::string &,
                                                                   const std::string &payload) {
    json e = json::parse(payload, nullptr, false);
    if (!e.is_object()) return;
    on_task_exit(e.value("id", ""), e.value("exit_code", int64_t{-1}), e.value("signal", 0),
                 e.value("finished_at", rfc3339_now(true)));
  });
  check_restart_sub_ = plugins_->events().subscribe(
      "discovery.check_restart", [this](const std::string &topic, const std::string &payload) {
        json e = json::parse(payload, nullptr, false);
        if (topic != "discovery.check_restart" || !e.is_object()) return;
        on_check_restart(e.value("alloc", ""), e.value("task", ""), e.value("reason", ""));
      });
  // 1. What the runtime still runs (containers outlive the daemon).
  runtime_->list([this](StoreResult r, json list) {
    if (stopped_) return;
    if (!r.ok()) log::error("reconciler", "cannot list containers: " + r.message);
    if (list.is_array())
      for (auto &c : list)
        if (c.is_object() && c.contains("id")) containers_[c["id"].get<std::string>()] = c;
    // 2. What this node reported before (restart counts, terminal states).
    store_->list(kAllocStatus, [this](StoreResult r2, std::vector<KeyValue> kvs, int64_t) {
      if (stopped_) return;
      if (!r2.ok()) log::error("reconciler", "cannot read allocation status: " + r2.message);
      for (const auto &kv : kvs) {
        json s = json::parse(kv.value, nullptr, false);
        if (s.is_object() && s.value("node", "") == node_)
          previous_[kv.key.substr(kAllocStatus.size())] = s;
      }
      // 3. The allocations, then every change after them.
      sync_allocs(true);
    });
  });
}

void Reconciler::sync_allocs_later(bool first) {
  if (stopped_) return;
  sync_first_ = first;
  if (!sync_timer_) {
    sync_timer_ = new uv_timer_t;
    uv_timer_init(loop_, sync_timer_);
    sync_timer_->data = this;
  }
  uv_timer_start(
      sync_timer_,
      [](uv_timer_t *t) {
        auto *self = static_cast<Reconciler *>(t->data);
        self->sync_allocs(self->sync_first_);
      },
      kResyncDelayMs, 0);
}

void Reconciler::sync_allocs(bool first) {
  store_->list(kAllocs, [this, first](StoreResult r3, std::vector<KeyValue> allocs, int64_t rev) {
    if (stopped_) return;
    if (!r3.ok()) {
      log::error("reconciler", "cannot read allocations: " + r3.message + "; trying again");
      return sync_allocs_later(first);
    }
    std::set<std::string> wanted, present;
    for (const auto &kv : allocs) {
      json a = json::parse(kv.value, nullptr, false);
      if (!a.is_object()) continue;
      present.insert(a.value("id", ""));
      if (a.value("node", "") == node_) wanted.insert(a.value("id", ""));
      on_alloc_put(a, kv.mod_revision);
    }
    if (first) {
      // Containers of allocations the store no longer has: leftovers.
      for (auto it = containers_.begin(); it != containers_.end(); ++it) {
        std::string cid = it.key();
        std::string alloc = cid.substr(0, cid.rfind('.'));
        if (wanted.count(alloc)) continue;
        log::info("reconciler", "removing leftover container", {{"container", cid}});
        runtime_->stop(cid, 5000, [this, cid](StoreResult, json) {
          runtime_->remove(cid, [cid](StoreResult rr) {
            if (!rr.ok()) log::warn("reconciler", "cannot remove " + cid + ": " + rr.message);
          });
        });
      }
    } else {
      // Deleted while the watch was down.
      std::vector<std::string> gone;
      for (const auto &[id, a] : allocs_)
        if (!present.count(id)) gone.push_back(id);
      for (const auto &id : gone) on_alloc_deleted(id);
    }
    watch_ = store_->watch(kAllocs, true, rev + 1,
                           [this](StoreResult w, const std::vector<StoreEvent> &evs, int64_t) {
                             if (!w.ok()) {
                               log::warn("reconciler", "allocation watch ended (" + w.message +
                                                           "); reading every allocation again");
                               return sync_allocs_later(false);
                             }
                             for (const auto &e : evs) {
                               std::string id = e.kv.key.substr(kAllocs.size());
                               if (e.type == StoreEvent::Type::remove) {
                                 on_alloc_deleted(id);
                                 continue;
                               }
                               json a = json::parse(e.kv.value, nullptr, false);
                               if (a.is_object()) on_alloc_put(a, e.kv.mod_revision);
                             }
                           });
    log::info("reconciler", first ? "watching allocations" : "watching allocations again",
              {{"node", node_}, {"allocations", std::to_string(allocs_.size())},
               {"containers_found", std::to_string(containers_.size())},
               {"revision", std::to_string(rev)}});
  });
}

void Reconciler::on_alloc_put(const json &record, int64_t mod_revision) {
  const std::string id = record.value("id", "");
  if (id.empty()) return;
  Alloc *a = find_alloc(id);
  if (record.value("node", "") != node_) {
    if (a && !a->stopping) stop_alloc(*a, "moved to another node", false);
    return;
  }
  const bool run = record.value("desired_status", "") == "run";
  if (a) {
    a->record = record;
    a->mod_revision = mod_revision;
    if (!run && !a->stopping && !a->removed)
      stop_alloc(*a, record.value("desired_description", "stop requested"), false);
    else if (!run && a->removed)
      collect_if_job_gone(*a);  // touched by a purge after it had stopped
    return;
  }

  auto owned = std::make_unique<Alloc>();
  a = owned.get();
  a->id = id;
  a->record = record;
  a->mod_revision = mod_revision;
  const json &spec = record.value("spec", json::object());
  const json &prev = previous_.contains(id) ? previous_[id] : json::object();
  for (const auto &ts : spec.value("task", json::array())) {
    Task t;
    t.name = ts.value("name", "");
    t.spec = ts;
    t.container = container_id(id, t.name);
    if (prev.contains("tasks") && prev["tasks"].contains(t.name)) {
      const json &pt = prev["tasks"][t.name];
      t.restarts = pt.value("restarts", 0);
      t.state = pt.value("state", "pending");
      t.failed = pt.value("failed", false);
      t.exit_code = pt.value("exit_code", int64_t{-1});
      t.started_at = pt.value("started_at", "");
      t.finished_at = pt.value("finished_at", "");
      t.message = pt.value("message", "");
    }
    a->tasks.push_back(std::move(t));
  }
  allocs_[id] = std::move(owned);

  const std::string prev_status = prev.value("status", "");
  if (terminal(prev_status)) {
    // Already finished before a restart: nothing to run again.
    a->stopped = true;
    a->final_status = prev_status;
    if (prev.value("containers_removed", false)) a->removed = a->collected = true;
    // Stopped meanwhile: its containers (kept for their logs) go now.
    if (!run) stop_alloc(*a, record.value("desired_description", "stop requested"), false);
    return;
  }
  if (!run) {
    stop_alloc(*a, record.value("desired_description", "stop requested"), false);
    return;
  }
  for (auto &t : a->tasks) {
    if (containers_.contains(t.container)) {
      // Adopt what survived a daemon restart.
      const json &c = containers_[t.container];
      const std::string st = c.value("status", "");
      if (st == "running" || st == "created") {
        t.state = "running";
        if (st == "created") run_task(*a, t);  // created but never started
        else register_services(*a, t);          // its checks run here again
        continue;
      }
      // It exited while the daemon was down: judge the exit now.
      t.state = "running";
      t.attempt++;
      on_task_exit(t.container, c.value("exit_code", int64_t{-1}), c.value("signal", 0),
                   c.value("finished_at", rfc3339_now(true)));
      continue;
    }
    if (t.state == "dead") continue;
    run_task(*a, t);
  }
  report(*a);
}

// The sweep runs periodically, and soon (next loop iteration) when an
// allocation has just ended, so that max_terminal holds without delay.
void Reconciler::schedule_gc_sweep(bool soon) {
  if (!gc_timer_) return;
  const uint64_t every = static_cast<uint64_t>(std::clamp<int64_t>(gc_after_ms_ / 4, 250, 30000));
  uv_timer_start(
      gc_timer_, [](uv_timer_t *t) { static_cast<Reconciler *>(t->data)->gc_sweep(); },
      soon ? 0 : every, every);
}

void Reconciler::gc_sweep() {
  if (stopped_) return;
  const uint64_t now = uv_now(loop_);
  std::vector<std::pair<uint64_t, std::string>> ended;  // (since, alloc), oldest first
  for (auto &[id, a] : allocs_) {
    if (a->stopping || a->removed) continue;
    const std::string st = aggregate_status(*a);
    if (st != "complete" && st != "failed") {
      a->ended_ms = 0;
      continue;
    }
    if (a->ended_ms == 0) a->ended_ms = now;
    ended.emplace_back(a->ended_ms, id);
  }
  std::sort(ended.begin(), ended.end());
  const size_t keep = gc_max_terminal_ > 0 ? static_cast<size_t>(gc_max_terminal_) : ended.size();
  const size_t excess = ended.size() > keep ? ended.size() - keep : 0;
  for (size_t i = 0; i < ended.size(); ++i) {
    const bool expired = now - ended[i].first >= static_cast<uint64_t>(gc_after_ms_);
    if (!expired && i >= excess) continue;
    Alloc *a = find_alloc(ended[i].second);
    if (!a) continue;
    a->collected = true;
    stop_alloc(*a,
               expired ? "garbage collection: ended " + format_duration_ms(gc_after_ms_) + " ago"
                       : "garbage collection: more than " + std::to_string(gc_max_terminal_) +
                             " ended allocations on this node",
               false);
  }
}

void Reconciler::on_alloc_deleted(const std::string &id) {
  Alloc *a = find_alloc(id);
  if (!a) return;
  if (a->removed && !a->stopping) {  // its containers are gone already
    allocs_.erase(id);
    return;
  }
  stop_alloc(*a, "allocation removed", true);
}

// An allocation of a purged job, its containers removed: nothing will ever
// read its records again, so they go, in one transaction that holds only if
// the job is still absent and the allocation unchanged.
void Reconciler::collect_if_job_gone(Alloc &a) {
  const std::string job = a.record.value("job", "");
  if (job.empty() || a.mod_revision == 0) return;
  const std::string id = a.id;
  store_->txn({StoreCompare::absent(kJobs + job),
               StoreCompare::mod_revision_is(kAllocs + id, a.mod_revision)},
              {StoreOp::remove(kAllocs + id), StoreOp::remove(kAllocStatus + id)}, {},
              [id](StoreResult r, bool succeeded, int64_t) {
                if (!r.ok())
                  log::warn("reconciler", "cannot delete the records of allocation " + id + ": " +
                                              r.message);
                else if (succeeded)
                  log::info("reconciler", "allocation collected: its job was purged",
                            {{"alloc", id}});
              });
}

// The security plugin's OCI patch for this task (seccomp, capabilities,
// ...), as task_json["oci"]. Returns why it cannot be had, or "".
std::string Reconciler::add_security(json &task_json) {
  void *self = nullptr;
  auto *sec = plugins_->find<flotilla_security_v1>(FLOTILLA_SECURITY_INTERFACE_ID, &self);
  if (!sec || !FLOTILLA_HAS_FIELD(sec, flotilla_security_v1, resolve) || !sec->resolve) {
    if (task_json["task"].contains("security"))
      return "the task has a [task.security] table but no plugin "
             "provides " FLOTILLA_SECURITY_INTERFACE_ID " on this node; load [plugin.security]";
    return "";
  }
  flotilla_buf out{};
  out.struct_size = sizeof out;
  PluginHost::clear_last_error();
  flotilla_status st = sec->resolve(self, task_json.dump().c_str(), &out);
  if (st != FLOTILLA_OK) {
    std::string why = PluginHost::last_error();
    if (out.release) out.release(&out);
    return "security: " + (why.empty() ? std::string("resolve failed") : why);
  }
  json patch = json::parse(std::string(out.data ? out.data : "", out.len), nullptr, false);
  if (out.release) out.release(&out);
  if (!patch.is_object()) return "security: the plugin's OCI patch is not a JSON object";
  task_json["oci"] = json::array({patch});
  return "";
}

// The network plugin, when one is loaded; nullptr otherwise (bridge-mode
// tasks then share a namespace with loopback only, made by the runtime).
const flotilla_network_v1 *Reconciler::network(void **self) const {
  return plugins_->find<flotilla_network_v1>(FLOTILLA_NETWORK_INTERFACE_ID, self);
}

bool Reconciler::wants_network(const Alloc &a) const {
  void *self = nullptr;
  if (!network(&self)) return false;
  for (const auto &t : a.tasks)
    if (t.spec.value("network", "bridge") == "bridge") return true;
  return false;
}

namespace {

struct NetCtx {
  Reconciler *self;
  std::shared_ptr<bool> alive;
  std::string alloc;
  std::function<void(flotilla_status, const std::string &, json)> done;
};

}  // namespace

// attach(): the allocation's namespace, addresses and port mappings (the
// bridge-mode tasks' [task.resources] ports), then the waiting tasks.
void Reconciler::attach_network(Alloc &a) {
  void *self = nullptr;
  const flotilla_network_v1 *net = network(&self);
  a.net_attaching = true;
  json hostnames = json::array(), ports = json::array();
  for (const auto &t : a.tasks) {
    if (t.spec.value("network", "bridge") != "bridge") continue;
    hostnames.push_back(t.name);
    for (const auto &p : t.spec.value("resources", json::object()).value("ports", json::array()))
      if (p.is_object())  // a named mapping: host port -> container port `to`
        ports.push_back(
            {{"host", p.value("host", 0)}, {"to", p.value("to", 0)}, {"protocol", "tcp"}});
      else
        ports.push_back({{"host", p}, {"to", p}, {"protocol", "tcp"}});
  }
  json spec = {{"version", 1},
               {"alloc_id", a.id},
               {"job", a.record.value("job", "")},
               {"hostnames", hostnames},
               {"ports", ports}};
  auto *ctx = new NetCtx{this, alive_, a.id, nullptr};
  ctx->done = [this](flotilla_status st, const std::string &alloc, json result) {
    Alloc *al = find_alloc(alloc);
    if (!al) return;
    al->net_attaching = false;
    std::vector<std::string> waiting = std::move(al->net_waiting);
    al->net_waiting.clear();
    if (al->stopping || al->stopped) return;
    if (st == FLOTILLA_OK && result.is_object()) {
      al->net_attached = true;
      // The addresses discovery publishes for the allocation's services:
      // the attachment's, without their prefix length.
      al->addresses = json::array();
      for (const auto &ip : result.value("ips", json::array()))
        if (ip.is_object() && ip.contains("address") && ip["address"].is_string()) {
          std::string addr = ip["address"].get<std::string>();
          al->addresses.push_back(addr.substr(0, addr.find('/')));
        }
      al->net = std::move(result);
    }
    for (const auto &name : waiting)
      for (auto &t : al->tasks) {
        if (t.name != name || t.state != "starting") continue;
        if (st != FLOTILLA_OK)
          task_failed_to_start(*al, t, "network: " + PluginHost::last_error());
        else
          create_task(*al, t);  // its image was pulled before it waited
      }
  };
  PluginHost::clear_last_error();
  flotilla_status st = net->attach(
      self, a.id.c_str(), nullptr, spec.dump().c_str(),
      [](void *user, flotilla_status status, const char *result_json) {
        std::unique_ptr<NetCtx> c(static_cast<NetCtx *>(user));
        if (!*c->alive) return;
        json r = result_json ? json::parse(result_json, nullptr, false) : json();
        c->done(status, c->alloc, std::move(r));
      },
      ctx);
  if (st != FLOTILLA_OK) {
    std::unique_ptr<NetCtx> c(ctx);
    c->done(st, a.id, json());
  }
}

// detach() after the allocation's last container is gone; then `then`.
void Reconciler::detach_network(const std::string &alloc, std::function<void()> then) {
  void *self = nullptr;
  const flotilla_network_v1 *net = network(&self);
  if (!net) return then();
  auto *ctx = new NetCtx{this, alive_, alloc, nullptr};
  ctx->done = [then](flotilla_status st, const std::string &id, json) {
    if (st != FLOTILLA_OK)
      log::warn("reconciler", "cannot detach the network of " + id + ": " +
                                  PluginHost::last_error());
    then();
  };
  PluginHost::clear_last_error();
  flotilla_status st = net->detach(
      self, alloc.c_str(), nullptr,
      [](void *user, flotilla_status status) {
        std::unique_ptr<NetCtx> c(static_cast<NetCtx *>(user));
        if (!*c->alive) return;
        c->done(status, c->alloc, json());
      },
      ctx);
  if (st != FLOTILLA_OK) {
    std::unique_ptr<NetCtx> c(ctx);
    c->done(st, alloc, json());
  }
}

// Prepare the image, then create: the task's image_pull policy says
// whether the node asks the registry first ("always"), only when it lacks
// the image ("if_not_present", the default) or never. A failed pull fails
// the start, with the registry's message, under the restart policy.
void Reconciler::run_task(Alloc &a, Task &t) {
  t.state = "starting";
  t.message.clear();
  const uint64_t attempt = ++t.attempt;
  const std::string policy = t.spec.value("image_pull", "if_not_present");
  const std::string image = t.spec.value("image", "");
  if (policy == "never" || image.empty() || !runtime_->can_pull()) return create_task(a, t);
  const std::string alloc = a.id, task = t.name;
  auto lookup = [this, alloc, task, attempt]() -> std::pair<Alloc *, Task *> {
    if (stopped_) return {nullptr, nullptr};
    Alloc *al = find_alloc(alloc);
    if (!al || al->stopping) return {nullptr, nullptr};
    for (auto &tt : al->tasks)
      if (tt.name == task && tt.attempt == attempt) return {al, &tt};
    return {nullptr, nullptr};
  };
  runtime_->image_pull(
      image, policy,
      [this, lookup](const json &progress) {
        auto [al, tt] = lookup();
        if (!al) return;
        tt->pull = progress;
        // Status writes stay cheap: at most one a second for progress.
        const uint64_t now = progress_clock_ ? progress_clock_() : uv_now(loop_);
        if (tt->pull_report_ms != 0 && now - tt->pull_report_ms < kPullReportIntervalMs) return;
        tt->pull_report_ms = now;
        report(*al);
      },
      [this, lookup](StoreResult r, json) {
        auto [al, tt] = lookup();
        if (!al) return;
        tt->pull = nullptr;
        tt->pull_report_ms = 0;
        if (!r.ok()) return task_failed_to_start(*al, *tt, r.message);
        create_task(*al, *tt);
      });
  report(a);
}

void Reconciler::create_task(Alloc &a, Task &t) {
  const uint64_t attempt = t.attempt;
  json task_json = {{"version", 1},
                    {"alloc_id", a.id},
                    {"job", a.record.value("job", "")},
                    {"hostname", t.name},
                    // Create and start in one runtime call where the runtime
                    // can (docs/abi-json.md); one that cannot answers
                    // "created" and is started below.
                    {"start", true},
                    // A restart replaces the exited container of the same id
                    // and keeps its logs as an earlier run (docs/abi-json.md).
                    {"replace", true},
                    {"task", t.spec}};
  if (std::string why = add_security(task_json); !why.empty())
    return task_failed_to_start(a, t, why);
  if (t.spec.value("network", "bridge") == "bridge" && wants_network(a)) {
    if (!a.net_attached) {
      // Created once the allocation's network is there.
      a.net_waiting.push_back(t.name);
      if (!a.net_attaching) attach_network(a);
      report(a);
      return;
    }
    for (const char *k : {"netns", "dns", "hosts"})
      if (a.net.contains(k)) task_json[k] = a.net[k];
  }
  const std::string alloc = a.id, task = t.name, cid = t.container;
  auto lookup = [this, alloc, task, attempt]() -> std::pair<Alloc *, Task *> {
    if (stopped_) return {nullptr, nullptr};
    Alloc *al = find_alloc(alloc);
    if (!al || al->stopping) return {nullptr, nullptr};
    for (auto &tt : al->tasks)
      if (tt.name == task && tt.attempt == attempt) return {al, &tt};
    return {nullptr, nullptr};
  };
  auto do_start = [this, lookup, cid]() {
    runtime_->start(cid, [this, lookup](StoreResult r, json) {
      auto [al, tt] = lookup();
      if (!al) return;
      if (!r.ok()) return task_failed_to_start(*al, *tt, r.message);
      if (tt->state == "starting") {  // an exit event may have come first
        tt->state = "running";
        tt->started_at = rfc3339_now(true);
        register_services(*al, *tt);
      }
      report(*al);
    });
  };
  runtime_->create(cid, task_json.dump(), [this, lookup, do_start, cid](StoreResult r,
                                                                         json state) {
    auto [al, tt] = lookup();
    if (!al) return;
    if (!r.ok()) {
      if (r.status == FLOTILLA_E_EXISTS) {  // left from an earlier attempt: replace it
        runtime_->remove(cid, [this, lookup](StoreResult) {
          auto [al2, tt2] = lookup();
          if (al2) {
            tt2->attempt++;  // this attempt is over
            run_task(*al2, *tt2);
          }
        });
        return;
      }
      return task_failed_to_start(*al, *tt, r.message);
    }
    // Started by create: its exit may even have been reported already.
    if (tt->state != "starting") return;
    if (state.is_object() && state.value("status", "") != "created") {
      tt->state = "running";
      tt->started_at = rfc3339_now(true);
      register_services(*al, *tt);
      return report(*al);
    }
    do_start();
  });
  report(a);
}

// The task's [[task.service]]s, to the discovery plugin: it checks them on
// this node and publishes their health. Registering again replaces.
void Reconciler::register_services(Alloc &a, Task &t) {
  if (!t.spec.contains("service") || t.spec["service"].empty()) return;
  void *self = nullptr;
  auto *disc = plugins_->find<flotilla_discovery_v1>(FLOTILLA_DISCOVERY_INTERFACE_ID, &self);
  t.services = json::array();
  if (!disc) {
    log::warn("reconciler",
              "the task has services but no plugin provides " FLOTILLA_DISCOVERY_INTERFACE_ID
              "; they are not registered",
              {{"alloc", a.id}, {"task", t.name}});
    t.services_unregistered =
        "no plugin provides " FLOTILLA_DISCOVERY_INTERFACE_ID " on node " + node_;
    return;
  }
  json services = json::array(), names = json::array();
  for (const json &svc : t.spec["service"]) {
    json checks = json::array();
    for (const json &c : svc.value("check", json::array())) checks.push_back(c);
    json one = {{"name", svc.value("name", "")},
                {"port", svc.value("port", 0)},
                {"tags", svc.value("tags", json::array())},
                {"checks", checks},
                {"task", t.name},
                {"container", t.container}};  // exec checks run in it
    if (svc.contains("check_restart")) one["check_restart"] = svc["check_restart"];
    names.push_back(one["name"]);
    services.push_back(std::move(one));
  }
  // The addresses: the network plugin's attachment when there is one; a
  // host-network task is reached at the node's own address, which the
  // discovery plugin knows (host_address).
  json doc = {{"network", t.spec.value("network", "bridge")},
              {"addresses", a.addresses},
              {"services", services}};
  // The registration's answer comes later: a refusal then is recorded on
  // the task, so the deploy monitor stops waiting for its health.
  struct RegisterCtx {
    Reconciler *self;
    std::shared_ptr<bool> alive;
    std::string alloc, task;
    uint64_t attempt;
  };
  auto ctx = std::make_unique<RegisterCtx>(RegisterCtx{this, alive_, a.id, t.name, t.attempt});
  auto done = [](void *user, flotilla_status st) {
    std::unique_ptr<RegisterCtx> c(static_cast<RegisterCtx *>(user));
    if (st == FLOTILLA_OK || !*c->alive) return;
    Alloc *al = c->self->find_alloc(c->alloc);
    if (!al) return;
    for (auto &tt : al->tasks) {
      if (tt.name != c->task || tt.attempt != c->attempt) continue;
      tt.services = json::array();
      tt.services_unregistered =
          std::string("the discovery plugin refused them: ") + status_name(st);
      log::warn("reconciler", "the discovery plugin refused the task's services",
                {{"alloc", al->id}, {"task", tt.name}, {"error", status_name(st)}});
      c->self->report(*al);
    }
  };
  if (disc->register_alloc(self, a.id.c_str(), doc.dump().c_str(), done, ctx.get()) !=
      FLOTILLA_OK) {
    std::string why = PluginHost::last_error();
    log::warn("reconciler", "the discovery plugin refused the task's services",
              {{"alloc", a.id}, {"task", t.name}, {"error", why}});
    t.services_unregistered = "the discovery plugin refused them: " + why;
    return;
  }
  ctx.release();  // the done callback owns it now
  t.services = std::move(names);
  t.services_unregistered.clear();
}

void Reconciler::deregister_services(Alloc &a) {
  bool any = false;
  for (const auto &t : a.tasks)
    any = any || (t.spec.contains("service") && !t.spec["service"].empty());
  if (!any) return;
  void *self = nullptr;
  auto *disc = plugins_->find<flotilla_discovery_v1>(FLOTILLA_DISCOVERY_INTERFACE_ID, &self);
  if (!disc) return;
  auto done = [](void *, flotilla_status) {};
  disc->deregister_alloc(self, a.id.c_str(), done, nullptr);
}

void Reconciler::task_failed_to_start(Alloc &a, Task &t, const std::string &why) {
  log::warn("reconciler", "task failed to start",
            {{"alloc", a.id}, {"task", t.name}, {"error", why}});
  t.message = why;
  t.exit_code = -1;
  t.finished_at = rfc3339_now(true);
  apply_restart_policy(a, t);
}

void Reconciler::on_task_exit(const std::string &container, int64_t exit_code, int signal,
                              const std::string &finished_at) {
  if (stopped_) return;
  auto dot = container.rfind('.');
  if (dot == std::string::npos) return;
  Alloc *a = find_alloc(container.substr(0, dot));
  if (!a || a->stopping || a->stopped) return;
  Task *t = nullptr;
  for (auto &tt : a->tasks)
    if (tt.container == container) t = &tt;
  if (!t || (t->state != "running" && t->state != "starting")) return;
  t->exit_code = exit_code;
  t->signal = signal;
  t->finished_at = finished_at;
  if (!t->check_restart.empty()) {  // stopped for its failing checks: restarted, whatever its code
    t->message = "restarted by check_restart: " + t->check_restart;
    t->check_restart.clear();
    return apply_restart_policy(*a, *t);
  }
  const bool batch = a->record.value("spec", json::object()).value("type", "service") == "batch";
  if (batch && exit_code == 0 && signal == 0) {
    t->state = "dead";
    t->message = "completed";
    log::info("reconciler", "task completed", {{"alloc", a->id}, {"task", t->name}});
    report(*a);
    return;
  }
  t->message = signal ? "killed by signal " + std::to_string(signal)
                      : "exited with code " + std::to_string(exit_code);
  apply_restart_policy(*a, *t);
}

void Reconciler::on_check_restart(const std::string &alloc, const std::string &task,
                                  const std::string &reason) {
  if (stopped_) return;
  Alloc *a = find_alloc(alloc);
  if (!a || a->stopping || a->stopped) return;
  for (auto &t : a->tasks) {
    if (t.name != task) continue;
    if (t.state != "running" || !t.check_restart.empty()) return;
    t.check_restart = reason.empty() ? "its checks kept failing" : reason;
    log::info("reconciler", "restarting task for its failing checks",
              {{"alloc", a->id}, {"task", t.name}, {"why", t.check_restart}});
    const std::string cid = t.container;
    const uint64_t attempt = t.attempt;
    const std::string id = a->id;
    // Its exit comes as runtime.exit and restarts it (on_task_exit). A
    // stop that failed leaves the task as it was, to be asked again.
    runtime_->stop(cid, t.spec.value("kill_timeout_ms", uint64_t{5000}),
                   [this, id, cid, attempt](StoreResult r, json) {
                     Alloc *al = stopped_ || r.ok() ? nullptr : find_alloc(id);
                     if (!al) return;
                     for (auto &tt : al->tasks)
                       if (tt.container == cid && tt.attempt == attempt) tt.check_restart.clear();
                     log::warn("reconciler", "could not stop the task for its failing checks",
                               {{"alloc", id}, {"error", r.message}});
                   });
    return;
  }
}

// The wait before a restart: `delay` lengthened by a random fraction of it,
// up to `jitter` (u is that randomness, from [0, 1)). Never shorter than
// `delay`, as Nomad's "a random jitter of up to 25% is added to the delay".
namespace {
uint64_t restart_delay_ms(uint64_t delay, double jitter, double u) {
  const double factor = 1.0 + std::clamp(jitter, 0.0, 1.0) * std::clamp(u, 0.0, 1.0);
  return static_cast<uint64_t>(static_cast<double>(delay) * factor);
}
}  // namespace

// The job's [restart] policy: up to `attempts` restarts inside `interval`,
// each after `delay` plus up to `jitter` of it; then "fail" marks the task failed, "delay"
// waits out the interval and starts counting again.
void Reconciler::apply_restart_policy(Alloc &a, Task &t) {
  const json &policy = a.record.value("spec", json::object()).value("restart", json::object());
  const int attempts = policy.value("attempts", 2);
  const uint64_t interval = policy.value("interval_ms", uint64_t{30 * 60 * 1000});
  const uint64_t delay = policy.value("delay_ms", uint64_t{15000});
  const double jitter = policy.value("jitter", 0.25);
  const std::string mode = policy.value("mode", "fail");

  const uint64_t now = uv_now(loop_);
  std::erase_if(t.failures_ms, [&](uint64_t f) { return now - f > interval; });
  t.failures_ms.push_back(now);
  uint64_t wait = 0;
  if (static_cast<int>(t.failures_ms.size()) <= attempts) {
    static std::mt19937_64 rng{std::random_device{}()};
    wait = restart_delay_ms(delay, jitter, std::uniform_real_distribution<double>(0.0, 1.0)(rng));
  } else if (mode == "delay") {
    wait = interval;
    t.failures_ms.clear();
  } else {
    t.state = "dead";
    t.failed = true;
    t.message += "; restart attempts exhausted (" + std::to_string(attempts) + " in " +
                 std::to_string(interval / 1000) + "s)";
    log::warn("reconciler", "task failed", {{"alloc", a.id}, {"task", t.name}, {"why", t.message}});
    // One failed task fails the allocation: stop its siblings, but keep
    // every container (and so its logs) until the allocation is stopped or
    // purged, so `alloc logs` can show why it failed.
    a.stopped = true;
    a.final_status = "failed";
    for (auto &other : a.tasks) {
      if (other.restart_timer) {
        delete static_cast<RestartCtx *>(other.restart_timer->data);
        close_timer(other.restart_timer);
      }
      if (&other == &t || other.state == "dead") continue;
      other.state = "dead";
      other.message = "stopped: task " + t.name + " failed";
      const uint64_t timeout = other.spec.value("kill_timeout_ms", uint64_t{5000});
      runtime_->stop(other.container, timeout, [](StoreResult, json) {});
    }
    report(a);
    return;
  }
  t.state = "restarting";
  t.restarts++;
  log::info("reconciler", "restarting task",
            {{"alloc", a.id}, {"task", t.name}, {"in_ms", std::to_string(wait)},
             {"restarts", std::to_string(t.restarts)}});
  if (t.restart_timer) {
    delete static_cast<RestartCtx *>(t.restart_timer->data);
    close_timer(t.restart_timer);
  }
  t.restart_timer = new uv_timer_t;
  uv_timer_init(loop_, t.restart_timer);
  auto *ctx = new RestartCtx{this, a.id, t.name, t.attempt, nullptr};
  t.restart_timer->data = ctx;
  uv_timer_start(
      t.restart_timer,
      [](uv_timer_t *timer) {
        auto *c = static_cast<RestartCtx *>(timer->data);
        Reconciler *self = c->self;
        Alloc *al = self->find_alloc(c->alloc);
        std::string task = c->task;
        uint64_t attempt = c->attempt;
        delete c;
        timer->data = nullptr;
        if (!al) return;
        for (auto &tt : al->tasks) {
          if (tt.name != task || tt.attempt != attempt) continue;
          close_timer(tt.restart_timer);
          if (al->stopping || al->stopped) return;
          // A fresh container replaces the exited one at create ("replace"
          // in the task JSON), which keeps the earlier run's logs.
          self->run_task(*al, tt);
          return;
        }
      },
      wait, 0);
  report(a);
}

void Reconciler::stop_alloc(Alloc &a, const std::string &why, bool purge) {
  if (a.stopping) {
    return;
  }
  a.stopping = true;
  deregister_services(a);
  log::info("reconciler", "stopping allocation", {{"alloc", a.id}, {"why", why}});
  for (auto &t : a.tasks) {
    if (t.restart_timer) {
      delete static_cast<RestartCtx *>(t.restart_timer->data);
      close_timer(t.restart_timer);
    }
  }
  auto remaining = std::make_shared<size_t>(a.tasks.size());
  const std::string id = a.id;
  const bool detach = wants_network(a);
  auto finish = [this, id, purge]() {
    Alloc *al = find_alloc(id);
    if (!al) return;
    al->stopping = false;
    al->removed = true;
    std::string agg = aggregate_status(*al);
    al->stopped = true;
    al->final_status = agg == "failed" || agg == "complete" ? agg : "stopped";
    for (auto &t : al->tasks)
      if (t.state != "dead") t.state = "dead";
    if (purge) {
      store_->remove(kAllocStatus + id, false, [](StoreResult, int64_t, int64_t) {});
      allocs_.erase(id);
      return;
    }
    report(*al);
    collect_if_job_gone(*al);
  };
  // The network goes after the last container, never under a running one.
  auto one_done = [this, remaining, id, detach, finish]() {
    if (--*remaining > 0) return;
    if (!detach) return finish();
    detach_network(id, [this, id, finish] {
      if (Alloc *al = find_alloc(id)) {
        al->net_attached = false;
        al->net = json();
      }
      finish();
    });
  };
  if (a.tasks.empty()) {
    *remaining = 1;
    one_done();
    return;
  }
  // "stopping" is reported first, and the stops work from a copy: a runtime
  // that answers within the call runs finish() before stop() returns, and a
  // purge there has erased the allocation `a` refers to.
  std::vector<std::pair<std::string, uint64_t>> stops;
  for (const auto &t : a.tasks)
    stops.emplace_back(t.container, t.spec.value("kill_timeout_ms", uint64_t{5000}));
  report(a);
  for (const auto &[cid, timeout] : stops) {
    runtime_->stop(cid, timeout, [this, cid, one_done](StoreResult, json) {
      runtime_->remove(cid, [cid, one_done](StoreResult r) {
        if (!r.ok() && r.status != FLOTILLA_E_NOT_FOUND)
          log::warn("reconciler", "cannot remove container " + cid + ": " + r.message);
        one_done();
      });
    });
  }
}

std::string Reconciler::aggregate_status(const Alloc &a) const {
  if (a.stopped && !a.final_status.empty()) return a.final_status;
  bool any_running = false, all_done = !a.tasks.empty();
  for (const auto &t : a.tasks) {
    if (t.failed) return "failed";
    if (t.state == "running") any_running = true;
    if (t.state != "dead") all_done = false;
  }
  if (a.stopping) return "stopping";
  if (all_done) return "complete";
  return any_running ? "running" : "pending";
}

void Reconciler::report(Alloc &a) {
  json tasks = json::object();
  for (const auto &t : a.tasks) {
    tasks[t.name] = {{"state", t.state},     {"failed", t.failed},
                     {"restarts", t.restarts}, {"exit_code", t.exit_code},
                     {"signal", t.signal},   {"started_at", t.started_at},
                     {"finished_at", t.finished_at}, {"message", t.message},
                     {"container", t.container}};
    if (!t.pull.is_null()) tasks[t.name]["pull"] = t.pull;
    if (!t.services.empty()) tasks[t.name]["services"] = t.services;
    if (!t.services_unregistered.empty())
      tasks[t.name]["services_unregistered"] = t.services_unregistered;
  }
  json status = {{"id", a.id},
                 {"node", node_},
                 {"job", a.record.value("job", "")},
                 {"status", aggregate_status(a)},
                 {"tasks", tasks},
                 {"updated_at", rfc3339_now(true)}};
  if ((status["status"] == "complete" || status["status"] == "failed") && a.ended_ms == 0 &&
      !a.removed)
    schedule_gc_sweep(true);
  if (a.collected && a.removed) {
    status["containers_removed"] = true;
    status["message"] = "its containers and logs were removed by the node's garbage collection "
                        "([gc] in the daemon's config)";
  }
  // The same report again is not written: a start reports "pending" from
  // three places in one loop turn, and every write is an fsync of the
  // store and an event for every watcher, while runc runs. A write that
  // failed is made again by the next report.
  json content = status;
  content.erase("updated_at");
  std::string same = content.dump();
  if (same == a.last_report) return;
  a.last_report = same;
  const std::string id = a.id;
  store_->put(kAllocStatus + id, status.dump(),
              [this, alive = alive_, id, same = std::move(same)](StoreResult r, int64_t) {
                if (r.ok()) return;
                log::error("reconciler", "cannot report status of " + id + ": " + r.message);
                if (!*alive) return;
                if (Alloc *al = find_alloc(id); al && al->last_report == same)
                  al->last_report.clear();
              });
}

}  // namespace flotilla
