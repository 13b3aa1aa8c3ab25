// lib/nft: nftables through libnftables, for the plugins that keep tables
// of their own (net-overlay: forwarding, NAT, port mappings; discovery:
// VIP maps). No shelling out to `nft`: commands are handed to libnftables,
// which sends them to the kernel as one netlink batch, so a Batch applies
// all or nothing.
//
// Threading: a Context is not thread-safe; use one per thread (or guard
// it). Its calls block on the kernel for well under a millisecond, but a
// plugin still runs them off the loop thread (queue_work).
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

struct nft_ctx;

namespace flotilla::nft {

// What the kernel or the parser refused, with nft's own message.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Commands applied together: `add table ...`, `add rule ...`, one per line,
// in nft's syntax. Builders that put outside text into a command check it
// first (valid_name, quote).
class Batch {
 public:
  Batch &add(std::string command);
  // `add table` + `delete table`: removes the table if it exists and does
  // not fail if it does not (nft 1.0.6 has no `destroy`).
  Batch &delete_table_if_exists(std::string_view family, std::string_view table);
  bool empty() const { return commands_.empty(); }
  size_t size() const { return commands_.size(); }
  // The text handed to libnftables: the commands, one per line.
  std::string text() const;

 private:
  std::vector<std::string> commands_;
};

// One libnftables context whose output and errors are captured, not
// printed.
class Context {
 public:
  Context();  // throws Error when libnftables cannot make a context
  ~Context();
  Context(const Context &) = delete;
  Context &operator=(const Context &) = delete;
  Context(Context &&) noexcept;
  Context &operator=(Context &&) noexcept;

  // Applies the batch in one transaction; throws Error (nothing changed)
  // with nft's message and the command it names.
  void apply(const Batch &batch);
  // Parses and checks the batch against the kernel without changing
  // anything (nft --check).
  void check(const Batch &batch);
  // `list <what>` as nft's JSON document ({"nftables": [...]}); for
  // example what = "table inet flotilla". Throws Error when it does not
  // exist.
  nlohmann::json list_json(std::string_view what);
  bool table_exists(std::string_view family, std::string_view table);

 private:
  std::string run(const std::string &text, bool dry_run, bool json_output);
  nft_ctx *ctx_ = nullptr;
};

// The kernel's announcements of committed nftables batches in this
// network namespace: one NFT_MSG_NEWGEN per commit, multicast on
// NFNLGRP_NFTABLES (what `nft monitor` reads). For benchmarks and tests
// that time "a change reached the kernel". A non-blocking netlink socket:
// watch fd() for readability, then drain().
class CommitWatch {
 public:
  CommitWatch();  // throws Error when the socket cannot be opened or bound
  ~CommitWatch();
  CommitWatch(const CommitWatch &) = delete;
  CommitWatch &operator=(const CommitWatch &) = delete;

  int fd() const { return fd_; }
  // Reads what is queued; returns how many commits it announced. Other
  // nftables events (tables, rules, elements) are skipped. A receive
  // buffer overrun (ENOBUFS) loses events: counted in overruns().
  uint64_t drain();
  uint64_t overruns() const { return overruns_; }

 private:
  int fd_ = -1;
  uint64_t overruns_ = 0;
  std::vector<char> buf_;
};

// Names nft takes unquoted (tables, chains, sets, maps): a letter, then up
// to 31 letters, digits, '_' or '-'.
bool valid_name(std::string_view name);
// A double-quoted nft string (comments), refusing quotes, backslashes and
// control characters rather than escaping them; throws Error.
std::string quote(std::string_view text);

// The elements of set or map `name` in a list_json() document of its
// table: for a set each element as nft's JSON value, for a map the pairs
// [key, value]. Empty when the set has no elements.
std::vector<nlohmann::json> set_elements(const nlohmann::json &table_doc, std::string_view name);

}  // namespace flotilla::nft
