#include "rfc3339.h"

#include <time.h>

#include <cstdio>

namespace flotilla {

std::string rfc3339_now(bool milliseconds) {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  tm t{};
  gmtime_r(&ts.tv_sec, &t);
  char buf[40];
  size_t n = strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &t);
  if (milliseconds)
    snprintf(buf + n, sizeof buf - n, ".%03ldZ", ts.tv_nsec / 1000000);
  else
    snprintf(buf + n, sizeof buf - n, "Z");
  return buf;
}

}  // namespace flotilla
