// scheduler-binpack: the engine on one node and on synthetic clusters, and
// the plugin through the real PluginHost.
#include <flotilla/flotilla.h>
#include <gtest/gtest.h>
#include <uv.h>

#include <filesystem>
#include <map>
#include <random>
#include <set>

#include "../binpack.h"
#include "plugin_host.h"

using flotilla::binpack::Explanation;
using flotilla::binpack::Node;
using flotilla::binpack::place;
using flotilla::binpack::Resources;

namespace {

Node node(int64_t cpu, int64_t mem, int64_t disk = 100000) {
  Node n;
  n.capacity = {cpu, mem, disk};
  return n;
}

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


// ---- feasibility rules ------------------------------------------------------

using flotilla::binpack::Affinity;
using flotilla::binpack::check_constraint;
using flotilla::binpack::Cluster;
using flotilla::binpack::compare_versions;
using flotilla::binpack::Constraint;
using flotilla::binpack::Group;
using flotilla::binpack::Options;
using flotilla::binpack::Spread;

Node attr_node(std::map<std::string, std::string> attrs, int64_t cpu = 4000, int64_t mem = 8192) {
  Node n = node(cpu, mem);
  n.attributes = std::move(attrs);
  return n;
}

// Whether a one-node cluster accepts a group with this one constraint.
bool accepts(const Node &n, const Constraint &c) {
  Cluster cluster({n});
  Group g;
  g.resources = {100, 100, 0};
  g.constraints = {c};
  return cluster.place(g, 1)[0] == 0;
}

TEST(Constraints, EqualityAndInequality) {
  Node n = attr_node({{"os", "linux"}});
  EXPECT_TRUE(accepts(n, {"${attr.os}", "=", "linux"}));
  EXPECT_TRUE(accepts(n, {"${attr.os}", "==", "linux"}));
  EXPECT_FALSE(accepts(n, {"${attr.os}", "=", "windows"}));
  EXPECT_TRUE(accepts(n, {"${attr.os}", "!=", "windows"}));
  EXPECT_FALSE(accepts(n, {"${attr.os}", "!=", "linux"}));
  // An unset attribute differs from every value and equals none.
  EXPECT_TRUE(accepts(n, {"${attr.rack}", "!=", "r1"}));
  EXPECT_FALSE(accepts(n, {"${attr.rack}", "=", "r1"}));
}

TEST(Constraints, OrderComparesNumbersAsNumbersAndTextAsText) {
  Node n = attr_node({{"cores", "16"}, {"zone", "b"}});
  EXPECT_TRUE(accepts(n, {"${attr.cores}", ">", "8"}));  // as text "16" < "8"
  EXPECT_FALSE(accepts(n, {"${attr.cores}", "<", "8"}));
  EXPECT_TRUE(accepts(n, {"${attr.cores}", ">=", "16"}));
  EXPECT_TRUE(accepts(n, {"${attr.cores}", "<=", "16"}));
  EXPECT_FALSE(accepts(n, {"${attr.cores}", "<", "16"}));
  EXPECT_TRUE(accepts(n, {"${attr.zone}", ">", "a"}));
  EXPECT_FALSE(accepts(n, {"${attr.zone}", ">", "c"}));
}

TEST(Constraints, VersionComparesSegmentsNumerically) {
  EXPECT_EQ(compare_versions("1.10.0", "1.9.3"), 1);
  EXPECT_EQ(compare_versions("6.1.0-28-amd64", "6.1"), 0);
  EXPECT_EQ(compare_versions("v2", "2.0.0"), 0);
  EXPECT_EQ(compare_versions("5.4", "5.10"), -1);
  Node n = attr_node({{"kernel", "6.1.0-28-amd64"}});
  EXPECT_TRUE(accepts(n, {"${attr.kernel}", "version", ">= 5.10, < 7"}));
  EXPECT_FALSE(accepts(n, {"${attr.kernel}", "version", ">= 6.2"}));
  EXPECT_TRUE(accepts(n, {"${attr.kernel}", "version", "6.1"}));
}

TEST(Constraints, RegexpSetContainsIsSet) {
  Node n = attr_node({{"arch", "x86_64"}, {"features", "avx2, sse4,aes"}});
  EXPECT_TRUE(accepts(n, {"${attr.arch}", "regexp", "^x86"}));
  EXPECT_FALSE(accepts(n, {"${attr.arch}", "regexp", "^arm"}));
  EXPECT_TRUE(accepts(n, {"${attr.features}", "set_contains", "aes,avx2"}));
  EXPECT_FALSE(accepts(n, {"${attr.features}", "set_contains", "aes,avx512"}));
  EXPECT_TRUE(accepts(n, {"${attr.arch}", "is_set", ""}));
  EXPECT_FALSE(accepts(n, {"${attr.gpu}", "is_set", ""}));
  EXPECT_TRUE(accepts(n, {"${attr.gpu}", "is_not_set", ""}));
  EXPECT_FALSE(accepts(n, {"${attr.arch}", "is_not_set", ""}));
}

TEST(Constraints, NodeNameDatacenterAndPoolReferences) {
  Node n = attr_node({{"datacenter", "dc2"}});
  n.name = "worker-7";
  EXPECT_TRUE(accepts(n, {"${node.name}", "regexp", "^worker-[0-9]+$"}));
  EXPECT_TRUE(accepts(n, {"${node.datacenter}", "=", "dc2"}));
  EXPECT_TRUE(accepts(n, {"${node.pool}", "=", "default"}));  // unset pool is "default"
}

TEST(Constraints, MalformedOnesAreRefusedWithTheReason) {
  EXPECT_FALSE(check_constraint({"${attr.os}", "=", "linux"}).has_value());
  EXPECT_NE(check_constraint({"${attr.os}", "~=", "x"})->find("not an operator"), std::string::npos);
  EXPECT_NE(check_constraint({"${attr.k}", "version", "newest"})->find("not a version condition"),
            std::string::npos);
  EXPECT_NE(check_constraint({"${attr.k}", "regexp", "(["})->find("not a regular expression"),
            std::string::npos);
  EXPECT_TRUE(check_constraint({"", "=", "x"}).has_value());
}

TEST(Feasibility, DatacenterPoolPortsDevicesAndDistinctHosts) {
  std::vector<Node> nodes{attr_node({{"datacenter", "dc1"}}), attr_node({{"datacenter", "dc2"}}),
                          attr_node({{"datacenter", "dc1"}, {"pool", "gpu"}})};
  nodes[2].devices = {{"nvidia/gpu", 2}};
  {
    Cluster c(nodes);
    Group g;
    g.resources = {100, 100, 0};
    g.datacenters = {"dc2"};
    EXPECT_EQ(c.place(g, 1)[0], 1);
  }
  {
    Cluster c(nodes);
    Group g;
    g.resources = {100, 100, 0};
    g.pool = "gpu";
    EXPECT_EQ(c.place(g, 1)[0], 2);
  }
  {
    Cluster c(nodes);
    Group g;
    g.resources = {100, 100, 0};
    g.devices = {{"nvidia/gpu", 1}};
    Explanation why;
    EXPECT_EQ(c.place(g, 3, &why), (std::vector<int64_t>{2, 2, -1}));
    EXPECT_EQ(why.to_text(), "0/3 nodes fit: 3 device nvidia/gpu exhausted");
  }
  {
    Cluster c(nodes);
    Group g;
    g.resources = {100, 100, 0};
    g.ports = {8080};
    Explanation why;
    auto out = c.place(g, 4, &why);
    std::set<int64_t> used(out.begin(), out.begin() + 3);
    EXPECT_EQ(used, (std::set<int64_t>{0, 1, 2}));  // one per node: the port is taken after
    EXPECT_EQ(out[3], -1);
    EXPECT_EQ(why.to_text(), "0/3 nodes fit: 3 port 8080 in use");
  }
  {
    Cluster c(nodes);
    Group g;
    g.resources = {100, 100, 0};
    g.distinct_hosts = true;
    g.existing = {1, 0, 0};  // already one on node 0
    Explanation why;
    auto out = c.place(g, 3, &why);
    EXPECT_EQ(std::set<int64_t>(out.begin(), out.begin() + 2), (std::set<int64_t>{1, 2}));
    EXPECT_EQ(out[2], -1);
    EXPECT_EQ(why.to_text(), "0/3 nodes fit: 3 already run this job (distinct_hosts)");
  }
}

TEST(Feasibility, ExplainsPerDimensionAndPerConstraint) {
  std::vector<Node> nodes;
  for (int i = 0; i < 9; ++i) nodes.push_back(attr_node({{"os", "linux"}}, 4000, 512));
  for (int i = 0; i < 3; ++i) nodes.push_back(attr_node({{"os", "windows"}}, 4000, 8192));
  Cluster c(nodes);
  Group g;
  g.resources = {100, 1024, 0};
  g.constraints = {{"${attr.os}", "=", "linux"}};
  Explanation why;
  EXPECT_EQ(c.place(g, 1, &why)[0], -1);
  EXPECT_EQ(why.to_text(),
            "0/12 nodes fit: 9 memory exhausted, 3 constraint ${attr.os} = \"linux\" failed");
  std::string j = why.to_json();
  EXPECT_NE(j.find("\"constraints\":{\"${attr.os} = \\\"linux\\\"\":3}"), std::string::npos) << j;
  EXPECT_NE(j.find("\"memory\":9"), std::string::npos) << j;
}

TEST(Feasibility, ExplainsDatacenterPoolAndEmptyCluster) {
  std::vector<Node> nodes{attr_node({{"datacenter", "dc1"}}), attr_node({{"datacenter", "dc2"}, {"pool", "batch"}})};
  Cluster c(nodes);
  Group g;
  g.resources = {100, 100, 0};
  g.datacenters = {"dc2"};
  g.pool = "default";
  Explanation why;
  EXPECT_EQ(c.place(g, 1, &why)[0], -1);
  EXPECT_EQ(why.to_text(), "0/2 nodes fit: 1 in another datacenter, 1 in another pool");
  Cluster empty({});
  Explanation none;
  EXPECT_EQ(empty.place(g, 1, &none)[0], -1);
  EXPECT_TRUE(none.failed());
  EXPECT_EQ(none.to_text(), "0/0 nodes fit");
}

// ---- scores -----------------------------------------------------------------

TEST(Scores, AntiAffinitySpreadsAJobOverEqualNodes) {
  std::vector<Node> nodes{node(4000, 8192), node(4000, 8192)};
  Group g;
  g.job = "web";
  g.resources = {100, 100, 0};
  Cluster spread(nodes);
  auto out = spread.place(g, 2);
  EXPECT_NE(out[0], out[1]);
  Cluster packed(nodes, Options{4, 0.0});  // no penalty: best fit packs both on one node
  out = packed.place(g, 2);
  EXPECT_EQ(out[0], out[1]);
}

TEST(Scores, AffinityPrefersMatchingNodesAndNegativeWeightAvoidsThem) {
  std::vector<Node> nodes{attr_node({{"disk", "hdd"}}), attr_node({{"disk", "ssd"}})};
  nodes[0].used = {2000, 4000, 0};  // best fit alone would pick node 0
  Group g;
  g.resources = {100, 100, 0};
  g.affinities = {Affinity{{"${attr.disk}", "=", "ssd"}, 50}};
  Cluster c1(nodes);
  EXPECT_EQ(c1.place(g, 1)[0], 1);
  g.affinities = {Affinity{{"${attr.disk}", "=", "hdd"}, -50}};
  Cluster c2(nodes);
  EXPECT_EQ(c2.place(g, 1)[0], 1);
  g.affinities.clear();
  Cluster c3(nodes);
  EXPECT_EQ(c3.place(g, 1)[0], 0);
}

TEST(Scores, SpreadFollowsTargetPercentages) {
  std::vector<Node> nodes;
  for (int i = 0; i < 4; ++i) nodes.push_back(attr_node({{"datacenter", i < 2 ? "dc1" : "dc2"}}));
  Group g;
  g.resources = {100, 100, 0};
  g.spreads = {Spread{"${node.datacenter}", 100, {{"dc1", 70}, {"dc2", 30}}}};
  Cluster c(nodes);
  auto out = c.place(g, 10);
  int dc1 = 0;
  for (auto n : out) dc1 += n < 2;
  EXPECT_EQ(dc1, 7);
}

TEST(Scores, EvenSpreadCountsExistingAllocations) {
  std::vector<Node> nodes{attr_node({{"rack", "a"}}), attr_node({{"rack", "b"}}),
                          attr_node({{"rack", "c"}})};
  Group g;
  g.resources = {100, 100, 0};
  g.spreads = {Spread{"${attr.rack}", 50, {}}};
  g.existing = {2, 0, 0};
  Cluster c(nodes);
  auto out = c.place(g, 4);  // 6 in all: 2 per rack
  std::map<int64_t, int> per;
  for (auto n : out) per[n]++;
  EXPECT_EQ(per[0], 0);
  EXPECT_EQ(per[1], 2);
  EXPECT_EQ(per[2], 2);
}

// ---- properties -------------------------------------------------------------

// Random clusters and groups: no dimension, port or device is ever
// over-committed, every placement satisfies the group's constraints,
// datacenters and distinct_hosts, an unplaced allocation really fits
// nowhere, and spread counts end within one of their targets.
TEST(Properties, RandomClustersKeepEveryRule) {
  std::mt19937_64 rng(20261125);
  const char *oses[] = {"linux", "freebsd"};
  const char *dcs[] = {"dc1", "dc2", "dc3"};
  for (int round = 0; round < 300; ++round) {
    std::vector<Node> nodes(1 + rng() % 40);
    for (size_t i = 0; i < nodes.size(); ++i) {
      Node &n = nodes[i];
      n = node(500 + rng() % 8000, 256 + rng() % 16384, 1000 + rng() % 50000);
      n.used = {static_cast<int64_t>(rng() % 400), static_cast<int64_t>(rng() % 200), 0};
      n.eligible = rng() % 10 != 0;
      n.name = "n" + std::to_string(i);
      n.attributes = {{"os", oses[rng() % 2]}, {"datacenter", dcs[rng() % 3]},
                      {"cores", std::to_string(1 << (rng() % 6))}};
      if (rng() % 3 == 0) n.ports_used = {8080};
      if (rng() % 2) n.devices = {{"gpu", static_cast<int64_t>(rng() % 3)}};
    }
    Cluster cluster(nodes, Options{1 + static_cast<int>(rng() % 8), 0.5});
    std::vector<Resources> free(nodes.size());
    std::vector<std::set<int>> ports(nodes.size());
    std::vector<int64_t> gpus(nodes.size());
    for (size_t i = 0; i < nodes.size(); ++i) {
      free[i] = {nodes[i].capacity.cpu_mhz - nodes[i].used.cpu_mhz,
                 nodes[i].capacity.memory_mb - nodes[i].used.memory_mb,
                 nodes[i].capacity.disk_mb - nodes[i].used.disk_mb};
      ports[i] = {nodes[i].ports_used.begin(), nodes[i].ports_used.end()};
      gpus[i] = nodes[i].devices.count("gpu") ? nodes[i].devices.at("gpu") : 0;
    }
    for (int gi = 0; gi < 4; ++gi) {
      Group g;
      g.job = "j" + std::to_string(gi);
      g.resources = {static_cast<int64_t>(1 + rng() % 2000), static_cast<int64_t>(1 + rng() % 4096),
                     static_cast<int64_t>(rng() % 1000)};
      if (rng() % 2) g.constraints.push_back({"${attr.os}", "=", oses[rng() % 2]});
      if (rng() % 3 == 0) g.constraints.push_back({"${attr.cores}", ">=", "4"});
      if (rng() % 3 == 0) g.datacenters = {dcs[rng() % 3], dcs[rng() % 3]};
      if (rng() % 4 == 0) g.ports = {8080};
      if (rng() % 4 == 0) g.devices = {{"gpu", 1}};
      g.distinct_hosts = rng() % 4 == 0;
      const bool spread = rng() % 4 == 0;
      if (spread) {
        g.spreads = {Spread{"${node.datacenter}", 100, {{"dc1", 50}, {"dc2", 30}, {"dc3", 20}}}};
        g.resources = {1, 1, 0};  // small: capacity never limits the spread
        g.constraints.clear();
        g.datacenters.clear();
        g.ports.clear();
        g.devices.clear();
        g.distinct_hosts = false;
      }
      if (rng() % 5 == 0) g.affinities = {Affinity{{"${attr.os}", "=", "linux"}, 40}};
      size_t count = rng() % 30;
      Explanation why;
      auto out = cluster.place(g, count, &why);
      std::set<int64_t> hosts;
      std::map<std::string, int> per_dc;
      size_t placed = 0;
      for (size_t k = 0; k < count; ++k) {
        int64_t n = out[k];
        if (n < 0) {
          // Nothing fits any more: check the claim against every node.
          for (size_t i = 0; i < nodes.size(); ++i) {
            bool ok = nodes[i].eligible && g.resources.cpu_mhz <= free[i].cpu_mhz &&
                      g.resources.memory_mb <= free[i].memory_mb &&
                      g.resources.disk_mb <= free[i].disk_mb;
            for (const auto &c : g.constraints) {
              const std::string &v = nodes[i].attributes.at(c.attribute.substr(7, c.attribute.size() - 8));
              if (c.op == "=") ok = ok && v == c.value;
              if (c.op == ">=") ok = ok && std::stoi(v) >= std::stoi(c.value);
            }
            if (!g.datacenters.empty())
              ok = ok && std::count(g.datacenters.begin(), g.datacenters.end(),
                                    nodes[i].attributes.at("datacenter"));
            for (int p : g.ports) ok = ok && !ports[i].count(p);
            if (g.devices.count("gpu")) ok = ok && gpus[i] >= 1;
            if (g.distinct_hosts) ok = ok && !hosts.count(static_cast<int64_t>(i));
            EXPECT_FALSE(ok) << "round " << round << ": node " << i << " fits but was not used";
          }
          EXPECT_TRUE(why.failed());
          for (size_t r = k; r < count; ++r) EXPECT_EQ(out[r], -1);
          break;
        }
        ++placed;
        ASSERT_LT(static_cast<size_t>(n), nodes.size());
        const Node &nd = nodes[n];
        ASSERT_TRUE(nd.eligible);
        for (const auto &c : g.constraints) {
          const std::string &v = nd.attributes.at(c.attribute.substr(7, c.attribute.size() - 8));
          if (c.op == "=") {
            EXPECT_EQ(v, c.value);
          } else if (c.op == ">=") {
            EXPECT_GE(std::stoi(v), std::stoi(c.value));
          }
        }
        if (!g.datacenters.empty()) {
          EXPECT_TRUE(std::count(g.datacenters.begin(), g.datacenters.end(), nd.attributes.at("datacenter")));
        }
        if (g.distinct_hosts) {
          EXPECT_TRUE(hosts.insert(n).second) << "two on one host";
        }
        hosts.insert(n);
        free[n].cpu_mhz -= g.resources.cpu_mhz;
        free[n].memory_mb -= g.resources.memory_mb;
        free[n].disk_mb -= g.resources.disk_mb;
        EXPECT_GE(free[n].cpu_mhz, 0);
        EXPECT_GE(free[n].memory_mb, 0);
        EXPECT_GE(free[n].disk_mb, 0);
        for (int p : g.ports) {
          EXPECT_TRUE(ports[n].insert(p).second) << "port taken twice";
        }
        if (g.devices.count("gpu")) {
          EXPECT_GE(--gpus[n], 0);
        }
        per_dc[nd.attributes.at("datacenter")]++;
      }
      if (spread && placed == count) {
        // Within one allocation of each target, over the datacenters that exist.
        std::map<std::string, double> pct = {{"dc1", 50}, {"dc2", 30}, {"dc3", 20}};
        std::set<std::string> present;
        for (const auto &nd : nodes)
          if (nd.eligible) present.insert(nd.attributes.at("datacenter"));
        if (present.size() == 3) {
          for (const auto &[dc, p] : pct) {
            EXPECT_LE(std::abs(per_dc[dc] - count * p / 100.0), 1.0)
                << "round " << round << " " << dc << " count " << count;
          }
        }
      }
    }
  }
}

// The indexed search and a brute-force best fit agree on feasibility on big
// random clusters, and the cluster's free vectors stay exact.
TEST(Properties, IndexNeverMissesAFeasibleNode) {
  std::mt19937_64 rng(7);
  for (int round = 0; round < 20; ++round) {
    std::vector<Node> nodes(200 + rng() % 800);
    for (auto &n : nodes) {
      n = node(1000 + rng() % 64000, 1024 + rng() % 262144, 100000);
      n.eligible = rng() % 20 != 0;
    }
    Cluster c(nodes);
    for (int k = 0; k < 3000; ++k) {
      Group g;
      g.resources = {static_cast<int64_t>(1 + rng() % 8000), static_cast<int64_t>(1 + rng() % 32768), 0};
      int64_t n = c.place(g, 1)[0];
      if (n >= 0) continue;
      for (size_t i = 0; i < c.size(); ++i) {
        Resources f = c.free(i);
        ASSERT_FALSE(c.node(i).eligible && f.cpu_mhz >= g.resources.cpu_mhz &&
                     f.memory_mb >= g.resources.memory_mb)
            << "round " << round << " node " << i << " fits";
      }
    }
    for (size_t i = 0; i < c.size(); ++i) {
      EXPECT_GE(c.free(i).cpu_mhz, 0);
      EXPECT_GE(c.free(i).memory_mb, 0);
    }
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
      nodes[i].used = {sizeof(flotilla_resources), i == 1 ? 1500 : 0, i == 1 ? 1536 : 0, 0};
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
    ASSERT_EQ(vt->place(self, nodes, 2, asks, 2, placements, &explain), FLOTILLA_OK)
        << flotilla::PluginHost::last_error();
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

// Rules and usage as JSON, and a caller built against ABI 1.0 whose node
// structs end before usage_json.
TEST(BinpackPlugin, ReadsRulesAndUsageAndOneZeroSizedStructs) {
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
    flotilla_sched_node nodes[3] = {};
    const char *names[3] = {"a", "b", "c"};
    const char *attrs[3] = {R"({"os":"linux"})", R"({"os":"linux"})", R"({"os":"windows"})"};
    const char *usage[3] = {R"({"ports_used":[8080]})", R"({"devices":{"gpu":1}})", nullptr};
    for (int i = 0; i < 3; ++i) {
      nodes[i].struct_size = sizeof nodes[i];
      nodes[i].name = names[i];
      nodes[i].capacity = {sizeof(flotilla_resources), 4000, 4096, 10000};
      nodes[i].used = {sizeof(flotilla_resources), 0, 0, 0};
      nodes[i].eligible = 1;
      nodes[i].attributes_json = attrs[i];
      nodes[i].usage_json = usage[i];
    }
    flotilla_sched_ask ask{};
    ask.struct_size = sizeof ask;
    ask.job = "web";
    ask.group = "web";
    ask.resources = {sizeof(flotilla_resources), 100, 64, 0};
    ask.constraints_json =
        R"({"constraints":[{"attribute":"${attr.os}","operator":"=","value":"linux"}],"ports":[8080]})";
    flotilla_sched_placement out[1];
    flotilla_buf explain{};
    ASSERT_EQ(vt->place(self, nodes, 3, &ask, 1, out, &explain), FLOTILLA_OK)
        << flotilla::PluginHost::last_error();
    EXPECT_EQ(out[0].node_index, 1);  // a holds the port, c is windows
    ask.constraints_json = R"({"devices":{"gpu":2}})";
    ASSERT_EQ(vt->place(self, nodes, 3, &ask, 1, out, &explain), FLOTILLA_OK);
    EXPECT_EQ(out[0].node_index, -1);
    ASSERT_NE(explain.data, nullptr);
    EXPECT_NE(std::string(explain.data, explain.len).find("3 device gpu exhausted"), std::string::npos)
        << std::string(explain.data, explain.len);
    explain.release(&explain);
    ask.constraints_json = R"({"constraints":[{"attribute":"${attr.os}","operator":"~","value":"x"}]})";
    EXPECT_EQ(vt->place(self, nodes, 3, &ask, 1, out, &explain), FLOTILLA_E_INVALID);
    EXPECT_NE(flotilla::PluginHost::last_error().find("not an operator"), std::string::npos);

    // ABI 1.0: the node struct ended after attributes_json.
    struct node_v10 {
      uint32_t struct_size;
      const char *name;
      flotilla_resources capacity, used;
      int eligible;
      const char *attributes_json;
    };
    node_v10 old[2] = {};
    for (int i = 0; i < 2; ++i) {
      old[i].struct_size = sizeof old[i];
      old[i].name = names[i];
      old[i].capacity = {sizeof(flotilla_resources), 1000, 1024, 1000};
      old[i].used = {sizeof(flotilla_resources), i == 0 ? 1000 : 0, 0, 0};
      old[i].eligible = 1;
      old[i].attributes_json = attrs[i];
    }
    ASSERT_LT(sizeof(node_v10), sizeof(flotilla_sched_node));
    ask.constraints_json = nullptr;
    ASSERT_EQ(vt->place(self, reinterpret_cast<const flotilla_sched_node *>(old), 2, &ask, 1, out,
                        &explain),
              FLOTILLA_OK);
    EXPECT_EQ(out[0].node_index, 1);  // node 0 is full; node 1 read at the 1.0 stride
  }
  uv_run(&loop, UV_RUN_NOWAIT);
  uv_loop_close(&loop);
  std::filesystem::remove_all(tmpl);
}

}  // namespace
