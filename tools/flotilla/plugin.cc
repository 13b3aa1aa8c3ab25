// flotilla plugin ls
#include "cli.h"

namespace flotilla::cli {
namespace {

using nlohmann::json;

int plugin_ls(Cli &cli, Args &args) {
  args.done();
  int code = kExitOk;
  auto j = get_json(cli, "/v1/plugins", code);
  if (!j) return code;
  Table t({"NAME", "ID", "VERSION", "ABI", "PROVIDES", "DESCRIPTION"});
  for (const json &p : (*j)["plugins"])
    t.add({cell(p, "name"), cell(p, "id"), cell(p, "version"), cell(p, "abi"),
           joined(p.value("provides", json::array())), cell(p, "description")});
  if (t.empty()) {
    std::printf("No plugins are loaded.\n");
  } else {
    t.print();
  }
  return kExitOk;
}

}  // namespace

const std::vector<Command> &plugin_commands() {
  static const std::vector<Command> commands = {
      {"plugin", "ls", "", "list the plugins the daemon loaded", "", plugin_ls},
  };
  return commands;
}

}  // namespace flotilla::cli
