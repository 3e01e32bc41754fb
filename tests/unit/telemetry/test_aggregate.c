/*
 * test_aggregate.c - telemetry/aggregate.c: what the aggregator counts and
 * what its readers (JSON snapshot, delta, /api/servers, Prometheus) say.
 *
 * Records come from a scripted tm_source and time from an injected clock,
 * so every expected number is exact: counts per status code and class, per
 * country (with the real DB-IP database when $SB_GEO_DB_DIR, default
 * data/geo, holds it; otherwise geo is off and everything lands in "XX"),
 * sliding-window rollover, heavy hitters, the server table, tunnels, drops
 * and gauges. Every JSON document is parsed back with jansson; every
 * Prometheus line must be a comment or `name{labels} value`.
 *
 * Figures (aggregator throughput, with and without geo) are printed on lines
 * starting with '#'.
 */
#include "check.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "geo/geo.h"
#include "telemetry/telemetry.h"

#if defined(__SANITIZE_ADDRESS__)
#define THROUGHPUT_N 200000
#else
#define THROUGHPUT_N 1000000
#endif

#define T0 INT64_C(1700000000)          /* a whole second, in seconds */
#define US INT64_C(1000000)

/* ------------------------------------------------------------ fixtures */

/* A source that hands out an array of records, or generates `gen_left`
 * records on the fly with gen(). */
struct script {
    struct tm_source base;
    struct tm_record *recs;
    size_t n, cap, pos;
    uint64_t dropped;
    uint64_t gen_left, gen_i;
    void (*gen)(struct tm_record *r, uint64_t i);
};

static size_t script_poll(struct tm_source *src, struct tm_record *out, size_t max)
{
    struct script *s = (struct script *)src;
    size_t n = 0;
    if (s->gen) {
        for (; n < max && s->gen_left; n++, s->gen_left--)
            s->gen(&out[n], s->gen_i++);
        return n;
    }
    n = s->n - s->pos < max ? s->n - s->pos : max;
    memcpy(out, s->recs + s->pos, n * sizeof *out);
    s->pos += n;
    if (s->pos == s->n)
        s->pos = s->n = 0;
    return n;
}

static uint64_t script_dropped(struct tm_source *src)
{
    return ((struct script *)src)->dropped;
}

static void script_init(struct script *s)
{
    memset(s, 0, sizeof *s);
    s->base.poll = script_poll;
    s->base.dropped = script_dropped;
}

static struct tm_record *script_add(struct script *s)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 1024;
        struct tm_record *r = realloc(s->recs, cap * sizeof *r);
        if (!r)
            abort();
        s->recs = r;
        s->cap = cap;
    }
    struct tm_record *r = &s->recs[s->n++];
    memset(r, 0, sizeof *r);
    return r;
}

static void set_addr(struct tm_record *r, const char *ip)
{
    if (inet_pton(AF_INET, ip, r->addr) == 1)
        r->family = 4;
    else if (inet_pton(AF_INET6, ip, r->addr) == 1)
        r->family = 6;
}

/* One request that ended at `end_us`, took `dur` µs. */
static struct tm_record *req(struct script *s, int64_t end_us, uint64_t dur, unsigned status,
                             const char *pool, const char *server, const char *path,
                             const char *ip)
{
    struct tm_record *r = script_add(s);
    r->time_us = end_us - (int64_t)dur;
    r->duration_us = dur;
    r->status = (uint16_t)status;
    r->method = 1;                          /* HTTP_GET */
    r->bytes_in = 100;
    r->bytes_out = 1000;
    snprintf(r->pool, sizeof r->pool, "%s", pool);
    snprintf(r->server, sizeof r->server, "%s", server);
    snprintf(r->path, sizeof r->path, "%s", path);
    snprintf(r->host, sizeof r->host, "example.test");
    set_addr(r, ip);
    return r;
}

static int64_t clock_of(void *ctx)
{
    return *(int64_t *)ctx;
}

struct fixture {
    struct script src;
    int64_t now_us;
    struct tm_aggregator *agg;
};

static struct tm_aggregator *fixture_new(struct fixture *f, const struct geo_db *geo,
                                         struct tm_aggregator_config *extra)
{
    script_init(&f->src);
    f->now_us = T0 * US + 500000;
    struct tm_aggregator_config cfg = { 0 };
    if (extra)
        cfg = *extra;
    cfg.source = &f->src.base;
    cfg.geo = geo;
    cfg.clock_us = clock_of;
    cfg.clock_ctx = &f->now_us;
    f->agg = tm_aggregator_new(&cfg);
    return f->agg;
}

static void fixture_free(struct fixture *f)
{
    tm_aggregator_free(f->agg);
    free(f->src.recs);
}

/* ------------------------------------------------------------ geo DB */

static struct geo_db *open_geo(void)
{
    const char *dir = getenv("SB_GEO_DB_DIR");
    if (!dir || !*dir)
        dir = "data/geo";
    DIR *d = opendir(dir);
    if (!d)
        return NULL;
    char paths[2][512];
    size_t n = 0;
    struct dirent *e;
    /* City databases only (a directory may also hold an ASN file). */
    while ((e = readdir(d)) && n < 2) {
        size_t len = strlen(e->d_name);
        if (len > 5 && strcmp(e->d_name + len - 5, ".mmdb") == 0 &&
            strcasestr(e->d_name, "city"))
            snprintf(paths[n++], sizeof paths[0], "%.255s/%.250s", dir, e->d_name);
    }
    closedir(d);
    if (n == 0)
        return NULL;
    const char *p[2] = { paths[0], paths[1] };
    char err[256];
    struct geo_db *db = geo_open(p, n, err, sizeof err);
    if (!db)
        printf("# geo database in %s did not open: %s\n", dir, err);
    return db;
}

static struct geo_db *geo;

/* ------------------------------------------------------------ JSON helpers */

static json_t *parse(char *text)
{
    json_error_t e;
    json_t *j = text ? json_loads(text, 0, &e) : NULL;
    if (text && !j)
        printf("# JSON error: %s at %d\n", e.text, e.line);
    free(text);
    return j;
}

/* Dotted path: "totals.requests", "series.t". */
static json_t *jget(json_t *j, const char *path)
{
    char buf[128];
    snprintf(buf, sizeof buf, "%s", path);
    char *save = NULL;
    for (char *k = strtok_r(buf, ".", &save); k && j; k = strtok_r(NULL, ".", &save))
        j = json_object_get(j, k);
    return j;
}

static long long jint(json_t *j, const char *path)
{
    json_t *v = jget(j, path);
    return json_is_integer(v) ? json_integer_value(v) : -1;
}

static double jnum(json_t *j, const char *path)
{
    json_t *v = jget(j, path);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

/* The element of array `arr` whose string member `key` equals `value`. */
static json_t *jfind(json_t *arr, const char *key, const char *value)
{
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) {
        const char *s = json_string_value(json_object_get(v, key));
        if (s && strcmp(s, value) == 0)
            return v;
    }
    return NULL;
}

static json_t *server_of(json_t *doc, const char *pool, const char *server)
{
    json_t *p = jfind(json_object_get(doc, "pools"), "name", pool);
    return p ? jfind(json_object_get(p, "servers"), "address", server) : NULL;
}

/* ------------------------------------------------------------ Prometheus */

/* The value of the sample whose name and labels are exactly `series`, or
 * NAN. */
static double prom_value(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *line = text; line && *line;) {
        const char *end = strchr(line, '\n');
        if (strncmp(line, series, n) == 0 && line[n] == ' ')
            return strtod(line + n + 1, NULL);
        line = end ? end + 1 : NULL;
    }
    return NAN;
}

static bool name_char(char c, bool first)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
           (!first && c >= '0' && c <= '9');
}

/* Checks the exposition grammar line by line; returns the number of bad
 * lines and reports the first. Also: each metric has exactly one HELP and
 * one TYPE, before its samples; counters end with _total; every sample
 * belongs to a declared metric. */
static int prom_check(const char *text, int *samples)
{
    static const char *const names[] = {
#define NAME(id, name, type, key, help) name,
        TM_METRICS(NAME)
#undef NAME
    };
    static const char *const types[] = {
#define TYPE(id, name, type, key, help) #type,
        TM_METRICS(TYPE)
#undef TYPE
    };
    int help_seen[TM_METRIC_COUNT] = { 0 }, type_seen[TM_METRIC_COUNT] = { 0 };
    int bad = 0;
    *samples = 0;
    const char *line = text;
    while (*line) {
        const char *end = strchr(line, '\n');
        if (!end) {
            bad++;
            printf("# prometheus: last line lacks a newline\n");
            break;
        }
        char buf[1024];
        size_t len = (size_t)(end - line) < sizeof buf - 1 ? (size_t)(end - line) : sizeof buf - 1;
        memcpy(buf, line, len);
        buf[len] = '\0';
        line = end + 1;
        bool ok = true;
        if (strncmp(buf, "# HELP ", 7) == 0 || strncmp(buf, "# TYPE ", 7) == 0) {
            bool is_help = buf[2] == 'H';
            char name[128] = "", rest[512] = "";
            sscanf(buf + 7, "%127s %511[^\n]", name, rest);
            int id = -1;
            for (int i = 0; i < TM_METRIC_COUNT; i++)
                if (strcmp(names[i], name) == 0)
                    id = i;
            ok = id >= 0 && rest[0];
            if (ok && is_help)
                help_seen[id]++;
            if (ok && !is_help) {
                type_seen[id]++;
                ok = strcmp(rest, types[id]) == 0;
                if (strcmp(rest, "counter") == 0) {
                    size_t nl = strlen(name);
                    ok &= nl > 6 && strcmp(name + nl - 6, "_total") == 0;
                }
            }
        } else if (buf[0] == '#') {
            ok = true;
        } else {
            /* name{label="value",...} value */
            const char *p = buf;
            ok = name_char(*p, true);
            while (name_char(*p, false))
                p++;
            size_t nlen = (size_t)(p - buf);
            int id = -1;
            for (int i = 0; i < TM_METRIC_COUNT; i++) {
                size_t l = strlen(names[i]);
                if (l == nlen && strncmp(buf, names[i], l) == 0)
                    id = i;
                else if (strcmp(types[i], "histogram") == 0 && nlen > l &&
                         strncmp(buf, names[i], l) == 0 &&
                         (strncmp(buf + l, "_bucket", nlen - l) == 0 ||
                          strncmp(buf + l, "_sum", nlen - l) == 0 ||
                          strncmp(buf + l, "_count", nlen - l) == 0))
                    id = i;
            }
            ok &= id >= 0 && type_seen[id] == 1;
            if (*p == '{') {
                p++;
                while (ok && *p != '}') {
                    ok &= name_char(*p, true);
                    while (name_char(*p, false))
                        p++;
                    ok &= *p++ == '=';
                    ok &= *p++ == '"';
                    while (ok && *p && *p != '"') {
                        if (*p == '\\') {
                            p++;
                            ok &= *p == '\\' || *p == '"' || *p == 'n';
                        }
                        p++;
                    }
                    ok &= *p++ == '"';
                    if (*p == ',')
                        p++;
                }
                if (ok)
                    p++;
            }
            ok &= *p++ == ' ';
            char *num_end;
            if (ok && strcmp(p, "+Inf") != 0) {
                strtod(p, &num_end);
                ok &= num_end != p && *num_end == '\0';
            }
            (*samples)++;
        }
        if (!ok) {
            if (!bad)
                printf("# prometheus: bad line: %.200s\n", buf);
            bad++;
        }
    }
    for (int i = 0; i < TM_METRIC_COUNT; i++)
        if (help_seen[i] != 1 || type_seen[i] != 1) {
            if (!bad)
                printf("# prometheus: %s has %d HELP, %d TYPE\n", names[i], help_seen[i],
                       type_seen[i]);
            bad++;
        }
    return bad;
}

/* ------------------------------------------------------------ tests */

static void test_status_codes_and_classes(void)
{
    struct fixture f;
    CHECK(fixture_new(&f, NULL, NULL) != NULL);
    if (!f.agg)
        return;
    int64_t t = T0 * US;
    struct { unsigned status; int n; const char *pool, *server, *reason; } plan[] = {
        { 200, 100, "web", "10.0.0.1:80", "" },
        { 200, 50, "web", "10.0.0.2:80", "" },
        { 404, 30, "web", "10.0.0.2:80", "" },
        { 304, 4, "api", "10.0.1.1:80", "" },
        { 500, 7, "api", "10.0.1.1:80", "" },
        { 502, 3, "api", "10.0.1.1:80", "connect refused" },
        { 503, 2, "api", "", "no server" },
        { 400, 1, "", "", "malformed" },
        { 0, 2, "web", "10.0.0.1:80", "" },
        { 150, 1, "web", "10.0.0.1:80", "" },
        { 999, 1, "web", "10.0.0.1:80", "" },
    };
    int total = 0;
    for (size_t i = 0; i < sizeof plan / sizeof plan[0]; i++)
        for (int k = 0; k < plan[i].n; k++, total++) {
            struct tm_record *r = req(&f.src, t, 1500, plan[i].status, plan[i].pool,
                                      plan[i].server, "/", "10.1.2.3");
            snprintf(r->reason, sizeof r->reason, "%s", plan[i].reason);
        }
    CHECK(tm_aggregator_drain_now(f.agg) == (size_t)total);

    json_t *doc = parse(tm_stats_json(f.agg, 0));
    CHECK(doc != NULL);
    if (!doc) {
        fixture_free(&f);
        return;
    }
    CHECK(jint(doc, "totals.requests") == total);
    CHECK(jint(doc, "totals.errors") == 7 + 3 + 2 + 1);
    CHECK(jint(doc, "totals.bytes_received") == 100 * total);
    CHECK(jint(doc, "totals.bytes_sent") == 1000 * total);
    CHECK(jint(doc, "status.classes.none") == 2);
    CHECK(jint(doc, "status.classes.1xx") == 1);
    CHECK(jint(doc, "status.classes.2xx") == 150);
    CHECK(jint(doc, "status.classes.3xx") == 4);
    CHECK(jint(doc, "status.classes.4xx") == 31);
    CHECK(jint(doc, "status.classes.5xx") == 12);
    CHECK(jint(doc, "status.classes.other") == 1);
    CHECK(jint(doc, "status.codes.200") == 150);
    CHECK(jint(doc, "status.codes.404") == 30);
    CHECK(jint(doc, "status.codes.502") == 3);
    CHECK(jint(doc, "status.codes.999") == 1);
    CHECK(jint(doc, "status.codes.0") == 2);
    CHECK(jget(doc, "status.codes.201") == NULL);

    json_t *s = server_of(doc, "web", "10.0.0.1:80");
    CHECK(s && jint(s, "requests") == 104 && jint(s, "errors") == 0);
    CHECK(s && jint(s, "codes.200") == 100 && jint(s, "codes.0") == 2);
    CHECK(s && strcmp(json_string_value(json_object_get(s, "state")), "unknown") == 0);
    s = server_of(doc, "api", "10.0.1.1:80");
    CHECK(s && jint(s, "requests") == 14 && jint(s, "errors") == 10);
    json_t *api = jfind(json_object_get(doc, "pools"), "name", "api");
    CHECK(api && jint(api, "requests") == 16 && jint(api, "errors") == 12 &&
          jint(api, "no_server") == 2);
    /* Every request took 1500 µs: 1500 is in the 8 µs bucket [1496, 1503]. */
    CHECK(api && llabs(jint(api, "latency.p50_us") - 1500) <= 15);
    CHECK(llabs(jint(doc, "latency.window.p99_us") - 1500) <= 15);
    CHECK(jint(doc, "latency.window.count") == total);
    CHECK(jint(doc, "latency.total.count") == total);
    json_decref(doc);

    char *prom = tm_prometheus(f.agg);
    CHECK(prom != NULL);
    if (prom) {
        CHECK(prom_value(prom, "switchboard_requests_total{pool=\"web\",server=\"10.0.0.1:80\","
                               "code=\"200\"}") == 100);
        CHECK(prom_value(prom, "switchboard_requests_total{pool=\"web\",server=\"10.0.0.2:80\","
                               "code=\"404\"}") == 30);
        CHECK(prom_value(prom, "switchboard_requests_total{pool=\"api\",server=\"\","
                               "code=\"503\"}") == 2);
        CHECK(prom_value(prom, "switchboard_requests_total{pool=\"\",server=\"\","
                               "code=\"400\"}") == 1);
        CHECK(prom_value(prom, "switchboard_requests_total{pool=\"web\",server=\"10.0.0.1:80\","
                               "code=\"0\"}") == 2);
        int samples;
        CHECK(prom_check(prom, &samples) == 0);
        free(prom);
    }
    fixture_free(&f);
}

static void test_countries(void)
{
    static const char *const addrs[] = {
        "8.8.8.8", "1.1.1.1", "193.0.6.139", "202.12.27.33", "200.160.0.8",
        "81.2.69.160", "2001:4860:4860::8888", "2a00:1450:4001:80b::200e",
        "10.0.0.1", "192.168.1.1", "127.0.0.1", "::1", "203.0.113.5",
    };
    enum { N_ADDRS = sizeof addrs / sizeof addrs[0] };
    struct fixture f;
    CHECK(fixture_new(&f, geo, NULL) != NULL);
    if (!f.agg)
        return;
    /* The expected country of each address is what the database says. */
    char expect_cc[N_ADDRS][3];
    struct { char cc[3]; long long n; } want[N_ADDRS];
    size_t n_want = 0;
    int total = 0;
    for (size_t i = 0; i < N_ADDRS; i++) {
        struct tm_record probe;
        memset(&probe, 0, sizeof probe);
        set_addr(&probe, addrs[i]);
        struct geo_result g;
        geo_lookup(geo, probe.addr, probe.family, &g, NULL);
        snprintf(expect_cc[i], 3, "%s", g.country[0] ? g.country : TM_COUNTRY_UNKNOWN);
        int times = (int)(i + 1) * 3;
        for (int k = 0; k < times; k++, total++)
            req(&f.src, T0 * US, 800, 200, "web", "a:80", "/", addrs[i]);
        size_t w = 0;
        while (w < n_want && strcmp(want[w].cc, expect_cc[i]) != 0)
            w++;
        if (w == n_want) {
            memcpy(want[n_want].cc, expect_cc[i], 3);
            want[n_want++].n = 0;
        }
        want[w].n += times;
    }
    tm_aggregator_drain_now(f.agg);
    json_t *doc = parse(tm_stats_json(f.agg, 0));
    char *prom = tm_prometheus(f.agg);
    CHECK(doc && prom);
    if (doc && prom) {
        json_t *countries = json_object_get(doc, "countries");
        CHECKF(json_array_size(countries) == n_want, "%zu countries, want %zu",
               json_array_size(countries), n_want);
        long long sum = 0, prev = LLONG_MAX;
        size_t i;
        json_t *c;
        json_array_foreach(countries, i, c) {
            long long n = jint(c, "requests");
            sum += n;
            CHECK(n <= prev);           /* most requests first */
            prev = n;
        }
        CHECK(sum == total);
        for (size_t w = 0; w < n_want; w++) {
            json_t *row = jfind(countries, "code", want[w].cc);
            CHECKF(row && jint(row, "requests") == want[w].n, "country %s: want %lld",
                   want[w].cc, want[w].n);
            char series[64];
            snprintf(series, sizeof series, "switchboard_geo_requests_total{country=\"%.2s\"}",
                     want[w].cc);
            CHECKF(prom_value(prom, series) == (double)want[w].n, "%s", series);
        }
        /* Private, loopback and documentation addresses never have a country. */
        json_t *xx = jfind(countries, "code", "XX");
        CHECK(xx && jint(xx, "requests") >= (9 + 10 + 11 + 12 + 13) * 3);
        CHECK(jint(doc, "geo.kinds.private") == (geo ? (9 + 10) * 3 : 0));
        json_t *enabled = jget(doc, "geo.enabled");
        CHECK(json_is_boolean(enabled) && json_boolean_value(enabled) == (geo != NULL));
        if (geo) {
            /* One lookup per request. Only public addresses are cached (the
             * first eight): the cache answers all their requests but the
             * first of each. */
            CHECK(jint(doc, "totals.geo_lookups") == total);
            CHECK(jint(doc, "geo.cache_hits") == (1 + 2 + 3 + 4 + 5 + 6 + 7 + 8) * 3 - 8);
            CHECK(jint(doc, "geo.kinds.loopback") == (11 + 12) * 3);
            CHECK(prom_value(prom, "switchboard_geo_lookups_total") == total);
            json_t *cities = json_object_get(doc, "cities");
            CHECK(json_array_size(cities) > 0);
            json_t *top = json_array_get(cities, 0);
            CHECK(top && json_is_number(json_object_get(top, "lat")));
            json_t *us = jfind(countries, "code", expect_cc[0]);
            CHECK(us && json_is_number(json_object_get(us, "lat")));
            printf("# countries with the real database: 8.8.8.8 -> %s, 193.0.6.139 -> %s, "
                   "200.160.0.8 -> %s, 2a00:1450:4001:80b::200e -> %s\n",
                   expect_cc[0], expect_cc[2], expect_cc[4], expect_cc[7]);
            CHECK(strcmp(expect_cc[0], "XX") != 0);
        } else {
            CHECK(json_array_size(countries) == 1);
            CHECK(jint(doc, "totals.geo_lookups") == 0);
            CHECK(jint(doc, "geo.kinds.disabled") == total);
            CHECK(json_array_size(json_object_get(doc, "cities")) == 0);
        }
    }
    json_decref(doc);
    free(prom);
    fixture_free(&f);
}

/* Value of series array `key` at second `sec`, or -1 if not listed. */
static long long series_at(json_t *doc, const char *key, int64_t sec)
{
    json_t *t = jget(doc, "series.t"), *v = json_object_get(jget(doc, "series"), key);
    size_t i;
    json_t *x;
    json_array_foreach(t, i, x) {
        if (json_integer_value(x) == sec)
            return json_integer_value(json_array_get(v, i));
    }
    return -1;
}

static void test_window_rollover(void)
{
    struct fixture f;
    CHECK(fixture_new(&f, NULL, NULL) != NULL);
    if (!f.agg)
        return;
    for (int i = 0; i < 10; i++)
        req(&f.src, (T0 - 5) * US + 1000, 200, 200, "web", "a:80", "/", "10.0.0.1");
    for (int i = 0; i < 20; i++)
        req(&f.src, T0 * US + 1000, 200 + (uint64_t)i, 200, "web", "a:80", "/", "10.0.0.1");
    for (int i = 0; i < 3; i++)         /* older than the window: totals only */
        req(&f.src, (T0 - 400) * US, 200, 200, "web", "a:80", "/", "10.0.0.1");
    req(&f.src, (T0 + 10) * US, 200, 500, "web", "a:80", "/", "10.0.0.1");   /* future */
    tm_aggregator_drain_now(f.agg);

    json_t *doc = parse(tm_stats_json(f.agg, 0));
    CHECK(doc != NULL);
    if (doc) {
        CHECK(json_array_size(jget(doc, "series.t")) == TM_WINDOW_S);
        CHECK(json_array_size(jget(doc, "series.requests")) == TM_WINDOW_S);
        CHECK(json_integer_value(json_array_get(jget(doc, "series.t"), TM_WINDOW_S - 1)) == T0);
        CHECK(jint(doc, "window_start") == T0 - TM_WINDOW_S + 1);
        CHECK(series_at(doc, "requests", T0 - 5) == 10);
        CHECK(series_at(doc, "requests", T0) == 21);        /* the future one clamped */
        CHECK(series_at(doc, "errors", T0) == 1);
        CHECK(series_at(doc, "5xx", T0) == 1);
        CHECK(series_at(doc, "requests", T0 - 4) == 0);
        CHECK(series_at(doc, "bytes_sent", T0 - 5) == 10000);
        /* Below 256 µs every value has its own bucket: exact percentiles. */
        CHECK(series_at(doc, "p50_us", T0 - 5) == 200);
        /* T0 holds 200 (the clamped one) and 200..219: the 11th is 209. */
        CHECK(series_at(doc, "p50_us", T0) == 209);
        CHECK(jint(doc, "totals.requests") == 34);
        CHECK(jint(doc, "totals.late") == 3);
        CHECK(jint(doc, "latency.window.count") == 31);
        CHECK(jint(doc, "latency.total.count") == 34);
        json_decref(doc);
    }

    /* One second later: the last five whole seconds are T0-4 .. T0. */
    f.now_us += 1 * US;
    tm_aggregator_drain_now(f.agg);
    doc = parse(tm_stats_json(f.agg, 0));
    CHECK(doc && fabs(jnum(doc, "totals.rps") - 21.0 / TM_RATE_S) < 1e-9);
    json_t *web = doc ? server_of(doc, "web", "a:80") : NULL;
    CHECK(web && fabs(jnum(web, "rps") - 21.0 / TM_RATE_S) < 1e-9);
    json_decref(doc);

    /* T0+100: everything still inside. */
    f.now_us = (T0 + 100) * US;
    tm_aggregator_drain_now(f.agg);
    doc = parse(tm_stats_json(f.agg, 0));
    CHECK(doc && series_at(doc, "requests", T0 - 5) == 10 && series_at(doc, "requests", T0) == 21);
    CHECK(doc && jint(doc, "latency.window.count") == 31);
    CHECK(doc && fabs(jnum(doc, "totals.rps")) < 1e-9);
    json_decref(doc);

    /* T0+295: the window starts at T0-4, so T0-5 has left it. */
    f.now_us = (T0 + 295) * US;
    tm_aggregator_drain_now(f.agg);
    doc = parse(tm_stats_json(f.agg, 0));
    CHECK(doc && series_at(doc, "requests", T0 - 5) == -1);
    CHECK(doc && series_at(doc, "requests", T0) == 21);
    CHECK(doc && jint(doc, "latency.window.count") == 21);
    CHECK(doc && jint(doc, "latency.window.p50_us") == 209);
    CHECK(doc && jint(doc, "totals.requests") == 34);
    json_decref(doc);

    /* T0+299 still holds T0; T0+300 does not. */
    f.now_us = (T0 + 299) * US + 999999;
    tm_aggregator_drain_now(f.agg);
    doc = parse(tm_stats_json(f.agg, 0));
    CHECK(doc && series_at(doc, "requests", T0) == 21);
    json_decref(doc);
    f.now_us = (T0 + 300) * US;
    req(&f.src, (T0 + 300) * US, 300, 200, "web", "a:80", "/", "10.0.0.1");
    tm_aggregator_drain_now(f.agg);
    doc = parse(tm_stats_json(f.agg, 0));
    CHECK(doc && series_at(doc, "requests", T0) == -1);
    CHECK(doc && series_at(doc, "requests", T0 + 300) == 1);
    CHECK(doc && jint(doc, "latency.window.count") == 1);
    CHECK(doc && jint(doc, "latency.window.p99_us") == 300);
    CHECK(doc && jint(doc, "latency.total.count") == 35);
    json_decref(doc);

    /* A clock that goes back does not move the window back. */
    f.now_us = (T0 + 200) * US;
    tm_aggregator_drain_now(f.agg);
    doc = parse(tm_stats_json(f.agg, 0));
    CHECK(doc && json_integer_value(json_array_get(jget(doc, "series.t"), TM_WINDOW_S - 1))
                     == T0 + 300);
    json_decref(doc);
    fixture_free(&f);
}

static void test_top_tables(void)
{
    struct fixture f;
    struct tm_aggregator_config cfg = { .top_n = 5 };
    CHECK(fixture_new(&f, NULL, &cfg) != NULL);
    if (!f.agg)
        return;
    /* Heavy paths and clients interleaved with 40,000 one-off ones. */
    static const char *const paths[] = { "/a", "/b", "/c", "/d" };
    static const int weights[] = { 5000, 3000, 2000, 1000 };
    int left[4];
    memcpy(left, weights, sizeof left);
    int total = 0;
    for (int i = 0; i < 40000 || left[0] || left[1] || left[2] || left[3]; i++) {
        char path[32], ip[32];
        int h = i % 4;
        if (left[h] > 0) {
            left[h]--;
            snprintf(ip, sizeof ip, "198.51.100.%d", h + 1);
            req(&f.src, T0 * US, 500, 200, "web", "a:80", paths[h], ip);
            total++;
        }
        if (i < 40000) {
            snprintf(path, sizeof path, "/once/%d", i);
            snprintf(ip, sizeof ip, "10.%d.%d.%d", i >> 16, (i >> 8) & 255, i & 255);
            req(&f.src, T0 * US, 500, 200, "web", "a:80", path, ip);
            total++;
        }
    }
    tm_aggregator_drain_now(f.agg);
    json_t *doc = parse(tm_stats_json(f.agg, 0));
    CHECK(doc != NULL);
    if (doc) {
        json_t *p = json_object_get(doc, "paths"), *c = json_object_get(doc, "clients");
        CHECK(json_array_size(p) == 5 && json_array_size(c) == 5);
        for (int h = 0; h < 4; h++) {
            json_t *row = json_array_get(p, (size_t)h);
            const char *path = json_string_value(json_object_get(row, "path"));
            long long n = jint(row, "requests"), err = jint(row, "error");
            CHECKF(path && strcmp(path, paths[h]) == 0, "rank %d: %.40s", h, path ? path : "-");
            CHECKF(n - err <= weights[h] && weights[h] <= n, "%s: %lld (error %lld), true %d",
                   paths[h], n, err, weights[h]);
            char ip[32];
            snprintf(ip, sizeof ip, "198.51.100.%d", h + 1);
            row = json_array_get(c, (size_t)h);
            const char *addr = json_string_value(json_object_get(row, "address"));
            CHECKF(addr && strcmp(addr, ip) == 0, "client rank %d: %.40s", h, addr ? addr : "-");
            CHECK(strcmp(json_string_value(json_object_get(row, "country")), "XX") == 0);
        }
        printf("# top paths over %d requests, %d slots: /a counted %lld (true 5000, error "
               "bound %lld)\n", total, 32 * 5, jint(json_array_get(p, 0), "requests"),
               jint(json_array_get(p, 0), "error"));
        json_decref(doc);
    }
    fixture_free(&f);
}

struct table {
    struct tm_server_info info[4];
    size_t n;
};

static size_t table_cb(void *ctx, struct tm_server_info *out, size_t max)
{
    struct table *t = ctx;
    size_t n = t->n < max ? t->n : max;
    memcpy(out, t->info, n * sizeof *out);
    return n;
}

static void test_server_table(void)
{
    struct table tb = { .n = 4 };
    struct { const char *pool, *server; uint8_t state; bool backup; uint32_t weight, inflight; }
        rows[4] = {
            { "web", "10.0.0.1:80", TM_SERVER_UP, false, 2, 1 },
            { "web", "10.0.0.2:80", TM_SERVER_DOWN, true, 1, 0 },
            { "api", "10.0.1.1:80", TM_SERVER_DRAINING, false, 1, 5 },
            { "we\"b\\x", "q:1", TM_SERVER_DISABLED, false, 1, 0 },
        };
    for (int i = 0; i < 4; i++) {
        struct tm_server_info *s = &tb.info[i];
        memset(s, 0, sizeof *s);
        snprintf(s->pool, sizeof s->pool, "%s", rows[i].pool);
        snprintf(s->server, sizeof s->server, "%s", rows[i].server);
        s->state = rows[i].state;
        s->backup = rows[i].backup;
        s->weight = rows[i].weight;
        s->inflight = rows[i].inflight;
    }
    struct tm_gauges gauges;
    atomic_init(&gauges.client_connections, 7);
    atomic_init(&gauges.tunnels, 2);
    atomic_init(&gauges.inflight, 3);
    struct tm_aggregator_config cfg = { .servers = table_cb, .servers_ctx = &tb,
                                        .gauges = &gauges };
    struct fixture f;
    CHECK(fixture_new(&f, NULL, &cfg) != NULL);
    if (!f.agg)
        return;
    for (int i = 0; i < 5; i++)
        req(&f.src, T0 * US, 1000, 200, "web", "10.0.0.1:80", "/", "10.0.0.9");
    req(&f.src, T0 * US, 1000, 200, "web", "10.0.0.99:80", "/", "10.0.0.9");   /* not listed */
    tm_aggregator_drain_now(f.agg);
    uint64_t seq1 = tm_aggregator_seq(f.agg);

    json_t *doc = parse(tm_servers_json(f.agg));
    CHECK(doc != NULL);
    if (doc) {
        json_t *pools = json_object_get(doc, "pools");
        CHECK(json_array_size(pools) == 3);
        const char *first = json_string_value(json_object_get(json_array_get(pools, 0), "name"));
        const char *second = json_string_value(json_object_get(json_array_get(pools, 1), "name"));
        CHECK(first && strcmp(first, "web") == 0 && second && strcmp(second, "api") == 0);
        json_t *web = json_object_get(json_array_get(pools, 0), "servers");
        CHECK(json_array_size(web) == 3);
        const char *order[3] = { "10.0.0.1:80", "10.0.0.2:80", "10.0.0.99:80" };
        for (size_t i = 0; i < 3; i++) {
            const char *a = json_string_value(json_object_get(json_array_get(web, i), "address"));
            CHECKF(a && strcmp(a, order[i]) == 0, "server %zu: %.40s", i, a ? a : "-");
        }
        json_t *s = server_of(doc, "web", "10.0.0.1:80");
        CHECK(s && strcmp(json_string_value(json_object_get(s, "state")), "up") == 0);
        CHECK(s && json_is_true(json_object_get(s, "up")));
        CHECK(s && jint(s, "weight") == 2 && jint(s, "inflight") == 1 && jint(s, "requests") == 5);
        s = server_of(doc, "web", "10.0.0.2:80");
        CHECK(s && strcmp(json_string_value(json_object_get(s, "state")), "down") == 0);
        CHECK(s && json_is_true(json_object_get(s, "backup")) && jint(s, "requests") == 0);
        s = server_of(doc, "web", "10.0.0.99:80");
        CHECK(s && strcmp(json_string_value(json_object_get(s, "state")), "unknown") == 0);
        CHECK(s && json_is_false(json_object_get(s, "listed")) && jint(s, "requests") == 1);
        s = server_of(doc, "api", "10.0.1.1:80");
        CHECK(s && strcmp(json_string_value(json_object_get(s, "state")), "draining") == 0);
        CHECK(s && jint(s, "inflight") == 5);
        json_decref(doc);
    }

    doc = parse(tm_stats_json(f.agg, 0));
    CHECK(doc && jint(doc, "totals.client_connections") == 7);
    CHECK(doc && jint(doc, "totals.tunnels") == 2 && jint(doc, "totals.requests_inflight") == 3);
    json_decref(doc);

    char *prom = tm_prometheus(f.agg);
    CHECK(prom != NULL);
    if (prom) {
        CHECK(prom_value(prom, "switchboard_server_up{pool=\"web\",server=\"10.0.0.1:80\"}") == 1);
        CHECK(prom_value(prom, "switchboard_server_up{pool=\"web\",server=\"10.0.0.2:80\"}") == 0);
        CHECK(prom_value(prom, "switchboard_server_up{pool=\"api\",server=\"10.0.1.1:80\"}") == 0);
        CHECK(prom_value(prom, "switchboard_server_inflight{pool=\"api\",server=\"10.0.1.1:80\"}")
              == 5);
        /* Label values escaped: a quote and a backslash in the pool name. */
        CHECK(prom_value(prom, "switchboard_server_up{pool=\"we\\\"b\\\\x\",server=\"q:1\"}") == 0);
        CHECK(prom_value(prom, "switchboard_client_connections") == 7);
        CHECK(prom_value(prom, "switchboard_tunnels") == 2);
        CHECK(prom_value(prom, "switchboard_requests_inflight") == 3);
        int samples;
        CHECK(prom_check(prom, &samples) == 0);
        free(prom);
    }

    /* Nothing changed: same seq. A state change: a new one. */
    tm_aggregator_drain_now(f.agg);
    CHECK(tm_aggregator_seq(f.agg) == seq1);
    tb.info[1].state = TM_SERVER_UP;
    tm_aggregator_drain_now(f.agg);
    CHECK(tm_aggregator_seq(f.agg) > seq1);
    doc = parse(tm_servers_json(f.agg));
    json_t *s = doc ? server_of(doc, "web", "10.0.0.2:80") : NULL;
    CHECK(s && strcmp(json_string_value(json_object_get(s, "state")), "up") == 0);
    json_decref(doc);
    atomic_store(&gauges.tunnels, 3);
    uint64_t seq2 = tm_aggregator_seq(f.agg);
    tm_aggregator_drain_now(f.agg);
    CHECK(tm_aggregator_seq(f.agg) > seq2);
    fixture_free(&f);
}

/* More distinct (pool, server) pairs than TM_SERVERS_MAX: the last entry
 * takes the rest, and the per-server counts still add up. */
static void test_server_overflow(void)
{
    struct fixture f;
    CHECK(fixture_new(&f, NULL, NULL) != NULL);
    if (!f.agg)
        return;
    enum { PAIRS = TM_SERVERS_MAX + 76 };
    for (int i = 0; i < PAIRS; i++) {
        char server[32];
        snprintf(server, sizeof server, "10.9.%d.%d:80", i / 256, i % 256);
        req(&f.src, T0 * US, 100, 200, i % 2 ? "odd" : "even", server, "/", "10.0.0.1");
    }
    /* Garbage times must not break anything. */
    struct tm_record *r = req(&f.src, T0 * US, 100, 200, "even", "10.9.0.0:80", "/", "10.0.0.1");
    r->time_us = INT64_MAX - 5;
    r->duration_us = UINT64_MAX;
    tm_aggregator_drain_now(f.agg);
    json_t *doc = parse(tm_servers_json(f.agg));
    CHECK(doc != NULL);
    if (doc) {
        long long sum = 0, servers = 0;
        size_t i, j;
        json_t *p, *s;
        json_array_foreach(json_object_get(doc, "pools"), i, p) {
            json_array_foreach(json_object_get(p, "servers"), j, s) {
                sum += jint(s, "requests");
                servers++;
            }
        }
        CHECK(sum == PAIRS + 1);
        CHECK(servers == TM_SERVERS_MAX);
        json_t *other = server_of(doc, "(other)", "(other)");
        CHECKF(other && jint(other, "requests") == PAIRS - (TM_SERVERS_MAX - 1),
               "(other): %lld", other ? jint(other, "requests") : -1);
        json_decref(doc);
    }
    char *prom = tm_prometheus(f.agg);
    int samples = 0;
    CHECK(prom && prom_check(prom, &samples) == 0 && samples > TM_SERVERS_MAX);
    free(prom);
    fixture_free(&f);
}

static void test_tunnels_and_bytes(void)
{
    struct fixture f;
    CHECK(fixture_new(&f, NULL, NULL) != NULL);
    if (!f.agg)
        return;
    struct tm_record *open = req(&f.src, T0 * US, 2000, 101, "ws", "b:80", "/chat", "10.0.0.5");
    open->kind = TM_TUNNEL_OPEN;
    open->bytes_in = 150;
    open->bytes_out = 130;
    /* The close reports the whole exchange, handshake included. */
    struct tm_record *close = req(&f.src, T0 * US, 60 * US, 101, "ws", "b:80", "/chat",
                                  "10.0.0.5");
    close->kind = TM_TUNNEL_CLOSE;
    close->bytes_in = 5150;
    close->bytes_out = 9130;
    req(&f.src, T0 * US, 1000, 200, "ws", "b:80", "/", "10.0.0.5");
    tm_aggregator_drain_now(f.agg);
    json_t *doc = parse(tm_stats_json(f.agg, 0));
    CHECK(doc != NULL);
    if (doc) {
        CHECK(jint(doc, "totals.requests") == 2);
        CHECK(jint(doc, "totals.tunnels_opened") == 1 && jint(doc, "totals.tunnels_closed") == 1);
        CHECK(jint(doc, "totals.bytes_received") == 5150 + 100);
        CHECK(jint(doc, "totals.bytes_sent") == 9130 + 1000);
        CHECK(jint(doc, "status.codes.101") == 1);
        CHECK(jint(doc, "latency.total.count") == 2);     /* the close is no request */
        CHECK(series_at(doc, "bytes_sent", T0) == 9130 + 1000);
        json_t *recent = json_object_get(doc, "recent");
        CHECK(json_array_size(recent) == 2);
        CHECK(json_is_true(json_object_get(json_array_get(recent, 0), "tunnel")));
        json_decref(doc);
    }
    char *prom = tm_prometheus(f.agg);
    CHECK(prom && prom_value(prom, "switchboard_tunnels_opened_total") == 1);
    CHECK(prom && prom_value(prom, "switchboard_bytes_sent_total") == 9130 + 1000);
    free(prom);
    fixture_free(&f);
}

static void test_json_document(void)
{
    struct tm_aggregator_config cfg = { .proxy_lat = 48.8566, .proxy_lon = 2.3522,
                                        .proxy_has_location = true, .recent_max = 8 };
    struct fixture f;
    CHECK(fixture_new(&f, NULL, &cfg) != NULL);
    if (!f.agg)
        return;
    f.src.dropped = 17;
    /* Not UTF-8: still a string, with '?' for the stray byte. */
    req(&f.src, T0 * US - 5 * US, 1000, 200, "web", "a:80", "/caf\xe9", "10.0.0.1");
    for (int i = 0; i < 12; i++) {
        char path[32];
        snprintf(path, sizeof path, "/item/%d", i);
        struct tm_record *r = req(&f.src, T0 * US + i, 1000 + (uint64_t)i, 200, "web",
                                  "a:80", path, i % 2 ? "2001:db8::1" : "203.0.113.9");
        r->method = 3;                      /* HTTP_POST */
    }
    f.now_us += 2 * US + 250000;
    tm_aggregator_drain_now(f.agg);
    char *text = tm_stats_json(f.agg, TM_JSON_PRETTY);
    CHECK(text && strchr(text, '\n') != NULL);
    json_t *doc = parse(text);
    CHECK(doc != NULL);
    if (!doc) {
        fixture_free(&f);
        return;
    }
    static const char *const keys[] = {
        "seq", "full", "now_ms", "uptime_s", "window_s", "window_start", "proxy", "totals",
        "latency", "status", "series", "pools", "countries", "cities", "paths", "clients",
        "recent", "geo",
    };
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        CHECKF(json_object_get(doc, keys[i]) != NULL, "missing %s", keys[i]);
    CHECK(json_is_true(json_object_get(doc, "full")));
    CHECK(fabs(jnum(doc, "proxy.lat") - 48.8566) < 1e-9 && fabs(jnum(doc, "proxy.lon") - 2.3522) < 1e-9);
    CHECK(fabs(jnum(doc, "uptime_s") - 2.25) < 1e-6);
    CHECK(jint(doc, "now_ms") == (T0 * US + 2750000) / 1000);
    CHECK(jint(doc, "totals.telemetry_dropped") == 17);
    CHECK(fabs(jnum(doc, "totals.start_time") - (double)T0 - 0.5) < 1e-6);
    /* The X-macro's JSON keys are the ones in the document. */
    CHECK(jget(doc, "totals." "requests") && jget(doc, "totals.bytes_received") &&
          jget(doc, "totals.geo_misses") && jget(doc, "totals.tunnels"));
    static const char *const pcts[] = { "count", "mean_us", "min_us", "max_us", "p50_us",
                                        "p90_us", "p99_us", "p999_us" };
    for (size_t i = 0; i < sizeof pcts / sizeof pcts[0]; i++) {
        char k[64];
        snprintf(k, sizeof k, "latency.window.%s", pcts[i]);
        CHECKF(jget(doc, k) != NULL, "missing %s", k);
    }
    CHECK(jint(doc, "latency.window.min_us") == 1000 && jint(doc, "latency.window.max_us") == 1011);
    static const char *const series[] = { "t", "requests", "bytes_received", "bytes_sent",
                                          "errors", "none", "1xx", "2xx", "3xx", "4xx", "5xx",
                                          "other", "p50_us", "p90_us", "p99_us", "p999_us" };
    for (size_t i = 0; i < sizeof series / sizeof series[0]; i++) {
        json_t *a = json_object_get(jget(doc, "series"), series[i]);
        CHECKF(json_array_size(a) == TM_WINDOW_S, "series.%s has %zu", series[i],
               json_array_size(a));
    }

    /* Recent: the last 8 of 12, oldest first, with every field. */
    json_t *recent = json_object_get(doc, "recent");
    CHECK(json_array_size(recent) == 8);
    json_t *last = json_array_get(recent, 7), *first = json_array_get(recent, 0);
    CHECK(first && strcmp(json_string_value(json_object_get(first, "path")), "/item/4") == 0);
    CHECK(last && strcmp(json_string_value(json_object_get(last, "path")), "/item/11") == 0);
    if (last) {
        CHECK(strcmp(json_string_value(json_object_get(last, "client")), "2001:db8::1") == 0);
        CHECK(strcmp(json_string_value(json_object_get(last, "method")), "POST") == 0);
        CHECK(strcmp(json_string_value(json_object_get(last, "host")), "example.test") == 0);
        CHECK(strcmp(json_string_value(json_object_get(last, "pool")), "web") == 0);
        CHECK(strcmp(json_string_value(json_object_get(last, "server")), "a:80") == 0);
        CHECK(strcmp(json_string_value(json_object_get(last, "country")), "XX") == 0);
        CHECK(jint(last, "status") == 200 && jint(last, "duration_us") == 1011);
        CHECK(jint(last, "time_ms") == (T0 * US + 11 - 1011) / 1000);
        CHECK(json_is_null(json_object_get(last, "lat")));
        CHECK(json_object_get(last, "city") != NULL);
    }
    json_t *bad = jfind(json_object_get(doc, "paths"), "path", "/caf?");
    CHECK(bad && jint(bad, "requests") == 1);
    json_t *even = json_array_get(recent, 0);
    CHECK(even && strcmp(json_string_value(json_object_get(even, "client")), "203.0.113.9") == 0);
    json_decref(doc);
    fixture_free(&f);
}

static void test_prometheus_histogram(void)
{
    struct fixture f;
    CHECK(fixture_new(&f, NULL, NULL) != NULL);
    if (!f.agg)
        return;
    /* Bucket bounds are inclusive: 1000 µs is in le="0.001", 1001 is not. */
    static const uint64_t durs[] = { 10, 999, 1000, 1001, 2500, 2501, 99999, 100000,
                                     9999999, 10000000, 10000001, 3600000000u };
    uint64_t sum = 0;
    for (size_t i = 0; i < sizeof durs / sizeof durs[0]; i++) {
        req(&f.src, T0 * US, durs[i], 200, "web", "a:80", "/", "10.0.0.1");
        sum += durs[i];
    }
    tm_aggregator_drain_now(f.agg);
    char *prom = tm_prometheus(f.agg);
    CHECK(prom != NULL);
    if (!prom) {
        fixture_free(&f);
        return;
    }
    struct { const char *le; double n; } want[] = {
        { "0.001", 3 }, { "0.0025", 5 }, { "0.005", 6 }, { "0.1", 8 }, { "5", 8 },
        { "10", 10 }, { "+Inf", 12 },
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        char series[128];
        snprintf(series, sizeof series,
                 "switchboard_request_duration_seconds_bucket{pool=\"web\",le=\"%s\"}", want[i].le);
        CHECKF(prom_value(prom, series) == want[i].n, "%s = %g", series, prom_value(prom, series));
    }
    CHECK(prom_value(prom, "switchboard_request_duration_seconds_count{pool=\"web\"}") == 12);
    double s = prom_value(prom, "switchboard_request_duration_seconds_sum{pool=\"web\"}");
    CHECK(fabs(s - (double)sum / 1e6) < 1e-6);
    /* Buckets never decrease. */
    double prev = -1;
    bool mono = true;
    for (const char *p = strstr(prom, "_bucket{pool=\"web\""); p; p = strstr(p + 1, "_bucket{pool=\"web\"")) {
        const char *sp = strchr(p, ' ');
        double v = strtod(sp + 1, NULL);
        mono &= v >= prev;
        prev = v;
    }
    CHECK(mono);
    int samples;
    CHECK(prom_check(prom, &samples) == 0);
    printf("# prometheus exposition: %zu bytes, %d samples for one pool/server\n",
           strlen(prom), samples);
    free(prom);
    fixture_free(&f);
}

static void test_delta(void)
{
    struct fixture f;
    CHECK(fixture_new(&f, NULL, NULL) != NULL);
    if (!f.agg)
        return;
    for (int i = 0; i < 5; i++)
        req(&f.src, (T0 - 3) * US, 500, 200, "web", "a:80", "/old", "10.0.0.1");
    tm_aggregator_drain_now(f.agg);

    uint64_t seq1 = 0;
    json_t *doc = parse(tm_delta_json(f.agg, 0, &seq1));
    CHECK(doc && json_is_true(json_object_get(doc, "full")));
    CHECK(seq1 == tm_aggregator_seq(f.agg) && jint(doc, "seq") == (long long)seq1);
    CHECK(doc && json_array_size(jget(doc, "series.t")) == TM_WINDOW_S);
    json_decref(doc);

    /* Nothing new: an empty delta. */
    uint64_t seq = 0;
    doc = parse(tm_delta_json(f.agg, seq1, &seq));
    CHECK(seq == seq1);
    CHECK(doc && json_is_false(json_object_get(doc, "full")));
    CHECK(doc && json_array_size(jget(doc, "series.t")) == 0);
    CHECK(doc && json_array_size(json_object_get(doc, "recent")) == 0);
    CHECK(doc && !json_object_get(doc, "paths") && !json_object_get(doc, "countries") &&
          !json_object_get(doc, "status"));
    CHECK(doc && jint(doc, "totals.requests") == 5);       /* totals always come */
    json_decref(doc);

    /* Three new requests in T0, one late one in T0-3. */
    for (int i = 0; i < 3; i++)
        req(&f.src, T0 * US, 500, 404, "web", "a:80", "/new", "10.0.0.1");
    req(&f.src, (T0 - 3) * US, 500, 200, "web", "a:80", "/old", "10.0.0.1");
    tm_aggregator_drain_now(f.agg);
    uint64_t seq2;
    doc = parse(tm_delta_json(f.agg, seq1, &seq2));
    CHECK(seq2 > seq1);
    CHECK(doc && json_array_size(jget(doc, "series.t")) == 2);
    CHECK(doc && series_at(doc, "requests", T0) == 3 && series_at(doc, "requests", T0 - 3) == 6);
    CHECK(doc && json_array_size(json_object_get(doc, "recent")) == 4);
    CHECK(doc && json_array_size(json_object_get(doc, "paths")) == 2);
    CHECK(doc && jint(doc, "status.codes.404") == 3);
    CHECK(doc && json_array_size(json_object_get(doc, "countries")) == 1);
    json_decref(doc);

    /* A second later, one more: only that second and that request. */
    f.now_us += US;
    req(&f.src, (T0 + 1) * US, 500, 200, "web", "a:80", "/new", "10.0.0.1");
    tm_aggregator_drain_now(f.agg);
    uint64_t seq3;
    doc = parse(tm_delta_json(f.agg, seq2, &seq3));
    CHECK(seq3 > seq2);
    CHECK(doc && json_array_size(jget(doc, "series.t")) == 1 &&
          series_at(doc, "requests", T0 + 1) == 1);
    CHECK(doc && json_array_size(json_object_get(doc, "recent")) == 1);
    CHECK(doc && jint(doc, "window_start") == T0 + 1 - TM_WINDOW_S + 1);
    json_decref(doc);

    /* A seq the aggregator never issued gives the whole model. */
    doc = parse(tm_delta_json(f.agg, seq3 + 100, NULL));
    CHECK(doc && json_is_true(json_object_get(doc, "full")));
    CHECK(doc && json_array_size(json_object_get(doc, "recent")) == 10);
    json_decref(doc);
    fixture_free(&f);
}

static atomic_int updates;

static void on_update(void *ctx)
{
    atomic_fetch_add(&updates, 1);
}

struct producer_arg {
    struct tm_ring *ring;
    struct tm_record rec;
    int n;
    long long refused;          /* each one is a drop the ring counts */
};

static void *producer(void *arg)
{
    struct producer_arg *pa = arg;
    for (int i = 0; i < pa->n; i++)
        while (!tm_ring_push(pa->ring, &pa->rec)) {
            pa->refused++;
            sched_yield();
        }
    return NULL;
}

/* The real pipeline: rings, the ring source, the aggregator thread. */
static void test_thread_with_rings(void)
{
    struct tm_ring *rings[2] = { tm_ring_new(4096), tm_ring_new(64) };
    CHECK(rings[0] && rings[1]);
    struct tm_source *src = rings[0] && rings[1] ? tm_source_rings(rings, 2) : NULL;
    CHECK(src != NULL);
    if (!src) {
        tm_ring_free(rings[0]);
        tm_ring_free(rings[1]);
        return;
    }
    struct tm_aggregator_config cfg = { .source = src, .tick_ms = 5,
                                        .on_update = on_update };
    struct tm_aggregator *agg = tm_aggregator_new(&cfg);
    CHECK(agg != NULL);
    if (!agg) {
        src->destroy(src);
        tm_ring_free(rings[0]);
        tm_ring_free(rings[1]);
        return;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t now = (int64_t)ts.tv_sec * US + ts.tv_nsec / 1000;
    struct tm_record r;
    memset(&r, 0, sizeof r);
    r.time_us = now;
    r.duration_us = 700;
    r.status = 200;
    r.family = 4;
    snprintf(r.pool, sizeof r.pool, "web");
    /* 100 into a ring of 64 before anyone reads: 36 dropped. */
    int pushed = 0;
    for (int i = 0; i < 100; i++)
        pushed += tm_ring_push(rings[1], &r);
    CHECK(pushed == 64);
    CHECK(tm_aggregator_start(agg) == 0);
    /* A worker pushes while the aggregator applies and we read. */
    struct producer_arg pa = { rings[0], r, 20000, 0 };
    pthread_t worker;
    CHECK(pthread_create(&worker, NULL, producer, &pa) == 0);
    pushed += pa.n;
    /* Every reader, while the aggregator thread applies. */
    long long seen = 0;
    uint64_t seq = 0;
    for (int wait = 0; wait < 500 && seen != pushed; wait++) {
        json_t *doc = parse(tm_stats_json(agg, 0));
        seen = doc ? jint(doc, "totals.requests") : -1;
        json_decref(doc);
        free(tm_prometheus(agg));
        free(tm_servers_json(agg));
        free(tm_delta_json(agg, seq, &seq));
        if (seen != pushed)
            nanosleep(&(struct timespec){ 0, 10000000 }, NULL);
    }
    pthread_join(worker, NULL);
    CHECK(seen == pushed);
    CHECK(atomic_load(&updates) >= 1);
    tm_aggregator_stop(agg);
    tm_aggregator_stop(agg);                /* idempotent */
    json_t *doc = parse(tm_stats_json(agg, 0));
    CHECK(doc && jint(doc, "totals.telemetry_dropped") == 36 + pa.refused);
    json_decref(doc);
    /* Records pushed while stopped are there for a later drain. */
    tm_ring_push(rings[0], &r);
    CHECK(tm_aggregator_drain_now(agg) == 1);
    tm_aggregator_free(agg);
    src->destroy(src);
    tm_ring_free(rings[0]);
    tm_ring_free(rings[1]);
}

/* Records for the throughput run: 20,000 client addresses (public v4 when
 * the DB is on, a few private), 1,000 paths, 8 servers, varied statuses. */
static void gen_record(struct tm_record *r, uint64_t i)
{
    uint64_t x = i * 0x9e3779b97f4a7c15u;
    x ^= x >> 29;
    memset(r, 0, offsetof(struct tm_record, host));
    r->time_us = T0 * US + (int64_t)(i % 1000000);
    r->duration_us = 100 + (x % 50000);
    r->bytes_in = 200;
    r->bytes_out = 1000 + (x & 4095);
    uint32_t a = (uint32_t)(x % 20000) * 2654435761u;
    r->addr[0] = (uint8_t)(1 + (a >> 24) % 222);
    r->addr[1] = (uint8_t)(a >> 16);
    r->addr[2] = (uint8_t)(a >> 8);
    r->addr[3] = (uint8_t)a;
    r->family = 4;
    r->method = 1;
    r->status = (x % 100) < 90 ? 200 : (x % 100) < 97 ? 404 : 502;
    snprintf(r->host, sizeof r->host, "example.test");
    snprintf(r->path, sizeof r->path, "/p/%" PRIu64, (x >> 8) % 1000);
    snprintf(r->pool, sizeof r->pool, "pool%" PRIu64, (x >> 20) % 2);
    snprintf(r->server, sizeof r->server, "10.0.0.%" PRIu64 ":80", (x >> 24) % 8);
    r->reason[0] = '\0';
}

static void run_throughput(const struct geo_db *db, const char *label)
{
    struct fixture f;
    CHECK(fixture_new(&f, db, NULL) != NULL);
    if (!f.agg)
        return;
    f.src.gen = gen_record;
    f.src.gen_left = THROUGHPUT_N;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    size_t n = tm_aggregator_drain_now(f.agg);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double dt = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    CHECK(n == THROUGHPUT_N);

    clock_gettime(CLOCK_MONOTONIC, &a);
    char *json = tm_stats_json(f.agg, 0);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double dj = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    json_t *doc = parse(json ? strdup(json) : NULL);
    CHECK(doc && jint(doc, "totals.requests") == THROUGHPUT_N);
    clock_gettime(CLOCK_MONOTONIC, &a);
    char *prom = tm_prometheus(f.agg);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double dp = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    int samples = 0;
    CHECK(prom && prom_check(prom, &samples) == 0);
    printf("# aggregator %s: %d records applied in %.3f s = %.2f M records/s "
           "(%zu countries); snapshot JSON %zu bytes in %.2f ms, /metrics %zu bytes in %.2f ms\n",
           label, THROUGHPUT_N, dt, THROUGHPUT_N / dt / 1e6,
           doc ? json_array_size(json_object_get(doc, "countries")) : 0,
           json ? strlen(json) : 0, dj * 1e3, prom ? strlen(prom) : 0, dp * 1e3);
    json_decref(doc);
    free(json);
    free(prom);
    fixture_free(&f);
}

static void test_throughput(void)
{
    run_throughput(NULL, "without geo");
    if (geo)
        run_throughput(geo, "with geo (DB-IP, 20,000 addresses, cache 8192)");
}

static void test_bad_config(void)
{
    CHECK(tm_aggregator_new(NULL) == NULL);
    struct tm_aggregator_config cfg = { 0 };
    CHECK(tm_aggregator_new(&cfg) == NULL);
    tm_aggregator_free(NULL);
    CHECK(strcmp(tm_server_state_name(TM_SERVER_DRAINING), "draining") == 0);
    CHECK(strcmp(tm_server_state_name((enum tm_server_state)77), "unknown") == 0);
}

int main(void)
{
    geo = open_geo();
    printf("# geo database: %s\n", geo ? geo_schema_name(geo) : "none (geo off: country XX)");
    RUN(test_bad_config);
    RUN(test_status_codes_and_classes);
    RUN(test_countries);
    RUN(test_window_rollover);
    RUN(test_top_tables);
    RUN(test_server_table);
    RUN(test_server_overflow);
    RUN(test_tunnels_and_bytes);
    RUN(test_json_document);
    RUN(test_prometheus_histogram);
    RUN(test_delta);
    RUN(test_thread_with_rings);
    RUN(test_throughput);
    if (geo)
        geo_close(geo);
    return check_done();
}
