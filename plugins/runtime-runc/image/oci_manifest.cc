#include "oci_manifest.h"

#include <algorithm>

#include "digest.h"
#include "image_error.h"

namespace flotilla::runc {

using nlohmann::json;

namespace {

ImageError invalid(std::string_view what, const std::string &why) {
  return ImageError(FLOTILLA_E_INVALID, std::string(what) + ": " + why);
}

const json *member(const json &obj, const char *key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

std::string string_member(const json &obj, const char *key, std::string_view what, bool required) {
  const json *v = member(obj, key);
  if (v == nullptr) {
    if (required) throw invalid(what, std::string("\"") + key + "\" is missing");
    return {};
  }
  if (!v->is_string()) throw invalid(what, std::string("\"") + key + "\" is not a string");
  return v->get<std::string>();
}

std::vector<std::string> string_array(const json &obj, const char *key, std::string_view what) {
  std::vector<std::string> out;
  const json *v = member(obj, key);
  if (v == nullptr) return out;
  if (!v->is_array()) throw invalid(what, std::string("\"") + key + "\" is not an array");
  for (const auto &e : *v) {
    if (!e.is_string()) {
      throw invalid(what, std::string("\"") + key + "\" holds a non-string element");
    }
    out.push_back(e.get<std::string>());
  }
  return out;
}

std::vector<std::string> object_keys(const json &obj, const char *key, std::string_view what) {
  std::vector<std::string> out;
  const json *v = member(obj, key);
  if (v == nullptr) return out;
  if (!v->is_object()) throw invalid(what, std::string("\"") + key + "\" is not an object");
  for (auto it = v->begin(); it != v->end(); ++it) out.push_back(it.key());
  return out;
}

void check_schema_version(const json &doc, std::string_view what) {
  const json *v = member(doc, "schemaVersion");
  if (v == nullptr) return;
  if (!v->is_number_integer()) throw invalid(what, "\"schemaVersion\" is not a number");
  if (v->get<int64_t>() == 1) {
    throw ImageError(FLOTILLA_E_UNSUPPORTED,
                     std::string(what) +
                         ": Docker schema 1 manifests are not supported; copy the image again "
                         "from where it came as OCI, e.g. `skopeo copy docker://NAME:TAG "
                         "oci:DIR:TAG`, then import DIR");
  }
  if (v->get<int64_t>() != 2) {
    throw invalid(what, "unsupported schemaVersion " + std::to_string(v->get<int64_t>()));
  }
}

// Architecture names as Go spells them; configs written by hand or by old
// tools sometimes use the kernel's.
std::string normalize_arch(std::string arch) {
  if (arch == "x86_64" || arch == "x86-64") return "amd64";
  if (arch == "aarch64") return "arm64";
  if (arch == "i386" || arch == "i686") return "386";
  return arch;
}

bool variant_matches(const Platform &have, const Platform &want) {
  if (want.variant.empty()) return true;
  if (have.variant == want.variant) return true;
  // arm64 images often omit their only variant.
  return want.architecture == "arm64" && want.variant == "v8" && have.variant.empty();
}

}  // namespace

Platform Platform::host() {
  Platform p;
  p.os = "linux";
#if defined(__x86_64__)
  p.architecture = "amd64";
#elif defined(__aarch64__)
  p.architecture = "arm64";
#elif defined(__arm__)
  p.architecture = "arm";
#elif defined(__i386__)
  p.architecture = "386";
#elif defined(__powerpc64__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  p.architecture = "ppc64le";
#elif defined(__s390x__)
  p.architecture = "s390x";
#elif defined(__riscv) && __riscv_xlen == 64
  p.architecture = "riscv64";
#else
#error "unknown host architecture: add its OCI name to Platform::host()"
#endif
  return p;
}

std::string Platform::str() const {
  std::string s = os + "/" + architecture;
  if (!variant.empty()) s += "/" + variant;
  return s;
}

std::string Descriptor::annotation(std::string_view key) const {
  auto it = annotations.find(std::string(key));
  return it == annotations.end() ? std::string() : it->second;
}

bool is_index_media_type(std::string_view mt) {
  return mt == media_type::kOciIndex || mt == media_type::kDockerManifestList;
}

bool is_manifest_media_type(std::string_view mt) {
  return mt == media_type::kOciManifest || mt == media_type::kDockerManifest;
}

bool is_config_media_type(std::string_view mt) {
  return mt == media_type::kOciConfig || mt == media_type::kDockerConfig;
}

const char *compression_name(LayerCompression c) {
  switch (c) {
    case LayerCompression::none:
      return "uncompressed";
    case LayerCompression::gzip:
      return "gzip";
    case LayerCompression::zstd:
      return "zstd";
  }
  return "?";
}

LayerCompression layer_compression(std::string_view mt, std::string_view what) {
  if (mt.ends_with("+encrypted") || mt.find("+encrypted") != std::string_view::npos) {
    throw ImageError(FLOTILLA_E_UNSUPPORTED,
                     std::string(what) + ": encrypted layers (" + std::string(mt) +
                         ") are not supported; decrypt the image before importing it");
  }
  // OCI layers, including the deprecated non-distributable variants.
  for (std::string_view base : {"application/vnd.oci.image.layer.v1.tar",
                                "application/vnd.oci.image.layer.nondistributable.v1.tar"}) {
    if (mt == base) return LayerCompression::none;
    if (mt.starts_with(base) && mt.size() > base.size()) {
      std::string_view suffix = mt.substr(base.size());
      if (suffix == "+gzip") return LayerCompression::gzip;
      if (suffix == "+zstd") return LayerCompression::zstd;
    }
  }
  if (mt == media_type::kDockerLayerGzip ||
      mt == "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip") {
    return LayerCompression::gzip;
  }
  if (mt == "application/vnd.docker.image.rootfs.diff.tar") return LayerCompression::none;
  throw ImageError(FLOTILLA_E_UNSUPPORTED,
                   std::string(what) + ": layer media type \"" + std::string(mt) +
                       "\" is not supported (OCI tar, tar+gzip, tar+zstd or Docker "
                       "rootfs.diff.tar.gzip)");
}

json parse_json(std::string_view text, std::string_view what) {
  try {
    return json::parse(text);
  } catch (const json::exception &e) {
    throw invalid(what, std::string("not valid JSON: ") + e.what());
  }
}

Descriptor parse_descriptor(const json &j, std::string_view where) {
  if (!j.is_object()) throw invalid(where, "descriptor is not an object");
  Descriptor d;
  d.media_type = string_member(j, "mediaType", where, false);
  d.digest = string_member(j, "digest", where, true);
  digest_hex(d.digest, std::string(where) + " digest");
  const json *size = member(j, "size");
  if (size == nullptr) throw invalid(where, "\"size\" is missing");
  if (!size->is_number_integer() || size->get<int64_t>() < 0) {
    throw invalid(where, "\"size\" is not a non-negative integer");
  }
  d.size = size->get<int64_t>();
  if (const json *ann = member(j, "annotations")) {
    if (!ann->is_object()) throw invalid(where, "\"annotations\" is not an object");
    for (auto it = ann->begin(); it != ann->end(); ++it) {
      if (it.value().is_string()) d.annotations[it.key()] = it.value().get<std::string>();
    }
  }
  if (const json *pl = member(j, "platform")) {
    if (!pl->is_object()) throw invalid(where, "\"platform\" is not an object");
    Platform p;
    std::string pw = std::string(where) + " platform";
    p.os = string_member(*pl, "os", pw, true);
    p.architecture = normalize_arch(string_member(*pl, "architecture", pw, true));
    p.variant = string_member(*pl, "variant", pw, false);
    d.platform = p;
  }
  return d;
}

DocumentKind classify_document(const json &doc, std::string_view declared, std::string_view what) {
  if (!doc.is_object()) throw invalid(what, "not a JSON object");
  std::string own = string_member(doc, "mediaType", what, false);
  if (own.starts_with("application/vnd.docker.distribution.manifest.v1")) {
    throw ImageError(FLOTILLA_E_UNSUPPORTED,
                     std::string(what) +
                         ": Docker schema 1 manifests are not supported; copy the image again "
                         "from where it came as OCI, e.g. `skopeo copy docker://NAME:TAG "
                         "oci:DIR:TAG`, then import DIR");
  }
  check_schema_version(doc, what);
  if (!declared.empty() && !own.empty() && declared != own) {
    throw invalid(what, "its mediaType \"" + own + "\" contradicts the descriptor's \"" +
                            std::string(declared) + "\"");
  }
  std::string_view mt = declared.empty() ? std::string_view(own) : declared;
  if (is_index_media_type(mt)) return DocumentKind::index;
  if (is_manifest_media_type(mt)) return DocumentKind::manifest;
  if (mt.empty()) {
    if (member(doc, "manifests") != nullptr) return DocumentKind::index;
    if (member(doc, "config") != nullptr && member(doc, "layers") != nullptr) {
      return DocumentKind::manifest;
    }
    throw invalid(what, "neither an image index nor an image manifest");
  }
  throw ImageError(FLOTILLA_E_UNSUPPORTED, std::string(what) + ": media type \"" + std::string(mt) +
                                               "\" is not an image manifest or index");
}

std::vector<Descriptor> parse_index(const json &doc, std::string_view what) {
  if (!doc.is_object()) throw invalid(what, "not a JSON object");
  check_schema_version(doc, what);
  const json *m = member(doc, "manifests");
  if (m == nullptr || !m->is_array())
    throw invalid(what, "\"manifests\" is missing or not an array");
  std::vector<Descriptor> out;
  for (size_t i = 0; i < m->size(); ++i) {
    out.push_back(
        parse_descriptor((*m)[i], std::string(what) + " manifests[" + std::to_string(i) + "]"));
  }
  return out;
}

Manifest parse_manifest(const json &doc, std::string_view what) {
  if (!doc.is_object()) throw invalid(what, "not a JSON object");
  check_schema_version(doc, what);
  Manifest m;
  m.media_type = string_member(doc, "mediaType", what, false);
  const json *config = member(doc, "config");
  if (config == nullptr) throw invalid(what, "\"config\" is missing");
  m.config = parse_descriptor(*config, std::string(what) + " config");
  if (!m.config.media_type.empty() && !is_config_media_type(m.config.media_type)) {
    throw ImageError(FLOTILLA_E_UNSUPPORTED,
                     std::string(what) + ": config media type \"" + m.config.media_type +
                         "\" is not a container image config (this is an artifact, not an image)");
  }
  const json *layers = member(doc, "layers");
  if (layers == nullptr || !layers->is_array()) {
    throw invalid(what, "\"layers\" is missing or not an array");
  }
  for (size_t i = 0; i < layers->size(); ++i) {
    Descriptor d =
        parse_descriptor((*layers)[i], std::string(what) + " layers[" + std::to_string(i) + "]");
    if (d.media_type.empty()) {
      throw invalid(what, "layers[" + std::to_string(i) + "] has no mediaType");
    }
    m.layers.push_back(std::move(d));
  }
  return m;
}

json ImageConfig::to_json() const {
  return json{{"Env", env},        {"Entrypoint", entrypoint},
              {"Cmd", cmd},        {"WorkingDir", working_dir},
              {"User", user},      {"StopSignal", stop_signal},
              {"Labels", labels},  {"ExposedPorts", exposed_ports},
              {"Volumes", volumes}};
}

ParsedConfig parse_config(const json &doc, std::string_view what) {
  if (!doc.is_object()) throw invalid(what, "not a JSON object");
  ParsedConfig out;
  out.platform.os = string_member(doc, "os", what, true);
  out.platform.architecture = normalize_arch(string_member(doc, "architecture", what, true));
  out.platform.variant = string_member(doc, "variant", what, false);
  out.created = string_member(doc, "created", what, false);
  if (const json *c = member(doc, "config")) {
    if (!c->is_object()) throw invalid(what, "\"config\" is not an object");
    std::string cw = std::string(what) + " config";
    out.config.env = string_array(*c, "Env", cw);
    out.config.entrypoint = string_array(*c, "Entrypoint", cw);
    out.config.cmd = string_array(*c, "Cmd", cw);
    out.config.working_dir = string_member(*c, "WorkingDir", cw, false);
    out.config.user = string_member(*c, "User", cw, false);
    out.config.stop_signal = string_member(*c, "StopSignal", cw, false);
    out.config.exposed_ports = object_keys(*c, "ExposedPorts", cw);
    out.config.volumes = object_keys(*c, "Volumes", cw);
    if (const json *labels = member(*c, "Labels")) {
      if (!labels->is_object()) throw invalid(cw, "\"Labels\" is not an object");
      for (auto it = labels->begin(); it != labels->end(); ++it) {
        if (it.value().is_string()) out.config.labels[it.key()] = it.value().get<std::string>();
      }
    }
  }
  const json *rootfs = member(doc, "rootfs");
  if (rootfs == nullptr || !rootfs->is_object()) throw invalid(what, "\"rootfs\" is missing");
  std::string rw = std::string(what) + " rootfs";
  if (string_member(*rootfs, "type", rw, true) != "layers") {
    throw invalid(rw, "\"type\" is not \"layers\"");
  }
  out.diff_ids = string_array(*rootfs, "diff_ids", rw);
  for (size_t i = 0; i < out.diff_ids.size(); ++i) {
    digest_hex(out.diff_ids[i], rw + " diff_ids[" + std::to_string(i) + "]");
  }
  return out;
}

const Descriptor &select_platform(const std::vector<Descriptor> &entries, const Platform &want,
                                  std::string_view what) {
  const Descriptor *best = nullptr;
  for (const auto &d : entries) {
    if (!d.platform || d.platform->os != want.os || d.platform->architecture != want.architecture) {
      continue;
    }
    if (!variant_matches(*d.platform, want)) continue;
    // Without a wanted variant, prefer the entry that names none: it is the
    // baseline every CPU of that architecture runs.
    if (best == nullptr || (!best->platform->variant.empty() && d.platform->variant.empty())) {
      best = &d;
    }
  }
  if (best != nullptr) return *best;
  std::vector<std::string> offered;
  for (const auto &d : entries) {
    if (!d.platform || d.platform->os == "unknown") continue;
    std::string p = d.platform->str();
    if (std::find(offered.begin(), offered.end(), p) == offered.end()) offered.push_back(p);
  }
  std::string list;
  for (const auto &p : offered) list += (list.empty() ? "" : ", ") + p;
  throw ImageError(FLOTILLA_E_NOT_FOUND,
                   std::string(what) + " has no image for " + want.str() + " (this host); it has " +
                       (list.empty() ? std::string("no platform-tagged images") : list));
}

}  // namespace flotilla::runc
