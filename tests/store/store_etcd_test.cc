// store-etcd's own rules beyond the conformance suite, each against a real
// etcd started by the test (tests/etcd/etcd_fixture.h): config errors,
// paging at one revision, the transaction and request limits, a watch that
// resumes after its connection was cut without skipping or repeating an
// event, a compacted resume point, writes retried only behind a guard,
// failover in a three-member cluster, hasleader, TLS with client
// certificates, and one connection for many watches.
#include <arpa/inet.h>
#include <dirent.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "etcd_fixture.h"
#include "store_harness.h"

namespace flotilla::store_test {
namespace {

#define ASSERT_OK(r) ASSERT_TRUE((r).ok()) << (r).message
#define EXPECT_OK(r) EXPECT_TRUE((r).ok()) << (r).message

// A TCP forwarder between the plugin and etcd, so a test can cut the link
// (every connection closed, new ones refused) and restore it.
class TcpProxy {
 public:
  explicit TcpProxy(int target_port) : target_port_(target_port) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(listen_fd_, reinterpret_cast<sockaddr *>(&a), sizeof a) != 0 ||
        ::listen(listen_fd_, 16) != 0)
      throw std::runtime_error("proxy: cannot listen");
    socklen_t len = sizeof a;
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr *>(&a), &len);
    port_ = ntohs(a.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
  }
  ~TcpProxy() {
    stopping_ = true;
    ::shutdown(listen_fd_, SHUT_RDWR);
    acceptor_.join();
    ::close(listen_fd_);
    cut();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  void cut() {
    cut_ = true;
    std::vector<std::thread> threads;
    {
      std::lock_guard<std::mutex> l(mu_);
      for (int fd : fds_) ::shutdown(fd, SHUT_RDWR);
      threads.swap(threads_);
    }
    for (auto &t : threads) t.join();
    std::lock_guard<std::mutex> l(mu_);
    for (int fd : fds_) ::close(fd);
    fds_.clear();
  }
  void restore() { cut_ = false; }

 private:
  void accept_loop() {
    while (!stopping_) {
      int c = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) {
        if (stopping_) return;
        continue;
      }
      if (cut_) {
        ::close(c);
        continue;
      }
      int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(static_cast<uint16_t>(target_port_));
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      if (::connect(s, reinterpret_cast<sockaddr *>(&a), sizeof a) != 0) {
        ::close(c);
        ::close(s);
        continue;
      }
      std::lock_guard<std::mutex> l(mu_);
      fds_.push_back(c);
      fds_.push_back(s);
      threads_.emplace_back([c, s] { pump(c, s); });
      threads_.emplace_back([c, s] { pump(s, c); });
    }
  }
  static void pump(int from, int to) {
    char buf[65536];
    for (;;) {
      ssize_t n = ::read(from, buf, sizeof buf);
      if (n <= 0) break;
      for (ssize_t off = 0; off < n;) {
        ssize_t w = ::send(to, buf + off, n - off, MSG_NOSIGNAL);
        if (w <= 0) return;
        off += w;
      }
    }
    ::shutdown(to, SHUT_WR);
  }
  int target_port_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> cut_{false}, stopping_{false};
  std::thread acceptor_;
  std::mutex mu_;
  std::vector<int> fds_;
  std::vector<std::thread> threads_;
};

int port_of(const std::string &url) {
  return std::stoi(url.substr(url.rfind(':') + 1));
}

double metric(LoadedStore &store, const std::string &name) {
  std::string text = store.host().metrics().render_prometheus();
  std::string needle = "flotilla_" + name + " ";
  auto pos = text.find("\n" + needle);
  if (pos == std::string::npos)
    return text.rfind(needle, 0) == 0 ? std::stod(text.substr(needle.size())) : 0;
  return std::stod(text.substr(pos + 1 + needle.size()));
}

// Established TCP connections from this process to port.
int connections_to(int port) {
  std::set<unsigned long> mine;
  for (const auto &e : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    std::string target = std::filesystem::read_symlink(e.path(), ec).string();
    if (!ec && target.rfind("socket:[", 0) == 0) mine.insert(std::stoul(target.substr(8)));
  }
  int n = 0;
  for (const char *file : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    FILE *f = std::fopen(file, "r");
    if (!f) continue;
    char line[512];
    if (!std::fgets(line, sizeof line, f)) {
      std::fclose(f);
      continue;
    }
    while (std::fgets(line, sizeof line, f)) {
      unsigned local_port = 0, remote_port = 0, state = 0;
      unsigned long inode = 0;
      if (std::sscanf(line, "%*d: %*[0-9A-Fa-f]:%x %*[0-9A-Fa-f]:%x %x %*s %*s %*s %*s %*s %lu",
                      &local_port, &remote_port, &state, &inode) == 4 &&
          remote_port == static_cast<unsigned>(port) && state == 1 /* ESTABLISHED */ &&
          mine.count(inode))
        ++n;
    }
    std::fclose(f);
  }
  return n;
}

int threads_of_this_process() {
  int n = 0;
  if (DIR *d = ::opendir("/proc/self/task")) {
    while (dirent *e = ::readdir(d))
      if (e->d_name[0] != '.') ++n;
    ::closedir(d);
  }
  return n;
}

class StoreEtcd : public ::testing::Test {
 protected:
  void SetUp() override {
#ifndef STORE_ETCD_PLUGIN_PATH
    GTEST_SKIP() << "this build has no store-etcd";
#endif
    std::string why = test::EtcdCluster::skip_reason();
    if (!why.empty()) GTEST_SKIP() << why;
  }
  std::unique_ptr<LoadedStore> open(nlohmann::json config, const std::string &tag = "a") {
    return std::make_unique<LoadedStore>(loop_, store_etcd_settings(std::move(config)),
                                         dir_.path() + "/" + tag);
  }
  std::string start_error(nlohmann::json config) {
    try {
      open(std::move(config));
    } catch (const std::exception &e) {
      return e.what();
    }
    return "(started)";
  }
  void run_until(const std::function<bool()> &done, const std::string &what) {
    loop_.run_until(done, what);
  }
  // Runs the loop for ms milliseconds (a timer wakes it at the end).
  void run_for(int ms) {
    bool fired = false;
    uv_timer_t t;
    uv_timer_init(loop_.get(), &t);
    t.data = &fired;
    uv_timer_start(
        &t, [](uv_timer_t *h) { *static_cast<bool *>(h->data) = true; }, ms, 0);
    loop_.run_until([&] { return fired; }, "time to pass");
    uv_close(reinterpret_cast<uv_handle_t *>(&t), nullptr);
    uv_run(loop_.get(), UV_RUN_NOWAIT);
  }

  TempDir dir_{"store-etcd"};
  TestLoop loop_;
};

// ---- config -----------------------------------------------------------------

TEST_F(StoreEtcd, ConfigErrorsNameEveryBadKeyAtOnce) {
  ::testing::internal::CaptureStderr();
  std::string e = start_error({{"endpoints", {"ftp://x:1", "127.0.0.1"}},
                               {"keepalive_time_ms", 1000},
                               {"dial_timeout_msec", 5}});
  std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(e.find("plugin.store-etcd."), std::string::npos) << e;
  for (const char *part : {"plugin.store-etcd.endpoints: entry 1 \"ftp://x:1\"",
                           "entry 2 \"127.0.0.1\": the port is missing",
                           "plugin.store-etcd.keepalive_time_ms: 1000 is not an integer from 5000",
                           "plugin.store-etcd.dial_timeout_msec: unknown key"})
    EXPECT_NE(log.find(part), std::string::npos) << "missing \"" << part << "\" in:\n" << log;
  EXPECT_NE(log.find("(test config)"), std::string::npos) << "names the config file: " << log;
}

TEST_F(StoreEtcd, TlsFilesNeedHttpsAndBothHalvesOfTheCertificate) {
  std::string e =
      start_error({{"endpoints", {"http://127.0.0.1:2379"}}, {"key_file", "/nonexistent.pem"}});
  EXPECT_NE(e.find("key_file"), std::string::npos) << e;
  e = start_error({{"endpoints", {"https://127.0.0.1:2379", "http://127.0.0.1:2380"}}});
  EXPECT_NE(e.find("mixes http:// and https://"), std::string::npos) << e;
}

// ---- paging and limits ----------------------------------------------------------

TEST_F(StoreEtcd, RangesArePagedAtTheRevisionOfTheFirstPage) {
  test::EtcdCluster etcd;
  auto config = etcd.plugin_config();
  config["range_page_keys"] = 10;
  auto store = open(config);
  SyncStore s(loop_, *store);
  for (int i = 0; i < 35; ++i) {
    char name[16];
    std::snprintf(name, sizeof name, "/pg/%02d", i);
    ASSERT_OK(s.put(name, "old").result);
  }
  const double pages_before = metric(*store, "store_etcd_range_pages_total");
  // Rewrite every key while the paged read runs: every page must still show
  // the map at the first page's revision.
  std::optional<SyncStore::List> listed;
  int rewritten = 0;
  flotilla_key_range r{};
  r.struct_size = sizeof r;
  r.key = "/pg/";
  r.key_len = 4;
  r.prefix = 1;
  struct Ctx {
    std::optional<SyncStore::List> *out;
  } ctx{&listed};
  ASSERT_EQ(store->vt()->range(
                store->self(), &r, 0, 0,
                [](void *user, flotilla_status st, const flotilla_kv *kvs, size_t n, int64_t rev,
                   int more) {
                  SyncStore::List l;
                  l.result.status = st;
                  for (size_t i = 0; i < n; ++i) {
                    KeyValue kv;
                    kv.key.assign(kvs[i].key, kvs[i].key_len);
                    kv.value.assign(kvs[i].value, kvs[i].value_len);
                    kv.mod_revision = kvs[i].mod_revision;
                    l.kvs.push_back(kv);
                  }
                  l.revision = rev;
                  l.more = more != 0;
                  *static_cast<Ctx *>(user)->out = l;
                },
                &ctx),
            FLOTILLA_OK);
  std::vector<int64_t> rewrite_rev(35, 0);
  for (int i = 0; i < 35; ++i) {
    char name[16];
    std::snprintf(name, sizeof name, "/pg/%02d", i);
    store->client().put(name, "new", [&, i](StoreResult res, int64_t rev) {
      EXPECT_OK(res);
      rewrite_rev[i] = rev;
      ++rewritten;
    });
  }
  run_until([&] { return listed && rewritten == 35; }, "the paged read and the rewrites");
  ASSERT_OK(listed->result);
  ASSERT_EQ(listed->kvs.size(), 35u);
  EXPECT_FALSE(listed->more);
  // Each key as it was at the read's revision: rewritten iff the rewrite
  // came at or before it, whichever page the key was on.
  for (size_t i = 0; i < listed->kvs.size(); ++i) {
    const auto &kv = listed->kvs[i];
    EXPECT_LE(kv.mod_revision, listed->revision) << kv.key << " is newer than the read";
    EXPECT_EQ(kv.value, rewrite_rev[i] <= listed->revision ? "new" : "old")
        << kv.key << " rewritten at " << rewrite_rev[i] << ", read at " << listed->revision;
  }
  EXPECT_GE(metric(*store, "store_etcd_range_pages_total") - pages_before, 4)
      << "35 keys, 10 a page";
  auto limited = s.list("/pg/", 0, 25);
  ASSERT_OK(limited.result);
  EXPECT_EQ(limited.kvs.size(), 25u);
  EXPECT_TRUE(limited.more);
  EXPECT_EQ(limited.kvs.back().key, "/pg/24");
}

TEST_F(StoreEtcd, TransactionsOverEtcdsOperationLimitAreRefusedNotCut) {
  test::EtcdCluster etcd;
  auto store = open(etcd.plugin_config());
  SyncStore s(loop_, *store);
  std::vector<StoreOp> ops;
  for (int i = 0; i < 129; ++i) ops.push_back(StoreOp::put("/t/" + std::to_string(i), "v"));
  auto big = s.txn({}, ops);
  EXPECT_EQ(big.result.status, FLOTILLA_E_INVALID);
  EXPECT_NE(big.result.message.find("at most 128"), std::string::npos) << big.result.message;
  EXPECT_NE(big.result.message.find("max_txn_ops"), std::string::npos) << big.result.message;
  EXPECT_NE(big.result.message.find("Split"), std::string::npos) << big.result.message;
  EXPECT_TRUE(s.list("/t/").kvs.empty()) << "nothing of a refused transaction is applied";
  std::vector<StoreCompare> cmps;
  for (int i = 0; i < 129; ++i) cmps.push_back(StoreCompare::absent("/c/" + std::to_string(i)));
  EXPECT_EQ(s.txn(cmps, {}).result.status, FLOTILLA_E_INVALID);
  ops.pop_back();
  auto fits = s.txn({}, ops);
  ASSERT_OK(fits.result);
  EXPECT_TRUE(fits.succeeded);
  EXPECT_EQ(s.list("/t/").kvs.size(), 128u);
}

TEST_F(StoreEtcd, RequestsOverEtcdsSizeLimitAreRefusedNotCut) {
  test::EtcdCluster etcd;
  auto store = open(etcd.plugin_config());
  SyncStore s(loop_, *store);
  auto big = s.put("/big", std::string(1600 * 1024, 'x'));
  EXPECT_EQ(big.result.status, FLOTILLA_E_INVALID);
  EXPECT_NE(big.result.message.find("max_request_bytes"), std::string::npos) << big.result.message;
  EXPECT_NE(big.result.message.find("1572864"), std::string::npos) << big.result.message;
  EXPECT_FALSE(s.get("/big").kv);
  auto two = s.txn({}, {StoreOp::put("/b1", std::string(800 * 1024, 'x')),
                        StoreOp::put("/b2", std::string(800 * 1024, 'y'))});
  EXPECT_EQ(two.result.status, FLOTILLA_E_INVALID) << two.result.message;
  EXPECT_FALSE(s.get("/b1").kv);
  EXPECT_OK(s.put("/fits", std::string(1400 * 1024, 'x')).result);
}

// ---- chained transactions in flight together ----------------------------------

// A transaction that compares a key's value to the value the transaction
// before it puts there is sent without waiting for that one's answer
// (etcd refuses it out of order). Answers still come in call order, each
// revision after the one before, and a write that cannot be chained waits.
TEST_F(StoreEtcd, ChainedTransactionsAreSentTogetherAndKeepTheirOrder) {
  test::EtcdCluster etcd;
  auto store = open(etcd.plugin_config());
  SyncStore s(loop_, *store);
  ASSERT_OK(s.put("/chain/epoch", "t0").result);
  constexpr int kTxns = 300;
  std::vector<int> order;
  std::vector<int64_t> revs;
  int ok = 0;
  auto token = [](int i) { return "t" + std::to_string(i); };
  for (int i = 0; i < kTxns; ++i) {
    if (i == kTxns / 2) {
      // Not chained: sent once every transaction before it was answered.
      store->client().put("/chain/plain", "p", [&](StoreResult r, int64_t rev) {
        EXPECT_OK(r);
        order.push_back(-1);
        revs.push_back(rev);
      });
    }
    store->client().txn(
        {{"/chain/epoch", FLOTILLA_CMP_VALUE, FLOTILLA_CMP_EQUAL, 0, token(i)}},
        {StoreOp::put("/chain/epoch", token(i + 1)),
         StoreOp::put("/chain/k/" + std::to_string(1000 + i), std::string(200, 'v'))},
        {}, [&, i](StoreResult r, bool succeeded, int64_t rev) {
          EXPECT_OK(r);
          EXPECT_TRUE(succeeded) << "transaction " << i;
          ok += r.ok() && succeeded;
          order.push_back(i);
          revs.push_back(rev);
        });
  }
  run_until([&] { return order.size() == kTxns + 1u; }, "every answer");
  EXPECT_EQ(ok, kTxns);
  for (size_t i = 1; i < order.size(); ++i) {
    EXPECT_GT(revs[i], revs[i - 1]) << "answer " << i << " (" << order[i] << ")";
    if (order[i] >= 0 && order[i - 1] >= 0) {
      EXPECT_EQ(order[i], order[i - 1] + 1);
    }
  }
  EXPECT_EQ(order[kTxns / 2], -1) << "the plain put is answered in its place";
  auto all = s.list("/chain/k/");
  ASSERT_OK(all.result);
  ASSERT_EQ(all.kvs.size(), static_cast<size_t>(kTxns));
  for (size_t i = 1; i < all.kvs.size(); ++i)
    EXPECT_GT(all.kvs[i].mod_revision, all.kvs[i - 1].mod_revision) << all.kvs[i].key;
  EXPECT_EQ(s.get("/chain/epoch").kv->value, token(kTxns));
  const double chained = metric(*store, "store_etcd_chained_total");
  const double resends = metric(*store, "store_etcd_chain_resends_total");
  EXPECT_GE(chained, kTxns / 4) << "most transactions were sent before the one before was answered";
  // One that arrived early is sent again once the one before it was
  // applied, and that attempt's answer is final.
  EXPECT_LE(resends, chained) << "a transaction was sent again more than once";
  std::printf("%g of %d sent chained, %g sent again after arriving early\n", chained, kTxns,
              resends);
}

// A chain broken half-way stops there: the transactions after the one that
// failed fail too (their compare needs its value), in order, and none of
// them is applied.
TEST_F(StoreEtcd, AChainBrokenHalfWayAppliesNothingAfterTheBreak) {
  test::EtcdCluster etcd;
  auto store = open(etcd.plugin_config());
  SyncStore s(loop_, *store);
  ASSERT_OK(s.put("/chain/epoch", "t0").result);
  constexpr int kTxns = 60, kBreak = 25;
  std::vector<int> order;
  std::vector<bool> applied;
  for (int i = 0; i < kTxns; ++i) {
    const std::string want = i == kBreak ? "not this" : "t" + std::to_string(i);
    store->client().txn({{"/chain/epoch", FLOTILLA_CMP_VALUE, FLOTILLA_CMP_EQUAL, 0, want}},
                        {StoreOp::put("/chain/epoch", "t" + std::to_string(i + 1)),
                         StoreOp::put("/chain/k/" + std::to_string(100 + i), "v")},
                        {}, [&, i](StoreResult r, bool succeeded, int64_t) {
                          EXPECT_OK(r);
                          order.push_back(i);
                          applied.push_back(succeeded);
                        });
  }
  run_until([&] { return order.size() == kTxns; }, "every answer");
  for (int i = 0; i < kTxns; ++i) {
    EXPECT_EQ(order[i], i);
    EXPECT_EQ(applied[i], i < kBreak) << "transaction " << i;
  }
  EXPECT_EQ(s.list("/chain/k/").kvs.size(), static_cast<size_t>(kBreak));
  EXPECT_EQ(s.get("/chain/epoch").kv->value, "t" + std::to_string(kBreak));
  EXPECT_GE(metric(*store, "store_etcd_chained_total"), 1);
}

// ---- sibling transactions -------------------------------------------------------

// Transactions that all compare one key's value (the head), write it only
// with that same value, and write no key another one writes do not depend
// on each other's order: they are sent together, each answer is its own and final
// (a refused one is not sent again), and answers still come in call order.
// A write that is no sibling (the plain put) waits until they are answered.
TEST_F(StoreEtcd, SiblingTransactionsAreSentTogetherAndAnsweredEachOnItsOwn) {
  test::EtcdCluster etcd;
  auto store = open(etcd.plugin_config());
  SyncStore s(loop_, *store);
  ASSERT_OK(s.put("/sib/head", "token").result);
  ASSERT_OK(s.put("/sib/job", "j").result);
  constexpr int kTxns = 300;
  auto refused_by_design = [](int i) { return i % 50 == 7; };
  std::vector<int> order;
  std::vector<bool> applied(kTxns, false);
  for (int i = 0; i < kTxns; ++i) {
    if (i == kTxns / 2) {
      store->client().put("/sib/plain", "p", [&](StoreResult r, int64_t) {
        EXPECT_OK(r);
        order.push_back(-1);
      });
    }
    std::vector<StoreCompare> cmps{
        {"/sib/head", FLOTILLA_CMP_VALUE, FLOTILLA_CMP_EQUAL, 0, "token"}};
    // Its own compare fails: refused, whatever its siblings do.
    if (refused_by_design(i))
      cmps.push_back({"/sib/job", FLOTILLA_CMP_VERSION, FLOTILLA_CMP_EQUAL, 9, {}});
    std::vector<StoreOp> ops{
        StoreOp::put("/sib/k/" + std::to_string(1000 + i), std::string(200, 'v'))};
    // Putting the head's own value back keeps it a sibling (the scheduler
    // does, so that the key's mod_revision moves with every write).
    if (i % 2 == 0) ops.push_back(StoreOp::put("/sib/head", "token"));
    store->client().txn(cmps, ops, {}, [&, i](StoreResult r, bool succeeded, int64_t) {
      EXPECT_OK(r);
      order.push_back(i);
      applied[i] = r.ok() && succeeded;
    });
  }
  run_until([&] { return order.size() == kTxns + 1u; }, "every answer");
  for (size_t i = 0; i < order.size(); ++i) {
    const int want = i < kTxns / 2    ? static_cast<int>(i)
                     : i == kTxns / 2 ? -1
                                      : static_cast<int>(i) - 1;
    EXPECT_EQ(order[i], want) << "answer " << i;
  }
  auto all = s.list("/sib/k/");
  ASSERT_OK(all.result);
  std::set<std::string> written;
  for (const auto &kv : all.kvs) written.insert(kv.key);
  for (int i = 0; i < kTxns; ++i) {
    EXPECT_EQ(applied[i], !refused_by_design(i)) << "transaction " << i;
    EXPECT_EQ(written.count("/sib/k/" + std::to_string(1000 + i)) == 1, applied[i])
        << "transaction " << i << "'s answer does not match the store";
  }
  EXPECT_EQ(s.get("/sib/head").kv->value, "token");
  const double siblings = metric(*store, "store_etcd_siblings_total");
  EXPECT_GE(siblings, kTxns / 4) << "most were sent while others of the group were in flight";
  EXPECT_EQ(metric(*store, "store_etcd_chain_resends_total"), 0) << "a sibling was sent again";
  EXPECT_EQ(metric(*store, "store_etcd_chained_total"), 0);
  std::printf("%g of %d sent as siblings\n", siblings, kTxns);
}

// A sibling group opens only behind a settled head: after the head moved
// (a write that is no sibling, answered before), every sibling that
// requires the old value is refused, once; one that writes a key another
// sibling in flight writes, or the head with another value, waits its turn.
TEST_F(StoreEtcd, SiblingsAfterTheHeadMovedAreRefusedAndConflictingOnesWait) {
  test::EtcdCluster etcd;
  auto store = open(etcd.plugin_config());
  SyncStore s(loop_, *store);
  ASSERT_OK(s.put("/sib/head", "t1").result);
  auto head_is = [](const std::string &v) {
    return StoreCompare{"/sib/head", FLOTILLA_CMP_VALUE, FLOTILLA_CMP_EQUAL, 0, v};
  };
  std::vector<std::string> order;
  std::map<std::string, bool> applied;
  auto txn = [&](const std::string &name, std::vector<StoreCompare> cmps,
                 std::vector<StoreOp> ops) {
    store->client().txn(cmps, ops, {}, [&, name](StoreResult r, bool succeeded, int64_t) {
      EXPECT_OK(r);
      order.push_back(name);
      applied[name] = succeeded;
    });
  };
  txn("a", {head_is("t1")}, {StoreOp::put("/sib/x", "a")});
  txn("b", {head_is("t1")}, {StoreOp::put("/sib/y", "b")});
  // Writes what "a" writes: after "a", whatever the order etcd would pick.
  txn("c", {head_is("t1")}, {StoreOp::put("/sib/x", "c")});
  // Moves the head: no sibling; the ones after it require the old value.
  txn("move", {head_is("t1")}, {StoreOp::put("/sib/head", "t2")});
  for (int i = 0; i < 20; ++i)
    txn("late" + std::to_string(i), {head_is("t1")},
        {StoreOp::put("/sib/z/" + std::to_string(i), "v")});
  txn("new", {head_is("t2")}, {StoreOp::put("/sib/w", "v")});
  run_until([&] { return order.size() == 25u; }, "every answer");
  EXPECT_EQ(order[0], "a");
  EXPECT_EQ(order[1], "b");
  EXPECT_EQ(order[2], "c");
  EXPECT_EQ(order[3], "move");
  EXPECT_EQ(order[24], "new");
  EXPECT_TRUE(applied["a"] && applied["b"] && applied["c"] && applied["move"] && applied["new"]);
  for (int i = 0; i < 20; ++i) EXPECT_FALSE(applied["late" + std::to_string(i)]) << i;
  EXPECT_EQ(s.get("/sib/x").kv->value, "c") << "c, which writes what a wrote, went after it";
  EXPECT_TRUE(s.list("/sib/z/").kvs.empty());
  EXPECT_EQ(metric(*store, "store_etcd_chain_resends_total"), 0);
}

// ---- watches across a cut link ----------------------------------------------------

TEST_F(StoreEtcd, WatchResumesAfterTheLinkIsCutWithoutSkippingOrRepeating) {
  test::EtcdCluster etcd;
  TcpProxy proxy(port_of(etcd.client_url(0)));
  auto config = etcd.plugin_config();
  config["endpoints"] = {proxy.url()};
  config["request_timeout_ms"] = 30000;
  auto watcher = open(config, "watcher");
  auto writer = open(etcd.plugin_config(), "writer");  // straight to etcd
  SyncStore w(loop_, *writer);
  const int64_t start = w.put("/r/start", "0").revision;
  WatchLog log;
  auto watch = watch_into(watcher->client(), "/r/", true, start, log);
  std::vector<int64_t> written = {start};
  for (int round = 0; round < 3; ++round) {
    for (int i = 0; i < 20; ++i)
      written.push_back(
          w.put("/r/" + std::to_string(i % 5), std::to_string(round * 100 + i)).revision);
    run_until([&] { return log.events() >= written.size(); }, "the events before the cut");
    proxy.cut();
    // Changes while the watcher is cut off.
    for (int i = 0; i < 20; ++i)
      written.push_back(w.put("/r/x" + std::to_string(i % 3), std::to_string(round)).revision);
    written.push_back(w.remove("/r/x0").revision);
    run_for(300);
    proxy.restore();
    run_until([&] { return log.events() >= written.size(); }, "the events after the cut");
  }
  run_for(200);
  std::vector<int64_t> seen;
  for (const auto &b : log.batches) seen.push_back(b.revision);
  EXPECT_EQ(seen, written) << "every revision exactly once, in order";
  EXPECT_FALSE(log.ended);
  EXPECT_GE(metric(*watcher, "store_etcd_watch_resumes_total"), 3);
}

TEST_F(StoreEtcd, ACompactedResumePointEndsTheWatchAsCompacted) {
  test::EtcdCluster etcd;
  TcpProxy proxy(port_of(etcd.client_url(0)));
  auto config = etcd.plugin_config();
  config["endpoints"] = {proxy.url()};
  auto watcher = open(config, "watcher");
  auto writer = open(etcd.plugin_config(), "writer");
  SyncStore w(loop_, *writer);
  WatchLog log;
  auto watch = watch_into(watcher->client(), "/cp/", true, 0, log);
  SyncStore wsync(loop_, *watcher);
  ASSERT_OK(wsync.put("/cp/a", "1").result);  // the watch is live once this is seen
  run_until([&] { return log.events() >= 1; }, "the first event");
  proxy.cut();
  for (int i = 0; i < 5; ++i) ASSERT_OK(w.put("/cp/b", std::to_string(i)).result);
  const int64_t compacted = w.revision();
  ASSERT_OK(w.compact(compacted));
  proxy.restore();
  run_until([&] { return log.ended.has_value(); }, "the resumed watch to end");
  EXPECT_EQ(log.ended->status, FLOTILLA_E_COMPACTED) << log.ended->message;
  EXPECT_NE(log.ended->message.find("compacted"), std::string::npos) << log.ended->message;
  EXPECT_EQ(log.events(), 1u) << "no event from the compacted history";
  // The recipe the message gives: read again at one revision, watch after it.
  auto listed = wsync.list("/cp/");
  ASSERT_OK(listed.result);
  EXPECT_EQ(listed.kvs.size(), 2u);
  WatchLog again;
  auto w2 = watch_into(watcher->client(), "/cp/", true, listed.revision + 1, again);
  auto next = w.put("/cp/c", "after");
  run_until([&] { return again.events() >= 1; }, "the next event");
  EXPECT_EQ(again.batches[0].revision, next.revision);
}

// ---- writes that failed "unavailable" ------------------------------------------------

TEST_F(StoreEtcd, WritesCutInFlightAreNeverAppliedTwice) {
  test::EtcdCluster etcd;
  TcpProxy proxy(port_of(etcd.client_url(0)));
  auto config = etcd.plugin_config();
  config["endpoints"] = {proxy.url()};
  config["request_timeout_ms"] = 20000;
  auto store = open(config);
  SyncStore s(loop_, *store);
  ASSERT_OK(s.put("/g/warmup", "v").result);
  constexpr int kRounds = 15;
  int acked = 0, failed = 0;
  for (int i = 0; i < kRounds; ++i) {
    bool done = false;
    store->client().put("/g/" + std::to_string(i), "v", [&](StoreResult r, int64_t) {
      (r.ok() ? acked : failed)++;
      done = true;
    });
    // Let the request leave (or not), then cut the link under it.
    run_for(i % 4);
    proxy.cut();
    run_for(100);
    proxy.restore();
    run_until([&] { return done; }, "the put to finish");
  }
  EXPECT_EQ(acked + failed, kRounds);
  auto all = s.list("/g/");
  ASSERT_OK(all.result);
  for (const auto &kv : all.kvs) EXPECT_EQ(kv.version, 1) << kv.key << " was applied twice";
  EXPECT_GE(static_cast<int>(all.kvs.size()) - 1, acked) << "every acknowledged put is there";
  std::printf("cut in flight: %d acknowledged, %d failed; %g retries, %g behind a guard\n", acked,
              failed, metric(*store, "store_etcd_retries_total"),
              metric(*store, "store_etcd_guarded_retries_total"));
}

// ---- three members ---------------------------------------------------------------------

TEST_F(StoreEtcd, KillingTheConnectedMemberFailsOverAndWatchesResume) {
  test::EtcdOptions o;
  o.members = 3;
  test::EtcdCluster etcd(o);
  auto store = open(etcd.plugin_config());  // connects to the first endpoint first
  SyncStore s(loop_, *store);
  auto lease = s.grant(30);
  ASSERT_OK(lease.result);
  const int64_t start = s.put("/f/0", "before").revision;
  WatchLog log;
  auto watch = watch_into(store->client(), "/f/", true, start, log);
  run_until([&] { return log.events() >= 1; }, "the first event");
  etcd.kill(0);
  std::vector<int64_t> written = {start};
  for (int i = 1; i <= 10; ++i) {
    auto w = s.put("/f/" + std::to_string(i), "after", i % 2 ? lease.id : 0);
    ASSERT_OK(w.result);
    written.push_back(w.revision);
  }
  EXPECT_OK(s.keepalive(lease.id).result);
  run_until([&] { return log.events() >= written.size(); }, "every event after the failover");
  std::vector<int64_t> seen;
  for (const auto &b : log.batches) seen.push_back(b.revision);
  EXPECT_EQ(seen, written);
  EXPECT_GE(metric(*store, "store_etcd_failovers_total"), 1);
  EXPECT_EQ(s.list("/f/").kvs.size(), 11u);
}

TEST_F(StoreEtcd, AMemberWithoutALeaderEndsTheStreamsInsteadOfHanging) {
  test::EtcdOptions o;
  o.members = 3;
  test::EtcdCluster etcd(o);
  auto config = etcd.plugin_config();
  config["endpoints"] = {etcd.client_url(0)};
  auto store = open(config);
  SyncStore s(loop_, *store);
  WatchLog log;
  auto watch = watch_into(store->client(), "/hl/", true, 0, log);
  ASSERT_OK(s.put("/hl/a", "1").result);
  run_until([&] { return log.events() >= 1; }, "the first event");
  const double resumes = metric(*store, "store_etcd_watch_resumes_total");
  etcd.kill(1);
  etcd.kill(2);
  // Member 0 still runs and holds the connection, but has no leader: with
  // hasleader it cancels the stream, and the plugin starts it again.
  run_until([&] { return metric(*store, "store_etcd_watch_resumes_total") > resumes; },
            "the leaderless member to end the watch stream");
  etcd.restart(1);
  etcd.restart(2);
  auto after = s.put("/hl/b", "2");
  ASSERT_OK(after.result);
  run_until([&] { return log.events() >= 2; }, "the event after quorum came back");
  EXPECT_EQ(log.batches.back().revision, after.revision);
  EXPECT_FALSE(log.ended);
}

// ---- TLS ----------------------------------------------------------------------------------

TEST_F(StoreEtcd, TlsWithAClientCertificate) {
  test::EtcdOptions o;
  o.tls = true;
  test::EtcdCluster etcd(o);
  {
    auto store = open(etcd.plugin_config());
    SyncStore s(loop_, *store);
    auto w = s.put("/tls/a", "secret");
    ASSERT_OK(w.result);
    WatchLog log;
    auto watch = watch_into(store->client(), "/tls/", true, w.revision, log);
    run_until([&] { return log.events() >= 1; }, "the event over TLS");
    EXPECT_EQ(s.get("/tls/a").kv->value, "secret");
  }
  // Without a client certificate etcd refuses the handshake.
  auto config = etcd.plugin_config();
  config.erase("cert_file");
  config.erase("key_file");
  config["request_timeout_ms"] = 1500;
  auto anonymous = open(config, "anonymous");
  SyncStore s(loop_, *anonymous);
  auto refused = s.get("/tls/a");
  EXPECT_EQ(refused.result.status, FLOTILLA_E_UNAVAILABLE) << refused.result.message;
  // Nor does plain HTTP reach it.
  auto plain = etcd.plugin_config();
  plain = {{"endpoints", {"http://127.0.0.1:" + std::to_string(port_of(etcd.client_url(0)))}},
           {"request_timeout_ms", 1500}};
  auto cleartext = open(plain, "cleartext");
  SyncStore c(loop_, *cleartext);
  EXPECT_FALSE(c.get("/tls/a").result.ok());
}

// ---- one connection ---------------------------------------------------------------------------

TEST_F(StoreEtcd, HundredWatchesShareOneConnection) {
  test::EtcdCluster etcd;
  auto store = open(etcd.plugin_config());
  SyncStore s(loop_, *store);
  const int port = port_of(etcd.client_url(0));
  std::vector<std::unique_ptr<WatchLog>> logs;
  std::vector<std::unique_ptr<StoreClient::Watch>> watches;
  for (int i = 0; i < 100; ++i) {
    logs.push_back(std::make_unique<WatchLog>());
    watches.push_back(
        watch_into(store->client(), "/one/" + std::to_string(i), false, 0, *logs.back()));
  }
  for (int i = 0; i < 100; ++i) ASSERT_OK(s.put("/one/" + std::to_string(i), "v").result);
  run_until(
      [&] {
        for (auto &l : logs)
          if (l->events() < 1) return false;
        return true;
      },
      "an event on every watch");
  EXPECT_EQ(connections_to(port), 1) << "one HTTP/2 connection for every watch and request";
  std::printf("100 watches: %d TCP connections to etcd, %d threads in the test process\n",
              connections_to(port), threads_of_this_process());
}

}  // namespace
}  // namespace flotilla::store_test
