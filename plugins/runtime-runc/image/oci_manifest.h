// The OCI image JSON documents the store reads — index, manifest, config —
// and their Docker schema 2 equivalents, parsed into plain structs with
// errors that name the document and the field.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace flotilla::runc {

namespace media_type {
inline constexpr std::string_view kOciIndex = "application/vnd.oci.image.index.v1+json";
inline constexpr std::string_view kOciManifest = "application/vnd.oci.image.manifest.v1+json";
inline constexpr std::string_view kOciConfig = "application/vnd.oci.image.config.v1+json";
inline constexpr std::string_view kOciLayer = "application/vnd.oci.image.layer.v1.tar";
inline constexpr std::string_view kOciLayerGzip = "application/vnd.oci.image.layer.v1.tar+gzip";
inline constexpr std::string_view kOciLayerZstd = "application/vnd.oci.image.layer.v1.tar+zstd";
inline constexpr std::string_view kDockerManifestList =
    "application/vnd.docker.distribution.manifest.list.v2+json";
inline constexpr std::string_view kDockerManifest =
    "application/vnd.docker.distribution.manifest.v2+json";
inline constexpr std::string_view kDockerConfig = "application/vnd.docker.container.image.v1+json";
inline constexpr std::string_view kDockerLayerGzip =
    "application/vnd.docker.image.rootfs.diff.tar.gzip";
}  // namespace media_type

inline constexpr std::string_view kRefNameAnnotation = "org.opencontainers.image.ref.name";

struct Platform {
  std::string os;
  std::string architecture;
  std::string variant;

  // The platform this library was compiled for, e.g. linux/amd64.
  static Platform host();
  // "linux/amd64", "linux/arm/v7"
  std::string str() const;
};

struct Descriptor {
  std::string media_type;  // may be empty in index.json entries of old tools
  std::string digest;      // validated "sha256:<hex>"
  int64_t size = 0;
  std::map<std::string, std::string> annotations;
  std::optional<Platform> platform;

  std::string annotation(std::string_view key) const;
};

enum class DocumentKind { index, manifest };

bool is_index_media_type(std::string_view media_type);
bool is_manifest_media_type(std::string_view media_type);
bool is_config_media_type(std::string_view media_type);

enum class LayerCompression { none, gzip, zstd };
const char *compression_name(LayerCompression c);
// The compression a layer media type announces. Throws ImageError
// (UNSUPPORTED) for encrypted, foreign-format or unknown layer types.
LayerCompression layer_compression(std::string_view media_type, std::string_view what);

// Parses text as JSON; what names the document ("manifest sha256:...").
nlohmann::json parse_json(std::string_view text, std::string_view what);

Descriptor parse_descriptor(const nlohmann::json &j, std::string_view where);

// Decides whether doc (fetched through a descriptor with media type
// declared, possibly empty) is an image index or a manifest, refusing
// Docker schema 1 and anything else.
DocumentKind classify_document(const nlohmann::json &doc, std::string_view declared,
                               std::string_view what);

// "manifests" of an image index / manifest list / index.json.
std::vector<Descriptor> parse_index(const nlohmann::json &doc, std::string_view what);

struct Manifest {
  std::string media_type;
  Descriptor config;
  std::vector<Descriptor> layers;
};
Manifest parse_manifest(const nlohmann::json &doc, std::string_view what);

// What the runtime merges into a task: the image's "config" section.
struct ImageConfig {
  std::vector<std::string> env;
  std::vector<std::string> entrypoint;
  std::vector<std::string> cmd;
  std::string working_dir;
  std::string user;
  std::string stop_signal;
  std::map<std::string, std::string> labels;
  std::vector<std::string> exposed_ports;
  std::vector<std::string> volumes;

  // {"Env":[...], "Entrypoint":[...], "Cmd":[...], "WorkingDir":..., "User":...,
  //  "StopSignal":..., "Labels":{...}, "ExposedPorts":[...], "Volumes":[...]}
  nlohmann::json to_json() const;
};

struct ParsedConfig {
  ImageConfig config;
  Platform platform;
  std::string created;                // RFC 3339, may be empty
  std::vector<std::string> diff_ids;  // rootfs.diff_ids, validated
};
ParsedConfig parse_config(const nlohmann::json &doc, std::string_view what);

// Picks the entry of an image index for want. Attestation and unknown
// platforms never match. Throws ImageError(NOT_FOUND) listing the platforms
// the index offers when none matches.
const Descriptor &select_platform(const std::vector<Descriptor> &entries, const Platform &want,
                                  std::string_view what);

}  // namespace flotilla::runc
