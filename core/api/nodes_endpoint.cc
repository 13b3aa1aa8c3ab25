// /v1/nodes: the cluster's nodes, and draining one; this node's network
// (its network plugin's status: subnets, WireGuard peers).
#include <flotilla/network.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>
#include <string>

#include "api/endpoint.h"
#include "plugin_host.h"

namespace flotilla::api {
namespace {

// The node's own note of its last lease renewal (/flotilla/heartbeats/,
// core/README.md): "last_heartbeat" as it wrote it and "heartbeat_age_ms"
// by this node's clock (so clock skew between the two shows in it). A node
// with a record but no heartbeat yet (or of an older version) gets null.
void add_heartbeat(json &n, const KeyValue *hb) {
  n["last_heartbeat"] = nullptr;
  n["heartbeat_age_ms"] = nullptr;
  if (!hb) return;
  json h = parse_record(hb->value);
  if (!h.is_object() || !h.contains("at_ms") || !h["at_ms"].is_number_integer()) return;
  auto now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count();
  n["last_heartbeat"] = string_field(h, "at");
  n["heartbeat_age_ms"] = std::max<int64_t>(0, now_ms - h["at_ms"].get<int64_t>());
  if (h.contains("every_ms")) n["heartbeat_every_ms"] = h["every_ms"];
}

void list_nodes(const StatePtr &s, Request &, const Params &, Responder &r) {
  if (!s->store()) return r.send(no_store());
  read_snapshot(
      s, {{kNodes}, {kHeartbeats}},
      [r](StoreResult res, std::vector<std::vector<KeyValue>> kvs, int64_t rev) mutable {
        guarded(r, [&] {
          if (!res.ok()) return r.send(store_failure(res, "reading nodes"));
          std::map<std::string, const KeyValue *> beats;
          for (const auto &kv : kvs[1]) beats[key_suffix(kv.key, kHeartbeats)] = &kv;
          json nodes = json::array();
          for (const auto &kv : kvs[0]) {
            json n = parse_record(kv.value);
            if (!n.is_object()) n = json{{"record", n}};
            std::string name = key_suffix(kv.key, kNodes);
            n["name"] = name;
            auto it = beats.find(name);
            add_heartbeat(n, it == beats.end() ? nullptr : it->second);
            nodes.push_back(std::move(n));
          }
          r.send(Response::json(200, {{"nodes", nodes}, {"revision", rev}}));
        });
      },
      r);
}

void get_node(const StatePtr &s, Request &, const Params &p, Responder &r) {
  if (!s->store()) return r.send(no_store());
  std::string name = p[0];
  read_snapshot(
      s, {{kNodes + name, true}, {kHeartbeats + name, true}},
      [r, name](StoreResult res, std::vector<std::vector<KeyValue>> kvs, int64_t rev) mutable {
        guarded(r, [&] {
          if (!res.ok()) return r.send(store_failure(res, "reading node " + name));
          if (kvs[0].empty())
            return r.send(error_json(404, "not_found", "node \"" + name + "\" not found"));
          json n = parse_record(kvs[0][0].value);
          if (!n.is_object()) n = json{{"record", n}};
          n["name"] = name;
          add_heartbeat(n, kvs[1].empty() ? nullptr : &kvs[1][0]);
          n["revision"] = rev;
          r.send(Response::json(200, n));
        });
      },
      r);
}

// POST /v1/nodes/{name}/drain {"drain": true, "eligible": false}: the
// scheduler stops and re-places the node's allocations (drain) or places no
// new ones there (eligible false). Kept under /flotilla/node-control/ so the
// node's own record, which it rewrites, does not undo it.
void post_node_drain(const StatePtr &s, Request &req, const Params &p, Responder &r) {
  if (!s->store()) return r.send(no_store());
  std::string name = p[0];
  json body = json::parse(req.body.empty() ? "{}" : req.body, nullptr, false);
  if (!body.is_object() || (body.contains("drain") && !body["drain"].is_boolean()) ||
      (body.contains("eligible") && !body["eligible"].is_boolean()))
    return r.send(error_json(400, "invalid",
                             "the body must be a JSON object like {\"drain\": true} or "
                             "{\"eligible\": false}; both keys are booleans"));
  // An empty body drains; {"eligible": false} alone only stops new placements.
  bool drain = body.value("drain", !body.contains("eligible"));
  json control = {{"drain", drain}, {"eligible", body.value("eligible", !drain)}};
  read_snapshot(
      s, {{kNodes + name, true}},
      [s, r, name, control](StoreResult res, std::vector<std::vector<KeyValue>> kvs,
                            int64_t) mutable {
        guarded(r, [&] {
          if (!res.ok()) return r.send(store_failure(res, "reading node " + name));
          if (kvs[0].empty())
            return r.send(error_json(404, "not_found", "node \"" + name + "\" not found"));
          StoreClient *store = s->store();
          if (!store) return r.send(no_store());
          store->put(kNodeControl + name, control.dump(),
                     [r, name, control](StoreResult w, int64_t rev) mutable {
                       guarded(r, [&] {
                         if (!w.ok()) return r.send(store_failure(w, "writing node " + name));
                         json out = control;
                         out["name"] = name;
                         out["revision"] = rev;
                         r.send(Response::json(200, out));
                       });
                     });
        });
      });
}

bool nodes_changed(const StoreEvent &e, const Request &, const Params &) {
  return under(e.kv.key, kNodes) || under(e.kv.key, kNodeControl);
}
bool node_changed(const StoreEvent &e, const Request &, const Params &p) {
  return e.kv.key == kNodes + p[0] || e.kv.key == kNodeControl + p[0];
}

// Where a network plugin keeps a copy of each node's status() for the
// other nodes' APIs (docs/abi-json.md).

// Another node's network status: the copy its network plugin keeps in the
// store (docs/abi-json.md, "network status in the store"), with its age by
// this node's clock.
void get_other_node_network(const StatePtr &s, const std::string &name, Responder &r) {
  if (!s->store()) return r.send(no_store());
  read_snapshot(
      s, {{kNodes + name, true}, {kNetStatus + name, true}},
      [r, name](StoreResult res, std::vector<std::vector<KeyValue>> kvs, int64_t rev) mutable {
        guarded(r, [&] {
          if (!res.ok()) return r.send(store_failure(res, "reading node " + name + "'s network"));
          if (kvs[0].empty())
            return r.send(error_json(404, "not_found", "node \"" + name + "\" not found"));
          if (kvs[1].empty())
            return r.send(error_json(
                404, "not_found",
                "node \"" + name +
                    "\" keeps no network status in the store (its network plugin has no "
                    "mesh, or status_interval = 0); ask its own daemon"));
          json n = parse_record(kvs[1][0].value);
          if (!n.is_object())
            return r.send(error_json(502, "plugin",
                                     "node \"" + name + "\"'s network status is not JSON"));
          n["source"] = "store";
          n["revision"] = rev;
          if (n.contains("published_at_ms") && n["published_at_ms"].is_number_integer()) {
            auto now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                              std::chrono::system_clock::now().time_since_epoch())
                              .count();
            n["age_ms"] = std::max<int64_t>(0, now_ms - n["published_at_ms"].get<int64_t>());
          }
          r.send(Response::json(200, n));
        });
      },
      r);
}

}  // namespace

// GET /v1/nodes/{name}/network: the network plugin's status() of this
// daemon's own node, read now; another node's as that node last copied it
// into the store.
void get_node_network(const StatePtr &s, Request &, const Params &p, Responder &r) {
  const std::string name = p[0];
  const std::string self = s->ctx.config ? s->ctx.config->node.name : "";
  if (name != self) return get_other_node_network(s, name, r);
  const std::vector<PluginRef> nets = s->providers(FLOTILLA_NETWORK_INTERFACE_ID);
  if (nets.empty())
    return r.send(error_json(404, "not_found",
                             "no plugin provides " FLOTILLA_NETWORK_INTERFACE_ID " on this node"));
  auto *net = static_cast<const flotilla_network_v1 *>(nets[0].vtable);
  struct Pending {
    StatePtr state;
    Responder responder;
    std::string plugin;
  };
  auto pending = std::make_unique<Pending>(Pending{s, r, nets[0].plugin});
  s->clear_plugin_error();
  flotilla_status st = net->status(
      nets[0].self,
      [](void *user, flotilla_status status, const char *text) {
        std::unique_ptr<Pending> pd(static_cast<Pending *>(user));
        guarded(pd->responder, [&] {
          if (status != FLOTILLA_OK || !text)
            return pd->responder.send(
                status_error(status, "plugin " + pd->plugin + " has no network status"));
          json j = json::parse(text, nullptr, false);
          if (j.is_discarded())
            return pd->responder.send(
                error_json(502, "plugin", "plugin " + pd->plugin + " answered no JSON"));
          pd->responder.send(Response::json(200, j));
        });
      },
      pending.get());
  if (st != FLOTILLA_OK) {
    std::string why = s->plugin_error();
    return r.send(status_error(
        st, "plugin " + nets[0].plugin + ": " + (why.empty() ? status_name(st) : why)));
  }
  pending.release();  // the callback owns it now
}

// POST /v1/nodes/{name}/rotate-key: this node's network plugin rotates its
// WireGuard key, make before break (plugins/net-overlay/README.md); asked
// through the event bus, answered at once (202): GET .../network shows the
// new key_generation once it is done.
void post_node_rotate_key(const StatePtr &s, Request &, const Params &p, Responder &r) {
  const std::string name = p[0];
  const std::string self = s->ctx.config ? s->ctx.config->node.name : "";
  if (name != self)
    return r.send(error_json(409, "not_this_node",
                             "this daemon is node \"" + self + "\"; ask node \"" + name +
                                 "\"'s own daemon to rotate its key"));
  if (!s->ctx.plugins || s->providers(FLOTILLA_NETWORK_INTERFACE_ID).empty())
    return r.send(error_json(404, "not_found",
                             "no plugin provides " FLOTILLA_NETWORK_INTERFACE_ID " on this node"));
  s->ctx.plugins->events().publish("network.rotate_key.request", "{}");
  r.send(Response::json(202, {{"node", name}, {"requested", true}}));
}

std::vector<Route> nodes_routes() {
  return {
      {{"v1", "nodes"}, {{"GET", list_nodes}}, false, nodes_changed},
      {{"v1", "nodes", "*"}, {{"GET", get_node}}, false, node_changed},
      {{"v1", "nodes", "*", "drain"}, {{"POST", post_node_drain}}},
      {{"v1", "nodes", "*", "network"}, {{"GET", get_node_network}}},
      {{"v1", "nodes", "*", "rotate-key"}, {{"POST", post_node_rotate_key}}},
  };
}

}  // namespace flotilla::api
