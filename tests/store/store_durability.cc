// Durability of store-local: a child process writes as fast as it can and
// prints each key once its put was acknowledged; the test kill -9s it at
// several points, reopens the store and checks that every acknowledged
// write is there, exactly, and that the store is consistent. Then it damages
// the log tail the way a crash in the middle of a write would, and checks
// that recovery truncates the damage and keeps everything before it.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "byte_codec.h"
#include "store_durability_value.h"
#include "store_harness.h"
#include "wal_record.h"

namespace flotilla::store_test {
namespace {

namespace fs = std::filesystem;

// The writer child, killed by pid when the test is done with it or fails.
class WriterProcess {
 public:
  WriterProcess(const std::string &data_dir, const std::string &config, const std::string &prefix,
                int limit) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(fds[1], STDOUT_FILENO);
      const std::string lim = std::to_string(limit);
      ::execl(STORE_DURABILITY_WRITER, STORE_DURABILITY_WRITER, data_dir.c_str(), config.c_str(),
              prefix.c_str(), lim.c_str(), static_cast<char *>(nullptr));
      ::_exit(127);
    }
    ::close(fds[1]);
    out_ = fds[0];
    if (pid_ < 0) throw std::runtime_error("fork failed");
  }
  ~WriterProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (out_ >= 0) ::close(out_);
  }

  // Read acknowledgements until at least n arrived (or the child exits).
  void read_until(size_t n) {
    while (acked_.size() < n && read_some()) {
    }
  }
  // kill -9, then collect everything it printed before it died.
  int kill_and_reap() {
    ::kill(pid_, SIGKILL);
    while (read_some()) {
    }
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return status;
  }
  const std::vector<std::pair<int, int64_t>> &acked() const { return acked_; }

 private:
  bool read_some() {
    char buf[65536];
    ssize_t n = ::read(out_, buf, sizeof buf);
    if (n < 0 && errno == EINTR) return true;
    if (n <= 0) return false;
    partial_.append(buf, static_cast<size_t>(n));
    size_t nl;
    while ((nl = partial_.find('\n')) != std::string::npos) {
      std::istringstream line(partial_.substr(0, nl));
      partial_.erase(0, nl + 1);
      int index = -1;
      long long rev = 0;
      line >> index >> rev;
      acked_.emplace_back(index, rev);
    }
    return true;
  }

  pid_t pid_ = -1;
  int out_ = -1;
  std::string partial_;
  std::vector<std::pair<int, int64_t>> acked_;
};

class StoreDurability : public ::testing::Test {
 protected:
  std::string data_dir() const { return dir_.path() + "/data"; }
  std::string store_dir() const { return data_dir() + "/plugins/store-local"; }

  // One round: start a writer, let it get n writes acknowledged, kill -9.
  void crash_writer(const std::string &prefix, const std::string &config, size_t n) {
    WriterProcess w(data_dir(), config, prefix, 1'000'000);
    w.read_until(n);
    ASSERT_GE(w.acked().size(), n) << "the writer stopped early";
    int status = w.kill_and_reap();
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "the writer must die by our SIGKILL, status " << status;
    acked_[prefix] = w.acked();
  }

  // Every acknowledged key of every round is there with its value and the
  // revision its acknowledgement named; keys exist as a gap-free prefix of
  // what was issued; revisions rise with the issue order.
  void verify(const std::string &config = "{}") {
    LoadedStore store(loop_, store_local_settings(nlohmann::json::parse(config)), data_dir());
    SyncStore s(loop_, store);
    const int64_t current = s.revision();
    for (const auto &[prefix, acked] : acked_) {
      SCOPED_TRACE("round " + prefix);
      auto list = s.list(prefix);
      ASSERT_TRUE(list.result.ok()) << list.result.message;
      std::map<std::string, KeyValue> present;
      for (auto &kv : list.kvs) present.emplace(kv.key, kv);
      int64_t max_rev = 0;
      for (const auto &[index, rev] : acked) {
        const std::string key = durable_key(prefix, index);
        auto it = present.find(key);
        ASSERT_NE(it, present.end())
            << "acknowledged key " << key << " (revision " << rev << ") was lost";
        EXPECT_EQ(it->second.value, durable_value(key)) << key;
        EXPECT_EQ(it->second.mod_revision, rev) << key;
        EXPECT_EQ(it->second.version, 1) << key;
        max_rev = std::max(max_rev, rev);
      }
      EXPECT_GE(current, max_rev);
      int index = 0;
      int64_t last_rev = 0;
      for (const auto &[key, kv] : present) {
        EXPECT_EQ(key, durable_key(prefix, index)) << "keys must be a gap-free prefix";
        EXPECT_EQ(kv.value, durable_value(key)) << "a surviving unacknowledged write is whole";
        EXPECT_GT(kv.mod_revision, last_rev) << "revisions rise in write order";
        last_rev = kv.mod_revision;
        ++index;
      }
      if (!acked.empty()) {
        EXPECT_GE(static_cast<int>(present.size()), acked.back().first + 1);
      }
    }
  }

  std::string last_segment() const {
    std::string last;
    for (const auto &e : fs::directory_iterator(store_dir())) {
      std::string name = e.path().filename().string();
      if (name.rfind("wal-", 0) == 0 && e.path().string() > last) last = e.path().string();
    }
    return last;
  }

  // The seq and revision of the last record in the log.
  std::pair<uint64_t, int64_t> last_record(const std::string &segment) const {
    std::ifstream in(segment, std::ios::binary);
    std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::pair<uint64_t, int64_t> out{0, 0};
    std::string damage;
    store_local::scan_frames(
        content,
        [&](std::string_view payload, size_t) {
          auto r = store_local::decode_payload(payload);
          out.first = r.seq;
          if (r.record.revision) out.second = r.record.revision;
        },
        &damage);
    return out;
  }

  // The kill -9 may have torn the writer's last record: the segment is cut
  // back to its intact frames.
  static void cut_torn_tail(const std::string &segment) {
    std::ifstream in(segment, std::ios::binary);
    std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    fs::resize_file(segment,
                    store_local::scan_frames(content, [](std::string_view, size_t) {}, nullptr));
  }

  static void append(const std::string &path, const std::string &bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::app);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }

  TempDir dir_{"store-durability"};
  TestLoop loop_;
  std::map<std::string, std::vector<std::pair<int, int64_t>>> acked_;
};

TEST_F(StoreDurability, AcknowledgedWritesSurviveKillNine) {
  struct Round {
    const char *prefix;
    const char *config;
    size_t kill_after;
  } rounds[] = {
      {"/r1/", "{}", 1},
      {"/r2/", "{}", 300},
      {"/r3/", R"({"snapshot_every": 50})", 1000},
      {"/r4/", R"({"snapshot_every": 7, "snapshot_log_bytes": 4096})", 500},
      {"/r5/", R"({"fsync": false})", 400},
      {"/r6/", R"({"history": 10, "snapshot_every": 100})", 700},
  };
  for (const auto &r : rounds) {
    SCOPED_TRACE(std::string("round ") + r.prefix + " " + r.config);
    crash_writer(r.prefix, r.config, r.kill_after);
    verify(r.config);
    if (HasFatalFailure()) return;
  }
}

TEST_F(StoreDurability, TornTailIsTruncatedAndEarlierRecordsKept) {
  crash_writer("/t1/", "{}", 200);
  const std::string seg = last_segment();
  ASSERT_FALSE(seg.empty());
  const auto [seq, rev] = last_record(seg);
  ASSERT_GT(seq, 0u);

  // A record that was being written when the power went: a valid frame for
  // the next sequence number, cut short at several points.
  store_local::Record next;
  next.type = store_local::Record::Type::changes;
  next.revision = rev + 1;
  next.changes.push_back(store_local::Change{false, "/t1/torn", std::string(300, 'z'), 0});
  std::string frame;
  store_local::append_frame(frame, seq + 1, next);
  for (size_t cut : {size_t{3}, size_t{8}, size_t{20}, frame.size() - 1}) {
    SCOPED_TRACE("frame cut at " + std::to_string(cut));
    append(seg, frame.substr(0, cut));
    verify();
  }

  // Garbage and a zero-filled tail (ext4 after a crash) likewise.
  append(seg, std::string("\x13\x37\xbe\xef garbage that is no frame"));
  verify();
  append(seg, std::string(8192, '\0'));
  verify();

  // The store keeps working after the truncation: new writes append behind
  // the last good record and survive the next restart.
  {
    LoadedStore store(loop_, store_local_settings(), data_dir());
    SyncStore s(loop_, store);
    std::vector<std::pair<int, int64_t>> more;
    for (int i = 0; i < 20; ++i) {
      auto w = s.put(durable_key("/t2/", i), durable_value(durable_key("/t2/", i)));
      ASSERT_TRUE(w.result.ok()) << w.result.message;
      more.emplace_back(i, w.revision);
    }
    acked_["/t2/"] = more;
  }
  verify();
}

// One batch can span two segments (a snapshot rotated the log in between):
// a crash may tear the first and leave part of the second. Neither was
// acknowledged; the later segment must go, and stay gone.
TEST_F(StoreDurability, TornRecordDropsTheSegmentsAfterIt) {
  crash_writer("/x/", "{}", 100);
  const std::string seg = last_segment();
  const auto [seq, rev] = last_record(seg);
  auto frame_for = [](uint64_t s, int64_t r, const std::string &key) {
    store_local::Record rec;
    rec.type = store_local::Record::Type::changes;
    rec.revision = r;
    rec.changes.push_back(store_local::Change{false, key, "v", 0});
    std::string frame;
    store_local::append_frame(frame, s, rec);
    return frame;
  };
  const std::string torn = frame_for(seq + 1, rev + 1, "/x-torn");
  append(seg, torn.substr(0, torn.size() / 2));
  char name[64];
  std::snprintf(name, sizeof name, "/wal-%016llx.log", static_cast<unsigned long long>(seq + 2));
  const std::string later = store_dir() + name;
  append(later, frame_for(seq + 2, rev + 2, "/x-later"));
  verify();
  EXPECT_FALSE(fs::exists(later));
  {
    LoadedStore store(loop_, store_local_settings(), data_dir());
    SyncStore s(loop_, store);
    EXPECT_FALSE(s.get("/x-later").kv);
    auto w = s.put("/x-after", "v");
    ASSERT_TRUE(w.result.ok()) << w.result.message;
  }
  verify();
}

TEST_F(StoreDurability, WholeUnacknowledgedRecordIsReplayed) {
  crash_writer("/u/", "{}", 50);
  const std::string seg = last_segment();
  const auto [seq, rev] = last_record(seg);
  // A whole record goes after the intact prefix, where the next write
  // would have gone.
  cut_torn_tail(seg);
  store_local::Record next;
  next.type = store_local::Record::Type::changes;
  next.revision = rev + 1;
  next.changes.push_back(store_local::Change{false, "/extra", "whole", 0});
  std::string frame;
  store_local::append_frame(frame, seq + 1, next);
  append(seg, frame);
  LoadedStore store(loop_, store_local_settings(), data_dir());
  SyncStore s(loop_, store);
  auto g = s.get("/extra");
  ASSERT_TRUE(g.kv) << "a whole record that reached the disk is part of the store";
  EXPECT_EQ(g.kv->mod_revision, rev + 1);
}

TEST_F(StoreDurability, MissingRecordsRefuseToStart) {
  crash_writer("/g/", "{}", 50);
  const std::string seg = last_segment();
  const auto [seq, rev] = last_record(seg);
  store_local::Record later;
  later.type = store_local::Record::Type::changes;
  later.revision = rev + 3;
  later.changes.push_back(store_local::Change{false, "/gap", "x", 0});
  std::string frame;
  store_local::append_frame(frame, seq + 3, later);  // seq + 1 and + 2 are missing
  // After a torn tail, recovery would drop the appended record with it as
  // one interrupted write (it did, now and then): the hole must follow the
  // intact prefix.
  cut_torn_tail(seg);
  append(seg, frame);
  try {
    LoadedStore store(loop_, store_local_settings(), data_dir());
    FAIL() << "a log with a hole must not be served";
  } catch (const std::exception &e) {
    EXPECT_NE(std::string(e.what()).find("missing"), std::string::npos) << e.what();
  }
}

TEST_F(StoreDurability, DamagedSnapshotRefusesToStart) {
  crash_writer("/s/", R"({"snapshot_every": 20})", 200);
  std::string snap;
  // The newest one: a kill between a snapshot's rename and its clean-up
  // leaves the previous snapshot too, which recovery ignores.
  for (const auto &e : fs::directory_iterator(store_dir()))
    if (e.path().extension() == ".snap") snap = std::max(snap, e.path().string());
  ASSERT_FALSE(snap.empty()) << "snapshot_every 20 must have written a snapshot";
  {
    std::fstream f(snap, std::ios::in | std::ios::out | std::ios::binary);
    const auto middle = static_cast<std::streamoff>(fs::file_size(snap) / 2);
    f.seekg(middle);
    const char c = static_cast<char>(f.get());
    f.seekp(middle);
    f.put(static_cast<char>(c ^ 0xff));
  }
  try {
    LoadedStore store(loop_, store_local_settings(), data_dir());
    FAIL() << "a damaged snapshot must not be served";
  } catch (const std::exception &e) {
    EXPECT_NE(std::string(e.what()).find("damaged"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace flotilla::store_test
