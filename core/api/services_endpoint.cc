// /v1/services: the service registry the discovery plugins keep in the
// store (plugins/discovery/README.md, "Registry records"): every instance
// of a service with its node, addresses, port, tags, health and the output
// of its last check, and the service's virtual IP. Read from the store at
// one revision, so any node's API shows the whole cluster.
#include <map>
#include <set>
#include <string>

#include "api/endpoint.h"

namespace flotilla::api {
namespace {

// "/flotilla/services/<svc>/<alloc>" → {svc, alloc}; false for other keys.
bool split_instance_key(const std::string &key, std::string &service, std::string &alloc) {
  std::string rest = key_suffix(key, kServices);
  auto slash = rest.find('/');
  if (slash == std::string::npos || slash == 0 || slash + 1 == rest.size()) return false;
  service = rest.substr(0, slash);
  alloc = rest.substr(slash + 1);
  return true;
}

// One instance as the API shows it: its record, with the allocation taken
// from the key (the key is what DNS and the VIP map go by).
json instance_view(const KeyValue &kv, const std::string &alloc) {
  json rec = parse_record(kv.value);
  if (!rec.is_object()) rec = json{{"record", rec}};
  json out = {{"alloc", alloc},
              {"node", rec.value("node", json(nullptr))},
              {"addresses", rec.value("addresses", json::array())},
              {"port", rec.value("port", json(nullptr))},
              {"tags", rec.value("tags", json::array())},
              {"health", rec.contains("health") ? rec["health"] : json("unknown")},
              {"output", rec.value("output", json(""))}};
  if (rec.contains("unparsable_value")) out["unparsable_value"] = rec["unparsable_value"];
  return out;
}

struct ServiceView {
  json instances = json::array();
  json vip = nullptr;
};

// Every service the registry or the VIP records name, by name.
std::map<std::string, ServiceView> services_of(const std::vector<KeyValue> &instances,
                                               const std::vector<KeyValue> &vips) {
  std::map<std::string, ServiceView> out;
  for (const auto &kv : instances) {
    std::string service, alloc;
    if (!split_instance_key(kv.key, service, alloc)) continue;
    out[service].instances.push_back(instance_view(kv, alloc));
  }
  for (const auto &kv : vips) {
    json v = parse_record(kv.value);
    std::string address = string_field(v, "address");
    out[key_suffix(kv.key, kVips)].vip = address.empty() ? json(nullptr) : json(address);
  }
  return out;
}

json health_counts(const json &instances) {
  json counts = {{"passing", 0}, {"starting", 0}, {"critical", 0}};
  for (const json &i : instances) {
    std::string h = i["health"].is_string() ? i["health"].get<std::string>() : "unknown";
    counts[h] = counts.value(h, 0) + 1;
  }
  return counts;
}

void list_services(const StatePtr &s, Request &, const Params &, Responder &r) {
  if (!s->store()) return r.send(no_store());
  read_snapshot(s, {{kServices}, {kVips}},
                [r](StoreResult res, std::vector<std::vector<KeyValue>> kvs, int64_t rev) mutable {
                  guarded(r, [&] {
                    if (!res.ok()) return r.send(store_failure(res, "reading services"));
                    json list = json::array();
                    for (auto &[name, view] : services_of(kvs[0], kvs[1])) {
                      json tags = json::array();
                      std::set<std::string> seen;
                      for (const json &i : view.instances)
                        for (const json &t : i["tags"])
                          if (t.is_string() && seen.insert(t.get<std::string>()).second)
                            tags.push_back(t);
                      list.push_back({{"name", name},
                                      {"vip", view.vip},
                                      {"instances", view.instances.size()},
                                      {"health", health_counts(view.instances)},
                                      {"tags", tags}});
                    }
                    r.send(Response::json(200, {{"services", list}, {"revision", rev}}));
                  });
                });
}

void get_service(const StatePtr &s, Request &, const Params &p, Responder &r) {
  if (!s->store()) return r.send(no_store());
  std::string name = p[0];
  read_snapshot(
      s, {{kServices + name + "/"}, {kVips + name, true}},
      [r, name](StoreResult res, std::vector<std::vector<KeyValue>> kvs, int64_t rev) mutable {
        guarded(r, [&] {
          if (!res.ok()) return r.send(store_failure(res, "reading service " + name));
          auto all = services_of(kvs[0], kvs[1]);
          auto it = all.find(name);
          if (it == all.end())
            return r.send(error_json(404, "not_found",
                                     "service \"" + name +
                                         "\" not found: no instance is registered and it has no "
                                         "virtual IP"));
          r.send(Response::json(200, {{"name", name},
                                      {"vip", it->second.vip},
                                      {"health", health_counts(it->second.instances)},
                                      {"instances", it->second.instances},
                                      {"revision", rev}}));
        });
      });
}

bool services_changed(const StoreEvent &e, const Request &, const Params &) {
  return under(e.kv.key, kServices) || under(e.kv.key, kVips);
}
bool service_changed(const StoreEvent &e, const Request &, const Params &p) {
  return under(e.kv.key, kServices + p[0] + "/") || e.kv.key == kVips + p[0];
}

}  // namespace

std::vector<Route> services_routes() {
  return {
      {{"v1", "services"}, {{"GET", list_services}}, false, services_changed},
      {{"v1", "services", "*"}, {{"GET", get_service}}, false, service_changed},
  };
}

}  // namespace flotilla::api
