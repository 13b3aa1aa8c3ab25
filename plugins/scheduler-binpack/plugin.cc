// scheduler-binpack: flotilla.scheduler/1 over the best-fit engine in
// binpack.cc. Includes only the ABI.
#include <flotilla/flotilla.h>

#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#include "binpack.h"

namespace {

struct Instance {
  const flotilla_host *host;
};

void release_buf(flotilla_buf *buf) {
  std::free(const_cast<char *>(buf->data));
  buf->data = nullptr;
  buf->len = 0;
}

flotilla::binpack::Resources from_c(const flotilla_resources &r) {
  return {r.cpu_mhz, r.memory_mb, r.disk_mb};
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
    std::vector<flotilla::binpack::Node> ns(n_nodes);
    for (size_t i = 0; i < n_nodes; ++i)
      ns[i] = {from_c(nodes[i].capacity), from_c(nodes[i].used), nodes[i].eligible != 0};
    std::vector<flotilla::binpack::Resources> as(n_asks);
    for (size_t i = 0; i < n_asks; ++i) {
      const flotilla_resources &r = asks[i].resources;
      if (r.cpu_mhz < 0 || r.memory_mb < 0 || r.disk_mb < 0) {
        inst->host->set_error(inst->host->host_ctx, "place: an ask has negative resources");
        return FLOTILLA_E_INVALID;
      }
      as[i] = from_c(r);
    }
    std::vector<int64_t> out;
    auto why = flotilla::binpack::place(ns, as, out);
    for (size_t i = 0; i < n_asks; ++i) placements[i].node_index = out[i];
    if (explain_out) {
      explain_out->struct_size = sizeof(flotilla_buf);
      explain_out->data = nullptr;
      explain_out->len = 0;
      explain_out->release = nullptr;
      if (why.nodes > 0 || (n_asks && n_nodes == 0)) {
        std::string j = why.to_json();
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
  } catch (...) {
    inst->host->set_error(inst->host->host_ctx, "place: internal error");
    return FLOTILLA_E_INTERNAL;
  }
}

const flotilla_scheduler_v1 vtable = {sizeof(flotilla_scheduler_v1), place};

flotilla_status init(const flotilla_host *host, void **instance_out) {
  const char *cfg = host->config_json(host->host_ctx);
  if (std::strcmp(cfg, "{}") != 0) {
    host->config_error(host->host_ctx, "", "scheduler-binpack takes no config keys yet");
    return FLOTILLA_E_INVALID;
  }
  auto *inst = new (std::nothrow) Instance{host};
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
    "0.1.0",
    "best-fit bin-packing placement over CPU, memory and disk",
    provides,
    depends_on,
    init,
    deinit,
    get_interface,
};
