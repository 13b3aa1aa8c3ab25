// flotillad: the Flotilla node daemon. Arguments only; see daemon.cc.
#include <getopt.h>
#include <signal.h>

#include <cstdio>
#include <cstring>
#include <iostream>

#include "config.h"
#include "daemon.h"
#include "error.h"
#include "flotilla_build_config.h"
#include "log.h"
#include "plugin_host.h"

namespace {

const char *kUsage =
    "usage: flotillad [--config FILE] [--check-config] [--cleanup-network]\n"
    "                 [--log-level LEVEL] [--log-format text|json] [--version] [--help]\n"
    "\n"
    "  -c, --config FILE     daemon configuration (default " FLOTILLA_SYSCONFDIR "/flotillad.toml)\n"
    "      --check-config    check the configuration and plugins, start nothing, exit\n"
    "      --cleanup-network remove every interface, namespace and firewall table the\n"
    "                        network plugin made on this node, release its leases, exit\n"
    "      --log-level L     debug, info, warn or error (overrides [log] level)\n"
    "      --log-format F    text or json (overrides [log] format)\n"
    "  -V, --version         print the version and ABI version\n"
    "\n"
    "Signals: SIGTERM/SIGINT stop (containers keep running); SIGHUP reloads.\n";

}  // namespace

int main(int argc, char **argv) {
  std::string config_path = FLOTILLA_SYSCONFDIR "/flotillad.toml";
  std::string log_level, log_format;
  bool check_only = false, cleanup_network = false;

  enum { OPT_CHECK = 256, OPT_LEVEL, OPT_FORMAT, OPT_CLEANUP_NET };
  static const option longopts[] = {{"config", required_argument, nullptr, 'c'},
                                    {"check-config", no_argument, nullptr, OPT_CHECK},
                                    {"cleanup-network", no_argument, nullptr, OPT_CLEANUP_NET},
                                    {"log-level", required_argument, nullptr, OPT_LEVEL},
                                    {"log-format", required_argument, nullptr, OPT_FORMAT},
                                    {"version", no_argument, nullptr, 'V'},
                                    {"help", no_argument, nullptr, 'h'},
                                    {nullptr, 0, nullptr, 0}};
  int c;
  while ((c = getopt_long(argc, argv, "c:Vh", longopts, nullptr)) != -1) {
    switch (c) {
      case 'c': config_path = optarg; break;
      case OPT_CHECK: check_only = true; break;
      case OPT_CLEANUP_NET: cleanup_network = true; break;
      case OPT_LEVEL: log_level = optarg; break;
      case OPT_FORMAT: log_format = optarg; break;
      case 'V':
        std::printf("flotillad %s (plugin ABI %d.%d)\n", FLOTILLA_VERSION,
                    FLOTILLA_ABI_VERSION_MAJOR, FLOTILLA_ABI_VERSION_MINOR);
        return 0;
      case 'h': std::fputs(kUsage, stdout); return 0;
      default: std::fputs(kUsage, stderr); return 2;
    }
  }
  if (optind < argc) {
    std::fprintf(stderr, "flotillad: unexpected argument \"%s\"\n%s", argv[optind], kUsage);
    return 2;
  }

  signal(SIGPIPE, SIG_IGN);
  flotilla::DaemonConfig config;
  try {
    config = flotilla::load_config(config_path);
    if (!log_level.empty()) config.log.level = log_level;
    if (!log_format.empty()) config.log.format = log_format;
    flotilla::log::configure(flotilla::log::parse_level(config.log.level),
                             flotilla::log::parse_format(config.log.format));
  } catch (const std::exception &e) {
    std::fprintf(stderr, "flotillad: %s\n", e.what());
    return 2;
  }

  try {
    if (check_only) {
      try {
        flotilla::Daemon::check(config);
      } catch (const flotilla::PluginConfigError &e) {
        for (const auto &problem : e.problems()) std::fprintf(stderr, "%s\n", problem.c_str());
        std::fprintf(stderr, "flotillad: %zu problem%s in %s\n", e.problems().size(),
                     e.problems().size() == 1 ? "" : "s", config_path.c_str());
        return 2;
      }
      std::printf("%s: configuration and plugins are valid\n", config_path.c_str());
      return 0;
    }
    flotilla::Daemon daemon(std::move(config));
    if (cleanup_network) return daemon.cleanup_network();
    return daemon.run();
  } catch (const std::exception &e) {
    flotilla::log::error("core", std::string("cannot start: ") + e.what());
    return 1;
  }
}
