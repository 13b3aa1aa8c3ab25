// confine_daemon() on a real process: each test forks a child that confines
// itself, so the test runner stays unconfined. Needs root (CAP_SETPCAP to
// shrink the bounding set); skipped otherwise.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>
#include <thread>

#include "node/confine.h"
#include "error.h"

namespace flotilla {
namespace {

// Run fn in a forked child; its exit code (fn's return), or -1.
template <class Fn>
int in_child(Fn fn) {
  pid_t pid = fork();
  if (pid == 0) _exit(fn());
  int st = 0;
  if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st)) return -1;
  return WEXITSTATUS(st);
}

unsigned long long cap_bnd() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("CapBnd:", 0) == 0) return std::stoull(line.substr(7), nullptr, 16);
  return ~0ULL;
}

class Confine : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "SKIPPED: confine_daemon needs root (CAP_SETPCAP)";
  }
};

TEST_F(Confine, DropsCapabilitiesAndDeniesCallsForItselfAndItsChildren) {
  int rc = in_child([] {
    try {
      ConfineResult r = confine_daemon();
      if (r.dropped_caps.empty() || r.denied_syscalls.empty()) return 10;
    } catch (const std::exception &) {
      return 11;
    }
    if (cap_bnd() & (1ULL << 16)) return 12;     // CAP_SYS_MODULE still in the bounding set
    if (!(cap_bnd() & (1ULL << 21))) return 13;  // CAP_SYS_ADMIN must stay (runc needs it)
    // A child inherits the filter: userfaultfd (UFFD_USER_MODE_ONLY needs
    // no privilege) is EPERM; an ordinary call still works.
    return in_child([] {
      long fd = syscall(SYS_userfaultfd, O_CLOEXEC | 1);
      if (fd >= 0) return 20;
      if (errno != EPERM) return 21;
      if (syscall(SYS_getpid) <= 0) return 22;
      return 0;
    });
  });
  EXPECT_EQ(rc, 0) << "10: nothing applied, 11: threw, 12: SYS_MODULE kept, 13: SYS_ADMIN "
                      "dropped, 20: userfaultfd allowed, 21: wrong errno, 22: getpid failed";
}

TEST_F(Confine, RefusesOnceThereAreThreads) {
  int rc = in_child([] {
    std::thread t([] { std::this_thread::sleep_for(std::chrono::milliseconds(300)); });
    int out = 1;
    try {
      confine_daemon();
    } catch (const Error &e) {
      out = std::string(e.what()).find("threads; capabilities are per thread") != std::string::npos
                ? 0
                : 2;
    }
    t.join();
    return out;
  });
  EXPECT_EQ(rc, 0);
}

}  // namespace
}  // namespace flotilla
