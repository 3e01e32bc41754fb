/*
 * telemetry.h - per-request records, how they travel from the proxy's worker
 * threads to the aggregator, and what the aggregator offers its readers.
 *
 * This header is the boundary between the proxy (libevent worker threads)
 * and the dashboard (the libwebsockets thread): neither includes the other's
 * headers. What crosses it is plain data:
 *
 *   worker thread ──tm_ring_push()──► tm_ring (one per worker, SPSC, lock-free)
 *                                   │ full: the record is dropped and counted
 *                                   ▼
 *                      aggregator thread: geolocates, rolls up
 *                                   │
 *                                   ▼ tm_stats_json / tm_delta_json /
 *                      readers        tm_prometheus (built under a lock held
 *                                     only for that; never on the request path)
 *
 * A record is fixed-size and holds no pointer into connection memory, so a
 * worker can forget it the moment it is copied into the ring.
 *
 * The aggregator reads its input through `struct tm_source`. The in-process
 * rings are one source; a Redis pub/sub source (several Switchboard instances
 * feeding one view) can be added behind the same interface.
 */
#ifndef SWITCHBOARD_TELEMETRY_H
#define SWITCHBOARD_TELEMETRY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TM_HOST_MAX    64       /* bytes kept of Host, NUL included */
#define TM_PATH_MAX    96       /* bytes kept of the path (no query), NUL incl. */
#define TM_NAME_MAX    32       /* pool name */
#define TM_SERVER_MAX  48       /* server address text */
#define TM_REASON_MAX  32

enum tm_kind {
    TM_REQUEST = 0,             /* a finished request (any status) */
    TM_TUNNEL_OPEN,             /* a 101 turned the exchange into a tunnel */
    TM_TUNNEL_CLOSE,            /* that tunnel ended (duration = its life) */
};

/* One finished request. Times are microseconds. */
struct tm_record {
    int64_t  time_us;           /* wall clock when the request began */
    uint64_t duration_us;       /* first request byte to end of answer */
    uint64_t connect_us;        /* backend connect time, 0 = reused/none */
    uint64_t ttfb_us;           /* request start to first answer byte */
    uint64_t bytes_in;          /* from the client */
    uint64_t bytes_out;         /* to the client */
    uint8_t  addr[16];          /* client address (after trusted-proxy logic) */
    uint8_t  family;            /* 4 or 6; 0 = unknown */
    uint8_t  kind;              /* enum tm_kind */
    uint8_t  method;            /* http-parser's enum http_method */
    uint8_t  retries;
    uint16_t status;            /* 0 when no answer was sent */
    uint16_t worker;
    char host[TM_HOST_MAX];
    char path[TM_PATH_MAX];
    char pool[TM_NAME_MAX];     /* "" = no pool (e.g. a 400) */
    char server[TM_SERVER_MAX]; /* "" = none */
    char reason[TM_REASON_MAX]; /* why the proxy answered itself; "" = it did not */
};

/* ---- rings: one producer (a worker), one consumer (the aggregator) ------- */

struct tm_ring;

/* Capacity is rounded up to a power of two. NULL on allocation failure. */
struct tm_ring *tm_ring_new(size_t capacity);
void tm_ring_free(struct tm_ring *ring);
/* Producer side: copy `rec` in; false (and one more drop counted) when full.
 * Never blocks, never allocates. */
bool tm_ring_push(struct tm_ring *ring, const struct tm_record *rec);
/* Consumer side: copy up to `max` records out; returns how many. */
size_t tm_ring_pop(struct tm_ring *ring, struct tm_record *out, size_t max);
uint64_t tm_ring_dropped(const struct tm_ring *ring);
/* Records pushed and not yet popped; any thread, a moment's view. */
size_t tm_ring_pending(const struct tm_ring *ring);

/* ---- the aggregator's input --------------------------------------------- */

struct tm_source {
    /* Copy up to `max` pending records into `out`; return how many. Called
     * from the aggregator thread only. */
    size_t (*poll)(struct tm_source *src, struct tm_record *out, size_t max);
    /* Records lost before they reached the aggregator. */
    uint64_t (*dropped)(struct tm_source *src);
    void (*destroy)(struct tm_source *src);
    /* Records waiting in the fullest input. Any thread may call it; NULL
     * when the source cannot tell. */
    size_t (*backlog)(struct tm_source *src);
    /* Records the smallest input holds before it drops; 0 = unknown. */
    size_t capacity;
};

/* The in-process source over `n` rings (borrowed; they must outlive it). */
struct tm_source *tm_source_rings(struct tm_ring **rings, size_t n);

/* ---- gauges the proxy keeps up to date (any thread, relaxed atomics) ----- */

struct tm_gauges {
    atomic_long client_connections;
    atomic_long tunnels;
    atomic_long inflight;
};

/* ---- latency histogram --------------------------------------------------- *
 *
 * Log-linear, HdrHistogram-like: values 0..255 µs each have a bucket of their
 * own; above, each power of two [2^e, 2^(e+1)) is split linearly into 128
 * buckets. A bucket's width is at most 1/128 of its lower bound, and a
 * quantile is reported as the bucket's midpoint (clamped to the exact min and
 * max), so a reported quantile is within 0.4% of the exact order statistic.
 * Values above TM_HIST_MAX_US (about 71.6 minutes) count in the top bucket;
 * `max_us` stays exact. Histograms of the same layout add and subtract, so
 * per-second histograms merge into any window.
 *
 * Plain data, no locking: the owner serialises access. About 27 KB each;
 * `lo`..`hi` bound the buckets that may be non-zero so that resets, merges
 * and quantile scans touch only that range.
 */
#define TM_HIST_SUB_BITS 7
#define TM_HIST_BUCKETS  ((32 - TM_HIST_SUB_BITS + 1) * (1u << TM_HIST_SUB_BITS))
#define TM_HIST_MAX_US   ((UINT64_C(1) << 32) - 1)

struct tm_hist {
    uint64_t count;
    uint64_t sum_us;            /* exact sum, for means and Prometheus _sum */
    uint64_t min_us, max_us;    /* exact unless a tm_hist_sub() happened */
    uint32_t lo, hi;            /* counts[i] == 0 outside [lo, hi]; lo > hi: empty */
    uint64_t counts[TM_HIST_BUCKETS];
};

/* Make `h` empty. Cost is proportional to the range last used. On memory
 * that is all zero (calloc) it is also a valid first initialisation, and
 * touches only the header, so untouched pages stay unmapped. */
void tm_hist_reset(struct tm_hist *h);
/* Empty `h` whatever its memory held (first use of malloc'd memory). */
void tm_hist_init(struct tm_hist *h);
void tm_hist_record(struct tm_hist *h, uint64_t value_us);
/* dst += src. */
void tm_hist_add(struct tm_hist *dst, const struct tm_hist *src);
/* dst -= src, where everything in src was earlier added to dst (a sliding
 * window dropping its oldest part). min/max become bucket bounds. */
void tm_hist_sub(struct tm_hist *dst, const struct tm_hist *src);
/* The nearest-rank quantile (q in [0, 1]) in µs; 0 for an empty histogram.
 * `qs` must be ascending: all `n` come from one pass over the buckets. */
void tm_hist_quantiles(const struct tm_hist *h, const double *qs, uint64_t *out,
                       size_t n);
uint64_t tm_hist_quantile(const struct tm_hist *h, double q);

/* ---- heavy hitters -------------------------------------------------------- *
 *
 * Space-Saving over a fixed number of slots, for "top" tables over unbounded
 * key spaces (paths, client addresses, cities). Any key whose true count is
 * above total/slots is in the table; a reported count overestimates the true
 * one by at most its `error` (count - error <= true <= count). Each slot also
 * carries `payload_size` bytes the caller fills when a key (re)enters the
 * table (e.g. a city's coordinates). Memory is fixed at creation; adding
 * never allocates. Single-threaded.
 */
struct tm_topk;

struct tm_topk_item {
    const void *key;            /* points into the table: valid until next add */
    size_t key_len;
    uint64_t count, error;
    const void *payload;
};

/* NULL on allocation failure. `slots` >= 1, `key_max` >= 1. */
struct tm_topk *tm_topk_new(size_t slots, size_t key_max, size_t payload_size);
void tm_topk_free(struct tm_topk *t);
/* Count `weight` more for `key` (cut to key_max bytes). Returns the slot's
 * payload; `*entered` (may be NULL) says the key was not in the table before,
 * in which case the payload is zeroed for the caller to fill. */
void *tm_topk_add(struct tm_topk *t, const void *key, size_t key_len,
                  uint64_t weight, bool *entered);
/* Up to `max` items, largest count first (ties: smaller error first). */
size_t tm_topk_top(const struct tm_topk *t, struct tm_topk_item *out, size_t max);
uint64_t tm_topk_total(const struct tm_topk *t);
size_t tm_topk_size(const struct tm_topk *t);

/* ---- aggregator ---------------------------------------------------------- *
 *
 * One aggregator thread drains a tm_source every tick, geolocates each client
 * address (own geo_cache) and rolls the records up into one model. Readers
 * (the dashboard thread) get malloc'd JSON or Prometheus text, built from the
 * model under a mutex that the aggregator holds only while applying a batch.
 *
 * How records count:
 *   - TM_REQUEST: one request. TM_TUNNEL_OPEN: the request that was upgraded,
 *     counted as one request like any other (send it instead of, not as well
 *     as, a TM_REQUEST); its bytes are not added, because the TM_TUNNEL_CLOSE
 *     of the same exchange reports the exchange's bytes from its first byte,
 *     handshake included. TM_TUNNEL_CLOSE: no request and no latency; its
 *     bytes go to the byte totals (and to the second it closed in) and it
 *     counts one tunnel closed.
 *   - A record belongs to the second in which it ended (time_us +
 *     duration_us), clamped to "now". The series covers the last
 *     TM_WINDOW_S seconds; a record older than that counts in the totals
 *     only ("late").
 *   - An error is a 5xx status or an answer the proxy made itself (reason
 *     not empty). Status 0 (no answer sent) is the class "none"; statuses
 *     outside 100..599 the class "other".
 *   - Countries are ISO codes; "XX" is the bucket of addresses with no
 *     country (no database, private, not found).
 *   - Pools and servers are keyed by the record's pool and server text, so
 *     they match the server table's entries. Requests with no server count
 *     in their pool's "no_server" (and under server "" in Prometheus); those
 *     with no pool (e.g. a 400) under pool "". Past TM_SERVERS_MAX distinct
 *     pairs, new ones share one entry, "(other)" in pool "(other)".
 */
#define TM_WINDOW_S         300     /* seconds of per-second series */
#define TM_RATE_S           5       /* requests/s = last TM_RATE_S whole seconds */
#define TM_EPOCH_S          10      /* pool/server latency: last 10 to 20 s */
#define TM_SERVERS_MAX      1024    /* server table entries copied per tick */
#define TM_COUNTRY_UNKNOWN  "XX"

struct geo_db;

/* Mirrors enum lb_server_state (same values), plus UNKNOWN for a server seen
 * in records but absent from the current server table. */
enum tm_server_state {
    TM_SERVER_UP = 0,
    TM_SERVER_DOWN,
    TM_SERVER_DRAINING,
    TM_SERVER_DISABLED,
    TM_SERVER_UNKNOWN,
};
/* "up", "down", "draining", "disabled", "unknown". */
const char *tm_server_state_name(enum tm_server_state state);

/* One configured server as the proxy sees it now. */
struct tm_server_info {
    char pool[TM_NAME_MAX];
    char server[TM_SERVER_MAX];     /* address text, as in tm_record.server */
    uint8_t state;                  /* enum tm_server_state */
    bool backup;
    uint32_t weight;
    uint32_t inflight;
};

/* The aggregator thread's scheduling. */
enum tm_priority {
    TM_PRIORITY_NORMAL,         /* inherited from the thread that starts it */
    TM_PRIORITY_LOW,            /* nice 19 */
    /* SCHED_IDLE: runs when a CPU has nothing else. While half the
     * source's capacity waits, or records drop, a watching thread puts it at
     * SCHED_OTHER, until 250 ms pass without either (where
     * CAP_SYS_NICE or RLIMIT_NICE allows). */
    TM_PRIORITY_IDLE,
};

struct tm_aggregator_config {
    struct tm_source *source;           /* borrowed; polled by the aggregator only */
    const struct geo_db *geo;           /* borrowed; NULL: no geolocation */
    double proxy_lat, proxy_lon;        /* where the map's arcs end */
    bool proxy_has_location;
    struct tm_gauges *gauges;           /* borrowed; NULL: gauges read as 0 */
    /* Copy up to `max` servers into `out`, return how many. Called from the
     * aggregator thread once per tick; must not block for long. May be NULL. */
    size_t (*servers)(void *ctx, struct tm_server_info *out, size_t max);
    void *servers_ctx;
    unsigned top_n;                     /* rows of top tables; default 10 */
    unsigned top_slots;                 /* heavy-hitter slots; default 32 * top_n */
    unsigned recent_max;                /* recent requests kept; default 200 */
    unsigned tick_ms;                   /* drain period; default 50 */
    enum tm_priority priority;          /* default TM_PRIORITY_NORMAL */
    /* Called from the aggregator thread, no lock held, after a drain that
     * changed the model (e.g. to lws_cancel_service()). May be NULL. */
    void (*on_update)(void *ctx);
    void *on_update_ctx;
    /* Wall clock in µs; NULL: CLOCK_REALTIME. Tests inject time here. */
    int64_t (*clock_us)(void *ctx);
    void *clock_ctx;
};

struct tm_aggregator;

/* Copies `cfg`; fields left 0/NULL take their defaults. NULL on allocation
 * failure or without a source. */
struct tm_aggregator *tm_aggregator_new(const struct tm_aggregator_config *cfg);
/* Start the aggregator thread: 0, or -1 (errno set) if it could not start. */
int  tm_aggregator_start(struct tm_aggregator *agg);
/* Stop and join the thread after one last drain. Idempotent. */
void tm_aggregator_stop(struct tm_aggregator *agg);
/* Stops the thread if running, then frees. The source, geo_db and gauges are
 * the caller's. */
void tm_aggregator_free(struct tm_aggregator *agg);
/* Drain the source now (up to 8M records), apply what came, refresh gauges
 * and the server table; returns the records applied. Safe from any thread
 * (drains are serialised with the aggregator thread's). */
size_t tm_aggregator_drain_now(struct tm_aggregator *agg);
/* The model's sequence number: it grows each time a drain changes the model. */
uint64_t tm_aggregator_seq(struct tm_aggregator *agg);

/* Readers. Each returns a NUL-terminated malloc'd string (free() it), or NULL
 * on allocation failure. Any thread; they never wait for the source. */
#define TM_JSON_PRETTY  1               /* indented output */
/* The whole model: totals, last-TM_WINDOW_S-seconds series, percentiles,
 * status, pools/servers, countries, cities, paths, clients, recent requests,
 * drops, geo stats, proxy location, uptime, and its "seq". */
char *tm_stats_json(struct tm_aggregator *agg, int flags);
/* Pools and servers only (/api/servers). */
char *tm_servers_json(struct tm_aggregator *agg);
/* Prometheus text exposition format 0.0.4 (/metrics). */
char *tm_prometheus(struct tm_aggregator *agg);
/* What changed since the model was at `since_seq`: seconds of the series
 * that changed, countries that changed, recent requests that arrived, top
 * tables and pools if they changed, totals/latency/geo always. `*new_seq`
 * (may be NULL) receives the seq to pass next time. since_seq 0, or one the
 * aggregator never issued, gives the whole model with "full": true.
 * A reader merges a delta into its copy of the snapshot: objects present
 * replace its own ("status", "pools", "cities", "paths", "clients",
 * "totals", "latency", "geo"); series seconds are matched by "t" (seconds
 * before "window_start" are dropped, seconds never sent are zero);
 * countries are matched by "code"; "recent" entries are appended (keep the
 * last recent_max). */
char *tm_delta_json(struct tm_aggregator *agg, uint64_t since_seq,
                    uint64_t *new_seq);
/* The recent requests stamped after `since_seq`, for a low-latency event
 * stream: {"seq":N,"since":S,"skipped":K,"recent":[...]} with at most `max`
 * entries, the newest (K older ones left out), oldest first, each as in
 * "recent" of tm_stats_json(). `*new_seq` (may be NULL) receives the seq to
 * pass next time, `*count` (may be NULL) the number of entries. A since_seq
 * the aggregator never issued counts as 0 (everything still held). */
char *tm_recent_json(struct tm_aggregator *agg, uint64_t since_seq, size_t max,
                     uint64_t *new_seq, size_t *count);

/* Every exported metric, declared once:
 *   X(id, Prometheus name, type, JSON key, help)
 * The JSON key is what the same quantity is called in tm_stats_json(). */
#define TM_METRICS(X)                                                        \
    X(REQUESTS, "switchboard_requests_total", counter, "requests",          \
      "Requests finished, by pool, server and status code (0: no answer).") \
    X(DURATION, "switchboard_request_duration_seconds", histogram,          \
      "latency",                                                            \
      "Time from the first request byte to the end of the answer, by pool.")\
    X(BYTES_IN, "switchboard_bytes_received_total", counter,                \
      "bytes_received", "Bytes received from clients.")                    \
    X(BYTES_OUT, "switchboard_bytes_sent_total", counter, "bytes_sent",     \
      "Bytes sent to clients.")                                             \
    X(SERVER_UP, "switchboard_server_up", gauge, "up",                      \
      "1 when the server takes new requests (state up), else 0.")          \
    X(SERVER_INFLIGHT, "switchboard_server_inflight", gauge, "inflight",    \
      "Requests the server is serving now.")                                \
    X(GEO_REQUESTS, "switchboard_geo_requests_total", counter, "countries", \
      "Requests by client country (ISO 3166-1 alpha-2, XX: unknown).")     \
    X(CLIENT_CONNECTIONS, "switchboard_client_connections", gauge,          \
      "client_connections", "Open client connections.")                    \
    X(TUNNELS, "switchboard_tunnels", gauge, "tunnels",                     \
      "Open tunnels (upgraded connections).")                               \
    X(REQUESTS_INFLIGHT, "switchboard_requests_inflight", gauge,            \
      "requests_inflight", "Requests being served now.")                   \
    X(TUNNELS_OPENED, "switchboard_tunnels_opened_total", counter,          \
      "tunnels_opened", "Tunnels opened (101 answers to upgrades).")       \
    X(TELEMETRY_DROPPED, "switchboard_telemetry_dropped_total", counter,    \
      "telemetry_dropped",                                                  \
      "Telemetry records lost because a worker's ring was full.")          \
    X(GEO_LOOKUPS, "switchboard_geo_lookups_total", counter, "geo_lookups", \
      "Client address geolocation lookups.")                               \
    X(GEO_MISSES, "switchboard_geo_misses_total", counter, "geo_misses",    \
      "Geolocation lookups of public addresses the database lacks.")       \
    X(GEO_ERRORS, "switchboard_geo_errors_total", counter, "geo_errors",    \
      "Geolocation lookups that failed reading the database.")            \
    X(START_TIME, "switchboard_start_time_seconds", gauge, "start_time",    \
      "When telemetry started, in seconds since the Unix epoch.")

enum tm_metric {
#define TM_METRIC_ENUM(id, name, type, key, help) TM_METRIC_##id,
    TM_METRICS(TM_METRIC_ENUM)
#undef TM_METRIC_ENUM
    TM_METRIC_COUNT
};

#endif
