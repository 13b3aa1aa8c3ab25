// /v1/nodes: the cluster's nodes, and draining one.
#include <string>

#include "api/endpoint.h"

namespace flotilla::api {
namespace {

void list_nodes(const StatePtr &s, Request &, const Params &, Responder &r) {
  if (!s->store()) return r.send(no_store());
  read_snapshot(s, {{std::string(kNodesPrefix)}},
                [r](StoreResult res, std::vector<std::vector<KeyValue>> kvs, int64_t rev) mutable {
                  guarded(r, [&] {
                    if (!res.ok()) return r.send(store_failure(res, "reading nodes"));
                    json nodes = json::array();
                    for (const auto &kv : kvs[0]) {
                      json n = parse_record(kv.value);
                      if (!n.is_object()) n = json{{"record", n}};
                      n["name"] = key_suffix(kv.key, kNodesPrefix);
                      nodes.push_back(std::move(n));
                    }
                    r.send(Response::json(200, {{"nodes", nodes}, {"revision", rev}}));
                  });
                });
}

void get_node(const StatePtr &s, Request &, const Params &p, Responder &r) {
  if (!s->store()) return r.send(no_store());
  std::string name = p[0];
  read_snapshot(
      s, {{std::string(kNodesPrefix) + name, true}},
      [r, name](StoreResult res, std::vector<std::vector<KeyValue>> kvs, int64_t rev) mutable {
        guarded(r, [&] {
          if (!res.ok()) return r.send(store_failure(res, "reading node " + name));
          if (kvs[0].empty())
            return r.send(error_json(404, "not_found", "node \"" + name + "\" not found"));
          json n = parse_record(kvs[0][0].value);
          if (!n.is_object()) n = json{{"record", n}};
          n["name"] = name;
          n["revision"] = rev;
          r.send(Response::json(200, n));
        });
      });
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
      s, {{std::string(kNodesPrefix) + name, true}},
      [s, r, name, control](StoreResult res, std::vector<std::vector<KeyValue>> kvs, int64_t) mutable {
        guarded(r, [&] {
          if (!res.ok()) return r.send(store_failure(res, "reading node " + name));
          if (kvs[0].empty())
            return r.send(error_json(404, "not_found", "node \"" + name + "\" not found"));
          StoreClient *store = s->store();
          if (!store) return r.send(no_store());
          store->put("/flotilla/node-control/" + name, control.dump(),
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
  return under(e.kv.key, kNodesPrefix) || under(e.kv.key, "/flotilla/node-control/");
}
bool node_changed(const StoreEvent &e, const Request &, const Params &p) {
  return e.kv.key == std::string(kNodesPrefix) + p[0] ||
         e.kv.key == "/flotilla/node-control/" + p[0];
}

}  // namespace

std::vector<Route> nodes_routes() {
  return {
      {{"v1", "nodes"}, {{"GET", list_nodes}}, false, nodes_changed},
      {{"v1", "nodes", "*"}, {{"GET", get_node}}, false, node_changed},
      {{"v1", "nodes", "*", "drain"}, {{"POST", post_node_drain}}},
  };
}

}  // namespace flotilla::api
