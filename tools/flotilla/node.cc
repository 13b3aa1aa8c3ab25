// flotilla node status, flotilla node drain
#include "cli.h"

namespace flotilla::cli {
namespace {

using nlohmann::json;

std::string resource(const json &node, const char *key) {
  if (!node.contains("resources")) return "-";
  return cell(node["resources"], key);
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
           "VERSION"});
  for (const json &n : (*j)["nodes"])
    t.add({cell(n, "name"), cell(n, "status"), cell(n, "eligible"), cell(n, "datacenter"),
           resource(n, "cpu_mhz"), resource(n, "memory_mb"), resource(n, "disk_mb"),
           cell(n, "version")});
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

const std::vector<Command> &node_commands() {
  static const std::vector<Command> commands = {
      {"node", "status", "[NODE]", "list the nodes of the cluster, or show one",
       "Any node's API serves the whole cluster: every node is listed, whichever\n"
       "daemon answers. With NODE, that node's record in full.",
       node_status},
      {"node", "drain", "[--undo | --ineligible] NODE", "move a node's allocations elsewhere",
       "The scheduler stops every allocation on NODE and places it again on other nodes,\n"
       "and places nothing new there. --undo lets NODE take allocations again;\n"
       "--ineligible keeps what runs there but places nothing new.",
       node_drain},
  };
  return commands;
}

}  // namespace flotilla::cli
