#include "reference.h"

#include <regex>

#include "digest.h"
#include "image_error.h"

namespace flotilla::runc {

namespace {

// One path component: lowercase alphanumerics joined by ".", "_", "__" or
// runs of "-".
const std::regex &component_re() {
  static const std::regex re("[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*");
  return re;
}
const std::regex &domain_re() {
  static const std::regex re(
      "(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
      "(?::[0-9]+)?");
  return re;
}
const std::regex &tag_re() {
  static const std::regex re("[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}");
  return re;
}

// Validates "repo" (no tag) and throws with the reference for context.
void check_repository(std::string_view repo, std::string_view ref) {
  if (repo.empty()) throw invalid_reference(ref, "empty name");
  if (repo.size() > 255) throw invalid_reference(ref, "name is longer than 255 characters");
  size_t start = 0;
  bool first = true;
  for (;;) {
    size_t slash = repo.find('/', start);
    std::string part(
        repo.substr(start, slash == std::string_view::npos ? repo.npos : slash - start));
    bool more = slash != std::string_view::npos;
    // The first of several components is a registry host when it looks like
    // one (has a dot or a port, or is localhost).
    bool is_domain = first && more &&
                     (part.find('.') != std::string::npos || part.find(':') != std::string::npos ||
                      part == "localhost");
    const std::regex &re = is_domain ? domain_re() : component_re();
    if (!std::regex_match(part, re)) {
      throw invalid_reference(ref, "\"" + part + "\" is not a valid name component (lowercase letters, " +
                             "digits and . _ - separators)");
    }
    if (!more) break;
    start = slash + 1;
    first = false;
  }
}

}  // namespace

ImageRef parse_image_ref(std::string_view ref) {
  if (ref.empty()) throw invalid_reference(ref, "empty reference");
  ImageRef out;
  // "sha256:..." is always a digest; a repository cannot be called sha256
  // with a 64-hex tag in any useful way.
  if (ref.starts_with("sha256:") || ref.starts_with("sha384:") || ref.starts_with("sha512:")) {
    digest_hex(ref, "image reference");
    out.digest = std::string(ref);
    return out;
  }
  std::string_view rest = ref;
  if (auto at = rest.find('@'); at != std::string_view::npos) {
    std::string_view digest = rest.substr(at + 1);
    digest_hex(digest, "image reference \"" + std::string(ref) + "\"");
    out.digest = std::string(digest);
    rest = rest.substr(0, at);
    size_t slash = rest.rfind('/');
    size_t colon = rest.rfind(':');
    bool has_tag =
        colon != std::string_view::npos && (slash == std::string_view::npos || colon > slash);
    if (!has_tag) {
      // "name@digest": the digest decides, whatever the tag.
      std::string normalized = normalize_image_name(rest);
      out.repository = normalized.substr(0, normalized.rfind(':'));
      return out;
    }
  }
  out.name = normalize_image_name(rest);
  return out;
}

bool ImageRef::matches(std::string_view image_name, std::string_view image_digest) const {
  if (!name.empty() && image_name != name) return false;
  if (!repository.empty()) {
    size_t colon = image_name.rfind(':');
    if (image_name.substr(0, colon) != repository) return false;
  }
  return digest.empty() || image_digest == digest;
}

std::string normalize_image_name(std::string_view name) {
  if (name.find('@') != std::string_view::npos) {
    throw invalid_reference(name, "a name to tag an image with cannot carry a digest");
  }
  std::string_view repo = name;
  std::string tag = "latest";
  size_t slash = name.rfind('/');
  size_t colon = name.rfind(':');
  if (colon != std::string_view::npos && (slash == std::string_view::npos || colon > slash)) {
    repo = name.substr(0, colon);
    tag = std::string(name.substr(colon + 1));
    if (!std::regex_match(tag, tag_re())) {
      throw invalid_reference(name, "tag \"" + tag + "\" is not valid (letters, digits, _ . -, at most 128)");
    }
  }
  check_repository(repo, name);
  return std::string(repo) + ":" + tag;
}

}  // namespace flotilla::runc
