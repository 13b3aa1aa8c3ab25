// Child process of the durability test: loads store-local through the real
// PluginHost and writes keys as fast as it can, many in flight. It prints
// "<index> <revision>" for a key only after the store acknowledged its put,
// so every line on stdout is a promise the store must keep after kill -9.
//
//   store_durability_writer DATA_DIR CONFIG_JSON PREFIX LIMIT
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "store_durability_value.h"
#include "store_harness.h"

using namespace flotilla;
using namespace flotilla::store_test;

int main(int argc, char **argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s DATA_DIR CONFIG_JSON PREFIX LIMIT\n", argv[0]);
    return 2;
  }
  const std::string data_dir = argv[1];
  const std::string prefix = argv[3];
  const int limit = std::atoi(argv[4]);
  constexpr int kInFlight = 64;

  TestLoop loop;
  std::unique_ptr<LoadedStore> store;
  try {
    store = std::make_unique<LoadedStore>(
        loop, store_local_settings(nlohmann::json::parse(argv[2])), data_dir);
  } catch (const std::exception &e) {
    std::fprintf(stderr, "writer: cannot start the store: %s\n", e.what());
    return 3;
  }
  int next = 0, in_flight = 0;
  std::function<void()> issue = [&] {
    while (in_flight < kInFlight && next < limit) {
      const int index = next++;
      const std::string key = durable_key(prefix, index);
      ++in_flight;
      store->client().put(key, durable_value(key), [&, index](StoreResult r, int64_t rev) {
        --in_flight;
        if (!r.ok()) {
          std::fprintf(stderr, "writer: put %d failed: %s\n", index, r.message.c_str());
          std::_Exit(4);
        }
        char line[64];
        int n = std::snprintf(line, sizeof line, "%d %lld\n", index, static_cast<long long>(rev));
        if (::write(STDOUT_FILENO, line, static_cast<size_t>(n)) != n) std::_Exit(5);
        issue();
      });
    }
  };
  issue();
  loop.run_until([&] { return next == limit && in_flight == 0; }, "the writes");
  store.reset();
  return 0;
}
