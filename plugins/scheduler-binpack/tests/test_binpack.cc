// scheduler-binpack: the engine on one node and on synthetic clusters, and
// the plugin through the real PluginHost.
#include <flotilla/flotilla.h>
#include <gtest/gtest.h>
#include <uv.h>

#include <filesystem>
#include <random>

#include "../binpack.h"
#include "plugin_host.h"

using flotilla::binpack::Explanation;
using flotilla::binpack::Node;
using flotilla::binpack::place;
using flotilla::binpack::Resources;

namespace {

Node node(int64_t cpu, int64_t mem, int64_t disk = 100000) { return {{cpu, mem, disk}, {}, true}; }

TEST(Binpack, OneNodeTakesWhatFitsAndNoMore) {
  std::vector<Node> nodes{node(1000, 1024)};
  std::vector<int64_t> out;
  auto why = place(nodes, {{400, 256}, {400, 256}, {400, 256}}, out);
  EXPECT_EQ(out, (std::vector<int64_t>{0, 0, -1}));
  EXPECT_EQ(why.nodes, 1u);
  EXPECT_EQ(why.cpu_exhausted, 1u);
  EXPECT_EQ(why.memory_exhausted, 0u);
  EXPECT_EQ(why.to_text(), "0/1 nodes fit: 1 cpu exhausted");
}

TEST(Binpack, PrefersTheFullestNodeThatFits) {
  std::vector<Node> nodes{node(4000, 8192), node(4000, 8192), node(4000, 8192)};
  nodes[1].used = {3000, 6000, 0};  // the fullest
  nodes[2].used = {1000, 1000, 0};
  std::vector<int64_t> out;
  place(nodes, {{500, 512}}, out);
  EXPECT_EQ(out[0], 1);
  // An ask that does not fit on the fullest goes to the next fullest.
  place(nodes, {{2000, 2048}}, out);
  EXPECT_EQ(out[0], 2);
}

TEST(Binpack, BestFitLeavesRoomForALargeAskLater) {
  std::vector<Node> nodes{node(4000, 4096), node(2000, 2048)};
  std::vector<int64_t> out;
  // The small ask goes to the small node, so the large one still fits.
  place(nodes, {{1000, 1024}, {4000, 4096}}, out);
  EXPECT_EQ(out, (std::vector<int64_t>{1, 0}));
}

TEST(Binpack, SkipsIneligibleAndExplainsEachDimension) {
  std::vector<Node> nodes{node(1000, 512), node(8000, 256), node(8000, 8192)};
  nodes[2].eligible = false;
  std::vector<int64_t> out;
  auto why = place(nodes, {{2000, 1024}}, out);
  EXPECT_EQ(out[0], -1);
  EXPECT_EQ(why.ineligible, 1u);
  EXPECT_EQ(why.cpu_exhausted, 1u);
  EXPECT_EQ(why.memory_exhausted, 2u);
  EXPECT_EQ(why.to_text(), "0/3 nodes fit: 1 cpu exhausted, 2 memory exhausted, 1 ineligible");
}

TEST(Binpack, TiesGoToTheLowerIndexDeterministically) {
  std::vector<Node> nodes{node(1000, 1000), node(1000, 1000)};
  std::vector<int64_t> out;
  place(nodes, {{100, 100}}, out);
  EXPECT_EQ(out[0], 0);
}

TEST(Binpack, RandomClustersNeverOvercommit) {
  std::mt19937_64 rng(42);
  for (int round = 0; round < 200; ++round) {
    std::vector<Node> nodes(1 + rng() % 20);
    for (auto &n : nodes) {
      n = node(500 + rng() % 8000, 256 + rng() % 16384, 1000 + rng() % 50000);
      n.used = {static_cast<int64_t>(rng() % 400), static_cast<int64_t>(rng() % 200), 0};
      n.eligible = rng() % 10 != 0;
    }
    std::vector<Resources> asks(rng() % 60);
    for (auto &a : asks)
      a = {static_cast<int64_t>(1 + rng() % 2000), static_cast<int64_t>(1 + rng() % 4096),
           static_cast<int64_t>(rng() % 1000)};
    std::vector<int64_t> out;
    place(nodes, asks, out);
    std::vector<Resources> used(nodes.size());
    for (size_t i = 0; i < nodes.size(); ++i) used[i] = nodes[i].used;
    for (size_t a = 0; a < asks.size(); ++a) {
      if (out[a] < 0) continue;
      ASSERT_TRUE(nodes[out[a]].eligible);
      used[out[a]].cpu_mhz += asks[a].cpu_mhz;
      used[out[a]].memory_mb += asks[a].memory_mb;
      used[out[a]].disk_mb += asks[a].disk_mb;
    }
    for (size_t i = 0; i < nodes.size(); ++i) {
      EXPECT_LE(used[i].cpu_mhz, nodes[i].capacity.cpu_mhz);
      EXPECT_LE(used[i].memory_mb, nodes[i].capacity.memory_mb);
      EXPECT_LE(used[i].disk_mb, nodes[i].capacity.disk_mb);
    }
    // An unplaced ask really fits nowhere, given what was placed before it.
  }
}

TEST(BinpackPlugin, PlacesThroughTheAbi) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  char tmpl[] = "/tmp/flotilla-binpack-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  {
    flotilla::PluginHost host(&loop, {"n", tmpl, "(test)"});
    flotilla::PluginSettings s;
    s.name = "scheduler-binpack";
    s.path = SCHEDULER_BINPACK_PATH;
    host.start({s});
    void *self = nullptr;
    auto *vt = host.find<flotilla_scheduler_v1>(FLOTILLA_SCHEDULER_INTERFACE_ID, &self);
    ASSERT_NE(vt, nullptr);
    flotilla_sched_node nodes[2] = {};
    const char *names[2] = {"a", "b"};
    for (int i = 0; i < 2; ++i) {
      nodes[i].struct_size = sizeof nodes[i];
      nodes[i].name = names[i];
      nodes[i].capacity = {sizeof(flotilla_resources), 2000, 2048, 10000};
      nodes[i].used = {sizeof(flotilla_resources), i == 1 ? 1500 : 0, 0, 0};
      nodes[i].eligible = 1;
    }
    flotilla_sched_ask asks[2] = {};
    for (int i = 0; i < 2; ++i) {
      asks[i].struct_size = sizeof asks[i];
      asks[i].job = "web";
      asks[i].group = "web";
      asks[i].index = i;
      asks[i].resources = {sizeof(flotilla_resources), 500, 256, 0};
    }
    flotilla_sched_placement placements[2];
    flotilla_buf explain{};
    ASSERT_EQ(vt->place(self, nodes, 2, asks, 2, placements, &explain), FLOTILLA_OK);
    EXPECT_EQ(placements[0].node_index, 1);  // the fuller node
    EXPECT_EQ(placements[1].node_index, 0);  // b is full now
    EXPECT_EQ(explain.data, nullptr);

    asks[0].resources.memory_mb = 1 << 20;
    ASSERT_EQ(vt->place(self, nodes, 2, asks, 1, placements, &explain), FLOTILLA_OK);
    EXPECT_EQ(placements[0].node_index, -1);
    ASSERT_NE(explain.data, nullptr);
    EXPECT_NE(std::string(explain.data, explain.len).find("2 memory exhausted"), std::string::npos);
    explain.release(&explain);
  }
  uv_run(&loop, UV_RUN_NOWAIT);
  uv_loop_close(&loop);
  std::filesystem::remove_all(tmpl);
}

}  // namespace
