// /v1/images: the image store, served by the runtime plugin, which owns it.
#include <flotilla/runtime.h>

#include <optional>
#include <string>

#include "api/endpoint.h"
#include "error.h"
#include "node/runtime_client.h"

namespace flotilla::api {
namespace {

// The runtime plugin, or a 501 that says which plugin to add.
std::optional<RuntimeClient> runtime_of(const StatePtr &s, Responder &r) {
  auto runtimes = s->providers(FLOTILLA_RUNTIME_INTERFACE_ID);
  if (runtimes.empty()) {
    r.send(error_json(501, "unsupported",
                      "no runtime plugin is loaded (none serves flotilla.runtime/1), so there is "
                      "no image store; add [plugin.runtime-runc] to the config"));
    return std::nullopt;
  }
  return RuntimeClient(static_cast<const flotilla_runtime_v1 *>(runtimes.front().vtable),
                       runtimes.front().self);
}

Response runtime_failure(const StoreResult &res, std::string_view doing) {
  return status_error(res.status, std::string(doing) + ": " +
                                      (res.message.empty() ? status_name(res.status) : res.message));
}

// POST /v1/images {"path": "/abs/oci-layout-or-archive", "tag": "name:tag"}
void post_image(const StatePtr &s, Request &req, const Params &, Responder &r) {
  std::string mt = media_type(req.header("content-type"));
  if (mt != "application/json")
    return r.send(error_json(415, "unsupported_media_type",
                             "POST /v1/images takes application/json: {\"path\": ..., \"tag\": ...}"));
  json body = json::parse(req.body, nullptr, false);
  if (!body.is_object())
    return r.send(error_json(400, "invalid", "the body is not a JSON object"));
  for (auto it = body.begin(); it != body.end(); ++it)
    if (it.key() != "path" && it.key() != "tag")
      return r.send(error_json(400, "invalid", "unknown key \"" + it.key() +
                                                   "\"; an import takes \"path\" and \"tag\""));
  if (!body.contains("path") || !body["path"].is_string() ||
      body["path"].get<std::string>().empty() || body["path"].get<std::string>()[0] != '/')
    return r.send(error_json(400, "invalid",
                             "\"path\" must be the absolute path, on the daemon's host, of an OCI "
                             "image layout directory or an oci-archive tarball"));
  std::string tag;
  if (body.contains("tag")) {
    if (!body["tag"].is_string())
      return r.send(error_json(400, "invalid", "\"tag\" must be a string like \"busybox:latest\""));
    tag = body["tag"].get<std::string>();
  }
  auto rt = runtime_of(s, r);
  if (!rt) return;
  std::string path = body["path"];
  rt->image_import(path, tag, [r, path](StoreResult res, json record) mutable {
    guarded(r, [&] {
      if (!res.ok()) return r.send(runtime_failure(res, "importing " + path));
      r.send(Response::json(201, record));
    });
  });
}

void list_images(const StatePtr &s, Request &, const Params &, Responder &r) {
  auto rt = runtime_of(s, r);
  if (!rt) return;
  rt->image_list([r](StoreResult res, json list) mutable {
    guarded(r, [&] {
      if (!res.ok()) return r.send(runtime_failure(res, "listing images"));
      r.send(Response::json(200, {{"images", list.is_array() ? list : json::array()}}));
    });
  });
}

void delete_image(const StatePtr &s, Request &, const Params &p, Responder &r) {
  auto rt = runtime_of(s, r);
  if (!rt) return;
  std::string ref = p[0];
  rt->image_remove(ref, [r, ref](StoreResult res) mutable {
    guarded(r, [&] {
      if (!res.ok()) return r.send(runtime_failure(res, "removing image " + ref));
      r.send(Response::json(200, {{"removed", ref}}));
    });
  });
}

// POST /v1/images/pull {"ref": "registry.example:5000/team/app:2", "policy": "always"}
// Without ?progress=true: 200 with the image record once it is in the store,
// or the error. With it: 200 at once, then one JSON object per line,
// {"progress": {...}} while it pulls, last {"image": record} or {"error":
// message, "code": status name}.
void post_image_pull(const StatePtr &s, Request &req, const Params &, Responder &r) {
  std::string mt = media_type(req.header("content-type"));
  if (mt != "application/json")
    return r.send(error_json(415, "unsupported_media_type",
                             "POST /v1/images/pull takes application/json: {\"ref\": ..., "
                             "\"policy\": \"always\" | \"if_not_present\"}"));
  json body = json::parse(req.body, nullptr, false);
  if (!body.is_object())
    return r.send(error_json(400, "invalid", "the body is not a JSON object"));
  for (auto it = body.begin(); it != body.end(); ++it)
    if (it.key() != "ref" && it.key() != "policy")
      return r.send(error_json(400, "invalid", "unknown key \"" + it.key() +
                                                   "\"; a pull takes \"ref\" and \"policy\""));
  if (!body.contains("ref") || !body["ref"].is_string() || body["ref"].get<std::string>().empty())
    return r.send(error_json(400, "invalid",
                             "\"ref\" must be an image reference like "
                             "\"registry.example:5000/team/app:2\" or \"busybox:1.36\""));
  std::string policy = "always";
  if (body.contains("policy")) {
    if (!body["policy"].is_string() ||
        (body["policy"] != "always" && body["policy"] != "if_not_present"))
      return r.send(error_json(400, "invalid",
                               "\"policy\" must be \"always\" or \"if_not_present\""));
    policy = body["policy"];
  }
  auto rt = runtime_of(s, r);
  if (!rt) return;
  if (!rt->can_pull())
    return r.send(error_json(501, "unsupported",
                             "the runtime plugin cannot pull images (built for ABI 1.1)"));
  std::string ref = body["ref"];
  const bool stream = query_flag(req, "progress");
  if (stream) r.begin_stream(200, {{"Content-Type", "application/x-ndjson"}});
  rt->image_pull(
      ref, policy,
      [r, stream](const json &progress) mutable {
        if (stream) r.write(json{{"progress", progress}}.dump() + "\n");
      },
      [r, ref, stream](StoreResult res, json record) mutable {
        guarded(r, [&] {
          if (!stream) {
            if (!res.ok()) return r.send(runtime_failure(res, "pulling " + ref));
            return r.send(Response::json(200, record));
          }
          json last = res.ok() ? json{{"image", record}}
                               : json{{"error", "pulling " + ref + ": " + res.message},
                                      {"code", status_name(res.status)}};
          r.write(last.dump() + "\n");
          r.end();
        });
      });
}

}  // namespace

std::vector<Route> images_routes() {
  return {
      {{"v1", "images"}, {{"GET", list_images}, {"POST", post_image}}},
      {{"v1", "images", "pull"}, {{"POST", post_image_pull}}},
      {{"v1", "images", "*"}, {{"DELETE", delete_image}}, true},
  };
}

}  // namespace flotilla::api
