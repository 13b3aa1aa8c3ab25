// Evaluator::plan with the real scheduler-binpack plugin: what one
// evaluation places, stops and explains.
#include <gtest/gtest.h>
#include <uv.h>

#include <filesystem>

#include "evaluator.h"

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
                       const json &statuses = json::object(), bool with_scheduler = true) {
    return Evaluator::plan(jobs, nodes, allocs, statuses, with_scheduler ? sched_ : nullptr, self_,
                           [](const std::string &j, int i) { return j + "-" + std::to_string(i); });
  }
  // Turn a plan's new allocations into the allocs map, as the store would.
  static json apply(json allocs, const Evaluator::Plan &p) {
    for (const auto &a : p.new_allocs) allocs[a["id"].get<std::string>()] = a;
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
    EXPECT_EQ(p.new_allocs[i]["spec"]["name"], "web");
  }
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

}  // namespace
