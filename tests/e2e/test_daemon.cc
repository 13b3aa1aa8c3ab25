// flotillad end to end: a real daemon process, the real store-local plugin,
// the C99 example plugin, the API over its Unix socket and the CLI.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "daemon_harness.h"

using nlohmann::json;
namespace e2e = flotilla::e2e;

namespace {

const char *kJob = R"(name = "hello"
type = "batch"

[[task]]
name = "say"
image = "busybox:latest"
command = "/bin/echo"
args = ["hello"]
)";

std::string job_named(const std::string &name) {
  std::string j = kJob;
  j.replace(j.find("\"hello\""), 7, "\"" + name + "\"");
  return j;
}

json parse(const std::string &s) { return json::parse(s, nullptr, false); }

std::string cli() { return e2e::build_dir() + "/tools/flotilla/flotilla"; }

TEST(Daemon, ServesTheApiLoadsPluginsAndRegistersTheNode) {
  e2e::Daemon d;
  ASSERT_TRUE(d.start()) << d.log();

  auto v = d.get("/v1/version");
  ASSERT_EQ(v.status, 200) << v.body;
  EXPECT_EQ(parse(v.body)["abi"], "1.4");  // 1.4: process_spec.keep_session

  auto p = d.get("/v1/plugins");
  ASSERT_EQ(p.status, 200) << p.body;
  std::set<std::string> ids;
  json plugins = parse(p.body);
  if (plugins.is_object() && plugins.contains("plugins")) plugins = plugins["plugins"];
  for (const auto &pl : plugins) ids.insert(pl.value("id", ""));
  EXPECT_TRUE(ids.count("org.flotilla.store-local")) << p.body;
  EXPECT_TRUE(ids.count("org.flotilla.example.hello-c99")) << p.body;  // the C99 plugin

  // The node registers under its lease once the store granted it, which
  // may be just after the API answers: wait for it (a hang guard, 10 s).
  auto n = d.get("/v1/nodes/e2e-node");
  for (int i = 0; i < 100 && n.status == 404; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    n = d.get("/v1/nodes/e2e-node");
  }
  ASSERT_EQ(n.status, 200) << n.body;
  json node = parse(n.body);
  if (node.contains("node")) node = node["node"];
  EXPECT_GT(node["resources"]["memory_mb"].get<int64_t>(), 0) << n.body;
  EXPECT_GT(node["resources"]["cpu_mhz"].get<int64_t>(), 0) << n.body;

  auto m = d.get("/v1/metrics");
  ASSERT_EQ(m.status, 200);
  EXPECT_NE(m.body.find("flotilla_hello_started_total"), std::string::npos) << m.body;
}

// The node notes each lease renewal in /flotilla/heartbeats/<node> (under
// the lease); the API and `flotilla node status` show how long ago the last
// one was. With a 3 s TTL it renews every second.
TEST(Daemon, TheNodeWritesAHeartbeatAtEachLeaseRenewal) {
  e2e::Daemon d("[cluster]\nlease_ttl = \"3s\"\n");
  ASSERT_TRUE(d.start()) << d.log();
  json first;
  for (int i = 0; i < 100; ++i) {
    auto n = d.get("/v1/nodes/e2e-node");
    if (n.status == 200) {
      first = parse(n.body);
      if (first.contains("last_heartbeat") && first["last_heartbeat"].is_string()) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(first.contains("last_heartbeat") && first["last_heartbeat"].is_string())
      << first.dump() << d.log();
  EXPECT_LT(first["heartbeat_age_ms"].get<int64_t>(), 3000) << first.dump();
  EXPECT_EQ(first["heartbeat_every_ms"], 1000);
  // A renewal rewrites it: a newer time within a few renewals.
  json later;
  for (int i = 0; i < 50; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    later = parse(d.get("/v1/nodes/e2e-node").body);
    if (later.value("last_heartbeat", json()) != first["last_heartbeat"]) break;
  }
  EXPECT_NE(later.value("last_heartbeat", json()), first["last_heartbeat"]) << later.dump();
  EXPECT_LT(later["heartbeat_age_ms"].get<int64_t>(), 3000) << later.dump();
  auto out = e2e::run({cli(), "--socket", d.socket(), "node", "status"});
  EXPECT_EQ(out.exit_code, 0) << out.output;
  EXPECT_NE(out.output.find("HEARTBEAT"), std::string::npos) << out.output;
  EXPECT_NE(out.output.find("s ago"), std::string::npos) << out.output;
}

TEST(Daemon, CheckConfigAcceptsGoodAndExplainsBad) {
  e2e::Daemon d;
  auto ok = e2e::run({e2e::build_dir() + "/core/flotillad", "--config", d.config_path(),
                      "--check-config"});
  EXPECT_EQ(ok.exit_code, 0) << ok.output;

  d.write_config("[api]\nsocket_mode = \"0660\"\n");  // a table defined twice
  auto dup = e2e::run({e2e::build_dir() + "/core/flotillad", "--config", d.config_path(),
                       "--check-config"});
  EXPECT_EQ(dup.exit_code, 2) << dup.output;
  EXPECT_NE(dup.output.find("config " + d.config_path() + " line"), std::string::npos)
      << dup.output;

  d.write_config("[plugin.ghost]\n");
  auto ghost = e2e::run({e2e::build_dir() + "/core/flotillad", "--config", d.config_path(),
                         "--check-config"});
  EXPECT_EQ(ghost.exit_code, 1) << ghost.output;
  EXPECT_NE(ghost.output.find("plugin ghost"), std::string::npos) << ghost.output;
}

TEST(Daemon, PinnedPluginWithWrongHashIsRefusedAtStart) {
  e2e::Daemon d;
  std::string cfg;
  {
    std::ifstream in(d.config_path());
    cfg.assign(std::istreambuf_iterator<char>(in), {});
  }
  cfg.replace(cfg.find("greeting"), 0, "sha256 = \"" + std::string(64, 'a') + "\"\n");
  std::ofstream(d.config_path(), std::ios::trunc) << cfg;
  EXPECT_FALSE(d.start());
  EXPECT_NE(d.log().find("refusing to load it"), std::string::npos) << d.log();
}

TEST(Daemon, BadJobsAndBrokenRequestsChangeNothing) {
  e2e::Daemon d;
  ASSERT_TRUE(d.start()) << d.log();
  auto ok = e2e::http(d.socket(), "POST", "/v1/jobs", kJob, "application/toml");
  ASSERT_TRUE(ok.status == 200 || ok.status == 201) << ok.status << " " << ok.body;

  // A job with an error at a known line: the reply names the line.
  std::string bad = job_named("hello");
  bad += "[task.resources]\nmemory = -5\n";
  auto r = e2e::http(d.socket(), "POST", "/v1/jobs", bad, "application/toml");
  EXPECT_EQ(r.status, 400) << r.body;
  json err = parse(r.body);
  ASSERT_TRUE(err.contains("error")) << r.body;
  EXPECT_NE(r.body.find("memory"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("\"line\":10"), std::string::npos) << r.body;

  auto syntax = e2e::http(d.socket(), "POST", "/v1/jobs", "name = \n", "application/toml");
  EXPECT_EQ(syntax.status, 400) << syntax.body;
  auto badjson = e2e::http(d.socket(), "POST", "/v1/jobs", "{\"name\":", "application/json");
  EXPECT_EQ(badjson.status, 400) << badjson.body;
  auto garbage = e2e::raw_exchange(d.socket(), "\x01\x02 NOT HTTP\r\n\r\n");
  EXPECT_EQ(garbage.compare(0, 12, "HTTP/1.1 400"), 0) << garbage;

  // The first job is still there, at version 1, and the daemon answers.
  auto job = d.get("/v1/jobs/hello");
  ASSERT_EQ(job.status, 200) << job.body;
  json j = parse(job.body);
  if (j.contains("job")) j = j["job"];
  EXPECT_EQ(j["version"], 1) << job.body;
  EXPECT_EQ(d.get("/v1/jobs/nope").status, 404);
  EXPECT_TRUE(d.running());
}

TEST(Daemon, KillDashNineLosesNoAcknowledgedJob) {
  e2e::Daemon d;
  ASSERT_TRUE(d.start()) << d.log();
  // A writer submits jobs one after another and records each one the API
  // acknowledged; the daemon is killed with SIGKILL in the middle.
  std::vector<std::string> acked;
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    for (int i = 0; !stop && i < 100000; ++i) {
      std::string name = "job-" + std::to_string(i);
      auto r = e2e::http(d.socket(), "POST", "/v1/jobs", job_named(name), "application/toml");
      if (r.status == 200 || r.status == 201) acked.push_back(name);
      else if (r.status == 0) break;  // daemon gone
    }
  });
  while (acked.size() < 50) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  d.signal(SIGKILL);
  EXPECT_EQ(d.wait_exit(), 128 + SIGKILL);
  stop = true;
  writer.join();
  ASSERT_GE(acked.size(), 50u);

  ASSERT_TRUE(d.start()) << d.log();
  for (const auto &name : acked) {
    auto r = d.get("/v1/jobs/" + name);
    EXPECT_EQ(r.status, 200) << name << " was acknowledged but is missing after kill -9";
  }
}

TEST(Daemon, SigtermStopsInOrderAndExitsZero) {
  e2e::Daemon d;
  ASSERT_TRUE(d.start()) << d.log();
  d.signal(SIGTERM);
  EXPECT_EQ(d.wait_exit(), 0) << d.log();
  EXPECT_NE(d.log().find("flotillad stopped"), std::string::npos) << d.log();
  // A restart on the same data dir works (lock released, state intact).
  ASSERT_TRUE(d.start()) << d.log();
}

TEST(Daemon, SecondDaemonOnTheSameDataDirIsRefused) {
  e2e::Daemon d;
  ASSERT_TRUE(d.start()) << d.log();
  auto second = e2e::run({e2e::build_dir() + "/core/flotillad", "--config", d.config_path()});
  EXPECT_EQ(second.exit_code, 1) << second.output;
  EXPECT_NE(second.output.find("another flotillad (pid " + std::to_string(d.pid()) + ")"),
            std::string::npos)
      << second.output;
  EXPECT_EQ(d.get("/v1/health").status, 200);
}

TEST(Daemon, SighupReloadsWhatItCanAndNamesWhatItCannot) {
  e2e::Daemon d;
  ASSERT_TRUE(d.start()) << d.log();
  std::string cfg;
  {
    std::ifstream in(d.config_path());
    cfg.assign(std::istreambuf_iterator<char>(in), {});
  }
  cfg.replace(cfg.find("level = \"debug\""), 15, "level = \"info\"");
  cfg.replace(cfg.find("greeting = \"Ahoy\""), 17, "greeting = \"Hoy\"");
  std::ofstream(d.config_path(), std::ios::trunc) << cfg;
  d.signal(SIGHUP);
  for (int i = 0; i < 200 && d.log().find("not reloadable") == std::string::npos; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  EXPECT_NE(d.log().find("applied log"), std::string::npos) << d.log();
  EXPECT_NE(d.log().find("restart flotillad to apply: plugin.hello"), std::string::npos) << d.log();

  // A broken file is refused and the daemon keeps running.
  std::ofstream(d.config_path(), std::ios::trunc) << "[node\n";
  d.signal(SIGHUP);
  for (int i = 0; i < 200 && d.log().find("reload refused") == std::string::npos; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  EXPECT_NE(d.log().find("reload refused"), std::string::npos) << d.log();
  EXPECT_EQ(d.get("/v1/health").status, 200);
}

TEST(Daemon, CliRunsAndReportsJobs) {
  e2e::Daemon d;
  ASSERT_TRUE(d.start()) << d.log();
  std::string file = d.dir() + "/hello.toml";
  std::ofstream(file) << kJob;
  auto run = e2e::run({cli(), "--socket", d.socket(), "job", "run", "--detach", file});
  EXPECT_EQ(run.exit_code, 0) << run.output;
  auto status = e2e::run({cli(), "--socket", d.socket(), "job", "status"});
  EXPECT_EQ(status.exit_code, 0) << status.output;
  EXPECT_NE(status.output.find("hello"), std::string::npos) << status.output;
  auto js = e2e::run({cli(), "--socket", d.socket(), "--json", "job", "status", "hello"});
  EXPECT_EQ(js.exit_code, 0) << js.output;
  EXPECT_FALSE(parse(js.output).is_discarded()) << js.output;

  std::string bad = d.dir() + "/bad.toml";
  std::ofstream(bad) << "name = \"x\"\ncount = \"two\"\n";
  auto b = e2e::run({cli(), "--socket", d.socket(), "job", "run", bad});
  EXPECT_EQ(b.exit_code, 1) << b.output;
  EXPECT_NE(b.output.find("line 2"), std::string::npos) << b.output;

  auto gone = e2e::run({cli(), "--socket", d.dir() + "/no.sock", "node", "status"});
  EXPECT_EQ(gone.exit_code, 3) << gone.output;
}

}  // namespace
