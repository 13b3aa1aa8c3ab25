// Job specs: canonical JSON and defaults, every problem with its message and
// line, the JSON form, limits and hostile input.
#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "jobspec.h"

namespace flotilla {
namespace {

using json = nlohmann::json;

// A valid one-task job; tests append keys or change lines of it.
const std::string kMinimal = R"(name = "web"

[[task]]
name = "server"
image = "busybox:latest"
command = "/bin/httpd"
)";

std::vector<JobSpecProblem> problems_of(const std::string &toml) {
  try {
    parse_jobspec(toml, "web.toml");
  } catch (const JobSpecInvalid &e) {
    return e.problems();
  }
  ADD_FAILURE() << "no problems in:\n" << toml;
  return {};
}

std::vector<JobSpecProblem> json_problems_of(const json &job) {
  try {
    validate_job_json(job, "web.json");
  } catch (const JobSpecInvalid &e) {
    return e.problems();
  }
  ADD_FAILURE() << "no problems in:\n" << job.dump();
  return {};
}

// The only problem, as to_string("web.toml") prints it.
std::string problem_of(const std::string &toml) {
  auto problems = problems_of(toml);
  if (problems.size() != 1) {
    std::string all;
    for (const auto &p : problems) all += "\n  " + p.to_string("web.toml");
    ADD_FAILURE() << problems.size() << " problems, expected one:" << all;
    return problems.empty() ? "" : problems[0].to_string("web.toml");
  }
  return problems[0].to_string("web.toml");
}

std::string json_problem_of(const json &job) {
  auto problems = json_problems_of(job);
  if (problems.size() != 1) {
    ADD_FAILURE() << problems.size() << " problems, expected one";
    return problems.empty() ? "" : problems[0].to_string("web.json");
  }
  EXPECT_EQ(problems[0].line, 0);
  return problems[0].to_string("web.json");
}

std::string read_file(const std::string &path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// kMinimal with extra lines in the task table (after "command").
std::string with_task_lines(const std::string &lines) {
  return kMinimal + lines;
}

// ---- canonical JSON and defaults ------------------------------------------

TEST(JobSpec, MinimalJobGetsEveryDefault) {
  json expected = json::parse(R"({
    "name": "web", "type": "service", "count": 1, "datacenters": ["dc1"], "priority": 50,
    "restart": {"attempts": 2, "interval_ms": 1800000, "delay_ms": 15000, "jitter": 0.25,
                "mode": "fail"},
    "task": [{
      "name": "server", "image": "busybox:latest", "command": "/bin/httpd", "args": [],
      "workdir": "", "user": "", "kill_timeout_ms": 5000, "kill_signal": "SIGTERM",
      "network": "bridge", "env": {},
      "resources": {"cpu": 100, "memory": 64, "memory_max": 64, "disk": 0, "pids": 1024},
      "logs": {"max_files": 5, "max_file_size": 10}
    }]
  })");
  EXPECT_EQ(parse_jobspec(kMinimal, "web.toml"), expected);
}

TEST(JobSpec, EveryKeyIsRead) {
  json job = parse_jobspec(R"(
name = "api-2"
type = "service"
count = 3
datacenters = ["dc1", "eu-west"]
priority = 70

[restart]
attempts = 4
interval = "1h30m"
delay = "250ms"
jitter = 0
mode = "delay"

[[task]]
name = "server"
image = "registry.example:5000/team/api:v1.2"
command = "/srv/api"
args = ["--port", "8080"]
workdir = "/srv"
user = "1000:1000"
kill_timeout = "1m30s"
kill_signal = "SIGINT"
network = "host"

[task.env]
MODE = "prod"
_X1 = ""

[task.resources]
cpu = 500
memory = 256
memory_max = 512
disk = 1024
pids = 64

[task.logs]
max_files = 2
max_file_size = 1

[[task]]
name = "sidecar"
image = "busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
command = "sleep"
args = ["3600"]
network = "none"
)",
                           "api.toml");
  json expected = json::parse(R"({
    "name": "api-2", "type": "service", "count": 3, "datacenters": ["dc1", "eu-west"],
    "priority": 70,
    "restart": {"attempts": 4, "interval_ms": 5400000, "delay_ms": 250, "jitter": 0.0,
                "mode": "delay"},
    "task": [{
      "name": "server", "image": "registry.example:5000/team/api:v1.2", "command": "/srv/api",
      "args": ["--port", "8080"], "workdir": "/srv", "user": "1000:1000",
      "kill_timeout_ms": 90000, "kill_signal": "SIGINT", "network": "host",
      "env": {"MODE": "prod", "_X1": ""},
      "resources": {"cpu": 500, "memory": 256, "memory_max": 512, "disk": 1024, "pids": 64},
      "logs": {"max_files": 2, "max_file_size": 1}
    }, {
      "name": "sidecar",
      "image": "busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
      "command": "sleep", "args": ["3600"], "workdir": "", "user": "", "kill_timeout_ms": 5000,
      "kill_signal": "SIGTERM", "network": "none", "env": {},
      "resources": {"cpu": 100, "memory": 64, "memory_max": 64, "disk": 0, "pids": 1024},
      "logs": {"max_files": 5, "max_file_size": 10}
    }]
  })");
  EXPECT_EQ(job, expected);
}

TEST(JobSpec, BatchJobsRestartThreeTimesADay) {
  json job = parse_jobspec("type = \"batch\"\n" + kMinimal, "web.toml");
  EXPECT_EQ(job["restart"], json::parse(R"({"attempts": 3, "interval_ms": 86400000,
              "delay_ms": 15000, "jitter": 0.25, "mode": "fail"})"));
}

TEST(JobSpec, SystemJobsHaveCountOne) {
  EXPECT_EQ(parse_jobspec("type = \"system\"\n" + kMinimal, "web.toml")["count"], 1);
  EXPECT_EQ(parse_jobspec("type = \"system\"\ncount = 1\n" + kMinimal, "web.toml")["count"], 1);
  EXPECT_EQ(problem_of("type = \"system\"\ncount = 3\n" + kMinimal),
            "web.toml line 2, count: system jobs run one allocation on every node: leave count "
            "out or set it to 1, got an integer 3");
}

TEST(JobSpec, ImagesWithoutTagOrDigestGetLatest) {
  auto image_of = [](const std::string &image) {
    std::string toml = kMinimal;
    toml.replace(toml.find("busybox:latest"), 14, image);
    return parse_jobspec(toml, "web.toml")["task"][0]["image"].get<std::string>();
  };
  EXPECT_EQ(image_of("busybox"), "busybox:latest");
  EXPECT_EQ(image_of("library/busybox:1.36"), "library/busybox:1.36");
  EXPECT_EQ(image_of("localhost:5000/app"), "localhost:5000/app:latest");
  EXPECT_EQ(image_of("localhost:5000/app:v1"), "localhost:5000/app:v1");
  EXPECT_EQ(image_of("docker.io/library/busybox"), "docker.io/library/busybox:latest");
  EXPECT_EQ(image_of("a_b__c-d--e/f.g:T_1.x-y"), "a_b__c-d--e/f.g:T_1.x-y");
  std::string digest = "sha256:" + std::string(64, 'a');
  EXPECT_EQ(image_of("busybox@" + digest), "busybox@" + digest);
  EXPECT_EQ(image_of("busybox:1.36@" + digest), "busybox:1.36@" + digest);
}

TEST(JobSpec, DatesAndNonsenseKeepTheirLinesInMessages) {
  auto problems = problems_of(R"(name = "web"
count = 2

[[task]]
name = "a"
image = "busybox"
command = "x"

[task.resources]
memory = -5
)");
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_EQ(problems[0].line, 10);
  EXPECT_EQ(problems[0].column, 10);
  EXPECT_EQ(problems[0].key, "task[0].resources.memory");
  EXPECT_EQ(problems[0].to_string("web.toml"),
            "web.toml line 10, task[0].resources.memory: must be a positive integer (MiB), got -5");
}

// ---- every problem --------------------------------------------------------

TEST(JobSpecProblems, JobName) {
  EXPECT_EQ(problem_of(kMinimal.substr(kMinimal.find('\n'))),
            "web.toml, name: is required: a job name like \"web\"");
  for (const char *bad : {"Web", "-web", "web-", "we_b", ""}) {
    std::string toml = kMinimal;
    toml.replace(0, 12, std::string("name = \"") + bad + "\"");
    std::string expected =
        *bad ? std::string("web.toml line 1, name: \"") + bad +
                   "\" is not a valid name: use 1 to 63 lowercase letters, digits and '-', "
                   "starting and ending with a letter or digit"
             : "web.toml line 1, name: must be a job name like \"web\", got an empty string";
    EXPECT_EQ(problem_of(toml), expected);
  }
  std::string toml = kMinimal;
  toml.replace(0, 12, "name = \"" + std::string(64, 'a') + "\"");
  EXPECT_NE(problem_of(toml).find("is not a valid name"), std::string::npos);
  toml.replace(0, toml.find('\n'), "name = \"" + std::string(63, 'a') + "\"");
  EXPECT_NO_THROW(parse_jobspec(toml, "web.toml"));
  EXPECT_EQ(problem_of("name = 7\n" + kMinimal.substr(kMinimal.find('\n'))),
            "web.toml line 1, name: must be a job name like \"web\", got an integer 7");
}

TEST(JobSpecProblems, TypeCountPriority) {
  EXPECT_EQ(problem_of("type = \"servce\"\n" + kMinimal),
            "web.toml line 1, type: \"servce\" is not one of service, batch or system; did you "
            "mean \"service\"?");
  EXPECT_EQ(problem_of("type = \"cron\"\n" + kMinimal),
            "web.toml line 1, type: \"cron\" is not one of service, batch or system");
  EXPECT_EQ(problem_of("count = -1\n" + kMinimal),
            "web.toml line 1, count: must be an integer from 0 to 100000, got -1");
  EXPECT_EQ(problem_of("count = 100001\n" + kMinimal),
            "web.toml line 1, count: must be at most 100000, got 100001");
  EXPECT_EQ(problem_of("count = 2.0\n" + kMinimal),
            "web.toml line 1, count: must be an integer from 0 to 100000, got a float 2");
  EXPECT_EQ(parse_jobspec("count = 0\n" + kMinimal, "web.toml")["count"], 0);
  EXPECT_EQ(problem_of("priority = 0\n" + kMinimal),
            "web.toml line 1, priority: must be an integer from 1 to 100, got 0");
  EXPECT_EQ(problem_of("priority = 101\n" + kMinimal),
            "web.toml line 1, priority: must be at most 100, got 101");
}

TEST(JobSpecProblems, Datacenters) {
  EXPECT_EQ(problem_of("datacenters = \"dc1\"\n" + kMinimal),
            "web.toml line 1, datacenters: must be an array of datacenter names, got a string "
            "\"dc1\"");
  EXPECT_EQ(problem_of("datacenters = []\n" + kMinimal),
            "web.toml line 1, datacenters: must list at least one datacenter, like [\"dc1\"]");
  auto problems = problems_of("datacenters = [\"dc1\", \"dc1\", \"EU\", 3]\n" + kMinimal);
  ASSERT_EQ(problems.size(), 3u);
  EXPECT_EQ(problems[0].to_string("web.toml"),
            "web.toml line 1, datacenters[1]: \"dc1\" is listed twice");
  EXPECT_EQ(problems[1].to_string("web.toml"),
            "web.toml line 1, datacenters[2]: \"EU\" is not a datacenter name: use 1 to 63 "
            "lowercase letters, digits and '-', starting and ending with a letter or digit");
  EXPECT_EQ(problems[2].to_string("web.toml"),
            "web.toml line 1, datacenters[3]: must be a datacenter name, got an integer 3");
  EXPECT_EQ(problems[1].column, 30);
}

TEST(JobSpecProblems, Restart) {
  auto restart = [](const std::string &lines) { return kMinimal + "\n[restart]\n" + lines; };
  // kMinimal is 6 lines; "[restart]" is line 8.
  EXPECT_EQ(problem_of(restart("attempts = -1\n")),
            "web.toml line 9, restart.attempts: must be an integer from 0 to 1000, got -1");
  EXPECT_EQ(problem_of(restart("jitter = 1.5\n")),
            "web.toml line 9, restart.jitter: must be a fraction from 0 to 1 (0.25 adds up to "
            "25% to each delay), got 1.5");
  EXPECT_EQ(problem_of(restart("jitter = nan\n")),
            "web.toml line 9, restart.jitter: must be a fraction from 0 to 1 (0.25 adds up to "
            "25% to each delay), got nan");
  EXPECT_EQ(problem_of(restart("jitter = \"0.1\"\n")),
            "web.toml line 9, restart.jitter: must be a fraction from 0 to 1 (0.25 adds up to "
            "25% to each delay), got a string \"0.1\"");
  EXPECT_EQ(parse_jobspec(restart("jitter = 1\n"), "w")["restart"]["jitter"], 1.0);
  EXPECT_EQ(problem_of(restart("mode = \"dely\"\n")),
            "web.toml line 9, restart.mode: \"dely\" is not one of fail or delay; did you mean "
            "\"delay\"?");
  EXPECT_EQ(problem_of(restart("attempts = 200\n")),
            "web.toml line 8, restart: attempts x delay (200 x 15s = 50m) is longer than "
            "interval (30m), so a task could never use all its attempts; lower attempts or "
            "delay, or raise interval");
  EXPECT_EQ(problem_of(restart("interval = \"0s\"\n")),
            "web.toml line 9, restart.interval: must be from 1s to 8760h, got \"0s\"");
  EXPECT_EQ(problem_of(restart("delay = \"25h\"\n")),
            "web.toml line 9, restart.delay: must be from 0s to 24h, got \"25h\"");
  EXPECT_EQ(problem_of(kMinimal + "restart = 3\n"),
            "web.toml line 7, task[0].restart: unknown key; accepted here: name, image, "
            "image_pull, command, args, workdir, user, kill_timeout, kill_signal, network, env, "
            "resources, logs, security, service");
  EXPECT_EQ(problem_of("restart = 3\n" + kMinimal),
            "web.toml line 1, restart: must be a table ([restart]), got an integer 3");
}

TEST(JobSpecProblems, Durations) {
  auto delay = [](const std::string &value) {
    return problem_of(kMinimal + "\n[restart]\ndelay = " + value + "\n");
  };
  const std::string like = "; write durations like \"15s\", \"1h30m\" or \"250ms\"";
  const std::string at = "web.toml line 9, restart.delay: ";
  EXPECT_EQ(delay("\"15 s\""), at + "\"15 s\" is not a duration: it contains a space" + like);
  EXPECT_EQ(delay("\"-1s\""),
            at + "\"-1s\" is not a duration: durations cannot be negative" + like);
  EXPECT_EQ(delay("\"99999999999999999999999h\""),
            at +
                "\"99999999999999999999999h\" is not a duration: it is longer than the maximum, "
                "8760h" +
                like);
  EXPECT_EQ(delay("\"15\""),
            at + "\"15\" is not a duration: a number has no unit (use h, m, s or ms)" + like);
  EXPECT_EQ(delay("\"15sec\""),
            at + "\"15sec\" is not a duration: unknown unit \"sec\" (use h, m, s or ms)" + like);
  EXPECT_EQ(
      delay("\"5us\""),
      at + "\"5us\" is not a duration: the unit \"us\" is finer than a millisecond; use ms" + like);
  EXPECT_EQ(delay("\"1.0005s\""),
            at + "\"1.0005s\" is not a duration: it is not a whole number of milliseconds" + like);
  EXPECT_EQ(delay("\"\""), at + "\"\" is not a duration: it is empty" + like);
  EXPECT_EQ(delay("15"), at + "must be a duration string, got an integer 15" + like);
  EXPECT_EQ(delay("12:00:00"), at + "must be a duration string, got a time 12:00:00" + like);
  EXPECT_EQ(problem_of(kMinimal + "\n[restart]\ndelay_ms = 100\n"),
            "web.toml line 9, restart.delay_ms: unknown key; in TOML write a duration as a "
            "string: delay = \"15s\"");
}

TEST(JobSpecProblems, TasksAsAWhole) {
  EXPECT_EQ(problem_of("name = \"web\"\n"),
            "web.toml, task: is required: a job needs at least one task ([[task]] in TOML)");
  EXPECT_EQ(problem_of("name = \"web\"\ntask = []\n"),
            "web.toml line 2, task: must have at least one task");
  EXPECT_EQ(problem_of("name = \"web\"\n[task]\nname = \"a\"\n"),
            "web.toml line 2, task: must be an array of tables, written [[task]], got a table");
  EXPECT_EQ(problem_of("name = \"web\"\ntask = [1]\n"),
            "web.toml line 2, task[0]: must be a table ([[task]]), got an integer 1");
  std::string two = kMinimal + "\n[[task]]\nname = \"server\"\nimage = \"b\"\ncommand = \"c\"\n";
  EXPECT_EQ(problem_of(two),
            "web.toml line 9, task[1].name: \"server\" is already the name of task[0]; task "
            "names must be unique within a job");
}

TEST(JobSpecProblems, RequiredTaskKeysPointAtTheTaskHeader) {
  auto problems = problems_of("name = \"web\"\n\n[[task]]\nargs = []\n");
  ASSERT_EQ(problems.size(), 2u);  // command is optional
  EXPECT_EQ(problems[0].to_string("web.toml"),
            "web.toml line 3, task[0].name: is required: a task name like \"server\"");
  EXPECT_EQ(problems[1].to_string("web.toml"),
            "web.toml line 3, task[0].image: is required: an image reference like "
            "\"busybox:1.36\"");
}

// Without command the image's Entrypoint and Cmd run (args, if given,
// replace Cmd): the canonical task has command "".
TEST(JobSpec, CommandIsOptionalAndThenTheImageDecides) {
  json j =
      parse_jobspec("name = \"web\"\n[[task]]\nname = \"server\"\nimage = \"nginx\"\n", "web.toml");
  EXPECT_EQ(j["task"][0]["command"], "");
  EXPECT_EQ(j["task"][0]["args"], json::array());
  json with_args = parse_jobspec(
      "name = \"web\"\n[[task]]\nname = \"server\"\nimage = \"nginx\"\nargs = [\"-g\", \"x\"]\n",
      "web.toml");
  EXPECT_EQ(with_args["task"][0]["command"], "");
  EXPECT_EQ(with_args["task"][0]["args"], json({"-g", "x"}));
}

TEST(JobSpecProblems, Images) {
  auto image = [](const std::string &ref) {
    std::string toml = kMinimal;
    toml.replace(toml.find("busybox:latest"), 14, ref);
    return problem_of(toml);
  };
  const std::string at = "web.toml line 5, task[0].image: ";
  const std::string hint =
      "; write name[:tag] or name@sha256:<64 hex digits>, like \"busybox:1.36\"";
  EXPECT_EQ(image("Busybox"), at +
                                  "\"Busybox\" is not an image reference: repository names "
                                  "must be lowercase" +
                                  hint);
  EXPECT_EQ(image("busybox@sha256:abc"),
            at +
                "\"busybox@sha256:abc\" is not an image reference: the digest must be sha256: "
                "followed by 64 lowercase hex digits" +
                hint);
  EXPECT_EQ(image("busybox:"), at +
                                   "\"busybox:\" is not an image reference: the tag must be 1 "
                                   "to 128 letters, digits, '_', '.' and '-', not starting "
                                   "with '.' or '-'" +
                                   hint);
  EXPECT_EQ(image(":1.0"),
            at + "\":1.0\" is not an image reference: the repository name is empty" + hint);
  EXPECT_EQ(image("a//b"), at +
                               "\"a//b\" is not an image reference: the repository name has an "
                               "empty path component" +
                               hint);
  EXPECT_EQ(image("my-.app"), at +
                                  "\"my-.app\" is not an image reference: the path component "
                                  "\"my-.app\" must be lowercase letters and digits joined by "
                                  "'.', '_', '__' or '-'" +
                                  hint);
  EXPECT_EQ(image("bad_host:x:1/app"),
            at +
                "\"bad_host:x:1/app\" is not an image reference: the registry \"bad_host:x:1\" "
                "is not a host[:port]" +
                hint);
  EXPECT_NE(image(std::string(300, 'a')).find("longer than 255"), std::string::npos);
}

TEST(JobSpecProblems, CommandArgsWorkdirUser) {
  auto task = [](const std::string &lines) { return problem_of(with_task_lines(lines)); };
  std::string toml = kMinimal;
  toml.replace(toml.find("\"/bin/httpd\""), 12, "\"\"");
  EXPECT_EQ(problem_of(toml),
            "web.toml line 6, task[0].command: must be the program to run, like \"/bin/httpd\" "
            "(or leave command out to run the image's Entrypoint and Cmd), got an empty string");
  EXPECT_EQ(task("args = \"-f\"\n"),
            "web.toml line 7, task[0].args: must be an array of strings, got a string \"-f\"");
  EXPECT_EQ(task("args = [\"-p\", 8080]\n"),
            "web.toml line 7, task[0].args[1]: must be a string, got an integer 8080");
  EXPECT_EQ(task("workdir = \"srv\"\n"),
            "web.toml line 7, task[0].workdir: must be an absolute path like \"/srv\", got "
            "\"srv\"");
  EXPECT_EQ(task("user = \"a b\"\n"),
            "web.toml line 7, task[0].user: \"a b\" is not a user: write uid[:gid] with numbers "
            "or names, like \"1000:1000\" or \"nobody\"");
  EXPECT_NE(task("user = \"4294967295\"\n").find("is not a user"), std::string::npos);
  EXPECT_NE(task("user = \"1:\"\n").find("is not a user"), std::string::npos);
  for (const char *ok : {"nobody", "0", "1000:1000", "www-data:adm", "svc$", "4294967294"})
    EXPECT_EQ(parse_jobspec(with_task_lines(std::string("user = \"") + ok + "\"\n"),
                            "w")["task"][0]["user"],
              ok);
}

TEST(JobSpecProblems, KillSignalAndNetwork) {
  auto task = [](const std::string &lines) { return problem_of(with_task_lines(lines)); };
  EXPECT_EQ(task("kill_signal = \"TERM\"\n"),
            "web.toml line 7, task[0].kill_signal: write signal names with the SIG prefix: "
            "\"SIGTERM\"");
  EXPECT_EQ(task("kill_signal = \"SIGTREM\"\n"),
            "web.toml line 7, task[0].kill_signal: \"SIGTREM\" is not one of SIGHUP, SIGINT, "
            "SIGQUIT, SIGKILL, SIGUSR1, SIGUSR2, SIGTERM, SIGWINCH or SIGPWR; did you mean "
            "\"SIGTERM\"?");
  EXPECT_EQ(task("kill_signal = 15\n"),
            "web.toml line 7, task[0].kill_signal: must be one of SIGHUP, SIGINT, SIGQUIT, "
            "SIGKILL, SIGUSR1, SIGUSR2, SIGTERM, SIGWINCH or SIGPWR, got an integer 15");
  EXPECT_EQ(task("kill_timeout = \"2h\"\n"),
            "web.toml line 7, task[0].kill_timeout: must be from 0s to 1h, got \"2h\"");
  EXPECT_EQ(task("network = \"bridged\"\n"),
            "web.toml line 7, task[0].network: \"bridged\" is not one of bridge, host or none; "
            "did you mean \"bridge\"?");
}

TEST(JobSpecProblems, ImagePullPolicy) {
  auto task = [](const std::string &lines) { return problem_of(with_task_lines(lines)); };
  EXPECT_EQ(task("image_pull = \"alway\"\n"),
            "web.toml line 7, task[0].image_pull: \"alway\" is not one of if_not_present, always "
            "or never; did you mean \"always\"?");
  EXPECT_EQ(task("image_pull = true\n"),
            "web.toml line 7, task[0].image_pull: must be one of if_not_present, always or never, "
            "got a boolean true");
  // Kept only when given, so that jobs written before it stay as they were.
  json job = parse_jobspec(with_task_lines("image_pull = \"always\"\n"), "web.toml");
  EXPECT_EQ(job["task"][0]["image_pull"], "always");
  EXPECT_FALSE(parse_jobspec(kMinimal, "web.toml")["task"][0].contains("image_pull"));
}

TEST(JobSpecProblems, Env) {
  auto env = [](const std::string &lines) { return problem_of(kMinimal + "[task.env]\n" + lines); };
  EXPECT_EQ(env("1FOO = \"x\"\n"),
            "web.toml line 8, task[0].env.1FOO: is not a variable name: use letters, digits and "
            "'_', not starting with a digit");
  EXPECT_EQ(env("\"MY VAR\" = \"x\"\n"),
            "web.toml line 8, task[0].env.\"MY VAR\": is not a variable name: use letters, "
            "digits and '_', not starting with a digit");
  EXPECT_EQ(env("PORT = 8080\n"),
            "web.toml line 8, task[0].env.PORT: must be a string (quote numbers and booleans: "
            "PORT = \"1\"), got an integer 8080");
  EXPECT_EQ(env("A = \"x\\u0000y\"\n"),
            "web.toml line 8, task[0].env.A: must not contain NUL characters: \"x\\x00y\"");
  EXPECT_EQ(problem_of(kMinimal + "env = [\"A=b\"]\n"),
            "web.toml line 7, task[0].env: must be a table ([task.env]), got an array");
}

TEST(JobSpecProblems, ResourcesAndLogs) {
  auto res = [](const std::string &lines) {
    return problem_of(kMinimal + "[task.resources]\n" + lines);
  };
  EXPECT_EQ(res("memory = -5\n"),
            "web.toml line 8, task[0].resources.memory: must be a positive integer (MiB), got -5");
  EXPECT_EQ(res("memory = 0\n"),
            "web.toml line 8, task[0].resources.memory: must be a positive integer (MiB), got 0");
  EXPECT_EQ(res("memory = 99999999\n"),
            "web.toml line 8, task[0].resources.memory: must be at most 16777216 (MiB), got "
            "99999999");
  EXPECT_EQ(res("cpu = \"100\"\n"),
            "web.toml line 8, task[0].resources.cpu: must be a positive integer (MHz), got a "
            "string \"100\"");
  EXPECT_EQ(res("memory = 128\nmemory_max = 64\n"),
            "web.toml line 9, task[0].resources.memory_max: must be at least memory (128 MiB), "
            "got 64");
  EXPECT_EQ(res("disk = -1\n"),
            "web.toml line 8, task[0].resources.disk: must be zero or a positive integer (MiB), "
            "got -1");
  EXPECT_EQ(res("pids = 0\n"),
            "web.toml line 8, task[0].resources.pids: must be a positive integer (processes and "
            "threads), got 0");
  EXPECT_EQ(res("memroy = 64\n"),
            "web.toml line 8, task[0].resources.memroy: unknown key; did you mean \"memory\"?");
  EXPECT_EQ(parse_jobspec(kMinimal + "[task.resources]\nmemory = 300\n",
                          "w")["task"][0]["resources"]["memory_max"],
            300);
  auto logs = [](const std::string &lines) {
    return problem_of(kMinimal + "[task.logs]\n" + lines);
  };
  EXPECT_EQ(logs("max_files = 0\n"),
            "web.toml line 8, task[0].logs.max_files: must be an integer from 1 to 100, got 0");
  EXPECT_EQ(logs("max_file_size = 2048\n"),
            "web.toml line 8, task[0].logs.max_file_size: must be at most 1024 (MiB), got 2048");
  EXPECT_EQ(logs("max_files = 1979-05-27\n"),
            "web.toml line 8, task[0].logs.max_files: must be an integer from 1 to 100, got a "
            "date 1979-05-27");
}

TEST(JobSpecProblems, UnknownKeysSuggestOrListWhatIsAccepted) {
  EXPECT_EQ(problem_of(with_task_lines("comand = \"/bin/sh\"\n")),
            "web.toml line 7, task[0].comand: unknown key; did you mean \"command\"?");
  EXPECT_EQ(problem_of("nmae = \"x\"\n" + kMinimal),
            "web.toml line 1, nmae: unknown key; did you mean \"name\"?");
  EXPECT_EQ(problem_of(kMinimal + "[[tasks]]\nname = \"x\"\n"),
            "web.toml line 7, tasks: unknown key; did you mean \"task\"?");
  // Sections that later versions add are refused until then.
  const std::string job_keys =
      "name, type, count, datacenters, priority, restart, task, node_pool, distinct_hosts, "
      "constraint, affinity, spread, reschedule, update";
  EXPECT_EQ(problem_of(kMinimal + "\n[[service]]\nname = \"web\"\n"),
            "web.toml line 8, service: unknown key; accepted here: " + job_keys);
  EXPECT_EQ(problem_of(kMinimal + "[network]\nmode = \"bridge\"\n"),
            "web.toml line 7, network: unknown key; accepted here: " + job_keys);
  EXPECT_EQ(problem_of(kMinimal + "[group]\ncount = 1\n"),
            "web.toml line 7, group: unknown key; accepted here: " + job_keys);
  EXPECT_EQ(problem_of("constraints = []\n" + kMinimal),
            "web.toml line 1, constraints: unknown key; did you mean \"constraint\"?");
}

// ---- [task.security] ------------------------------------------------------

TEST(JobSpecSecurity, TableIsCanonicalisedOnlyWhenGiven) {
  json plain = parse_jobspec(kMinimal, "web.toml");
  EXPECT_FALSE(plain["task"][0].contains("security"));
  json job = parse_jobspec(kMinimal + R"([task.security]
profile = "restricted"
cap_add = ["NET_BIND_SERVICE"]
cap_drop = ["ALL"]
user = "65534:65534"
read_only_rootfs = true
)",
                           "web.toml");
  json expected = {{"profile", "restricted"},  {"cap_add", {"NET_BIND_SERVICE"}},
                   {"cap_drop", {"ALL"}},      {"user", "65534:65534"},
                   {"read_only_rootfs", true}, {"no_new_privileges", nullptr}};
  EXPECT_EQ(job["task"][0]["security"], expected);
  // The canonical JSON goes back in unchanged, null included.
  EXPECT_EQ(validate_job_json(job, "web.json"), job);
  json empty = parse_jobspec(kMinimal + "[task.security]\nno_new_privileges = false\n", "web.toml");
  EXPECT_EQ(empty["task"][0]["security"]["profile"], "");
  EXPECT_EQ(empty["task"][0]["security"]["no_new_privileges"], false);
}

TEST(JobSpecSecurity, BadValuesNameTheKey) {
  EXPECT_EQ(problem_of(kMinimal + "[task.security]\nseccomp = \"default\"\n"),
            "web.toml line 8, task[0].security.seccomp: unknown key; accepted here: profile, "
            "cap_add, cap_drop, user, read_only_rootfs, no_new_privileges");
  EXPECT_EQ(problem_of(kMinimal + "[task.security]\nprofile = \"Default\"\n"),
            "web.toml line 8, task[0].security.profile: \"Default\" is not a profile name: use 1 "
            "to 63 lowercase letters, digits and '-', starting and ending with a letter or digit");
  EXPECT_EQ(problem_of(kMinimal + "[task.security]\ncap_add = [\"NET ADMIN\"]\n"),
            "web.toml line 8, task[0].security.cap_add[0]: \"NET ADMIN\" is not a capability "
            "name: write it like \"NET_ADMIN\" or \"CAP_NET_ADMIN\", or \"ALL\"");
  EXPECT_NE(problem_of(kMinimal + "[task.security]\nuser = \"nobody\"\n")
                .find("task[0].security.user: \"nobody\" is not a numeric user"),
            std::string::npos);
  EXPECT_EQ(problem_of(kMinimal + "[task.security]\nread_only_rootfs = \"yes\"\n"),
            "web.toml line 8, task[0].security.read_only_rootfs: must be true or false, got a "
            "string \"yes\"");
  EXPECT_EQ(problem_of(kMinimal + "security = 1\n"),
            "web.toml line 7, task[0].security: must be a table ([task.security]), got an "
            "integer 1");
}

TEST(JobSpecService, ServicesAndChecksAreCanonicalised) {
  json plain = parse_jobspec(kMinimal, "web.toml");
  EXPECT_FALSE(plain["task"][0].contains("service"));
  json job = parse_jobspec(kMinimal + R"(
[[task.service]]
name = "web"
port = 8080
tags = ["v1", "canary"]

  [[task.service.check]]
  type = "http"
  path = "/health"
  interval = "1s"
  timeout = "500ms"
  failures_before_critical = 3

  [[task.service.check]]
  type = "tcp"

  [[task.service.check]]
  type = "exec"
  command = "test"
  args = ["-f", "/healthy"]
  interval = "2s"
  timeout = "1s"
  failures_before_critical = 2

  [[task.service.check]]
  type = "grpc"
  grpc_service = "helloworld.Greeter"
  port = 9090

  [[task.service.check]]
  type = "grpc"

  [[task.service.check]]
  type = "http"
  tls = true
  tls_server_name = "web.internal"
  tls_skip_verify = false

[[task.service]]
name = "metrics"
port = 9100
)",
                           "web.toml");
  const json &svc = job["task"][0]["service"];
  ASSERT_EQ(svc.size(), 2u);
  EXPECT_EQ(svc[0]["name"], "web");
  EXPECT_EQ(svc[0]["port"], 8080);
  EXPECT_EQ(svc[0]["tags"], json({"v1", "canary"}));
  json http = {{"type", "http"},
               {"interval_ms", 1000},
               {"timeout_ms", 500},
               {"success_before_passing", 1},
               {"failures_before_critical", 3},
               {"path", "/health"}};
  EXPECT_EQ(svc[0]["check"][0], http);
  EXPECT_EQ(svc[0]["check"][1], json({{"type", "tcp"},
                                      {"interval_ms", 10000},
                                      {"timeout_ms", 2000},
                                      {"success_before_passing", 1},
                                      {"failures_before_critical", 1}}));
  EXPECT_EQ(svc[1]["check"], json::array());
  EXPECT_EQ(svc[0]["check"][2], json({{"type", "exec"},
                                      {"interval_ms", 2000},
                                      {"timeout_ms", 1000},
                                      {"success_before_passing", 1},
                                      {"failures_before_critical", 2},
                                      {"command", "test"},
                                      {"args", {"-f", "/healthy"}}}));
  EXPECT_EQ(svc[0]["check"][3], json({{"type", "grpc"},
                                      {"interval_ms", 10000},
                                      {"timeout_ms", 2000},
                                      {"success_before_passing", 1},
                                      {"failures_before_critical", 1},
                                      {"grpc_service", "helloworld.Greeter"},
                                      {"port", 9090}}));
  EXPECT_FALSE(svc[0]["check"][4].contains("grpc_service")) << "none: the whole server";
  EXPECT_FALSE(svc[0]["check"][0].contains("tls")) << "plaintext unless asked";
  EXPECT_EQ(svc[0]["check"][5], json({{"type", "http"},
                                      {"interval_ms", 10000},
                                      {"timeout_ms", 2000},
                                      {"success_before_passing", 1},
                                      {"failures_before_critical", 1},
                                      {"path", "/"},
                                      {"tls", true},
                                      {"tls_skip_verify", false},
                                      {"tls_server_name", "web.internal"}}));
  // The canonical JSON goes back in unchanged.
  EXPECT_EQ(validate_job_json(job, "web.json"), job);
}

TEST(JobSpecService, BadValuesNameTheLineAndKey) {
  const std::string head = kMinimal + "[[task.service]]\n";  // line 7
  EXPECT_EQ(problem_of(head + "name = \"Web\"\nport = 80\n"),
            "web.toml line 8, task[0].service[0].name: \"Web\" is not a valid service name (it "
            "becomes a DNS label): use 1 to 63 lowercase letters, digits and '-', starting and "
            "ending with a letter or digit");
  EXPECT_EQ(problem_of(head + "name = \"web\"\nport = 70000\n"),
            "web.toml line 9, task[0].service[0].port: must be at most 65535, got 70000");
  EXPECT_NE(problem_of(head + "name = \"web\"\nport = \"http\"\n")
                .find("line 9, task[0].service[0].port: \"http\" is not a port mapping of this "
                      "task; it has no named mappings"),
            std::string::npos);
  EXPECT_NE(problem_of(head + "name = \"web\"\n").find("task[0].service[0].port: is required"),
            std::string::npos);
  EXPECT_EQ(problem_of(head + "name = \"web\"\nport = 80\ntags = [\"a\", \"a\"]\n"),
            "web.toml line 10, task[0].service[0].tags[1]: \"a\" is listed twice");
  const std::string check = head + "name = \"web\"\nport = 80\n[[task.service.check]]\n";  // 10
  EXPECT_NE(
      problem_of(check + "type = \"smoke\"\n").find("line 11, task[0].service[0].check[0].type"),
      std::string::npos);
  // grpc: grpc_service is a string and belongs to grpc alone.
  EXPECT_EQ(problem_of(check + "type = \"grpc\"\ngrpc_service = \"a b\"\n"),
            "web.toml line 12, task[0].service[0].check[0].grpc_service: \"a b\" is not a gRPC "
            "service name: at most 256 characters, no spaces or quotes");
  EXPECT_NE(problem_of(check + "type = \"grpc\"\ngrpc_service = 3\n")
                .find("line 12, task[0].service[0].check[0].grpc_service: must be"),
            std::string::npos);
  EXPECT_EQ(problem_of(check + "type = \"http\"\ngrpc_service = \"x\"\n"),
            "web.toml line 12, task[0].service[0].check[0].grpc_service: is only used with type = "
            "\"grpc\"");
  EXPECT_NE(problem_of(check + "type = \"exec\"\ncommand = \"test\"\ngrpc_service = \"x\"\n")
                .find("line 13, task[0].service[0].check[0].grpc_service: is only used with type = "
                      "\"grpc\""),
            std::string::npos);
  // TLS: http and grpc only; tls_skip_verify and tls_server_name need tls.
  EXPECT_EQ(problem_of(check + "type = \"tcp\"\ntls = true\n"),
            "web.toml line 12, task[0].service[0].check[0].tls: is only used with type = "
            "\"http\" or \"grpc\"");
  EXPECT_EQ(problem_of(check + "type = \"http\"\ntls = \"yes\"\n"),
            "web.toml line 12, task[0].service[0].check[0].tls: must be true or false, got a "
            "string \"yes\"");
  EXPECT_EQ(problem_of(check + "type = \"http\"\ntls_skip_verify = true\n"),
            "web.toml line 12, task[0].service[0].check[0].tls_skip_verify: needs tls = true");
  EXPECT_EQ(problem_of(check + "type = \"grpc\"\ntls = true\ntls_server_name = \"a b\"\n"),
            "web.toml line 13, task[0].service[0].check[0].tls_server_name: \"a b\" is not a "
            "host name: letters, digits, '.' and '-', at most 253 characters");
  EXPECT_NE(problem_of(check + "type = \"exec\"\ncommand = \"test\"\ntls = true\n")
                .find("line 13, task[0].service[0].check[0].tls: is only used with type = "
                      "\"http\" or \"grpc\""),
            std::string::npos);
  // exec: command is required, a string; args strings; no port, no path.
  EXPECT_EQ(problem_of(check + "type = \"exec\"\n"),
            "web.toml line 10, task[0].service[0].check[0].command: is required: the program an "
            "exec check runs in the task's container, like \"test\" or \"/bin/check\" (its "
            "arguments go in args)");
  EXPECT_NE(problem_of(check + "type = \"exec\"\ncommand = [\"test\"]\n")
                .find("line 12, task[0].service[0].check[0].command: must be"),
            std::string::npos);
  EXPECT_NE(problem_of(check + "type = \"exec\"\ncommand = \"test\"\nargs = [\"-f\", 3]\n")
                .find("line 13, task[0].service[0].check[0].args[1]: must be"),
            std::string::npos);
  EXPECT_NE(problem_of(check + "type = \"exec\"\ncommand = \"test\"\nport = 80\n")
                .find("line 13, task[0].service[0].check[0].port: is not used with type = \"exec\""),
            std::string::npos);
  EXPECT_NE(problem_of(check + "type = \"tcp\"\ncommand = \"test\"\n")
                .find("line 12, task[0].service[0].check[0].command: is only used with type = "
                      "\"exec\""),
            std::string::npos);
  EXPECT_NE(problem_of(check + "type = \"tcp\"\ninterval = \"1s\"\ntimeout = \"2s\"\n")
                .find("line 13, task[0].service[0].check[0].timeout: timeout (2s) is longer than "
                      "interval (1s)"),
            std::string::npos);
  EXPECT_NE(problem_of(check + "type = \"tcp\"\npath = \"/x\"\n")
                .find("check[0].path: is only used with type = \"http\""),
            std::string::npos);
  EXPECT_NE(problem_of(check + "type = \"http\"\nfailures_before_critical = 0\n")
                .find("line 12, task[0].service[0].check[0].failures_before_critical"),
            std::string::npos);
  EXPECT_NE(problem_of(check + "type = \"tcp\"\nintervall = \"1s\"\n")
                .find("check[0].intervall: unknown key"),
            std::string::npos);
}

// [task.resources] ports may hold named mappings { name, host, to }; a
// service's or a check's port may name one, and resolves to its container
// port (to). The scheduler still sees host ports.
TEST(JobSpecService, NamedPortMappingsResolveToTheirContainerPort) {
  json job = parse_jobspec(kMinimal + R"(
[task.resources]
ports = [9000, { name = "http", host = 8081, to = 80 }, { name = "admin", host = 9100 }]

[[task.service]]
name = "web"
port = "http"
  [[task.service.check]]
  type = "tcp"
  port = "admin"
)",
                           "web.toml");
  const json &t = job["task"][0];
  EXPECT_EQ(t["resources"]["ports"], json::parse(R"([9000, {"name": "http", "host": 8081, "to": 80},
                            {"name": "admin", "host": 9100, "to": 9100}])"));
  EXPECT_EQ(t["service"][0]["port"], 80);
  EXPECT_EQ(t["service"][0]["check"][0]["port"], 9100);
  EXPECT_EQ(validate_job_json(job, "web.json"), job);

  const std::string res = kMinimal + "[task.resources]\n";  // line 7
  EXPECT_EQ(problem_of(res + "ports = [{ name = \"http\", to = 80 }]\n"),
            "web.toml line 8, task[0].resources.ports[0].host: is required: the host port, like "
            "8080");
  EXPECT_EQ(
      problem_of(res + "ports = [{ name = \"Http\", host = 80 }]\n")
          .find("web.toml line 8, task[0].resources.ports[0].name: \"Http\" is not a valid name"),
      0u);
  EXPECT_EQ(
      problem_of(res + "ports = [{ name = \"a\", host = 80 },\n  { name = \"a\", host = 81 }]\n"),
      "web.toml line 9, task[0].resources.ports[1].name: \"a\" names two mappings");
  EXPECT_EQ(problem_of(res + "ports = [80, { name = \"a\", host = 80 }]\n"),
            "web.toml line 8, task[0].resources.ports[1]: 80 is listed twice");
  EXPECT_NE(problem_of(res + "ports = [{ name = \"a\", host = 80, colour = 1 }]\n")
                .find("task[0].resources.ports[0].colour: unknown key"),
            std::string::npos);
  EXPECT_EQ(problem_of(res + "ports = [{ name = \"a\", host = 80, to = 0 }]\n"),
            "web.toml line 8, task[0].resources.ports[0].to: must be a port number from 1 to 65535, "
            "got 0");
  // A host-network task cannot move its port.
  EXPECT_NE(problem_of(kMinimal + "network = \"host\"\n" + res.substr(kMinimal.size()) +
                       "ports = [{ name = \"a\", host = 80, to = 81 }]\n")
                .find("line 9, task[0].resources.ports[0].to: a host-network task listens on its "
                      "host port itself"),
            std::string::npos);
  // An unknown name, with the names the task has.
  EXPECT_EQ(problem_of(res + "ports = [{ name = \"http\", host = 8081, to = 80 }]\n"
                             "[[task.service]]\nname = \"web\"\nport = \"htp\"\n"),
            "web.toml line 11, task[0].service[0].port: \"htp\" is not a port mapping of this "
            "task; its named mappings are \"http\", or give the container port number, like 8080");
  EXPECT_NE(problem_of(res + "ports = [{ name = \"http\", host = 8081, to = 80 }]\n"
                             "[[task.service]]\nname = \"web\"\nport = 80\n"
                             "[[task.service.check]]\ntype = \"tcp\"\nport = \"nope\"\n")
                .find("line 14, task[0].service[0].check[0].port: \"nope\" is not a port mapping"),
            std::string::npos);
}

TEST(JobSpecService, CheckRestartIsCanonicalisedAndCheckedByKey) {
  const std::string svc = kMinimal + "[[task.service]]\nname = \"web\"\nport = 80\n";  // 7-9
  json job =
      parse_jobspec(svc + "[task.service.check_restart]\nlimit = 2\ngrace = \"3s\"\n", "web.toml");
  EXPECT_EQ(job["task"][0]["service"][0]["check_restart"],
            json({{"limit", 2}, {"grace_ms", 3000}}));
  EXPECT_EQ(validate_job_json(job, "web.json"), job);
  job = parse_jobspec(svc + "[task.service.check_restart]\n", "web.toml");
  EXPECT_EQ(job["task"][0]["service"][0]["check_restart"],
            json({{"limit", 3}, {"grace_ms", 1000}}));
  EXPECT_FALSE(parse_jobspec(svc, "web.toml")["task"][0]["service"][0].contains("check_restart"));
  EXPECT_EQ(problem_of(svc + "[task.service.check_restart]\nlimit = 0\n"),
            "web.toml line 11, task[0].service[0].check_restart.limit: must be an integer from 1 to "
            "100, got 0");
  EXPECT_NE(problem_of(svc + "[task.service.check_restart]\ngrace = \"soon\"\n")
                .find("line 11, task[0].service[0].check_restart.grace"),
            std::string::npos);
  EXPECT_NE(problem_of(svc + "[task.service.check_restart]\nlimits = 2\n")
                .find("line 11, task[0].service[0].check_restart.limits: unknown key"),
            std::string::npos);
  EXPECT_NE(problem_of(svc + "check_restart = 3\n")
                .find("line 10, task[0].service[0].check_restart: must be a table"),
            std::string::npos);
}

TEST(JobSpecService, NamesAreUniqueWithinTheJob) {
  auto problems = problems_of(R"(name = "web"

[[task]]
name = "a"
image = "busybox:latest"
command = "/bin/httpd"
  [[task.service]]
  name = "web"
  port = 80

[[task]]
name = "b"
image = "busybox:latest"
command = "/bin/httpd"
  [[task.service]]
  name = "web"
  port = 81
)");
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_EQ(problems[0].to_string("web.toml"),
            "web.toml line 16, task[1].service[0].name: \"web\" is already the name of "
            "task[0].service[0]; service names must be unique within a job");
}

TEST(JobSpecProblems, EveryProblemIsCollectedInFileOrder) {
  const std::string toml = R"(name = "Web"
count = -1
[[task]]
name = "a"
image = "busybox"
comand = "x"
[task.resources]
memory = -5
)";
  try {
    parse_jobspec(toml, "web.toml");
    FAIL() << "no problems";
  } catch (const JobSpecInvalid &e) {
    EXPECT_EQ(e.source(), "web.toml");
    ASSERT_EQ(e.problems().size(), 4u);
    EXPECT_STREQ(e.what(),
                 "web.toml line 1, name: \"Web\" is not a valid name: use 1 to 63 lowercase "
                 "letters, digits and '-', starting and ending with a letter or digit\n"
                 "web.toml line 2, count: must be an integer from 0 to 100000, got -1\n"
                 "web.toml line 6, task[0].comand: unknown key; did you mean \"command\"?\n"
                 "web.toml line 8, task[0].resources.memory: must be a positive integer (MiB), "
                 "got -5");
  }
}

TEST(JobSpecProblems, SyntaxErrorsHaveLineAndColumn) {
  auto problems = problems_of("name = \"web\"\n\n[[task]\n");
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_EQ(problems[0].line, 3);
  EXPECT_GT(problems[0].column, 0);
  EXPECT_EQ(problems[0].key, "");
  EXPECT_EQ(
      problems[0].to_string("web.toml").rfind("web.toml line 3: TOML syntax error at column ", 0),
      0u);
}

// ---- limits ---------------------------------------------------------------

TEST(JobSpecLimits, WholeSpecAtMostOneMiB) {
  std::string big = kMinimal + "# " + std::string(kJobSpecMaxBytes, 'x') + "\n";
  EXPECT_EQ(problem_of(big), "web.toml: is " + std::to_string(big.size()) +
                                 " bytes; a job spec can be at most 1 MiB (1048576 bytes)");
  json job = parse_jobspec(kMinimal, "w");
  job["task"][0]["env"]["BIG"] = std::string(kJobSpecMaxBytes, 'x');
  EXPECT_EQ(json_problem_of(job),
            "web.json: is larger than 1 MiB as JSON; a job spec can be at most 1 MiB (1048576 "
            "bytes)");
}

TEST(JobSpecLimits, AtMostAHundredTasks) {
  std::string toml = "name = \"web\"\n";
  for (int i = 0; i < 101; ++i)
    toml += "[[task]]\nname = \"t" + std::to_string(i) + "\"\nimage = \"b\"\ncommand = \"c\"\n";
  EXPECT_EQ(problem_of(toml), "web.toml line 2, task: has 101 tasks; a job can have at most 100");
  toml = "name = \"web\"\n";
  for (int i = 0; i < 100; ++i)
    toml += "[[task]]\nname = \"t" + std::to_string(i) + "\"\nimage = \"b\"\ncommand = \"c\"\n";
  EXPECT_EQ(parse_jobspec(toml, "w")["task"].size(), 100u);
}

TEST(JobSpecLimits, StringsAtMost4096Bytes) {
  EXPECT_EQ(problem_of(with_task_lines("args = [\"" + std::string(4097, 'a') + "\"]\n")),
            "web.toml line 7, task[0].args[0]: is 4097 bytes long; strings can be at most 4096 "
            "bytes");
  EXPECT_NO_THROW(
      parse_jobspec(with_task_lines("args = [\"" + std::string(4096, 'a') + "\"]\n"), "w"));
}

TEST(JobSpecLimits, EnvAtMostAThousandEntries) {
  std::string env = kMinimal + "[task.env]\n";
  for (int i = 0; i < 1001; ++i) env += "V" + std::to_string(i) + " = \"x\"\n";
  EXPECT_EQ(problem_of(env),
            "web.toml line 7, task[0].env: has 1001 variables; at most 1000 are allowed");
}

TEST(JobSpecLimits, AtMostAHundredProblemsAreListed) {
  std::string toml = kMinimal;
  for (int i = 0; i < 150; ++i) toml += "bad" + std::to_string(i) + " = 1\n";
  auto problems = problems_of(toml);
  ASSERT_EQ(problems.size(), kJobSpecMaxProblems + 1);
  EXPECT_EQ(problems.back().to_string("web.toml"), "web.toml: and 50 more problems not shown");
}

// ---- the JSON form ----------------------------------------------------------

TEST(JobSpecJson, CanonicalFormIsAFixedPoint) {
  const std::vector<std::string> specs = {
      kMinimal,
      "type = \"batch\"\ncount = 0\n" + kMinimal,
      "type = \"system\"\n" + kMinimal + "[task.resources]\nmemory = 10\nmemory_max = 20\n",
      read_file(FLOTILLA_TEST_SOURCE_DIR "/examples/jobs/hello.toml"),
      read_file(FLOTILLA_TEST_SOURCE_DIR "/examples/jobs/web.toml"),
  };
  for (const std::string &spec : specs) {
    json canonical = parse_jobspec(spec, "x.toml");
    EXPECT_EQ(validate_job_json(canonical, "x.json"), canonical) << spec;
    // Through text too, as an API client would send it.
    EXPECT_EQ(validate_job_json(json::parse(canonical.dump()), "x.json"), canonical) << spec;
  }
}

TEST(JobSpecJson, DefaultsAreFilledInFromJsonToo) {
  json job =
      validate_job_json(json::parse(R"({"name": "web", "task": [{"name": "a", "image": "busybox",
                      "command": "x", "kill_timeout_ms": 0}]})"),
                        "web.json");
  json expected = parse_jobspec(kMinimal, "web.toml");
  expected["task"][0]["name"] = "a";
  expected["task"][0]["command"] = "x";
  expected["task"][0]["kill_timeout_ms"] = 0;
  EXPECT_EQ(job, expected);
}

TEST(JobSpecJson, ProblemsNameKeysAsSpelledInJson) {
  json job = parse_jobspec(kMinimal, "w");
  job["restart"]["delay_ms"] = -1;
  EXPECT_EQ(json_problem_of(job),
            "web.json, restart.delay_ms: must be an integer of milliseconds from 0 to 86400000 "
            "(from 0s to 24h), got -1");
  job = parse_jobspec(kMinimal, "w");
  job["restart"]["interval_ms"] = 1LL << 62;
  EXPECT_EQ(json_problem_of(job),
            "web.json, restart.interval_ms: must be at most 31536000000 (milliseconds), got "
            "4611686018427387904");
  job = parse_jobspec(kMinimal, "w");
  job["restart"].erase("delay_ms");
  job["restart"]["delay"] = "15s";
  EXPECT_EQ(json_problem_of(job),
            "web.json, restart.delay: unknown key; in JSON a duration is an integer of "
            "milliseconds: \"delay_ms\"");
  job = parse_jobspec(kMinimal, "w");
  job["task"][0]["resources"]["memory"] = -5;
  EXPECT_EQ(json_problem_of(job),
            "web.json, task[0].resources.memory: must be a positive integer (MiB), got -5");
  job = parse_jobspec(kMinimal, "w");
  job["task"][0]["resources"]["memory"] = 18446744073709551615ULL;
  EXPECT_EQ(json_problem_of(job),
            "web.json, task[0].resources.memory: must be at most 16777216 (MiB), got "
            "18446744073709551615");
  job = parse_jobspec(kMinimal, "w");
  job["task"] = json::object();
  EXPECT_EQ(json_problem_of(job), "web.json, task: must be an array of objects, got an object");
  job = parse_jobspec(kMinimal, "w");
  job["restart"] = nullptr;
  EXPECT_EQ(json_problem_of(job), "web.json, restart: must be an object, got null");
  EXPECT_EQ(json_problem_of(json::array()), "web.json: a job must be a JSON object, got an array");
}

TEST(JobSpecJson, HostileValuesGiveCleanProblems) {
  json job = parse_jobspec(kMinimal, "w");
  job["task"][0]["command"] = "\xff\xfe";
  EXPECT_EQ(json_problem_of(job), "web.json, task[0].command: is not valid UTF-8: \"\\xFF\\xFE\"");
  job = parse_jobspec(kMinimal, "w");
  job["task"][0]["command"] = std::string("a\0b", 3);
  EXPECT_EQ(json_problem_of(job),
            "web.json, task[0].command: must not contain NUL characters: \"a\\x00b\"");
  // Invalid UTF-8 in a key: the message stays printable.
  job = parse_jobspec(kMinimal, "w");
  job["\xc3"] = 1;
  EXPECT_EQ(json_problem_of(job),
            "web.json, \"\\xC3\": unknown key; accepted here: name, type, count, datacenters, "
            "priority, restart, task, node_pool, distinct_hosts, constraint, affinity, spread, "
            "reschedule, update");
  // Deep nesting under an unknown key is never walked recursively.
  json deep = 1;
  for (int i = 0; i < 100000; ++i) deep = json::array({std::move(deep)});
  job = parse_jobspec(kMinimal, "w");
  job["extra"] = std::move(deep);
  EXPECT_EQ(json_problem_of(job).rfind("web.json, extra: unknown key", 0), 0u);
}

// ---- hostile TOML -----------------------------------------------------------

TEST(JobSpecHostile, NulBytesAndInvalidUtf8AreSyntaxErrors) {
  std::string nul = kMinimal;
  nul.insert(3, 1, '\0');
  EXPECT_NE(problem_of(nul).find("TOML syntax error"), std::string::npos);
  std::string utf8 = kMinimal;
  utf8.replace(utf8.find("/bin/httpd"), 1, "\xc3\x28");
  EXPECT_NE(problem_of(utf8).find("TOML syntax error"), std::string::npos);
  EXPECT_EQ(problem_of(with_task_lines("workdir = \"/a\\u0000\"\n")),
            "web.toml line 7, task[0].workdir: must not contain NUL characters: \"/a\\x00\"");
}

TEST(JobSpecHostile, DeepNestingIsRefusedBeforeParsing) {
  std::string dotted = "a";
  for (int i = 0; i < 200000; ++i) dotted += ".a";
  EXPECT_EQ(problem_of(kMinimal + dotted + " = 1\n"),
            "web.toml line 7: tables and arrays are nested more than 32 levels deep");
  std::string header = "[a";
  for (int i = 0; i < 200000; ++i) header += ".a";
  EXPECT_EQ(problem_of(header + "]\n"),
            "web.toml line 1: tables and arrays are nested more than 32 levels deep");
  EXPECT_EQ(problem_of("x = " + std::string(5000, '[') + std::string(5000, ']') + "\n"),
            "web.toml line 1: tables and arrays are nested more than 32 levels deep");
  std::string inl = "x = ";
  for (int i = 0; i < 5000; ++i) inl += "{a=";
  inl += "1" + std::string(5000, '}');
  EXPECT_EQ(problem_of(inl),
            "web.toml line 1: tables and arrays are nested more than 32 levels deep");
}

TEST(JobSpecHostile, MangledSpecsNeverCrash) {
  // Deterministic mutations of a valid spec: each must parse or be refused
  // with problems, never crash or throw anything else.
  const std::string base = read_file(FLOTILLA_TEST_SOURCE_DIR "/examples/jobs/web.toml");
  ASSERT_FALSE(base.empty());
  const char noise[] = {'\0', '\xff', '"', '\'', '[', ']', '{', '}', '=',
                        '.',  '\n',   '#', '\\', 'a', '1', '-', ' ', ','};
  std::uint64_t seed = 0x9E3779B97F4A7C15ULL;
  auto next = [&] {
    seed ^= seed << 13;
    seed ^= seed >> 7;
    seed ^= seed << 17;
    return seed;
  };
  int parsed = 0, refused = 0;
  for (int round = 0; round < 3000; ++round) {
    std::string s = base;
    int edits = 1 + static_cast<int>(next() % 4);
    for (int e = 0; e < edits; ++e) {
      std::size_t pos = next() % (s.size() + 1);
      switch (next() % 3) {
        case 0:
          if (pos < s.size()) s[pos] = noise[next() % sizeof noise];
          break;
        case 1:
          s.insert(pos, 1, noise[next() % sizeof noise]);
          break;
        default:
          if (pos < s.size()) s.erase(pos, 1 + next() % 8);
          break;
      }
    }
    try {
      json job = parse_jobspec(s, "fuzz.toml");
      EXPECT_EQ(validate_job_json(job, "fuzz.json"), job);
      ++parsed;
    } catch (const JobSpecInvalid &e) {
      EXPECT_FALSE(e.problems().empty());
      ++refused;
    }
  }
  EXPECT_GT(refused, 0);
  EXPECT_GT(parsed, 0);
}

// ---- helpers ------------------------------------------------------------------

TEST(JobSpecHelpers, Durations) {
  EXPECT_EQ(parse_duration_ms("0"), 0);
  EXPECT_EQ(parse_duration_ms("0s"), 0);
  EXPECT_EQ(parse_duration_ms("250ms"), 250);
  EXPECT_EQ(parse_duration_ms("15s"), 15000);
  EXPECT_EQ(parse_duration_ms("1h30m"), 5400000);
  EXPECT_EQ(parse_duration_ms("1.5h"), 5400000);
  EXPECT_EQ(parse_duration_ms(".5s"), 500);
  EXPECT_EQ(parse_duration_ms("1m1s1ms"), 61001);
  EXPECT_EQ(parse_duration_ms("8760h"), 8760LL * 3600000);
  EXPECT_THROW(parse_duration_ms("8760h1ms"), std::invalid_argument);
  EXPECT_THROW(parse_duration_ms("1d"), std::invalid_argument);
  EXPECT_THROW(parse_duration_ms("h"), std::invalid_argument);
  EXPECT_THROW(parse_duration_ms("1.s5"), std::invalid_argument);
  EXPECT_THROW(parse_duration_ms("+1s"), std::invalid_argument);
  EXPECT_THROW(parse_duration_ms("1.2.3s"), std::invalid_argument);
  EXPECT_EQ(format_duration_ms(0), "0s");
  EXPECT_EQ(format_duration_ms(250), "250ms");
  EXPECT_EQ(format_duration_ms(5400000), "1h30m");
  EXPECT_EQ(format_duration_ms(90061001), "25h1m1s1ms");
  for (std::int64_t ms : {1LL, 999LL, 1000LL, 61001LL, 3600000LL, 31536000000LL})
    EXPECT_EQ(parse_duration_ms(format_duration_ms(ms)), ms);
}

TEST(JobSpecHelpers, Names) {
  for (const char *ok : {"a", "web", "web-2", "0", "a-b-c", "x1"}) EXPECT_TRUE(is_valid_name(ok));
  for (const char *bad : {"", "-a", "a-", "A", "a_b", "a.b", "a b"})
    EXPECT_FALSE(is_valid_name(bad));
  EXPECT_TRUE(is_valid_name(std::string(63, 'a')));
  EXPECT_FALSE(is_valid_name(std::string(64, 'a')));
}

TEST(JobSpecHelpers, ProblemToString) {
  JobSpecProblem p{12, 3, "task[0].resources.memory", "must be a positive integer (MiB), got -5"};
  EXPECT_EQ(p.to_string("web.toml"),
            "web.toml line 12, task[0].resources.memory: must be a positive integer (MiB), got -5");
  p.line = 0;
  EXPECT_EQ(p.to_string("web.json"),
            "web.json, task[0].resources.memory: must be a positive integer (MiB), got -5");
  p.key.clear();
  EXPECT_EQ(p.to_string("web.json"), "web.json: must be a positive integer (MiB), got -5");
}

// ---- examples -----------------------------------------------------------------

// The example at the top of docs/jobspec.md and its JSON form further down
// must stay true to the code.
TEST(JobSpecExamples, DocsExampleMatchesItsJsonForm) {
  const std::string doc = read_file(FLOTILLA_TEST_SOURCE_DIR "/docs/jobspec.md");
  auto block = [&](const std::string &fence) {
    std::size_t start = doc.find(fence + "\n");
    if (start == std::string::npos) return std::string();
    start += fence.size() + 1;
    return doc.substr(start, doc.find("```", start) - start);
  };
  const std::string toml = block("```toml"), text = block("```json");
  ASSERT_FALSE(toml.empty());
  ASSERT_FALSE(text.empty());
  EXPECT_EQ(parse_jobspec(toml, "docs/jobspec.md"), json::parse(text));
}

TEST(JobSpecExamples, HelloIsABatchEcho) {
  json job =
      parse_jobspec(read_file(FLOTILLA_TEST_SOURCE_DIR "/examples/jobs/hello.toml"), "hello.toml");
  EXPECT_EQ(job["name"], "hello");
  EXPECT_EQ(job["type"], "batch");
  ASSERT_EQ(job["task"].size(), 1u);
  EXPECT_EQ(job["task"][0]["image"].get<std::string>().rfind("busybox", 0), 0u);
  EXPECT_EQ(job["task"][0]["command"], "/bin/echo");
}

TEST(JobSpecExamples, WebIsHttpdInBridgeModeWithAPortMapping) {
  json job =
      parse_jobspec(read_file(FLOTILLA_TEST_SOURCE_DIR "/examples/jobs/web.toml"), "web.toml");
  EXPECT_EQ(job["name"], "web");
  EXPECT_EQ(job["type"], "service");
  ASSERT_EQ(job["task"].size(), 1u);
  EXPECT_EQ(job["task"][0]["command"], "/bin/sh");
  EXPECT_NE(job["task"][0]["args"].back().get<std::string>().find("exec httpd -f -p 8080"),
            std::string::npos);
  EXPECT_EQ(job["task"][0]["network"], "bridge");
  EXPECT_EQ(job["task"][0]["resources"]["ports"], json::array({8080}));
}

TEST(JobSpecExamples, TwoServicesByNameAndByVip) {
  json web = parse_jobspec(read_file(FLOTILLA_TEST_SOURCE_DIR "/examples/jobs/service-web.toml"),
                           "service-web.toml");
  ASSERT_EQ(web["task"][0]["service"].size(), 1u);
  EXPECT_EQ(web["task"][0]["service"][0]["name"], "web");
  EXPECT_EQ(web["task"][0]["service"][0]["check"][0]["type"], "http");
  json client = parse_jobspec(
      read_file(FLOTILLA_TEST_SOURCE_DIR "/examples/jobs/service-client.toml"), "service-client.toml");
  const std::string loop = client["task"][0]["args"].back();
  EXPECT_NE(loop.find("web.service.flotilla"), std::string::npos);
  EXPECT_NE(loop.find("web.vip.flotilla"), std::string::npos);
}

}  // namespace
}  // namespace flotilla
