// Following a deployment: `flotilla job run` (unless --detach) and
// `flotilla job status JOB --watch`. It reads the job through the API's
// blocking queries (GET /v1/jobs/{name}?index=N&wait=...), so it sees every
// change without polling, and prints what changed: placement, image pulls,
// each allocation of the new version reaching running (or failing) and,
// when its tasks registered services with discovery, those services passing
// their checks (or going critical: a failure), the old ones going. Exit
// codes (docs/ci-cd.md) are what a pipeline relies on.
#include <chrono>
#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "cli.h"

namespace flotilla::cli {
namespace {

using nlohmann::json;

std::string task_line(const std::string &alloc, const std::string &task, const json &t) {
  std::string state = t.value("state", "pending");
  std::string line = "  " + alloc + " " + task + ": " + state;
  if (t.contains("pull") && t["pull"].is_object()) {
    const json &p = t["pull"];
    double total = p.value("bytes_total", json(0)).get<double>();
    double done = p.value("bytes_done", json(0)).get<double>();
    char pct[16];
    std::snprintf(pct, sizeof pct, "%.0f%%", total > 0 ? 100.0 * done / total : 0.0);
    line += " (pulling " + p.value("ref", std::string("image")) + ": " + pct + " of " +
            std::to_string(static_cast<long long>(total)) + " bytes)";
  }
  std::string msg = t.value("message", "");
  if (!msg.empty()) line += " — " + msg;
  return line;
}

// The health of an allocation's services, as far as the deploy monitor
// cares: each task's status lists the services its node registered with
// discovery ("services"), or says why it registered none
// ("services_unregistered": no discovery plugin there, or it refused
// them); the job view carries the registry's records per allocation
// ("services"). Running is enough for a task without registered services.
struct ServiceHealth {
  int waiting = 0;  // registered, not passing yet (starting, or no record yet)
  int passing = 0;
  std::string critical;  // the first service past its failures_before_critical
  std::vector<std::pair<std::string, std::string>> lines;  // key, line
};

ServiceHealth service_health(const std::string &id, const json &alloc, const json &st) {
  ServiceHealth h;
  if (!st.is_object() || !st.contains("tasks") || !st["tasks"].is_object()) return h;
  const json records = alloc.contains("services") && alloc["services"].is_array()
                           ? alloc["services"]
                           : json::array();
  for (const auto &[task, t] : st["tasks"].items()) {
    if (!t.is_object()) continue;
    std::string unregistered = t.value("services_unregistered", "");
    if (!unregistered.empty())
      h.lines.emplace_back(
          id + "/" + task + "/services",
          "  " + id + " " + task + ": services not health-checked — " + unregistered);
    if (!t.contains("services") || !t["services"].is_array()) continue;
    for (const json &name : t["services"]) {
      if (!name.is_string()) continue;
      std::string health = "registering", output;
      for (const json &r : records)
        if (r.is_object() && r.value("name", "") == name.get<std::string>()) {
          health = r["health"].is_string() ? r["health"].get<std::string>() : "unknown";
          output = r.value("output", "");
        }
      std::string line =
          "  " + id + " " + task + ": service " + name.get<std::string>() + " " + health;
      if (!output.empty() && health != "passing") line += " — " + output;
      h.lines.emplace_back(id + "/" + task + "/service/" + name.get<std::string>(), line);
      if (health == "passing") {
        ++h.passing;
      } else if (health == "critical") {
        if (h.critical.empty())
          h.critical = "task " + task + ": service " + name.get<std::string>() + " is critical" +
                       (output.empty() ? "" : ": " + output);
      } else {
        ++h.waiting;
      }
    }
  }
  return h;
}

}  // namespace

int follow_deployment(Cli &cli, const std::string &name, int64_t version, int64_t index,
                      int64_t timeout_s) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  std::map<std::string, std::string> shown;  // what was printed per line key
  std::string last_placement;
  // With --json only the final view is printed, as the API gave it.
  auto say = [&](const std::string &line) {
    if (cli.json) return;
    std::fputs((line + "\n").c_str(), stdout);
    std::fflush(stdout);
  };
  json last_view;
  bool first = true;
  auto finish = [&](int code) {
    if (cli.json && !last_view.is_null()) std::printf("%s\n", last_view.dump(2).c_str());
    return code;
  };
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                    deadline - std::chrono::steady_clock::now())
                    .count();
    if (left <= 0) {
      std::fprintf(stderr, "Error: deployment of job \"%s\" version %lld not done after %llds\n",
                   name.c_str(), static_cast<long long>(version),
                   static_cast<long long>(timeout_s));
      return finish(kExitDeployTimeout);
    }
    // The first read answers at once (the job may be deployed already);
    // each later one waits for a change after what was seen.
    std::string target = "/v1/jobs/" + url_escape(name);
    if (!first)
      target += "?index=" + std::to_string(index) +
                "&wait=" + std::to_string(std::min<int64_t>(left, 60000)) + "ms";
    first = false;
    HttpResponse r = cli.client.request("GET", target);
    if (r.status == 404) {
      std::fprintf(stderr, "Error: job \"%s\" was removed while it deployed\n", name.c_str());
      return finish(kExitDeployFailed);
    }
    if (r.status / 100 != 2) return api_error(cli, r);
    json j = body_json(r);
    last_view = j;
    index = j.value("revision", index);
    const json &job = j["job"];
    if (version == 0) version = job.value("version", 1);
    int64_t current = job.value("version", version);
    if (current > version && job.value("reverted_from", int64_t{0}) == version) {
      std::string why = j.contains("placement") && j["placement"].is_object()
                            ? j["placement"].value("message", "")
                            : "";
      std::fprintf(stderr, "Error: deployment of job \"%s\" version %lld was reverted%s%s\n",
                   name.c_str(), static_cast<long long>(version), why.empty() ? "" : ": ",
                   why.c_str());
      return finish(kExitDeployFailed);
    }
    if (current != version) {
      std::fprintf(stderr, "Error: job \"%s\" was replaced by version %lld while it deployed\n",
                   name.c_str(), static_cast<long long>(current));
      return finish(kExitDeployFailed);
    }
    if (job.value("stop", false)) {
      std::fprintf(stderr, "Error: job \"%s\" was stopped while it deployed\n", name.c_str());
      return finish(kExitDeployFailed);
    }
    if (j.contains("placement") && j["placement"].is_object()) {
      std::string msg = j["placement"].value("message", "");
      if (msg != last_placement && !msg.empty()) say("Placement: " + msg);
      last_placement = msg;
      if (msg.find(" stopped: ") != std::string::npos) {
        std::fprintf(stderr, "Error: %s\n", msg.c_str());
        return finish(kExitDeployFailed);
      }
    }
    bool batch = job.value("type", "service") == "batch";
    int64_t want = job.value("count", int64_t{1});
    int64_t ready = 0, old_running = 0;
    bool health_checked = false;  // some allocation waited for passing services
    for (const json &a : j["allocs"]) {
      const std::string id = a.value("id", "");
      const json &st = a.contains("status") && a["status"].is_object() ? a["status"] : json();
      std::string status = st.is_object() ? st.value("status", "pending") : "pending";
      bool current_version = a.value("job_version", int64_t{0}) == version;
      if (!current_version) {
        if (a.value("desired_status", "") == "run" && status == "running") ++old_running;
        std::string line = "  " + id + " (version " + cell(a, "job_version") +
                           "): " + (a.value("desired_status", "") == "run" ? status : "stopping");
        if (shown[id] != line) {
          say(line);
          shown[id] = line;
        }
        continue;
      }
      if (a.value("desired_status", "") != "run") continue;
      std::string head = "Allocation " + id + " on " + cell(a, "node") + ": " + status;
      if (shown[id] != head) {
        say(head);
        shown[id] = head;
      }
      if (st.is_object() && st.contains("tasks") && st["tasks"].is_object()) {
        for (const auto &[task, t] : st["tasks"].items()) {
          std::string line = task_line(id, task, t);
          std::string key = id + "/" + task;
          if (shown[key] != line) {
            say(line);
            shown[key] = line;
          }
        }
      }
      if (status == "failed") {
        std::string why;
        if (st.contains("tasks") && st["tasks"].is_object())
          for (const auto &[task, t] : st["tasks"].items())
            if (t.value("failed", false) || !t.value("message", "").empty())
              why += (why.empty() ? "" : "; ") + task + ": " + t.value("message", "");
        std::fprintf(stderr, "Error: allocation %s of job \"%s\" failed%s%s\n", id.c_str(),
                     name.c_str(), why.empty() ? "" : ": ", why.c_str());
        return finish(kExitDeployFailed);
      }
      if (status == "running") {
        ServiceHealth h = service_health(id, a, st);
        for (const auto &[key, line] : h.lines)
          if (shown[key] != line) {
            say(line);
            shown[key] = line;
          }
        if (!h.critical.empty()) {
          std::fprintf(stderr, "Error: allocation %s of job \"%s\" is unhealthy: %s\n", id.c_str(),
                       name.c_str(), h.critical.c_str());
          return finish(kExitDeployFailed);
        }
        if (h.waiting > 0) continue;
        health_checked = health_checked || h.passing > 0;
        ++ready;
      } else if (batch && status == "complete") {
        ++ready;
      }
    }
    if (ready >= want && old_running == 0) {
      say("Deployment of job \"" + name + "\" version " + std::to_string(version) +
          " done: " + std::to_string(ready) + " of " + std::to_string(want) + " allocation" +
          (want == 1 ? "" : "s") + (batch ? " complete or running" : " running") +
          (health_checked ? " and healthy" : ""));
      return finish(kExitOk);
    }
  }
}

}  // namespace flotilla::cli
