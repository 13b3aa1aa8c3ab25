#include "binpack.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <queue>
#include <set>
#include <stdexcept>

namespace flotilla::binpack {

namespace {

bool fits(const Resources &free, const Resources &ask) {
  return ask.cpu_mhz <= free.cpu_mhz && ask.memory_mb <= free.memory_mb &&
         ask.disk_mb <= free.disk_mb;
}

std::string trim(const std::string &s) {
  size_t b = s.find_first_not_of(" \t"), e = s.find_last_not_of(" \t");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

std::vector<std::string> split_commas(const std::string &s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    size_t comma = s.find(',', start);
    if (comma == std::string::npos) comma = s.size();
    std::string item = trim(s.substr(start, comma - start));
    if (!item.empty()) out.push_back(item);
    start = comma + 1;
  }
  return out;
}

// The attribute a constraint names, or nullptr when the node does not set it.
const std::string *lookup(const Node &n, const std::string &ref) {
  static const std::string kDefaultPool = "default";
  std::string key = ref;
  if (ref.size() > 3 && ref.compare(0, 2, "${") == 0 && ref.back() == '}') {
    std::string inner = ref.substr(2, ref.size() - 3);
    if (inner == "node.name") return &n.name;
    if (inner == "node.datacenter") key = "datacenter";
    else if (inner == "node.pool") {
      auto it = n.attributes.find("pool");
      return it == n.attributes.end() ? &kDefaultPool : &it->second;
    } else if (inner.compare(0, 5, "attr.") == 0) key = inner.substr(5);
    else key = inner;
  }
  auto it = n.attributes.find(key);
  return it == n.attributes.end() ? nullptr : &it->second;
}

bool as_number(const std::string &s, double &out) {
  if (s.empty()) return false;
  char *end = nullptr;
  out = std::strtod(s.c_str(), &end);
  return end == s.c_str() + s.size() && std::isfinite(out);
}

int compare_values(const std::string &a, const std::string &b) {
  double x, y;
  if (as_number(a, x) && as_number(b, y)) return x < y ? -1 : (x > y ? 1 : 0);
  return a.compare(b) < 0 ? -1 : (a == b ? 0 : 1);
}

bool compare_with(const std::string &op, int cmp) {
  if (op == "=" || op == "==") return cmp == 0;
  if (op == "!=") return cmp != 0;
  if (op == "<") return cmp < 0;
  if (op == "<=") return cmp <= 0;
  if (op == ">") return cmp > 0;
  if (op == ">=") return cmp >= 0;
  return false;
}

// ">= 1.2, < 2" -> {(">=", "1.2"), ("<", "2")}; empty on a malformed clause.
std::vector<std::pair<std::string, std::string>> version_clauses(const std::string &value) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const std::string &clause : split_commas(value)) {
    size_t i = 0;
    while (i < clause.size() && std::string("<>=!~").find(clause[i]) != std::string::npos) ++i;
    std::string op = clause.substr(0, i), ver = trim(clause.substr(i));
    if (op.empty()) op = "=";
    if (op != "=" && op != "==" && op != "!=" && op != "<" && op != "<=" && op != ">" && op != ">=")
      return {};
    if (ver.empty() || !std::isdigit(static_cast<unsigned char>(ver[0]))) return {};
    out.emplace_back(op, ver);
  }
  return out;
}

bool set_contains(const std::string &node_value, const std::string &wanted) {
  auto have = split_commas(node_value);
  for (const std::string &w : split_commas(wanted))
    if (std::find(have.begin(), have.end(), w) == have.end()) return false;
  return true;
}

bool holds(const Constraint &c, const std::regex *re, const Node &n) {
  const std::string *v = lookup(n, c.attribute);
  if (c.op == "is_set") return v != nullptr;
  if (c.op == "is_not_set") return v == nullptr;
  if (!v) return c.op == "!=";
  if (c.op == "regexp") return re && std::regex_search(*v, *re);
  if (c.op == "set_contains") return set_contains(*v, c.value);
  if (c.op == "version") {
    auto clauses = version_clauses(c.value);
    if (clauses.empty()) return false;
    for (const auto &[op, ver] : clauses)
      if (!compare_with(op, compare_versions(*v, ver))) return false;
    return true;
  }
  return compare_with(c.op, compare_values(*v, c.value));
}

std::string json_escape(const std::string &s) {
  std::string out;
  for (char ch : s) {
    switch (ch) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(ch) < 0x20) {
          char buf[8];
          snprintf(buf, sizeof buf, "\\u%04x", ch);
          out += buf;
        } else {
          out += ch;
        }
    }
  }
  return out;
}

template <typename K>
void bump(std::vector<std::pair<K, size_t>> &counts, const K &key) {
  for (auto &[k, n] : counts)
    if (k == key) {
      ++n;
      return;
    }
  counts.emplace_back(key, 1);
}

}  // namespace

int compare_versions(const std::string &a, const std::string &b) {
  auto segments = [](const std::string &s) {
    std::vector<long long> out;
    size_t i = 0;
    if (i < s.size() && (s[i] == 'v' || s[i] == 'V')) ++i;
    while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) {
      long long v = 0;
      while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i])))
        v = v * 10 + (s[i++] - '0');
      out.push_back(v);
      if (i + 1 < s.size() && s[i] == '.' && std::isdigit(static_cast<unsigned char>(s[i + 1])))
        ++i;
      else
        break;
    }
    return out;
  };
  auto x = segments(a), y = segments(b);
  size_t n = std::max(x.size(), y.size());
  x.resize(n, 0);
  y.resize(n, 0);
  for (size_t i = 0; i < n; ++i)
    if (x[i] != y[i]) return x[i] < y[i] ? -1 : 1;
  return 0;
}

std::string Constraint::text() const {
  if (op == "is_set" || op == "is_not_set") return attribute + " " + op;
  return attribute + " " + op + " \"" + value + "\"";
}

std::optional<std::string> check_constraint(const Constraint &c) {
  static const std::set<std::string> ops = {"=",       "==",     "!=",     "<",
                                            "<=",      ">",      ">=",     "version",
                                            "regexp",  "set_contains", "is_set", "is_not_set"};
  if (c.attribute.empty()) return "attribute is empty";
  if (!ops.count(c.op))
    return "\"" + c.op +
           "\" is not an operator: use =, !=, <, <=, >, >=, version, regexp, set_contains, "
           "is_set or is_not_set";
  if (c.op == "version" && version_clauses(c.value).empty())
    return "\"" + c.value + "\" is not a version condition: write it like \">= 1.2, < 2\"";
  if (c.op == "regexp") {
    try {
      std::regex re(c.value);
    } catch (const std::regex_error &e) {
      return "\"" + c.value + "\" is not a regular expression: " + e.what();
    }
  }
  return std::nullopt;
}

// ---- explanations -----------------------------------------------------------

std::string Explanation::to_text() const {
  std::string s = "0/" + std::to_string(nodes) + " nodes fit";
  std::string parts;
  auto add = [&](size_t n, const std::string &what) {
    if (n) parts += (parts.empty() ? "" : ", ") + std::to_string(n) + " " + what;
  };
  add(cpu_exhausted, "cpu exhausted");
  add(memory_exhausted, "memory exhausted");
  add(disk_exhausted, "disk exhausted");
  for (const auto &[d, n] : device_exhausted) add(n, "device " + d + " exhausted");
  for (const auto &[p, n] : port_in_use) add(n, "port " + std::to_string(p) + " in use");
  add(distinct_hosts, "already run this job (distinct_hosts)");
  for (const auto &[c, n] : constraint_failed) add(n, "constraint " + c + " failed");
  add(datacenter, "in another datacenter");
  add(pool, "in another pool");
  add(ineligible, "ineligible");
  return parts.empty() ? s : s + ": " + parts;
}

std::string Explanation::to_json() const {
  std::string constraints, ports, devices;
  for (const auto &[c, n] : constraint_failed)
    constraints += (constraints.empty() ? "" : ",") + ("\"" + json_escape(c) + "\":" + std::to_string(n));
  for (const auto &[p, n] : port_in_use)
    ports += (ports.empty() ? "" : ",") + ("\"" + std::to_string(p) + "\":" + std::to_string(n));
  for (const auto &[d, n] : device_exhausted)
    devices += (devices.empty() ? "" : ",") + ("\"" + json_escape(d) + "\":" + std::to_string(n));
  return "{\"nodes_evaluated\":" + std::to_string(nodes) +
         ",\"ineligible\":" + std::to_string(ineligible) + ",\"filtered\":{\"datacenter\":" +
         std::to_string(datacenter) + ",\"pool\":" + std::to_string(pool) +
         ",\"distinct_hosts\":" + std::to_string(distinct_hosts) + ",\"constraints\":{" +
         constraints + "},\"ports\":{" + ports + "}},\"exhausted\":{\"cpu\":" +
         std::to_string(cpu_exhausted) + ",\"memory\":" + std::to_string(memory_exhausted) +
         ",\"disk\":" + std::to_string(disk_exhausted) + ",\"devices\":{" + devices +
         "}},\"message\":\"" + json_escape(to_text()) + "\"}";
}

// ---- the index --------------------------------------------------------------

// Nodes by free CPU and memory. Nodes of one capacity shape share a grid
// (up to 16 shapes; the rest share one more): cell (c, m) of a grid holds
// the nodes whose free CPU is in level c and free memory in level m, each
// level 1/64 of the grid's capacity (its largest node's). A node in a row
// below the ask's CPU level (or a column below its memory level) cannot fit
// it, so a best-fit search visits cells from the ask's levels upward, fullest
// first, and looks only at a few nodes. Levels are fractions of the node's
// own capacity, so a half-empty big node is not mistaken for a full small
// one. One bitmask per row says which cells are non-empty.
struct Cluster::Index {
  static constexpr int L = 64;
  static constexpr size_t kMaxShapes = 16;
  static constexpr uint32_t kNone = UINT32_MAX;
  // A cell keeps each node's free CPU and memory next to its index, so the
  // search reads cells sequentially instead of chasing every node.
  struct Entry {
    uint32_t node;
    int64_t cpu, mem;
  };
  struct Grid {
    int64_t ref_cpu = 1, ref_mem = 1;
    std::vector<std::vector<Entry>> cells = std::vector<std::vector<Entry>>(L * L);
    uint64_t row_mask[L] = {};  // bit m: cell (c, m) is non-empty
    uint64_t col_mask[L] = {};  // bit c: cell (c, m) is non-empty
    uint64_t rows = 0;
  };
  std::vector<Grid> grids;
  std::vector<uint16_t> grid_of;
  std::vector<uint32_t> pos, cell_of;  // cell_of: grid * L * L + cell

  static int level(int64_t v, int64_t ref) {
    if (v <= 0 || ref <= 0) return 0;
    int64_t l = static_cast<int64_t>((static_cast<__int128>(v) * L) / ref);
    return static_cast<int>(std::min<int64_t>(l, L - 1));
  }
  void build(const std::vector<Node> &nodes) {
    std::map<std::pair<int64_t, int64_t>, uint16_t> shapes;
    grid_of.assign(nodes.size(), 0);
    for (size_t n = 0; n < nodes.size(); ++n) {
      std::pair<int64_t, int64_t> shape{nodes[n].capacity.cpu_mhz, nodes[n].capacity.memory_mb};
      auto it = shapes.find(shape);
      if (it == shapes.end()) {
        uint16_t id = static_cast<uint16_t>(std::min(shapes.size(), kMaxShapes));
        it = shapes.emplace(shape, id).first;
      }
      grid_of[n] = it->second;
    }
    grids.resize(std::min(shapes.size(), kMaxShapes + 1));
    for (size_t n = 0; n < nodes.size(); ++n) {
      Grid &g = grids[grid_of[n]];
      g.ref_cpu = std::max(g.ref_cpu, nodes[n].capacity.cpu_mhz);
      g.ref_mem = std::max(g.ref_mem, nodes[n].capacity.memory_mb);
    }
    pos.assign(nodes.size(), kNone);
    cell_of.assign(nodes.size(), kNone);
  }
  void insert(uint32_t n, const Resources &free) {
    Grid &g = grids[grid_of[n]];
    int c = level(free.cpu_mhz, g.ref_cpu), m = level(free.memory_mb, g.ref_mem);
    uint32_t cell = static_cast<uint32_t>(c * L + m);
    cell_of[n] = grid_of[n] * L * L + cell;
    pos[n] = static_cast<uint32_t>(g.cells[cell].size());
    g.cells[cell].push_back({n, free.cpu_mhz, free.memory_mb});
    g.row_mask[c] |= uint64_t{1} << m;
    g.col_mask[m] |= uint64_t{1} << c;
    g.rows |= uint64_t{1} << c;
  }
  void remove(uint32_t n) {
    if (cell_of[n] == kNone) return;
    Grid &g = grids[grid_of[n]];
    uint32_t cell = cell_of[n] % (L * L);
    auto &v = g.cells[cell];
    Entry last = v.back();
    v[pos[n]] = last;
    pos[last.node] = pos[n];
    v.pop_back();
    cell_of[n] = kNone;
    if (v.empty()) {
      int c = static_cast<int>(cell / L), m = static_cast<int>(cell % L);
      g.row_mask[c] &= ~(uint64_t{1} << m);
      g.col_mask[m] &= ~(uint64_t{1} << c);
      if (!g.row_mask[c]) g.rows &= ~(uint64_t{1} << c);
    }
  }
};

struct Cluster::GroupState {
  const Group &g;
  bool has_static = false;
  std::vector<int8_t> static_cache;  // -1 not yet known, 0 fails, 1 passes
  std::vector<std::optional<std::regex>> regexes;
  std::vector<std::optional<std::regex>> affinity_regexes;
  std::unordered_map<uint32_t, uint32_t> placed;  // node -> placed by this call
  double total = 1;
  std::vector<std::map<std::string, double>> spread_desired;
  std::vector<std::map<std::string, double>> spread_count;
  std::vector<std::string> spread_values;  // scratch
  bool failed = false;
  Explanation why;

  explicit GroupState(const Group &group) : g(group) {}
  uint32_t count_on(size_t n) const {
    uint32_t c = g.existing.size() > n ? g.existing[n] : 0;
    auto it = placed.find(static_cast<uint32_t>(n));
    return it == placed.end() ? c : c + it->second;
  }
};

Cluster::Cluster(std::vector<Node> nodes, Options options)
    : nodes_(std::move(nodes)), options_(options), index_(std::make_unique<Index>()) {
  if (options_.candidates < 1) options_.candidates = 1;
  free_.resize(nodes_.size());
  for (size_t n = 0; n < nodes_.size(); ++n) {
    const Node &node = nodes_[n];
    free_[n] = {node.capacity.cpu_mhz - node.used.cpu_mhz,
                node.capacity.memory_mb - node.used.memory_mb,
                node.capacity.disk_mb - node.used.disk_mb};
    std::sort(nodes_[n].ports_used.begin(), nodes_[n].ports_used.end());
  }
  index_->build(nodes_);
  for (size_t n = 0; n < nodes_.size(); ++n)
    if (nodes_[n].eligible) index_->insert(static_cast<uint32_t>(n), free_[n]);
}

Cluster::~Cluster() = default;

bool Cluster::static_ok(GroupState &g, size_t n) {
  if (!g.has_static) return true;
  int8_t &known = g.static_cache[n];
  if (known >= 0) return known == 1;
  const Node &node = nodes_[n];
  bool ok = true;
  if (!g.g.datacenters.empty()) {
    const std::string *dc = lookup(node, "datacenter");
    ok = dc && std::find(g.g.datacenters.begin(), g.g.datacenters.end(), *dc) !=
                   g.g.datacenters.end();
  }
  if (ok && !g.g.pool.empty()) ok = *lookup(node, "${node.pool}") == g.g.pool;
  for (size_t i = 0; ok && i < g.g.constraints.size(); ++i)
    ok = holds(g.g.constraints[i], g.regexes[i] ? &*g.regexes[i] : nullptr, node);
  known = ok ? 1 : 0;
  return ok;
}

bool Cluster::dynamic_ok(const GroupState &g, size_t n) const {
  if (g.g.distinct_hosts && g.count_on(n) > 0) return false;
  const Node &node = nodes_[n];
  for (int p : g.g.ports)
    if (std::binary_search(node.ports_used.begin(), node.ports_used.end(), p)) return false;
  for (const auto &[d, want] : g.g.devices) {
    auto have = node.devices.find(d);
    auto used = node.devices_used.find(d);
    int64_t free = (have == node.devices.end() ? 0 : have->second) -
                   (used == node.devices_used.end() ? 0 : used->second);
    if (free < want) return false;
  }
  return true;
}

// Higher is better: how full the node is after placing (best fit), minus the
// anti-affinity penalty, plus the affinities.
double Cluster::score(const GroupState &g, size_t n) const {
  const Node &node = nodes_[n];
  const Resources &ask = g.g.resources, &free = free_[n];
  double fill = 0, lo = 1, hi = 0;
  int dims = 0;
  auto add = [&](int64_t cap, int64_t f, int64_t a) {
    if (cap <= 0) return;
    double u = static_cast<double>(cap - f + a) / static_cast<double>(cap);
    fill += u;
    lo = std::min(lo, u);
    hi = std::max(hi, u);
    ++dims;
  };
  add(node.capacity.cpu_mhz, free.cpu_mhz, ask.cpu_mhz);
  add(node.capacity.memory_mb, free.memory_mb, ask.memory_mb);
  if (ask.disk_mb > 0) add(node.capacity.disk_mb, free.disk_mb, ask.disk_mb);
  // Best fit, less the imbalance between dimensions: a node full in CPU
  // with memory to spare strands that memory.
  double s = dims ? fill / dims - options_.balance_weight * (hi - lo) : 0;
  // Bin packing: open an empty node only when no used one will do.
  if (free.cpu_mhz == node.capacity.cpu_mhz && free.memory_mb == node.capacity.memory_mb)
    s -= options_.empty_node_penalty;
  if (uint32_t c = g.count_on(n)) s -= options_.anti_affinity_weight * c / g.total;
  if (!g.g.affinities.empty()) {
    double sum = 0, norm = 0;
    for (size_t i = 0; i < g.g.affinities.size(); ++i) {
      const Affinity &a = g.g.affinities[i];
      norm += std::abs(a.weight);
      if (holds(a.when, g.affinity_regexes[i] ? &*g.affinity_regexes[i] : nullptr, node))
        sum += a.weight;
    }
    if (norm > 0) s += sum / norm;
  }
  return s;
}

// How much the node's attribute values are still short of their spread
// targets (weighted, in allocations). Compared before score(): spread wins.
double Cluster::spread_score(const GroupState &g, size_t n) const {
  double s = 0;
  for (size_t i = 0; i < g.g.spreads.size(); ++i) {
    const std::string *v = lookup(nodes_[n], g.g.spreads[i].attribute);
    std::string key = v ? *v : std::string();
    auto d = g.spread_desired[i].find(key);
    auto c = g.spread_count[i].find(key);
    double desired = d == g.spread_desired[i].end() ? 0 : d->second;
    double have = c == g.spread_count[i].end() ? 0 : c->second;
    s += g.g.spreads[i].weight * (desired - have);
  }
  return s;
}

int64_t Cluster::pick_indexed(GroupState &g) {
  const Index &ix = *index_;
  const Resources &ask = g.g.resources;
  // Cells are visited fullest first: by shell d = max(c, m) (the emptier
  // dimension's level), and within a shell by c + m, across every grid. A
  // shell's cells are row d (m from the ask's level to d) and column d (c
  // from the ask's level to d - 1), read from the row and column masks.
  struct Cell {
    uint16_t sum, grid;
    uint8_t c, m;
    bool operator<(const Cell &o) const {
      if (sum != o.sum) return sum < o.sum;
      if (grid != o.grid) return grid < o.grid;
      return c != o.c ? c < o.c : m < o.m;
    }
  };
  int ac[Index::kMaxShapes + 1], am[Index::kMaxShapes + 1];
  bool usable[Index::kMaxShapes + 1];
  int first_shell = Index::L;
  for (size_t gi = 0; gi < ix.grids.size(); ++gi) {
    const Index::Grid &gr = ix.grids[gi];
    ac[gi] = Index::level(ask.cpu_mhz, gr.ref_cpu);
    am[gi] = Index::level(ask.memory_mb, gr.ref_mem);
    // An ask larger than the grid's nodes cannot fit any of them.
    usable[gi] = ask.cpu_mhz <= gr.ref_cpu && ask.memory_mb <= gr.ref_mem;
    if (usable[gi]) first_shell = std::min(first_shell, std::max(ac[gi], am[gi]));
  }
  auto bits_between = [](uint64_t mask, int lo, int hi) {  // bits lo..hi inclusive
    if (lo > hi) return uint64_t{0};
    uint64_t upto = hi >= 63 ? ~uint64_t{0} : ((uint64_t{1} << (hi + 1)) - 1);
    return mask & upto & (~uint64_t{0} << lo);
  };
  Cell shell[2 * Index::L * (Index::kMaxShapes + 1)];
  // A boundary cell (the ask's own level in a dimension) may hold many
  // nodes that just miss; look at a few and come back only if nothing else fits.
  constexpr size_t kBoundaryLook = 12;
  std::vector<std::pair<uint16_t, uint32_t>> skipped_cells;
  uint32_t found[64];
  const int want = std::min(options_.candidates, 64);
  int n_found = 0;
  // Once something fits, look at a bounded number of further nodes: near a
  // full cluster the next feasible ones can be far apart.
  const size_t kLookAfterFirst = 32 * static_cast<size_t>(want);
  size_t looked = 0, looked_at_first = 0;
  auto consider = [&](const Index::Entry &e) {
    ++looked;
    if (e.cpu < ask.cpu_mhz || e.mem < ask.memory_mb) return;
    const uint32_t n = e.node;
    if (!fits(free_[n], ask) || !dynamic_ok(g, n) || !static_ok(g, n)) return;
    if (n_found == 0) looked_at_first = looked;
    found[n_found++] = n;
  };
  auto enough = [&] {
    return n_found >= want || (n_found > 0 && looked - looked_at_first >= kLookAfterFirst);
  };
  for (int d = first_shell; d < Index::L && !enough(); ++d) {
    size_t n_cells = 0;
    for (size_t gi = 0; gi < ix.grids.size(); ++gi) {
      if (!usable[gi] || d < ac[gi] || d < am[gi]) continue;
      const Index::Grid &gr = ix.grids[gi];
      for (uint64_t ms = bits_between(gr.row_mask[d], am[gi], d); ms; ms &= ms - 1) {
        int m = std::countr_zero(ms);
        shell[n_cells++] = {static_cast<uint16_t>(d + m), static_cast<uint16_t>(gi),
                            static_cast<uint8_t>(d), static_cast<uint8_t>(m)};
      }
      for (uint64_t cs = bits_between(gr.col_mask[d], ac[gi], d - 1); cs; cs &= cs - 1) {
        int c = std::countr_zero(cs);
        shell[n_cells++] = {static_cast<uint16_t>(c + d), static_cast<uint16_t>(gi),
                            static_cast<uint8_t>(c), static_cast<uint8_t>(d)};
      }
    }
    std::sort(shell, shell + n_cells);
    for (size_t k = 0; k < n_cells && !enough(); ++k) {
      const Cell &cell = shell[k];
      const auto &nodes = ix.grids[cell.grid].cells[cell.c * Index::L + cell.m];
      const bool boundary = cell.c == ac[cell.grid] || cell.m == am[cell.grid];
      size_t look = boundary ? std::min(nodes.size(), kBoundaryLook) : nodes.size();
      size_t i = 0;
      for (; i < look && !enough(); ++i) consider(nodes[i]);
      if (look < nodes.size() && i == look && n_found == 0)
        skipped_cells.emplace_back(cell.grid, static_cast<uint32_t>(cell.c * Index::L + cell.m));
    }
  }
  for (size_t k = 0; n_found == 0 && k < skipped_cells.size(); ++k) {
    const auto &nodes = ix.grids[skipped_cells[k].first].cells[skipped_cells[k].second];
    for (size_t i = kBoundaryLook; i < nodes.size() && n_found < want; ++i) consider(nodes[i]);
  }
  int64_t best = -1;
  double best_score = 0;
  for (int i = 0; i < n_found; ++i) {
    double s = score(g, found[i]);
    if (best < 0 || s > best_score || (s == best_score && found[i] < best)) {
      best = found[i];
      best_score = s;
    }
  }
  return best;
}

int64_t Cluster::pick_scan(GroupState &g) {
  int64_t best = -1;
  double best_spread = 0, best_score = 0;
  for (size_t n = 0; n < nodes_.size(); ++n) {
    if (!nodes_[n].eligible || !fits(free_[n], g.g.resources) || !dynamic_ok(g, n) ||
        !static_ok(g, n))
      continue;
    double sp = g.g.spreads.empty() ? 0 : spread_score(g, n);
    double s = score(g, n);
    if (best < 0 || sp > best_spread || (sp == best_spread && s > best_score)) {
      best = static_cast<int64_t>(n);
      best_spread = sp;
      best_score = s;
    }
  }
  return best;
}

void Cluster::commit(GroupState &g, size_t n) {
  const Resources &ask = g.g.resources;
  Resources &f = free_[n];
  f.cpu_mhz -= ask.cpu_mhz;
  f.memory_mb -= ask.memory_mb;
  f.disk_mb -= ask.disk_mb;
  index_->remove(static_cast<uint32_t>(n));
  index_->insert(static_cast<uint32_t>(n), f);
  Node &node = nodes_[n];
  if (!g.g.ports.empty()) {
    node.ports_used.insert(node.ports_used.end(), g.g.ports.begin(), g.g.ports.end());
    std::sort(node.ports_used.begin(), node.ports_used.end());
  }
  for (const auto &[d, k] : g.g.devices) node.devices_used[d] += k;
  g.placed[static_cast<uint32_t>(n)]++;
  for (size_t i = 0; i < g.g.spreads.size(); ++i) {
    const std::string *v = lookup(node, g.g.spreads[i].attribute);
    g.spread_count[i][v ? *v : std::string()] += 1;
  }
}

Explanation Cluster::explain(GroupState &g) {
  Explanation why;
  why.nodes = nodes_.size();
  why.failed_on_empty = nodes_.empty();
  const Group &grp = g.g;
  for (size_t n = 0; n < nodes_.size(); ++n) {
    const Node &node = nodes_[n];
    if (!node.eligible) {
      why.ineligible++;
      continue;
    }
    if (!grp.datacenters.empty()) {
      const std::string *dc = lookup(node, "datacenter");
      if (!dc || std::find(grp.datacenters.begin(), grp.datacenters.end(), *dc) ==
                     grp.datacenters.end()) {
        why.datacenter++;
        continue;
      }
    }
    if (!grp.pool.empty() && *lookup(node, "${node.pool}") != grp.pool) {
      why.pool++;
      continue;
    }
    bool failed = false;
    for (size_t i = 0; !failed && i < grp.constraints.size(); ++i)
      if (!holds(grp.constraints[i], g.regexes[i] ? &*g.regexes[i] : nullptr, node)) {
        bump(why.constraint_failed, grp.constraints[i].text());
        failed = true;
      }
    if (failed) continue;
    if (grp.distinct_hosts && g.count_on(n) > 0) {
      why.distinct_hosts++;
      continue;
    }
    for (int p : grp.ports)
      if (!failed && std::binary_search(node.ports_used.begin(), node.ports_used.end(), p)) {
        bump(why.port_in_use, p);
        failed = true;
      }
    if (failed) continue;
    for (const auto &[d, want] : grp.devices) {
      auto have = node.devices.find(d);
      auto used = node.devices_used.find(d);
      int64_t free = (have == node.devices.end() ? 0 : have->second) -
                     (used == node.devices_used.end() ? 0 : used->second);
      if (!failed && free < want) {
        bump(why.device_exhausted, d);
        failed = true;
      }
    }
    if (failed) continue;
    const Resources &f = free_[n];
    if (grp.resources.cpu_mhz > f.cpu_mhz) why.cpu_exhausted++;
    if (grp.resources.memory_mb > f.memory_mb) why.memory_exhausted++;
    if (grp.resources.disk_mb > f.disk_mb) why.disk_exhausted++;
  }
  return why;
}

std::vector<int64_t> Cluster::place(const Group &group, size_t count, Explanation *why) {
  std::vector<int64_t> out(count, -1);
  if (count == 0) return out;
  GroupState g(group);
  uint32_t existing_total = 0;
  for (uint32_t e : group.existing) existing_total += e;
  g.total = std::max<double>(1.0, group.total ? group.total : existing_total + count);
  g.has_static = !group.datacenters.empty() || !group.pool.empty() || !group.constraints.empty();
  if (g.has_static) g.static_cache.assign(nodes_.size(), -1);
  for (const Constraint &c : group.constraints)
    g.regexes.push_back(c.op == "regexp" && !check_constraint(c) ? std::optional<std::regex>(c.value)
                                                                 : std::nullopt);
  for (const Affinity &a : group.affinities)
    g.affinity_regexes.push_back(a.when.op == "regexp" && !check_constraint(a.when)
                                     ? std::optional<std::regex>(a.when.value)
                                     : std::nullopt);
  if (!group.spreads.empty()) {
    // Desired allocations per attribute value, over the nodes the group may use.
    for (const Spread &s : group.spreads) {
      std::map<std::string, double> desired, have;
      std::set<std::string> values;
      for (size_t n = 0; n < nodes_.size(); ++n) {
        const std::string *v = lookup(nodes_[n], s.attribute);
        std::string key = v ? *v : std::string();
        if (nodes_[n].eligible && v && static_ok(g, n)) values.insert(key);
        if (n < group.existing.size() && group.existing[n]) have[key] += group.existing[n];
      }
      if (s.targets.empty()) {
        for (const auto &v : values) desired[v] = g.total / static_cast<double>(values.size());
      } else {
        int listed = 0;
        for (const auto &t : s.targets) {
          desired[t.value] = g.total * t.percent / 100.0;
          listed += t.percent;
          values.erase(t.value);
        }
        if (listed < 100 && !values.empty())
          for (const auto &v : values)
            desired[v] = g.total * (100 - listed) / 100.0 / static_cast<double>(values.size());
      }
      g.spread_desired.push_back(std::move(desired));
      g.spread_count.push_back(std::move(have));
    }
  }
  const bool scan = !group.affinities.empty() || !group.spreads.empty();
  for (size_t i = 0; i < count; ++i) {
    int64_t n = scan ? pick_scan(g) : pick_indexed(g);
    if (n < 0) {
      // Free capacity only shrinks within a call: the rest fail too.
      if (why) *why = explain(g);
      break;
    }
    out[i] = n;
    commit(g, static_cast<size_t>(n));
  }
  return out;
}

Explanation place(const std::vector<Node> &nodes, const std::vector<Resources> &asks,
                  std::vector<int64_t> &placements) {
  Cluster cluster(nodes);
  placements.assign(asks.size(), -1);
  Explanation first_failure;
  for (size_t a = 0; a < asks.size(); ++a) {
    Group g;
    g.resources = asks[a];
    Explanation why;
    placements[a] = cluster.place(g, 1, &why)[0];
    if (placements[a] < 0 && !first_failure.failed()) first_failure = why;
  }
  return first_failure;
}

}  // namespace flotilla::binpack
