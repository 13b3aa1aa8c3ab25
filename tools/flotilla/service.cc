// flotilla service list | status
#include <cstdio>

#include "cli.h"

namespace flotilla::cli {
namespace {

using nlohmann::json;

int count(const json &health, const char *state) {
  return health.is_object() ? health.value(state, 0) : 0;
}

int service_list(Cli &cli, Args &args) {
  args.done();
  int code = kExitOk;
  auto j = get_json(cli, "/v1/services", code);
  if (!j) return code;
  Table t({"NAME", "VIP", "INSTANCES", "PASSING", "STARTING", "CRITICAL", "TAGS"});
  for (const json &s : (*j)["services"]) {
    const json &h = s.contains("health") ? s["health"] : json();
    t.add({cell(s, "name"), cell(s, "vip"), cell(s, "instances"),
           std::to_string(count(h, "passing")), std::to_string(count(h, "starting")),
           std::to_string(count(h, "critical")), joined(s.value("tags", json::array()))});
  }
  if (t.empty()) {
    std::printf("No services are registered.\n");
  } else {
    t.print();
  }
  return kExitOk;
}

// The output of a check is one line in the table: its first line, at most
// 60 characters ("--json" shows it whole).
std::string one_line(const json &output) {
  std::string s = cell(output);
  if (auto nl = s.find('\n'); nl != std::string::npos) s = s.substr(0, nl) + " ...";
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

int service_status(Cli &cli, Args &args) {
  std::string name = args.positional("NAME (a service name)");
  args.done();
  int code = kExitOk;
  auto j = get_json(cli, "/v1/services/" + url_escape(name), code);
  if (!j) return code;
  const json &s = *j;
  const json &h = s.contains("health") ? s["health"] : json();
  const json instances = s.value("instances", json::array());
  print_fields(
      {{"Name", cell(s, "name")},
       {"VIP", cell(s, "vip")},
       {"Instances", std::to_string(instances.size()) + " (" + std::to_string(count(h, "passing")) +
                         " passing, " + std::to_string(count(h, "starting")) + " starting, " +
                         std::to_string(count(h, "critical")) + " critical)"}});
  if (instances.empty()) return kExitOk;
  std::printf("\nInstances\n");
  Table t({"ALLOC", "NODE", "ADDRESSES", "PORT", "TAGS", "HEALTH", "LAST CHECK"});
  for (const json &i : instances)
    t.add({cell(i, "alloc"), cell(i, "node"), joined(i.value("addresses", json::array())),
           cell(i, "port"), joined(i.value("tags", json::array())), cell(i, "health"),
           one_line(i.contains("output") ? i["output"] : json())});
  t.print();
  return kExitOk;
}

}  // namespace

const std::vector<Command> &service_commands() {
  static const std::vector<Command> commands = {
      {"service", "list", "", "list the registered services",
       "Every service that has an instance or a virtual IP, from the store: any\n"
       "daemon lists the whole cluster. An instance is served by DNS and the VIP\n"
       "only while it is passing.",
       service_list},
      {"service", "status", "NAME", "show a service's instances and their health",
       "Each instance: its allocation, node, addresses, port, tags, health\n"
       "(starting, passing, critical) and the output of the check run that last\n"
       "changed it (--json shows it whole).",
       service_status},
  };
  return commands;
}

}  // namespace flotilla::cli
