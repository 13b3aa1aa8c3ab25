#include "registry_pull.h"

#include <curl/curl.h>
#include <openssl/evp.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <fstream>

#include "blob_store.h"
#include "digest.h"
#include "fs_ops.h"
#include "image_error.h"

namespace flotilla::runc {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

const char *kManifestAccept =
    "Accept: application/vnd.oci.image.index.v1+json, "
    "application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.docker.distribution.manifest.v2+json";

std::string base64(const std::string &in) {
  std::string out(4 * ((in.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char *>(out.data()),
                          reinterpret_cast<const unsigned char *>(in.data()),
                          static_cast<int>(in.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

std::string url_escape(const std::string &s) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      char buf[4];
      std::snprintf(buf, sizeof buf, "%%%02X", c);
      out += buf;
    }
  }
  return out;
}

// WWW-Authenticate: Bearer realm="https://auth",service="registry",scope="repository:x:pull"
struct Challenge {
  std::string scheme;  // lower-case: "basic", "bearer"
  std::map<std::string, std::string> params;
};

Challenge parse_challenge(const std::string &value) {
  Challenge c;
  size_t i = 0;
  while (i < value.size() && value[i] != ' ') ++i;
  c.scheme = value.substr(0, i);
  std::transform(c.scheme.begin(), c.scheme.end(), c.scheme.begin(),
                 [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
  while (i < value.size()) {
    while (i < value.size() && (value[i] == ' ' || value[i] == ',')) ++i;
    size_t eq = value.find('=', i);
    if (eq == std::string::npos) break;
    std::string key = value.substr(i, eq - i);
    std::transform(key.begin(), key.end(), key.begin(),
                   [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
    i = eq + 1;
    std::string val;
    if (i < value.size() && value[i] == '"') {
      ++i;
      while (i < value.size() && value[i] != '"') {
        if (value[i] == '\\' && i + 1 < value.size()) ++i;
        val += value[i++];
      }
      ++i;
    } else {
      while (i < value.size() && value[i] != ',') val += value[i++];
    }
    c.params[key] = val;
  }
  return c;
}

bool is_network_error(const HttpResponse &r) {
  switch (r.curl_code) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
      return true;
    default:
      return false;
  }
}

flotilla_status status_for_http(long status) {
  if (status == 401 || status == 403) return FLOTILLA_E_PERMISSION;
  if (status == 404) return FLOTILLA_E_NOT_FOUND;
  if (status >= 400 && status < 500) return FLOTILLA_E_INVALID;
  return FLOTILLA_E_IO;
}

}  // namespace

// ---- token cache ------------------------------------------------------------

std::string TokenCache::get(const std::string &key) const {
  auto it = entries_.find(key);
  if (it == entries_.end() || std::chrono::steady_clock::now() >= it->second.expires) return {};
  return it->second.token;
}

void TokenCache::put(const std::string &key, std::string token, std::chrono::seconds lifetime) {
  // A little early, so that a token never expires on its way to the registry.
  auto margin = std::min<std::chrono::seconds>(lifetime / 10, std::chrono::seconds(10));
  entries_[key] = {std::move(token), std::chrono::steady_clock::now() + lifetime - margin};
}

// ---- progress ---------------------------------------------------------------

json PullProgress::to_json() const {
  json blobs_json = json::array();
  uint64_t done = 0, total = 0;
  for (const auto &b : blobs) {
    blobs_json.push_back({{"digest", b.digest},
                          {"role", b.role},
                          {"size", b.size},
                          {"done", b.done},
                          {"present", b.present}});
    total += static_cast<uint64_t>(b.size);
    done += b.done;
  }
  return {{"ref", ref},
          {"phase", phase},
          {"bytes_done", done},
          {"bytes_total", total},
          {"blobs", blobs_json}};
}

// ---- the pull ---------------------------------------------------------------

struct RegistryPull::BlobJob {
  Descriptor desc;
  std::string what;
  std::string unpack_what;  // a layer's name in unpack errors; empty: not a layer
  LayerCompression compression = LayerCompression::none;
  size_t progress_index = 0;
  std::unique_ptr<BlobStream> stream;
  uint64_t transfer = 0;  // in flight, 0 when none
  unsigned attempts = 0;
  size_t ep = 0;
  bool paused = false;    // the stream was full: the transfer waits for room
  bool awaiting = false;  // the transfer ended: waiting for the stream's verdict
  bool done = false;
};

struct RegistryPull::Waker {
  int fd = -1;
  ~Waker() {
    if (fd >= 0) ::close(fd);
  }
  // [any thread]
  void wake() const {
    uint64_t one = 1;
    ssize_t n = ::write(fd, &one, sizeof one);
    (void)n;  // EAGAIN: the counter is set already, the loop wakes anyway
  }
};

RegistryPull::RegistryPull(PullContext ctx, RegistryRef ref, fs::path layout_dir, Progress progress,
                           Done done)
    : ctx_(std::move(ctx)),
      ref_(std::move(ref)),
      layout_dir_(std::move(layout_dir)),
      progress_cb_(std::move(progress)),
      done_(std::move(done)) {
  const RegistryConfig &cfg = *ctx_.config;
  auto add = [&](const std::string &host, bool mirror) {
    Endpoint e;
    e.host = host;
    e.base = (cfg.is_insecure(host) ? "http://" : "https://") + host;
    if (const RegistryHostConfig *hc = cfg.host(host)) e.ca_file = hc->ca_file;
    e.mirror = mirror;
    endpoints_.push_back(std::move(e));
  };
  if (const RegistryHostConfig *hc = cfg.host(ref_.registry)) {
    for (const auto &m : hc->mirrors) add(m, true);
  }
  add(registry_endpoint_host(ref_.registry), false);
  // The registry's own CA and insecure setting apply under its short name too.
  Endpoint &self = endpoints_.back();
  if (self.ca_file.empty()) {
    if (const RegistryHostConfig *hc = cfg.host(ref_.registry)) self.ca_file = hc->ca_file;
  }
  if (cfg.is_insecure(ref_.registry)) self.base = "http://" + self.host;
  progress_.ref = ref_.canonical();
  result_.registry = ref_.registry;
  result_.repository = ref_.repository;
}

RegistryPull::~RegistryPull() {
  *alive_ = false;
  for (uint64_t id : transfers_) ctx_.http->cancel(id);
  if (wake_watch_) ctx_.http->host()->fd_unwatch(ctx_.http->host()->host_ctx, wake_watch_);
  // The streams still here are joined as jobs_ goes (shutdown, or a caller
  // that did not take them).
}

std::vector<std::unique_ptr<BlobStream>> RegistryPull::take_streams() {
  std::vector<std::unique_ptr<BlobStream>> out;
  for (auto &j : jobs_) {
    if (!j->stream) continue;
    j->stream->cancel();  // a finished stream ignores it
    out.push_back(std::move(j->stream));
  }
  return out;
}

void RegistryPull::on_wake(void *user, int fd, uint32_t) {
  uint64_t count = 0;
  ssize_t n = ::read(fd, &count, sizeof count);
  (void)n;
  static_cast<RegistryPull *>(user)->woken();
}

// A stream has room again or is done: resume its transfer, or take its
// verdict. One verdict per turn (it may end the pull); the eventfd is set
// again when more may be waiting.
void RegistryPull::woken() {
  if (finished_) return;
  for (auto &jp : jobs_) {
    BlobJob &job = *jp;
    if (!job.stream || job.done) continue;
    if (job.paused && !job.stream->failed() && job.stream->has_room()) {
      job.paused = false;
      ctx_.http->resume(job.transfer);  // may call the sink, which may pause again
    }
  }
  for (auto &jp : jobs_) {
    BlobJob &job = *jp;
    if (!job.stream || job.done || !job.stream->done()) continue;
    if (!job.awaiting && !job.stream->failed()) continue;
    if (job.transfer) {
      // The stream failed while bytes still came: stop them.
      ctx_.http->cancel(job.transfer);
      transfers_.erase(job.transfer);
      job.transfer = 0;
    }
    std::shared_ptr<bool> alive = alive_;
    stream_finished(job);
    if (*alive && !finished_) waker_->wake();
    return;
  }
}

std::string RegistryPull::describe(const Endpoint &e) const {
  return (e.mirror ? "mirror " : "registry ") + e.host;
}

bool RegistryPull::usable(size_t ep) const {
  return ep < endpoints_.size() && !endpoints_[ep].dead;
}

size_t RegistryPull::next_endpoint(size_t ep) const {
  for (size_t i = ep + 1; i < endpoints_.size(); ++i)
    if (!endpoints_[i].dead || !endpoints_[i].mirror) return i;
  return endpoints_.size();
}

std::string RegistryPull::registry_message(const HttpResponse &r) const {
  std::string text;
  json j = json::parse(r.body, nullptr, false);
  if (!j.is_discarded() && j.is_object()) {
    if (auto errs = j.find("errors"); errs != j.end() && errs->is_array()) {
      for (const auto &e : *errs) {
        std::string part;
        if (e.contains("code") && e["code"].is_string()) part = e["code"].get<std::string>();
        if (e.contains("message") && e["message"].is_string())
          part += (part.empty() ? "" : ": ") + e["message"].get<std::string>();
        if (e.contains("detail") && !e["detail"].is_null())
          part += " (" +
                  (e["detail"].is_string() ? e["detail"].get<std::string>() : e["detail"].dump()) +
                  ")";
        text += (text.empty() ? "" : "; ") + part;
      }
    } else if (j.contains("details") && j["details"].is_string()) {
      text = j["details"].get<std::string>();
    }
  }
  if (text.empty()) {
    text = r.body.substr(0, 200);
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  }
  std::string out = "HTTP " + std::to_string(r.status);
  return text.empty() ? out : out + ": " + text;
}

void RegistryPull::start() {
  waker_ = std::make_shared<Waker>();
  waker_->fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  const flotilla_host *host = ctx_.http->host();
  if (waker_->fd >= 0) {
    wake_watch_ = host->fd_watch(host->host_ctx, waker_->fd, FLOTILLA_FD_READABLE,
                                 &RegistryPull::on_wake, this);
  }
  if (waker_->fd < 0 || wake_watch_ == 0) {
    fail(FLOTILLA_E_IO, "pull " + ref_.canonical() + ": cannot make or watch an eventfd");
    return;
  }
  progress_.phase = "resolving";
  size_t ep = 0;
  fetch_manifest(ref_.reference(), ep, nullptr,
                 [this](std::string body, std::string media_type, std::string digest) {
                   got_top(std::move(body), std::move(media_type), std::move(digest));
                 });
}

void RegistryPull::exchange(size_t ep, const std::string &path, std::vector<std::string> headers,
                            uint64_t range_from, BodySink sink, Reply done, uint64_t *slot,
                            bool retried_auth) {
  Endpoint &e = endpoints_[ep];
  HttpRequest req;
  req.url = e.base + path;
  req.headers = headers;
  if (!e.authorization.empty()) req.headers.push_back("Authorization: " + e.authorization);
  req.range_from = range_from;
  req.ca_file = e.ca_file;
  req.low_speed_timeout_s = static_cast<long>(ctx_.config->low_speed_timeout_s);
  req.on_body = sink;
  auto id = std::make_shared<uint64_t>(0);
  *id = ctx_.http->start(std::move(req), [this, ep, path, headers, range_from, sink, done, slot,
                                          retried_auth, id](HttpResponse r) {
    transfers_.erase(*id);
    if (slot) *slot = 0;
    if (r.curl_code == CURLE_OK && r.status == 401 && !retried_auth &&
        !r.www_authenticate.empty()) {
      answer_challenge(ep, r, [=, this, r = r](std::string error) {
        if (!error.empty()) {
          HttpResponse failed = r;
          failed.body.clear();
          failed.error = error;
          failed.curl_code = -1;
          done(std::move(failed));
          return;
        }
        exchange(ep, path, headers, range_from, sink, done, slot, true);
      });
      return;
    }
    done(std::move(r));
  });
  transfers_.insert(*id);
  if (slot) *slot = *id;
}

void RegistryPull::answer_challenge(size_t ep, const HttpResponse &r,
                                    std::function<void(std::string)> then) {
  Endpoint &e = endpoints_[ep];
  // The registry's auths entry is keyed by its name ("docker.io"), a mirror's by its host.
  std::optional<RegistryCredentials> cred = ctx_.auths->find(e.mirror ? e.host : ref_.registry);
  Challenge c;
  for (const auto &v : r.www_authenticate) {
    Challenge one = parse_challenge(v);
    if (one.scheme == "bearer" || (one.scheme == "basic" && c.scheme != "bearer")) c = one;
  }
  std::string where = describe(e);
  if (c.scheme == "basic") {
    if (!cred) {
      then(where + " asks for a user name and password (" + registry_message(r) +
           ") and the registry auth_file has none for " + (e.mirror ? e.host : ref_.registry));
      return;
    }
    e.authorization = "Basic " + base64(cred->username + ":" + cred->password);
    then({});
    return;
  }
  if (c.scheme != "bearer" || c.params["realm"].empty()) {
    then(where + " answered 401 with an authentication scheme this client does not know: " +
         (r.www_authenticate.empty() ? "" : r.www_authenticate.front().substr(0, 80)));
    return;
  }
  std::string realm = c.params["realm"];
  std::string service = c.params["service"];
  std::string scope =
      c.params.count("scope") ? c.params["scope"] : "repository:" + ref_.repository + ":pull";
  std::string key = realm + "\n" + service + "\n" + scope + "\n" + (cred ? cred->username : "");
  if (std::string token = ctx_.tokens->get(key); !token.empty()) {
    if (e.authorization != "Bearer " + token) {
      e.authorization = "Bearer " + token;
      then({});
      return;
    }
    // The registry refused the cached token: fetch a new one.
  }
  HttpRequest req;
  std::string sep = realm.find('?') == std::string::npos ? "?" : "&";
  req.url = realm + sep + "service=" + url_escape(service) + "&scope=" + url_escape(scope);
  if (cred)
    req.headers.push_back("Authorization: Basic " + base64(cred->username + ":" + cred->password));
  req.ca_file = ctx_.config->realm_ca_file(realm, e.host, e.ca_file);
  req.max_body = 1 << 20;
  auto id = std::make_shared<uint64_t>(0);
  *id = ctx_.http->start(std::move(req), [this, ep, key, realm, where, then, id](HttpResponse t) {
    transfers_.erase(*id);
    if (t.curl_code != CURLE_OK) {
      then(where + ": token endpoint " + realm + ": " + t.error);
      return;
    }
    if (t.status != 200) {
      then(where + ": token endpoint " + realm + " refused: " + registry_message(t));
      return;
    }
    json j = json::parse(t.body, nullptr, false);
    std::string token;
    if (j.is_object()) {
      if (j.contains("token") && j["token"].is_string()) token = j["token"].get<std::string>();
      if (token.empty() && j.contains("access_token") && j["access_token"].is_string())
        token = j["access_token"].get<std::string>();
    }
    if (token.empty()) {
      then(where + ": token endpoint " + realm + " answered without a token");
      return;
    }
    int64_t lifetime = 60;  // the distribution spec's default
    if (j.contains("expires_in") && j["expires_in"].is_number_integer())
      lifetime = std::max<int64_t>(j["expires_in"].get<int64_t>(), 1);
    ctx_.tokens->put(key, token, std::chrono::seconds(lifetime));
    endpoints_[ep].authorization = "Bearer " + token;
    then({});
  });
  transfers_.insert(*id);
}

void RegistryPull::fetch_manifest(const std::string &reference, size_t ep, const Descriptor *expect,
                                  std::function<void(std::string, std::string, std::string)> then) {
  while (ep < endpoints_.size() && endpoints_[ep].dead && endpoints_[ep].mirror) ++ep;
  std::string path = "/v2/" + ref_.repository + "/manifests/" + reference;
  std::optional<Descriptor> want;
  if (expect) want = *expect;
  exchange(
      ep, path, {kManifestAccept}, 0, nullptr,
      [this, ep, reference, want, then](HttpResponse r) {
        Endpoint &e = endpoints_[ep];
        bool last = next_endpoint(ep) >= endpoints_.size();
        std::string what = "manifest " + ref_.repository + ":" + reference;
        std::string failure;
        flotilla_status st = FLOTILLA_E_IO;
        if (r.curl_code != CURLE_OK) {
          if (is_network_error(r)) e.dead = e.mirror;
          failure = describe(e) + ": " + r.error;
          st = r.curl_code == -1 ? FLOTILLA_E_PERMISSION : FLOTILLA_E_IO;
          if (r.too_large) {
            failure = describe(e) + ": " + what + " is larger than 4 MiB; refusing it";
            st = FLOTILLA_E_INVALID;
          }
        } else if (r.status != 200) {
          failure = describe(e) + ": " + what + ": " + registry_message(r);
          st = status_for_http(r.status);
        }
        if (!failure.empty()) {
          if (!last) {
            fetch_manifest(reference, next_endpoint(ep), want ? &*want : nullptr, then);
            return;
          }
          fail(st, "pull " + ref_.canonical() + ": " + failure);
          return;
        }
        std::string digest = sha256_of(r.body);
        std::string claimed = r.header("docker-content-digest");
        if (want && digest != want->digest) {
          fail(FLOTILLA_E_INVALID, "pull " + ref_.canonical() + ": " + describe(e) + " served " +
                                       what + " with digest " + digest + ", expected " +
                                       want->digest + "; the image is corrupt, refusing it");
          return;
        }
        if (!want && !ref_.digest.empty() && digest != ref_.digest) {
          fail(FLOTILLA_E_INVALID, "pull " + ref_.canonical() + ": " + describe(e) +
                                       " served a manifest with digest " + digest + ", not the " +
                                       ref_.digest + " asked for; refusing it");
          return;
        }
        if (!claimed.empty() && is_sha256_digest(claimed) && claimed != digest) {
          fail(FLOTILLA_E_INVALID, "pull " + ref_.canonical() + ": " + describe(e) + " says " +
                                       what + " has digest " + claimed + " but its content has " +
                                       digest + "; refusing it");
          return;
        }
        manifest_ep_ = ep;
        result_.endpoint = e.host;
        std::string type = r.header("content-type");
        if (auto semi = type.find(';'); semi != std::string::npos) type.resize(semi);
        then(std::move(r.body), std::move(type), std::move(digest));
      },
      nullptr);
}

// The caller writes it, off the loop (PullResult::files).
void RegistryPull::write_blob_file(const std::string &digest, const std::string &body) {
  result_.files.emplace_back("blobs/sha256/" + digest_hex(digest, "manifest"), body);
}

void RegistryPull::got_top(std::string body, std::string media_type, std::string digest) {
  try {
    std::string what = "manifest " + ref_.canonical();
    json doc = parse_json(body, what);
    DocumentKind kind = classify_document(doc, media_type, what);
    top_.digest = digest;
    top_.size = static_cast<int64_t>(body.size());
    top_.media_type = !media_type.empty() ? media_type
                      : doc.contains("mediaType") && doc["mediaType"].is_string()
                          ? doc["mediaType"].get<std::string>()
                          : std::string(kind == DocumentKind::index ? media_type::kOciIndex
                                                                    : media_type::kOciManifest);
    result_.digest = digest;
    if (!ctx_.have_blob(digest)) write_blob_file(digest, body);
    if (kind == DocumentKind::manifest) {
      got_manifest(std::move(body), top_.media_type, digest);
      return;
    }
    std::string iw = "image index " + digest + " of " + ref_.canonical();
    std::vector<Descriptor> list = parse_index(doc, iw);
    Descriptor chosen = select_platform(list, ctx_.platform, iw);
    if (ctx_.have_blob(chosen.digest)) {
      // Known manifest: read it from the store instead of asking again.
      got_manifest({}, chosen.media_type, chosen.digest);
      return;
    }
    fetch_manifest(chosen.digest, manifest_ep_, &chosen,
                   [this](std::string b, std::string t, std::string d) {
                     try {
                       write_blob_file(d, b);
                     } catch (const ImageError &e) {
                       fail(e.status(), e.what());
                       return;
                     }
                     got_manifest(std::move(b), std::move(t), std::move(d));
                   });
  } catch (const ImageError &e) {
    fail(e.status(), "pull " + ref_.canonical() + ": " + e.what());
  }
}

void RegistryPull::got_manifest(std::string body, std::string media_type, std::string digest) {
  (void)media_type;
  try {
    std::string what = "manifest " + digest + " of " + ref_.canonical();
    if (body.empty()) body = ctx_.read_blob(digest);
    json doc = parse_json(body, what);
    Manifest m = parse_manifest(doc, what);
    auto add = [&](const Descriptor &d, const std::string &role) {
      for (const auto &j : jobs_)
        if (j->desc.digest == d.digest) return;  // a layer listed twice
      PullProgress::Blob b;
      b.digest = d.digest;
      b.role = role;
      b.size = d.size;
      b.present = ctx_.have_blob(d.digest);
      b.done = b.present ? static_cast<uint64_t>(d.size) : 0;
      progress_.blobs.push_back(b);
      if (b.present) {
        ++result_.blobs_present;
        return;
      }
      auto job = std::make_unique<BlobJob>();
      job->desc = d;
      job->what = role + " of " + ref_.canonical();
      if (role != "config") {
        job->unpack_what = role + " (" + d.digest.substr(0, 7 + 12) + ") of " + ref_.canonical();
        job->compression = layer_compression(d.media_type, what);
      }
      job->progress_index = progress_.blobs.size() - 1;
      job->ep = manifest_ep_;
      jobs_.push_back(std::move(job));
    };
    add(m.config, "config");
    for (size_t i = 0; i < m.layers.size(); ++i) {
      layer_compression(m.layers[i].media_type, what);  // refuse unknown types before downloading
      add(m.layers[i], "layer " + std::to_string(i + 1) + "/" + std::to_string(m.layers.size()));
    }
  } catch (const ImageError &e) {
    fail(e.status(), "pull " + ref_.canonical() + ": " + e.what());
    return;
  }
  progress_.phase = "downloading";
  report(true);
  pump_blobs();
}

void RegistryPull::pump_blobs() {
  if (finished_) return;
  if (jobs_done_ == jobs_.size()) {
    finish_ok();
    return;
  }
  // A download's slot frees once its last byte is with its stream, so the
  // next download overlaps the stream still unpacking; the streams still
  // unpacking are bounded too (each holds up to stream_high_water).
  while (running_ < ctx_.config->concurrency && streams_open_ < 2 * ctx_.config->concurrency &&
         next_job_ < jobs_.size()) {
    BlobJob &job = *jobs_[next_job_++];
    ++running_;
    ++streams_open_;
    start_blob(job);
    if (finished_) return;
  }
}

void RegistryPull::new_stream(BlobJob &job) {
  BlobStream::Options o;
  std::string hex = digest_hex(job.desc.digest, job.what);
  o.blob_path = layout_dir_ / "blobs" / "sha256" / hex;
  o.expect = BlobExpectation{job.desc.digest, job.desc.size, job.what};
  o.source = describe(endpoints_[job.ep]);
  o.unpack = !job.unpack_what.empty();
  o.compression = job.compression;
  o.snapshot_dir = layout_dir_ / "snapshots" / hex;
  o.limits = ctx_.limits;
  o.what = job.unpack_what;
  o.high_water = ctx_.stream_high_water;
  std::shared_ptr<Waker> waker = waker_;
  job.stream = std::make_unique<BlobStream>(std::move(o), [waker] { waker->wake(); });
  job.paused = false;
  job.awaiting = false;
}

void RegistryPull::start_blob(BlobJob &job) {
  if (!job.stream) new_stream(job);
  uint64_t from = job.stream->bytes_pushed();
  BlobJob *jp = &job;
  exchange(
      job.ep, "/v2/" + ref_.repository + "/blobs/" + job.desc.digest, {}, from,
      [this, jp, from](long status, const char *data, size_t len) {
        if (from > 0 && status == 200 && jp->stream->bytes_pushed() == from) {
          // The server ignored the Range: start over (joins the old
          // stream's thread, which removes what it wrote: rare).
          jp->stream.reset();
          new_stream(*jp);
          progress_.blobs[jp->progress_index].done = 0;
        }
        if (jp->stream->failed()) return BodyAction::abort;
        if (!jp->stream->push(data, len)) {
          if (jp->stream->failed()) return BodyAction::abort;
          jp->paused = true;  // resumed by woken() once the stream has room
          return BodyAction::pause;
        }
        progress_.blobs[jp->progress_index].done = jp->stream->bytes_pushed();
        result_.bytes_downloaded += len;
        report(false);
        return BodyAction::take;
      },
      [this, jp](HttpResponse r) { blob_done(*jp, std::move(r)); }, &job.transfer);
}

void RegistryPull::stream_finished(BlobJob &job) {
  BlobStream::Outcome out = job.stream->outcome();
  if (out.status != FLOTILLA_OK) {
    fail(out.status, "pull " + ref_.canonical() + ": " + out.message);
    return;
  }
  if (!job.unpack_what.empty()) {
    result_.layers[job.desc.digest] = StagedLayer{
        layout_dir_ / "snapshots" / digest_hex(job.desc.digest, job.what), std::move(out.unpack)};
  }
  job.done = true;
  ++jobs_done_;
  --streams_open_;
  ++result_.blobs_downloaded;
  report(true);
  pump_blobs();
}

void RegistryPull::blob_done(BlobJob &job, HttpResponse r) {
  Endpoint &e = endpoints_[job.ep];
  if (job.stream->failed() || r.aborted) {
    // The stream refused the bytes: its verdict says why.
    job.awaiting = true;
    if (job.stream->done()) stream_finished(job);
    return;
  }
  std::string failure;
  flotilla_status st = FLOTILLA_E_IO;
  if (r.curl_code == CURLE_OK && (r.status == 200 || r.status == 206)) {
    // Every byte is with the stream: its thread verifies (and finishes the
    // unpacking) and wakes the loop.
    job.stream->finish();
    job.awaiting = true;
    --running_;
    pump_blobs();
    return;
  }
  if (r.curl_code != CURLE_OK) {
    failure = describe(e) + ": " + r.error;
    if (r.curl_code == -1) st = FLOTILLA_E_PERMISSION;
  } else {
    failure =
        describe(e) + ": blob " + job.desc.digest + " (" + job.what + "): " + registry_message(r);
    st = status_for_http(r.status);
  }
  bool network = r.curl_code != CURLE_OK && r.curl_code != -1 && is_network_error(r);
  if (network && job.attempts < ctx_.config->retries) {
    // Resume where it stopped (Range), from the same host.
    ++job.attempts;
    start_blob(job);
    return;
  }
  if (e.mirror) {
    if (network) e.dead = true;
    size_t next = next_endpoint(job.ep);
    if (next < endpoints_.size()) {
      job.ep = next;
      job.attempts = 0;
      start_blob(job);
      return;
    }
  }
  fail(st, "pull " + ref_.canonical() + ": " + failure +
               (network ? " (after " + std::to_string(job.attempts + 1) + " attempts)" : ""));
}

void RegistryPull::report(bool force) {
  if (!progress_cb_) return;
  auto now = std::chrono::steady_clock::now();
  if (!force && now - last_report_ < std::chrono::milliseconds(ctx_.config->progress_interval_ms))
    return;
  last_report_ = now;
  progress_cb_(progress_);
}

void RegistryPull::finish_ok() {
  {
    json index = {
        {"schemaVersion", 2},
        {"mediaType", media_type::kOciIndex},
        {"manifests",
         json::array({{{"mediaType", top_.media_type},
                       {"digest", top_.digest},
                       {"size", top_.size},
                       {"annotations", {{std::string(kRefNameAnnotation), ref_.store_name}}}}})}};
    result_.files.emplace_back("index.json", index.dump());
    result_.files.emplace_back("oci-layout", "{\"imageLayoutVersion\":\"1.0.0\"}");
  }
  finished_ = true;
  progress_.phase = "unpacking";
  report(true);
  Done done = std::move(done_);
  PullResult result = result_;
  done(FLOTILLA_OK, {}, std::move(result));  // may destroy *this
}

void RegistryPull::fail(flotilla_status status, const std::string &message) {
  if (finished_) return;
  finished_ = true;
  for (uint64_t id : transfers_) ctx_.http->cancel(id);
  transfers_.clear();
  // The streams stop; the caller joins them (take_streams()) off the loop.
  for (auto &j : jobs_) {
    j->transfer = 0;
    if (j->stream) j->stream->cancel();
  }
  Done done = std::move(done_);
  PullResult result = result_;
  done(status, message, std::move(result));  // may destroy *this
}

}  // namespace flotilla::runc
