// flotilla alloc status | logs
#include <cstdio>

#include "cli.h"

namespace flotilla::cli {
namespace {

using nlohmann::json;

int alloc_status(Cli &cli, Args &args) {
  std::string id = args.positional("ID (an allocation id)");
  args.done();
  int code = kExitOk;
  auto j = get_json(cli, "/v1/allocs/" + url_escape(id), code);
  if (!j) return code;
  const json &a = *j;
  const json &status = a.contains("status") ? a["status"] : json();
  std::string state = cell(status, "status");
  if (state == "-") state = cell(status, "state");
  std::vector<std::pair<std::string, std::string>> fields = {
      {"ID", cell(a, "id")},
      {"Job", cell(a, "job") +
                  (a.contains("job_version") ? " (version " + cell(a, "job_version") + ")" : "")},
      {"Index", cell(a, "index")},
      {"Node", cell(a, "node")},
      {"Desired", cell(a, "desired_status")},
      {"Status", state == "-" ? "pending (no report from the node yet)" : state},
      {"Created", cell(a, "created_at")},
      {"Updated", cell(status, "updated_at")}};
  print_fields(fields);
  // One line per task, as the node reported it.
  if (status.is_object() && status.contains("tasks") && status["tasks"].is_object() &&
      !status["tasks"].empty()) {
    std::printf("\nTasks\n");
    Table t({"TASK", "STATE", "RESTARTS", "EXIT", "STARTED", "FINISHED", "MESSAGE"});
    for (const auto &[name, task] : status["tasks"].items())
      t.add({name, cell(task, "state") + (task.value("failed", false) ? " (failed)" : ""),
             cell(task, "restarts"), cell(task, "exit_code"), cell(task, "started_at"),
             cell(task, "finished_at"), cell(task, "message")});
    t.print();
  }
  return kExitOk;
}

// One log (a run's stream) to stdout as it arrives; an error answer is
// returned as the response to print.
bool stream_log(Cli &cli, const std::string &target, HttpResponse &error) {
  bool ok = false;
  std::string error_body;
  HttpResponse r = cli.client.request(
      "GET", target, {}, {},
      [&](std::string_view chunk) {
        if (ok) {
          std::fwrite(chunk.data(), 1, chunk.size(), stdout);
          std::fflush(stdout);
        } else {
          error_body.append(chunk);
        }
      },
      [&](const HttpResponse &head) { ok = head.status < 300; });
  if (!ok) {
    error = std::move(r);
    error.body = std::move(error_body);
  }
  return ok;
}

// "run 2 (started ..., exited with code 1)" for a runs.json entry.
std::string describe_run(const json &run) {
  std::string d = "run " + cell(run, "run");
  std::string started = run.value("started_at", run.value("created_at", ""));
  if (!started.empty()) d += ", started " + started;
  if (run.contains("finished_at")) {
    int sig = run.value("signal", 0);
    d += sig ? ", killed by signal " + std::to_string(sig)
             : ", exited with code " + cell(run, "exit_code");
    d += " at " + cell(run, "finished_at");
  }
  if (run.value("truncated", false)) d += "; its oldest output was dropped (log limits)";
  return d;
}

int alloc_logs(Cli &cli, Args &args) {
  bool follow = args.flag({"-f", "--follow"});
  bool stderr_stream = args.flag({"--stderr"});
  bool list_runs = args.flag({"--runs"});
  std::string task = args.option({"--task"}, "NAME");
  std::string run = args.option({"--run"}, "N (a run number, from --runs)");
  std::string id = args.positional("ID (an allocation id)");
  args.done();
  if (!run.empty() &&
      (run.find_first_not_of("0123456789") != std::string::npos || run[0] == '0' || run.size() > 9))
    throw UsageError(
        "--run must be a run number (1, 2, ...; flotilla alloc logs ID --runs "
        "lists them), got " +
        run);
  if (list_runs && (!run.empty() || follow))
    throw UsageError("--runs lists the runs; it takes neither --run nor --follow");
  const std::string stream = stderr_stream ? "stderr" : "stdout";
  const std::string base = "/v1/allocs/" + url_escape(id) + "/logs?" +
                           (task.empty() ? "" : "task=" + url_escape(task) + "&");
  HttpResponse error;
  // The runs the node kept for the task (runtimes that keep none answer
  // with an error: then there is only the current run).
  json runs;
  if (run.empty()) {
    HttpResponse r = cli.client.request("GET", base + "stream=runs");
    if (r.status / 100 == 2) {
      json doc = json::parse(r.body, nullptr, false);
      if (doc.is_object() && doc.contains("runs") && doc["runs"].is_array()) runs = doc["runs"];
    } else if (list_runs) {
      return api_error(cli, r);
    }
  }
  if (list_runs) {
    if (cli.json) {
      std::printf("%s\n", json{{"runs", runs}}.dump(2).c_str());
      return kExitOk;
    }
    Table t({"RUN", "STARTED", "FINISHED", "EXIT", "SIGNAL", "LOGS"});
    for (const json &r : runs)
      t.add({cell(r, "run"),
             r.contains("started_at") ? cell(r, "started_at") : cell(r, "created_at"),
             cell(r, "finished_at"), cell(r, "exit_code"), cell(r, "signal"),
             r.value("dropped", false)     ? "dropped (log limits)"
             : r.value("truncated", false) ? "oldest part dropped (log limits)"
                                           : "kept"});
    t.print();
    return kExitOk;
  }
  if (!run.empty()) {
    if (!stream_log(cli, base + "stream=" + stream + "&run=" + run + (follow ? "&follow=true" : ""),
                    error))
      return api_error(cli, error);
    return kExitOk;
  }
  // Every kept run, oldest first, each announced on stderr when there are
  // several; then the current one (followed with -f).
  if (runs.is_array() && runs.size() > 1) {
    for (size_t i = 0; i + 1 < runs.size(); ++i) {
      const json &r = runs[i];
      if (r.value("dropped", false)) {
        std::fprintf(stderr, "==> %s: its output was dropped (log limits) <==\n",
                     describe_run(r).c_str());
        continue;
      }
      std::fprintf(stderr, "==> %s <==\n", describe_run(r).c_str());
      std::fflush(stderr);
      if (!stream_log(cli, base + "stream=" + stream + "&run=" + cell(r, "run"), error))
        return api_error(cli, error);
    }
    std::fprintf(stderr, "==> %s (the current run) <==\n", describe_run(runs.back()).c_str());
    std::fflush(stderr);
  }
  if (!stream_log(cli, base + "stream=" + stream + (follow ? "&follow=true" : ""), error))
    return api_error(cli, error);
  return kExitOk;
}

}  // namespace

const std::vector<Command> &alloc_commands() {
  static const std::vector<Command> commands = {
      {"alloc", "status", "ID", "show an allocation and what its node reported", "", alloc_status},
      {"alloc", "logs", "ID [-f] [--stderr] [--task NAME] [--run N | --runs]",
       "print an allocation's stdout (or stderr) log",
       "Prints a task's log as the node's runtime wrote it; --task picks the task when\n"
       "the job has several. A task that restarted has several runs: each kept run is\n"
       "printed, oldest first, with a line on stderr saying where it starts and how it\n"
       "ended (\"==> run 1, started ..., exited with code 3 at ... <==\"). --run N prints\n"
       "only run N; --runs lists the runs (--json: as the node keeps them). Earlier runs\n"
       "are kept within the task's [task.logs] limits. -f (--follow) keeps printing\n"
       "what is added until the allocation ends or you press Ctrl-C. The log is served\n"
       "by the flotillad of the node the allocation runs on.",
       alloc_logs},
  };
  return commands;
}

}  // namespace flotilla::cli
