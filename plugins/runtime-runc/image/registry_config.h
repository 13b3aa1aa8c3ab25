// How the image store reaches registries: [plugin.runtime-runc.registry] in
// flotillad.toml (README.md, "Pulling from registries", lists every key),
// and the credentials file it names, in Docker's config.json "auths"
// format. Credentials are never logged and never appear in an error.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace flotilla::runc {

struct RegistryHostConfig {
  std::vector<std::string> mirrors;  // host[:port], tried in order before the registry
  std::string ca_file;               // PEM bundle for this host's TLS; empty: the system's
};

struct RegistryConfig {
  std::string auth_file;                            // Docker config.json; empty: no credentials
  std::vector<std::string> insecure;                // host[:port] reached over plain HTTP
  std::map<std::string, RegistryHostConfig> hosts;  // by registry (or mirror) host[:port]
  uint64_t concurrency = 3;                         // layers downloaded at once per pull
  uint64_t progress_interval_ms = 500;  // at most one progress report per pull this often
  uint64_t retries = 3;                 // resumes of an interrupted blob, per blob
  uint64_t low_speed_timeout_s = 30;    // a transfer slower than 1 KiB/s this long fails

  bool is_insecure(const std::string &host) const;
  const RegistryHostConfig *host(const std::string &name) const;

  // The CA bundle for a Bearer token realm (a URL; often another host than
  // the registry, e.g. auth.docker.io for registry-1.docker.io): the
  // ca_file of the realm's own host[:port] when one is configured; the
  // registry endpoint's (endpoint_ca) when the realm is on that same host;
  // otherwise "" (the system's CAs). A registry's private CA is never
  // trusted for a host it was not configured for.
  std::string realm_ca_file(const std::string &realm, const std::string &endpoint_host,
                            const std::string &endpoint_ca) const;
};

struct RegistryConfigProblem : std::runtime_error {
  RegistryConfigProblem(std::string key, const std::string &message)
      : std::runtime_error(message), key(std::move(key)) {}
  std::string key;  // dotted, inside the registry table ("hosts.\"a:5000\".mirrors")
};

// Reads the registry table on top of the defaults, adding every bad key to
// problems (a bad value leaves the default, a bad list entry or host table
// is left out), so that all of them are reported at once.
RegistryConfig parse_registry_config(const nlohmann::json &table,
                                     std::vector<RegistryConfigProblem> &problems);
// The same; throws the first problem.
RegistryConfig parse_registry_config(const nlohmann::json &table);

struct RegistryCredentials {
  std::string username;
  std::string password;  // or an identity token (username "<token>")
};

// The "auths" of a Docker config.json. Keys may be "host:port",
// "https://host:port", "https://index.docker.io/v1/" (Docker Hub), with or
// without a path; each value has "auth" (base64 "user:password") or
// "username" and "password". Throws std::runtime_error naming the file and
// the entry (never the secret) when it cannot be read.
class RegistryAuths {
 public:
  RegistryAuths() = default;
  static RegistryAuths load(const std::string &path);
  static RegistryAuths parse(const std::string &text, const std::string &path);
  std::optional<RegistryCredentials> find(const std::string &registry) const;
  bool empty() const { return by_host_.empty(); }

 private:
  std::map<std::string, RegistryCredentials> by_host_;
};

}  // namespace flotilla::runc
