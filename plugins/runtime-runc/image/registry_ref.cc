#include "registry_ref.h"

#include "digest.h"
#include "image_error.h"
#include "reference.h"

namespace flotilla::runc {

namespace {

bool looks_like_registry(std::string_view part) {
  return part.find('.') != std::string_view::npos || part.find(':') != std::string_view::npos ||
         part == "localhost";
}

}  // namespace

std::string RegistryRef::canonical() const {
  std::string out = registry + "/" + repository;
  return digest.empty() ? out + ":" + tag : out + "@" + digest;
}

std::string registry_endpoint_host(std::string_view registry) {
  if (registry == "docker.io" || registry == "index.docker.io") return "registry-1.docker.io";
  return std::string(registry);
}

RegistryRef parse_registry_ref(std::string_view ref) {
  if (ref.empty()) throw invalid_reference(ref, "empty reference");
  if (ref.starts_with("sha256:")) {
    throw invalid_reference(ref,
                  "a bare digest names no registry or repository; write "
                  "REGISTRY/REPOSITORY@" +
                      std::string(ref.substr(0, 15)) + "...");
  }
  for (char c : ref) {
    if (c <= ' ' || c == 0x7f) throw invalid_reference(ref, "contains a space or control character");
  }
  RegistryRef out;
  std::string_view rest = ref;
  if (auto at = rest.find('@'); at != std::string_view::npos) {
    std::string_view d = rest.substr(at + 1);
    digest_hex(d, "image reference \"" + std::string(ref) + "\"");
    out.digest = std::string(d);
    rest = rest.substr(0, at);
  }
  // Validates the name grammar (components, tag) and adds ":latest".
  std::string normalized = normalize_image_name(rest);
  size_t colon = normalized.rfind(':');
  std::string name = normalized.substr(0, colon);
  bool tag_given = rest.size() != name.size();
  out.tag = normalized.substr(colon + 1);
  out.store_name = normalized;
  if (!out.digest.empty() && !tag_given) {
    // "app@sha256:..." gets a name from its digest so that list() shows
    // something meaningful; the digest is what is pulled.
    out.store_name = name + ":sha256-" + out.digest.substr(7, 12);
  }
  size_t slash = name.find('/');
  if (slash != std::string::npos && looks_like_registry(name.substr(0, slash))) {
    out.registry = name.substr(0, slash);
    out.repository = name.substr(slash + 1);
  } else {
    out.registry = "docker.io";
    out.repository = name;
  }
  if (out.registry == "index.docker.io") out.registry = "docker.io";
  if (out.registry == "docker.io" && out.repository.find('/') == std::string::npos) {
    out.repository = "library/" + out.repository;
  }
  if (out.repository.empty()) throw invalid_reference(ref, "no repository after the registry");
  return out;
}

}  // namespace flotilla::runc
