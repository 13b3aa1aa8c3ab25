// Evaluator::plan with the real scheduler-binpack plugin: what one
// evaluation places, stops and explains.
#include <gtest/gtest.h>
#include <uv.h>

#include <filesystem>
#include <set>

#include "sched/evaluator.h"

using flotilla::Evaluator;
using nlohmann::json;

namespace {

class EvaluatorPlan : public ::testing::Test {
 protected:
  void SetUp() override {
    uv_loop_init(&loop_);
    char tmpl[] = "/tmp/flotilla-eval-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    host_ = std::make_unique<flotilla::PluginHost>(
        &loop_, flotilla::PluginHost::Options{"n1", dir_, "(test)"});
    flotilla::PluginSettings s;
    s.name = "scheduler-binpack";
    s.path = SCHEDULER_BINPACK_PATH;
    host_->start({s});
    sched_ = host_->find<flotilla_scheduler_v1>(FLOTILLA_SCHEDULER_INTERFACE_ID, &self_);
    ASSERT_NE(sched_, nullptr);
  }
  void TearDown() override {
    host_.reset();
    uv_run(&loop_, UV_RUN_NOWAIT);
    uv_loop_close(&loop_);
    std::filesystem::remove_all(dir_);
  }

  static json job(const std::string &name, int count, int cpu = 100, int mem = 64,
                  const std::string &type = "service", int version = 1) {
    return {{"name", name},
            {"type", type},
            {"count", count},
            {"version", version},
            {"priority", 50},
            {"task", json::array({{{"name", "t"}, {"resources", {{"cpu", cpu}, {"memory", mem}}}}})}};
  }
  static json node(int cpu = 4000, int mem = 8192) {
    return {{"status", "ready"},
            {"eligible", true},
            {"resources", {{"cpu_mhz", cpu}, {"memory_mb", mem}, {"disk_mb", 100000}}}};
  }
  Evaluator::Plan plan(const json &jobs, const json &nodes, const json &allocs = json::object(),
                       const json &statuses = json::object(), bool with_scheduler = true,
                       int64_t now_ms = -1) {
    return Evaluator::plan(jobs, nodes, allocs, statuses, with_scheduler ? sched_ : nullptr, self_,
                           [this](const std::string &j, int i) {
                             return j + "-" + std::to_string(i) + (ids_ ? "-" + std::to_string(ids_++) : "");
                           },
                           now_ms);
  }
  int ids_ = 0;  // non-zero: unique ids (replacements of the same index)
  // Turn a plan's new allocations into the allocs map, as the store would.
  static json apply(json allocs, const Evaluator::Plan &p) {
    // As the evaluator writes them: each new record with its job's spec.
    for (auto a : p.new_allocs) {
      if (p.specs.contains(a["job"].get<std::string>())) a["spec"] = p.specs[a["job"].get<std::string>()];
      allocs[a["id"].get<std::string>()] = a;
    }
    for (const auto &a : p.updated_allocs) allocs[a["id"].get<std::string>()] = a;
    return allocs;
  }

  uv_loop_t loop_{};
  std::string dir_;
  std::unique_ptr<flotilla::PluginHost> host_;
  const flotilla_scheduler_v1 *sched_ = nullptr;
  void *self_ = nullptr;
};

TEST_F(EvaluatorPlan, PlacesEveryMissingAllocationAndIsIdempotent) {
  json jobs = {{"web", job("web", 3)}};
  json nodes = {{"n1", node()}};
  auto p = plan(jobs, nodes);
  ASSERT_EQ(p.new_allocs.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(p.new_allocs[i]["index"], i);
    EXPECT_EQ(p.new_allocs[i]["node"], "n1");
    EXPECT_EQ(p.new_allocs[i]["desired_status"], "run");
    EXPECT_EQ(p.new_allocs[i]["resources"]["cpu_mhz"], 100);
    EXPECT_FALSE(p.new_allocs[i].contains("spec")) << "the spec is the job's, joined when written";
  }
  EXPECT_EQ(p.specs["web"]["name"], "web");
  EXPECT_FALSE(p.specs["web"].contains("mod_revision"));
  auto again = plan(jobs, nodes, apply(json::object(), p));
  EXPECT_TRUE(again.new_allocs.empty());
  EXPECT_TRUE(again.updated_allocs.empty());
}

TEST_F(EvaluatorPlan, ExplainsWhatDoesNotFit) {
  json jobs = {{"big", job("big", 2, 3000, 1024)}};
  auto p = plan(jobs, {{"n1", node(4000, 8192)}});
  EXPECT_EQ(p.new_allocs.size(), 1u);
  ASSERT_TRUE(p.failures.contains("big"));
  EXPECT_EQ(p.failures["big"]["unplaced"], 1);
  EXPECT_EQ(p.failures["big"]["message"], "0/1 nodes fit: 1 cpu exhausted");
}

TEST_F(EvaluatorPlan, WithoutASchedulerSaysWhichPluginToAdd) {
  auto p = plan({{"web", job("web", 1)}}, {{"n1", node()}}, json::object(), json::object(), false);
  EXPECT_TRUE(p.new_allocs.empty());
  EXPECT_NE(p.failures["web"]["message"].get<std::string>().find("[plugin.scheduler-binpack]"),
            std::string::npos);
}

TEST_F(EvaluatorPlan, StoppedJobStopsItsAllocations) {
  json jobs = {{"web", job("web", 2)}};
  json nodes = {{"n1", node()}};
  json allocs = apply(json::object(), plan(jobs, nodes));
  jobs["web"]["stop"] = true;
  auto p = plan(jobs, nodes, allocs);
  EXPECT_TRUE(p.new_allocs.empty());
  ASSERT_EQ(p.updated_allocs.size(), 2u);
  for (const auto &a : p.updated_allocs) {
    EXPECT_EQ(a["desired_status"], "stop");
    EXPECT_EQ(a["desired_description"], "job stopped");
  }
}

TEST_F(EvaluatorPlan, PurgedJobStopsItsAllocations) {
  json nodes = {{"n1", node()}};
  json allocs = apply(json::object(), plan({{"web", job("web", 1)}}, nodes));
  auto p = plan(json::object(), nodes, allocs);
  ASSERT_EQ(p.updated_allocs.size(), 1u);
  EXPECT_EQ(p.updated_allocs[0]["desired_description"], "job purged");
}

TEST_F(EvaluatorPlan, NewJobVersionReplacesOldAllocations) {
  json jobs = {{"web", job("web", 1)}};
  json nodes = {{"n1", node()}};
  json allocs = apply(json::object(), plan(jobs, nodes));
  jobs["web"] = job("web", 1, 200, 64, "service", 2);
  auto p = plan(jobs, nodes, allocs);
  ASSERT_EQ(p.updated_allocs.size(), 1u);
  EXPECT_EQ(p.updated_allocs[0]["desired_status"], "stop");
  ASSERT_EQ(p.new_allocs.size(), 1u);
  EXPECT_EQ(p.new_allocs[0]["job_version"], 2);
  EXPECT_EQ(p.new_allocs[0]["resources"]["cpu_mhz"], 200);
}

// A new leader, or one whose store was away, does not take a missing node
// record for a lost node until every node had a TTL to renew its lease.
TEST_F(EvaluatorPlan, MissingNodesAreNotJudgedLostUntilAllowed) {
  json jobs = {{"web", job("web", 1)}};
  json allocs = apply(json::object(), plan(jobs, {{"n1", node()}}));
  auto p = Evaluator::plan(jobs, {{"n2", node()}}, allocs, json::object(), sched_, self_,
                           [](const std::string &j, int i) { return j + "-" + std::to_string(i); },
                           -1, /*judge_lost_nodes=*/false);
  EXPECT_TRUE(p.updated_allocs.empty());
  EXPECT_TRUE(p.new_allocs.empty()) << "the index is still covered by n1's allocation";
  EXPECT_TRUE(p.lost_nodes_unjudged);
  auto judged = plan(jobs, {{"n2", node()}}, allocs);
  EXPECT_FALSE(judged.lost_nodes_unjudged);
  EXPECT_EQ(judged.updated_allocs.size(), 1u);
}

TEST_F(EvaluatorPlan, LostNodeAllocationsArePlacedElsewhere) {
  json jobs = {{"web", job("web", 1)}};
  json allocs = apply(json::object(), plan(jobs, {{"n1", node()}}));
  auto p = plan(jobs, {{"n2", node()}}, allocs);
  ASSERT_EQ(p.updated_allocs.size(), 1u);
  EXPECT_EQ(p.updated_allocs[0]["desired_description"], "node n1 lost");
  ASSERT_EQ(p.new_allocs.size(), 1u);
  EXPECT_EQ(p.new_allocs[0]["node"], "n2");
}

TEST_F(EvaluatorPlan, CompletedBatchAllocationIsNotRunAgain) {
  json jobs = {{"once", job("once", 1, 100, 64, "batch")}};
  json nodes = {{"n1", node()}};
  json allocs = apply(json::object(), plan(jobs, nodes));
  json statuses = {{"once-0", {{"status", "complete"}}}};
  auto p = plan(jobs, nodes, allocs, statuses);
  EXPECT_TRUE(p.new_allocs.empty());
  EXPECT_TRUE(p.updated_allocs.empty());
}

TEST_F(EvaluatorPlan, UsedCapacityCountsLiveAllocationsOnly) {
  json nodes = {{"n1", node(1000, 8192)}};
  json jobs = {{"a", job("a", 1, 800, 64)}};
  json allocs = apply(json::object(), plan(jobs, nodes));
  jobs["b"] = job("b", 1, 800, 64);
  auto full = plan(jobs, nodes, allocs);
  EXPECT_TRUE(full.new_allocs.empty());  // a still uses 800 of 1000
  json statuses = {{"a-0", {{"status", "failed"}}}};
  auto freed = plan(jobs, nodes, allocs, statuses);
  ASSERT_EQ(freed.new_allocs.size(), 1u);  // a's failed allocation no longer counts
  EXPECT_EQ(freed.new_allocs[0]["job"], "b");
}

TEST_F(EvaluatorPlan, SystemJobRunsOncePerEligibleNode) {
  json nodes = {{"n1", node()}, {"n2", node()}, {"n3", node()}};
  nodes["n3"]["eligible"] = false;
  json jobs = {{"agent", job("agent", 1, 100, 64, "system")}};
  auto p = plan(jobs, nodes);
  ASSERT_EQ(p.new_allocs.size(), 2u);
  EXPECT_EQ(p.new_allocs[0]["node"], "n1");
  EXPECT_EQ(p.new_allocs[1]["node"], "n2");
  EXPECT_TRUE(plan(jobs, nodes, apply(json::object(), p)).new_allocs.empty());
}

// ---- placement rules, drain, reschedule (scheduler issue) -------------------

json with_attrs(json n, json attrs) {
  n["attributes"] = std::move(attrs);
  return n;
}

TEST_F(EvaluatorPlan, ConstraintsAndDatacentersComeFromTheJob) {
  json nodes = {{"a", with_attrs(node(), {{"os", "linux"}, {"datacenter", "dc1"}})},
                {"b", with_attrs(node(), {{"os", "windows"}, {"datacenter", "dc1"}})},
                {"c", with_attrs(node(), {{"os", "linux"}, {"datacenter", "dc2"}})}};
  json j = job("web", 4);
  j["constraint"] = json::array({{{"attribute", "${attr.os}"}, {"operator", "="}, {"value", "linux"}}});
  j["datacenters"] = {"dc1"};
  auto p = plan({{"web", j}}, nodes);
  ASSERT_EQ(p.new_allocs.size(), 4u);
  for (const auto &a : p.new_allocs) EXPECT_EQ(a["node"], "a");
  j["datacenters"] = {"dc9"};
  auto none = plan({{"web", j}}, nodes);
  EXPECT_TRUE(none.new_allocs.empty());
  EXPECT_EQ(none.failures["web"]["message"],
            "0/3 nodes fit: 3 in another datacenter");
  j["datacenters"] = {"dc1", "dc2"};
  j["count"] = 1;
  nodes["a"]["resources"]["memory_mb"] = 32;
  nodes["c"]["attributes"]["os"] = "freebsd";
  EXPECT_EQ(plan({{"web", j}}, nodes).failures["web"]["message"],
            "0/3 nodes fit: 1 memory exhausted, 2 constraint ${attr.os} = \"linux\" failed");
}

TEST_F(EvaluatorPlan, DistinctHostsAndPortsHoldAcrossEvaluations) {
  json nodes = {{"a", node()}, {"b", node()}};
  json j = job("web", 3);
  j["distinct_hosts"] = true;
  json jobs = {{"web", j}};
  auto p = plan(jobs, nodes);
  ASSERT_EQ(p.new_allocs.size(), 2u);
  EXPECT_NE(p.new_allocs[0]["node"], p.new_allocs[1]["node"]);
  EXPECT_NE(p.failures["web"]["message"].get<std::string>().find("distinct_hosts"), std::string::npos);
  // A port taken by one job keeps another job that wants it off that node.
  json k = job("api", 1);
  k["task"][0]["resources"]["ports"] = {8080};
  json l = job("proxy", 2);
  l["task"][0]["resources"]["ports"] = {8080};
  auto q = plan({{"api", k}, {"proxy", l}}, nodes);
  std::set<std::string> on;
  for (const auto &a : q.new_allocs) EXPECT_TRUE(on.insert(a["node"]).second) << "port 8080 twice";
  EXPECT_EQ(q.new_allocs.size(), 2u);  // the third does not fit anywhere
  auto again = plan({{"api", k}, {"proxy", l}}, nodes, apply(json::object(), q));
  EXPECT_TRUE(again.new_allocs.empty());
  EXPECT_NE(again.failures["proxy"]["message"].get<std::string>().find("port 8080 in use"),
            std::string::npos);
}

TEST_F(EvaluatorPlan, DrainedNodeAllocationsArePlacedElsewhere) {
  json nodes = {{"a", node()}};
  json jobs = {{"web", job("web", 2)}};
  json allocs = apply(json::object(), plan(jobs, nodes));
  nodes["b"] = node();
  nodes["a"]["drain"] = true;
  ids_ = 1;
  auto p = plan(jobs, nodes, allocs);
  ASSERT_EQ(p.updated_allocs.size(), 2u);
  for (const auto &a : p.updated_allocs) EXPECT_EQ(a["desired_description"], "node a drained");
  ASSERT_EQ(p.new_allocs.size(), 2u);
  for (const auto &a : p.new_allocs) EXPECT_EQ(a["node"], "b");
}

TEST_F(EvaluatorPlan, SystemJobFollowsNodesAsTheyJoinAndHonoursConstraints) {
  json nodes = {{"a", with_attrs(node(), {{"os", "linux"}})}};
  json j = job("agent", 1, 100, 64, "system");
  j["constraint"] = json::array({{{"attribute", "${attr.os}"}, {"operator", "="}, {"value", "linux"}}});
  json jobs = {{"agent", j}};
  json allocs = apply(json::object(), plan(jobs, nodes));
  ASSERT_EQ(allocs.size(), 1u);
  nodes["b"] = with_attrs(node(), {{"os", "linux"}});
  nodes["c"] = with_attrs(node(), {{"os", "windows"}});
  auto p = plan(jobs, nodes, allocs);
  ASSERT_EQ(p.new_allocs.size(), 1u);
  EXPECT_EQ(p.new_allocs[0]["node"], "b");
}

TEST_F(EvaluatorPlan, FailedAllocationIsRescheduledAfterAnExponentialDelay) {
  json nodes = {{"a", node()}};
  json j = job("web", 1);
  j["reschedule"] = {{"attempts", 0},  {"interval_ms", 3600000}, {"delay_ms", 10000},
                     {"delay_function", "exponential"}, {"max_delay_ms", 30000}, {"unlimited", true}};
  json jobs = {{"web", j}};
  json allocs = apply(json::object(), plan(jobs, nodes));
  const int64_t t0 = 1790000000000;  // 2026-09-21T14:13:20Z, when it failed
  json statuses = {{"web-0", {{"status", "failed"}, {"updated_at", "2026-09-21T14:13:20.000Z"}}}};
  // Before the delay: nothing happens, but the evaluator is told when to look again.
  auto early = plan(jobs, nodes, allocs, statuses, true, t0 + 9999);
  EXPECT_TRUE(early.new_allocs.empty());
  EXPECT_TRUE(early.updated_allocs.empty());
  EXPECT_EQ(early.next_evaluation_ms, t0 + 10000);
  // After it: the failed one is stopped and replaced, with its history.
  ids_ = 1;
  auto due = plan(jobs, nodes, allocs, statuses, true, t0 + 10000);
  ASSERT_EQ(due.updated_allocs.size(), 1u);
  EXPECT_EQ(due.updated_allocs[0]["desired_description"], "failed; rescheduled");
  ASSERT_EQ(due.new_allocs.size(), 1u);
  const json &second = due.new_allocs[0];
  EXPECT_EQ(second["index"], 0);
  EXPECT_EQ(second["previous_alloc"], "web-0");
  EXPECT_EQ(second["reschedule"]["attempts"], 1);
  // The replacement fails too: the delay doubles (20 s), then stays at max_delay.
  allocs = apply(allocs, due);
  const std::string id2 = second["id"];
  statuses[id2] = {{"status", "failed"}, {"updated_at", "2026-09-21T14:13:40.000Z"}};  // t0 + 20 s
  auto second_wait = plan(jobs, nodes, allocs, statuses, true, t0 + 20000);
  EXPECT_TRUE(second_wait.new_allocs.empty());
  EXPECT_EQ(second_wait.next_evaluation_ms, t0 + 20000 + 20000);
  json third = second;
  third["reschedule"]["attempts"] = 5;
  allocs[id2] = third;
  EXPECT_EQ(plan(jobs, nodes, allocs, statuses, true, t0 + 20000).next_evaluation_ms,
            t0 + 20000 + 30000);
}

TEST_F(EvaluatorPlan, RescheduleStopsAfterItsAttemptsWithinTheInterval) {
  json nodes = {{"a", node()}};
  json j = job("once", 1, 100, 64, "batch");
  j["reschedule"] = {{"attempts", 1},  {"interval_ms", 3600000}, {"delay_ms", 0},
                     {"delay_function", "constant"}, {"max_delay_ms", 0}, {"unlimited", false}};
  json jobs = {{"once", j}};
  const int64_t now = 1790000000000;
  json allocs = apply(json::object(), plan(jobs, nodes));
  json statuses = {{"once-0", {{"status", "failed"}, {"updated_at", "2026-09-21T14:13:20.000Z"}}}};
  ids_ = 1;
  auto first = plan(jobs, nodes, allocs, statuses, true, now);
  ASSERT_EQ(first.new_allocs.size(), 1u);  // the one attempt
  allocs = apply(allocs, first);
  statuses[first.new_allocs[0]["id"].get<std::string>()] = {{"status", "failed"},
                                                            {"updated_at", "2026-09-21T14:13:20.000Z"}};
  auto spent = plan(jobs, nodes, allocs, statuses, true, now + 1000);
  EXPECT_TRUE(spent.new_allocs.empty());
  EXPECT_NE(spent.failures["once"]["message"].get<std::string>().find("used its 1 reschedule attempts"),
            std::string::npos);
  // Outside the interval the attempt counts no more.
  auto later = plan(jobs, nodes, allocs, statuses, true, now + 3600000 + 1000);
  EXPECT_EQ(later.new_allocs.size(), 1u);
}

TEST_F(EvaluatorPlan, SpreadAndAffinityReachTheScheduler) {
  json nodes = {{"a", with_attrs(node(), {{"datacenter", "dc1"}, {"disk", "hdd"}})},
                {"b", with_attrs(node(), {{"datacenter", "dc2"}, {"disk", "ssd"}})}};
  json j = job("web", 4);
  j["spread"] = json::array({{{"attribute", "${node.datacenter}"}, {"weight", 100},
                              {"target", json::array({{{"value", "dc1"}, {"percent", 75}},
                                                      {{"value", "dc2"}, {"percent", 25}}})}}});
  auto p = plan({{"web", j}}, nodes);
  int on_a = 0;
  for (const auto &a : p.new_allocs) on_a += a["node"] == "a";
  EXPECT_EQ(on_a, 3);
  json k = job("db", 1);
  k["affinity"] = json::array({{{"attribute", "${attr.disk}"}, {"operator", "="}, {"value", "ssd"}, {"weight", 100}}});
  auto q = plan({{"db", k}}, nodes);
  ASSERT_EQ(q.new_allocs.size(), 1u);
  EXPECT_EQ(q.new_allocs[0]["node"], "b");
}

TEST_F(EvaluatorPlan, RollingUpdateReplacesMaxParallelAtATimeOnceHealthy) {
  json nodes = {{"a", node(8000, 16384)}};
  json jobs = {{"web", job("web", 4)}};
  json allocs = apply(json::object(), plan(jobs, nodes));
  json v2 = job("web", 4, 200, 64, "service", 2);
  v2["update"] = {{"max_parallel", 2}, {"min_healthy_time_ms", 10000},
                  {"healthy_deadline_ms", 300000}, {"auto_revert", false}};
  jobs["web"] = v2;
  const int64_t now = 1790000000000;  // 2026-09-21T14:13:20Z
  ids_ = 1;
  auto step1 = plan(jobs, nodes, allocs, json::object(), true, now);
  EXPECT_EQ(step1.updated_allocs.size(), 2u);
  ASSERT_EQ(step1.new_allocs.size(), 2u);
  allocs = apply(allocs, step1);
  for (auto &[id, a] : allocs.items())
    if (a["job_version"] == 2) a["created_at"] = "2026-09-21T14:13:20Z";
  // The new ones run but not yet for min_healthy_time: nothing more.
  json statuses = json::object();
  for (const auto &a : step1.new_allocs)
    statuses[a["id"].get<std::string>()] = {
        {"status", "running"}, {"tasks", {{"t", {{"started_at", "2026-09-21T14:13:25.000Z"}}}}}};
  auto wait = plan(jobs, nodes, allocs, statuses, true, now + 10000);
  EXPECT_TRUE(wait.updated_allocs.empty());
  EXPECT_TRUE(wait.new_allocs.empty());
  EXPECT_EQ(wait.next_evaluation_ms, now + 5000 + 10000);
  // Healthy: the next two old ones go.
  auto step2 = plan(jobs, nodes, allocs, statuses, true, now + 15000);
  EXPECT_EQ(step2.updated_allocs.size(), 2u);
  EXPECT_EQ(step2.new_allocs.size(), 2u);
  for (const auto &a : step2.updated_allocs) EXPECT_EQ(a["job_version"], 1);
}

TEST_F(EvaluatorPlan, FailedRollingUpdateStopsOrRevertsToThePreviousSpec) {
  json nodes = {{"a", node(8000, 16384)}};
  json jobs = {{"web", job("web", 3)}};
  json allocs = apply(json::object(), plan(jobs, nodes));
  json v2 = job("web", 3, 300, 64, "service", 2);
  v2["update"] = {{"max_parallel", 1}, {"min_healthy_time_ms", 10000},
                  {"healthy_deadline_ms", 300000}, {"auto_revert", false}};
  jobs["web"] = v2;
  ids_ = 1;
  auto step1 = plan(jobs, nodes, allocs);
  ASSERT_EQ(step1.new_allocs.size(), 1u);
  allocs = apply(allocs, step1);
  json statuses = {{step1.new_allocs[0]["id"].get<std::string>(), {{"status", "failed"}}}};
  auto stopped = plan(jobs, nodes, allocs, statuses);
  EXPECT_TRUE(stopped.job_updates.empty());
  for (const auto &a : stopped.updated_allocs) EXPECT_NE(a["job_version"], 1) << "old replaced";
  EXPECT_NE(stopped.failures["web"]["message"].get<std::string>().find("update to version 2 stopped"),
            std::string::npos);
  jobs["web"]["update"]["auto_revert"] = true;
  auto reverted = plan(jobs, nodes, allocs, statuses);
  ASSERT_EQ(reverted.job_updates.size(), 1u);
  EXPECT_EQ(reverted.job_updates[0]["version"], 3);
  EXPECT_EQ(reverted.job_updates[0]["reverted_from"], 2);
  EXPECT_EQ(reverted.job_updates[0]["task"][0]["resources"]["cpu"], 100);  // version 1's spec
}

// Status reports of "pending" wake no evaluation (two or three come with
// every container start); that holds only while plan() treats a pending
// report as no report, which this checks for placement, a batch job and a
// rolling update in progress.
TEST_F(EvaluatorPlan, PendingStatusPlansAsNoStatusAndWakesNoEvaluation) {
  auto event = [](const std::string &value, bool remove = false) {
    flotilla::StoreEvent e;
    e.type = remove ? flotilla::StoreEvent::Type::remove : flotilla::StoreEvent::Type::put;
    e.kv.key = "/flotilla/alloc-status/web-0";
    e.kv.value = value;
    return e;
  };
  EXPECT_FALSE(Evaluator::status_wakes_evaluation(event(R"({"status":"pending"})")));
  for (const char *st : {"running", "failed", "complete", "lost"})
    EXPECT_TRUE(
        Evaluator::status_wakes_evaluation(event(std::string(R"({"status":")") + st + R"("})")))
        << st;
  EXPECT_TRUE(Evaluator::status_wakes_evaluation(event("{not json")));
  EXPECT_TRUE(Evaluator::status_wakes_evaluation(event("", true)));

  auto same = [](const Evaluator::Plan &a, const Evaluator::Plan &b) {
    EXPECT_EQ(json(a.new_allocs), json(b.new_allocs));
    EXPECT_EQ(json(a.updated_allocs), json(b.updated_allocs));
    EXPECT_EQ(a.failures, b.failures);
    EXPECT_EQ(a.next_evaluation_ms, b.next_evaluation_ms);
    EXPECT_EQ(json(a.job_updates), json(b.job_updates));
  };
  const int64_t now = 1790000000000;
  json nodes = {{"a", node(8000, 16384)}};
  json jobs = {{"web", job("web", 3)}, {"once", job("once", 1, 100, 64, "batch")}};
  json allocs = apply(json::object(), plan(jobs, nodes));
  json pending = json::object();
  for (auto it = allocs.begin(); it != allocs.end(); ++it)
    pending[it.key()] = {{"status", "pending"}, {"updated_at", "2026-09-21T14:13:20.000Z"}};
  same(plan(jobs, nodes, allocs, pending, true, now),
       plan(jobs, nodes, allocs, json::object(), true, now));
  // A rolling update half way: the new allocations reported pending.
  json v2 = job("web", 3, 200, 64, "service", 2);
  v2["update"] = {{"max_parallel", 1},
                  {"min_healthy_time_ms", 10000},
                  {"healthy_deadline_ms", 300000},
                  {"auto_revert", true}};
  jobs["web"] = v2;
  ids_ = 1;
  auto step1 = plan(jobs, nodes, allocs, json::object(), true, now);
  ASSERT_EQ(step1.new_allocs.size(), 1u);
  allocs = apply(allocs, step1);
  for (auto &[id, a] : allocs.items())
    if (a["job_version"] == 2) a["created_at"] = "2026-09-21T14:13:20Z";
  pending[step1.new_allocs[0]["id"].get<std::string>()] = {{"status", "pending"}};
  ids_ = 100;
  auto with = plan(jobs, nodes, allocs, pending, true, now + 1000);
  ids_ = 100;
  same(with, plan(jobs, nodes, allocs, json::object(), true, now + 1000));
  EXPECT_TRUE(with.new_allocs.empty()) << "one in flight, max_parallel 1";
}

}  // namespace
