// flotilla job run | status | stop
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>

#include "cli.h"

namespace flotilla::cli {
namespace {

using nlohmann::json;

std::string read_file(const std::string &path) {
  if (path == "-") {
    std::ostringstream s;
    s << std::cin.rdbuf();
    return s.str();
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw LocalError("cannot read " + path + ": " + strerror(errno));
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string base_name(const std::string &path) {
  if (path == "-") return "stdin";
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

bool ends_with(const std::string &s, std::string_view suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// "10m", "90s", "1h" -> seconds; UsageError otherwise.
int64_t timeout_seconds(const std::string &text) {
  if (text.empty()) return 600;
  size_t used = 0;
  long long n = 0;
  try {
    n = std::stoll(text, &used);
  } catch (const std::exception &) {
    used = 0;
  }
  std::string unit = text.substr(used);
  int64_t mult = unit == "s" ? 1 : unit == "m" ? 60 : unit == "h" ? 3600 : 0;
  if (used == 0 || n <= 0 || mult == 0)
    throw UsageError("--timeout must be a duration like 90s, 10m or 1h, got " + text);
  return n * mult;
}

int job_run(Cli &cli, Args &args) {
  bool check = args.flag({"--check"});
  bool detach = args.flag({"--detach", "-d"});
  int64_t timeout = timeout_seconds(args.option({"--timeout"}, "a duration like 10m"));
  std::string file = args.positional("FILE (the job spec, TOML or JSON)");
  args.done();
  std::string body = read_file(file);
  std::string source = base_name(file);
  std::string type = ends_with(file, ".json") ? "application/json" : "application/toml";
  std::string target = "/v1/jobs?source=" + url_escape(source);
  if (check) target += "&check=true";
  HttpResponse r = cli.client.request("POST", target, body, type);
  if (r.status >= 400) return api_error(cli, r, source);
  if (cli.json && (check || detach)) {
    print_json(r);
    return kExitOk;
  }
  json j = body_json(r);
  if (cli.json) return follow_deployment(cli, j.value("name", ""), j.value("version", int64_t{0}),
                                         j.value("revision", int64_t{0}), timeout);
  std::string name = j.value("name", "");
  if (check) {
    std::printf("%s: job \"%s\" is valid (nothing was submitted)\n", source.c_str(), name.c_str());
  } else if (j.value("unchanged", false)) {
    std::printf("Job \"%s\" is unchanged (version %lld); nothing to do\n", name.c_str(),
                static_cast<long long>(j.value("version", 0)));
  } else if (r.status == 201) {
    std::printf("Job \"%s\" submitted (version %lld, store revision %lld)\n", name.c_str(),
                static_cast<long long>(j.value("version", 0)),
                static_cast<long long>(j.value("revision", 0)));
  } else {
    std::printf("Job \"%s\" updated to version %lld (store revision %lld)\n", name.c_str(),
                static_cast<long long>(j.value("version", 0)),
                static_cast<long long>(j.value("revision", 0)));
  }
  if (check || detach) return kExitOk;
  return follow_deployment(cli, name, j.value("version", int64_t{0}),
                           j.value("revision", int64_t{0}), timeout);
}

std::string alloc_counts(const json &allocs) {
  if (!allocs.is_object() || allocs.empty()) return "-";
  std::string out;
  for (const auto &[state, n] : allocs.items())
    out += (out.empty() ? "" : " ") + state + ":" + cell(n);
  return out;
}

std::string alloc_state(const json &alloc) {
  const json &status = alloc.contains("status") ? alloc["status"] : json();
  std::string s = cell(status, "status");
  if (s == "-") s = cell(status, "state");
  return s == "-" ? "pending" : s;
}

void print_allocs(const json &allocs) {
  Table t({"ID", "INDEX", "NODE", "JOB VERSION", "DESIRED", "STATUS"});
  for (const json &a : allocs)
    t.add({cell(a, "id"), cell(a, "index"), cell(a, "node"), cell(a, "job_version"),
           cell(a, "desired_status"), alloc_state(a)});
  if (t.empty()) {
    std::printf("No allocations yet.\n");
  } else {
    t.print();
  }
}

int job_status(Cli &cli, Args &args) {
  bool watch = args.flag({"--watch", "-w"});
  int64_t timeout = timeout_seconds(args.option({"--timeout"}, "a duration like 10m"));
  auto name = args.optional_positional();
  args.done();
  if (watch) {
    if (!name) throw UsageError("--watch follows one job: flotilla job status JOB --watch");
    return follow_deployment(cli, *name, 0, 0, timeout);
  }
  int code = kExitOk;
  if (!name) {
    auto j = get_json(cli, "/v1/jobs", code);
    if (!j) return code;
    Table t({"NAME", "STATUS", "VERSION", "ALLOCATIONS", "SUBMITTED"});
    for (const json &job : (*j)["jobs"])
      t.add({cell(job, "name"), cell(job, "status"), cell(job, "version"),
             alloc_counts(job.value("allocs", json::object())), cell(job, "submitted_at")});
    if (t.empty()) {
      std::printf("No jobs.\n");
    } else {
      t.print();
    }
    return kExitOk;
  }
  auto j = get_json(cli, "/v1/jobs/" + url_escape(*name), code);
  if (!j) return code;
  const json &job = (*j)["job"];
  const json &allocs = (*j)["allocs"];
  std::vector<std::pair<std::string, std::string>> fields = {
      {"Name", cell(job, "name") == "-" ? *name : cell(job, "name")},
      {"Status", cell(*j, "status")},
      {"Version", cell(job, "version")},
      {"Submitted", cell(job, "submitted_at")}};
  if (job.is_object() && job.contains("type")) fields.emplace_back("Type", cell(job, "type"));
  if (j->contains("placement") && (*j)["placement"].is_object())
    fields.emplace_back("Placement", "not placed: " + cell((*j)["placement"], "message"));
  print_fields(fields);
  std::printf("\nAllocations\n");
  print_allocs(allocs);
  return kExitOk;
}

int job_stop(Cli &cli, Args &args) {
  bool purge = args.flag({"--purge"});
  std::string name = args.positional("JOB");
  args.done();
  HttpResponse r =
      cli.client.request("DELETE", "/v1/jobs/" + url_escape(name) + (purge ? "?purge=true" : ""));
  if (r.status >= 400) return api_error(cli, r);
  if (cli.json) {
    print_json(r);
    return kExitOk;
  }
  json j = body_json(r);
  long long n = j.value("allocs_stopped", 0);
  std::printf("Job \"%s\" %s; %lld allocation%s told to stop\n", name.c_str(),
              purge ? "stopped and purged" : "stopped", n, n == 1 ? "" : "s");
  return kExitOk;
}

}  // namespace

const std::vector<Command> &job_commands() {
  static const std::vector<Command> commands = {
      {"job", "run", "FILE [--check] [--detach] [--timeout 10m]",
       "submit a job spec (TOML, or JSON if FILE ends in .json) and follow its deployment",
       "Submits FILE (\"-\" reads standard input) to the daemon, which validates it and\n"
       "stores it as the job's next version. --check only validates: nothing is stored.\n"
       "Problems are listed one per line with their line numbers in FILE.\n"
       "Then it follows the deployment (placement, image pulls, each allocation reaching\n"
       "running, old ones going) until it is done: exit 0; 5 when an allocation failed or\n"
       "the update stopped or was reverted; 6 after --timeout. --detach returns once the\n"
       "job is stored.",
       job_run},
      {"job", "status", "[JOB] [--watch] [--timeout 10m]",
       "list jobs, or show one job and its allocations",
       "Without JOB: every job with its status, version and allocation counts.\n"
       "With JOB: the job and a table of its allocations. --watch follows the job's\n"
       "current version as `job run` does, with the same exit codes.",
       job_status},
      {"job", "stop", "JOB [--purge]", "stop a job's allocations (--purge: forget the job too)",
       "Marks the job stopped and tells every allocation of it to stop, in one store\n"
       "transaction. --purge also removes the job record; nodes remove the allocations\n"
       "once they have stopped them.",
       job_stop},
  };
  return commands;
}

}  // namespace flotilla::cli
