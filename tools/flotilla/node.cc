// flotilla node status, flotilla node drain, flotilla node rotate-key
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "cli.h"

namespace flotilla::cli {
namespace {

using nlohmann::json;

std::string resource(const json &node, const char *key) {
  if (!node.contains("resources")) return "-";
  return cell(node["resources"], key);
}

// Seconds as "4s", "3m12s"; null (never) as "never".
std::string age(const json &v) {
  if (!v.is_number_integer()) return "never";
  int64_t s = v.get<int64_t>();
  if (s < 120) return std::to_string(s) + "s";
  if (s < 7200) return std::to_string(s / 60) + "m" + std::to_string(s % 60) + "s";
  return std::to_string(s / 3600) + "h" + std::to_string(s / 60 % 60) + "m";
}

// GET /v1/nodes/<name>/network: subnets, the WireGuard device, its peers.
void print_network(const json &n) {
  std::string subnets;
  for (const json &s : n.value("subnets", json::array()))
    subnets += (subnets.empty() ? "" : ", ") + cell(s);
  std::printf("\n");
  // Another node's: the copy it keeps in the store, as old as it says.
  if (n.value("source", "") == "store") {
    const json age_ms = n.value("age_ms", json());
    print_fields({{"Network", "as the node last copied it into the store" +
                                  (age_ms.is_number() ? ", " +
                                                            age(json(age_ms.get<int64_t>() / 1000)) +
                                                            " ago"
                                                      : std::string())}});
  }
  print_fields({{"Subnets", subnets.empty() ? "-" : subnets},
                {"Bridge", cell(n, "bridge") + " (MTU " + cell(n, "mtu") + ")"}});
  if (!n.contains("wireguard") || !n["wireguard"].is_object()) {
    std::printf("WireGuard  off\n");
    return;
  }
  const json &w = n["wireguard"];
  print_fields(
      {{"WireGuard", cell(w, "interface") + ", " + cell(w, "backend") + " backend" +
                         (w.value("pid", 0) > 0 ? ", pid " + cell(w, "pid") : "")},
       {"Endpoint", cell(w, "endpoint")},
       {"Public key", cell(w, "public_key") + " (generation " + cell(w, "key_generation") + ")"}});
  if (!cell(w, "error").empty() && cell(w, "error") != "-")
    std::printf("Error      %s\n", cell(w, "error").c_str());
  Table t({"PEER", "ENDPOINT", "ALLOWED IPS", "HANDSHAKE", "RX", "TX", "KEY GEN", "BACKEND"});
  for (const json &p : n.value("peers", json::array())) {
    std::string ips;
    for (const json &ip : p.value("allowed_ips", json::array()))
      ips += (ips.empty() ? "" : ",") + cell(ip);
    t.add({p.contains("node") && p["node"].is_string() ? cell(p, "node")
                                                       : cell(p, "public_key").substr(0, 8),
           cell(p, "endpoint"), ips, age(p.value("last_handshake_age_s", json())),
           cell(p, "rx_bytes"), cell(p, "tx_bytes"), cell(p, "key_generation"),
           cell(p, "backend")});
  }
  std::printf("\n");
  if (t.empty())
    std::printf("No WireGuard peers.\n");
  else
    t.print();
}

// How long since the node last renewed its lease, as the answering daemon
// sees it: "1.2s ago", "3m04s ago"; "-" before its first heartbeat.
std::string heartbeat(const json &node) {
  auto it = node.find("heartbeat_age_ms");
  if (it == node.end() || !it->is_number_integer()) return "-";
  int64_t ms = it->get<int64_t>();
  char buf[48];
  if (ms < 60'000)
    std::snprintf(buf, sizeof buf, "%.1fs ago", static_cast<double>(ms) / 1000.0);
  else if (ms < 3'600'000)
    std::snprintf(buf, sizeof buf, "%lldm%02llds ago", static_cast<long long>(ms / 60'000),
                  static_cast<long long>(ms / 1000 % 60));
  else
    std::snprintf(buf, sizeof buf, "%lldh%02lldm ago", static_cast<long long>(ms / 3'600'000),
                  static_cast<long long>(ms / 60'000 % 60));
  return buf;
}

// One node, as GET /v1/nodes/<name> shows it.
int one_node_status(Cli &cli, const std::string &name) {
  int code = kExitOk;
  auto j = get_json(cli, "/v1/nodes/" + url_escape(name), code);
  if (!j) return code;
  const json &n = *j;
  std::string plugins;
  for (const json &p : n.value("plugins", json::array()))
    plugins += (plugins.empty() ? "" : ", ") + cell(p, "name") + " " + cell(p, "version");
  std::string attrs;
  if (n.contains("attributes") && n["attributes"].is_object())
    for (const auto &[k, v] : n["attributes"].items())
      attrs += (attrs.empty() ? "" : ", ") + k + "=" + (v.is_string() ? v.get<std::string>() : v.dump());
  print_fields({{"Name", cell(n, "name")},
                {"Status", cell(n, "status")},
                {"Last heartbeat",
                 heartbeat(n) == "-" ? "-" : heartbeat(n) + " (" + cell(n, "last_heartbeat") + ")"},
                {"Eligible", cell(n, "eligible")},
                {"Drain", n.value("drain", false) ? "true" : "false"},
                {"Datacenter", cell(n, "datacenter")},
                {"CPU (MHz)", resource(n, "cpu_mhz")},
                {"Memory (MiB)", resource(n, "memory_mb")},
                {"Disk (MiB)", resource(n, "disk_mb")},
                {"Started", cell(n, "started_at")},
                {"Version", cell(n, "version")},
                {"Attributes", attrs.empty() ? "-" : attrs},
                {"Plugins", plugins.empty() ? "-" : plugins}});
  // The node's network when a network plugin is loaded: read now when this
  // daemon is that node, else the copy that node keeps in the store.
  HttpResponse nr = cli.client.request("GET", "/v1/nodes/" + url_escape(name) + "/network");
  if (nr.status == 200) print_network(body_json(nr));
  return kExitOk;
}

int node_status(Cli &cli, Args &args) {
  std::optional<std::string> name = args.optional_positional();
  args.done();
  if (name) return one_node_status(cli, *name);
  int code = kExitOk;
  auto j = get_json(cli, "/v1/nodes", code);
  if (!j) return code;
  Table t({"NAME", "STATUS", "ELIGIBLE", "DATACENTER", "CPU (MHz)", "MEMORY (MiB)", "DISK (MiB)",
           "VERSION", "HEARTBEAT"});
  for (const json &n : (*j)["nodes"])
    t.add({cell(n, "name"), cell(n, "status"), cell(n, "eligible"), cell(n, "datacenter"),
           resource(n, "cpu_mhz"), resource(n, "memory_mb"), resource(n, "disk_mb"),
           cell(n, "version"), heartbeat(n)});
  if (t.empty()) {
    std::printf("No nodes have registered.\n");
  } else {
    t.print();
  }
  return kExitOk;
}

// POST /v1/nodes/<name>/drain: --undo lifts a drain; --ineligible only
// stops new placements.
int node_drain(Cli &cli, Args &args) {
  bool undo = args.flag({"--undo"});
  bool ineligible = args.flag({"--ineligible"});
  std::string name = args.positional("NODE (the node's name)");
  args.done();
  json body = undo ? json{{"drain", false}, {"eligible", true}}
                   : ineligible ? json{{"drain", false}, {"eligible", false}}
                                : json{{"drain", true}};
  HttpResponse r = cli.client.request("POST", "/v1/nodes/" + url_escape(name) + "/drain",
                                      body.dump(), "application/json");
  if (r.status >= 400) return api_error(cli, r, name);
  if (cli.json) {
    print_json(r);
    return kExitOk;
  }
  std::printf(undo ? "Node \"%s\" takes allocations again\n"
              : ineligible ? "Node \"%s\" keeps its allocations but takes no new ones\n"
                           : "Node \"%s\" is draining: its allocations are placed elsewhere\n",
              name.c_str());
  return kExitOk;
}

}  // namespace

// POST /v1/nodes/<name>/rotate-key, then GET .../network until the key
// generation moves on (the rotation is make before break: about
// wg_rotate_overlap_ms).
int node_rotate_key(Cli &cli, Args &args) {
  std::string name = args.positional("NODE (the node's name; ask its own daemon)");
  std::string timeout = args.option({"--timeout"}, "seconds");
  args.done();
  const std::string net = "/v1/nodes/" + url_escape(name) + "/network";
  HttpResponse before = cli.client.request("GET", net);
  if (before.status >= 400) return api_error(cli, before);
  json b = body_json(before);
  if (!b.contains("wireguard") || !b["wireguard"].is_object()) {
    std::fprintf(stderr, "node %s has no WireGuard mesh (wireguard = \"off\"?)\n", name.c_str());
    return kExitApiError;
  }
  const int64_t gen = b["wireguard"].value("key_generation", int64_t{0});
  HttpResponse r = cli.client.request("POST", "/v1/nodes/" + url_escape(name) + "/rotate-key");
  if (r.status >= 400) return api_error(cli, r);
  const int limit_ms = (timeout.empty() ? 30 : std::max(1, std::atoi(timeout.c_str()))) * 1000;
  for (int waited = 0; waited < limit_ms; waited += 100) {
    HttpResponse now = cli.client.request("GET", net);
    if (now.status == 200) {
      json n = body_json(now);
      if (n.contains("wireguard") && n["wireguard"].value("key_generation", int64_t{0}) > gen) {
        if (cli.json) {
          print_json(now);
        } else {
          std::printf("node %s: WireGuard key rotated, generation %lld, public key %s\n",
                      name.c_str(),
                      static_cast<long long>(n["wireguard"].value("key_generation", int64_t{0})),
                      cell(n["wireguard"], "public_key").c_str());
        }
        return kExitOk;
      }
    }
    ::usleep(100 * 1000);
  }
  std::fprintf(stderr, "node %s: the key rotation did not finish within %d s\n", name.c_str(),
               limit_ms / 1000);
  return kExitDeployTimeout;
}

const std::vector<Command> &node_commands() {
  static const std::vector<Command> commands = {
      {"node", "status", "[NODE]", "list the nodes of the cluster, or show one",
       "Any node's API serves the whole cluster: every node is listed, whichever\n"
       "daemon answers, with how long since its last heartbeat (lease renewal) by\n"
       "that daemon's clock. With NODE, that node's record in full.",
       node_status},
      {"node", "drain", "[--undo | --ineligible] NODE", "move a node's allocations elsewhere",
       "The scheduler stops every allocation on NODE and places it again on other nodes,\n"
       "and places nothing new there. --undo lets NODE take allocations again;\n"
       "--ineligible keeps what runs there but places nothing new.",
       node_drain},
      {"node", "rotate-key", "NODE [--timeout S]",
       "rotate a node's WireGuard key, make before break",
       "Ask NODE's own daemon (its --socket). The next key is published first, the\n"
       "other nodes learn it, then NODE switches; at most one handshake's worth of\n"
       "traffic is lost and no stale peer stays. Waits until the new key generation\n"
       "shows (default 30 s; exit 6 if it does not).",
       node_rotate_key},
  };
  return commands;
}

}  // namespace flotilla::cli
