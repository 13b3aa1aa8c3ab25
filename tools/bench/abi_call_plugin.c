/* A plugin with one trivial function, so that abi_call_bench measures the
 * cost of the call itself through a vtable across a shared-object boundary. */
#include <flotilla/flotilla.h>
#include <string.h>

typedef struct bench_v1 {
  uint32_t struct_size;
  uint64_t (*step)(void *self, uint64_t x);
} bench_v1;

static uint64_t step(void *self, uint64_t x) {
  (void)self;
  return x * 2654435761u + 1;
}

static const bench_v1 vtable = {sizeof(bench_v1), step};
static int instance;

static flotilla_status b_init(const flotilla_host *host, void **out) {
  (void)host;
  *out = &instance;
  return FLOTILLA_OK;
}
static void b_deinit(void *self) { (void)self; }
static const void *b_get(void *self, const char *id) {
  (void)self;
  return strcmp(id, "bench.step/1") == 0 ? &vtable : NULL;
}
static const char *const provides[] = {"bench.step/1", NULL};
static const char *const none[] = {NULL};

FLOTILLA_PLUGIN_EXPORT const flotilla_entry flotilla_plugin_entry = {
    sizeof(flotilla_entry),
    FLOTILLA_ABI_VERSION_MAJOR,
    FLOTILLA_ABI_VERSION_MINOR,
    "org.flotilla.bench.abi-call",
    "1.0.0",
    "benchmark: one trivial function",
    provides,
    none,
    b_init,
    b_deinit,
    b_get,
    NULL};
