// ABI call overhead: nanoseconds per call of the same trivial function
//   - called directly (baseline; the compiler may not inline it),
//   - through a function pointer in the same binary,
//   - through a plugin's vtable, loaded by the real PluginHost (dlopen).
// Prints a table and the plugin call's cost over the direct call.
#include <time.h>
#include <uv.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "plugin_host.h"

namespace {

struct BenchV1 {
  uint32_t struct_size;
  uint64_t (*step)(void *self, uint64_t x);
};

__attribute__((noinline)) uint64_t direct_step(void *, uint64_t x) {
  asm volatile("");
  return x * 2654435761u + 1;
}

double now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

template <class F>
double ns_per_call(F call, uint64_t iterations) {
  uint64_t x = 1;
  double best = 1e30;
  for (int round = 0; round < 5; ++round) {  // best of 5: the least disturbed run
    double t0 = now_ns();
    for (uint64_t i = 0; i < iterations; ++i) x = call(x);
    double t = (now_ns() - t0) / iterations;
    if (t < best) best = t;
  }
  if (x == 42) std::puts("");  // keep x alive
  return best;
}

}  // namespace

int main(int argc, char **argv) {
  uint64_t iterations = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 50'000'000;
  uv_loop_t loop;
  uv_loop_init(&loop);
  char tmpl[] = "/tmp/flotilla-bench-XXXXXX";
  if (!mkdtemp(tmpl)) return 1;
  flotilla::PluginHost host(&loop, {"bench", tmpl, "(bench)"});
  flotilla::PluginSettings s;
  s.name = "abi-call";
  s.path = ABI_CALL_PLUGIN_PATH;
  host.start({s});
  void *self = nullptr;
  auto *vt = host.find<BenchV1>("bench.step/1", &self);
  if (!vt) {
    std::fprintf(stderr, "bench plugin did not load\n");
    return 1;
  }

  uint64_t (*volatile fp)(void *, uint64_t) = direct_step;
  double direct = ns_per_call([](uint64_t x) { return direct_step(nullptr, x); }, iterations);
  double pointer = ns_per_call([&](uint64_t x) { return fp(nullptr, x); }, iterations);
  const BenchV1 *volatile vtv = vt;
  double plugin = ns_per_call([&](uint64_t x) { return vtv->step(self, x); }, iterations);

  std::printf("ABI call overhead (%llu calls, best of 5)\n", static_cast<unsigned long long>(iterations));
  std::printf("  %-44s %8.2f ns/call\n", "direct call (baseline)", direct);
  std::printf("  %-44s %8.2f ns/call\n", "function pointer, same binary", pointer);
  std::printf("  %-44s %8.2f ns/call\n", "plugin vtable via PluginHost (dlopen)", plugin);
  std::printf("  plugin call costs %.2f ns more than a direct call (%.2fx)\n", plugin - direct,
              plugin / direct);
  host.stop();
  uv_run(&loop, UV_RUN_NOWAIT);
  std::string cmd = std::string("rm -rf ") + tmpl;
  if (std::system(cmd.c_str()) != 0) return 1;
  return 0;
}
