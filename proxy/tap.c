/*
 * tap.c - the telemetry tap: one fixed-size record per finished request and
 * per tunnel open/close, pushed into the worker's own ring.
 *
 * Runs on the worker thread at the end of an exchange. The record is a copy:
 * it holds no pointer into the exchange, which is freed right after. If the
 * ring is full the record is dropped (the ring counts it); the proxy never
 * waits for the aggregator.
 */
#include <string.h>

#include "proxy/proxy-internal.h"

/* Copy at most cap-1 bytes and terminate; `lower` folds ASCII case. */
static void copy_field(char *dst, size_t cap, const char *src, size_t len,
                       bool lower)
{
    if (len > cap - 1)
        len = cap - 1;
    for (size_t i = 0; i < len; i++) {
        char c = src[i];
        dst[i] = (lower && c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
    }
    dst[len] = '\0';
}

static uint64_t elapsed_us(uint64_t from_ns, uint64_t to_ns)
{
    return from_ns && to_ns > from_ns ? (to_ns - from_ns) / 1000u : 0;
}

void px_tap_emit(struct px_worker *w, const struct px_exchange *ex,
                 enum tm_kind kind)
{
    struct tm_record rec;
    memset(&rec, 0, sizeof rec);
    uint64_t now = px_turn_now_ns(w);
    rec.time_us = ex->wall_start_us;
    rec.duration_us = elapsed_us(ex->t_start_ns, now);
    rec.connect_us = elapsed_us(ex->t_connect_start_ns, ex->t_connect_ns);
    rec.ttfb_us = elapsed_us(ex->t_start_ns, ex->t_first_byte_ns);
    rec.bytes_in = ex->bytes_in;
    rec.bytes_out = ex->bytes_out;
    memcpy(rec.addr, ex->client_ip, sizeof rec.addr);
    rec.family = ex->client_family;
    rec.kind = (uint8_t)kind;
    rec.method = (uint8_t)ex->req_parser.method;
    rec.retries = (uint8_t)(ex->retries > 255 ? 255 : ex->retries);
    rec.status = (uint16_t)ex->status;
    rec.worker = (uint16_t)w->id;
    if (ex->req.url_len) {
        const char *url = ex->req.buf + ex->req.url_off;
        const char *q = memchr(url, '?', ex->req.url_len);
        copy_field(rec.path, sizeof rec.path, url,
                   q ? (size_t)(q - url) : ex->req.url_len, false);
    }
    uint32_t host_len;
    const char *host = ex->req.n_hdr ? px_head_get(&ex->req, "host", &host_len) : NULL;
    if (host)
        copy_field(rec.host, sizeof rec.host, host, host_len, true);
    if (ex->pool)
        copy_field(rec.pool, sizeof rec.pool, ex->pool->name,
                   strlen(ex->pool->name), false);
    if (ex->server)
        copy_field(rec.server, sizeof rec.server, ex->server->addr.text,
                   strlen(ex->server->addr.text), false);
    if (ex->reason)
        copy_field(rec.reason, sizeof rec.reason, ex->reason,
                   strlen(ex->reason), false);
    tm_ring_push(w->ring, &rec);
}
