/*
 * proxy.h - the Switchboard proxy: listeners, worker threads, the HTTP/1.1
 * data path, and the process-wide log.
 *
 * The main thread owns the `struct proxy`: it builds it from a config, starts
 * the worker threads, and later asks them to reload, reopen logs or stop.
 * Workers each run their own libevent loop and never share a lock on the
 * request path. Nothing in this header pulls in libevent, so other modules
 * (the dashboard thread, which runs libwebsockets) may include it for the log.
 */
#ifndef SWITCHBOARD_PROXY_H
#define SWITCHBOARD_PROXY_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conf/conf.h"
#include "telemetry/telemetry.h"

#define SWITCHBOARD_VERSION "0.1.0"

/* ---- process log (error log), any thread -------------------------------- */

enum sb_log_level { SB_LOG_ERROR, SB_LOG_WARN, SB_LOG_INFO, SB_LOG_DEBUG };

/* One line to stderr: "2026-11-24T10:00:00.123Z [warn] message". Thread safe:
 * each line is written with one write(2). */
void sb_log(enum sb_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void sb_log_set_level(enum sb_log_level level);

/* ---- the proxy, main thread only --------------------------------------- */

struct proxy;

/*
 * Build the proxy from `conf` (not kept: everything needed is copied) and
 * open its listening sockets. Workers are not started yet. Returns NULL and
 * writes a message into `err` on failure (e.g. an address already in use).
 */
struct proxy *proxy_new(const struct conf *conf, char *err, size_t errlen);

/* Start the worker threads. 0 on success, -1 with `err` filled. */
int proxy_start(struct proxy *proxy, char *err, size_t errlen);

/*
 * Apply a new config to running workers: new requests use the new routes and
 * pools; requests in flight finish under the config they started with;
 * established client and idle backend connections are kept. Listeners are
 * opened for new addresses and closed for removed ones. On failure nothing
 * changes and `err` says why. A change of `workers` needs a restart and is
 * reported as a warning.
 */
int proxy_reload(struct proxy *proxy, const struct conf *conf,
                 char *err, size_t errlen);

/* Reopen the access log file (SIGUSR1, after log rotation). */
void proxy_reopen_logs(struct proxy *proxy);

/*
 * Stopping, in steps the main event loop can interleave with signals:
 * proxy_stop_begin() makes every worker stop accepting, close idle
 * connections and finish its in-flight requests (answered with Connection:
 * close); proxy_stop_poll() reaps the workers that are done and returns true
 * once all are; proxy_stop_now() makes the rest close everything at once
 * (grace period over, or a second signal).
 */
void proxy_stop_begin(struct proxy *proxy);
bool proxy_stop_poll(struct proxy *proxy);
void proxy_stop_now(struct proxy *proxy);

/* All of the above, blocking: at most `grace_ms` for in-flight requests. */
void proxy_shutdown(struct proxy *proxy, uint32_t grace_ms);

void proxy_free(struct proxy *proxy);

/* ---- what the proxy offers telemetry ----------------------------------- */

/* The workers' telemetry rings (one each), or NULL with *n = 0 when
 * telemetry is off. Owned by the proxy; valid until proxy_free(). */
struct tm_ring **proxy_rings(struct proxy *proxy, size_t *n);
struct tm_gauges *proxy_gauges(struct proxy *proxy);

/* The geolocation database (borrowed, read-only, may be NULL) the workers
 * use for the JSON access log. Before proxy_start(). */
struct geo_db;
void proxy_set_geo(struct proxy *proxy, const struct geo_db *geo);

/* Copy the current servers (pool, address, state, weight, in-flight) into
 * `out`; returns how many. Any thread: it takes a short lock against a
 * concurrent reload, never a lock of the request path. `proxy` is a
 * struct proxy *, typed void * to fit tm_aggregator_config.servers. */
size_t proxy_servers(void *proxy, struct tm_server_info *out, size_t max);

#endif
