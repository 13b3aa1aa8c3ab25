// flotillad's own configuration: /etc/flotilla/flotillad.toml by default.
// See core/README.md for every key. Every error names the file, the line
// and the full dotted key, and says what would be accepted.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace flotilla {

// "config /etc/flotilla/flotillad.toml line 12: plugin.net-overlay.cluster_cidr:
//  \"10.42.0.0/33\" is not a CIDR". what() is the whole sentence.
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct PluginSettings {
  std::string name;         // <name> of [plugin.<name>]
  std::string path;         // shared object; default <plugins.dir>/flotilla-<name>.so
  std::string sha256;       // lowercase hex pin, empty when not pinned
  bool enabled = true;
  nlohmann::json config = nlohmann::json::object();  // the table minus path/sha256/enabled
  std::map<std::string, int> key_lines;  // dotted key inside the table -> line (1-based)
  int line = 0;                          // line of the [plugin.<name>] header
};

struct DaemonConfig {
  std::string path;  // the file it came from, for messages

  struct Node {
    std::string name;        // default: the host name
    std::string data_dir = "/var/lib/flotilla";
    std::string datacenter = "dc1";
    std::map<std::string, std::string> attributes;
    std::map<std::string, int64_t> devices;  // [node.devices]: name -> count offered
  } node;

  struct Api {
    std::string socket = "/run/flotilla/flotilla.sock";
    unsigned socket_mode = 0660;
    std::string socket_group;  // empty: the daemon's group
    std::string tcp_listen;    // "host:port"; empty: no TCP listener
    std::string tls_cert, tls_key, tls_client_ca;  // all required with tcp_listen
  } api;

  struct Log {
    std::string level = "info";
    std::string format = "text";
  } log;

  std::string plugin_dir;    // [plugins] dir; default FLOTILLA_PLUGIN_DIR
  std::string store_plugin;  // [store] plugin; empty: the one plugin serving flotilla.store/1

  struct Security {
    bool confine_daemon = false;
  } security;

  // [gc]: what the node keeps of allocations that ended (complete, failed).
  struct Gc {
    int64_t terminal_after_ms = 4 * 3600 * 1000;  // containers and logs kept this long
    int64_t max_terminal = 50;                    // and at most this many allocations' worth
  } gc;

  // [cluster]: membership and leadership. The node record lives under a
  // lease of lease_ttl_ms, the scheduler leadership under one of
  // leader_lease_ttl_ms (never longer), each renewed every third of its TTL;
  // a node that stops is lost, and a leader replaced, one TTL after its last
  // renewal (plus etcd's lease-check delay, up to 0.5 s).
  struct Cluster {
    int64_t lease_ttl_ms = 10000;
    int64_t leader_lease_ttl_ms = 5000;  // default_leader_lease_ttl_ms(lease_ttl_ms)
  } cluster;

  std::vector<PluginSettings> plugins;  // in file order, disabled ones included
};

// [cluster] leader_lease_ttl when it is not set: half of lease_ttl, in whole
// seconds rounded up, at least 1 s (10 s -> 5 s, 3 s -> 2 s, 1 s -> 1 s).
int64_t default_leader_lease_ttl_ms(int64_t lease_ttl_ms);

// Parse text as if read from path. Throws ConfigError.
DaemonConfig parse_config(std::string_view text, const std::string &path);
// Read and parse a file. Throws ConfigError (also for an unreadable file).
DaemonConfig load_config(const std::string &path);

// ---- Text helpers shared by the two TOML readers (config.cc, jobspec.cc) ----

// The candidate nearest to word by edit distance (case-insensitive, a swap of
// two neighbours counts once), or "" when none is near enough to be a likely
// typo. Feeds the "did you mean" hints.
std::string closest_match(std::string_view word, const std::vector<std::string_view> &candidates);

// "a, b, c": the accepted names in an "accepted here" hint.
std::string join_names(const std::vector<std::string_view> &names);

// toml++ builds and frees nested tables recursively, so "a.a.a...(40000
// times) = 1" overflows the stack before it can say no. Call this on the text
// first: it returns the 1-based line of the first key, header or value nested
// deeper than max_depth, or 0 when there is none. It only estimates the
// nesting from the text; the document may still be invalid TOML.
int toml_nesting_exceeds(std::string_view text, int max_depth);

// text in double quotes for an error message: quotes, backslashes, control
// characters and bytes that are not UTF-8 escaped, cut after max_bytes with
// "..." before the closing quote. The result is always valid UTF-8.
std::string quote_for_message(std::string_view text, std::size_t max_bytes = 80);

// One part of a dotted key path in messages ("task[0].env.PATH"): the key
// itself when it is a bare TOML key ([A-Za-z0-9_-]+), else quote_for_message.
std::string key_part(std::string_view key);

bool is_valid_utf8(std::string_view text);

}  // namespace flotilla
