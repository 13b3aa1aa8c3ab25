#include "node/runtime_client.h"

#include <memory>

#include "plugin_host.h"

namespace flotilla {

namespace {

StoreResult runtime_result(flotilla_status status) {
  StoreResult r;
  r.status = status;
  if (status != FLOTILLA_OK) {
    r.message = PluginHost::last_error();
    if (r.message.empty()) r.message = "runtime request failed";
  }
  return r;
}

nlohmann::json parse_or_null(const char *text) {
  if (!text) return nullptr;
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  return j.is_discarded() ? nlohmann::json(nullptr) : j;
}

// Trampolines: user is a heap-held std::function, freed after the call.
void json_tramp(void *user, flotilla_status st, const char *json) {
  std::unique_ptr<RuntimeClient::JsonCb> cb(static_cast<RuntimeClient::JsonCb *>(user));
  (*cb)(runtime_result(st), parse_or_null(json));
}

void done_tramp(void *user, flotilla_status st) {
  std::unique_ptr<RuntimeClient::DoneCb> cb(static_cast<RuntimeClient::DoneCb *>(user));
  (*cb)(runtime_result(st));
}

template <class Start>
void with_json_cb(RuntimeClient::JsonCb cb, Start start) {
  auto *held = new RuntimeClient::JsonCb(std::move(cb));
  PluginHost::clear_last_error();
  flotilla_status st = start(held);
  if (st != FLOTILLA_OK) {
    std::unique_ptr<RuntimeClient::JsonCb> owned(held);
    (*owned)(runtime_result(st), nullptr);
  }
}

template <class Start>
void with_done_cb(RuntimeClient::DoneCb cb, Start start) {
  auto *held = new RuntimeClient::DoneCb(std::move(cb));
  PluginHost::clear_last_error();
  flotilla_status st = start(held);
  if (st != FLOTILLA_OK) {
    std::unique_ptr<RuntimeClient::DoneCb> owned(held);
    (*owned)(runtime_result(st));
  }
}

}  // namespace

void RuntimeClient::create(const std::string &id, const std::string &task_json, JsonCb cb) {
  with_json_cb(std::move(cb), [&](JsonCb *h) {
    return vt_->create(self_, id.c_str(), task_json.c_str(), json_tramp, h);
  });
}

void RuntimeClient::start(const std::string &id, JsonCb cb) {
  with_json_cb(std::move(cb), [&](JsonCb *h) { return vt_->start(self_, id.c_str(), json_tramp, h); });
}

void RuntimeClient::state(const std::string &id, JsonCb cb) {
  with_json_cb(std::move(cb), [&](JsonCb *h) { return vt_->state(self_, id.c_str(), json_tramp, h); });
}

void RuntimeClient::stop(const std::string &id, uint64_t timeout_ms, JsonCb cb) {
  with_json_cb(std::move(cb), [&](JsonCb *h) {
    return vt_->stop(self_, id.c_str(), timeout_ms, json_tramp, h);
  });
}

void RuntimeClient::remove(const std::string &id, DoneCb cb) {
  with_done_cb(std::move(cb), [&](DoneCb *h) { return vt_->remove(self_, id.c_str(), done_tramp, h); });
}

void RuntimeClient::list(JsonCb cb) {
  with_json_cb(std::move(cb), [&](JsonCb *h) { return vt_->list(self_, json_tramp, h); });
}

std::string RuntimeClient::log_path(const std::string &id, const std::string &stream,
                                    StoreResult *error) {
  char buf[4096];
  PluginHost::clear_last_error();
  flotilla_status st = vt_->log_path(self_, id.c_str(), stream.c_str(), buf, sizeof buf);
  if (st != FLOTILLA_OK) {
    if (error) *error = runtime_result(st);
    return "";
  }
  buf[sizeof buf - 1] = '\0';
  return buf;
}

void RuntimeClient::image_import(const std::string &path, const std::string &tag, JsonCb cb) {
  with_json_cb(std::move(cb), [&](JsonCb *h) {
    return vt_->image_import(self_, path.c_str(), tag.empty() ? nullptr : tag.c_str(), json_tramp, h);
  });
}

void RuntimeClient::image_list(JsonCb cb) {
  with_json_cb(std::move(cb), [&](JsonCb *h) { return vt_->image_list(self_, json_tramp, h); });
}

void RuntimeClient::image_remove(const std::string &ref, DoneCb cb) {
  with_done_cb(std::move(cb),
               [&](DoneCb *h) { return vt_->image_remove(self_, ref.c_str(), done_tramp, h); });
}

namespace {

struct PullCallbacks {
  RuntimeClient::ProgressCb progress;
  RuntimeClient::JsonCb done;
};

void pull_progress_tramp(void *user, const char *text) {
  auto *cbs = static_cast<PullCallbacks *>(user);
  if (!cbs->progress || !text) return;
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (!j.is_discarded()) cbs->progress(j);
}

void pull_done_tramp(void *user, flotilla_status st, const char *text) {
  std::unique_ptr<PullCallbacks> cbs(static_cast<PullCallbacks *>(user));
  cbs->done(runtime_result(st), parse_or_null(text));
}

}  // namespace

bool RuntimeClient::can_pull() const {
  return FLOTILLA_HAS_FIELD(vt_, flotilla_runtime_v1, image_pull) && vt_->image_pull;
}

void RuntimeClient::image_pull(const std::string &ref, const std::string &policy,
                               ProgressCb progress, JsonCb cb) {
  if (!can_pull()) {
    StoreResult r;
    r.status = FLOTILLA_E_UNSUPPORTED;
    r.message = "the runtime plugin cannot pull images (it was built for ABI 1.1); "
                "import the image on the node instead";
    return cb(r, nullptr);
  }
  auto *held = new PullCallbacks{std::move(progress), std::move(cb)};
  nlohmann::json opts = {{"policy", policy}};
  PluginHost::clear_last_error();
  flotilla_status st = vt_->image_pull(self_, ref.c_str(), opts.dump().c_str(),
                                       pull_progress_tramp, pull_done_tramp, held);
  if (st != FLOTILLA_OK) {
    std::unique_ptr<PullCallbacks> owned(held);
    owned->done(runtime_result(st), nullptr);
  }
}

}  // namespace flotilla
