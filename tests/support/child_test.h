// A test that must kill a process mid-way (kill -9) runs that process as
// the test binary itself, started again with one child-mode test selected
// (--gtest_filter=<filter>) and its inputs in the environment. Everything is
// prepared before fork: the child only execs.
#pragma once

#include <sys/types.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

namespace flotilla::testing {

// Starts /proc/self/exe --gtest_filter=<filter> with env (and PATH) as its
// whole environment. Returns the child's pid, or -1 when fork failed.
inline pid_t spawn_test_child(const std::string &filter, std::vector<std::string> env) {
  const char *path = getenv("PATH");
  env.push_back(std::string("PATH=") + (path ? path : "/usr/sbin:/usr/bin:/sbin:/bin"));
  std::vector<char *> envp;
  for (auto &e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::string exe = std::filesystem::read_symlink("/proc/self/exe").string();
  std::string arg = "--gtest_filter=" + filter;
  char *argv[] = {exe.data(), arg.data(), nullptr};
  pid_t child = fork();
  if (child == 0) {
    execve(exe.c_str(), argv, envp.data());
    _exit(127);
  }
  return child;
}

}  // namespace flotilla::testing
