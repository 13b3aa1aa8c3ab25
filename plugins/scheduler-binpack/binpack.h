// The placement engine behind flotilla.scheduler/1, free of the ABI so it
// can be tested and benchmarked directly (tools/bench/sched_bench links it).
//
// A Cluster holds the nodes, what is free on each, and an index of nodes by
// free CPU and memory (a 64 x 64 grid of cells, see README.md) so that a
// best-fit placement looks at a few cells instead of every node.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace flotilla::binpack {

struct Resources {
  int64_t cpu_mhz = 0, memory_mb = 0, disk_mb = 0;
};

struct Node {
  Resources capacity, used;
  bool eligible = true;  // false: drained or ineligible
  std::string name;
  // Node attributes; "datacenter" and "pool" are read by the datacenter and
  // pool filters. Constraints name them ${attr.<key>} or ${node.<key>}.
  std::map<std::string, std::string> attributes;
  std::vector<int> ports_used;                  // static host ports taken
  std::map<std::string, int64_t> devices;       // device name -> how many
  std::map<std::string, int64_t> devices_used;  // device name -> how many taken
};

// A constraint on a node attribute. Operators: = != < <= > >= (numbers when
// both sides are numbers, otherwise text order), version (value is a
// comma-separated list like ">= 1.2, < 2"), regexp, set_contains (every
// comma-separated value is in the node's comma-separated list), is_set,
// is_not_set.
struct Constraint {
  std::string attribute;  // "${attr.os}", "${node.datacenter}", "${node.name}", "${node.pool}"
  std::string op;
  std::string value;
  std::string text() const;  // ${attr.os} = "linux"
};

// Nullopt when the constraint is well formed, else why not.
std::optional<std::string> check_constraint(const Constraint &c);

struct Affinity {
  Constraint when;
  int weight = 50;  // -100..100; negative: prefer nodes that do not match
};

struct SpreadTarget {
  std::string value;
  int percent = 0;
};

struct Spread {
  std::string attribute;  // like Constraint::attribute
  int weight = 50;        // 1..100
  std::vector<SpreadTarget> targets;  // empty: spread evenly over the values seen
};

// What every allocation of one job's group asks for and where it may go.
struct Group {
  std::string job;
  Resources resources;
  std::vector<int> ports;                  // static host ports
  std::map<std::string, int64_t> devices;  // device name -> count
  std::vector<std::string> datacenters;    // empty: any
  std::string pool;                        // empty: any; else the node's "pool" ("default" when unset)
  std::vector<Constraint> constraints;
  std::vector<Affinity> affinities;
  std::vector<Spread> spreads;
  bool distinct_hosts = false;
  // Allocations of this group already running, per node index (empty: none).
  std::vector<uint32_t> existing;
  // How many allocations the group has in all (existing + asked), for the
  // anti-affinity penalty and spread targets; 0: existing + asked.
  uint32_t total = 0;
};

// Why asks did not fit, counted per node, for messages like
// "0/12 nodes fit: 9 memory exhausted, 3 constraint ${attr.os} = "linux" failed".
// A node is counted under the first filter it fails (ineligible, datacenter,
// pool, a constraint, distinct_hosts, ports, devices); a node that passes
// those is counted under every resource dimension it lacks.
struct Explanation {
  size_t nodes = 0;
  size_t ineligible = 0, datacenter = 0, pool = 0, distinct_hosts = 0;
  size_t cpu_exhausted = 0, memory_exhausted = 0, disk_exhausted = 0;
  std::vector<std::pair<std::string, size_t>> constraint_failed;  // text -> nodes
  std::vector<std::pair<int, size_t>> port_in_use;                // port -> nodes
  std::vector<std::pair<std::string, size_t>> device_exhausted;   // device -> nodes
  bool failed() const { return nodes > 0 || failed_on_empty; }
  bool failed_on_empty = false;  // an ask with no node at all
  std::string to_json() const;
  std::string to_text() const;
};

struct Options {
  // Feasible nodes scored per placement, taken from the index in best-fit
  // order; the highest score wins.
  int candidates = 32;
  // Weight of the penalty for putting two allocations of one job on a node.
  double anti_affinity_weight = 5.0;
  // Weight of the imbalance between the node's CPU and memory use after
  // placing (best fit alone strands one dimension when tasks are alike).
  double balance_weight = 1.0;
  // Taken off the score of a node with nothing on it yet.
  double empty_node_penalty = 0.0;
};

class Cluster {
 public:
  explicit Cluster(std::vector<Node> nodes, Options options = {});
  ~Cluster();
  Cluster(const Cluster &) = delete;
  Cluster &operator=(const Cluster &) = delete;

  // Place `count` allocations of the group, one after the other, each seeing
  // the ones before it. Returns a node index per allocation, or -1. When any
  // did not fit and `why` is not null, it explains the first that did not.
  std::vector<int64_t> place(const Group &group, size_t count, Explanation *why = nullptr);

  size_t size() const { return nodes_.size(); }
  const Node &node(size_t i) const { return nodes_[i]; }
  Resources free(size_t i) const { return free_[i]; }

 private:
  struct GroupState;
  struct Index;
  bool static_ok(GroupState &g, size_t n);
  bool dynamic_ok(const GroupState &g, size_t n) const;
  double score(const GroupState &g, size_t n) const;
  double spread_score(const GroupState &g, size_t n) const;
  int64_t pick_indexed(GroupState &g);
  int64_t pick_scan(GroupState &g);
  void commit(GroupState &g, size_t n);
  Explanation explain(GroupState &g);

  std::vector<Node> nodes_;
  std::vector<Resources> free_;
  Options options_;
  std::unique_ptr<Index> index_;
};

// Compare two version strings segment by segment ("1.10.2" > "1.9"); the
// numeric dotted prefix counts, anything after it ("-28-amd64") is ignored.
int compare_versions(const std::string &a, const std::string &b);

// One-shot form kept for simple callers: each ask is its own group with
// resources only; placed in order. Returns the first failure's explanation.
Explanation place(const std::vector<Node> &nodes, const std::vector<Resources> &asks,
                  std::vector<int64_t> &placements);

}  // namespace flotilla::binpack
