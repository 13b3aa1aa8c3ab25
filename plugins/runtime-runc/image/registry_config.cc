#include "registry_config.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <regex>
#include <sstream>

namespace flotilla::runc {

namespace {

using json = nlohmann::json;

constexpr const char *kKeys[] = {
    "auth_file", "insecure",           "hosts", "concurrency", "progress_interval_ms",
    "retries",   "low_speed_timeout_s"};

bool is_host_port(const std::string &s) {
  static const std::regex re(
      "(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
      "(?::[0-9]{1,5})?");
  return std::regex_match(s, re);
}

using Problems = std::vector<RegistryConfigProblem>;

// A table key as the host's config layer spells it in key paths (and so
// finds its line): bare when it is letters, digits, '_' and '-', else
// quoted ("hosts.\"registry.example:5000\"").
std::string key_part(const std::string &k) {
  bool bare = !k.empty() && std::all_of(k.begin(), k.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-';
  });
  if (bare) return k;
  std::string out = "\"";
  for (char c : k) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

// Each reader records a problem for a bad value and leaves it out (or
// returns the fallback), so that every bad key is reported in one go.
std::vector<std::string> host_list(const json &t, const std::string &key, const std::string &path,
                                   Problems &problems) {
  std::vector<std::string> out;
  auto it = t.find(key);
  if (it == t.end()) return out;
  if (!it->is_array()) {
    problems.emplace_back(path, "must be an array of \"host[:port]\" strings, got " + it->dump());
    return out;
  }
  for (size_t i = 0; i < it->size(); ++i) {
    const json &v = (*it)[i];
    if (!v.is_string() || !is_host_port(v.get<std::string>())) {
      problems.emplace_back(path + "[" + std::to_string(i) + "]",
                            "must be a \"host[:port]\" without a scheme or path, got " + v.dump());
      continue;
    }
    out.push_back(v.get<std::string>());
  }
  return out;
}

uint64_t integer(const json &t, const char *key, uint64_t fallback, uint64_t lo, uint64_t hi,
                 Problems &problems) {
  auto it = t.find(key);
  if (it == t.end()) return fallback;
  if (!it->is_number_integer() || it->get<int64_t>() < int64_t(lo) ||
      it->get<int64_t>() > int64_t(hi)) {
    problems.emplace_back(key, "must be an integer from " + std::to_string(lo) + " to " +
                                   std::to_string(hi) + ", got " + it->dump());
    return fallback;
  }
  return it->get<uint64_t>();
}

// An absolute path, or the fallback and a problem.
std::string abs_path(const json &t, const char *key, const std::string &path,
                     const std::string &what, Problems &problems) {
  auto it = t.find(key);
  if (it == t.end()) return {};
  if (!it->is_string() || it->get<std::string>().empty() || it->get<std::string>()[0] != '/') {
    problems.emplace_back(path, "must be " + what + ", got " + it->dump());
    return {};
  }
  return it->get<std::string>();
}

std::string base64_decode(const std::string &in) {
  std::string out((in.size() / 4 + 1) * 3, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char *>(out.data()),
                          reinterpret_cast<const unsigned char *>(in.data()),
                          static_cast<int>(in.size()));
  if (n < 0) return {};
  size_t pad = 0;
  if (!in.empty() && in.back() == '=') ++pad;
  if (in.size() > 1 && in[in.size() - 2] == '=') ++pad;
  out.resize(static_cast<size_t>(n) - pad);
  return out;
}

// "https://index.docker.io/v1/" -> "docker.io"; "https://h:5000/x" -> "h:5000"
std::string auth_key_host(std::string key) {
  if (auto p = key.find("://"); p != std::string::npos) key = key.substr(p + 3);
  if (auto p = key.find('/'); p != std::string::npos) key = key.substr(0, p);
  if (key == "index.docker.io" || key == "registry-1.docker.io") key = "docker.io";
  return key;
}

}  // namespace

bool RegistryConfig::is_insecure(const std::string &h) const {
  return std::find(insecure.begin(), insecure.end(), h) != insecure.end();
}

const RegistryHostConfig *RegistryConfig::host(const std::string &name) const {
  auto it = hosts.find(name);
  return it == hosts.end() ? nullptr : &it->second;
}

std::string RegistryConfig::realm_ca_file(const std::string &realm,
                                          const std::string &endpoint_host,
                                          const std::string &endpoint_ca) const {
  // The URL's authority, without user info, lower-cased.
  size_t start = realm.find("://");
  start = start == std::string::npos ? 0 : start + 3;
  size_t end = realm.find_first_of("/?#", start);
  std::string authority = realm.substr(start, end == std::string::npos ? end : end - start);
  if (size_t at = authority.rfind('@'); at != std::string::npos) authority.erase(0, at + 1);
  std::transform(authority.begin(), authority.end(), authority.begin(),
                 [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
  // "host" and "host:443" are one host for https.
  std::vector<std::string> names = {authority};
  const bool https = realm.rfind("https://", 0) == 0;
  if (https && authority.size() > 4 && authority.compare(authority.size() - 4, 4, ":443") == 0)
    names.push_back(authority.substr(0, authority.size() - 4));
  else if (https && authority.find(':') == std::string::npos)
    names.push_back(authority + ":443");
  for (const auto &n : names)
    if (const RegistryHostConfig *hc = host(n); hc && !hc->ca_file.empty()) return hc->ca_file;
  for (const auto &n : names)
    if (n == endpoint_host) return endpoint_ca;
  return {};
}

RegistryConfig parse_registry_config(const json &table,
                                     std::vector<RegistryConfigProblem> &problems) {
  RegistryConfig c;
  if (table.is_null()) return c;
  if (!table.is_object()) {
    problems.emplace_back("", "must be a table");
    return c;
  }
  for (auto it = table.begin(); it != table.end(); ++it) {
    if (std::find_if(std::begin(kKeys), std::end(kKeys),
                     [&](const char *k) { return it.key() == k; }) == std::end(kKeys)) {
      std::string known;
      for (const char *k : kKeys) known += (known.empty() ? "" : ", ") + std::string(k);
      problems.emplace_back(key_part(it.key()), "is not a registry key; known keys: " + known);
    }
  }
  c.auth_file = abs_path(table, "auth_file", "auth_file", "an absolute path", problems);
  c.insecure = host_list(table, "insecure", "insecure", problems);
  c.concurrency = integer(table, "concurrency", c.concurrency, 1, 32, problems);
  c.progress_interval_ms =
      integer(table, "progress_interval_ms", c.progress_interval_ms, 10, 60000, problems);
  c.retries = integer(table, "retries", c.retries, 0, 100, problems);
  c.low_speed_timeout_s =
      integer(table, "low_speed_timeout_s", c.low_speed_timeout_s, 1, 3600, problems);
  if (auto it = table.find("hosts"); it != table.end()) {
    if (!it->is_object()) {
      problems.emplace_back("hosts", "must be a table of [hosts.\"host:port\"] tables");
      return c;
    }
    for (auto h = it->begin(); h != it->end(); ++h) {
      std::string key = "hosts." + key_part(h.key());
      if (!is_host_port(h.key())) {
        problems.emplace_back(key,
                              "must be named \"host[:port]\" (\"docker.io\", "
                              "\"registry.example:5000\")");
        continue;
      }
      if (!h->is_object()) {
        problems.emplace_back(key, "must be a table");
        continue;
      }
      for (auto k = h->begin(); k != h->end(); ++k) {
        if (k.key() != "mirrors" && k.key() != "ca_file")
          problems.emplace_back(key + "." + key_part(k.key()),
                                "is not a registry host key; known keys: mirrors, ca_file");
      }
      RegistryHostConfig hc;
      hc.mirrors = host_list(*h, "mirrors", key + ".mirrors", problems);
      hc.ca_file =
          abs_path(*h, "ca_file", key + ".ca_file", "an absolute path to a PEM file", problems);
      c.hosts[h.key()] = std::move(hc);
    }
  }
  return c;
}

RegistryConfig parse_registry_config(const json &table) {
  std::vector<RegistryConfigProblem> problems;
  RegistryConfig c = parse_registry_config(table, problems);
  if (!problems.empty()) throw problems.front();
  return c;
}

RegistryAuths RegistryAuths::load(const std::string &path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("registry credentials " + path + ": cannot be read");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse(ss.str(), path);
}

RegistryAuths RegistryAuths::parse(const std::string &text, const std::string &path) {
  RegistryAuths out;
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    throw std::runtime_error("registry credentials " + path + ": not a JSON object");
  auto auths = j.find("auths");
  if (auths == j.end()) return out;
  if (!auths->is_object())
    throw std::runtime_error("registry credentials " + path + ": \"auths\" is not an object");
  for (auto it = auths->begin(); it != auths->end(); ++it) {
    std::string where = "registry credentials " + path + ": auths[\"" + it.key() + "\"]";
    if (!it->is_object()) throw std::runtime_error(where + " is not an object");
    RegistryCredentials cred;
    auto auth = it->find("auth");
    if (auth != it->end() && auth->is_string() && !auth->get<std::string>().empty()) {
      std::string decoded = base64_decode(auth->get<std::string>());
      size_t colon = decoded.find(':');
      if (colon == std::string::npos)
        throw std::runtime_error(where + ".auth is not base64 of \"user:password\"");
      cred.username = decoded.substr(0, colon);
      cred.password = decoded.substr(colon + 1);
    } else {
      auto u = it->find("username"), p = it->find("password");
      if (u == it->end() || p == it->end() || !u->is_string() || !p->is_string())
        throw std::runtime_error(where + " has neither \"auth\" nor \"username\" and \"password\"");
      cred.username = u->get<std::string>();
      cred.password = p->get<std::string>();
    }
    out.by_host_[auth_key_host(it.key())] = std::move(cred);
  }
  return out;
}

std::optional<RegistryCredentials> RegistryAuths::find(const std::string &registry) const {
  auto it = by_host_.find(auth_key_host(registry));
  if (it == by_host_.end()) return std::nullopt;
  return it->second;
}

}  // namespace flotilla::runc
