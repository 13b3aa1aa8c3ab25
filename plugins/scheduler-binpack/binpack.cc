#include "binpack.h"

#include <limits>

namespace flotilla::binpack {

namespace {

bool fits(const Resources &free, const Resources &ask) {
  return ask.cpu_mhz <= free.cpu_mhz && ask.memory_mb <= free.memory_mb &&
         ask.disk_mb <= free.disk_mb;
}

// Fraction of a dimension left free after placing: smaller is a better fit.
double left_after(int64_t free, int64_t ask, int64_t capacity) {
  return capacity > 0 ? static_cast<double>(free - ask) / static_cast<double>(capacity) : 0.0;
}

}  // namespace

std::string Explanation::to_json() const {
  return "{\"nodes_evaluated\":" + std::to_string(nodes) +
         ",\"ineligible\":" + std::to_string(ineligible) + ",\"exhausted\":{\"cpu\":" +
         std::to_string(cpu_exhausted) + ",\"memory\":" + std::to_string(memory_exhausted) +
         ",\"disk\":" + std::to_string(disk_exhausted) + "},\"message\":\"" + to_text() + "\"}";
}

std::string Explanation::to_text() const {
  std::string s = "0/" + std::to_string(nodes) + " nodes fit";
  std::string parts;
  auto add = [&](size_t n, const char *what) {
    if (n) parts += (parts.empty() ? "" : ", ") + std::to_string(n) + " " + what;
  };
  add(cpu_exhausted, "cpu exhausted");
  add(memory_exhausted, "memory exhausted");
  add(disk_exhausted, "disk exhausted");
  add(ineligible, "ineligible");
  return parts.empty() ? s : s + ": " + parts;
}

Explanation place(const std::vector<Node> &nodes, const std::vector<Resources> &asks,
                  std::vector<int64_t> &placements) {
  std::vector<Resources> free(nodes.size());
  for (size_t n = 0; n < nodes.size(); ++n) {
    const Node &node = nodes[n];
    free[n] = {node.capacity.cpu_mhz - node.used.cpu_mhz,
               node.capacity.memory_mb - node.used.memory_mb,
               node.capacity.disk_mb - node.used.disk_mb};
  }
  placements.assign(asks.size(), -1);
  Explanation first_failure;
  for (size_t a = 0; a < asks.size(); ++a) {
    const Resources &ask = asks[a];
    int64_t best = -1;
    double best_score = std::numeric_limits<double>::infinity();
    for (size_t n = 0; n < nodes.size(); ++n) {
      if (!nodes[n].eligible || !fits(free[n], ask)) continue;
      const Resources &cap = nodes[n].capacity;
      double score = left_after(free[n].cpu_mhz, ask.cpu_mhz, cap.cpu_mhz) +
                     left_after(free[n].memory_mb, ask.memory_mb, cap.memory_mb) +
                     left_after(free[n].disk_mb, ask.disk_mb, cap.disk_mb);
      if (score < best_score) {  // strict: ties keep the lower index
        best_score = score;
        best = static_cast<int64_t>(n);
      }
    }
    placements[a] = best;
    if (best >= 0) {
      Resources &f = free[best];
      f.cpu_mhz -= ask.cpu_mhz;
      f.memory_mb -= ask.memory_mb;
      f.disk_mb -= ask.disk_mb;
    } else if (first_failure.nodes == 0) {
      first_failure.nodes = nodes.size();
      for (size_t n = 0; n < nodes.size(); ++n) {
        if (!nodes[n].eligible) {
          first_failure.ineligible++;
          continue;
        }
        if (ask.cpu_mhz > free[n].cpu_mhz) first_failure.cpu_exhausted++;
        if (ask.memory_mb > free[n].memory_mb) first_failure.memory_exhausted++;
        if (ask.disk_mb > free[n].disk_mb) first_failure.disk_exhausted++;
      }
      if (nodes.empty()) first_failure.nodes = 0;
    }
  }
  return first_failure;
}

}  // namespace flotilla::binpack
