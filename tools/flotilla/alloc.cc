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

int alloc_logs(Cli &cli, Args &args) {
  bool follow = args.flag({"-f", "--follow"});
  bool stderr_stream = args.flag({"--stderr"});
  std::string task = args.option({"--task"}, "NAME");
  std::string id = args.positional("ID (an allocation id)");
  args.done();
  std::string target =
      "/v1/allocs/" + url_escape(id) + "/logs?stream=" + (stderr_stream ? "stderr" : "stdout");
  if (follow) target += "&follow=true";
  if (!task.empty()) target += "&task=" + url_escape(task);
  // Log bytes go to stdout as they arrive; an error answer is kept to print.
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
    r.body = std::move(error_body);
    return api_error(cli, r);
  }
  return kExitOk;
}

}  // namespace

const std::vector<Command> &alloc_commands() {
  static const std::vector<Command> commands = {
      {"alloc", "status", "ID", "show an allocation and what its node reported", "", alloc_status},
      {"alloc", "logs", "ID [-f] [--stderr] [--task NAME]",
       "print an allocation's stdout (or stderr) log",
       "Prints a task's log as the node's runtime wrote it; --task picks the task when\n"
       "the job has several. -f (--follow) keeps printing\n"
       "what is added until the allocation ends or you press Ctrl-C. The log is served\n"
       "by the flotillad of the node the allocation runs on. --json does not apply.",
       alloc_logs},
  };
  return commands;
}

}  // namespace flotilla::cli
