#include "proc_info.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

namespace flotilla::runc {

uint64_t proc_start_ticks(pid_t pid) {
  if (pid <= 0) return 0;
  std::string path = "/proc/" + std::to_string(pid) + "/stat";
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buf[1024];
  ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  // The command name (field 2) may contain spaces and ')'; fields after the
  // last ')' are plain numbers. starttime is the 20th of those.
  std::string s(buf, static_cast<size_t>(n));
  size_t pos = s.rfind(')');
  if (pos == std::string::npos) return 0;
  pos += 2;  // ") "
  for (int field = 3; field < 22; ++field) {
    pos = s.find(' ', pos);
    if (pos == std::string::npos) return 0;
    ++pos;
  }
  return std::strtoull(s.c_str() + pos, nullptr, 10);
}

bool proc_is(pid_t pid, uint64_t start_ticks) {
  uint64_t t = proc_start_ticks(pid);
  return t != 0 && (start_ticks == 0 || t == start_ticks);
}

}  // namespace flotilla::runc
