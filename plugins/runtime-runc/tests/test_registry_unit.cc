// Registry references (Docker Hub's defaults, bad references), the
// [plugin.runtime-runc.registry] table and Docker config.json credentials,
// without a network. The pulls themselves: registry_e2e_test.cc.
#include <gtest/gtest.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <string>

#include "image_error.h"
#include "registry_config.h"
#include "registry_ref.h"

namespace flotilla::runc {
namespace {

using nlohmann::json;

TEST(RegistryRef, DockerHubDefaultsAndOtherRegistries) {
  struct Case {
    const char *ref, *registry, *repository, *tag, *store_name;
  } cases[] = {
      {"busybox", "docker.io", "library/busybox", "latest", "busybox:latest"},
      {"busybox:1.36", "docker.io", "library/busybox", "1.36", "busybox:1.36"},
      {"docker.io/library/busybox:1.36", "docker.io", "library/busybox", "1.36",
       "docker.io/library/busybox:1.36"},
      {"index.docker.io/library/busybox", "docker.io", "library/busybox", "latest",
       "index.docker.io/library/busybox:latest"},
      {"team/app:2", "docker.io", "team/app", "2", "team/app:2"},
      {"localhost/app", "localhost", "app", "latest", "localhost/app:latest"},
      {"127.0.0.1:5000/team/app:1", "127.0.0.1:5000", "team/app", "1", "127.0.0.1:5000/team/app:1"},
      {"registry.example/a/b/c:v1.2", "registry.example", "a/b/c", "v1.2",
       "registry.example/a/b/c:v1.2"},
  };
  for (const auto &c : cases) {
    RegistryRef r = parse_registry_ref(c.ref);
    EXPECT_EQ(r.registry, c.registry) << c.ref;
    EXPECT_EQ(r.repository, c.repository) << c.ref;
    EXPECT_EQ(r.tag, c.tag) << c.ref;
    EXPECT_EQ(r.store_name, c.store_name) << c.ref;
    EXPECT_TRUE(r.digest.empty()) << c.ref;
  }
  EXPECT_EQ(registry_endpoint_host("docker.io"), "registry-1.docker.io");
  EXPECT_EQ(registry_endpoint_host("127.0.0.1:5000"), "127.0.0.1:5000");

  const std::string d = "sha256:" + std::string(64, 'a');
  RegistryRef pinned = parse_registry_ref("host:5000/team/app@" + d);
  EXPECT_EQ(pinned.registry, "host:5000");
  EXPECT_EQ(pinned.digest, d);
  EXPECT_EQ(pinned.reference(), d);
  EXPECT_EQ(pinned.store_name, "host:5000/team/app:sha256-aaaaaaaaaaaa");
  EXPECT_EQ(pinned.canonical(), "host:5000/team/app@" + d);
  RegistryRef both = parse_registry_ref("host:5000/team/app:1@" + d);
  EXPECT_EQ(both.store_name, "host:5000/team/app:1");
  EXPECT_EQ(both.reference(), d) << "the digest decides";
}

TEST(RegistryRef, BadReferencesSayWhatIsWrong) {
  auto error_of = [](const std::string &ref) {
    try {
      parse_registry_ref(ref);
    } catch (const ImageError &e) {
      EXPECT_EQ(e.status(), FLOTILLA_E_INVALID) << ref;
      return std::string(e.what());
    }
    ADD_FAILURE() << ref << " was accepted";
    return std::string();
  };
  EXPECT_EQ(error_of(""), "image reference \"\": empty reference");
  EXPECT_NE(error_of("Team/App").find("\"Team\" is not a valid name component"), std::string::npos);
  EXPECT_NE(error_of("a b").find("contains a space"), std::string::npos);
  EXPECT_NE(error_of("app:bad/tag").find("is not a valid name component"), std::string::npos);
  EXPECT_NE(error_of("app@sha256:1234").find("sha256"), std::string::npos);
  EXPECT_NE(error_of("sha256:" + std::string(64, 'a')).find("names no registry"),
            std::string::npos);
  EXPECT_NE(error_of("host:5000/").find("image reference"), std::string::npos);
}

TEST(RegistryConfigTable, DefaultsAndEveryKey) {
  RegistryConfig none = parse_registry_config(nullptr);
  EXPECT_EQ(none.concurrency, 3u);
  EXPECT_EQ(none.retries, 3u);
  EXPECT_TRUE(none.auth_file.empty());
  RegistryConfig c = parse_registry_config(json{
      {"auth_file", "/etc/flotilla/auth.json"},
      {"insecure", {"127.0.0.1:5001"}},
      {"concurrency", 5},
      {"hosts",
       {{"registry.example:5000", {{"ca_file", "/etc/ca.pem"}, {"mirrors", {"m1:5000", "m2"}}}}}}});
  EXPECT_TRUE(c.is_insecure("127.0.0.1:5001"));
  EXPECT_FALSE(c.is_insecure("registry.example:5000"));
  EXPECT_EQ(c.concurrency, 5u);
  ASSERT_NE(c.host("registry.example:5000"), nullptr);
  EXPECT_EQ(c.host("registry.example:5000")->mirrors, (std::vector<std::string>{"m1:5000", "m2"}));
  EXPECT_EQ(c.host("registry.example:5000")->ca_file, "/etc/ca.pem");
}

TEST(RegistryConfigTable, BadValuesNameTheKey) {
  auto problem = [](const json &t) {
    try {
      parse_registry_config(t);
    } catch (const RegistryConfigProblem &p) {
      return p.key + ": " + p.what();
    }
    ADD_FAILURE() << t.dump() << " was accepted";
    return std::string();
  };
  EXPECT_EQ(problem({{"insecure", {"http://x:5000"}}}),
            "insecure[0]: must be a \"host[:port]\" without a scheme or path, got "
            "\"http://x:5000\"");
  EXPECT_EQ(problem({{"concurrency", 0}}), "concurrency: must be an integer from 1 to 32, got 0");
  EXPECT_EQ(problem({{"auth_file", "auth.json"}}),
            "auth_file: must be an absolute path, got \"auth.json\"");
  EXPECT_EQ(problem({{"hosts", {{"h:1", {{"mirror", {"m"}}}}}}}),
            "hosts.\"h:1\".mirror: is not a registry host key; known keys: mirrors, ca_file");
  EXPECT_EQ(problem({{"hosts", {{"h:1", {{"mirrors", {"m/x"}}}}}}})
                .rfind("hosts.\"h:1\".mirrors[0]: ", 0),
            0u);
  EXPECT_EQ(problem({{"mirrors", {"m"}}}).rfind("mirrors: is not a registry key", 0), 0u);
}

// Issue 14: every problem of the table at once, each with its key path
// (the host's config layer adds the file and line), not just the first.
TEST(RegistryConfigTable, EveryProblemIsReportedAtOnce) {
  std::vector<RegistryConfigProblem> problems;
  RegistryConfig c = parse_registry_config(
      json{{"auth_file", "auth.json"},
           {"insecure", {"good:5000", "http://x:5000", 7}},
           {"concurrency", 0},
           {"retries", 101},
           {"low_speed_timeout_s", "30"},
           {"mirrors", {"m"}},
           {"hosts",
            {{"h:1", {{"mirror", {"m"}}, {"mirrors", {"m/x", "ok:1"}}, {"ca_file", "ca.pem"}}},
             {"bad host", {{"mirrors", {"m"}}}},
             {"h:2", "not a table"},
             {"h:3", {{"ca_file", "/etc/ca.pem"}}}}}},
      problems);
  std::vector<std::string> got;
  for (const auto &p : problems) got.push_back(p.key + ": " + p.what());
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, (std::vector<std::string>{
                     "auth_file: must be an absolute path, got \"auth.json\"",
                     "concurrency: must be an integer from 1 to 32, got 0",
                     "hosts.\"bad host\": must be named \"host[:port]\" (\"docker.io\", "
                     "\"registry.example:5000\")",
                     "hosts.\"h:1\".ca_file: must be an absolute path to a PEM file, got "
                     "\"ca.pem\"",
                     "hosts.\"h:1\".mirror: is not a registry host key; known keys: mirrors, "
                     "ca_file",
                     "hosts.\"h:1\".mirrors[0]: must be a \"host[:port]\" without a scheme or "
                     "path, got \"m/x\"",
                     "hosts.\"h:2\": must be a table",
                     "insecure[1]: must be a \"host[:port]\" without a scheme or path, got "
                     "\"http://x:5000\"",
                     "insecure[2]: must be a \"host[:port]\" without a scheme or path, got 7",
                     "low_speed_timeout_s: must be an integer from 1 to 3600, got \"30\"",
                     "mirrors: is not a registry key; known keys: auth_file, insecure, hosts, "
                     "concurrency, progress_interval_ms, retries, low_speed_timeout_s",
                     "retries: must be an integer from 0 to 100, got 101",
                 }));
  // What was good is kept, what was bad left the default.
  EXPECT_EQ(c.insecure, (std::vector<std::string>{"good:5000"}));
  EXPECT_EQ(c.concurrency, 3u);
  EXPECT_TRUE(c.auth_file.empty());
  ASSERT_NE(c.host("h:1"), nullptr);
  EXPECT_EQ(c.host("h:1")->mirrors, (std::vector<std::string>{"ok:1"}));
  ASSERT_NE(c.host("h:3"), nullptr);
  EXPECT_EQ(c.host("h:3")->ca_file, "/etc/ca.pem");
  EXPECT_EQ(c.host("bad host"), nullptr);
  EXPECT_EQ(c.host("h:2"), nullptr);

  // A bare host name is spelt as the config layer spells it, unquoted, so
  // that the host finds the problem's line.
  problems.clear();
  parse_registry_config(json{{"hosts", {{"localhost", {{"ca_file", "x"}}}}}}, problems);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_EQ(problems[0].key, "hosts.localhost.ca_file");
}

// The token realm's CA: its own host's ca_file, the registry's when the
// realm is on the registry's host, else the system's (""), never the
// registry's private CA for another host.
TEST(RegistryConfigTable, TokenRealmCaIsTheRealmHostsOwn) {
  std::vector<RegistryConfigProblem> problems;
  RegistryConfig c = parse_registry_config(
      json{{"hosts",
            {{"registry.example:5000", {{"ca_file", "/etc/flotilla/registry-ca.pem"}}},
             {"auth.example", {{"ca_file", "/etc/flotilla/auth-ca.pem"}}}}}},
      problems);
  ASSERT_TRUE(problems.empty());
  const std::string reg = "registry.example:5000", reg_ca = "/etc/flotilla/registry-ca.pem";
  // Another host without a ca_file: the system's CAs.
  EXPECT_EQ(c.realm_ca_file("https://tokens.example/token", reg, reg_ca), "");
  EXPECT_EQ(c.realm_ca_file("https://registry.example:5001/token", reg, reg_ca), "");
  // Another host with its own ca_file: that one, with or without :443.
  EXPECT_EQ(c.realm_ca_file("https://auth.example/token?x=1", reg, reg_ca),
            "/etc/flotilla/auth-ca.pem");
  EXPECT_EQ(c.realm_ca_file("https://Auth.Example:443/token", reg, reg_ca),
            "/etc/flotilla/auth-ca.pem");
  // The registry's own host: its CA (configured under its short name too).
  EXPECT_EQ(c.realm_ca_file("https://registry.example:5000/auth", reg, reg_ca), reg_ca);
  EXPECT_EQ(c.realm_ca_file("https://u@registry.example:5000/auth", reg, "/short-name-ca.pem"),
            reg_ca);
  RegistryConfig bare;
  EXPECT_EQ(bare.realm_ca_file("https://registry.example:5000/auth", reg, "/short.pem"),
            "/short.pem");
}

TEST(RegistryAuthsFile, DockerConfigJsonForms) {
  // "ci:s3cret" and "bot:pa:ss" in base64; Docker Hub's legacy key.
  RegistryAuths a = RegistryAuths::parse(R"({"auths": {
      "registry.example:5000": {"auth": "Y2k6czNjcmV0"},
      "https://index.docker.io/v1/": {"auth": "Ym90OnBhOnNz"},
      "https://other.example/path": {"username": "u", "password": "p"}}})",
                                         "/etc/auth.json");
  ASSERT_TRUE(a.find("registry.example:5000").has_value());
  EXPECT_EQ(a.find("registry.example:5000")->username, "ci");
  EXPECT_EQ(a.find("registry.example:5000")->password, "s3cret");
  EXPECT_EQ(a.find("docker.io")->username, "bot");
  EXPECT_EQ(a.find("docker.io")->password, "pa:ss");
  EXPECT_EQ(a.find("other.example")->password, "p");
  EXPECT_FALSE(a.find("unknown.example").has_value());
  try {
    RegistryAuths::parse(R"({"auths": {"h": {"auth": "bm9jb2xvbg=="}}})", "/etc/auth.json");
    ADD_FAILURE() << "an auth without a colon was accepted";
  } catch (const std::runtime_error &e) {
    EXPECT_EQ(std::string(e.what()),
              "registry credentials /etc/auth.json: auths[\"h\"].auth is not base64 of "
              "\"user:password\"");
  }
}

}  // namespace
}  // namespace flotilla::runc
