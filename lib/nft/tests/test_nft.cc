// lib/nft against the real kernel: a table of this run's own (unique
// name), removed at the end even when a check fails. SKIPPED without root
// or nf_tables.
#include <gtest/gtest.h>
#include <unistd.h>

#include <string>

#include "nft.h"

namespace nft = flotilla::nft;

namespace {

std::string table_name() { return "fltest" + std::to_string(::getpid()); }

struct TableGuard {
  std::string name;
  ~TableGuard() {
    try {
      nft::Context ctx;
      ctx.apply(nft::Batch().delete_table_if_exists("inet", name));
    } catch (...) {
    }
  }
};

bool usable(std::string *why) {
  if (::geteuid() != 0) {
    *why = "needs root (nftables)";
    return false;
  }
  try {
    nft::Context ctx;
    ctx.table_exists("inet", "x");
  } catch (const std::exception &e) {
    *why = std::string("nf_tables not usable here: ") + e.what();
    return false;
  }
  return true;
}

}  // namespace

TEST(LibNft, Names) {
  EXPECT_TRUE(nft::valid_name("flotilla"));
  EXPECT_TRUE(nft::valid_name("port_map-4"));
  EXPECT_FALSE(nft::valid_name(""));
  EXPECT_FALSE(nft::valid_name("4x"));
  EXPECT_FALSE(nft::valid_name("a b"));
  EXPECT_FALSE(nft::valid_name("a;flush ruleset"));
  EXPECT_FALSE(nft::valid_name(std::string(33, 'a')));
  EXPECT_EQ(nft::quote("alloc web-1"), "\"alloc web-1\"");
  EXPECT_THROW(nft::quote("a\"; flush ruleset"), nft::Error);
  EXPECT_EQ(nft::Batch().add("add table inet a").add("add chain inet a b").text(),
            "add table inet a\nadd chain inet a b\n");
}

TEST(LibNft, BatchAppliesAllOrNothing) {
  std::string why;
  if (!usable(&why)) GTEST_SKIP() << why;
  TableGuard guard{table_name()};
  const std::string t = "inet " + guard.name;
  nft::Context ctx;
  ctx.apply(nft::Batch()
                .add("add table " + t)
                .add("add map " + t + " ports { type inet_service : ipv4_addr . inet_service; }")
                .add("add element " + t + " ports { 8080 : 10.1.2.3 . 80 }"));
  EXPECT_TRUE(ctx.table_exists("inet", guard.name));
  auto elems = nft::set_elements(ctx.list_json("table " + t), "ports");
  ASSERT_EQ(elems.size(), 1u);
  EXPECT_EQ(elems[0][0], 8080);

  // The second command is wrong: the first must not be applied either.
  nft::Batch bad;
  bad.add("add element " + t + " ports { 9090 : 10.1.2.4 . 90 }")
      .add("add element " + t + " nosuchmap { 1 }");
  try {
    ctx.apply(bad);
    ADD_FAILURE() << "a batch naming a missing map was applied";
  } catch (const nft::Error &e) {
    // The kernel's reason; nft 1.0.6 may point at another command of the
    // batch than the one that failed.
    EXPECT_NE(std::string(e.what()).find("No such file or directory"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(nft::set_elements(ctx.list_json("table " + t), "ports").size(), 1u);

  // check() changes nothing.
  ctx.check(nft::Batch().add("add element " + t + " ports { 7070 : 10.1.2.5 . 70 }"));
  EXPECT_EQ(nft::set_elements(ctx.list_json("table " + t), "ports").size(), 1u);

  ctx.apply(nft::Batch().delete_table_if_exists("inet", guard.name));
  EXPECT_FALSE(ctx.table_exists("inet", guard.name));
  // Deleting what does not exist is not an error.
  ctx.apply(nft::Batch().delete_table_if_exists("inet", guard.name));
  EXPECT_THROW(ctx.list_json("table " + t), nft::Error);
}

namespace {

TEST(LibNft, CommitWatchCountsEachCommittedBatch) {
  std::string why;
  if (!usable(&why)) GTEST_SKIP() << why;
  TableGuard guard{table_name()};
  nft::CommitWatch watch;
  nft::Context ctx;
  watch.drain();  // whatever other processes committed before
  ctx.apply(nft::Batch().add("add table inet " + guard.name));
  ctx.apply(nft::Batch().add("add chain inet " + guard.name + " c"));
  // The announcements are multicast as the commit ends: queued by now.
  uint64_t seen = 0;
  for (int i = 0; i < 100 && seen < 2; ++i) {
    seen += watch.drain();
    if (seen < 2) usleep(10000);
  }
  // At least ours (other processes in this namespace may commit too).
  EXPECT_GE(seen, 2u);
}

}  // namespace
