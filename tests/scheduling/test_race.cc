// Two schedulers racing on one real store: store-local and scheduler-binpack
// loaded through the real plugin host, two Evaluators that both believe they
// lead (same node name: the case of a restarted daemon whose old lease has
// not expired yet). Every evaluation is one compare-and-swap transaction, so
// whatever the interleaving no node is over-committed and every allocation
// is written once. Then drain, lost nodes, a rolling update and a reschedule
// delay through the store.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <map>
#include <random>
#include <set>

#include "rfc3339.h"
#include "sched/evaluator.h"
#include "store_harness.h"

using flotilla::Evaluator;
using flotilla::KeyValue;
using flotilla::PluginHost;
using flotilla::PluginSettings;
using flotilla::StoreClient;
using flotilla::StoreEvent;
using flotilla::StoreResult;
using flotilla::store_test::TempDir;
using flotilla::store_test::TestLoop;
using nlohmann::json;

namespace {

struct Cluster {
  TestLoop loop;
  TempDir dir{"flotilla-sched-race"};
  std::unique_ptr<PluginHost> host;
  const flotilla_store_v1 *store_vt = nullptr;
  void *store_self = nullptr;
  std::unique_ptr<StoreClient> writer, store_a, store_b;

  Cluster() {
    PluginHost::Options opts;
    opts.node_name = "n1";
    opts.data_dir = dir.path();
    opts.config_path = "(test config)";
    host = std::make_unique<PluginHost>(loop.get(), opts);
    PluginSettings sched;
    sched.name = "scheduler-binpack";
    sched.path = SCHEDULER_BINPACK_PATH;
    host->start({flotilla::store_test::store_local_settings(json{{"fsync", false}}), sched});
    store_vt = host->find<flotilla_store_v1>(FLOTILLA_STORE_INTERFACE_ID, &store_self);
    writer = std::make_unique<StoreClient>(store_vt, store_self);
    store_a = std::make_unique<StoreClient>(store_vt, store_self);
    store_b = std::make_unique<StoreClient>(store_vt, store_self);
  }
  ~Cluster() {
    writer.reset();
    store_a.reset();
    store_b.reset();
    host->stop();
    loop.settle();
    host->stop();
  }

  void put(const std::string &key, const json &value) {
    bool done = false;
    writer->put(key, value.dump(), [&](StoreResult r, int64_t) {
      EXPECT_TRUE(r.ok()) << r.message;
      done = true;
    });
    ASSERT_TRUE(loop.run_until([&] { return done; }, "put " + key));
  }
  void remove(const std::string &key) {
    bool done = false;
    writer->remove(key, false, [&](StoreResult r, int64_t, int64_t) {
      EXPECT_TRUE(r.ok()) << r.message;
      done = true;
    });
    ASSERT_TRUE(loop.run_until([&] { return done; }, "remove " + key));
  }
  std::vector<KeyValue> list(const std::string &prefix) {
    std::vector<KeyValue> out;
    bool done = false;
    writer->list(prefix, [&](StoreResult r, std::vector<KeyValue> kvs, int64_t) {
      EXPECT_TRUE(r.ok()) << r.message;
      out = std::move(kvs);
      done = true;
    });
    EXPECT_TRUE(loop.run_until([&] { return done; }, "list " + prefix));
    return out;
  }
};

// An evaluator stopped, waited for.
void stop_evaluator(Cluster &c, Evaluator &e) {
  bool stopped = false;
  e.stop([&] { stopped = true; });
  ASSERT_TRUE(c.loop.run_until([&] { return stopped; }, "evaluator to stop"));
}

json node_record(const std::string &name, int cpu, int mem) {
  return {{"name", name},
          {"datacenter", "dc1"},
          {"status", "ready"},
          {"eligible", true},
          {"resources", {{"cpu_mhz", cpu}, {"memory_mb", mem}, {"disk_mb", 100000}}},
          {"attributes", {{"os", "linux"}}}};
}

json job_spec(const std::string &name, int count, int cpu, int mem, bool distinct = false) {
  json j = {{"name", name},
            {"type", "service"},
            {"count", count},
            {"version", 1},
            {"priority", 50},
            {"datacenters", {"dc1"}},
            {"task", json::array({{{"name", "t"}, {"resources", {{"cpu", cpu}, {"memory", mem}}}}})}};
  if (distinct) j["distinct_hosts"] = true;
  return j;
}

TEST(SchedulerRace, TwoLeadersNeverDoubleBookANode) {
  Cluster c;
  ASSERT_NE(c.store_vt, nullptr);
  // Count every write of every allocation key as it happens.
  std::map<std::string, int> writes;
  int64_t watch_from = 1;
  auto watch = c.writer->watch(
      "/flotilla/allocs/", true, watch_from,
      [&](StoreResult r, const std::vector<StoreEvent> &evs, int64_t) {
        if (!r.ok()) return;
        for (const auto &e : evs)
          if (e.type == StoreEvent::Type::put) writes[e.kv.key]++;
      });

  const int kNodes = 6;
  std::map<std::string, json> capacity;
  for (int i = 0; i < kNodes; ++i) {
    std::string n = "node-" + std::to_string(i);
    capacity[n] = node_record(n, 1000 + 250 * (i % 3), 2048);
    c.put("/flotilla/nodes/" + n, capacity[n]);
  }

  Evaluator a(c.loop.get(), c.store_a.get(), c.host.get(), "n1");
  Evaluator b(c.loop.get(), c.store_b.get(), c.host.get(), "n1");
  a.start();
  b.start();
  ASSERT_TRUE(c.loop.run_until([&] { return a.is_leader() && b.is_leader(); },
                               "both evaluators to lead"));

  // Jobs in three waves, asking for more than the cluster has, so that a
  // double booking would show as an over-committed node.
  std::mt19937_64 rng(5);
  std::map<std::string, json> jobs;
  for (int wave = 0; wave < 3; ++wave) {
    for (int k = 0; k < 8; ++k) {
      std::string name = "job-" + std::to_string(wave) + "-" + std::to_string(k);
      jobs[name] = job_spec(name, 1 + static_cast<int>(rng() % 4), 100 + 50 * static_cast<int>(rng() % 5),
                            128 + 64 * static_cast<int>(rng() % 4), rng() % 4 == 0);
      c.put("/flotilla/jobs/" + name, jobs[name]);
    }
    // Every job is either fully placed or has a placement failure on record.
    auto settled = [&] {
      std::map<std::string, int> placed;
      for (const auto &kv : c.list("/flotilla/allocs/")) {
        json a = json::parse(kv.value);
        if (a["desired_status"] == "run") placed[a["job"]]++;
      }
      std::set<std::string> failed;
      for (const auto &kv : c.list("/flotilla/job-status/"))
        failed.insert(kv.key.substr(std::string("/flotilla/job-status/").size()));
      for (const auto &[name, j] : jobs)
        if (placed[name] < j["count"].get<int>() && !failed.count(name)) return false;
      return true;
    };
    ASSERT_TRUE(c.loop.run_until(settled, "every job placed or explained"));
  }
  // Let any evaluation still in flight land before looking (a wait, not
  // an assertion: the checks below hold at any moment).
  uv_timer_t pause;
  uv_timer_init(c.loop.get(), &pause);
  bool paused = false;
  pause.data = &paused;
  uv_timer_start(&pause, [](uv_timer_t *t) { *static_cast<bool *>(t->data) = true; }, 300, 0);
  ASSERT_TRUE(c.loop.run_until([&] { return paused; }, "a pause"));
  uv_close(reinterpret_cast<uv_handle_t *>(&pause), nullptr);
  c.loop.settle();

  std::map<std::string, std::array<int64_t, 2>> used;
  std::map<std::pair<std::string, int>, int> per_index;
  std::map<std::string, std::set<std::string>> job_nodes;
  for (const auto &kv : c.list("/flotilla/allocs/")) {
    json al = json::parse(kv.value);
    per_index[{al["job"], al["index"].get<int>()}]++;
    EXPECT_EQ(al["desired_status"], "run") << kv.value;  // nothing failed: nothing to stop
    used[al["node"]][0] += al["resources"]["cpu_mhz"].get<int64_t>();
    used[al["node"]][1] += al["resources"]["memory_mb"].get<int64_t>();
    if (jobs[al["job"]].value("distinct_hosts", false)) {
      EXPECT_TRUE(job_nodes[al["job"]].insert(al["node"]).second)
          << al["job"] << " twice on " << al["node"];
    }
  }
  ASSERT_FALSE(per_index.empty());
  for (const auto &[node, u] : used) {
    EXPECT_LE(u[0], capacity[node]["resources"]["cpu_mhz"].get<int64_t>()) << node << " cpu";
    EXPECT_LE(u[1], capacity[node]["resources"]["memory_mb"].get<int64_t>()) << node << " memory";
  }
  for (const auto &[key, n] : per_index)
    EXPECT_EQ(n, 1) << key.first << "[" << key.second << "] has " << n << " allocations";
  for (const auto &[key, n] : writes) EXPECT_EQ(n, 1) << key << " written " << n << " times";

  // The cluster really was short: some job could not be placed in full.
  EXPECT_FALSE(c.list("/flotilla/job-status/").empty());

  watch.reset();
  bool stopped_a = false, stopped_b = false;
  a.stop([&] { stopped_a = true; });
  b.stop([&] { stopped_b = true; });
  ASSERT_TRUE(c.loop.run_until([&] { return stopped_a && stopped_b; }, "evaluators to stop"));
}

// Through the store: a drain written where POST /v1/nodes/<n>/drain writes
// it, and a node whose record disappears (its lease ran out), each move
// the allocations to the nodes that are left.
TEST(SchedulerStore, DrainedAndLostNodesAllocationsArePlacedAgain) {
  Cluster c;
  ASSERT_NE(c.store_vt, nullptr);
  for (int i = 0; i < 3; ++i) {
    std::string n = "node-" + std::to_string(i);
    c.put("/flotilla/nodes/" + n, node_record(n, 4000, 8192));
  }
  // A 1 s lease: a new leader judges no node lost within its first TTL.
  Evaluator e(c.loop.get(), c.store_a.get(), c.host.get(), "n1", 1000);
  e.start();
  c.put("/flotilla/jobs/web", job_spec("web", 3, 100, 64, true));  // one per node
  // The live allocations: node -> count.
  auto live = [&] {
    std::map<std::string, int> on;
    for (const auto &kv : c.list("/flotilla/allocs/")) {
      json a = json::parse(kv.value);
      if (a["desired_status"] == "run") on[a["node"]]++;
    }
    return on;
  };
  ASSERT_TRUE(c.loop.run_until([&] { return live().size() == 3; }, "three allocations"));

  c.put("/flotilla/node-control/node-0", json{{"drain", true}, {"eligible", false}});
  // distinct_hosts: with node-0 drained only two can run.
  ASSERT_TRUE(c.loop.run_until([&] { return !live().count("node-0"); }, "node-0 drained"));
  auto after_drain = live();
  EXPECT_EQ(after_drain["node-1"], 1);
  EXPECT_EQ(after_drain["node-2"], 1);
  ASSERT_TRUE(c.loop.run_until([&] { return !c.list("/flotilla/job-status/").empty(); },
                               "the third explained"));
  EXPECT_NE(c.list("/flotilla/job-status/")[0].value.find("distinct_hosts"), std::string::npos);

  // Undrained, the third goes back; then node-1 is lost.
  c.put("/flotilla/node-control/node-0", json{{"drain", false}, {"eligible", true}});
  ASSERT_TRUE(c.loop.run_until([&] { return live().size() == 3; }, "node-0 back"));
  c.put("/flotilla/nodes/node-3", node_record("node-3", 4000, 8192));
  c.remove("/flotilla/nodes/node-1");
  ASSERT_TRUE(c.loop.run_until([&] { return !live().count("node-1") && live().size() == 3; },
                               "node-1's allocation placed again"));
  EXPECT_EQ(live()["node-3"], 1);
  int stopped_lost = 0;
  for (const auto &kv : c.list("/flotilla/allocs/")) {
    json a = json::parse(kv.value);
    if (a.value("desired_description", "") == "node node-1 lost") ++stopped_lost;
  }
  EXPECT_EQ(stopped_lost, 1);

  ASSERT_NO_FATAL_FAILURE(stop_evaluator(c, e));
}

// A rolling update through the store: one old allocation replaced at a
// time, the next only once the new one reports running for
// min_healthy_time (statuses written here as a node's reconciler would).
TEST(SchedulerStore, RollingUpdateStepsThroughTheStore) {
  Cluster c;
  ASSERT_NE(c.store_vt, nullptr);
  c.put("/flotilla/nodes/node-0", node_record("node-0", 8000, 8192));
  Evaluator e(c.loop.get(), c.store_a.get(), c.host.get(), "n1");
  e.start();
  json v1 = job_spec("web", 2, 100, 64);
  c.put("/flotilla/jobs/web", v1);
  auto run_allocs = [&] {
    std::vector<json> out;
    for (const auto &kv : c.list("/flotilla/allocs/")) {
      json a = json::parse(kv.value);
      if (a["desired_status"] == "run") out.push_back(a);
    }
    return out;
  };
  auto report_running = [&](const json &a) {  // started long ago: healthy at once
    c.put("/flotilla/alloc-status/" + a["id"].get<std::string>(),
          json{{"id", a["id"]}, {"status", "running"},
               {"tasks", {{"t", {{"started_at", "2020-01-01T00:00:00.000Z"}}}}},
               {"updated_at", "2020-01-01T00:00:00.000Z"}});
  };
  ASSERT_TRUE(c.loop.run_until([&] { return run_allocs().size() == 2; }, "two allocations"));
  for (const auto &a : run_allocs()) report_running(a);

  json v2 = job_spec("web", 2, 200, 64);
  v2["version"] = 2;
  v2["update"] = {{"max_parallel", 1}, {"min_healthy_time_ms", 1000},
                  {"healthy_deadline_ms", 600000}, {"auto_revert", false}};
  c.put("/flotilla/jobs/web", v2);
  auto versions = [&] {
    std::map<int, int> n;
    for (const auto &a : run_allocs()) n[a["job_version"].get<int>()]++;
    return n;
  };
  ASSERT_TRUE(c.loop.run_until([&] { return versions()[2] == 1; }, "the first new allocation"));
  // The new one has not reported: the second old one stays.
  auto mid = versions();
  EXPECT_EQ(mid[1], 1);
  EXPECT_EQ(mid[2], 1);
  for (const auto &a : run_allocs())
    if (a["job_version"] == 2) report_running(a);
  ASSERT_TRUE(c.loop.run_until([&] { return versions()[2] == 2; }, "the second step"));
  EXPECT_EQ(versions()[1], 0);

  ASSERT_NO_FATAL_FAILURE(stop_evaluator(c, e));
}

// A failed allocation through the store: nothing changes in the cluster
// after the failure is reported, so only the evaluator's own timer for the
// reschedule delay can bring the replacement.
TEST(SchedulerStore, FailedAllocationIsReplacedWhenItsDelayEnds) {
  Cluster c;
  ASSERT_NE(c.store_vt, nullptr);
  c.put("/flotilla/nodes/node-0", node_record("node-0", 8000, 8192));
  Evaluator e(c.loop.get(), c.store_a.get(), c.host.get(), "n1");
  e.start();
  json j = job_spec("web", 1, 100, 64);
  j["reschedule"] = {{"attempts", 0},  {"interval_ms", 3600000}, {"delay_ms", 300},
                     {"delay_function", "constant"}, {"max_delay_ms", 300}, {"unlimited", true}};
  c.put("/flotilla/jobs/web", j);
  auto allocs = [&] {
    std::vector<json> out;
    for (const auto &kv : c.list("/flotilla/allocs/")) out.push_back(json::parse(kv.value));
    return out;
  };
  ASSERT_TRUE(c.loop.run_until([&] { return allocs().size() == 1; }, "the allocation"));
  const json first = allocs()[0];
  c.put("/flotilla/alloc-status/" + first["id"].get<std::string>(),
        json{{"id", first["id"]}, {"status", "failed"},
             {"updated_at", flotilla::rfc3339_now(true)}});
  ASSERT_TRUE(c.loop.run_until([&] { return allocs().size() == 2; }, "the replacement"));
  for (const auto &a : allocs()) {
    if (a["id"] == first["id"]) {
      EXPECT_EQ(a["desired_status"], "stop");
      EXPECT_EQ(a["desired_description"], "failed; rescheduled");
    } else {
      EXPECT_EQ(a["desired_status"], "run");
      EXPECT_EQ(a["previous_alloc"], first["id"]);
      EXPECT_EQ(a["reschedule"]["attempts"], 1);
    }
  }
  ASSERT_NO_FATAL_FAILURE(stop_evaluator(c, e));
}

}  // namespace

// ---- fencing: a leader that was paused past its lease -----------------------

// A view of the store as a paused (SIGSTOPped) daemon has it: while paused,
// nothing it asked for comes back and no watch event reaches it; on resume
// all of it arrives, late, in order. Reads are copied when held.
struct PausedView {
  const flotilla_store_v1 *inner = nullptr;
  void *inner_self = nullptr;
  flotilla_store_v1 vt{};
  bool paused = false;
  bool pause_on_read = false;  // pause as soon as the next read is sent
  // Transactions after this many are not sent until resume() (-1: never
  // held): a daemon paused between two of its writes.
  int txns_before_hold = -1;
  int txns_sent = 0;
  std::vector<std::function<void()>> held;

  struct Ctx {
    PausedView *view;
    void *cb;
    void *user;
    flotilla_store_watch_id watch = 0;
    bool cancelled = false;  // a watch: nothing may be delivered after watch_cancel
  };
  std::vector<std::unique_ptr<Ctx>> ctxs;
  Ctx *ctx(void *cb, void *user) {
    ctxs.push_back(std::make_unique<Ctx>(Ctx{this, cb, user}));
    return ctxs.back().get();
  }

  // Owned copies of borrowed kvs, re-exposed as flotilla_kv.
  struct Kvs {
    std::vector<KeyValue> owned;
    std::vector<flotilla_kv> view;
    Kvs(const flotilla_kv *kvs, size_t n) {
      for (size_t i = 0; i < n; ++i)
        owned.push_back({std::string(kvs[i].key, kvs[i].key_len),
                         std::string(kvs[i].value ? kvs[i].value : "", kvs[i].value_len),
                         kvs[i].create_revision, kvs[i].mod_revision, kvs[i].version,
                         kvs[i].lease});
      for (const auto &o : owned)
        view.push_back({sizeof(flotilla_kv), o.key.data(), o.key.size(), o.value.data(),
                        o.value.size(), o.create_revision, o.mod_revision, o.version, o.lease});
    }
  };

  void resume() {
    paused = false;
    auto h = std::move(held);
    for (auto &f : h) f();
  }

  explicit PausedView(const flotilla_store_v1 *vt_in, void *self_in)
      : inner(vt_in), inner_self(self_in) {
    vt = *inner;
    vt.range = [](void *self, const flotilla_key_range *r, int64_t rev, int64_t limit,
                  flotilla_store_range_cb cb, void *user) {
      auto *v = static_cast<PausedView *>(self);
      if (v->pause_on_read) v->paused = true, v->pause_on_read = false;
      return v->inner->range(
          v->inner_self, r, rev, limit,
          [](void *u, flotilla_status st, const flotilla_kv *kvs, size_t n, int64_t rev2,
             int more) {
            auto *c = static_cast<Ctx *>(u);
            auto cb2 = reinterpret_cast<flotilla_store_range_cb>(c->cb);
            if (!c->view->paused) return cb2(c->user, st, kvs, n, rev2, more);
            auto copy = std::make_shared<Kvs>(kvs, n);
            c->view->held.push_back([c, cb2, st, copy, rev2, more] {
              cb2(c->user, st, copy->view.data(), copy->view.size(), rev2, more);
            });
          },
          v->ctx(reinterpret_cast<void *>(cb), user));
    };
    vt.watch = [](void *self, const flotilla_key_range *r, int64_t start,
                  flotilla_store_watch_cb cb, void *user, flotilla_store_watch_id *id) {
      auto *v = static_cast<PausedView *>(self);
      flotilla_status rc = v->inner->watch(
          v->inner_self, r, start,
          [](void *u, flotilla_status st, const flotilla_watch_event *evs, size_t n, int64_t rev) {
            auto *c = static_cast<Ctx *>(u);
            auto cb2 = reinterpret_cast<flotilla_store_watch_cb>(c->cb);
            if (!c->view->paused) return cb2(c->user, st, evs, n, rev);
            struct Evs {
              std::vector<KeyValue> kv;
              std::vector<flotilla_watch_event> ev;
            };
            auto copy = std::make_shared<Evs>();
            for (size_t i = 0; i < n; ++i) {
              const flotilla_kv &k = evs[i].kv;
              copy->kv.push_back({std::string(k.key, k.key_len),
                                  std::string(k.value ? k.value : "", k.value_len),
                                  k.create_revision, k.mod_revision, k.version, k.lease});
            }
            for (size_t i = 0; i < n; ++i) {
              const KeyValue &o = copy->kv[i];
              copy->ev.push_back(
                  {sizeof(flotilla_watch_event),
                   evs[i].type,
                   {sizeof(flotilla_kv), o.key.data(), o.key.size(), o.value.data(), o.value.size(),
                    o.create_revision, o.mod_revision, o.version, o.lease}});
            }
            c->view->held.push_back([c, cb2, st, copy, rev] {
              if (!c->cancelled) cb2(c->user, st, copy->ev.data(), copy->ev.size(), rev);
            });
          },
          v->ctx(reinterpret_cast<void *>(cb), user), id);
      v->ctxs.back()->watch = *id;
      return rc;
    };
    // Everything else goes straight through: a write sent after the resume
    // reaches the store as it is then.
    vt.put = [](void *self, const char *k, size_t kl, const char *val, size_t vl,
                flotilla_lease_id lease, flotilla_store_write_cb cb, void *user) {
      auto *v = static_cast<PausedView *>(self);
      return v->inner->put(v->inner_self, k, kl, val, vl, lease, cb, user);
    };
    vt.delete_range = [](void *self, const flotilla_key_range *r, flotilla_store_delete_cb cb,
                         void *user) {
      auto *v = static_cast<PausedView *>(self);
      return v->inner->delete_range(v->inner_self, r, cb, user);
    };
    vt.txn = [](void *self, const flotilla_compare *c, size_t nc, const flotilla_op *s, size_t ns,
                const flotilla_op *f, size_t nf, flotilla_store_txn_cb cb, void *user) {
      auto *v = static_cast<PausedView *>(self);
      if (v->txns_before_hold < 0 || v->txns_sent < v->txns_before_hold) {
        ++v->txns_sent;
        return v->inner->txn(v->inner_self, c, nc, s, ns, f, nf, cb, user);
      }
      // Held: copied, since the caller's arrays are borrowed for the call.
      struct Copy {
        std::deque<std::string> text;  // stable addresses
        std::vector<flotilla_compare> cmps;
        std::vector<flotilla_op> success, failure;
        const char *keep(const char *p, size_t n) {
          return text.emplace_back(p ? p : "", p ? n : 0).data();
        }
      };
      auto copy = std::make_shared<Copy>();
      for (size_t i = 0; i < nc; ++i) {
        flotilla_compare k = c[i];
        k.key = copy->keep(c[i].key, c[i].key_len);
        k.value = copy->keep(c[i].value, c[i].value_len);
        copy->cmps.push_back(k);
      }
      auto keep_ops = [&](const flotilla_op *ops, size_t n, std::vector<flotilla_op> &into) {
        for (size_t i = 0; i < n; ++i) {
          flotilla_op o = ops[i];
          o.key = copy->keep(ops[i].key, ops[i].key_len);
          o.value = copy->keep(ops[i].value, ops[i].value_len);
          into.push_back(o);
        }
      };
      keep_ops(s, ns, copy->success);
      keep_ops(f, nf, copy->failure);
      v->held.push_back([v, copy, cb, user] {
        ++v->txns_sent;
        v->inner->txn(v->inner_self, copy->cmps.data(), copy->cmps.size(), copy->success.data(),
                      copy->success.size(), copy->failure.data(), copy->failure.size(), cb, user);
      });
      return FLOTILLA_OK;
    };
    vt.watch_cancel = [](void *self, flotilla_store_watch_id id) {
      auto *v = static_cast<PausedView *>(self);
      for (auto &c : v->ctxs)
        if (c->watch == id) c->cancelled = true;
      v->inner->watch_cancel(v->inner_self, id);
    };
    vt.lease_grant = [](void *self, int64_t ttl, flotilla_lease_cb cb, void *user) {
      auto *v = static_cast<PausedView *>(self);
      return v->inner->lease_grant(v->inner_self, ttl, cb, user);
    };
    vt.lease_keepalive = [](void *self, flotilla_lease_id l, flotilla_lease_cb cb, void *user) {
      auto *v = static_cast<PausedView *>(self);
      return v->inner->lease_keepalive(v->inner_self, l, cb, user);
    };
    vt.lease_revoke = [](void *self, flotilla_lease_id l, flotilla_done_cb cb, void *user) {
      auto *v = static_cast<PausedView *>(self);
      return v->inner->lease_revoke(v->inner_self, l, cb, user);
    };
    vt.compact = [](void *self, int64_t rev, flotilla_done_cb cb, void *user) {
      auto *v = static_cast<PausedView *>(self);
      return v->inner->compact(v->inner_self, rev, cb, user);
    };
  }
};

// The old leader of the fencing tests: an evaluator that sees the store
// through a PausedView, leading a cluster of two nodes.
struct PausedLeader {
  PausedView view;
  StoreClient store{&view.vt, &view};
  Evaluator old;
  explicit PausedLeader(Cluster &c)
      : view(c.store_vt, c.store_self), old(c.loop.get(), &store, c.host.get(), "old") {}

  // Two nodes of cpu MHz and mem MiB, and the old leader leading.
  void lead(Cluster &c, int cpu, int mem) {
    for (int i = 0; i < 2; ++i)
      c.put("/flotilla/nodes/node-" + std::to_string(i),
            node_record("node-" + std::to_string(i), cpu, mem));
    old.start();
    ASSERT_TRUE(c.loop.run_until([&] { return old.is_leader(); }, "the old leader to lead"));
    c.loop.settle();
  }

  // The evaluator stopped; whatever the view still holds or has in flight
  // lands while it exists.
  void stop(Cluster &c) {
    ASSERT_NO_FATAL_FAILURE(stop_evaluator(c, old));
    view.resume();
    c.loop.settle();
  }
};

// Another node ("new") is elected: the leader key goes and is written
// again under a lease of its own, so its create_revision is a new one.
static void elect_another_leader(Cluster &c) {
  c.remove("/flotilla/leader/scheduler");
  int64_t lease = 0;
  c.writer->lease_grant(60, [&](StoreResult r, int64_t l, int64_t) {
    EXPECT_TRUE(r.ok()) << r.message;
    lease = l;
  });
  ASSERT_TRUE(c.loop.run_until([&] { return lease != 0; }, "a lease for the new leader"));
  bool put = false;
  c.writer->put(
      "/flotilla/leader/scheduler", "new",
      [&](StoreResult r, int64_t) {
        EXPECT_TRUE(r.ok()) << r.message;
        put = true;
      },
      lease);
  ASSERT_TRUE(c.loop.run_until([&] { return put; }, "the new leader's key"));
}

// The old leader read the cluster, was paused before writing, and while it
// slept its key went and another node was elected; nothing else changed,
// so the placement epoch alone would let its write through. The leader
// key's create_revision does not: it writes nothing, and steps down.
TEST(SchedulerFencing, APausedLeaderWritesNothingAfterAnotherIsElected) {
  Cluster c;
  ASSERT_NE(c.store_vt, nullptr);
  PausedLeader leader(c);
  ASSERT_NO_FATAL_FAILURE(leader.lead(c, 4000, 8192));
  PausedView &view = leader.view;
  Evaluator &old = leader.old;

  // It reads (for the new job) and is paused with the answer in flight.
  view.pause_on_read = true;
  c.put("/flotilla/jobs/web", job_spec("web", 2, 100, 64));
  ASSERT_TRUE(c.loop.run_until([&] { return !view.held.empty(); }, "the old leader's read"));
  // Meanwhile its lease ran out (the key went) and "new" was elected: a new
  // key, a new create_revision. (No evaluator for it: the epoch must stay
  // as the old leader read it.)
  ASSERT_NO_FATAL_FAILURE(elect_another_leader(c));

  view.resume();
  ASSERT_TRUE(c.loop.run_until([&] { return !old.is_leader(); }, "the old leader to step down"));
  c.loop.settle();
  EXPECT_TRUE(c.list("/flotilla/allocs/").empty()) << "the fenced-off leader placed";
  EXPECT_TRUE(c.list("/flotilla/sched/").empty()) << "the fenced-off leader bumped the epoch";

  leader.stop(c);
}

// The leader claimed the epoch with the first transaction of a large
// placement and was paused before the others (the siblings, which require
// its token) were sent; meanwhile another node was elected. The epoch still
// holds its token, but the fence does not hold: none of the rest lands.
TEST(SchedulerFencing, AStaleLeadersRemainingTransactionsWriteNothing) {
  Cluster c;
  ASSERT_NE(c.store_vt, nullptr);
  PausedLeader leader(c);
  ASSERT_NO_FATAL_FAILURE(leader.lead(c, 100000, 100000));
  PausedView &view = leader.view;
  Evaluator &old = leader.old;

  view.txns_before_hold = view.txns_sent + 1;  // the claim goes, the rest waits
  c.put("/flotilla/jobs/big", job_spec("big", 300, 10, 10));
  ASSERT_TRUE(c.loop.run_until([&] { return !view.held.empty(); }, "the old leader's siblings"));
  const size_t claimed = c.list("/flotilla/allocs/").size();
  EXPECT_GT(claimed, 0u) << "the claim (the first transaction) was applied";
  EXPECT_LT(claimed, 300u);
  auto epoch = c.list("/flotilla/sched/epoch");
  ASSERT_EQ(epoch.size(), 1u);
  EXPECT_EQ(epoch[0].value.rfind("old/", 0), 0u) << epoch[0].value;

  ASSERT_NO_FATAL_FAILURE(elect_another_leader(c));

  view.txns_before_hold = -1;
  view.resume();
  ASSERT_TRUE(c.loop.run_until([&] { return !old.is_leader(); }, "the old leader to step down"));
  c.loop.settle();
  EXPECT_EQ(c.list("/flotilla/allocs/").size(), claimed) << "a fenced-off sibling landed";
  EXPECT_EQ(c.list("/flotilla/sched/epoch")[0].mod_revision, epoch[0].mod_revision);

  leader.stop(c);
}

// Three nodes with room for it all, and a job of 300 allocations (more
// than one transaction holds) placed by e.
static void place_a_large_job(Cluster &c, Evaluator &e) {
  for (int i = 0; i < 3; ++i)
    c.put("/flotilla/nodes/node-" + std::to_string(i),
          node_record("node-" + std::to_string(i), 100000, 100000));
  e.start();
  c.put("/flotilla/jobs/big", job_spec("big", 300, 10, 10));
  ASSERT_TRUE(c.loop.run_until([&] { return c.list("/flotilla/allocs/").size() == 300; },
                               "300 allocations"));
}

// A job bigger than one etcd transaction may hold (128 operations): its
// placements go in several transactions, and all of them land. The first
// claims the placement epoch with a token of its own; the others require
// that token and put it back (siblings, which store-etcd sends together,
// in any order): the epoch's mod_revision moves with every transaction,
// its value only with the claim.
TEST(SchedulerStore, ALargeJobIsWrittenInTransactionsWithinEtcdsLimit) {
  Cluster c;
  ASSERT_NE(c.store_vt, nullptr);
  Evaluator e(c.loop.get(), c.store_a.get(), c.host.get(), "n1");
  ASSERT_NO_FATAL_FAILURE(place_a_large_job(c, e));
  std::set<int> indices;
  std::set<int64_t> txn_revisions;
  for (const auto &kv : c.list("/flotilla/allocs/")) {
    indices.insert(json::parse(kv.value)["index"].get<int>());
    txn_revisions.insert(kv.mod_revision);
  }
  EXPECT_EQ(indices.size(), 300u);
  // At least ceil(300 / 126) transactions.
  EXPECT_GE(txn_revisions.size(), 3u);
  auto epoch = c.list("/flotilla/sched/epoch");
  ASSERT_EQ(epoch.size(), 1u);
  EXPECT_EQ(epoch[0].version, static_cast<int64_t>(txn_revisions.size()))
      << "one bump per transaction";
  EXPECT_EQ(epoch[0].mod_revision, *txn_revisions.rbegin()) << "by the last one to land";
  // One token for the whole write (<node>/<fence>/<random>), not one per
  // transaction.
  const std::string &token = epoch[0].value;
  EXPECT_EQ(std::count(token.begin(), token.end(), '/'), 2) << token;
  ASSERT_NO_FATAL_FAILURE(stop_evaluator(c, e));
}

// A new version of a job without an [update] policy replaces every
// allocation in one evaluation: the stops are written first, and only once
// all of them were applied the placements that take their place (a node
// never sees a new allocation before the stop of the one it replaces).
TEST(SchedulerStore, StopsLandBeforeThePlacementsThatReplaceThem) {
  Cluster c;
  ASSERT_NE(c.store_vt, nullptr);
  Evaluator e(c.loop.get(), c.store_a.get(), c.host.get(), "n1");
  ASSERT_NO_FATAL_FAILURE(place_a_large_job(c, e));
  json v2 = job_spec("big", 300, 20, 10);
  v2["version"] = 2;
  c.put("/flotilla/jobs/big", v2);
  ASSERT_TRUE(c.loop.run_until([&] { return c.list("/flotilla/allocs/").size() == 600; },
                               "300 replacements"));
  int64_t last_stop = 0, first_new = INT64_MAX;
  int stops = 0, news = 0;
  for (const auto &kv : c.list("/flotilla/allocs/")) {
    json a = json::parse(kv.value);
    if (a["job_version"] == 1) {
      EXPECT_EQ(a["desired_status"], "stop") << kv.key;
      last_stop = std::max(last_stop, kv.mod_revision);
      ++stops;
    } else {
      EXPECT_EQ(a["desired_status"], "run") << kv.key;
      first_new = std::min(first_new, kv.create_revision);
      ++news;
    }
  }
  EXPECT_EQ(stops, 300);
  EXPECT_EQ(news, 300);
  EXPECT_LT(last_stop, first_new) << "a replacement was written before a stop";
  ASSERT_NO_FATAL_FAILURE(stop_evaluator(c, e));
}
