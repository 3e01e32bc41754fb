/*
 * log.c - the process log (stderr) and the access log.
 *
 * Both write each line with a single write(2): lines from different worker
 * threads never interleave, and no lock is shared between workers. The
 * access log descriptor keeps its number for the life of the process (see
 * open_access_log in proxy.c), so rotation needs no coordination.
 *
 * Access log formats:
 *   combined  the Apache/nginx "combined" line (bytes = body bytes sent,
 *             as %b / $body_bytes_sent), then pool, server, the
 *             request time in seconds and, when the proxy answered itself,
 *             the reason:
 *     127.0.0.1 - - [24/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 12 "-" "curl/7.88.1" pool=web server=127.0.0.1:9001 rt=0.001 reason=-
 *   json      one object per line with the same fields.
 * Untrusted strings are escaped (\xHH in combined, \uXXXX in JSON), so a
 * request cannot forge log lines.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "geo/geo.h"
#include "proxy/proxy-internal.h"

static atomic_int log_level = SB_LOG_INFO;

void sb_log_set_level(enum sb_log_level level)
{
    atomic_store(&log_level, (int)level);
}

static size_t iso_time(char *buf, size_t len)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    size_t n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
    n += (size_t)snprintf(buf + n, len - n, ".%03ldZ", (long)(tv.tv_usec / 1000));
    return n;
}

void sb_log(enum sb_log_level level, const char *fmt, ...)
{
    static const char *const names[] = { "error", "warn", "info", "debug" };
    if ((int)level > atomic_load_explicit(&log_level, memory_order_relaxed))
        return;
    char line[2048];
    size_t n = iso_time(line, sizeof line);
    n += (size_t)snprintf(line + n, sizeof line - n, " [%s] ", names[level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - n, fmt, ap);
    va_end(ap);
    if (m < 0)
        return;
    n += (size_t)m;
    if (n > sizeof line - 2)
        n = sizeof line - 2;
    line[n++] = '\n';
    ssize_t rc = write(STDERR_FILENO, line, n);
    (void)rc;
}

/* ---- access log ---------------------------------------------------------- */

struct line {
    char buf[8192];
    size_t len;
};

static void put(struct line *l, const char *s, size_t n)
{
    if (l->len + n > sizeof l->buf - 1)
        n = sizeof l->buf - 1 - l->len;
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

static void putf(struct line *l, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void putf(struct line *l, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(l->buf + l->len, sizeof l->buf - l->len, fmt, ap);
    va_end(ap);
    if (n > 0)
        l->len += (size_t)n < sizeof l->buf - l->len ? (size_t)n
                                                     : sizeof l->buf - l->len - 1;
}

/* Untrusted bytes, escaped the way nginx does: \xHH for quotes, backslash,
 * control and non-ASCII bytes. */
static void put_escaped(struct line *l, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n && l->len + 4 < sizeof l->buf; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') {
            char e[4] = { '\\', 'x', hex[c >> 4], hex[c & 15] };
            put(l, e, 4);
        } else {
            l->buf[l->len++] = (char)c;
        }
    }
}

/* A JSON string. Request bytes may be invalid UTF-8, so by default every
 * byte outside printable ASCII becomes \u00XX; `utf8` keeps such bytes as
 * they are, for strings known to be UTF-8 (the geolocation database's). */
static void put_json(struct line *l, const char *s, size_t n, bool utf8)
{
    static const char hex[] = "0123456789abcdef";
    put(l, "\"", 1);
    for (size_t i = 0; i < n && l->len + 7 < sizeof l->buf; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char e[2] = { '\\', (char)c };
            put(l, e, 2);
        } else if (c < 0x20 || (!utf8 && c >= 0x7f)) {
            char e[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };
            put(l, e, 6);
        } else {
            l->buf[l->len++] = (char)c;
        }
    }
    put(l, "\"", 1);
}

static void put_json_string(struct line *l, const char *s, size_t n)
{
    put_json(l, s, n, false);
}

static const char *header_or_dash(const struct px_exchange *ex, const char *name,
                                  uint32_t *len)
{
    const char *v = ex->req.n_hdr ? px_head_get(&ex->req, name, len) : NULL;
    if (!v) {
        *len = 1;
        return "-";
    }
    return v;
}

void px_access_log(struct proxy *proxy, const struct px_runtime *rt,
                   const struct px_exchange *ex)
{
    struct line l;
    l.len = 0;
    const char *method = ex->req.n_hdr || ex->req.url_len
        ? http_method_str(ex->req_parser.method) : "-";
    const char *url = ex->req.url_len ? ex->req.buf + ex->req.url_off : "-";
    size_t url_len = ex->req.url_len ? ex->req.url_len : 1;
    const char *pool = ex->pool ? ex->pool->name : "-";
    const char *server = ex->server ? ex->server->addr.text : "-";
    const char *client = ex->client_addr[0] ? ex->client_addr : "-";
    uint64_t dur_us = (px_turn_now_ns(ex->client->worker) - ex->t_start_ns) / 1000u;
    uint32_t ref_len, ua_len;
    const char *ref = header_or_dash(ex, "referer", &ref_len);
    const char *ua = header_or_dash(ex, "user-agent", &ua_len);
    time_t secs = (time_t)(ex->wall_start_us / 1000000);
    struct tm tm;
    gmtime_r(&secs, &tm);

    if (rt->access_log_format == CONF_LOG_JSON) {
        char when[40];
        size_t n = strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(when + n, sizeof when - n, ".%03dZ",
                 (int)(ex->wall_start_us % 1000000 / 1000));
        putf(&l, "{\"time\":\"%s\",\"client\":", when);
        put_json_string(&l, client, strlen(client));
        put(&l, ",\"method\":", 10);
        put_json_string(&l, method, strlen(method));
        put(&l, ",\"path\":", 8);
        put_json_string(&l, url, url_len);
        putf(&l, ",\"protocol\":\"HTTP/%d.%d\",\"status\":%d,"
                 "\"bytes_in\":%" PRIu64 ",\"bytes_out\":%" PRIu64 ","
                 "\"body_bytes_out\":%" PRIu64 ","
                 "\"duration_ms\":%.3f,\"pool\":",
             ex->req_parser.http_major, ex->req_parser.http_minor, ex->status,
             ex->bytes_in, ex->bytes_out, ex->bytes_out - ex->resp_head_bytes,
             (double)dur_us / 1000.0);
        put_json_string(&l, pool, strlen(pool));
        put(&l, ",\"server\":", 10);
        put_json_string(&l, server, strlen(server));
        put(&l, ",\"referer\":", 11);
        put_json_string(&l, ref, ref_len);
        put(&l, ",\"user_agent\":", 14);
        put_json_string(&l, ua, ua_len);
        /* Where the client is: a lookup in this worker's own cache, so
         * the log costs no lock; misses and private addresses give null. */
        struct px_worker *w = ex->client->worker;
        struct geo_result g = { .kind = GEO_DISABLED };
        if (proxy->geo && ex->client_family) {
            if (!w->geo_cache)
                w->geo_cache = geo_cache_new(4096);
            geo_cache_lookup(w->geo_cache, proxy->geo, ex->client_ip,
                             ex->client_family, &g, NULL);
        }
        if (g.kind == GEO_FOUND && g.country[0]) {
            put(&l, ",\"country\":", 11);
            put_json_string(&l, g.country, strlen(g.country));
        } else {
            put(&l, ",\"country\":null", 15);
        }
        if (g.kind == GEO_FOUND && g.city[0]) {
            put(&l, ",\"city\":", 8);
            put_json(&l, g.city, strlen(g.city), true);
        } else {
            put(&l, ",\"city\":null", 12);
        }
        if (g.kind == GEO_FOUND && g.has_location)
            putf(&l, ",\"latitude\":%.4f,\"longitude\":%.4f", g.latitude, g.longitude);
        else
            put(&l, ",\"latitude\":null,\"longitude\":null", 33);
        put(&l, ",\"reason\":", 10);
        if (ex->reason)
            put_json_string(&l, ex->reason, strlen(ex->reason));
        else
            put(&l, "null", 4);
        put(&l, "}", 1);
    } else {
        char when[40];
        strftime(when, sizeof when, "%d/%b/%Y:%H:%M:%S +0000", &tm);
        putf(&l, "%s - - [%s] \"%s ", client, when, method);
        put_escaped(&l, url, url_len);
        /* Like Apache's %b and nginx's $body_bytes_sent: the body only. */
        putf(&l, " HTTP/%d.%d\" %d %" PRIu64 " \"", ex->req_parser.http_major,
             ex->req_parser.http_minor, ex->status, ex->bytes_out - ex->resp_head_bytes);
        put_escaped(&l, ref, ref_len);
        put(&l, "\" \"", 3);
        put_escaped(&l, ua, ua_len);
        putf(&l, "\" pool=%s server=%s rt=%.3f reason=", pool, server,
             (double)dur_us / 1e6);
        if (ex->reason) {
            /* Reasons are ours, but keep the line one token per field. */
            for (const char *r = ex->reason; *r && l.len + 1 < sizeof l.buf; r++)
                l.buf[l.len++] = *r == ' ' ? '_' : *r;
        } else {
            put(&l, "-", 1);
        }
    }
    l.buf[l.len++] = '\n';
    ssize_t rc = write(proxy->access_log_fd, l.buf, l.len);
    (void)rc;
}
