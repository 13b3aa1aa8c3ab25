// flotilla node status
#include "cli.h"

namespace flotilla::cli {
namespace {

using nlohmann::json;

std::string resource(const json &node, const char *key) {
  if (!node.contains("resources")) return "-";
  return cell(node["resources"], key);
}

int node_status(Cli &cli, Args &args) {
  args.done();
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

}  // namespace

const std::vector<Command> &node_commands() {
  static const std::vector<Command> commands = {
      {"node", "status", "", "list the nodes of the cluster", "", node_status},
  };
  return commands;
}

}  // namespace flotilla::cli
