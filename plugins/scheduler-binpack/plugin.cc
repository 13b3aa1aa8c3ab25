// scheduler-binpack: flotilla.scheduler/1 over the engine in binpack.cc.
// Includes only the ABI; node attributes, usage and the groups' placement
// rules arrive as JSON (docs/abi-json.md, "placement rules").
#include <flotilla/flotilla.h>

#include <cstdlib>
#include <cstring>
#include <new>
#include <nlohmann/json.hpp>
#include <string>

#include "binpack.h"

namespace {

using nlohmann::json;
namespace bp = flotilla::binpack;

struct Instance {
  const flotilla_host *host;
  bp::Options options;
};

void release_buf(flotilla_buf *buf) {
  std::free(const_cast<char *>(buf->data));
  buf->data = nullptr;
  buf->len = 0;
}

bp::Resources from_c(const flotilla_resources &r) { return {r.cpu_mhz, r.memory_mb, r.disk_mb}; }

// The i-th element of an array whose element size the caller wrote in the
// first element's struct_size (a 1.0 caller's structs are smaller).
template <typename T>
const T &at(const T *base, size_t i) {
  size_t stride = base->struct_size ? base->struct_size : sizeof(T);
  return *reinterpret_cast<const T *>(reinterpret_cast<const char *>(base) + i * stride);
}

// o[key], or def when absent. (json::value() with a json default returns a
// reference to the default in nlohmann 3.11.2, which dangles.)
json member(const json &o, const char *key, json def) {
  auto it = o.find(key);
  return it == o.end() ? def : *it;
}

json parse_or_empty(const char *text) {
  if (!text || !*text) return json::object();
  json j = json::parse(text, nullptr, false);
  if (!j.is_object()) throw std::invalid_argument(std::string("not a JSON object: ") + text);
  return j;
}

bp::Constraint constraint_from(const json &c) {
  bp::Constraint out{c.value("attribute", ""), c.value("operator", "="), c.value("value", "")};
  if (auto bad = bp::check_constraint(out))
    throw std::invalid_argument("constraint " + out.text() + ": " + *bad);
  return out;
}

// The placement rules of one group (docs/abi-json.md).
bp::Group group_from(const json &rules) {
  bp::Group g;
  for (const auto &dc : member(rules, "datacenters", json::array())) g.datacenters.push_back(dc);
  g.pool = rules.value("pool", "");
  for (const auto &c : member(rules, "constraints", json::array()))
    g.constraints.push_back(constraint_from(c));
  for (const auto &a : member(rules, "affinities", json::array()))
    g.affinities.push_back({constraint_from(a), a.value("weight", 50)});
  for (const auto &s : member(rules, "spreads", json::array())) {
    bp::Spread sp{s.value("attribute", ""), s.value("weight", 50), {}};
    for (const auto &t : member(s, "targets", json::array()))
      sp.targets.push_back({t.value("value", ""), t.value("percent", 0)});
    g.spreads.push_back(std::move(sp));
  }
  g.distinct_hosts = rules.value("distinct_hosts", false);
  for (const auto &p : member(rules, "ports", json::array())) g.ports.push_back(p.get<int>());
  const json devices = member(rules, "devices", json::object());
  for (auto it = devices.begin(); it != devices.end(); ++it)
    g.devices[it.key()] = it.value().get<int64_t>();
  g.total = rules.value("total", 0u);
  return g;
}

flotilla_status place(void *self, const flotilla_sched_node *nodes, size_t n_nodes,
                      const flotilla_sched_ask *asks, size_t n_asks,
                      flotilla_sched_placement *placements, flotilla_buf *explain_out) {
  auto *inst = static_cast<Instance *>(self);
  try {
    if ((n_nodes && !nodes) || (n_asks && (!asks || !placements))) {
      inst->host->set_error(inst->host->host_ctx, "place: nodes, asks and placements are required");
      return FLOTILLA_E_INVALID;
    }
    std::vector<bp::Node> ns(n_nodes);
    std::vector<json> job_allocs(n_nodes);
    for (size_t i = 0; i < n_nodes; ++i) {
      const flotilla_sched_node &c = at(nodes, i);
      bp::Node &n = ns[i];
      n.capacity = from_c(c.capacity);
      n.used = from_c(c.used);
      n.eligible = c.eligible != 0;
      n.name = c.name ? c.name : "";
      json attrs = parse_or_empty(c.attributes_json);
      for (auto it = attrs.begin(); it != attrs.end(); ++it)
        n.attributes[it.key()] = it.value().is_string() ? it.value().get<std::string>()
                                                        : it.value().dump();
      if (FLOTILLA_HAS_FIELD(&c, flotilla_sched_node, usage_json)) {
        json usage = parse_or_empty(c.usage_json);
        for (const auto &p : member(usage, "ports_used", json::array()))
          n.ports_used.push_back(p.get<int>());
        const json devices = member(usage, "devices", json::object());
        const json devices_used = member(usage, "devices_used", json::object());
        for (auto it = devices.begin(); it != devices.end(); ++it)
          n.devices[it.key()] = it.value().get<int64_t>();
        for (auto it = devices_used.begin(); it != devices_used.end(); ++it)
          n.devices_used[it.key()] = it.value().get<int64_t>();
        job_allocs[i] = member(usage, "job_allocs", json::object());
      }
    }
    // Check every ask before placing any.
    for (size_t i = 0; i < n_asks; ++i) {
      const flotilla_resources &r = at(asks, i).resources;
      if (r.cpu_mhz < 0 || r.memory_mb < 0 || r.disk_mb < 0) {
        inst->host->set_error(inst->host->host_ctx, "place: an ask has negative resources");
        return FLOTILLA_E_INVALID;
      }
    }
    bp::Cluster cluster(std::move(ns), inst->options);
    bp::Explanation first_failure;
    for (size_t i = 0; i < n_asks;) {
      const flotilla_sched_ask &first = at(asks, i);
      auto same = [&](const flotilla_sched_ask &a) {
        auto eq = [](const char *x, const char *y) {
          return (!x && !y) || (x && y && std::strcmp(x, y) == 0);
        };
        return eq(a.job, first.job) && eq(a.group, first.group) &&
               eq(a.constraints_json, first.constraints_json) &&
               std::memcmp(&a.resources.cpu_mhz, &first.resources.cpu_mhz,
                           3 * sizeof(int64_t)) == 0;
      };
      size_t end = i + 1;
      while (end < n_asks && same(at(asks, end))) ++end;
      bp::Group g = group_from(parse_or_empty(first.constraints_json));
      g.job = first.job ? first.job : "";
      g.resources = from_c(first.resources);
      g.existing.assign(n_nodes, 0);
      for (size_t n = 0; n < n_nodes; ++n)
        if (job_allocs[n].is_object()) g.existing[n] = job_allocs[n].value(g.job, 0u);
      bp::Explanation why;
      auto out = cluster.place(g, end - i, &why);
      // placements is ours to fill and has not grown: plain indexing.
      for (size_t k = i; k < end; ++k) placements[k].node_index = out[k - i];
      if (why.failed() && !first_failure.failed()) first_failure = why;
      i = end;
    }
    if (explain_out) {
      explain_out->struct_size = sizeof(flotilla_buf);
      explain_out->data = nullptr;
      explain_out->len = 0;
      explain_out->release = nullptr;
      if (first_failure.failed()) {
        std::string j = first_failure.to_json();
        char *copy = static_cast<char *>(std::malloc(j.size() + 1));
        if (!copy) return FLOTILLA_E_NOMEM;
        std::memcpy(copy, j.c_str(), j.size() + 1);
        explain_out->data = copy;
        explain_out->len = j.size();
        explain_out->release = release_buf;
      }
    }
    return FLOTILLA_OK;
  } catch (const std::bad_alloc &) {
    return FLOTILLA_E_NOMEM;
  } catch (const std::exception &e) {
    inst->host->set_error(inst->host->host_ctx, (std::string("place: ") + e.what()).c_str());
    return FLOTILLA_E_INVALID;
  } catch (...) {
    inst->host->set_error(inst->host->host_ctx, "place: internal error");
    return FLOTILLA_E_INTERNAL;
  }
}

const flotilla_scheduler_v1 vtable = {sizeof(flotilla_scheduler_v1), place};

// Every bad key goes to host->config_error; false if there was one.
bool read_options(const flotilla_host *host, bp::Options &options) {
  json cfg = json::parse(host->config_json(host->host_ctx), nullptr, false);
  if (!cfg.is_object()) cfg = json::object();
  bool ok = true;
  for (auto it = cfg.begin(); it != cfg.end(); ++it) {
    const std::string &key = it.key();
    const json &v = it.value();
    if (key == "candidates") {
      if (!v.is_number_integer() || v.get<int64_t>() < 1 || v.get<int64_t>() > 64) {
        host->config_error(host->host_ctx, "candidates",
                           "must be an integer from 1 to 64 (feasible nodes scored per placement)");
        ok = false;
      } else {
        options.candidates = v.get<int>();
      }
    } else if (key == "anti_affinity_weight") {
      if (!v.is_number() || !(v.get<double>() >= 0 && v.get<double>() <= 10)) {
        host->config_error(host->host_ctx, "anti_affinity_weight", "must be a number from 0 to 10");
        ok = false;
      } else {
        options.anti_affinity_weight = v.get<double>();
      }
    } else {
      host->config_error(host->host_ctx, key.c_str(),
                         "unknown key; scheduler-binpack takes candidates and anti_affinity_weight");
      ok = false;
    }
  }
  return ok;
}

flotilla_status check_config(const flotilla_host *host, uint32_t) {
  bp::Options options;
  return read_options(host, options) ? FLOTILLA_OK : FLOTILLA_E_INVALID;
}

flotilla_status init(const flotilla_host *host, void **instance_out) {
  bp::Options options;
  if (!read_options(host, options)) return FLOTILLA_E_INVALID;
  auto *inst = new (std::nothrow) Instance{host, options};
  if (!inst) return FLOTILLA_E_NOMEM;
  *instance_out = inst;
  return FLOTILLA_OK;
}

void deinit(void *instance) { delete static_cast<Instance *>(instance); }

const void *get_interface(void *, const char *id) {
  return std::strcmp(id, FLOTILLA_SCHEDULER_INTERFACE_ID) == 0 ? &vtable : nullptr;
}

const char *const provides[] = {FLOTILLA_SCHEDULER_INTERFACE_ID, nullptr};
const char *const depends_on[] = {nullptr};

}  // namespace

extern "C" FLOTILLA_PLUGIN_EXPORT const flotilla_entry flotilla_plugin_entry = {
    sizeof(flotilla_entry),
    FLOTILLA_ABI_VERSION_MAJOR,
    FLOTILLA_ABI_VERSION_MINOR,
    "org.flotilla.scheduler-binpack",
    "0.2.0",
    "best-fit bin-packing placement with constraints, affinities, spread, ports and devices",
    provides,
    depends_on,
    init,
    deinit,
    get_interface,
    check_config,
};
