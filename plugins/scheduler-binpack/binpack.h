// The placement engine behind flotilla.scheduler/1, free of the ABI so it
// can be tested and benchmarked directly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace flotilla::binpack {

struct Resources {
  int64_t cpu_mhz = 0, memory_mb = 0, disk_mb = 0;
};

struct Node {
  Resources capacity, used;
  bool eligible = true;
};

// Why asks did not fit, counted per node and dimension, for messages like
// "0/12 nodes: 9 memory exhausted, 3 ineligible".
struct Explanation {
  size_t nodes = 0;
  size_t ineligible = 0;
  size_t cpu_exhausted = 0, memory_exhausted = 0, disk_exhausted = 0;
  std::string to_json() const;
  std::string to_text() const;
};

// Place each ask (in order) on the feasible node that it fills the most
// (best fit over CPU, memory and disk), so large asks still find room
// later. Ties go to the lower node index. placements[i] is a node index or
// -1. `nodes[].used` is not modified. Returns the explanation for the first
// ask that did not fit (nodes == 0 when everything fit).
Explanation place(const std::vector<Node> &nodes, const std::vector<Resources> &asks,
                  std::vector<int64_t> &placements);

}  // namespace flotilla::binpack
