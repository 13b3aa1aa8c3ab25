// flotilla version
#include <cstdio>

#include "cli.h"
#include "flotilla_build_config.h"

namespace flotilla::cli {
namespace {

using nlohmann::json;

int version(Cli &cli, Args &args) {
  args.done();
  if (!cli.json) std::printf("Client  %s\n", FLOTILLA_VERSION);
  HttpResponse r;
  try {
    r = cli.client.request("GET", "/v1/version");
  } catch (const CannotConnect &) {
    if (cli.json)
      std::printf("%s\n", json({{"client", {{"version", FLOTILLA_VERSION}}}}).dump(2).c_str());
    throw;  // main says which socket and exits 3
  }
  if (r.status >= 400) return api_error(cli, r);
  json server = body_json(r);
  if (cli.json) {
    json out = {{"client", {{"version", FLOTILLA_VERSION}}}, {"server", server}};
    std::printf("%s\n", out.dump(2).c_str());
    return kExitOk;
  }
  std::printf("Server  %s (plugin ABI %s)\n", cell(server, "version").c_str(),
              cell(server, "abi").c_str());
  return kExitOk;
}

}  // namespace

const std::vector<Command> &version_commands() {
  static const std::vector<Command> commands = {
      {"", "version", "", "print the client's and the daemon's versions", "", version},
  };
  return commands;
}

}  // namespace flotilla::cli
