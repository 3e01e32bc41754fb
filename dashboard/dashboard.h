/*
 * dashboard.h - the dashboard server: one libwebsockets context running its
 * own service loop in its own thread (Debian's libwebsockets has no libevent
 * support, and the proxy's workers never touch libwebsockets).
 *
 * It serves, on dashboard.listen:
 *   /                  the live traffic page and its assets (embedded in the
 *                      binary at build time; nothing from a CDN);
 *                      /?token=TOKEN sets the sb_token cookie, then 302 to /
 *   /metrics           Prometheus text (tm_prometheus)
 *   /api/stats         the aggregates as JSON (tm_stats_json; ?pretty=1)
 *   /api/servers       servers and their state (tm_servers_json)
 *   WebSocket, subprotocol "switchboard.telemetry" (any path), text messages:
 *     {"type":"snapshot","seq":N,"stats":{...}}   on connect, and again after
 *                      the client fell behind: the whole model (the last 5
 *                      minutes), as /api/stats has it
 *     {"type":"delta","seq":N,"since":S,"delta":{...}}   at dashboard.push_hz
 *                      when the model changed: tm_delta_json() since S (the
 *                      previous message's seq), without "recent"
 *     {"type":"events","seq":N,"since":S,"skipped":K,"recent":[...]}   as
 *                      soon as requests finish, at most one per slot of
 *                      at most 100 ms (the push interval cut evenly: 12 a
 *                      second at 4 Hz), and before each delta: the requests
 *                      since the previous one, at most 25 (an even sample
 *                      when more came; K left out), oldest first, as
 *                      "recent" has them but without the fields that hold
 *                      their default ("city" "", "lat"/"lon" null, "tunnel"
 *                      false): for the map and the tail
 *     {"type":"ping"}  after 10 s without any other message
 *
 * Everything requires dashboard.auth when it is set (bearer token, token
 * cookie set by /?token=..., or Basic users with crypt(3) hashes); the
 * WebSocket also checks Origin. A refused upgrade gets 401 (credentials), 403
 * (Origin, Host) or 400 (no known subprotocol), then the connection closes.
 * Without auth, the Host header must name this machine (localhost or an IP
 * address). Responses carry a Content-Security-Policy without unsafe-inline
 * or unsafe-eval.
 *
 * Crossing threads: the aggregator thread calls dashboard_wake(), which only
 * calls lws_cancel_service(); the service thread then reads the aggregator
 * through its thread-safe readers. Nothing else is shared.
 */
#ifndef SWITCHBOARD_DASHBOARD_H
#define SWITCHBOARD_DASHBOARD_H

#include <stdbool.h>
#include <stddef.h>

#include "conf/conf.h"
#include "telemetry/telemetry.h"

struct dashboard;

/*
 * Start the server thread for `conf` (copied), with the chat when `chat`
 * (copied; may be NULL) is enabled, reading `agg` (borrowed; must
 * outlive the dashboard; may be NULL when telemetry is off: the API then
 * answers 503). Returns NULL with `err` filled when the listener cannot be
 * opened. Main thread only.
 */
struct dashboard *dashboard_start(const struct conf_dashboard *conf,
                                  const struct conf_chat *chat,
                                  struct tm_aggregator *agg,
                                  char *err, size_t errlen);

/* Any thread: ask the service thread to look for new data now. Usable as
 * tm_aggregator_config.on_update (ctx = the dashboard). Safe while
 * dashboard_stop() runs (it then does nothing); the caller must make sure
 * that no call is still in progress when dashboard_stop() frees the
 * dashboard. */
void dashboard_wake(void *dashboard);

/* Stop the thread and free everything. Main thread only. */
void dashboard_stop(struct dashboard *dashboard);

/* True when the two configs would run the same dashboard (a change takes a
 * restart). Any thread. */
bool dashboard_conf_equal(const struct conf_dashboard *a,
                          const struct conf_dashboard *b);
bool dashboard_chat_conf_equal(const struct conf_chat *a, const struct conf_chat *b);

#endif
