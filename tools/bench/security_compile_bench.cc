// Profile compile time: how long the security plugin spends building the
// BPF program with libseccomp for each built-in profile (both capability
// variants, as at load), median of N runs, plus resolving one task's OCI
// patch (the per-container cost on the loop thread).
//   security_compile_bench [N]
//   security_compile_bench --print PROFILE   the OCI patch a root task with no
//                                            [task.security] table gets
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "profile.h"

namespace sec = flotilla::security;

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

}  // namespace

int main(int argc, char **argv) {
  if (argc == 3 && std::strcmp(argv[1], "--print") == 0) {
    try {
      std::printf("%s\n",
                  sec::resolve_oci(sec::builtin_profile(argv[2]), {}, sec::HostInfo::current())
                      .dump(2)
                      .c_str());
      return 0;
    } catch (const sec::ProfileError &e) {
      std::fprintf(stderr, "%s\n", e.what());
      return 1;
    }
  }
  int n = argc > 1 ? std::atoi(argv[1]) : 50;
  if (n < 20) n = 20;
  sec::HostInfo host = sec::HostInfo::current();
  for (const char *name : {"default", "restricted"}) {
    sec::Profile p = sec::builtin_profile(name);
    std::vector<double> compile, resolve;
    sec::TaskSecurity t;
    t.user = "65534";
    for (int i = 0; i < n; ++i) {
      compile.push_back(sec::compile_profile(p, host));
      auto start = std::chrono::steady_clock::now();
      auto patch = sec::resolve_oci(p, t, host);
      resolve.push_back(
          std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
              .count());
      if (patch.empty()) return 1;
    }
    size_t rules = 0;
    for (const auto &r : p.rules) rules += r.names.size();
    std::printf(
        "profile %-10s %3zu syscall names: compile (2 BPF programs) median %8.1f us, "
        "resolve OCI patch median %6.1f us (n=%d)\n",
        name, rules, median(compile), median(resolve), n);
  }
  return 0;
}
