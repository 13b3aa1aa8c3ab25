#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "store_config.h"

namespace flotilla::store_local {
namespace {

std::string problem_key(const char *json) {
  try {
    parse_store_config(json);
  } catch (const ConfigProblem &p) {
    return p.key();
  }
  return "(accepted)";
}

TEST(StoreConfig, DefaultsWhenEmpty) {
  StoreConfig c = parse_store_config("{}");
  EXPECT_TRUE(c.fsync);
  EXPECT_EQ(c.snapshot_every, 10000);
  EXPECT_EQ(c.history, 10000);
  EXPECT_EQ(c.snapshot_log_bytes, 64 << 20);
  EXPECT_EQ(c.max_request_bytes, 8 << 20);
}

TEST(StoreConfig, ReadsEveryKey) {
  StoreConfig c = parse_store_config(
      R"({"fsync":false,"snapshot_every":5,"snapshot_log_bytes":4096,"history":0,)"
      R"("max_request_bytes":2048})");
  EXPECT_FALSE(c.fsync);
  EXPECT_EQ(c.snapshot_every, 5);
  EXPECT_EQ(c.snapshot_log_bytes, 4096);
  EXPECT_EQ(c.history, 0);
  EXPECT_EQ(c.max_request_bytes, 2048);
}

TEST(StoreConfig, NamesTheBadKey) {
  EXPECT_EQ(problem_key(R"({"fsnyc":true})"), "fsnyc");
  EXPECT_EQ(problem_key(R"({"fsync":"yes"})"), "fsync");
  EXPECT_EQ(problem_key(R"({"snapshot_every":0})"), "snapshot_every");
  EXPECT_EQ(problem_key(R"({"snapshot_every":1.5})"), "snapshot_every");
  EXPECT_EQ(problem_key(R"({"history":-1})"), "history");
  EXPECT_EQ(problem_key(R"({"history":18446744073709551615})"), "history");
  EXPECT_EQ(problem_key(R"({"snapshot_log_bytes":100})"), "snapshot_log_bytes");
  EXPECT_EQ(problem_key(R"({"max_request_bytes":"8M"})"), "max_request_bytes");
  EXPECT_EQ(problem_key("[]"), "");
}

TEST(StoreConfig, MessageSaysWhatIsAccepted) {
  try {
    parse_store_config(R"({"unknown_thing":1})");
    FAIL();
  } catch (const ConfigProblem &p) {
    EXPECT_NE(std::string(p.what()).find("snapshot_every"), std::string::npos) << p.what();
  }
  try {
    parse_store_config(R"({"history":-3})");
    FAIL();
  } catch (const ConfigProblem &p) {
    EXPECT_NE(std::string(p.what()).find("from 0 to"), std::string::npos) << p.what();
  }
}

TEST(StoreConfig, EveryBadKeyIsReportedAtOnce) {
  std::vector<ConfigProblem> problems;
  parse_store_config(R"({"fsync":"yes","snapshot_every":0,"fsnyc":true,"history":5})", problems);
  std::vector<std::string> keys;
  for (const auto &p : problems) keys.push_back(p.key());
  std::sort(keys.begin(), keys.end());
  EXPECT_EQ(keys, (std::vector<std::string>{"fsnyc", "fsync", "snapshot_every"}));
}

}  // namespace
}  // namespace flotilla::store_local
