#include "etcd_config.h"

#include <arpa/inet.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace flotilla::store_etcd {
namespace {

constexpr const char *kKnownKeys =
    "endpoints, ca_file, cert_file, key_file, server_name, dial_timeout_ms, "
    "request_timeout_ms, keepalive_time_ms, keepalive_timeout_ms, max_txn_ops, "
    "max_request_bytes, range_page_keys";

struct Checker {
  std::vector<ConfigProblem> &problems;
  void fail(const std::string &key, const std::string &message) {
    problems.push_back({key, message});
  }
  void integer(const nlohmann::json &v, const std::string &key, int64_t lo, int64_t hi,
               const char *meaning, int64_t &out) {
    std::string accepted = "an integer from " + std::to_string(lo) + " to " + std::to_string(hi) +
                           " (" + meaning + ")";
    if (!v.is_number_integer()) return fail(key, v.dump() + " is not " + accepted);
    if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(hi))
      return fail(key, v.dump() + " is not " + accepted);
    int64_t n = v.get<int64_t>();
    if (n < lo || n > hi) return fail(key, v.dump() + " is not " + accepted);
    out = n;
  }
  void file(const nlohmann::json &v, const std::string &key, std::string &path, std::string &pem) {
    if (!v.is_string() || v.get<std::string>().empty())
      return fail(key, v.dump() + " is not a file name (a PEM file)");
    path = v.get<std::string>();
    std::ifstream in(path, std::ios::binary);
    if (!in) return fail(key, "cannot read \"" + path + "\"; give a readable PEM file");
    std::stringstream ss;
    ss << in.rdbuf();
    pem = ss.str();
    if (pem.find("-----BEGIN") == std::string::npos)
      fail(key, "\"" + path + "\" is not a PEM file (no -----BEGIN line)");
  }
};

// "http://host:port", "https://host:port" or "host:port" (http).
bool parse_endpoint(const std::string &url, Endpoint &ep, std::string &why) {
  std::string rest = url;
  ep.url = url;
  if (rest.rfind("https://", 0) == 0) {
    ep.tls = true;
    rest = rest.substr(8);
  } else if (rest.rfind("http://", 0) == 0) {
    rest = rest.substr(7);
  } else if (rest.find("://") != std::string::npos) {
    why = "only http:// and https:// endpoints are served";
    return false;
  }
  if (!rest.empty() && rest.back() == '/') rest.pop_back();
  std::string host, port;
  if (!rest.empty() && rest[0] == '[') {
    auto close = rest.find(']');
    if (close == std::string::npos || close + 1 >= rest.size() || rest[close + 1] != ':') {
      why = "an IPv6 endpoint is written [address]:port";
      return false;
    }
    host = rest.substr(1, close - 1);
    port = rest.substr(close + 2);
  } else {
    auto colon = rest.rfind(':');
    if (colon == std::string::npos) {
      why = "the port is missing (etcd's client port is usually 2379)";
      return false;
    }
    host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
  }
  if (host.empty() || port.empty() || port.find_first_not_of("0123456789") != std::string::npos ||
      port.size() > 5 || std::stoi(port) == 0 || std::stoi(port) > 65535) {
    why = "expected host:port with a port from 1 to 65535";
    return false;
  }
  ep.host = host;
  in6_addr a6;
  in_addr a4;
  if (inet_pton(AF_INET, host.c_str(), &a4) == 1)
    ep.target = "ipv4:" + host + ":" + port;
  else if (inet_pton(AF_INET6, host.c_str(), &a6) == 1)
    ep.target = "ipv6:[" + host + "]:" + port;
  else
    ep.target = "dns:///" + host + ":" + port;
  return true;
}

}  // namespace

EtcdConfig parse_etcd_config(std::string_view json_text, std::vector<ConfigProblem> &problems) {
  EtcdConfig c;
  Checker ck{problems};
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json_text.begin(), json_text.end());
  } catch (const nlohmann::json::exception &e) {
    ck.fail("", std::string("the plugin's config is not valid JSON: ") + e.what());
    return c;
  }
  if (!j.is_object()) {
    ck.fail("", "the plugin's config must be a table");
    return c;
  }
  bool have_endpoints = false;
  for (const auto &[key, v] : j.items()) {
    if (key == "endpoints") {
      have_endpoints = true;
      if (!v.is_array() || v.empty()) {
        ck.fail(key, v.dump() + " is not a non-empty list of \"http://host:port\" strings");
        continue;
      }
      for (size_t i = 0; i < v.size(); ++i) {
        std::string why;
        Endpoint ep;
        if (!v[i].is_string())
          ck.fail(key, "entry " + std::to_string(i + 1) + " " + v[i].dump() + " is not a string");
        else if (!parse_endpoint(v[i].get<std::string>(), ep, why))
          ck.fail(key, "entry " + std::to_string(i + 1) + " " + v[i].dump() + ": " + why);
        else
          c.endpoints.push_back(ep);
      }
    } else if (key == "ca_file") {
      ck.file(v, key, c.ca_file, c.ca_pem);
    } else if (key == "cert_file") {
      ck.file(v, key, c.cert_file, c.cert_pem);
    } else if (key == "key_file") {
      ck.file(v, key, c.key_file, c.key_pem);
    } else if (key == "server_name") {
      if (!v.is_string() || v.get<std::string>().empty())
        ck.fail(key, v.dump() + " is not a host name (the name in etcd's server certificate)");
      else
        c.server_name = v.get<std::string>();
    } else if (key == "dial_timeout_ms") {
      ck.integer(v, key, 100, 600000, "milliseconds to connect to one endpoint before the next",
                 c.dial_timeout_ms);
    } else if (key == "request_timeout_ms") {
      ck.integer(v, key, 100, 3600000, "milliseconds a request may take, retries included",
                 c.request_timeout_ms);
    } else if (key == "keepalive_time_ms") {
      ck.integer(v, key, kMinKeepaliveTimeMs, 3600000,
                 "milliseconds between HTTP/2 pings on an idle connection; etcd refuses pings "
                 "closer than its --grpc-keepalive-min-time, 5 s by default",
                 c.keepalive_time_ms);
    } else if (key == "keepalive_timeout_ms") {
      ck.integer(v, key, 1000, 600000, "milliseconds to wait for a ping's answer",
                 c.keepalive_timeout_ms);
    } else if (key == "max_txn_ops") {
      ck.integer(v, key, 1, 100000, "etcd's --max-txn-ops, 128 by default", c.max_txn_ops);
    } else if (key == "max_request_bytes") {
      ck.integer(v, key, 1024, int64_t{2} << 30, "etcd's --max-request-bytes, 1.5 MiB by default",
                 c.max_request_bytes);
    } else if (key == "range_page_keys") {
      ck.integer(v, key, 1, 1000000, "keys fetched per page of a range read", c.range_page_keys);
    } else {
      ck.fail(key, "unknown key; store-etcd accepts " + std::string(kKnownKeys));
    }
  }
  if (!have_endpoints) {
    Endpoint ep;
    std::string why;
    parse_endpoint("http://127.0.0.1:2379", ep, why);
    c.endpoints.push_back(ep);
  }
  bool any_tls = false, any_plain = false;
  for (const auto &ep : c.endpoints) (ep.tls ? any_tls : any_plain) = true;
  if (any_tls && any_plain)
    ck.fail("endpoints", "mixes http:// and https:// endpoints; use one scheme for all");
  if (!any_tls && (!c.ca_file.empty() || !c.cert_file.empty() || !c.key_file.empty()))
    ck.fail("endpoints",
            "TLS files are set but no endpoint is https://; write the endpoints as https://");
  if (c.cert_file.empty() != c.key_file.empty())
    ck.fail(c.cert_file.empty() ? "cert_file" : "key_file",
            "a client certificate needs both cert_file and key_file");
  return c;
}

}  // namespace flotilla::store_etcd
