// The `flotilla` command line tool: what every command file shares.
//
// Commands are grouped ("job run", "alloc logs", ...) and listed in one
// table (commands.cc); a new group is one new file and one line there.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "http_client.h"

namespace flotilla::cli {

enum ExitCode : int {
  kExitOk = 0,
  kExitApiError = 1,     // the daemon refused or failed the request
  kExitUsage = 2,        // bad command line
  kExitUnreachable = 3,  // the daemon cannot be reached
  kExitLocal = 4,          // a local file named on the command line could not be read
  kExitDeployFailed = 5,   // accepted, but an allocation failed, or the update stopped or reverted
  kExitDeployTimeout = 6,  // accepted, but not done within --timeout
};

// A bad command line; main prints the message and the command's usage.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A local failure, not the daemon's: an unreadable job file (exit 4).
class LocalError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Cli {
  HttpClient client{""};
  bool json = false;  // print the API's JSON instead of tables
};

// The arguments after the command words; commands take what they know and
// call done() to refuse the rest.
class Args {
 public:
  explicit Args(std::vector<std::string> args) : args_(std::move(args)) {}
  // Whether any of names was given (removing it).
  bool flag(std::initializer_list<std::string_view> names);
  // The next positional argument; UsageError naming `what` if none.
  std::string positional(std::string_view what);
  std::optional<std::string> optional_positional();
  // The value of an option given as "--name VALUE" or "--name=VALUE" (removing
  // it), "" when absent; UsageError when the value is missing.
  std::string option(std::initializer_list<std::string_view> names, std::string_view what);
  // UsageError for anything left over.
  void done() const;

 private:
  std::vector<std::string> args_;
};

struct Command {
  std::string_view group;    // "job"; empty for a top-level command
  std::string_view name;     // "run"
  std::string_view args;     // "FILE [--check]"
  std::string_view summary;  // one line for `flotilla help`
  std::string_view details;  // more, for `flotilla <command> --help`
  int (*run)(Cli &cli, Args &args);
};

// Every command, in the order `flotilla help` lists them.
const std::vector<Command> &all_commands();
// Each group's commands, one function per file.
const std::vector<Command> &job_commands();
const std::vector<Command> &alloc_commands();
const std::vector<Command> &image_commands();
const std::vector<Command> &node_commands();
const std::vector<Command> &service_commands();
const std::vector<Command> &plugin_commands();
const std::vector<Command> &version_commands();

// ---- deployments (monitor.cc) ----------------------------------------------------

// Follows job name at version (0: its current one) from store revision
// index until every allocation of that version runs (batch: runs or
// completed) and no older one does; prints what changes. Returns kExitOk,
// kExitDeployFailed, kExitDeployTimeout or an API error's code.
int follow_deployment(Cli &cli, const std::string &name, int64_t version, int64_t index,
                      int64_t timeout_s);

// ---- output (output.cc) ------------------------------------------------------

// Columns aligned for people: each as wide as its widest cell.
class Table {
 public:
  explicit Table(std::vector<std::string> headers) : rows_{std::move(headers)} {}
  void add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  bool empty() const { return rows_.size() == 1; }
  void print() const;

 private:
  std::vector<std::vector<std::string>> rows_;
};

// "Name  value" lines with the names aligned.
void print_fields(const std::vector<std::pair<std::string, std::string>> &fields);

// The API's JSON, pretty-printed, on stdout.
void print_json(const HttpResponse &r);

// Print an API error (its message, then each problem on its own line;
// source names the file the problems' line numbers refer to) and return
// kExitApiError. With --json the error body goes to stdout as it came.
int api_error(const Cli &cli, const HttpResponse &r, std::string_view source = {});

// The body as JSON; LocalError if the daemon sent something else.
nlohmann::json body_json(const HttpResponse &r);

// A JSON value as a table cell: strings bare, null and missing as "-".
std::string cell(const nlohmann::json &j, std::string_view key);
std::string cell(const nlohmann::json &value);
// A JSON array as one cell, its items' cells joined by ","; "-" if empty.
std::string joined(const nlohmann::json &list);

// GET target; on an API error prints it and returns nullopt (exit 1).
std::optional<nlohmann::json> get_json(Cli &cli, const std::string &target, int &exit_code);

}  // namespace flotilla::cli
