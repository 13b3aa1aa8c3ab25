// sched_bench: scheduler-binpack's engine against two baselines implemented
// here, on synthetic clusters deterministic by seed.
//
//   flotilla  the engine (plugins/scheduler-binpack/binpack.cc), linked
//             directly: indexed best fit, 4 candidates, anti-affinity on.
//   nomad     Nomad's method: per evaluation (job) shuffle the nodes; per
//             placement walk the shuffled list from where the last stopped,
//             take the first max(2, ceil(log2 N)) feasible nodes and keep the
//             one with the best score 20 - (10^free_cpu + 10^free_mem).
//   ffd       first-fit decreasing: jobs sorted by task size, each task on
//             the lowest-numbered node it fits (a max-tree over the nodes).
//
// For each case it prints placements per second, nodes used against the
// lower bound (per dimension, the fewest nodes whose capacity covers the
// demand) and stranded capacity (free CPU on used nodes whose memory cannot
// take the smallest task, and the reverse).
//
// Usage: sched_bench [--seed N] [--case uniform|uniform-both|heterogeneous|heterogeneous-both|scale] [--max-nodes N]
//                    [--candidates N] [--balance W] [--anti-affinity W]  (engine options)
#include <algorithm>
#include <ctime>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "binpack.h"

namespace bp = flotilla::binpack;

namespace {

struct Shape {
  int64_t cpu, mem, disk;
};
struct Job {
  Shape task;
  uint32_t count;
};
struct Workload {
  std::vector<Shape> capacity;  // per node
  std::vector<Job> jobs;
  uint64_t tasks = 0;
};

struct Result {
  std::string name;
  double seconds = 0;
  uint64_t placed = 0, failed = 0;
  size_t nodes_used = 0;
  double stranded_cpu = 0, stranded_mem = 0;  // % of used nodes' capacity
};

// Nodes: uniform (32 cores at 1000 MHz, 64 GiB) or five shapes. Jobs: 1 to
// 199 identical tasks each, CPU 100-500 MHz and memory 128-512 MiB drawn
// independently, until 85% of the cluster's CPU or memory is asked for:
// CPU binds, memory ends near 60%. both_dims: memory 128-1024 MiB, so CPU
// and memory both end near 85% and every node must be filled evenly in both.
Workload make_workload(size_t n_nodes, bool heterogeneous, bool both_dims, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Workload w;
  const Shape shapes[] = {{8000, 16384, 200000},
                          {16000, 65536, 400000},
                          {32000, 65536, 500000},
                          {48000, 98304, 800000},
                          {64000, 262144, 1000000}};
  int64_t cap_cpu = 0, cap_mem = 0;
  for (size_t i = 0; i < n_nodes; ++i) {
    Shape s = heterogeneous ? shapes[rng() % 5] : shapes[2];
    w.capacity.push_back(s);
    cap_cpu += s.cpu;
    cap_mem += s.mem;
  }
  const int64_t cpus[] = {100, 150, 200, 250, 300, 400, 500};
  const int64_t mems_balanced[] = {128, 256, 512, 768, 1024};
  const int64_t mems_light[] = {128, 192, 256, 384, 512};
  const int64_t *mems = both_dims ? mems_balanced : mems_light;
  const int64_t disks[] = {0, 100, 500, 1000};
  // Jobs grow with the cluster past 10,000 nodes (about 100 tasks per node
  // either way), as an evaluation covers more of a bigger cluster.
  const uint32_t job_scale = static_cast<uint32_t>(std::max<size_t>(1, n_nodes / 10000));
  int64_t want_cpu = 0, want_mem = 0;
  while (want_cpu < cap_cpu * 85 / 100 && want_mem < cap_mem * 85 / 100) {
    Job j{{cpus[rng() % 7], mems[rng() % 5], disks[rng() % 4]},
          static_cast<uint32_t>(job_scale * (1 + rng() % 199))};
    int64_t room = std::min((cap_cpu * 85 / 100 - want_cpu) / j.task.cpu,
                            (cap_mem * 85 / 100 - want_mem) / j.task.mem);
    if (room < 1) break;
    j.count = static_cast<uint32_t>(std::min<int64_t>(j.count, room));
    want_cpu += j.task.cpu * j.count;
    want_mem += j.task.mem * j.count;
    w.tasks += j.count;
    w.jobs.push_back(j);
  }
  return w;
}

// Per dimension, the fewest nodes (largest first) whose capacity covers the demand.
size_t lower_bound_nodes(const Workload &w) {
  int64_t need[3] = {0, 0, 0};
  for (const Job &j : w.jobs) {
    need[0] += j.task.cpu * j.count;
    need[1] += j.task.mem * j.count;
    need[2] += j.task.disk * j.count;
  }
  size_t lb = 0;
  for (int d = 0; d < 3; ++d) {
    std::vector<int64_t> caps;
    for (const Shape &s : w.capacity) caps.push_back(d == 0 ? s.cpu : d == 1 ? s.mem : s.disk);
    std::sort(caps.rbegin(), caps.rend());
    int64_t sum = 0;
    size_t k = 0;
    while (k < caps.size() && sum < need[d]) sum += caps[k++];
    lb = std::max(lb, k);
  }
  return lb;
}

void finish(Result &r, const Workload &w, const std::vector<Shape> &free) {
  int64_t min_cpu = INT64_MAX, min_mem = INT64_MAX;
  for (const Job &j : w.jobs) {
    min_cpu = std::min(min_cpu, j.task.cpu);
    min_mem = std::min(min_mem, j.task.mem);
  }
  double cap_cpu = 0, cap_mem = 0, str_cpu = 0, str_mem = 0;
  for (size_t i = 0; i < free.size(); ++i) {
    const Shape &c = w.capacity[i], &f = free[i];
    if (f.cpu == c.cpu && f.mem == c.mem && f.disk == c.disk) continue;
    r.nodes_used++;
    cap_cpu += c.cpu;
    cap_mem += c.mem;
    if (f.mem < min_mem) str_cpu += f.cpu;
    if (f.cpu < min_cpu) str_mem += f.mem;
  }
  r.stranded_cpu = cap_cpu > 0 ? 100 * str_cpu / cap_cpu : 0;
  r.stranded_mem = cap_mem > 0 ? 100 * str_mem / cap_mem : 0;
}

// CPU time of this thread: the machine is shared, and wall time would count
// other processes' turns on the core as ours.
double now() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

bp::Options g_options;
bool g_flotilla_only = false;

Result run_flotilla(const Workload &w) {
  std::vector<bp::Node> nodes(w.capacity.size());
  for (size_t i = 0; i < nodes.size(); ++i)
    nodes[i].capacity = {w.capacity[i].cpu, w.capacity[i].mem, w.capacity[i].disk};
  Result r{"flotilla"};
  double t0 = now();
  bp::Cluster cluster(std::move(nodes), g_options);
  bp::Group g;
  for (size_t k = 0; k < w.jobs.size(); ++k) {
    const Job &j = w.jobs[k];
    g.job = std::to_string(k);
    g.resources = {j.task.cpu, j.task.mem, j.task.disk};
    for (int64_t n : cluster.place(g, j.count)) (n >= 0 ? r.placed : r.failed)++;
  }
  r.seconds = now() - t0;
  std::vector<Shape> free(cluster.size());
  for (size_t i = 0; i < free.size(); ++i) {
    auto f = cluster.free(i);
    free[i] = {f.cpu_mhz, f.memory_mb, f.disk_mb};
  }
  finish(r, w, free);
  return r;
}

bool fits(const Shape &f, const Shape &t) { return t.cpu <= f.cpu && t.mem <= f.mem && t.disk <= f.disk; }

Result run_nomad(const Workload &w, uint64_t seed) {
  Result r{"nomad"};
  std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ULL);
  std::vector<Shape> free = w.capacity;
  const size_t n = free.size();
  const size_t limit = std::max<size_t>(2, static_cast<size_t>(std::ceil(std::log2(double(n)))));
  std::vector<uint32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  double t0 = now();
  for (const Job &j : w.jobs) {
    std::shuffle(order.begin(), order.end(), rng);  // once per evaluation
    size_t offset = 0;
    for (uint32_t t = 0; t < j.count; ++t) {
      int64_t best = -1;
      double best_score = -1e300;
      size_t seen = 0, feasible = 0;
      while (seen < n && feasible < limit) {
        uint32_t i = order[offset];
        offset = offset + 1 == n ? 0 : offset + 1;
        ++seen;
        if (!fits(free[i], j.task)) continue;
        ++feasible;
        const Shape &c = w.capacity[i];
        double free_cpu = double(free[i].cpu - j.task.cpu) / double(c.cpu);
        double free_mem = double(free[i].mem - j.task.mem) / double(c.mem);
        double score = 20.0 - (std::pow(10.0, free_cpu) + std::pow(10.0, free_mem));
        score = std::clamp(score, 0.0, 18.0) / 18.0;
        if (score > best_score) {
          best_score = score;
          best = i;
        }
      }
      if (best < 0) {
        r.failed++;
        continue;
      }
      free[best].cpu -= j.task.cpu;
      free[best].mem -= j.task.mem;
      free[best].disk -= j.task.disk;
      r.placed++;
    }
  }
  r.seconds = now() - t0;
  finish(r, w, free);
  return r;
}

// First fit over node order with a max-tree: each inner node holds the
// largest free CPU, memory and disk below it, so subtrees that cannot hold
// the task are skipped.
struct MaxTree {
  size_t size = 1;
  std::vector<Shape> t;
  explicit MaxTree(const std::vector<Shape> &leaves) {
    while (size < leaves.size()) size *= 2;
    t.assign(2 * size, {-1, -1, -1});
    for (size_t i = 0; i < leaves.size(); ++i) t[size + i] = leaves[i];
    for (size_t i = size - 1; i >= 1; --i) pull(i);
  }
  void pull(size_t i) {
    const Shape &a = t[2 * i], &b = t[2 * i + 1];
    t[i] = {std::max(a.cpu, b.cpu), std::max(a.mem, b.mem), std::max(a.disk, b.disk)};
  }
  int64_t first_fit(const Shape &task, size_t i = 1) const {
    if (!fits(t[i], task)) return -1;
    if (i >= size) return static_cast<int64_t>(i - size);
    int64_t l = first_fit(task, 2 * i);
    return l >= 0 ? l : first_fit(task, 2 * i + 1);
  }
  void take(size_t leaf, const Shape &task) {
    size_t i = size + leaf;
    t[i].cpu -= task.cpu;
    t[i].mem -= task.mem;
    t[i].disk -= task.disk;
    for (i /= 2; i >= 1; i /= 2) pull(i);
  }
};

Result run_ffd(const Workload &w) {
  Result r{"ffd"};
  double t0 = now();
  // Size of a task: its largest share of the biggest node, by dimension.
  Shape big{1, 1, 1};
  for (const Shape &s : w.capacity)
    big = {std::max(big.cpu, s.cpu), std::max(big.mem, s.mem), std::max(big.disk, s.disk)};
  auto size = [&](const Shape &s) {
    return std::max({double(s.cpu) / big.cpu, double(s.mem) / big.mem, double(s.disk) / big.disk});
  };
  std::vector<Job> jobs = w.jobs;
  std::stable_sort(jobs.begin(), jobs.end(),
                   [&](const Job &a, const Job &b) { return size(a.task) > size(b.task); });
  MaxTree tree(w.capacity);
  for (const Job &j : jobs)
    for (uint32_t t = 0; t < j.count; ++t) {
      int64_t n = tree.first_fit(j.task);
      if (n < 0) {
        r.failed++;
        continue;
      }
      tree.take(static_cast<size_t>(n), j.task);
      r.placed++;
    }
  r.seconds = now() - t0;
  std::vector<Shape> free(w.capacity.size());
  for (size_t i = 0; i < free.size(); ++i) free[i] = tree.t[tree.size + i];
  finish(r, w, free);
  return r;
}

void print_case(const char *title, const Workload &w, uint64_t seed, bool with_nomad) {
  size_t lb = lower_bound_nodes(w);
  std::printf("\n== %s: %zu nodes, %zu jobs, %llu tasks; lower bound %zu nodes\n", title,
              w.capacity.size(), w.jobs.size(), static_cast<unsigned long long>(w.tasks), lb);
  std::printf("%-9s %12s %10s %10s %8s %11s %14s %14s\n", "method", "placements/s", "cpu s",
              "unplaced", "nodes", "vs bound", "stranded cpu", "stranded mem");
  std::vector<Result> rs;
  rs.push_back(run_flotilla(w));
  if (!g_flotilla_only) {
    if (with_nomad) rs.push_back(run_nomad(w, seed));
    rs.push_back(run_ffd(w));
  }
  for (const Result &r : rs)
    std::printf("%-9s %12.0f %10.3f %10llu %8zu %+10.2f%% %13.2f%% %13.2f%%\n", r.name.c_str(),
                r.placed / r.seconds, r.seconds, static_cast<unsigned long long>(r.failed),
                r.nodes_used, 100.0 * (double(r.nodes_used) - double(lb)) / double(lb),
                r.stranded_cpu, r.stranded_mem);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char **argv) {
  uint64_t seed = 1;
  std::string only;
  size_t max_nodes = 100000;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--seed" && i + 1 < argc) seed = std::strtoull(argv[++i], nullptr, 10);
    else if (a == "--case" && i + 1 < argc) only = argv[++i];
    else if (a == "--max-nodes" && i + 1 < argc) max_nodes = std::strtoull(argv[++i], nullptr, 10);
    else if (a == "--candidates" && i + 1 < argc) g_options.candidates = std::atoi(argv[++i]);
    else if (a == "--balance" && i + 1 < argc) g_options.balance_weight = std::atof(argv[++i]);
    else if (a == "--flotilla-only") g_flotilla_only = true;
    else if (a == "--empty-penalty" && i + 1 < argc) g_options.empty_node_penalty = std::atof(argv[++i]);
    else if (a == "--anti-affinity" && i + 1 < argc) g_options.anti_affinity_weight = std::atof(argv[++i]);
    else {
      std::fprintf(stderr, "usage: %s [--seed N] [--case uniform|uniform-both|heterogeneous|heterogeneous-both|scale] [--max-nodes N]\n"
                   "       [--candidates N] [--balance W] [--anti-affinity W]\n",
                   argv[0]);
      return 2;
    }
  }
  std::printf("sched_bench seed %llu (one core; every method places the same jobs in the same order,\n"
              "except ffd, which sorts them)\n",
              static_cast<unsigned long long>(seed));
  if (only.empty() || only == "uniform")
    print_case("uniform capacity", make_workload(10000, false, false, seed), seed, true);
  if (only.empty() || only == "uniform-both")
    print_case("uniform capacity, CPU and memory both 85% asked",
               make_workload(10000, false, true, seed), seed, true);
  if (only.empty() || only == "heterogeneous")
    print_case("heterogeneous (5 node shapes)", make_workload(10000, true, false, seed), seed, true);
  if (only.empty() || only == "heterogeneous-both")
    print_case("heterogeneous, CPU and memory both 85% asked",
               make_workload(10000, true, true, seed), seed, true);
  if (only.empty() || only == "scale")
    for (size_t n : {size_t{1000}, size_t{10000}, size_t{100000}}) {
      if (n > max_nodes) break;
      std::string title = "scale, heterogeneous, " + std::to_string(n) + " nodes";
      print_case(title.c_str(), make_workload(n, true, false, seed + n), seed, true);
    }
  return 0;
}
