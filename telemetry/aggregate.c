/*
 * aggregate.c - the telemetry aggregator: drains the workers' records,
 * geolocates them, rolls them up into one model, and serialises that model
 * for readers (JSON snapshot, JSON delta, Prometheus text).
 *
 * Threads:
 *   - the aggregator thread (tm_aggregator_start) calls drain() every tick;
 *     tm_aggregator_drain_now() does the same from any thread. `drain_lock`
 *     serialises drains, so the source, the geo cache, the record batch and
 *     the server-table scratch have one user at a time.
 *   - readers (the dashboard thread; tests) call tm_stats_json(),
 *     tm_servers_json(), tm_delta_json(), tm_prometheus().
 *   - `model_lock` protects `struct model`. A drain holds it only while
 *     applying one batch of already geolocated records (at most BATCH); a
 *     reader holds it while building its document (jansson tree or text) and
 *     turns the tree into a string after releasing it. Workers never touch
 *     either lock: they only push into their rings.
 *
 * Ownership: the aggregator owns the model, its geo_cache and its copy of the
 * config. The source, geo_db and gauges are borrowed from the caller and must
 * outlive it.
 *
 * Sequence numbers: every element of the model that a delta may carry (a
 * second of the series, a country, a recent request, each table as a whole)
 * is stamped with the model's seq at its last change. A delta since S is
 * every element stamped after S. A drain that changes anything stamps with
 * seq + 1 and then publishes that as the new seq.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <http_parser.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "geo/geo.h"
#include "telemetry/telemetry.h"

#define BATCH           512     /* records applied per model_lock hold */
#define DRAIN_MAX_BATCHES 256   /* then the thread loops without sleeping */
#define DRAIN_NOW_PASSES 64     /* tm_aggregator_drain_now: 8M records at most */
#define GEO_CACHE_SIZE  8192
#define SEC_EMPTY       INT64_MIN
#define RATE_SLOTS      8       /* > TM_RATE_S + 1: the current second never
                                   shares a slot with the ones averaged */
#define N_COUNTRIES     (26 * 26)
#define N_CODES         1000
#define N_GEO_KINDS     (GEO_DISABLED + 1)

enum { CLASS_NONE = 0, CLASS_OTHER = 6, N_CLASSES = 7 };
static const char *const class_names[N_CLASSES] = {
    "none", "1xx", "2xx", "3xx", "4xx", "5xx", "other",
};

#define N_PCT 4
static const double pct_q[N_PCT] = { 0.5, 0.9, 0.99, 0.999 };
static const char *const pct_keys[N_PCT] = { "p50_us", "p90_us", "p99_us", "p999_us" };

/* Prometheus duration buckets, exact per pool (counted per record, not read
 * off the log-linear histogram, whose edges do not fall on these bounds). */
#define PROM_BUCKETS 13
static const uint64_t prom_bounds_us[PROM_BUCKETS] = {
    1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
    1000000, 2500000, 5000000, 10000000,
};
static const char *const prom_le[PROM_BUCKETS] = {
    "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5",
    "1", "2.5", "5", "10",
};

#define METRIC_NAME(id, name, type, key, help) name,
#define METRIC_TYPE(id, name, type, key, help) #type,
#define METRIC_KEY(id, name, type, key, help) key,
#define METRIC_HELP(id, name, type, key, help) help,
static const char *const metric_name[TM_METRIC_COUNT] = { TM_METRICS(METRIC_NAME) };
static const char *const metric_type[TM_METRIC_COUNT] = { TM_METRICS(METRIC_TYPE) };
static const char *const metric_key[TM_METRIC_COUNT] = { TM_METRICS(METRIC_KEY) };
static const char *const metric_help[TM_METRIC_COUNT] = { TM_METRICS(METRIC_HELP) };
#define KEY(id) metric_key[TM_METRIC_##id]

/* ---- model ------------------------------------------------------------- */

struct second {
    int64_t sec;                /* which second this slot holds; SEC_EMPTY */
    uint64_t seq;
    uint64_t requests, bytes_in, bytes_out, errors;
    uint64_t classes[N_CLASSES];
    uint64_t pct[N_PCT];        /* cached at the end of each batch */
    struct tm_hist *hist;
};

struct rate {
    int64_t sec[RATE_SLOTS];
    uint64_t n[RATE_SLOTS];
};

/* Recent latency of a pool or server: the current and the previous
 * TM_EPOCH_S-second epoch, so the last 10 to 20 s. Allocated on first use. */
struct epochs {
    struct tm_hist *cur, *prev;
    int64_t id;
};

struct code_count {
    uint16_t code;
    uint64_t n;
};

struct pool {
    char name[TM_NAME_MAX];
    uint64_t requests, errors, no_server;
    struct rate rate;
    struct epochs lat;
    uint64_t prom_le[PROM_BUCKETS + 1];     /* not cumulative; last = +Inf */
    uint64_t prom_sum_us, prom_count;
    bool listed;                            /* in the current server table */
    size_t order;                           /* its first position there */
};

struct server {
    char pool[TM_NAME_MAX];
    char name[TM_SERVER_MAX];               /* "" = requests with no server */
    size_t pool_idx;
    struct tm_server_info info;             /* valid when listed */
    bool listed;
    size_t order;
    uint64_t requests, errors, bytes_in, bytes_out;
    struct code_count *codes;               /* sorted by code */
    size_t n_codes, cap_codes;
    struct rate rate;
    struct epochs lat;
};

struct country {
    uint64_t requests, errors;
    double lat_sum, lon_sum;                /* traffic-weighted centre */
    uint64_t located;
    uint64_t seq;
};

struct city_payload {
    double lat, lon;
    bool has_location;
};

struct client_payload {
    char country[3];
    char city[48];
};

struct recent {
    uint64_t seq;
    int64_t time_us;
    uint64_t duration_us;
    uint8_t addr[16];
    uint8_t family, method, kind;
    uint16_t status;
    char country[3];
    char city[48];
    double lat, lon;
    bool has_location;
    char host[TM_HOST_MAX];
    char path[TM_PATH_MAX];
    char pool[TM_NAME_MAX];
    char server[TM_SERVER_MAX];
};

#define SERVER_MAP_SIZE (4 * TM_SERVERS_MAX)    /* power of two, < half full */

struct model {
    uint64_t seq;
    int64_t start_us, now_us, now_sec;

    uint64_t requests, bytes_in, bytes_out, errors, late;
    uint64_t tunnels_opened, tunnels_closed;
    uint64_t classes[N_CLASSES];
    uint64_t codes[N_CODES];                /* [0]: no answer or out of range */
    uint64_t status_seq;

    struct second secs[TM_WINDOW_S];
    struct tm_hist *sec_hists;              /* TM_WINDOW_S of them */
    struct tm_hist *window;                 /* sum of the seconds in the window */
    struct tm_hist *all;                    /* since start */
    struct tm_hist *scratch;                /* readers: merged epochs */

    struct pool *pools;                     /* TM_SERVERS_MAX */
    size_t n_pools;
    struct server *servers;                 /* TM_SERVERS_MAX; last = overflow */
    size_t n_servers;
    uint32_t *server_map;                   /* index + 1; insert only */
    uint64_t pools_seq;
    struct tm_server_info *table;           /* last server table, TM_SERVERS_MAX */
    size_t n_table;

    struct country countries[N_COUNTRIES];
    uint64_t countries_seq;

    struct tm_topk *cities, *paths, *clients;
    uint64_t cities_seq, paths_seq, clients_seq;

    struct recent *recent;
    uint64_t recent_count;                  /* ever pushed */

    uint64_t dropped;
    struct geo_stats geo;
    uint64_t geo_kinds[N_GEO_KINDS];
    long client_connections, tunnels, inflight;
};

struct tm_aggregator {
    struct tm_aggregator_config cfg;

    pthread_mutex_t drain_lock;
    struct tm_record *batch;                /* BATCH; drain_lock */
    struct geo_result *geo_res;             /* BATCH; drain_lock */
    struct geo_cache *geo_cache;            /* drain_lock */
    struct geo_stats geo_stats;             /* drain_lock */
    struct tm_server_info *table_scratch;   /* drain_lock */

    pthread_mutex_t model_lock;
    struct model m;

    pthread_mutex_t stop_lock;
    pthread_cond_t stop_cond;               /* CLOCK_MONOTONIC */
    bool stopping, running;
    /* TM_PRIORITY_IDLE with a source that reports its backlog: the thread
     * that moves the aggregator in and out of SCHED_IDLE. */
    pthread_t watch_thread;
    bool watching;
    _Atomic pid_t agg_tid;                  /* once at SCHED_IDLE; 0 before */
    pthread_t thread;
    unsigned delay_us;                      /* test hook, see tm_aggregator_new */
};

/* ---- small helpers ----------------------------------------------------- */

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

static size_t mod_index(int64_t a, int64_t n)
{
    int64_t r = a % n;
    return (size_t)(r < 0 ? r + n : r);
}

static int64_t realtime_us(void *ctx)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static uint64_t hash_str2(const char *a, const char *b)
{
    uint64_t h = 0xcbf29ce484222325u;
    for (const unsigned char *p = (const unsigned char *)a; *p; p++)
        h = (h ^ *p) * 0x100000001b3u;
    h = (h ^ 0xff) * 0x100000001b3u;       /* separator no text byte equals */
    for (const unsigned char *p = (const unsigned char *)b; *p; p++)
        h = (h ^ *p) * 0x100000001b3u;
    h ^= h >> 29;
    return h;
}

/* Copy a field of a record that may lack its NUL (records come from another
 * thread or, later, another process: do not trust them). */
static void copy_field(char *dst, size_t dst_size, const char *src, size_t src_size)
{
    size_t n = strnlen(src, src_size);
    if (n >= dst_size)
        n = dst_size - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

const char *tm_server_state_name(enum tm_server_state state)
{
    switch (state) {
    case TM_SERVER_UP: return "up";
    case TM_SERVER_DOWN: return "down";
    case TM_SERVER_DRAINING: return "draining";
    case TM_SERVER_DISABLED: return "disabled";
    case TM_SERVER_UNKNOWN: break;
    }
    return "unknown";
}

static int status_class(unsigned status)
{
    if (status == 0)
        return CLASS_NONE;
    if (status >= 100 && status < 600)
        return (int)(status / 100);
    return CLASS_OTHER;
}

static int country_index(const char *cc)
{
    unsigned char a = (unsigned char)cc[0], b = a ? (unsigned char)cc[1] : 0;
    if (a >= 'a' && a <= 'z')
        a = (unsigned char)(a - 'a' + 'A');
    if (b >= 'a' && b <= 'z')
        b = (unsigned char)(b - 'a' + 'A');
    if (a < 'A' || a > 'Z' || b < 'A' || b > 'Z')
        return ('X' - 'A') * 26 + ('X' - 'A');
    return (a - 'A') * 26 + (b - 'A');
}

static void country_code(int idx, char out[3])
{
    out[0] = (char)('A' + idx / 26);
    out[1] = (char)('A' + idx % 26);
    out[2] = '\0';
}

/* ---- rates and epochs -------------------------------------------------- */

static void rate_init(struct rate *r)
{
    for (size_t i = 0; i < RATE_SLOTS; i++) {
        r->sec[i] = SEC_EMPTY;
        r->n[i] = 0;
    }
}

static void rate_add(struct rate *r, int64_t sec)
{
    size_t i = mod_index(sec, RATE_SLOTS);
    if (r->sec[i] != sec) {
        if (r->sec[i] != SEC_EMPTY && r->sec[i] > sec)
            return;                 /* older than what the slot holds: too late */
        r->sec[i] = sec;
        r->n[i] = 0;
    }
    r->n[i]++;
}

/* Requests per second over the last TM_RATE_S whole seconds. */
static double rate_get(const struct rate *r, int64_t now_sec)
{
    uint64_t sum = 0;
    for (int64_t s = now_sec - TM_RATE_S; s < now_sec; s++) {
        size_t i = mod_index(s, RATE_SLOTS);
        if (r->sec[i] == s)
            sum += r->n[i];
    }
    return (double)sum / TM_RATE_S;
}

static bool epochs_alloc(struct epochs *e, int64_t now_sec)
{
    if (e->cur)
        return true;
    e->cur = malloc(sizeof *e->cur);
    e->prev = malloc(sizeof *e->prev);
    if (!e->cur || !e->prev) {
        free(e->cur);
        free(e->prev);
        e->cur = e->prev = NULL;
        return false;
    }
    tm_hist_init(e->cur);
    tm_hist_init(e->prev);
    e->id = floor_div(now_sec, TM_EPOCH_S);
    return true;
}

static void epochs_roll(struct epochs *e, int64_t now_sec)
{
    if (!e->cur)
        return;
    int64_t id = floor_div(now_sec, TM_EPOCH_S);
    if (id <= e->id)
        return;
    if (id == e->id + 1) {
        struct tm_hist *t = e->prev;
        e->prev = e->cur;
        e->cur = t;
        tm_hist_reset(e->cur);
    } else {
        tm_hist_reset(e->cur);
        tm_hist_reset(e->prev);
    }
    e->id = id;
}

static void epochs_free(struct epochs *e)
{
    free(e->cur);
    free(e->prev);
    e->cur = e->prev = NULL;
}

/* ---- pools and servers ------------------------------------------------- */

static size_t pool_get(struct model *m, const char *name)
{
    for (size_t i = 0; i < m->n_pools; i++)
        if (strcmp(m->pools[i].name, name) == 0)
            return i;
    /* Each server creates at most one pool and servers are bounded by
     * TM_SERVERS_MAX, so this never runs out. */
    struct pool *p = &m->pools[m->n_pools];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    rate_init(&p->rate);
    p->order = SIZE_MAX;
    return m->n_pools++;
}

/* The server entry for (pool, name), created if new. When the table is full,
 * every new pair shares the last entry, "(other)" in pool "(other)", so that
 * per-server counts still add up to the totals. */
static struct server *server_get(struct model *m, const char *pool, const char *name)
{
    uint64_t h = hash_str2(pool, name);
    size_t mask = SERVER_MAP_SIZE - 1;
    size_t i = h & mask;
    for (;; i = (i + 1) & mask) {
        uint32_t e = m->server_map[i];
        if (e == 0)
            break;
        struct server *s = &m->servers[e - 1];
        if (strcmp(s->name, name) == 0 && strcmp(s->pool, pool) == 0)
            return s;
    }
    bool overflow_key = strcmp(pool, "(other)") == 0 && strcmp(name, "(other)") == 0;
    if (m->n_servers >= TM_SERVERS_MAX - 1 && !overflow_key)
        return server_get(m, "(other)", "(other)");
    /* Here there is room: the overflow entry, once created, is found above. */
    size_t idx = m->n_servers++;
    struct server *s = &m->servers[idx];
    memset(s, 0, sizeof *s);
    snprintf(s->pool, sizeof s->pool, "%s", pool);
    snprintf(s->name, sizeof s->name, "%s", name);
    s->pool_idx = pool_get(m, pool);
    s->info.state = TM_SERVER_UNKNOWN;
    s->order = SIZE_MAX;
    rate_init(&s->rate);
    m->server_map[i] = (uint32_t)idx + 1;
    return s;
}

static void server_count_code(struct server *s, uint16_t code)
{
    size_t lo = 0, hi = s->n_codes;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (s->codes[mid].code < code)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < s->n_codes && s->codes[lo].code == code) {
        s->codes[lo].n++;
        return;
    }
    if (s->n_codes == s->cap_codes) {
        size_t cap = s->cap_codes ? 2 * s->cap_codes : 8;
        struct code_count *c = realloc(s->codes, cap * sizeof *c);
        if (!c)
            return;     /* out of memory: this code goes uncounted per server */
        s->codes = c;
        s->cap_codes = cap;
    }
    memmove(&s->codes[lo + 1], &s->codes[lo], (s->n_codes - lo) * sizeof *s->codes);
    s->codes[lo] = (struct code_count){ code, 1 };
    s->n_codes++;
}

static bool info_equal(const struct tm_server_info *a, const struct tm_server_info *b)
{
    return a->state == b->state && a->backup == b->backup && a->weight == b->weight &&
           a->inflight == b->inflight && strcmp(a->pool, b->pool) == 0 &&
           strcmp(a->server, b->server) == 0;
}

/* Adopt a new copy of the server table if it differs. Returns true if so. */
static bool apply_table(struct model *m, const struct tm_server_info *t, size_t n,
                        uint64_t stamp)
{
    bool same = n == m->n_table;
    for (size_t i = 0; same && i < n; i++)
        same = info_equal(&t[i], &m->table[i]);
    if (same)
        return false;
    for (size_t i = 0; i < m->n_servers; i++) {
        m->servers[i].listed = false;
        m->servers[i].order = SIZE_MAX;
        m->servers[i].info.state = TM_SERVER_UNKNOWN;
        m->servers[i].info.inflight = 0;
    }
    for (size_t i = 0; i < m->n_pools; i++) {
        m->pools[i].listed = false;
        m->pools[i].order = SIZE_MAX;
    }
    for (size_t i = 0; i < n; i++) {
        struct server *s = server_get(m, t[i].pool, t[i].server);
        if (s->listed)
            continue;               /* listed twice, or the overflow entry */
        s->info = t[i];
        if (s->info.state > TM_SERVER_UNKNOWN)
            s->info.state = TM_SERVER_UNKNOWN;
        s->listed = true;
        s->order = i;
        struct pool *p = &m->pools[s->pool_idx];
        if (!p->listed) {
            p->listed = true;
            p->order = i;
        }
    }
    memcpy(m->table, t, n * sizeof *t);
    m->n_table = n;
    m->pools_seq = stamp;
    return true;
}

/* ---- applying records -------------------------------------------------- */

static void second_clear(struct model *m, struct second *s)
{
    tm_hist_sub(m->window, s->hist);
    tm_hist_reset(s->hist);
    s->sec = SEC_EMPTY;
    s->requests = s->bytes_in = s->bytes_out = s->errors = 0;
    memset(s->classes, 0, sizeof s->classes);
    memset(s->pct, 0, sizeof s->pct);
}

/* Move "now" forward: seconds that leave the window leave the window
 * histogram too, and recent-latency epochs turn over. A clock that goes
 * back does not move the window back. Returns true if the second changed. */
static bool advance(struct model *m, int64_t now_us)
{
    if (now_us > m->now_us)
        m->now_us = now_us;
    int64_t now_sec = floor_div(m->now_us, 1000000);
    if (now_sec <= m->now_sec)
        return false;
    int64_t oldest = now_sec - TM_WINDOW_S + 1;
    for (size_t i = 0; i < TM_WINDOW_S; i++)
        if (m->secs[i].sec != SEC_EMPTY && m->secs[i].sec < oldest)
            second_clear(m, &m->secs[i]);
    for (size_t i = 0; i < m->n_pools; i++)
        epochs_roll(&m->pools[i].lat, now_sec);
    for (size_t i = 0; i < m->n_servers; i++)
        epochs_roll(&m->servers[i].lat, now_sec);
    m->now_sec = now_sec;
    return true;
}

static void record_latency(struct epochs *e, int64_t now_sec, uint64_t us)
{
    if (!epochs_alloc(e, now_sec))
        return;
    epochs_roll(e, now_sec);
    tm_hist_record(e->cur, us);
}

static void apply_one(struct tm_aggregator *a, const struct tm_record *r,
                      const struct geo_result *g, uint64_t stamp)
{
    struct model *m = &a->m;
    bool is_request = r->kind != TM_TUNNEL_CLOSE;

    /* The second it ended in, clamped to now: workers' clocks are the same
     * clock as ours, read a moment earlier. A record from a less trusted
     * source must not overflow the sum. */
    int64_t end_us;
    int64_t dur = r->duration_us > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)r->duration_us;
    if (r->time_us == 0 || __builtin_add_overflow(r->time_us, dur, &end_us))
        end_us = m->now_us;
    int64_t sec = floor_div(end_us, 1000000);
    if (sec > m->now_sec)
        sec = m->now_sec;
    struct second *slot = NULL;
    if (sec > m->now_sec - TM_WINDOW_S) {
        slot = &m->secs[mod_index(sec, TM_WINDOW_S)];
        if (slot->sec != sec) {
            if (slot->sec != SEC_EMPTY)
                second_clear(m, slot);
            slot->sec = sec;
        }
        slot->seq = stamp;
    } else {
        m->late++;
    }
    /* An open's bytes come again, as part of the whole exchange, with the
     * close: count them once, then. */
    uint64_t bytes_in = r->kind == TM_TUNNEL_OPEN ? 0 : r->bytes_in;
    uint64_t bytes_out = r->kind == TM_TUNNEL_OPEN ? 0 : r->bytes_out;
    if (slot) {
        slot->bytes_in += bytes_in;
        slot->bytes_out += bytes_out;
    }
    m->bytes_in += bytes_in;
    m->bytes_out += bytes_out;

    char pool_name[TM_NAME_MAX], server_name[TM_SERVER_MAX];
    copy_field(pool_name, sizeof pool_name, r->pool, sizeof r->pool);
    copy_field(server_name, sizeof server_name, r->server, sizeof r->server);
    struct server *srv = server_get(m, pool_name, server_name);
    struct pool *pool = &m->pools[srv->pool_idx];
    srv->bytes_in += bytes_in;
    srv->bytes_out += bytes_out;
    m->pools_seq = stamp;

    if (!is_request) {
        m->tunnels_closed++;
        return;
    }

    /* ---- one request ---- */
    unsigned status = r->status;
    int cls = status_class(status);
    bool error = cls == 5 || r->reason[0] != '\0';
    uint16_t code = status < N_CODES ? (uint16_t)status : 0;
    m->requests++;
    m->errors += error;
    m->classes[cls]++;
    m->codes[code]++;
    m->status_seq = stamp;
    if (r->kind == TM_TUNNEL_OPEN)
        m->tunnels_opened++;
    tm_hist_record(m->all, r->duration_us);
    if (slot) {
        slot->requests++;
        slot->errors += error;
        slot->classes[cls]++;
        tm_hist_record(slot->hist, r->duration_us);
        tm_hist_record(m->window, r->duration_us);
    }

    srv->requests++;
    srv->errors += error;
    server_count_code(srv, code);
    rate_add(&srv->rate, sec);
    record_latency(&srv->lat, m->now_sec, r->duration_us);
    pool->requests++;
    pool->errors += error;
    pool->no_server += server_name[0] == '\0';
    rate_add(&pool->rate, sec);
    record_latency(&pool->lat, m->now_sec, r->duration_us);
    size_t b = 0;
    while (b < PROM_BUCKETS && r->duration_us > prom_bounds_us[b])
        b++;
    pool->prom_le[b]++;
    pool->prom_sum_us += r->duration_us;
    pool->prom_count++;

    int ci = country_index(g->country);
    struct country *c = &m->countries[ci];
    c->requests++;
    c->errors += error;
    if (g->has_location) {
        c->lat_sum += g->latitude;
        c->lon_sum += g->longitude;
        c->located++;
    }
    c->seq = stamp;
    m->countries_seq = stamp;
    char cc[3];
    country_code(ci, cc);

    if (g->city[0]) {
        unsigned char key[2 + sizeof g->city];
        size_t len = strnlen(g->city, sizeof g->city);
        key[0] = (unsigned char)cc[0];
        key[1] = (unsigned char)cc[1];
        memcpy(key + 2, g->city, len);
        bool entered;
        struct city_payload *cp = tm_topk_add(m->cities, key, 2 + len, 1, &entered);
        if (entered || (!cp->has_location && g->has_location)) {
            cp->lat = g->latitude;
            cp->lon = g->longitude;
            cp->has_location = g->has_location;
        }
        m->cities_seq = stamp;
    }

    tm_topk_add(m->paths, r->path, strnlen(r->path, sizeof r->path), 1, NULL);
    m->paths_seq = stamp;

    unsigned char akey[17] = { 0 };
    akey[0] = r->family;
    memcpy(akey + 1, r->addr, r->family == 4 ? 4 : 16);
    bool entered;
    struct client_payload *clp = tm_topk_add(m->clients, akey, sizeof akey, 1, &entered);
    if (entered) {
        memcpy(clp->country, cc, sizeof clp->country);
        copy_field(clp->city, sizeof clp->city, g->city, sizeof g->city);
    }
    m->clients_seq = stamp;

    struct recent *rc = &m->recent[m->recent_count % a->cfg.recent_max];
    m->recent_count++;
    rc->seq = stamp;
    rc->time_us = r->time_us;
    rc->duration_us = r->duration_us;
    memcpy(rc->addr, r->addr, sizeof rc->addr);
    rc->family = r->family;
    rc->method = r->method;
    rc->kind = r->kind;
    rc->status = r->status;
    memcpy(rc->country, cc, sizeof rc->country);
    copy_field(rc->city, sizeof rc->city, g->city, sizeof g->city);
    rc->lat = g->latitude;
    rc->lon = g->longitude;
    rc->has_location = g->has_location;
    copy_field(rc->host, sizeof rc->host, r->host, sizeof r->host);
    copy_field(rc->path, sizeof rc->path, r->path, sizeof r->path);
    memcpy(rc->pool, pool_name, sizeof rc->pool);
    memcpy(rc->server, server_name, sizeof rc->server);
}

/* Per-second percentiles are computed once, when a batch touched the second,
 * so readers only copy them. */
static void refresh_second_pcts(struct model *m, uint64_t stamp)
{
    for (size_t i = 0; i < TM_WINDOW_S; i++)
        if (m->secs[i].seq == stamp && m->secs[i].sec != SEC_EMPTY)
            tm_hist_quantiles(m->secs[i].hist, pct_q, m->secs[i].pct, N_PCT);
}

static void lookup_batch(struct tm_aggregator *a, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const struct tm_record *r = &a->batch[i];
        struct geo_result *g = &a->geo_res[i];
        if (a->cfg.geo && r->kind != TM_TUNNEL_CLOSE && (r->family == 4 || r->family == 6)) {
            geo_cache_lookup(a->geo_cache, a->cfg.geo, r->addr, r->family, g,
                             &a->geo_stats);
        } else {
            memset(g, 0, sizeof *g);
            g->kind = GEO_DISABLED;
        }
        g->country[sizeof g->country - 1] = '\0';
        g->city[sizeof g->city - 1] = '\0';
    }
}

/* One drain: returns records applied; *changed says whether the model
 * changed, *more that it stopped early with records possibly left. */
static size_t drain(struct tm_aggregator *a, bool *changed, bool *more)
{
    struct model *m = &a->m;
    size_t total = 0;
    *changed = false;
    *more = false;

    pthread_mutex_lock(&a->drain_lock);

    size_t n_table = 0;
    if (a->cfg.servers) {
        n_table = a->cfg.servers(a->cfg.servers_ctx, a->table_scratch, TM_SERVERS_MAX);
        if (n_table > TM_SERVERS_MAX)
            n_table = TM_SERVERS_MAX;
        for (size_t i = 0; i < n_table; i++) {
            a->table_scratch[i].pool[TM_NAME_MAX - 1] = '\0';
            a->table_scratch[i].server[TM_SERVER_MAX - 1] = '\0';
        }
    }
    uint64_t dropped = a->cfg.source->dropped ? a->cfg.source->dropped(a->cfg.source) : 0;
    long conns = 0, tunnels = 0, inflight = 0;
    if (a->cfg.gauges) {
        conns = atomic_load_explicit(&a->cfg.gauges->client_connections, memory_order_relaxed);
        tunnels = atomic_load_explicit(&a->cfg.gauges->tunnels, memory_order_relaxed);
        inflight = atomic_load_explicit(&a->cfg.gauges->inflight, memory_order_relaxed);
    }
    int64_t now_us = a->cfg.clock_us(a->cfg.clock_ctx);

    pthread_mutex_lock(&a->model_lock);
    uint64_t stamp = m->seq + 1;
    bool ch = advance(m, now_us);
    ch |= apply_table(m, a->table_scratch, n_table, stamp);
    if (dropped != m->dropped || conns != m->client_connections ||
        tunnels != m->tunnels || inflight != m->inflight) {
        m->dropped = dropped;
        m->client_connections = conns;
        m->tunnels = tunnels;
        m->inflight = inflight;
        ch = true;
    }
    if (ch)
        m->seq = stamp;
    pthread_mutex_unlock(&a->model_lock);
    *changed = ch;

    for (size_t b = 0; b < DRAIN_MAX_BATCHES; b++) {
        size_t n = a->cfg.source->poll(a->cfg.source, a->batch, BATCH);
        if (n == 0)
            break;
        lookup_batch(a, n);
        now_us = a->cfg.clock_us(a->cfg.clock_ctx);

        pthread_mutex_lock(&a->model_lock);
        stamp = m->seq + 1;
        advance(m, now_us);
        for (size_t i = 0; i < n; i++) {
            const struct geo_result *g = &a->geo_res[i];
            if (a->batch[i].kind != TM_TUNNEL_CLOSE)
                m->geo_kinds[g->kind < N_GEO_KINDS ? g->kind : GEO_ERROR]++;
            apply_one(a, &a->batch[i], g, stamp);
        }
        refresh_second_pcts(m, stamp);
        m->geo = a->geo_stats;
        m->seq = stamp;
        pthread_mutex_unlock(&a->model_lock);
        if (a->delay_us)
            usleep(a->delay_us);

        *changed = true;
        total += n;
        if (b + 1 == DRAIN_MAX_BATCHES)
            *more = true;
    }
    pthread_mutex_unlock(&a->drain_lock);

    if (*changed && a->cfg.on_update)
        a->cfg.on_update(a->cfg.on_update_ctx);
    return total;
}

size_t tm_aggregator_drain_now(struct tm_aggregator *agg)
{
    bool changed, more;
    size_t total = 0;
    /* Bounded, so that workers that outpace the aggregator cannot keep the
     * caller here for ever. */
    int passes = DRAIN_NOW_PASSES;
    do
        total += drain(agg, &changed, &more);
    while (more && --passes > 0);
    return total;
}

uint64_t tm_aggregator_seq(struct tm_aggregator *agg)
{
    pthread_mutex_lock(&agg->model_lock);
    uint64_t seq = agg->m.seq;
    pthread_mutex_unlock(&agg->model_lock);
    return seq;
}

/* ---- thread -------------------------------------------------------------- */

static uint64_t monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* The CLOCK_MONOTONIC time ms from now, for stop_cond's timed waits. */
static struct timespec monotonic_after(uint64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += (time_t)(ms / 1000);
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

static int set_policy(pid_t tid, int policy)
{
    struct sched_param none = { .sched_priority = 0 };
    return sched_setscheduler(tid, policy, &none);
}

/*
 * TM_PRIORITY_IDLE: a SCHED_IDLE thread queued behind busy workers may not
 * run for as long as they keep its CPU busy, and then cannot notice that it
 * fell behind. This thread, at the workers' priority, looks at the rings
 * every PRIORITY_WATCH_MS: half a ring waiting, or new drops, puts
 * the aggregator at SCHED_OTHER until PRIORITY_HOLD_MS pass without either.
 */
#define PRIORITY_WATCH_MS   20
#define PRIORITY_HOLD_MS    250

static void *priority_watch_thread(void *arg)
{
    struct tm_aggregator *a = arg;
    struct tm_source *src = a->cfg.source;
    bool idle = true, stuck = false;
    uint64_t until_ms = 0, dropped_seen = src->dropped ? src->dropped(src) : 0;
    pthread_mutex_lock(&a->stop_lock);
    while (!a->stopping) {
        struct timespec deadline = monotonic_after(PRIORITY_WATCH_MS);
        pthread_cond_timedwait(&a->stop_cond, &a->stop_lock, &deadline);
        pid_t tid = atomic_load_explicit(&a->agg_tid, memory_order_acquire);
        if (a->stopping || stuck || tid == 0)
            continue;
        pthread_mutex_unlock(&a->stop_lock);
        uint64_t dropped = src->dropped ? src->dropped(src) : 0;
        size_t waiting = src->backlog(src);
        bool behind = dropped > dropped_seen || waiting >= src->capacity / 2;
        dropped_seen = dropped;
        uint64_t now = monotonic_ms();
        if (behind) {
            /* Leaving SCHED_IDLE needs CAP_SYS_NICE or RLIMIT_NICE 20. */
            if (idle && set_policy(tid, SCHED_OTHER) == 0)
                idle = false;
            else if (idle)
                stuck = true;
            until_ms = now + PRIORITY_HOLD_MS;
        } else if (!idle && now >= until_ms && set_policy(tid, SCHED_IDLE) == 0) {
            idle = true;
        }
        pthread_mutex_lock(&a->stop_lock);
    }
    pthread_mutex_unlock(&a->stop_lock);
    return NULL;
}

static void *agg_thread(void *arg)
{
    struct tm_aggregator *a = arg;
    /* Linux schedules threads one by one. Lowering one's own priority is
     * always allowed, so there is no failure to report. */
    if (a->cfg.priority == TM_PRIORITY_LOW)
        (void)setpriority(PRIO_PROCESS, (id_t)gettid(), 19);
    else if (a->cfg.priority == TM_PRIORITY_IDLE && set_policy(0, SCHED_IDLE) == 0)
        atomic_store_explicit(&a->agg_tid, gettid(), memory_order_release);
    for (;;) {
        bool changed, more;
        drain(a, &changed, &more);
        pthread_mutex_lock(&a->stop_lock);
        if (!a->stopping && !more) {
            struct timespec deadline = monotonic_after(a->cfg.tick_ms);
            pthread_cond_timedwait(&a->stop_cond, &a->stop_lock, &deadline);
        }
        bool stop = a->stopping;
        pthread_mutex_unlock(&a->stop_lock);
        if (stop)
            break;
    }
    /* What the workers pushed before stop() was asked for is not lost. */
    tm_aggregator_drain_now(a);
    return NULL;
}

int tm_aggregator_start(struct tm_aggregator *agg)
{
    pthread_mutex_lock(&agg->stop_lock);
    if (agg->running) {
        pthread_mutex_unlock(&agg->stop_lock);
        return 0;
    }
    agg->stopping = false;
    /* Signals belong to the main thread: the new thread inherits this mask. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&agg->thread, NULL, agg_thread, agg);
    if (rc == 0) {
        agg->running = true;
        pthread_setname_np(agg->thread, "sb-telemetry");
        struct tm_source *src = agg->cfg.source;
        /* Without it the aggregator stays at SCHED_IDLE: no failure. */
        agg->watching = agg->cfg.priority == TM_PRIORITY_IDLE && src->backlog &&
            src->capacity >= 4 &&
            pthread_create(&agg->watch_thread, NULL, priority_watch_thread, agg) == 0;
        if (agg->watching)
            pthread_setname_np(agg->watch_thread, "sb-tm-priority");
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_mutex_unlock(&agg->stop_lock);
    if (rc != 0) {
        errno = rc;
        return -1;
    }
    return 0;
}

void tm_aggregator_stop(struct tm_aggregator *agg)
{
    pthread_mutex_lock(&agg->stop_lock);
    if (!agg->running) {
        pthread_mutex_unlock(&agg->stop_lock);
        return;
    }
    agg->stopping = true;
    pthread_cond_broadcast(&agg->stop_cond);
    pthread_mutex_unlock(&agg->stop_lock);
    if (agg->watching)
        pthread_join(agg->watch_thread, NULL);
    agg->watching = false;
    /* The last drain must not wait for an idle CPU. */
    pid_t tid = atomic_load_explicit(&agg->agg_tid, memory_order_acquire);
    if (tid)
        (void)set_policy(tid, SCHED_OTHER);
    pthread_join(agg->thread, NULL);
    atomic_store_explicit(&agg->agg_tid, 0, memory_order_relaxed);
    pthread_mutex_lock(&agg->stop_lock);
    agg->running = false;
    pthread_mutex_unlock(&agg->stop_lock);
}

/* ---- construction ---------------------------------------------------------- */

/* Free what tm_aggregator_new() built; `locks` says how many of the pthread
 * objects (in their order of creation) exist. */
static void release(struct tm_aggregator *a, int locks)
{
    struct model *m = &a->m;
    for (size_t i = 0; i < m->n_servers; i++) {
        free(m->servers[i].codes);
        epochs_free(&m->servers[i].lat);
    }
    for (size_t i = 0; i < m->n_pools; i++)
        epochs_free(&m->pools[i].lat);
    if (locks > 3)
        pthread_cond_destroy(&a->stop_cond);
    if (locks > 2)
        pthread_mutex_destroy(&a->stop_lock);
    if (locks > 1)
        pthread_mutex_destroy(&a->model_lock);
    if (locks > 0)
        pthread_mutex_destroy(&a->drain_lock);
    if (a->geo_cache)
        geo_cache_free(a->geo_cache);
    tm_topk_free(m->cities);
    tm_topk_free(m->paths);
    tm_topk_free(m->clients);
    free(m->recent);
    free(m->table);
    free(m->server_map);
    free(m->servers);
    free(m->pools);
    free(m->scratch);
    free(m->all);
    free(m->window);
    free(m->sec_hists);
    free(a->table_scratch);
    free(a->geo_res);
    free(a->batch);
    free(a);
}

struct tm_aggregator *tm_aggregator_new(const struct tm_aggregator_config *cfg)
{
    if (!cfg || !cfg->source || !cfg->source->poll)
        return NULL;
    struct tm_aggregator *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    int locks = 0;                  /* how many of the pthread objects exist */
    a->cfg = *cfg;
    if (!a->cfg.top_n)
        a->cfg.top_n = 10;
    if (!a->cfg.top_slots)
        a->cfg.top_slots = 32 * a->cfg.top_n;
    if (a->cfg.top_slots < a->cfg.top_n)
        a->cfg.top_slots = a->cfg.top_n;
    if (!a->cfg.recent_max)
        a->cfg.recent_max = 200;
    if (!a->cfg.tick_ms)
        a->cfg.tick_ms = 50;
    /* Test hook (switchboard(8), ENVIRONMENT): sleep this long after each
     * batch, to play a slow aggregator and make the rings overflow. */
    const char *delay = getenv("SWITCHBOARD_TELEMETRY_DELAY_US");
    if (delay && *delay) {
        unsigned long us = strtoul(delay, NULL, 10);
        a->delay_us = us > 10000000 ? 10000000 : (unsigned)us;
    }
    if (!a->cfg.clock_us)
        a->cfg.clock_us = realtime_us;

    struct model *m = &a->m;
    a->batch = calloc(BATCH, sizeof *a->batch);
    a->geo_res = calloc(BATCH, sizeof *a->geo_res);
    a->table_scratch = calloc(TM_SERVERS_MAX, sizeof *a->table_scratch);
    /* Large and mostly untouched: calloc maps zero pages, and
     * tm_hist_reset() readies zeroed histograms without touching them. */
    m->sec_hists = calloc(TM_WINDOW_S, sizeof *m->sec_hists);
    m->window = calloc(1, sizeof *m->window);
    m->all = calloc(1, sizeof *m->all);
    m->scratch = calloc(1, sizeof *m->scratch);
    m->pools = calloc(TM_SERVERS_MAX, sizeof *m->pools);
    m->servers = calloc(TM_SERVERS_MAX, sizeof *m->servers);
    m->server_map = calloc(SERVER_MAP_SIZE, sizeof *m->server_map);
    m->table = calloc(TM_SERVERS_MAX, sizeof *m->table);
    m->recent = calloc(a->cfg.recent_max, sizeof *m->recent);
    m->cities = tm_topk_new(a->cfg.top_slots, 2 + sizeof ((struct geo_result *)0)->city,
                            sizeof(struct city_payload));
    m->paths = tm_topk_new(a->cfg.top_slots, TM_PATH_MAX, 0);
    m->clients = tm_topk_new(a->cfg.top_slots, 17, sizeof(struct client_payload));
    if (!a->batch || !a->geo_res || !a->table_scratch || !m->sec_hists || !m->window ||
        !m->all || !m->scratch || !m->pools || !m->servers || !m->server_map ||
        !m->table || !m->recent || !m->cities || !m->paths || !m->clients)
        goto fail;
    if (a->cfg.geo && !(a->geo_cache = geo_cache_new(GEO_CACHE_SIZE)))
        goto fail;

    if (pthread_mutex_init(&a->drain_lock, NULL) != 0)
        goto fail;
    locks++;
    if (pthread_mutex_init(&a->model_lock, NULL) != 0)
        goto fail;
    locks++;
    if (pthread_mutex_init(&a->stop_lock, NULL) != 0)
        goto fail;
    locks++;
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0)
        goto fail;
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&a->stop_cond, &ca);
    pthread_condattr_destroy(&ca);
    if (rc != 0)
        goto fail;
    locks++;

    tm_hist_reset(m->window);
    tm_hist_reset(m->all);
    tm_hist_reset(m->scratch);
    for (size_t i = 0; i < TM_WINDOW_S; i++) {
        m->secs[i].sec = SEC_EMPTY;
        m->secs[i].hist = &m->sec_hists[i];
        tm_hist_reset(m->secs[i].hist);
    }
    m->start_us = m->now_us = a->cfg.clock_us(a->cfg.clock_ctx);
    m->now_sec = floor_div(m->now_us, 1000000);
    m->seq = 1;                     /* 0 means "nothing yet" to tm_delta_json */
    return a;

fail:
    release(a, locks);
    return NULL;
}

void tm_aggregator_free(struct tm_aggregator *agg)
{
    if (!agg)
        return;
    tm_aggregator_stop(agg);
    release(agg, 4);
}

/* ---- JSON ---------------------------------------------------------------- *
 * Builders run under model_lock and only read the model (the reader-side
 * scratch histogram excepted, which model_lock also covers). */

static json_t *ju(uint64_t v)
{
    return json_integer(v > (uint64_t)INT64_MAX ? INT64_MAX : (json_int_t)v);
}

/* Text from records and the database as a JSON string. jansson refuses
 * invalid UTF-8 (a path may hold any byte), and a missing key would be worse
 * for a reader than a '?' in place of each byte outside ASCII. */
static json_t *jstr(const char *s, size_t n)
{
    json_t *j = json_stringn(s, n);
    if (j)
        return j;
    char *copy = malloc(n + 1);
    if (!copy)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        copy[i] = c == 0 || c >= 0x80 ? '?' : (char)c;
    }
    copy[n] = '\0';
    j = json_stringn(copy, n);
    free(copy);
    return j;
}

static json_t *jtext(const char *s)
{
    return jstr(s, strlen(s));
}

static void set(json_t *obj, const char *key, json_t *v)
{
    json_object_set_new(obj, key, v);
}

static void push(json_t *arr, json_t *v)
{
    json_array_append_new(arr, v);
}

static json_t *json_hist(const struct tm_hist *h)
{
    json_t *o = json_object();
    uint64_t q[N_PCT];
    tm_hist_quantiles(h, pct_q, q, N_PCT);
    set(o, "count", ju(h->count));
    set(o, "mean_us", json_real(h->count ? (double)h->sum_us / (double)h->count : 0));
    set(o, "min_us", ju(h->count ? h->min_us : 0));
    set(o, "max_us", ju(h->max_us));
    for (size_t k = 0; k < N_PCT; k++)
        set(o, pct_keys[k], ju(q[k]));
    return o;
}

static json_t *json_epochs(struct model *m, const struct epochs *e)
{
    tm_hist_reset(m->scratch);
    if (e->cur) {
        tm_hist_add(m->scratch, e->cur);
        tm_hist_add(m->scratch, e->prev);
    }
    return json_hist(m->scratch);
}

static json_t *json_totals(const struct model *m)
{
    json_t *o = json_object();
    set(o, KEY(REQUESTS), ju(m->requests));
    set(o, "errors", ju(m->errors));
    set(o, KEY(BYTES_IN), ju(m->bytes_in));
    set(o, KEY(BYTES_OUT), ju(m->bytes_out));
    set(o, KEY(CLIENT_CONNECTIONS), json_integer(m->client_connections));
    set(o, KEY(TUNNELS), json_integer(m->tunnels));
    set(o, KEY(REQUESTS_INFLIGHT), json_integer(m->inflight));
    set(o, KEY(TUNNELS_OPENED), ju(m->tunnels_opened));
    set(o, "tunnels_closed", ju(m->tunnels_closed));
    set(o, KEY(TELEMETRY_DROPPED), ju(m->dropped));
    set(o, "late", ju(m->late));
    set(o, KEY(GEO_LOOKUPS), ju(m->geo.lookups));
    set(o, KEY(GEO_MISSES), ju(m->geo.not_found));
    set(o, KEY(GEO_ERRORS), ju(m->geo.errors));
    set(o, KEY(START_TIME), json_real((double)m->start_us / 1e6));
    /* Requests per second over the last TM_RATE_S whole seconds. */
    uint64_t sum = 0;
    for (int64_t s = m->now_sec - TM_RATE_S; s < m->now_sec; s++) {
        const struct second *sl = &m->secs[mod_index(s, TM_WINDOW_S)];
        if (sl->sec == s)
            sum += sl->requests;
    }
    set(o, "rps", json_real((double)sum / TM_RATE_S));
    return o;
}

static json_t *json_status(const struct model *m)
{
    json_t *o = json_object(), *classes = json_object(), *codes = json_object();
    for (size_t i = 0; i < N_CLASSES; i++)
        set(classes, class_names[i], ju(m->classes[i]));
    for (size_t i = 0; i < N_CODES; i++) {
        if (m->codes[i]) {
            char k[8];
            snprintf(k, sizeof k, "%zu", i);
            set(codes, k, ju(m->codes[i]));
        }
    }
    set(o, "classes", classes);
    set(o, "codes", codes);
    return o;
}

/* Columnar: "t" lists the seconds, every other array is aligned with it.
 * since == 0: every second of the window, empty ones as zeros; otherwise
 * only the seconds stamped after `since`. */
static json_t *json_series(const struct model *m, uint64_t since)
{
    json_t *o = json_object();
    json_t *t = json_array(), *req = json_array(), *bin = json_array(),
           *bout = json_array(), *err = json_array();
    json_t *cls[N_CLASSES], *pct[N_PCT];
    for (size_t i = 0; i < N_CLASSES; i++)
        cls[i] = json_array();
    for (size_t k = 0; k < N_PCT; k++)
        pct[k] = json_array();
    static const struct second empty = { .sec = SEC_EMPTY };
    for (int64_t s = m->now_sec - TM_WINDOW_S + 1; s <= m->now_sec; s++) {
        const struct second *sl = &m->secs[mod_index(s, TM_WINDOW_S)];
        bool held = sl->sec == s;
        if (since && (!held || sl->seq <= since))
            continue;
        if (!held)
            sl = &empty;
        push(t, json_integer(s));
        push(req, ju(sl->requests));
        push(bin, ju(sl->bytes_in));
        push(bout, ju(sl->bytes_out));
        push(err, ju(sl->errors));
        for (size_t i = 0; i < N_CLASSES; i++)
            push(cls[i], ju(sl->classes[i]));
        for (size_t k = 0; k < N_PCT; k++)
            push(pct[k], ju(sl->pct[k]));
    }
    set(o, "t", t);
    set(o, KEY(REQUESTS), req);
    set(o, KEY(BYTES_IN), bin);
    set(o, KEY(BYTES_OUT), bout);
    set(o, "errors", err);
    for (size_t i = 0; i < N_CLASSES; i++)
        set(o, class_names[i], cls[i]);
    for (size_t k = 0; k < N_PCT; k++)
        set(o, pct_keys[k], pct[k]);
    return o;
}

/* Sort helper: entries ordered as in the server table, then the others in
 * the order they first appeared. */
struct ord {
    size_t order, idx;
};

static int ord_cmp(const void *a, const void *b)
{
    const struct ord *x = a, *y = b;
    if (x->order != y->order)
        return x->order < y->order ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

static json_t *json_codes(const struct server *s)
{
    json_t *o = json_object();
    for (size_t i = 0; i < s->n_codes; i++) {
        char k[8];
        snprintf(k, sizeof k, "%u", (unsigned)s->codes[i].code);
        set(o, k, ju(s->codes[i].n));
    }
    return o;
}

static json_t *json_pools(struct model *m)
{
    json_t *arr = json_array();
    struct ord *po = malloc((m->n_pools + 1) * sizeof *po);
    struct ord *so = malloc((m->n_servers + 1) * sizeof *so);
    if (!po || !so)
        goto out;
    for (size_t i = 0; i < m->n_pools; i++)
        po[i] = (struct ord){ m->pools[i].order, i };
    qsort(po, m->n_pools, sizeof *po, ord_cmp);
    size_t ns = 0;
    for (size_t i = 0; i < m->n_servers; i++)
        if (m->servers[i].name[0] != '\0')
            so[ns++] = (struct ord){ m->servers[i].order, i };
    qsort(so, ns, sizeof *so, ord_cmp);

    for (size_t pi = 0; pi < m->n_pools; pi++) {
        struct pool *p = &m->pools[po[pi].idx];
        if (!p->listed && p->requests == 0)
            continue;
        json_t *jp = json_object(), *servers = json_array();
        set(jp, "name", jtext(p->name));
        set(jp, KEY(REQUESTS), ju(p->requests));
        set(jp, "errors", ju(p->errors));
        set(jp, "no_server", ju(p->no_server));
        set(jp, "rps", json_real(rate_get(&p->rate, m->now_sec)));
        set(jp, KEY(DURATION), json_epochs(m, &p->lat));
        for (size_t si = 0; si < ns; si++) {
            struct server *s = &m->servers[so[si].idx];
            if (s->pool_idx != po[pi].idx)
                continue;
            json_t *js = json_object();
            set(js, "address", jtext(s->name));
            set(js, "state", json_string(tm_server_state_name(s->info.state)));
            set(js, KEY(SERVER_UP), json_boolean(s->info.state == TM_SERVER_UP));
            set(js, "listed", json_boolean(s->listed));
            set(js, "weight", json_integer(s->info.weight));
            set(js, "backup", json_boolean(s->info.backup));
            set(js, KEY(SERVER_INFLIGHT), json_integer(s->info.inflight));
            set(js, KEY(REQUESTS), ju(s->requests));
            set(js, "errors", ju(s->errors));
            set(js, KEY(BYTES_IN), ju(s->bytes_in));
            set(js, KEY(BYTES_OUT), ju(s->bytes_out));
            set(js, "rps", json_real(rate_get(&s->rate, m->now_sec)));
            set(js, KEY(DURATION), json_epochs(m, &s->lat));
            set(js, "codes", json_codes(s));
            push(servers, js);
        }
        set(jp, "servers", servers);
        push(arr, jp);
    }
out:
    free(po);
    free(so);
    return arr;
}

struct cidx {
    uint64_t requests;
    int idx;
};

static int cidx_cmp(const void *a, const void *b)
{
    const struct cidx *x = a, *y = b;
    if (x->requests != y->requests)
        return x->requests > y->requests ? -1 : 1;
    return x->idx - y->idx;
}

/* All countries with traffic, most requests first (since == 0), or those
 * that changed after `since`. */
static json_t *json_countries(const struct model *m, uint64_t since)
{
    json_t *arr = json_array();
    struct cidx list[N_COUNTRIES];
    size_t n = 0;
    for (int i = 0; i < N_COUNTRIES; i++)
        if (m->countries[i].requests && m->countries[i].seq > since)
            list[n++] = (struct cidx){ m->countries[i].requests, i };
    qsort(list, n, sizeof *list, cidx_cmp);
    for (size_t k = 0; k < n; k++) {
        const struct country *c = &m->countries[list[k].idx];
        char cc[3];
        country_code(list[k].idx, cc);
        json_t *o = json_object();
        set(o, "code", json_string(cc));
        set(o, KEY(REQUESTS), ju(c->requests));
        set(o, "errors", ju(c->errors));
        if (c->located) {
            set(o, "lat", json_real(c->lat_sum / (double)c->located));
            set(o, "lon", json_real(c->lon_sum / (double)c->located));
        } else {
            set(o, "lat", json_null());
            set(o, "lon", json_null());
        }
        push(arr, o);
    }
    return arr;
}

enum top_kind { TOP_CITIES, TOP_PATHS, TOP_CLIENTS };

static json_t *json_top(const struct tm_aggregator *a, const struct tm_topk *t,
                        enum top_kind kind)
{
    json_t *arr = json_array();
    size_t max = a->cfg.top_n;
    struct tm_topk_item *items = malloc(max * sizeof *items);
    if (!items)
        return arr;
    size_t n = tm_topk_top(t, items, max);
    for (size_t i = 0; i < n; i++) {
        const struct tm_topk_item *it = &items[i];
        json_t *o = json_object();
        if (kind == TOP_CITIES) {
            const struct city_payload *p = it->payload;
            const char *k = it->key;
            set(o, "country", jstr(k, 2));
            set(o, "city", jstr(k + 2, it->key_len - 2));
            set(o, "lat", p->has_location ? json_real(p->lat) : json_null());
            set(o, "lon", p->has_location ? json_real(p->lon) : json_null());
        } else if (kind == TOP_PATHS) {
            set(o, "path", jstr(it->key, it->key_len));
        } else {
            const unsigned char *k = it->key;
            const struct client_payload *p = it->payload;
            char text[INET6_ADDRSTRLEN] = "";
            if (k[0] == 4 || k[0] == 6)
                inet_ntop(k[0] == 4 ? AF_INET : AF_INET6, k + 1, text, sizeof text);
            set(o, "address", json_string(text));
            set(o, "country", jtext(p->country));
            set(o, "city", jtext(p->city));
        }
        set(o, KEY(REQUESTS), ju(it->count));
        set(o, "error", ju(it->error));
        push(arr, o);
    }
    free(items);
    return arr;
}

static json_t *json_recent(const struct tm_aggregator *a, const struct model *m,
                           uint64_t since)
{
    json_t *arr = json_array();
    uint64_t max = a->cfg.recent_max;
    uint64_t n = m->recent_count < max ? m->recent_count : max;
    for (uint64_t k = m->recent_count - n; k < m->recent_count; k++) {
        const struct recent *r = &m->recent[k % max];
        if (r->seq <= since)
            continue;
        char text[INET6_ADDRSTRLEN] = "";
        if (r->family == 4 || r->family == 6)
            inet_ntop(r->family == 4 ? AF_INET : AF_INET6, r->addr, text, sizeof text);
        json_t *o = json_object();
        set(o, "time_ms", json_integer(r->time_us / 1000));
        set(o, "client", json_string(text));
        set(o, "country", jtext(r->country));
        set(o, "city", jtext(r->city));
        set(o, "lat", r->has_location ? json_real(r->lat) : json_null());
        set(o, "lon", r->has_location ? json_real(r->lon) : json_null());
        set(o, "status", json_integer(r->status));
        set(o, "method", json_string(http_method_str((enum http_method)r->method)));
        set(o, "host", jtext(r->host));
        set(o, "path", jtext(r->path));
        set(o, "pool", jtext(r->pool));
        set(o, "server", jtext(r->server));
        set(o, "duration_us", ju(r->duration_us));
        set(o, "tunnel", json_boolean(r->kind == TM_TUNNEL_OPEN));
        push(arr, o);
    }
    return arr;
}

static json_t *json_geo(const struct tm_aggregator *a, const struct model *m)
{
    json_t *o = json_object(), *kinds = json_object();
    set(o, "enabled", json_boolean(a->cfg.geo != NULL));
    set(o, "lookups", ju(m->geo.lookups));
    set(o, "cache_hits", ju(m->geo.cache_hits));
    set(o, "misses", ju(m->geo.not_found));
    set(o, "errors", ju(m->geo.errors));
    for (int k = 0; k < N_GEO_KINDS; k++)
        set(kinds, geo_kind_name((enum geo_kind)k), ju(m->geo_kinds[k]));
    set(o, "kinds", kinds);
    return o;
}

/* The document shared by snapshot and delta; `since` 0 = everything. */
static json_t *build(struct tm_aggregator *a, uint64_t since)
{
    struct model *m = &a->m;
    bool full = since == 0;
    json_t *doc = json_object();
    set(doc, "seq", ju(m->seq));
    set(doc, "full", json_boolean(full));
    if (!full)
        set(doc, "since", ju(since));
    set(doc, "now_ms", json_integer(m->now_us / 1000));
    set(doc, "uptime_s", json_real((double)(m->now_us - m->start_us) / 1e6));
    set(doc, "window_s", json_integer(TM_WINDOW_S));
    set(doc, "window_start", json_integer(m->now_sec - TM_WINDOW_S + 1));
    if (a->cfg.proxy_has_location) {
        json_t *p = json_object();
        set(p, "lat", json_real(a->cfg.proxy_lat));
        set(p, "lon", json_real(a->cfg.proxy_lon));
        set(doc, "proxy", p);
    } else {
        set(doc, "proxy", json_null());
    }
    set(doc, "totals", json_totals(m));
    json_t *lat = json_object();
    set(lat, "window", json_hist(m->window));
    set(lat, "total", json_hist(m->all));
    set(doc, KEY(DURATION), lat);
    if (full || m->status_seq > since)
        set(doc, "status", json_status(m));
    set(doc, "series", json_series(m, since));
    if (full || m->pools_seq > since)
        set(doc, "pools", json_pools(m));
    if (full || m->countries_seq > since)
        set(doc, KEY(GEO_REQUESTS), json_countries(m, since));
    if (full || m->cities_seq > since)
        set(doc, "cities", json_top(a, m->cities, TOP_CITIES));
    if (full || m->paths_seq > since)
        set(doc, "paths", json_top(a, m->paths, TOP_PATHS));
    if (full || m->clients_seq > since)
        set(doc, "clients", json_top(a, m->clients, TOP_CLIENTS));
    set(doc, "recent", json_recent(a, m, since));
    set(doc, "geo", json_geo(a, m));
    return doc;
}

static char *dump(json_t *doc, int flags)
{
    if (!doc)
        return NULL;
    /* 15 digits: epoch seconds with their fraction, without 0.1 printing as
     * 0.10000000000000001. */
    size_t f = JSON_REAL_PRECISION(15) |
               ((flags & TM_JSON_PRETTY) ? JSON_INDENT(2) : JSON_COMPACT);
    char *s = json_dumps(doc, f);
    json_decref(doc);
    return s;
}

char *tm_stats_json(struct tm_aggregator *agg, int flags)
{
    pthread_mutex_lock(&agg->model_lock);
    json_t *doc = build(agg, 0);
    pthread_mutex_unlock(&agg->model_lock);
    return dump(doc, flags);
}

char *tm_delta_json(struct tm_aggregator *agg, uint64_t since_seq, uint64_t *new_seq)
{
    pthread_mutex_lock(&agg->model_lock);
    uint64_t seq = agg->m.seq;
    json_t *doc = build(agg, since_seq > seq ? 0 : since_seq);
    pthread_mutex_unlock(&agg->model_lock);
    if (new_seq)
        *new_seq = seq;
    return dump(doc, 0);
}

char *tm_recent_json(struct tm_aggregator *agg, uint64_t since_seq, size_t max,
                     uint64_t *new_seq, size_t *count)
{
    pthread_mutex_lock(&agg->model_lock);
    uint64_t seq = agg->m.seq;
    uint64_t since = since_seq > seq ? 0 : since_seq;
    json_t *recent = json_recent(agg, &agg->m, since);
    pthread_mutex_unlock(&agg->model_lock);
    size_t n = json_array_size(recent), skipped = n > max ? n - max : 0;
    for (size_t i = 0; i < skipped; i++)
        json_array_remove(recent, 0);
    json_t *doc = json_object();
    set(doc, "seq", ju(seq));
    set(doc, "since", ju(since));
    set(doc, "skipped", ju(skipped));
    set(doc, "recent", recent);
    if (new_seq)
        *new_seq = seq;
    if (count)
        *count = n - skipped;
    return dump(doc, 0);
}

char *tm_servers_json(struct tm_aggregator *agg)
{
    pthread_mutex_lock(&agg->model_lock);
    json_t *doc = json_object();
    set(doc, "seq", ju(agg->m.seq));
    set(doc, "pools", json_pools(&agg->m));
    pthread_mutex_unlock(&agg->model_lock);
    return dump(doc, 0);
}

/* ---- Prometheus ----------------------------------------------------------- */

/* Label values: backslash, double quote and newline are escaped (0.0.4). */
static void prom_label(FILE *f, const char *name, const char *value, bool first)
{
    fprintf(f, "%s%s=\"", first ? "" : ",", name);
    for (const char *p = value; *p; p++) {
        if (*p == '\\')
            fputs("\\\\", f);
        else if (*p == '"')
            fputs("\\\"", f);
        else if (*p == '\n')
            fputs("\\n", f);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

static void prom_header(FILE *f, enum tm_metric id)
{
    /* Help text: backslash and newline escaped. */
    fprintf(f, "# HELP %s ", metric_name[id]);
    for (const char *p = metric_help[id]; *p; p++) {
        if (*p == '\\')
            fputs("\\\\", f);
        else if (*p == '\n')
            fputs("\\n", f);
        else
            fputc(*p, f);
    }
    fprintf(f, "\n# TYPE %s %s\n", metric_name[id], metric_type[id]);
}

static void prom_pool_server(FILE *f, const char *pool, const char *server)
{
    prom_label(f, "pool", pool, true);
    prom_label(f, "server", server, false);
}

static void prom_metric(FILE *f, struct tm_aggregator *a, enum tm_metric id)
{
    struct model *m = &a->m;
    const char *name = metric_name[id];
    switch (id) {
    case TM_METRIC_REQUESTS:
        for (size_t i = 0; i < m->n_servers; i++) {
            const struct server *s = &m->servers[i];
            for (size_t k = 0; k < s->n_codes; k++) {
                char code[8];
                snprintf(code, sizeof code, "%u", (unsigned)s->codes[k].code);
                fprintf(f, "%s{", name);
                prom_pool_server(f, s->pool, s->name);
                prom_label(f, "code", code, false);
                fprintf(f, "} %" PRIu64 "\n", s->codes[k].n);
            }
        }
        break;
    case TM_METRIC_DURATION:
        for (size_t i = 0; i < m->n_pools; i++) {
            const struct pool *p = &m->pools[i];
            uint64_t cum = 0;
            for (size_t b = 0; b <= PROM_BUCKETS; b++) {
                cum += p->prom_le[b];
                fprintf(f, "%s_bucket{", name);
                prom_label(f, "pool", p->name, true);
                prom_label(f, "le", b < PROM_BUCKETS ? prom_le[b] : "+Inf", false);
                fprintf(f, "} %" PRIu64 "\n", cum);
            }
            fprintf(f, "%s_sum{", name);
            prom_label(f, "pool", p->name, true);
            fprintf(f, "} %" PRIu64 ".%06" PRIu64 "\n", p->prom_sum_us / 1000000,
                    p->prom_sum_us % 1000000);
            fprintf(f, "%s_count{", name);
            prom_label(f, "pool", p->name, true);
            fprintf(f, "} %" PRIu64 "\n", p->prom_count);
        }
        break;
    case TM_METRIC_BYTES_IN:
        fprintf(f, "%s %" PRIu64 "\n", name, m->bytes_in);
        break;
    case TM_METRIC_BYTES_OUT:
        fprintf(f, "%s %" PRIu64 "\n", name, m->bytes_out);
        break;
    case TM_METRIC_SERVER_UP:
    case TM_METRIC_SERVER_INFLIGHT:
        for (size_t i = 0; i < m->n_table; i++) {
            const struct tm_server_info *t = &m->table[i];
            fprintf(f, "%s{", name);
            prom_pool_server(f, t->pool, t->server);
            if (id == TM_METRIC_SERVER_UP)
                fprintf(f, "} %d\n", t->state == TM_SERVER_UP);
            else
                fprintf(f, "} %" PRIu32 "\n", t->inflight);
        }
        break;
    case TM_METRIC_GEO_REQUESTS:
        for (int i = 0; i < N_COUNTRIES; i++) {
            if (!m->countries[i].requests)
                continue;
            char cc[3];
            country_code(i, cc);
            fprintf(f, "%s{", name);
            prom_label(f, "country", cc, true);
            fprintf(f, "} %" PRIu64 "\n", m->countries[i].requests);
        }
        break;
    case TM_METRIC_CLIENT_CONNECTIONS:
        fprintf(f, "%s %ld\n", name, m->client_connections);
        break;
    case TM_METRIC_TUNNELS:
        fprintf(f, "%s %ld\n", name, m->tunnels);
        break;
    case TM_METRIC_REQUESTS_INFLIGHT:
        fprintf(f, "%s %ld\n", name, m->inflight);
        break;
    case TM_METRIC_TUNNELS_OPENED:
        fprintf(f, "%s %" PRIu64 "\n", name, m->tunnels_opened);
        break;
    case TM_METRIC_TELEMETRY_DROPPED:
        fprintf(f, "%s %" PRIu64 "\n", name, m->dropped);
        break;
    case TM_METRIC_GEO_LOOKUPS:
        fprintf(f, "%s %" PRIu64 "\n", name, m->geo.lookups);
        break;
    case TM_METRIC_GEO_MISSES:
        fprintf(f, "%s %" PRIu64 "\n", name, m->geo.not_found);
        break;
    case TM_METRIC_GEO_ERRORS:
        fprintf(f, "%s %" PRIu64 "\n", name, m->geo.errors);
        break;
    case TM_METRIC_START_TIME:
        fprintf(f, "%s %" PRId64 ".%06" PRId64 "\n", name, floor_div(m->start_us, 1000000),
                (int64_t)mod_index(m->start_us, 1000000));
        break;
    case TM_METRIC_COUNT:
        break;
    }
}

char *tm_prometheus(struct tm_aggregator *agg)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f)
        return NULL;
    pthread_mutex_lock(&agg->model_lock);
    for (int id = 0; id < TM_METRIC_COUNT; id++) {
        prom_header(f, (enum tm_metric)id);
        prom_metric(f, agg, (enum tm_metric)id);
    }
    pthread_mutex_unlock(&agg->model_lock);
    if (ferror(f)) {
        fclose(f);
        free(text);
        return NULL;
    }
    if (fclose(f) != 0) {
        free(text);
        return NULL;
    }
    return text;
}
