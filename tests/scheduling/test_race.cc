// Two schedulers racing on one real store: store-local and scheduler-binpack
// loaded through the real plugin host, two Evaluators that both believe they
// lead (same node name: the case of a restarted daemon whose old lease has
// not expired yet). Every evaluation is one compare-and-swap transaction, so
// whatever the interleaving no node is over-committed and every allocation
// is written once. Then drain, lost nodes, a rolling update and a reschedule
// delay through the store.
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>

#include "sched/evaluator.h"
#include "rfc3339.h"
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
  Evaluator e(c.loop.get(), c.store_a.get(), c.host.get(), "n1");
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

  bool stopped = false;
  e.stop([&] { stopped = true; });
  ASSERT_TRUE(c.loop.run_until([&] { return stopped; }, "evaluator to stop"));
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

  bool stopped = false;
  e.stop([&] { stopped = true; });
  ASSERT_TRUE(c.loop.run_until([&] { return stopped; }, "evaluator to stop"));
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
  bool stopped = false;
  e.stop([&] { stopped = true; });
  ASSERT_TRUE(c.loop.run_until([&] { return stopped; }, "evaluator to stop"));
}

}  // namespace
