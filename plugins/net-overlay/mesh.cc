#include "mesh.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cidr.h"

namespace flotilla::overlay {

using nlohmann::json;

std::string NodeRecord::to_json() const {
  json j = {{"node", node},         {"public_key", public_key},
            {"endpoint", endpoint}, {"key_generation", key_generation},
            {"subnets", subnets},   {"behind_nat", behind_nat},
            {"backend", backend}};
  if (!next_public_key.empty()) j["next_public_key"] = next_public_key;
  return j.dump();
}

std::optional<NodeRecord> NodeRecord::from_json(const std::string &text) {
  json j = json::parse(text, nullptr, false);
  if (!j.is_object()) return std::nullopt;
  NodeRecord r;
  try {
    r.node = j.value("node", "");
    r.public_key = j.value("public_key", "");
    r.endpoint = j.value("endpoint", "");
    r.key_generation = j.value("key_generation", int64_t{1});
    r.subnets = j.value("subnets", std::vector<std::string>{});
    r.behind_nat = j.value("behind_nat", false);
    r.backend = j.value("backend", "");
    r.next_public_key = j.value("next_public_key", "");
  } catch (const json::exception &) {
    return std::nullopt;
  }
  if (r.node.empty() || !key_from_base64(r.public_key) || r.subnets.empty()) return std::nullopt;
  if (!r.next_public_key.empty() && !key_from_base64(r.next_public_key)) return std::nullopt;
  for (const auto &s : r.subnets)
    if (!Cidr::parse(s)) return std::nullopt;
  return r;
}

std::vector<WgPeer> desired_peers(const std::map<std::string, NodeRecord> &records,
                                  const std::string &self, bool self_behind_nat, int keepalive) {
  std::vector<WgPeer> out;
  for (const auto &[name, r] : records) {
    if (name == self) continue;
    WgPeer p;
    p.public_key = r.public_key;
    p.endpoint = r.endpoint;
    p.allowed_ips = r.subnets;
    std::sort(p.allowed_ips.begin(), p.allowed_ips.end());
    p.behind_nat = r.behind_nat;
    p.keepalive = (r.behind_nat || self_behind_nat) ? keepalive : 0;
    if (!r.next_public_key.empty() && r.next_public_key != r.public_key) {
      WgPeer next = p;
      next.public_key = r.next_public_key;
      next.allowed_ips.clear();
      out.push_back(std::move(next));
    }
    out.push_back(std::move(p));
  }
  return out;
}

std::vector<std::string> desired_routes(const std::map<std::string, NodeRecord> &records,
                                        const std::string &self) {
  std::vector<std::string> out;
  for (const auto &[name, r] : records)
    if (name != self)
      for (const auto &s : r.subnets) out.push_back(Cidr::parse(s)->text());
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

NodeKey load_or_create_key(const std::string &dir) {
  const std::string path = dir + "/key.json";
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  ::chmod(dir.c_str(), 0700);
  NodeKey k;
  if (std::filesystem::exists(path)) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    json j = json::parse(ss.str(), nullptr, false);
    std::optional<WgKey> key;
    if (j.is_object() && j.contains("private_key") && j["private_key"].is_string())
      key = key_from_base64(j["private_key"].get<std::string>());
    if (!key)
      throw WgError(path +
                    ": not a WireGuard key file (want {\"private_key\": base64, "
                    "\"generation\": n}); move it away to make a new key");
    k.private_key = *key;
    if (j.contains("generation") && j["generation"].is_number_integer())
      k.generation = j["generation"].get<int64_t>();
    if (j.contains("next_private_key") && j["next_private_key"].is_string())
      k.next = key_from_base64(j["next_private_key"].get<std::string>());
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && (st.st_mode & 077)) ::chmod(path.c_str(), 0600);
    return k;
  }
  k.private_key = generate_private_key();
  save_key(dir, k);
  return k;
}

void save_key(const std::string &dir, const NodeKey &k) {
  const std::string path = dir + "/key.json";
  json j = {{"private_key", key_to_base64(k.private_key)}, {"generation", k.generation}};
  if (k.next) j["next_private_key"] = key_to_base64(*k.next);
  const std::string text = j.dump() + "\n";
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) throw WgError("cannot write " + tmp + ": " + std::strerror(errno));
  bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
            ::fsync(fd) == 0;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0)
    throw WgError("cannot write " + path + ": " + std::strerror(errno));
}

}  // namespace flotilla::overlay
