// The job spec's placement keys (docs/jobspec.md): node_pool,
// distinct_hosts, [[constraint]], [[affinity]], [[spread]], [reschedule],
// and ports/devices in [task.resources]: canonical JSON and every problem.
#include <gtest/gtest.h>

#include "jobspec.h"

using flotilla::JobSpecInvalid;
using flotilla::parse_jobspec;
using flotilla::validate_job_json;
using nlohmann::json;

namespace {

const std::string kTask = R"(
[[task]]
name = "server"
image = "busybox"
command = "/bin/httpd"
)";

json parse(const std::string &job_keys, const std::string &task_extra = "") {
  return parse_jobspec("name = \"web\"\n" + job_keys + kTask + task_extra, "web.toml");
}

// The one problem a spec has, as the operator sees it.
std::string problem_of(const std::string &job_keys, const std::string &task_extra = "") {
  try {
    parse(job_keys, task_extra);
  } catch (const JobSpecInvalid &e) {
    if (e.problems().size() != 1) return "more than one problem: " + std::string(e.what());
    return e.problems()[0].to_string("web.toml");
  }
  return "no problem";
}

TEST(JobSpecPlacement, LeftOutMeansNotInTheCanonicalForm) {
  json job = parse("");
  for (const char *k : {"node_pool", "distinct_hosts", "constraint", "affinity", "spread", "reschedule", "update"})
    EXPECT_FALSE(job.contains(k)) << k;
  EXPECT_FALSE(job["task"][0]["resources"].contains("ports"));
}

TEST(JobSpecPlacement, EveryKeyIsReadAndRoundTrips) {
  json job = parse(R"(
node_pool = "gpu"
distinct_hosts = true

[[constraint]]
attribute = "${attr.os}"
value = "linux"

[[constraint]]
attribute = "${attr.kernel}"
operator = "version"
value = ">= 5.10, < 7"

[[constraint]]
attribute = "${attr.gpu}"
operator = "is_set"

[[affinity]]
attribute = "${node.datacenter}"
operator = "="
value = "dc2"
weight = -30

[[spread]]
attribute = "${attr.rack}"
weight = 80
[[spread.target]]
value = "r1"
percent = 60
[[spread.target]]
value = "r2"
percent = 40

[reschedule]
attempts = 3
interval = "2h"
delay = "10s"
delay_function = "exponential"
max_delay = "5m"
)",
                   "[task.resources]\nports = [8080, 9090]\ndevices = { \"nvidia/gpu\" = 2 }\n");
  EXPECT_EQ(job["node_pool"], "gpu");
  EXPECT_EQ(job["distinct_hosts"], true);
  EXPECT_EQ(job["constraint"], json::parse(R"([
    {"attribute": "${attr.os}", "operator": "=", "value": "linux"},
    {"attribute": "${attr.kernel}", "operator": "version", "value": ">= 5.10, < 7"},
    {"attribute": "${attr.gpu}", "operator": "is_set", "value": ""}])"));
  EXPECT_EQ(job["affinity"], json::parse(R"([
    {"attribute": "${node.datacenter}", "operator": "=", "value": "dc2", "weight": -30}])"));
  EXPECT_EQ(job["spread"], json::parse(R"([{"attribute": "${attr.rack}", "weight": 80,
    "target": [{"value": "r1", "percent": 60}, {"value": "r2", "percent": 40}]}])"));
  EXPECT_EQ(job["reschedule"], json::parse(R"({"attempts": 3, "interval_ms": 7200000,
    "delay_ms": 10000, "delay_function": "exponential", "max_delay_ms": 300000,
    "unlimited": false})"));
  EXPECT_EQ(job["task"][0]["resources"]["ports"], json::parse("[8080, 9090]"));
  EXPECT_EQ(job["task"][0]["resources"]["devices"], json::parse(R"({"nvidia/gpu": 2})"));
  EXPECT_EQ(validate_job_json(job, "web.json"), job);
  EXPECT_EQ(validate_job_json(json::parse(job.dump()), "web.json"), job);
}

TEST(JobSpecPlacement, UpdateIsReadWithDefaults) {
  EXPECT_EQ(parse("[update]\n")["update"], json::parse(R"({"max_parallel": 1,
    "min_healthy_time_ms": 10000, "healthy_deadline_ms": 300000, "auto_revert": false})"));
  json job = parse("[update]\nmax_parallel = 2\nmin_healthy_time = \"30s\"\n"
                   "healthy_deadline = \"10m\"\nauto_revert = true\n");
  EXPECT_EQ(job["update"], json::parse(R"({"max_parallel": 2, "min_healthy_time_ms": 30000,
    "healthy_deadline_ms": 600000, "auto_revert": true})"));
  EXPECT_EQ(validate_job_json(job, "web.json"), job);
  EXPECT_EQ(problem_of("type = \"batch\"\n[update]\n"),
            "web.toml line 3, update: only service jobs are updated in steps; leave it out");
  EXPECT_EQ(problem_of("[update]\nmin_healthy_time = \"5m\"\nhealthy_deadline = \"1m\"\n"),
            "web.toml line 2, update: healthy_deadline (1m) must be longer than min_healthy_time (5m)");
}

TEST(JobSpecPlacement, RescheduleDefaultsFollowTheJobType) {
  EXPECT_EQ(parse("[reschedule]\n")["reschedule"], json::parse(R"({"attempts": 0,
    "interval_ms": 3600000, "delay_ms": 30000, "delay_function": "exponential",
    "max_delay_ms": 3600000, "unlimited": true})"));
  EXPECT_EQ(parse("type = \"batch\"\n[reschedule]\n")["reschedule"], json::parse(R"({"attempts": 1,
    "interval_ms": 86400000, "delay_ms": 5000, "delay_function": "constant",
    "max_delay_ms": 3600000, "unlimited": false})"));
}

TEST(JobSpecPlacement, ProblemsNameTheKeyAndTheFix) {
  EXPECT_EQ(problem_of("[[constraint]]\nattribute = \"os\"\nvalue = \"linux\"\n"),
            "web.toml line 3, constraint[0].attribute: \"os\" is not a node attribute: write "
            "${attr.<name>}, ${node.name}, ${node.datacenter} or ${node.pool}");
  EXPECT_EQ(problem_of("[[constraint]]\nattribute = \"${attr.os}\"\noperator = \"~=\"\nvalue = \"x\"\n"),
            "web.toml line 4, constraint[0].operator: \"~=\" is not one of =, !=, <, <=, >, >=, "
            "version, regexp, set_contains, is_set or is_not_set; did you mean \"!=\"?");
  EXPECT_EQ(problem_of("[[constraint]]\nattribute = \"${attr.os}\"\n"),
            "web.toml line 2, constraint[0].value: is required: the value to compare with");
  EXPECT_EQ(problem_of("[[constraint]]\nattribute = \"${attr.os}\"\noperator = \"is_set\"\nvalue = \"x\"\n"),
            "web.toml line 5, constraint[0].value: is not used with operator \"is_set\"; leave it out");
  EXPECT_EQ(problem_of("[[constraint]]\nattribute = \"${attr.k}\"\noperator = \"version\"\nvalue = \"newest\"\n"),
            "web.toml line 5, constraint[0].value: \"newest\" is not a version condition: write it "
            "like \">= 1.2, < 2\"");
  EXPECT_NE(problem_of("[[constraint]]\nattribute = \"${attr.k}\"\noperator = \"regexp\"\nvalue = \"([\"\n")
                .find("constraint[0].value: \"([\" is not a regular expression"),
            std::string::npos);
  EXPECT_EQ(problem_of("[[affinity]]\nattribute = \"${attr.k}\"\nvalue = \"x\"\nweight = 0\n"),
            "web.toml line 5, affinity[0].weight: must not be 0 (an affinity of weight 0 does nothing)");
  EXPECT_EQ(problem_of("[[spread]]\nattribute = \"${attr.rack}\"\n[[spread.target]]\nvalue = \"a\"\n"
                       "percent = 70\n[[spread.target]]\nvalue = \"b\"\npercent = 40\n"),
            "web.toml line 4, spread[0].target: percents add up to 110; at most 100");
  EXPECT_EQ(problem_of("type = \"system\"\n[reschedule]\n"),
            "web.toml line 3, reschedule: system jobs are not rescheduled (they run on every "
            "node); leave it out");
  EXPECT_EQ(problem_of("[reschedule]\ndelay = \"1m\"\nmax_delay = \"10s\"\n"),
            "web.toml line 2, reschedule: max_delay (10s) is shorter than delay (1m)");
  EXPECT_EQ(problem_of("distinct_hosts = \"yes\"\n"),
            "web.toml line 2, distinct_hosts: must be true or false, got a string \"yes\"");
  EXPECT_EQ(problem_of("node_pool = \"GPU\"\n"),
            "web.toml line 2, node_pool: \"GPU\" is not a pool name: use 1 to 63 lowercase "
            "letters, digits and '-', starting and ending with a letter or digit");
  EXPECT_EQ(problem_of("", "[task.resources]\nports = [8080, 8080]\n"),
            "web.toml line 8, task[0].resources.ports[1]: 8080 is listed twice");
  EXPECT_EQ(problem_of("", "[task.resources]\nports = [70000]\n"),
            "web.toml line 8, task[0].resources.ports[0]: must be at most 65535, got 70000");
  EXPECT_EQ(problem_of("", "[task.resources]\ndevices = { gpu = 0 }\n"),
            "web.toml line 8, task[0].resources.devices.gpu: must be an integer from 1 to 1024, got 0");
  EXPECT_EQ(problem_of("constraints = []\n"),
            "web.toml line 2, constraints: unknown key; did you mean \"constraint\"?");
}

}  // namespace
