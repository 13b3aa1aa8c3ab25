// flotillad.toml: every key, every error message and its line, hostile input.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "config.h"
#include "flotilla_build_config.h"

namespace flotilla {
namespace {

const std::string kPath = "/etc/flotilla/flotillad.toml";

DaemonConfig parse(const std::string &text) {
  return parse_config(text, kPath);
}

// The whole ConfigError message, or "" (and a failure) when text parses.
std::string error_of(const std::string &text) {
  try {
    parse(text);
  } catch (const ConfigError &e) {
    return e.what();
  }
  ADD_FAILURE() << "no error for:\n" << text;
  return "";
}

std::string at(int line, const std::string &rest) {
  return "config " + kPath + " line " + std::to_string(line) + ": " + rest;
}

std::string host_name() {
  char buf[256] = {};
  gethostname(buf, sizeof buf - 1);
  return buf;
}

TEST(Config, EmptyFileGivesDefaults) {
  DaemonConfig c = parse("");
  EXPECT_EQ(c.path, kPath);
  EXPECT_EQ(c.node.name, host_name());
  EXPECT_EQ(c.node.data_dir, "/var/lib/flotilla");
  EXPECT_EQ(c.node.datacenter, "dc1");
  EXPECT_TRUE(c.node.attributes.empty());
  EXPECT_EQ(c.api.socket, "/run/flotilla/flotilla.sock");
  EXPECT_EQ(c.api.socket_mode, 0660u);
  EXPECT_EQ(c.api.socket_group, "");
  EXPECT_EQ(c.api.tcp_listen, "");
  EXPECT_EQ(c.log.level, "info");
  EXPECT_EQ(c.log.format, "text");
  EXPECT_EQ(c.plugin_dir, FLOTILLA_PLUGIN_DIR);
  EXPECT_EQ(c.store_plugin, "");
  EXPECT_FALSE(c.security.confine_daemon);
  EXPECT_TRUE(c.plugins.empty());
}

TEST(Config, EveryKeyIsRead) {
  DaemonConfig c = parse(R"(
[node]
name = "node-1.example"
data_dir = "/srv/flotilla/"
datacenter = "eu-west"

[node.attributes]
rack = "r12"
"os.version" = "12"

[api]
socket = "/run/f/api.sock"
socket_mode = "0600"
socket_group = "flotilla"
tcp_listen = "0.0.0.0:4646"
tls_cert = "/etc/flotilla/tls/node.crt"
tls_key = "tls/node.key"
tls_client_ca = "/etc/flotilla/tls/ca.crt"

[log]
level = "debug"
format = "json"

[plugins]
dir = "/opt/flotilla/plugins"

[store]
plugin = "store-etcd"

[security]
confine_daemon = true
)");
  EXPECT_EQ(c.node.name, "node-1.example");
  EXPECT_EQ(c.node.data_dir, "/srv/flotilla/");
  EXPECT_EQ(c.node.datacenter, "eu-west");
  EXPECT_EQ(c.node.attributes.size(), 2u);
  EXPECT_EQ(c.node.attributes.at("rack"), "r12");
  EXPECT_EQ(c.node.attributes.at("os.version"), "12");
  EXPECT_EQ(c.api.socket, "/run/f/api.sock");
  EXPECT_EQ(c.api.socket_mode, 0600u);
  EXPECT_EQ(c.api.socket_group, "flotilla");
  EXPECT_EQ(c.api.tcp_listen, "0.0.0.0:4646");
  EXPECT_EQ(c.api.tls_cert, "/etc/flotilla/tls/node.crt");
  EXPECT_EQ(c.api.tls_key, "/etc/flotilla/tls/node.key");  // relative to the config's directory
  EXPECT_EQ(c.api.tls_client_ca, "/etc/flotilla/tls/ca.crt");
  EXPECT_EQ(c.log.level, "debug");
  EXPECT_EQ(c.log.format, "json");
  EXPECT_EQ(c.plugin_dir, "/opt/flotilla/plugins");
  EXPECT_EQ(c.store_plugin, "store-etcd");
  EXPECT_TRUE(c.security.confine_daemon);
}

TEST(Config, SocketModeAcceptsOctalStringsAndOctalIntegers) {
  EXPECT_EQ(parse("[api]\nsocket_mode = \"0660\"").api.socket_mode, 0660u);
  EXPECT_EQ(parse("[api]\nsocket_mode = \"600\"").api.socket_mode, 0600u);
  EXPECT_EQ(parse("[api]\nsocket_mode = 0o640").api.socket_mode, 0640u);
  EXPECT_EQ(parse("[api]\nsocket_mode = 0x1b0").api.socket_mode, 0660u);
  EXPECT_EQ(parse("[api]\nsocket_mode = 0").api.socket_mode, 0u);
}

TEST(Config, SocketModeRejectsAmbiguousAndOutOfRange) {
  const std::string how = "write it as an octal string like \"0660\" or a TOML octal 0o660";
  EXPECT_EQ(error_of("[api]\nsocket_mode = 660"),
            at(2, "api.socket_mode: the decimal integer 660 is ambiguous as a file mode; " + how));
  EXPECT_EQ(error_of("[api]\nsocket_mode = 0o1777"),
            at(2, "api.socket_mode: must be permission bits from 0 to 0777; " + how));
  EXPECT_EQ(error_of("[api]\nsocket_mode = \"0999\""),
            at(2, "api.socket_mode: \"0999\" is not permission bits from 0 to 0777; " + how));
  EXPECT_EQ(error_of("[api]\nsocket_mode = \"01777\""),
            at(2, "api.socket_mode: \"01777\" is not permission bits from 0 to 0777; " + how));
  EXPECT_EQ(error_of("[api]\nsocket_mode = true"),
            at(2, "api.socket_mode: must be a string or an integer, got a boolean true; " + how));
}

TEST(Config, UnknownTableSuggestsTheNearestOne) {
  EXPECT_EQ(error_of("[nodes]\nname = \"a\"\n"),
            at(1, "nodes: unknown table; did you mean [node]?"));
  EXPECT_EQ(error_of("\n[plugin]\n[plugn.x]\n"),
            at(3, "plugn: unknown table; did you mean [plugin]?"));
}

TEST(Config, UnknownTableWithoutSuggestionListsAccepted) {
  EXPECT_EQ(error_of("[scheduler]\n"),
            at(1,
               "scheduler: unknown table; accepted: [node], [api], [log], [plugins], [store], "
               "[security], [gc], [cluster], [plugin.<name>]"));
  EXPECT_EQ(error_of("verbose = true\n"),
            at(1,
               "verbose: unknown key; accepted: [node], [api], [log], [plugins], [store], "
               "[security], [gc], [cluster], [plugin.<name>]"));
}

TEST(Config, NodeDevicesAreCountsByName) {
  DaemonConfig c =
      parse_config("[node]\nname = \"n\"\n[node.devices]\n\"nvidia/gpu\" = 2\nfpga = 0\n", "t.toml");
  EXPECT_EQ(c.node.devices.at("nvidia/gpu"), 2);
  EXPECT_EQ(c.node.devices.at("fpga"), 0);
  EXPECT_EQ(error_of("[node.devices]\ngpu = \"two\"\n"),
            at(2, "node.devices.gpu: must be an integer count from 0 to 1024, got a string \"two\""));
  EXPECT_NE(error_of("[node.devices]\nGPU = 1\n").find("device names are lowercase"),
            std::string::npos);
  EXPECT_NE(error_of("[node.devices]\ngpu = 5000\n").find("from 0 to 1024"), std::string::npos);
}

TEST(Config, GcKeepsEndedAllocationsForADurationAndUpToACount) {
  DaemonConfig d = parse_config("", "t.toml");
  EXPECT_EQ(d.gc.terminal_after_ms, 4 * 3600 * 1000);
  EXPECT_EQ(d.gc.max_terminal, 50);
  DaemonConfig c = parse_config("[gc]\nterminal_after = \"90m\"\nmax_terminal = 0\n", "t.toml");
  EXPECT_EQ(c.gc.terminal_after_ms, 90 * 60 * 1000);
  EXPECT_EQ(c.gc.max_terminal, 0);
  EXPECT_NE(error_of("[gc]\nterminal_after = \"500ms\"\n").find("gc.terminal_after"),
            std::string::npos);
  EXPECT_NE(error_of("[gc]\nterminal_after = \"500ms\"\n").find("at least 1s"),
            std::string::npos);
  EXPECT_NE(error_of("[gc]\nterminal_after = 60\n").find("must be a string"), std::string::npos);
  EXPECT_EQ(error_of("[gc]\nmax_terminal = -1\n"),
            at(2, "gc.max_terminal: must be an integer from 0 (no limit) to 1000000, got an "
                  "integer -1"));
}

TEST(Config, ClusterLeaseTtlIsWholeSecondsFromOneToFiveMinutes) {
  EXPECT_EQ(parse_config("", "t.toml").cluster.lease_ttl_ms, 10000);
  EXPECT_EQ(parse_config("[cluster]\nlease_ttl = \"3s\"\n", "t.toml").cluster.lease_ttl_ms, 3000);
  EXPECT_EQ(parse_config("[cluster]\nlease_ttl = \"5m\"\n", "t.toml").cluster.lease_ttl_ms, 300000);
  for (const char *bad : {"\"500ms\"", "\"2500ms\"", "\"6m\"", "\"soon\""})
    EXPECT_NE(error_of(std::string("[cluster]\nlease_ttl = ") + bad + "\n")
                  .find("line 2: cluster.lease_ttl: "),
              std::string::npos)
        << bad;
  EXPECT_NE(error_of("[cluster]\nlease_tll = \"3s\"\n").find("did you mean \"lease_ttl\"?"),
            std::string::npos);
}

TEST(Config, LeaderLeaseTtlDefaultsToHalfTheNodeLeaseRoundedUp) {
  auto leader = [](const std::string &text) {
    return parse_config(text, "t.toml").cluster.leader_lease_ttl_ms;
  };
  EXPECT_EQ(leader(""), 5000);  // lease_ttl 10 s
  EXPECT_EQ(leader("[cluster]\nlease_ttl = \"3s\"\n"), 2000);
  EXPECT_EQ(leader("[cluster]\nlease_ttl = \"2s\"\n"), 1000);
  EXPECT_EQ(leader("[cluster]\nlease_ttl = \"1s\"\n"), 1000);
  EXPECT_EQ(leader("[cluster]\nlease_ttl = \"5m\"\n"), 150000);
  // Given: any whole seconds up to the node lease, in either order in the table.
  EXPECT_EQ(leader("[cluster]\nlease_ttl = \"3s\"\nleader_lease_ttl = \"3s\"\n"), 3000);
  EXPECT_EQ(leader("[cluster]\nleader_lease_ttl = \"1s\"\nlease_ttl = \"3s\"\n"), 1000);
  EXPECT_EQ(leader("[cluster]\nleader_lease_ttl = \"10s\"\n"), 10000);
  EXPECT_EQ(parse_config("[cluster]\nleader_lease_ttl = \"1s\"\n", "t.toml").cluster.lease_ttl_ms,
            10000);
}

TEST(Config, LeaderLeaseTtlLongerThanTheNodeLeaseIsRefusedWithItsLine) {
  EXPECT_EQ(error_of("[cluster]\nlease_ttl = \"3s\"\nleader_lease_ttl = \"4s\"\n"),
            at(3, "cluster.leader_lease_ttl: \"4s\" is longer than cluster.lease_ttl (\"3s\"): "
                  "the scheduler's leader lease must not outlive the node lease; set it to at "
                  "most the lease_ttl, or leave it out (default: half the lease_ttl)"));
  // Against the default node lease (10 s) too.
  EXPECT_NE(error_of("[cluster]\nleader_lease_ttl = \"11s\"\n")
                .find("line 2: cluster.leader_lease_ttl: \"11s\" is longer than "
                      "cluster.lease_ttl (\"10s\")"),
            std::string::npos);
  for (const char *bad : {"\"500ms\"", "\"1500ms\"", "\"6m\"", "\"soon\"", "3"})
    EXPECT_NE(error_of(std::string("[cluster]\nleader_lease_ttl = ") + bad + "\n")
                  .find("line 2: cluster.leader_lease_ttl: "),
              std::string::npos)
        << bad;
}

TEST(Config, LeaderLeaseTtlProblemIsReportedWithEveryOther) {
  // Reported together with the other problems, in file order; an invalid
  // lease_ttl is not compared with.
  EXPECT_EQ(error_of("[log]\nlevel = \"loud\"\n[cluster]\nlease_ttl = \"2s\"\n"
                     "leader_lease_ttl = \"9s\"\n[gc]\nmax_terminal = -1\n"),
            at(2, "log.level: \"loud\" is not one of debug, info, warn, error") + "\n" +
                at(5, "cluster.leader_lease_ttl: \"9s\" is longer than cluster.lease_ttl "
                      "(\"2s\"): the scheduler's leader lease must not outlive the node lease; "
                      "set it to at most the lease_ttl, or leave it out (default: half the "
                      "lease_ttl)") +
                "\n" +
                at(7, "gc.max_terminal: must be an integer from 0 (no limit) to 1000000, got an "
                      "integer -1"));
  const std::string both = error_of("[cluster]\nlease_ttl = \"2.5s\"\nleader_lease_ttl = \"9s\"\n");
  EXPECT_NE(both.find("line 2: cluster.lease_ttl: "), std::string::npos) << both;
  EXPECT_EQ(both.find("leader_lease_ttl"), std::string::npos) << both;
}

TEST(Config, UnknownKeySuggestsTheNearestOne) {
  EXPECT_EQ(error_of("[api]\nsokcet = \"/run/x.sock\"\n"),
            at(2, "api.sokcet: unknown key; did you mean \"socket\"?"));
  EXPECT_EQ(error_of("[node]\n\ndatadir = \"/x\"\n"),
            at(3, "node.datadir: unknown key; did you mean \"data_dir\"?"));
  EXPECT_EQ(error_of("[security]\nconfine = true\n"),
            at(2, "security.confine: unknown key; accepted here: confine_daemon"));
}

TEST(Config, WrongTypeSaysWhatWasExpectedAndFound) {
  EXPECT_EQ(error_of("[node]\nname = 42\n"),
            at(2, "node.name: must be a string, got an integer 42"));
  EXPECT_EQ(error_of("[security]\nconfine_daemon = \"yes\"\n"),
            at(2, "security.confine_daemon: must be true or false, got a string \"yes\""));
  EXPECT_EQ(error_of("api = \"x\"\n"), at(1, "api: must be a table ([api]), got a string \"x\""));
  EXPECT_EQ(error_of("[log]\nlevel = 1979-05-27\n"),
            at(2, "log.level: must be a string, got a date 1979-05-27"));
  EXPECT_EQ(error_of("[node]\nattributes = [\"a\"]\n"),
            at(2, "node.attributes: must be a table ([node.attributes]), got an array"));
}

TEST(Config, SyntaxErrorsGiveLineAndColumn) {
  std::string e = error_of("[node]\nname = \"unterminated\n");
  EXPECT_EQ(e.rfind(at(2, "TOML syntax error at column "), 0), 0u) << e;
  e = error_of("[node]\nname = \"a\"\nname = \"b\"\n");
  EXPECT_EQ(e.rfind(at(3, "TOML syntax error at column 8: "), 0), 0u) << e;
}

TEST(Config, TcpListenNeedsAllThreeTlsFiles) {
  EXPECT_EQ(error_of("[api]\ntcp_listen = \"127.0.0.1:4646\"\ntls_cert = \"/c\"\n"),
            at(2,
               "api.tls_key: is required when api.tcp_listen is set: TCP is only served with "
               "mutual TLS, so set tls_cert, tls_key and tls_client_ca\n") +
                at(2,
                   "api.tls_client_ca: is required when api.tcp_listen is set: TCP is only "
                   "served with mutual TLS, so set tls_cert, tls_key and tls_client_ca"));
}

TEST(Config, TlsWithoutTcpListenIsAnError) {
  EXPECT_EQ(error_of("[api]\n\ntls_key = \"/k\"\n"),
            at(3,
               "api.tls_key: is set but api.tcp_listen is not; set tcp_listen to serve TCP (with "
               "mutual TLS) or remove the tls_* keys"));
}

TEST(Config, TcpListenIsHostColonPort) {
  const std::string tls = "tls_cert = \"/c\"\ntls_key = \"/k\"\ntls_client_ca = \"/ca\"\n";
  for (const char *ok : {"0.0.0.0:4646", "[::]:4646", "[::1]:1", "node1.example:65535"})
    EXPECT_EQ(parse("[api]\n" + tls + "tcp_listen = \"" + ok + "\"").api.tcp_listen, ok);
  struct Case {
    const char *value, *problem;
  } bad[] = {
      {"4646", "has no port"},
      {":4646", "has no host (use 0.0.0.0 to listen on every address)"},
      {"host:0", "has a port that is not a number from 1 to 65535"},
      {"host:65536", "has a port that is not a number from 1 to 65535"},
      {"host:http", "has a port that is not a number from 1 to 65535"},
      {"[::1:80", "has an unclosed [ in the host"},
      {"::1:80", "has a host that is neither a name nor an IPv4 address (put IPv6 in [brackets])"},
  };
  for (const Case &c : bad) {
    EXPECT_EQ(error_of("[api]\n" + tls + "tcp_listen = \"" + c.value + "\""),
              at(5, std::string("api.tcp_listen: \"") + c.value + "\" " + c.problem +
                        "; write host:port, like \"0.0.0.0:4646\" or \"[::]:4646\""));
  }
}

TEST(Config, LogLevelAndFormatAreChecked) {
  EXPECT_EQ(error_of("[log]\nlevel = \"warning\"\n"),
            at(2,
               "log.level: \"warning\" is not one of debug, info, warn, error; did you mean "
               "\"warn\"?"));
  EXPECT_EQ(error_of("[log]\nformat = \"xml\"\n"),
            at(2, "log.format: \"xml\" is not one of text, json"));
}

TEST(Config, PathsTheDaemonCreatesMustBeAbsolute) {
  EXPECT_EQ(error_of("[node]\ndata_dir = \"var/lib/flotilla\"\n"),
            at(2, "node.data_dir: must be an absolute path, got \"var/lib/flotilla\""));
  EXPECT_EQ(error_of("[api]\nsocket = \"\"\n"), at(2, "api.socket: must not be empty"));
  std::string long_path = "/" + std::string(120, 's');
  EXPECT_EQ(error_of("[api]\nsocket = \"" + long_path + "\"\n"),
            at(2, "api.socket: is 121 bytes long; a Unix socket path can have at most 107"));
  EXPECT_EQ(error_of("[node]\ndata_dir = \"/a\\u0000b\"\n"),
            at(2, "node.data_dir: must not contain NUL characters"));
}

TEST(Config, NamesAreChecked) {
  EXPECT_EQ(error_of("[node]\nname = \"my node\"\n"),
            at(2,
               "node.name: \"my node\" is not a node name: use up to 253 letters, digits, '.', "
               "'_' and '-', not starting with '.' or '-'"));
  EXPECT_EQ(error_of("[node]\ndatacenter = \"EU\"\n"),
            at(2,
               "node.datacenter: \"EU\" is not a datacenter name: use 1 to 63 lowercase "
               "letters, digits and '-', starting and ending with a letter or digit"));
  EXPECT_EQ(error_of("[api]\nsocket_group = \"a b\"\n"),
            at(2, "api.socket_group: \"a b\" is neither a group name nor a gid"));
  EXPECT_EQ(parse("[api]\nsocket_group = \"1001\"").api.socket_group, "1001");
  EXPECT_EQ(error_of("[store]\nplugin = \"Store\"\n"),
            at(2,
               "store.plugin: \"Store\" is not a plugin name: the <name> of a [plugin.<name>] "
               "table, like \"store-local\""));
}

TEST(Config, AttributesAreStrings) {
  EXPECT_EQ(error_of("[node.attributes]\ncores = 8\n"),
            at(2, "node.attributes.cores: must be a string, got an integer 8"));
  EXPECT_EQ(error_of("[node.attributes]\nos.version = \"12\"\n"),
            at(2, "node.attributes.os: must be a string, got a table"));
  EXPECT_EQ(error_of("[node.attributes]\n\"a b\" = \"x\"\n"),
            at(2,
               "node.attributes.\"a b\": attribute names are 1 to 128 letters, digits, '.', '_' "
               "and '-' (quote a name with dots: \"os.version\" = \"12\")"));
}

TEST(Config, PluginTables) {
  DaemonConfig c = parse(R"([plugins]
dir = "/usr/lib/flotilla"

[plugin.store-local]
fsync = false
snapshot_every = 500

[plugin.net-overlay]
path = "plugins/net.so"
sha256 = "ABCDEF0123456789abcdef0123456789ABCDEF0123456789abcdef0123456789"
enabled = false
cluster_cidr = "10.42.0.0/16"
mtu = 1420
ratio = 0.5
since = 1979-05-27T07:32:00Z
peers = [
  { name = "a", port = 51820 },
]

[plugin.net-overlay.wireguard]
interface = "flo0"
keys.rotate = true

[plugin.abc]
)");
  ASSERT_EQ(c.plugins.size(), 3u);
  // In file order, not the alphabetical order of the TOML table.
  const PluginSettings &store = c.plugins[0];
  EXPECT_EQ(store.name, "store-local");
  EXPECT_EQ(store.path, "/usr/lib/flotilla/flotilla-store-local.so");
  EXPECT_EQ(store.sha256, "");
  EXPECT_TRUE(store.enabled);
  EXPECT_EQ(store.line, 4);
  EXPECT_EQ(store.config, (nlohmann::json{{"fsync", false}, {"snapshot_every", 500}}));
  EXPECT_EQ(store.key_lines, (std::map<std::string, int>{{"fsync", 5}, {"snapshot_every", 6}}));

  const PluginSettings &net = c.plugins[1];
  EXPECT_EQ(net.name, "net-overlay");
  EXPECT_EQ(net.path, "/etc/flotilla/plugins/net.so");  // relative to the config file
  EXPECT_EQ(net.sha256, "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789");
  EXPECT_FALSE(net.enabled);
  EXPECT_EQ(net.line, 8);
  EXPECT_EQ(net.config, nlohmann::json::parse(R"({
    "cluster_cidr": "10.42.0.0/16", "mtu": 1420, "ratio": 0.5,
    "since": "1979-05-27T07:32:00Z",
    "peers": [{"name": "a", "port": 51820}],
    "wireguard": {"interface": "flo0", "keys": {"rotate": true}}})"));
  EXPECT_EQ(net.key_lines.at("cluster_cidr"), 12);
  EXPECT_EQ(net.key_lines.at("peers"), 16);
  EXPECT_EQ(net.key_lines.at("peers[0]"), 17);
  EXPECT_EQ(net.key_lines.at("peers[0].port"), 17);
  EXPECT_EQ(net.key_lines.at("wireguard"), 20);
  EXPECT_EQ(net.key_lines.at("wireguard.interface"), 21);
  EXPECT_EQ(net.key_lines.at("wireguard.keys.rotate"), 22);
  EXPECT_EQ(net.key_lines.count("path"), 0u);

  EXPECT_EQ(c.plugins[2].name, "abc");
  EXPECT_EQ(c.plugins[2].path, "/usr/lib/flotilla/flotilla-abc.so");
}

TEST(Config, PluginDefaultPathUsesBuiltInDirectory) {
  DaemonConfig c = parse("[plugin.store-local]\n");
  ASSERT_EQ(c.plugins.size(), 1u);
  EXPECT_EQ(c.plugins[0].path, std::string(FLOTILLA_PLUGIN_DIR) + "/flotilla-store-local.so");
}

TEST(Config, PluginErrors) {
  EXPECT_EQ(error_of("[plugin.Net]\n"),
            at(1,
               "plugin.Net: plugin names are 1 to 64 lowercase letters, digits and '-', not "
               "starting with '-' (like \"net-overlay\")"));
  EXPECT_EQ(error_of("[plugin.-x]\n").substr(0, at(1, "plugin.-x: plugin names").size()),
            at(1, "plugin.-x: plugin names"));
  EXPECT_EQ(error_of("[plugin]\nfoo = 1\n"),
            at(2, "plugin.foo: must be a table ([plugin.foo]), got an integer 1"));
  EXPECT_EQ(error_of("plugin = 1\n"),
            at(1, "plugin: must be a table of plugins ([plugin.<name>]), got an integer 1"));
  EXPECT_EQ(error_of("[plugin.x]\nsha256 = \"abc\"\n"),
            at(2,
               "plugin.x.sha256: must be the SHA-256 of the plugin file as 64 hex digits "
               "(sha256sum prints it), got \"abc\""));
  EXPECT_EQ(error_of("[plugin.x]\nenabled = \"no\"\n"),
            at(2, "plugin.x.enabled: must be true or false, got a string \"no\""));
  EXPECT_EQ(error_of("[plugin.x]\npath = 3\n"),
            at(2, "plugin.x.path: must be a string, got an integer 3"));
  EXPECT_EQ(error_of("[plugin.x]\nlimit = nan\n"),
            at(2,
               "plugin.x.limit: must be a finite number (plugins receive JSON, which has no nan "
               "or inf)"));
}

TEST(Config, StorePluginMustNotBeDisabled) {
  EXPECT_EQ(error_of("[store]\nplugin = \"store-local\"\n[plugin.store-local]\nenabled = false\n"),
            at(2,
               "store.plugin: names plugin \"store-local\", which is disabled "
               "(plugin.store-local.enabled = false)"));
}

TEST(Config, EveryProblemIsReportedInFileOrder) {
  EXPECT_EQ(error_of("[log]\nlevel = \"loud\"\n[api]\nsocket_mode = 777\n[node]\nnam = \"x\"\n"),
            at(2, "log.level: \"loud\" is not one of debug, info, warn, error") + "\n" +
                at(4,
                   "api.socket_mode: the decimal integer 777 is ambiguous as a file mode; write "
                   "it as an octal string like \"0660\" or a TOML octal 0o660") +
                "\n" + at(6, "node.nam: unknown key; did you mean \"name\"?"));
}

TEST(Config, HostileInputGivesCleanErrors) {
  // NUL bytes and invalid UTF-8 are TOML syntax errors.
  EXPECT_EQ(error_of(std::string("[node]\nna\0me = \"x\"\n", 19)).rfind(at(2, "TOML syntax"), 0),
            0u);
  EXPECT_EQ(error_of("[node]\nname = \"\xff\xfe\"\n").rfind(at(2, "TOML syntax"), 0), 0u);
  // Nesting that would overflow toml++'s recursion is refused before it parses.
  std::string deep = "a";
  for (int i = 0; i < 100000; ++i) deep += ".a";
  EXPECT_EQ(error_of(deep + " = 1\n"),
            at(1, "tables and arrays are nested more than 64 levels deep"));
  std::string header = "\n\n[plugin.x";
  for (int i = 0; i < 100000; ++i) header += ".a";
  EXPECT_EQ(error_of(header + "]\n"),
            at(3, "tables and arrays are nested more than 64 levels deep"));
  EXPECT_EQ(error_of("x = " + std::string(300, '[') + std::string(300, ']')),
            at(1, "tables and arrays are nested more than 64 levels deep"));
  // Over the size limit.
  std::string big = "# " + std::string(1 << 20, 'x') + "\n";
  EXPECT_EQ(error_of(big), "config " + kPath + ": is 1048579 bytes; the limit is 1 MiB");
  // Control characters in values are escaped in messages.
  EXPECT_EQ(error_of("[log]\nlevel = \"a\\u001bb\"\n"),
            at(2, "log.level: \"a\\x1Bb\" is not one of debug, info, warn, error"));
}

TEST(Config, LoadConfigReadsAFileAndResolvesRelativePaths) {
  std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("flotilla-test-config-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  std::string file = (dir / "flotillad.toml").string();
  {
    std::ofstream out(file);
    out << "[plugins]\ndir = \"plugins\"\n[plugin.store-local]\n";
  }
  DaemonConfig c = load_config(file);
  EXPECT_EQ(c.path, file);
  EXPECT_EQ(c.plugin_dir, (dir / "plugins").string());
  ASSERT_EQ(c.plugins.size(), 1u);
  EXPECT_EQ(c.plugins[0].path, (dir / "plugins" / "flotilla-store-local.so").string());
  std::filesystem::remove_all(dir);
}

TEST(Config, LoadConfigReportsUnreadableFiles) {
  try {
    load_config("/nonexistent/flotilla/flotillad.toml");
    FAIL() << "no error";
  } catch (const ConfigError &e) {
    EXPECT_STREQ(e.what(),
                 "config /nonexistent/flotilla/flotillad.toml: cannot open: No such file or "
                 "directory");
  }
}

TEST(Config, ExampleConfigParses) {
  DaemonConfig c = load_config(FLOTILLA_TEST_SOURCE_DIR "/examples/flotillad.toml");
  EXPECT_EQ(c.node.data_dir, "/var/lib/flotilla");
  EXPECT_EQ(c.api.socket.rfind("/run/flotilla/", 0), 0u);
  EXPECT_EQ(c.store_plugin, "store-local");
  ASSERT_EQ(c.plugins.size(), 5u);
  EXPECT_EQ(c.plugins[0].name, "store-local");
  EXPECT_EQ(c.plugins[1].name, "scheduler-binpack");
  EXPECT_EQ(c.plugins[2].name, "runtime-runc");
  EXPECT_EQ(c.plugins[3].name, "net-overlay");
  EXPECT_EQ(c.plugins[4].name, "security");
  for (const auto &p : c.plugins) EXPECT_TRUE(p.enabled);
}

// The examples in docs/config.md must stay true to the code.
TEST(Config, DocsExamplesParse) {
  std::ifstream in(FLOTILLA_TEST_SOURCE_DIR "/docs/config.md");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string doc = ss.str();
  int blocks = 0;
  for (std::size_t at = doc.find("```toml\n"); at != std::string::npos;
       at = doc.find("```toml\n", at + 1)) {
    std::size_t start = at + 8;
    std::string block = doc.substr(start, doc.find("```", start) - start);
    EXPECT_NO_THROW(parse_config(block, "/etc/flotilla/flotillad.toml")) << block;
    ++blocks;
  }
  EXPECT_EQ(blocks, 3);
}

TEST(ConfigText, ClosestMatch) {
  std::vector<std::string_view> keys = {"command", "args", "name", "image"};
  EXPECT_EQ(closest_match("comand", keys), "command");
  EXPECT_EQ(closest_match("cmomand", keys), "command");  // a swap counts once
  EXPECT_EQ(closest_match("Name", keys), "name");
  EXPECT_EQ(closest_match("imgae", keys), "image");
  EXPECT_EQ(closest_match("security", keys), "");
  EXPECT_EQ(closest_match("", keys), "");
  EXPECT_EQ(closest_match("x", {"ab"}), "");
}

TEST(ConfigText, NestingEstimateIgnoresStringsCommentsAndFloats) {
  std::string dots(500, '.');
  EXPECT_EQ(toml_nesting_exceeds("a = \"" + dots + "\"\n", 8), 0);
  EXPECT_EQ(toml_nesting_exceeds("a = '" + dots + "'\n", 8), 0);
  EXPECT_EQ(toml_nesting_exceeds("a = \"\"\"\n" + dots + "\n\"\"\"\n", 8), 0);
  EXPECT_EQ(toml_nesting_exceeds("# a.b.c.d.e.f.g.h.i.j\n", 8), 0);
  EXPECT_EQ(toml_nesting_exceeds("a = [1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 9.5]\n", 8), 0);
  EXPECT_EQ(toml_nesting_exceeds("[a.b.c]\nd.e.f = 1\n", 6), 0);
  EXPECT_EQ(toml_nesting_exceeds("[a.b.c]\nd.e.f = 1\n", 5), 2);
  EXPECT_EQ(toml_nesting_exceeds("x = 1\n\"a\".'b'.c.d = 1\n", 3), 2);
  EXPECT_EQ(toml_nesting_exceeds("x = { a = { b = { c = { d = 1 } } } }\n", 4), 1);
  EXPECT_EQ(toml_nesting_exceeds("x = { a = { b = { c = { d = 1 } } } }\n", 5), 0);
  EXPECT_EQ(toml_nesting_exceeds("x = [\n[\n[\n[\n1]]]]\n", 3), 4);
}

TEST(ConfigText, QuoteForMessageEscapesAndCuts) {
  EXPECT_EQ(quote_for_message("a\"b\\c"), "\"a\\\"b\\\\c\"");
  EXPECT_EQ(quote_for_message(std::string("a\0b\n\xff", 5)), "\"a\\x00b\\n\\xFF\"");
  EXPECT_EQ(quote_for_message("h\xC3\xA9llo"), "\"h\xC3\xA9llo\"");
  EXPECT_EQ(quote_for_message("abcdef", 3), "\"abc...\"");
  EXPECT_TRUE(is_valid_utf8("h\xC3\xA9llo"));
  EXPECT_FALSE(is_valid_utf8("\xC0\x80"));      // overlong NUL
  EXPECT_FALSE(is_valid_utf8("\xED\xA0\x80"));  // a UTF-16 surrogate
  EXPECT_FALSE(is_valid_utf8("\xE2\x82"));      // cut short
}

}  // namespace
}  // namespace flotilla
