/*
 * hello-c99 — a Flotilla plugin in plain C99, built with
 * -std=c99 -pedantic -Werror against the installed flotilla-plugin headers
 * alone. It proves that the ABI needs no C++ and shows the shape of a
 * plugin: one exported entry, an instance, a vtable fetched by id.
 *
 * It serves "example.greeter/1", reads `greeting` from its config table,
 * and once started publishes "hello.started" on the event bus from a timer.
 */
#include <flotilla/flotilla.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GREETER_INTERFACE_ID "example.greeter/1"

typedef struct greeter_v1 {
  uint32_t struct_size;
  /* [loop-thread] Copies "<greeting>, <name>!" into buf. */
  flotilla_status (*greet)(void *self, const char *name, char *buf, size_t buf_len);
} greeter_v1;

typedef struct hello {
  const flotilla_host *host;
  char greeting[64];
  flotilla_handle timer;
} hello;

/* The config arrives as JSON; a C plugin with one string key needs no JSON
 * library: find "greeting":"..." and copy it. */
static int read_greeting(const char *json, char *out, size_t out_len) {
  const char *k = strstr(json, "\"greeting\"");
  const char *start;
  const char *end;
  size_t n;
  if (!k) return 0;
  start = strchr(k + 10, '"');
  if (!start) return -1;
  start++;
  end = strchr(start, '"');
  if (!end) return -1;
  n = (size_t)(end - start);
  if (n == 0 || n >= out_len) return -1;
  memcpy(out, start, n);
  out[n] = '\0';
  return 1;
}

static void on_started(void *user) {
  hello *h = (hello *)user;
  char payload[128];
  h->timer = 0; /* one-shot: the host released the handle */
  snprintf(payload, sizeof payload, "{\"greeting\":\"%s\"}", h->greeting);
  h->host->event_publish(h->host->host_ctx, "hello.started", payload);
  h->host->metric_counter_add(h->host->host_ctx, "hello_started_total", 1.0);
}

static flotilla_status greet(void *self, const char *name, char *buf, size_t buf_len) {
  hello *h = (hello *)self;
  int n;
  if (!name || !buf) {
    h->host->set_error(h->host->host_ctx, "greet: name and buf are required");
    return FLOTILLA_E_INVALID;
  }
  n = snprintf(buf, buf_len, "%s, %s!", h->greeting, name);
  if (n < 0 || (size_t)n >= buf_len) {
    h->host->set_error(h->host->host_ctx, "greet: buffer too small");
    return FLOTILLA_E_INVALID;
  }
  return FLOTILLA_OK;
}

static const greeter_v1 greeter = {sizeof(greeter_v1), greet};

/* ABI 1.2: the same check as init, without an instance; every problem
 * goes to config_error (this plugin has one key, so at most one). */
static flotilla_status hello_check_config(const flotilla_host *host, uint32_t flags) {
  char greeting[64];
  (void)flags;
  if (read_greeting(host->config_json(host->host_ctx), greeting, sizeof greeting) < 0) {
    host->config_error(host->host_ctx, "greeting", "must be a string of 1 to 63 characters");
    return FLOTILLA_E_INVALID;
  }
  return FLOTILLA_OK;
}

static flotilla_status hello_init(const flotilla_host *host, void **instance_out) {
  hello *h;
  int r;
  if (host->struct_size < sizeof(flotilla_host)) {
    host->set_error(host->host_ctx, "hello-c99 needs a host table of ABI 1.0 or newer");
    return FLOTILLA_E_UNSUPPORTED;
  }
  h = (hello *)calloc(1, sizeof *h);
  if (!h) return FLOTILLA_E_NOMEM;
  h->host = host;
  strcpy(h->greeting, "Hello");
  r = read_greeting(host->config_json(host->host_ctx), h->greeting, sizeof h->greeting);
  if (r < 0) {
    host->config_error(host->host_ctx, "greeting", "must be a string of 1 to 63 characters");
    free(h);
    return FLOTILLA_E_INVALID;
  }
  h->timer = host->timer_start(host->host_ctx, 1, 0, on_started, h);
  host->log(host->host_ctx, FLOTILLA_LOG_INFO, "hello-c99 started");
  *instance_out = h;
  return FLOTILLA_OK;
}

static void hello_deinit(void *instance) {
  hello *h = (hello *)instance;
  if (h->timer) h->host->timer_stop(h->host->host_ctx, h->timer);
  free(h);
}

static const void *hello_get_interface(void *instance, const char *id) {
  (void)instance;
  if (strcmp(id, GREETER_INTERFACE_ID) == 0) return &greeter;
  return NULL;
}

static const char *const hello_provides[] = {GREETER_INTERFACE_ID, NULL};
static const char *const hello_depends_on[] = {NULL};

FLOTILLA_PLUGIN_EXPORT const flotilla_entry flotilla_plugin_entry = {
    sizeof(flotilla_entry),
    FLOTILLA_ABI_VERSION_MAJOR,
    FLOTILLA_ABI_VERSION_MINOR,
    "org.flotilla.example.hello-c99",
    "1.0.0",
    "example plugin in plain C99: a greeter",
    hello_provides,
    hello_depends_on,
    hello_init,
    hello_deinit,
    hello_get_interface,
    hello_check_config};
