// /v1/version, /v1/health, /v1/metrics: the daemon itself.
#include <flotilla/version.h>

#include <string>

#include "api/endpoint.h"
#include "flotilla_build_config.h"
#include "plugin_host.h"

namespace flotilla::api {
namespace {

std::string abi_version() {
  return std::to_string(FLOTILLA_ABI_VERSION_MAJOR) + "." +
         std::to_string(FLOTILLA_ABI_VERSION_MINOR);
}

void get_version(const StatePtr &, Request &, const Params &, Responder &r) {
  r.send(Response::json(200, {{"version", FLOTILLA_VERSION}, {"abi", abi_version()}}));
}

void get_health(const StatePtr &, Request &, const Params &, Responder &r) {
  r.send(Response::json(200, {{"status", "ok"}}));
}

void get_metrics(const StatePtr &s, Request &, const Params &, Responder &r) {
  Response resp;
  resp.headers.emplace_back("Content-Type", "text/plain; version=0.0.4; charset=utf-8");
  if (s->ctx.plugins) resp.body = s->ctx.plugins->metrics().render_prometheus();
  if (!resp.body.empty() && resp.body.back() != '\n') resp.body += '\n';
  resp.body += s->counters.render();
  r.send(std::move(resp));
}

}  // namespace

std::vector<Route> agent_routes() {
  return {
      {{"v1", "version"}, {{"GET", get_version}}},
      {{"v1", "health"}, {{"GET", get_health}}},
      {{"v1", "metrics"}, {{"GET", get_metrics}}},
  };
}

}  // namespace flotilla::api
