// /v1/plugins: the plugins this daemon loaded.
#include <string>

#include "api/endpoint.h"
#include "plugin_host.h"

namespace flotilla::api {
namespace {

void get_plugins(const StatePtr &s, Request &, const Params &, Responder &r) {
  json list = json::array();
  if (s->ctx.plugins) {
    for (const PluginInfo &p : s->ctx.plugins->list()) {
      list.push_back({{"name", p.name},
                      {"id", p.id},
                      {"version", p.version},
                      {"description", p.description},
                      {"path", p.path},
                      {"sha256", p.sha256},
                      {"provides", p.provides},
                      {"depends_on", p.depends_on},
                      {"abi", std::to_string(p.abi_major) + "." + std::to_string(p.abi_minor)}});
    }
  }
  r.send(Response::json(200, {{"plugins", std::move(list)}}));
}

}  // namespace

std::vector<Route> plugins_routes() {
  return {
      {{"v1", "plugins"}, {{"GET", get_plugins}}},
  };
}

}  // namespace flotilla::api
