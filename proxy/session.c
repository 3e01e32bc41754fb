/*
 * session.c - one client connection and the exchanges it carries.
 *
 *   client ──► c.in ──parse head──► route ► pool ► server
 *                 │                                   │
 *                 └─body (moved / re-chunked)─► up.out ──► backend
 *   client ◄── c.out ◄──head rewritten, body moved─── up.in ◄── backend
 *
 * A px_client lives as long as its socket and stays small while idle; a
 * px_exchange exists only from the first byte of a request to the end of its
 * answer, and holds everything a request needs (parsers, heads, the backend
 * connection). Pipelined requests wait in c.in until the exchange before them
 * is over, so answers go out in order.
 *
 * Every event (client or backend, read or write) does its I/O and then calls
 * session_step(), which advances the exchange as far as the buffers allow and
 * finally arms exactly the events the new state needs. Back-pressure falls
 * out of that: a side is read only while the output it feeds is below
 * PX_HIGH_WATERMARK.
 *
 * Heads are parsed with http-parser, paused at the end of the head so the
 * proxy frames bodies itself: Content-Length bodies move between evbuffers
 * without a copy (large response bodies through a pipe with splice(2), see
 * fill_pipe); chunked bodies go back through the parser and are framed
 * anew, so the backend never sees framing the proxy did not check. The
 * request line and headers are always written anew, never forwarded raw.
 *
 * Thread: the owning worker only. Functions that may free the client return
 * -1 when they did; callers must stop touching it then.
 */
#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "proxy/proxy-internal.h"

/* Bytes of pipelined input kept while an exchange runs; more waits in the
 * socket. */
#define PX_PIPELINE_MAX (64 * 1024)
/* A Content-Length body with at least this much still to come from the
 * backend is spliced through a pipe (io.c) rather than copied through the
 * evbuffers; a small one has usually arrived with its head anyway. */
#define PX_SPLICE_MIN   (64 * 1024)

static void client_read_cb(evutil_socket_t fd, short what, void *arg);
static void client_write_cb(evutil_socket_t fd, short what, void *arg);
static void upstream_read_cb(evutil_socket_t fd, short what, void *arg);
static void upstream_write_cb(evutil_socket_t fd, short what, void *arg);
static void session_step(struct px_client *c);
static int  exchange_fail(struct px_exchange *ex, int status, const char *reason);
static int  start_backend(struct px_exchange *ex, int exclude);
static int  upstream_failed(struct px_exchange *ex, int status, const char *reason);
static void dequeue(struct px_exchange *ex);

uint64_t px_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static const struct px_runtime *client_rt(const struct px_client *c)
{
    return c->ex ? c->ex->gen->rt : c->worker->gen->rt;
}

/* ---- writing heads -------------------------------------------------------
 *
 * Heads are written into space sized beforehand from the parsed head (its
 * buffer holds every name and value), so each piece is a memcpy and a head
 * reaches its evbuffer in one piece. printf-style formatting used to cost
 * more than parsing the head.
 */

static void put(char **o, const void *s, size_t n)
{
    memcpy(*o, s, n);
    *o += n;
}

#define PUT_LIT(o, lit) put(o, lit, sizeof lit - 1)

static void put_str(char **o, const char *s)
{
    put(o, s, strlen(s));
}

static void put_u64(char **o, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[sizeof tmp - ++n] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    put(o, tmp + sizeof tmp - n, n);
}

static void put_hex(char **o, uint64_t v)
{
    static const char digits[] = "0123456789abcdef";
    char tmp[16];
    size_t n = 0;
    do {
        tmp[sizeof tmp - ++n] = digits[v & 15];
        v >>= 4;
    } while (v);
    put(o, tmp + sizeof tmp - n, n);
}

/* Bytes of `h` a rewritten head may copy: each value at most twice (a
 * header, and X-Forwarded-Host or the folded X-Forwarded-For), names once,
 * ": " and CRLF per header. What the proxy adds itself fits in 512. */
static size_t head_bound(const struct px_head *h)
{
    return 2 * (size_t)h->len + 6 * (size_t)h->n_hdr + 512;
}

/* Chunk-size line for `len` bytes of data. */
static void add_chunk_size(struct evbuffer *out, size_t len)
{
    char line[24], *o = line;
    put_hex(&o, len);
    PUT_LIT(&o, "\r\n");
    evbuffer_add(out, line, (size_t)(o - line));
}

/* ---- parser callbacks -------------------------------------------------- */

static struct px_head *head_of(http_parser *p)
{
    struct px_exchange *ex = p->data;
    return p == &ex->req_parser ? &ex->req : &ex->resp;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    return px_head_add_url(head_of(p), at, len) < 0 ? -1 : 0;
}

static int on_status(http_parser *p, const char *at, size_t len)
{
    return px_head_add_reason(head_of(p), at, len) < 0 ? -1 : 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    return px_head_add_field(head_of(p), at, len) < 0 ? -1 : 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    return px_head_add_value(head_of(p), at, len) < 0 ? -1 : 0;
}

static int on_headers_complete(http_parser *p)
{
    px_head_classify(head_of(p));   /* a header without a value callback */
    http_parser_pause(p, 1);
    return 0;
}

/* Chunked body data: framed anew toward the peer (or sent bare to an
 * HTTP/1.0 client, which cannot take chunked). */
static int on_body(http_parser *p, const char *at, size_t len)
{
    struct px_exchange *ex = p->data;
    struct evbuffer *out;
    bool frame;
    if (p == &ex->req_parser) {
        out = ex->up->conn.out;
        frame = true;
        ex->bytes_in += len;
    } else {
        out = ex->client->conn.out;
        frame = ex->resp_chunked_out;
    }
    if (frame)
        add_chunk_size(out, len);
    evbuffer_add(out, at, len);
    if (frame)
        evbuffer_add(out, "\r\n", 2);
    return 0;
}

static int on_message_complete(http_parser *p)
{
    struct px_exchange *ex = p->data;
    if (p == &ex->req_parser) {
        evbuffer_add(ex->up->conn.out, "0\r\n\r\n", 5);
        ex->req_done = true;
    } else {
        if (ex->resp_chunked_out)
            evbuffer_add(ex->client->conn.out, "0\r\n\r\n", 5);
        ex->resp_done = true;
    }
    http_parser_pause(p, 1);
    return 0;
}

const http_parser_settings px_request_settings = {
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

const http_parser_settings px_response_settings = {
    .on_status = on_status,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

enum feed_result { FEED_MORE, FEED_PAUSED, FEED_ERROR };

/*
 * Run `p` over the bytes of `in`, draining what it consumed. Stops when the
 * parser pauses (end of a head, end of a message), when `in` is empty, or on
 * an error. At the end of a head http-parser leaves the head's final LF in
 * `in`: resumed, it wants that byte again (chunked bodies); the other paths
 * drop it with drop_head_lf().
 */
static enum feed_result feed(http_parser *p, const http_parser_settings *s,
                             struct evbuffer *in, size_t *consumed_out)
{
    struct px_wire *w = &head_of(p)->wire;
    size_t consumed = 0;
    enum feed_result result = FEED_MORE;
    while (evbuffer_get_length(in) > 0 && result == FEED_MORE) {
        struct evbuffer_iovec v[8];
        int n = evbuffer_peek(in, -1, NULL, v, 8);
        if (n > 8)
            n = 8;
        size_t used = 0;
        for (int i = 0; i < n; i++) {
            /* http-parser is lenient (bare LF, obs-fold, chunk framing): the
             * strict scanner sees the raw bytes first, and the parser gets
             * only what passed. Never len 0: that means EOF to the parser. */
            size_t ok = px_wire_scan(w, v[i].iov_base, v[i].iov_len,
                                     p->type == HTTP_RESPONSE);
            size_t k = ok ? http_parser_execute(p, s, v[i].iov_base, ok) : 0;
            used += k;
            enum http_errno e = HTTP_PARSER_ERRNO(p);
            if (e == HPE_PAUSED) {
                http_parser_pause(p, 0);
                /* Both must see the head (parser: up to its last LF) or the
                 * message (through its last LF) end at the same byte. */
                int end = px_wire_end(w);
                if (!((end == 1 && ok - k == 1) || (end == 2 && ok == k))) {
                    w->error = "framing disagreement";
                    result = FEED_ERROR;
                    break;
                }
                result = FEED_PAUSED;
                break;
            }
            if (e != HPE_OK) {
                result = FEED_ERROR;
                break;
            }
            if (w->error || ok < v[i].iov_len || px_wire_end(w)) {
                if (!w->error)
                    w->error = "framing disagreement";
                result = FEED_ERROR;
                break;
            }
        }
        evbuffer_drain(in, used);
        consumed += used;
    }
    if (consumed_out)
        *consumed_out = consumed;
    return result;
}

/* Why feed() failed: the strict scanner's reason, else http-parser's. */
static const char *feed_error(http_parser *p)
{
    const struct px_wire *w = &head_of(p)->wire;
    return w->error ? w->error : http_errno_description(HTTP_PARSER_ERRNO(p));
}

/* The head ended and its parser will not be resumed: take the LF it left. */
static void drop_head_lf(struct evbuffer *in)
{
    evbuffer_drain(in, 1);
}

/* ---- small helpers ----------------------------------------------------- */


/* The client address as bytes, for telemetry; v4-mapped v6 becomes v4. */
static void set_client_ip(struct px_exchange *ex, const struct sockaddr *sa)
{
    static const uint8_t mapped[12] = { 0,0,0,0,0,0,0,0,0,0,0xff,0xff };
    memset(ex->client_ip, 0, sizeof ex->client_ip);
    if (sa->sa_family == AF_INET) {
        memcpy(ex->client_ip, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        ex->client_family = 4;
        return;
    }
    const uint8_t *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
    if (memcmp(a, mapped, 12) == 0) {
        memcpy(ex->client_ip, a + 12, 4);
        ex->client_family = 4;
    } else {
        memcpy(ex->client_ip, a, 16);
        ex->client_family = 6;
    }
}

/* The client's address (see xff.c), as text and as bytes. */
static void resolve_client_addr(struct px_exchange *ex)
{
    struct sockaddr_storage ss;
    px_client_address(ex->gen->rt, &ex->client->peer.sa, &ex->req, &ss);
    px_sockaddr_text((struct sockaddr *)&ss, ex->client_addr, sizeof ex->client_addr);
    set_client_ip(ex, (struct sockaddr *)&ss);
}


/* Host of the request, lower case, without port; into `out`. */
static size_t request_host(const struct px_exchange *ex, char *out, size_t cap)
{
    uint32_t len;
    const char *h = px_head_find(&ex->req, PX_HDR_HOST, &len);
    if (!h)
        return 0;
    size_t n = 0;
    if (len > 0 && h[0] == '[') {
        const char *close = memchr(h, ']', len);
        if (close)
            len = (uint32_t)(close - h + 1);
    } else {
        const char *colon = memchr(h, ':', len);
        if (colon)
            len = (uint32_t)(colon - h);
    }
    for (uint32_t i = 0; i < len && n + 1 < cap; i++) {
        char ch = h[i];
        out[n++] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
    }
    out[n] = '\0';
    return n;
}

static const char *cookie_value(const char *v, size_t len, const char *name,
                                size_t name_len, size_t *out_len)
{
    size_t i = 0;
    while (i < len) {
        while (i < len && (v[i] == ' ' || v[i] == ';'))
            i++;
        size_t start = i;
        while (i < len && v[i] != ';')
            i++;
        if (i - start > name_len && v[start + name_len] == '=' &&
            memcmp(v + start, name, name_len) == 0) {
            *out_len = i - start - name_len - 1;
            return v + start + name_len + 1;
        }
    }
    return NULL;
}

/* ---- events ------------------------------------------------------------ */

/*
 * A client holds its two evbuffers only while it has bytes to move: an idle
 * keep-alive connection gives them back (release_buffers) and takes them
 * again with its next bytes, from its worker's spares, so that thousands of
 * idle connections cost their px_client and little else (as HAProxy frees
 * an idle connection's buffers).
 */
static struct evbuffer *buffer_get(struct px_worker *w)
{
    if (w->n_spare_bufs)
        return w->spare_bufs[--w->n_spare_bufs];
    return evbuffer_new();
}

static void buffer_put(struct px_worker *w, struct evbuffer *b)
{
    if (w->n_spare_bufs < PX_SPARE_BUFS_MAX && evbuffer_get_length(b) == 0)
        w->spare_bufs[w->n_spare_bufs++] = b;
    else
        evbuffer_free(b);
}

void px_spare_bufs_free(struct px_worker *w)
{
    while (w->n_spare_bufs)
        evbuffer_free(w->spare_bufs[--w->n_spare_bufs]);
}

static int client_buffers(struct px_client *c)
{
    if (!c->conn.in)
        c->conn.in = buffer_get(c->worker);
    if (!c->conn.out)
        c->conn.out = buffer_get(c->worker);
    return c->conn.in && c->conn.out ? 0 : -1;
}

/* Both buffers are empty and nothing is queued for the socket. */
static void release_buffers(struct px_client *c)
{
    if (c->conn.in) {
        buffer_put(c->worker, c->conn.in);
        c->conn.in = NULL;
    }
    if (c->conn.out) {
        buffer_put(c->worker, c->conn.out);
        c->conn.out = NULL;
    }
}

static bool client_drained(const struct px_client *c)
{
    return c->conn.in && evbuffer_get_length(c->conn.in) == 0 &&
           evbuffer_get_length(c->conn.out) == 0 && !c->conn.flush_slot;
}

static void client_free(struct px_client *c)
{
    struct px_worker *w = c->worker;
    px_flushq_remove(&w->flushq, &c->conn);
    if (client_drained(c))
        release_buffers(c);
    px_conn_close(&c->conn);
    TAILQ_REMOVE(&w->clients, c, link);
    w->n_clients--;
    atomic_fetch_sub_explicit(&w->proxy->gauges.client_connections, 1,
                              memory_order_relaxed);
    if (c->counted)
        atomic_fetch_sub_explicit(&w->proxy->connections, 1, memory_order_relaxed);
    free(c);
    px_worker_client_closed(w);
}

/* Finished exchanges wait in a short per-worker list for the next request,
 * with their head buffers: a request then allocates neither its
 * exchange nor those buffers. Bounded in count and in what each keeps. */
#define PX_SPARES_MAX       16
#define PX_SPARE_BUF_MAX    8192

static void exchange_destroy(struct px_exchange *ex)
{
    px_head_free(&ex->req);
    px_head_free(&ex->resp);
    free(ex->req_out);
    free(ex);
}

static void exchange_free(struct px_exchange *ex)
{
    struct px_worker *w = ex->client->worker;
    if (ex->queued)
        dequeue(ex);
    if (ex->watch_pending) {
        TAILQ_REMOVE(&w->unwatched, ex, watch_link);
        ex->watch_pending = false;
    }
    if (ex->pipe) {
        px_pipe_put(w, ex->pipe);       /* closed if bytes are left in it */
        ex->pipe = NULL;
    }
    atomic_fetch_sub_explicit(&w->proxy->gauges.inflight, 1, memory_order_relaxed);
    if (w->n_spares >= PX_SPARES_MAX) {
        exchange_destroy(ex);
        return;
    }
    if (ex->req.cap > PX_SPARE_BUF_MAX || ex->req.hdr != ex->req.hdr_inline)
        px_head_free(&ex->req);
    if (ex->resp.cap > PX_SPARE_BUF_MAX || ex->resp.hdr != ex->resp.hdr_inline)
        px_head_free(&ex->resp);
    if (ex->req_out_cap > PX_SPARE_BUF_MAX) {
        free(ex->req_out);
        ex->req_out = NULL;
        ex->req_out_cap = 0;
    }
    ex->next_spare = w->spares;
    w->spares = ex;
    w->n_spares++;
}

void px_exchange_spares_free(struct px_worker *w)
{
    struct px_exchange *ex;
    while ((ex = w->spares)) {
        w->spares = ex->next_spare;
        exchange_destroy(ex);
    }
    w->n_spares = 0;
}

/* Drop the backend side of an exchange. */
static void detach_upstream(struct px_exchange *ex, bool reusable)
{
    struct px_upstream *up = ex->up;
    if (!up)
        return;
    atomic_fetch_sub_explicit(&ex->pool->lb_servers[ex->server->index].inflight,
                              1, memory_order_relaxed);
    ex->up = NULL;
    px_upstream_release(up, ex->gen, reusable);
    /* A slot came free: let waiting requests look, after this event. */
    if (atomic_load_explicit(&ex->pool->queued, memory_order_relaxed))
        event_active(&ex->client->worker->queue_ev, EV_TIMEOUT, 0);
}

/* The one place an exchange is reported: access log and telemetry. */
static void exchange_report(struct px_exchange *ex)
{
    struct px_worker *w = ex->client->worker;
    if (ex->gen->rt->access_log_on)
        px_access_log(w->proxy, ex->gen->rt, ex);
    if (w->ring)
        px_tap_emit(w, ex, ex->phase == PX_PHASE_TUNNEL ? TM_TUNNEL_CLOSE : TM_REQUEST);
    if (ex->phase == PX_PHASE_TUNNEL)
        atomic_fetch_sub_explicit(&w->proxy->gauges.tunnels, 1, memory_order_relaxed);
}

/* End an exchange that cannot continue: both sockets close now. */
static void client_abort(struct px_client *c, const char *reason)
{
    struct px_exchange *ex = c->ex;
    if (ex) {
        if (!ex->reason)
            ex->reason = reason;
        detach_upstream(ex, false);
        /* A connection that closes before sending a byte is not a request. */
        if (ex->phase != PX_PHASE_REQ_HEAD || ex->req.head_bytes > 0)
            exchange_report(ex);
        struct px_gen *gen = ex->gen;
        c->ex = NULL;
        exchange_free(ex);
        px_gen_release(c->worker, gen);
    }
    client_free(c);
}

/* Did the backend's answer leave its connection open? (Framing is known
 * separately: a close-delimited body never leaves it reusable.) */
static bool backend_keeps_alive(const http_parser *p)
{
    if (p->http_major == 1 && p->http_minor >= 1)
        return !(p->flags & F_CONNECTION_CLOSE);
    return (p->flags & F_CONNECTION_KEEP_ALIVE) != 0;
}

/* Finished answering: log, give the backend connection back, and either wait
 * for the next request or close. */
static void exchange_finish(struct px_exchange *ex)
{
    struct px_client *c = ex->client;
    bool reusable = ex->resp_done && ex->req_done &&
                    ex->resp_body != PX_BODY_UNTIL_CLOSE &&
                    backend_keeps_alive(&ex->resp_parser) &&
                    ex->phase != PX_PHASE_TUNNEL;
    if (!ex->req_done)
        c->linger = true;       /* the client may still be sending its body */
    detach_upstream(ex, reusable);
    exchange_report(ex);
    bool keep = ex->client_keepalive && ex->req_done && !c->worker->draining;
    struct px_gen *gen = ex->gen;
    c->ex = NULL;
    exchange_free(ex);
    px_gen_release(c->worker, gen);
    c->requests++;
    c->state = keep ? PX_CLIENT_IDLE : PX_CLIENT_CLOSING;
}

static struct px_exchange *exchange_new(struct px_client *c)
{
    struct px_worker *w = c->worker;
    struct px_exchange *ex = w->spares;
    if (ex) {
        w->spares = ex->next_spare;
        w->n_spares--;
        /* Everything before the kept buffers starts at zero. */
        memset(ex, 0, offsetof(struct px_exchange, req_out));
        px_head_reset(&ex->req);
        px_head_reset(&ex->resp);
    } else {
        if (!(ex = malloc(sizeof *ex)))
            return NULL;
        memset(ex, 0, offsetof(struct px_exchange, req_out));
        ex->req_out = NULL;
        ex->req_out_cap = 0;
        px_head_init(&ex->req, 0);
        px_head_init(&ex->resp, 0);
    }
    ex->client = c;
    ex->gen = px_worker_gen(w);
    ex->gen->inflight++;
    atomic_fetch_add_explicit(&w->proxy->gauges.inflight, 1, memory_order_relaxed);
    const struct px_runtime *rt = ex->gen->rt;
    ex->req.limit = rt->limits.max_header_bytes;
    ex->resp.limit = rt->limits.max_header_bytes > 65536
                     ? rt->limits.max_header_bytes : 65536;
    http_parser_init(&ex->req_parser, HTTP_REQUEST);
    ex->req_parser.data = ex;
    http_parser_init(&ex->resp_parser, HTTP_RESPONSE);
    ex->resp_parser.data = ex;
    ex->phase = PX_PHASE_REQ_HEAD;
    ex->t_start_ns = px_turn_now_ns(c->worker);
    /* The peer until the head says otherwise (trusted X-Forwarded-For). */
    px_sockaddr_text(&c->peer.sa, ex->client_addr, sizeof ex->client_addr);
    set_client_ip(ex, &c->peer.sa);
    struct timeval tv;
    event_base_gettimeofday_cached(w->base, &tv);
    ex->wall_start_us = (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
    c->ex = ex;
    c->state = PX_CLIENT_ACTIVE;
    return ex;
}

void px_client_accept(struct px_worker *w, int fd, const struct sockaddr *sa,
                      socklen_t len)
{
    px_client_start(w, fd, sa, len, false);
}

void px_client_start(struct px_worker *w, int fd, const struct sockaddr *sa,
                     socklen_t len, bool nodelay_set)
{
    struct px_client *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        atomic_fetch_sub_explicit(&w->proxy->connections, 1, memory_order_relaxed);
        return;
    }
    c->worker = w;
    c->counted = true;
    memcpy(&c->peer, sa, len < sizeof c->peer ? len : sizeof c->peer);
    c->conn.fd = fd;
    TAILQ_INSERT_TAIL(&w->clients, c, link);
    w->n_clients++;
    atomic_fetch_add_explicit(&w->proxy->gauges.client_connections, 1,
                              memory_order_relaxed);
    if (client_buffers(c) < 0) {
        client_free(c);
        return;
    }
    if (!nodelay_set) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    px_conn_events(&c->conn, w->base, client_read_cb, client_write_cb, c);
    c->state = PX_CLIENT_IDLE;
    /* Most clients send at once: try to read before going through epoll. */
    int r = px_conn_read(&c->conn);
    if (r == -1) {
        client_free(c);
        return;
    }
    session_step(c);
}

/* ---- answering by ourselves --------------------------------------------- */

/*
 * Answer the client with `status` and a short text body. When the request
 * was not read to its end (or could not be parsed) the stream state is
 * unknown: the answer says Connection: close and the connection closes after
 * it. Returns -1 if the client was freed.
 */
static int exchange_fail(struct px_exchange *ex, int status, const char *reason)
{
    struct px_client *c = ex->client;
    if (!ex->reason)
        ex->reason = reason;
    if (ex->resp_started) {
        client_abort(c, reason);
        return -1;
    }
    detach_upstream(ex, false);
    /* Only a request the proxy could not take apart leaves the stream state
     * unknown; after any other answer of its own (404, 5xx) the connection
     * may go on if the request was read to its end. */
    bool parse_failure = status == 400 || status == 405 || status == 408 ||
                         status == 431 || status == 501 || status == 505;
    bool keep = ex->client_keepalive && ex->req_done && !parse_failure &&
                !c->worker->draining;
    const char *text = px_status_reason(status);
    char body[128];
    int blen = snprintf(body, sizeof body, "%d %s\n", status, text);
    size_t before = evbuffer_get_length(c->conn.out);
    evbuffer_add_printf(c->conn.out,
        "HTTP/1.1 %d %s\r\n"
        "Content-Type: text/plain\r\n"
        "Content-Length: %d\r\n"
        "Cache-Control: no-store\r\n"
        "%s"
        "\r\n", status, text, blen, keep ? "" : "Connection: close\r\n");
    ex->resp_head_bytes += evbuffer_get_length(c->conn.out) - before;
    if (!ex->head_request)
        evbuffer_add(c->conn.out, body, (size_t)blen);
    ex->status = status;
    ex->bytes_out += evbuffer_get_length(c->conn.out) - before;
    ex->resp_started = true;
    ex->resp_done = true;
    ex->client_keepalive = keep;
    if (!keep && (!ex->req_done || parse_failure))
        c->linger = true;
    if (status >= 500)
        sb_log(SB_LOG_INFO, "%s %.*s -> %d: %s", ex->client_addr,
               (int)ex->req.url_len, ex->req.buf ? ex->req.buf + ex->req.url_off : "",
               status, reason);
    exchange_finish(ex);
    if (parse_failure)
        c->state = PX_CLIENT_CLOSING;
    return 0;
}

/* ---- the request head ---------------------------------------------------- */

/* `has_conn`: the head has a Connection field, whose tokens name more
 * hop-by-hop headers. Content-Length and Transfer-Encoding count too: the
 * proxy frames each message itself. */
static bool is_hop_by_hop(const struct px_head *h, const struct px_header *hd,
                          bool has_conn)
{
    switch (hd->id) {
    case PX_HDR_CONNECTION:
    case PX_HDR_KEEP_ALIVE:
    case PX_HDR_PROXY_CONNECTION:
    case PX_HDR_TE:
    case PX_HDR_TRAILER:
    case PX_HDR_TRANSFER_ENCODING:
    case PX_HDR_UPGRADE:
    case PX_HDR_CONTENT_LENGTH:
        return true;
    default:
        break;
    }
    if (!has_conn)
        return false;
    /* Every Connection field counts, not only the first one. */
    for (unsigned i = 0; i < h->n_hdr; i++) {
        const struct px_header *ch = &h->hdr[i];
        if (ch->id == PX_HDR_CONNECTION &&
            px_token_list_has_n(h->buf + ch->value_off, ch->value_len,
                                h->buf + hd->name_off, hd->name_len))
            return true;
    }
    return false;
}

static void put_header(char **o, const struct px_head *h,
                       const struct px_header *hd)
{
    put(o, h->buf + hd->name_off, hd->name_len);
    PUT_LIT(o, ": ");
    put(o, h->buf + hd->value_off, hd->value_len);
    PUT_LIT(o, "\r\n");
}

/*
 * The framing headers, which the proxy and the server behind or in front of
 * it must read the same way, or a message ends where one of them does not
 * expect it (request smuggling, response splitting): at most one
 * Transfer-Encoding field and it says exactly "chunked"; at most one
 * Content-Length field (two identical ones are refused too, RFC 9112 6.3
 * allows either) holding a plain decimal; never both. Names must be tokens
 * and values free of control characters; px_wire_scan() holds the raw bytes
 * to that already, this checks what the parser handed over. Returns NULL
 * when the head is fine, else the reason.
 */
static const char *check_framing(const struct px_head *h)
{
    unsigned te = 0, cl = 0;
    for (unsigned i = 0; i < h->n_hdr; i++) {
        const struct px_header *hd = &h->hdr[i];
        if (!px_is_token(h->buf + hd->name_off, hd->name_len))
            return "invalid header name";
        if (!px_is_field_value(h->buf + hd->value_off, hd->value_len))
            return "invalid header value";
        if (hd->id == PX_HDR_TRANSFER_ENCODING) {
            const char *v = h->buf + hd->value_off;
            uint32_t n = hd->value_len;
            while (n && (v[0] == ' ' || v[0] == '\t')) { v++; n--; }
            while (n && (v[n - 1] == ' ' || v[n - 1] == '\t')) n--;
            if (n != 7 || strncasecmp(v, "chunked", 7) != 0)
                return "unsupported transfer-encoding";
            te++;
        } else if (hd->id == PX_HDR_CONTENT_LENGTH) {
            if (!px_is_decimal(h->buf + hd->value_off, hd->value_len))
                return "invalid content-length";
            cl++;
        }
    }
    if (te > 1)
        return "more than one transfer-encoding";
    if (cl > 1)
        return "more than one content-length";
    if (te && cl)
        return "both content-length and transfer-encoding";
    return NULL;
}

/* Check what http-parser lets through but a proxy must not (see also
 * px_wire_scan and check_framing): a second Host, a missing one in
 * HTTP/1.1, versions other than 1.0 and 1.1, Transfer-Encoding in HTTP/1.0
 * (a 1.0 server may ignore it and read the body as the next request, RFC
 * 9112 6.1). Returns NULL when the head is fine, else the reason. */
static const char *check_request_head(struct px_exchange *ex)
{
    const struct px_head *h = &ex->req;
    const char *bad = check_framing(h);
    if (bad)
        return bad;
    unsigned hosts = 0;
    uint32_t len;
    for (unsigned i = 0; i < h->n_hdr; i++)
        if (h->hdr[i].id == PX_HDR_HOST)
            hosts++;
    if (hosts > 1)
        return "duplicate host header";
    if (ex->req_parser.http_major == 0)
        return "HTTP/0.9 request (no version)";
    if (ex->req_parser.http_major != 1 || ex->req_parser.http_minor > 1)
        return "unsupported http version";
    if (ex->req_parser.http_minor == 1 && hosts == 0)
        return "missing host header";
    if (ex->req_parser.http_minor == 0 && px_head_find(h, PX_HDR_TRANSFER_ENCODING, &len))
        return "transfer-encoding in an HTTP/1.0 request";
    if (h->url_len == 0)
        return "empty request target";
    return NULL;
}

/* Serialise the request head for the backend into ex->req_out. `target` and
 * `host` override what the client sent (absolute-form requests). */
static int build_request_head(struct px_exchange *ex, const char *target,
                              size_t target_len, const char *abs_host,
                              size_t abs_host_len)
{
    const struct px_head *h = &ex->req;
    struct px_client *c = ex->client;
    bool peer_trusted = ex->gen->rt->n_trusted && px_trusted(ex->gen->rt, &c->peer.sa);
    uint32_t conn_len;
    bool has_conn = px_head_find(h, PX_HDR_CONNECTION, &conn_len) != NULL;
    size_t bound = head_bound(h) + target_len + 2 * abs_host_len;
    if (bound > ex->req_out_cap) {
        char *buf = realloc(ex->req_out, bound);
        if (!buf)
            return -1;
        ex->req_out = buf;
        ex->req_out_cap = bound;
    }
    char *o = ex->req_out;
    put_str(&o, http_method_str(ex->req_parser.method));
    PUT_LIT(&o, " ");
    put(&o, target, target_len);
    PUT_LIT(&o, " HTTP/1.1\r\n");

    bool have_proto = false, have_fwd_host = false;
    for (unsigned i = 0; i < h->n_hdr; i++) {
        const struct px_header *hd = &h->hdr[i];
        if (is_hop_by_hop(h, hd, has_conn))
            continue;
        switch (hd->id) {
        case PX_HDR_X_FORWARDED_FOR:    /* folded into one below */
        case PX_HDR_X_REAL_IP:
            continue;
        case PX_HDR_X_FORWARDED_PROTO:
            if (!peer_trusted || have_proto)
                continue;
            have_proto = true;
            break;
        case PX_HDR_X_FORWARDED_HOST:
            if (!peer_trusted || have_fwd_host)
                continue;
            have_fwd_host = true;
            break;
        case PX_HDR_HOST:
            if (abs_host)
                continue;
            break;
        default:
            break;
        }
        put_header(&o, h, hd);
    }
    /* Every X-Forwarded-For the client sent, in order, then its peer. */
    PUT_LIT(&o, "X-Forwarded-For: ");
    for (unsigned i = 0; i < h->n_hdr; i++) {
        const struct px_header *hd = &h->hdr[i];
        if (hd->id != PX_HDR_X_FORWARDED_FOR || hd->value_len == 0)
            continue;
        put(&o, h->buf + hd->value_off, hd->value_len);
        PUT_LIT(&o, ", ");
    }
    char peer_text[INET6_ADDRSTRLEN];
    px_sockaddr_text(&c->peer.sa, peer_text, sizeof peer_text);
    put_str(&o, peer_text);
    PUT_LIT(&o, "\r\n");
    if (abs_host) {
        PUT_LIT(&o, "Host: ");
        put(&o, abs_host, abs_host_len);
        PUT_LIT(&o, "\r\n");
    }
    if (!have_proto)
        PUT_LIT(&o, "X-Forwarded-Proto: http\r\n");
    if (!have_fwd_host) {
        uint32_t hl;
        const char *host = abs_host ? abs_host : px_head_find(h, PX_HDR_HOST, &hl);
        if (abs_host)
            hl = (uint32_t)abs_host_len;
        if (host) {
            PUT_LIT(&o, "X-Forwarded-Host: ");
            put(&o, host, hl);
            PUT_LIT(&o, "\r\n");
        }
    }
    PUT_LIT(&o, "X-Real-IP: ");
    put_str(&o, ex->client_addr);
    PUT_LIT(&o, "\r\n");
    if (ex->req_body == PX_BODY_LENGTH) {
        PUT_LIT(&o, "Content-Length: ");
        put_u64(&o, ex->req_parser.content_length);
        PUT_LIT(&o, "\r\n");
    } else if (ex->req_body == PX_BODY_CHUNKED) {
        PUT_LIT(&o, "Transfer-Encoding: chunked\r\n");
    }
    if (ex->upgrade) {
        uint32_t ul;
        const char *u = px_head_find(h, PX_HDR_UPGRADE, &ul);
        PUT_LIT(&o, "Connection: upgrade\r\nUpgrade: ");
        put(&o, u, ul);
        PUT_LIT(&o, "\r\n");
    }
    PUT_LIT(&o, "\r\n");
    ex->req_out_len = (size_t)(o - ex->req_out);
    assert(ex->req_out_len <= bound);
    return 0;
}

/*
 * The request head is complete: check it, choose the route, the pool and a
 * server, and start talking to the backend. Returns -1 if the client is gone.
 */
static int request_head_done(struct px_exchange *ex)
{
    http_parser *p = &ex->req_parser;
    const struct px_runtime *rt = ex->gen->rt;
    const char *bad = check_request_head(ex);
    if (bad)
        return exchange_fail(ex, strcmp(bad, "unsupported http version") == 0
                                 ? 505 : 400, bad);
    ex->client_http10 = p->http_minor == 0;
    ex->client_keepalive = http_should_keep_alive(p);
    ex->head_request = p->method == HTTP_HEAD;
    resolve_client_addr(ex);

    if (p->method == HTTP_CONNECT)
        return exchange_fail(ex, 405, "connect method not allowed");

    /* http-parser saw "upgrade" in any of the Connection fields. */
    uint32_t conn_len, up_len;
    if (px_head_find(&ex->req, PX_HDR_UPGRADE, &up_len) && (p->flags & F_CONNECTION_UPGRADE))
        ex->upgrade = true;

    if (p->flags & F_CHUNKED) {
        ex->req_body = PX_BODY_CHUNKED;
        px_wire_chunked(&ex->req.wire);     /* chunk framing is checked too */
    } else if (px_head_find(&ex->req, PX_HDR_CONTENT_LENGTH, &conn_len)) {
        ex->req_body = p->content_length ? PX_BODY_LENGTH : PX_BODY_NONE;
        ex->req_remaining = p->content_length;
        if (!p->content_length)
            ex->req_body = PX_BODY_NONE;
    } else
        ex->req_body = PX_BODY_NONE;
    ex->req_done = ex->req_body == PX_BODY_NONE;
    if (ex->req_body == PX_BODY_LENGTH && ex->req_remaining == 0)
        ex->req_done = true;

    /* Target: origin-form as is; absolute-form becomes origin-form with its
     * authority as Host. */
    const char *url = ex->req.buf + ex->req.url_off;
    size_t url_len = ex->req.url_len;
    const char *target = url, *abs_host = NULL;
    size_t target_len = url_len, abs_host_len = 0;
    char host[256];
    size_t host_len;
    /* A request target never holds a fragment (RFC 9112 3.2): servers
     * differ on what '#' means there. px_wire_scan() let only visible
     * ASCII through. */
    if (memchr(url, '#', url_len))
        return exchange_fail(ex, 400, "invalid request target");
    if (url[0] != '/') {
        if (url_len == 1 && url[0] == '*' && p->method == HTTP_OPTIONS) {
            /* server-wide OPTIONS */
        } else {
            /* Otherwise only absolute-form: an http(s) URI with a host and
             * no userinfo (RFC 9110 4.2.4: treat it as an error). */
            struct http_parser_url u;
            http_parser_url_init(&u);
            if (http_parser_parse_url(url, url_len, 0, &u) != 0 ||
                !(u.field_set & (1 << UF_HOST)) || !(u.field_set & (1 << UF_SCHEMA)) ||
                (u.field_set & (1 << UF_USERINFO)) ||
                !((u.field_data[UF_SCHEMA].len == 4 &&
                   strncasecmp(url + u.field_data[UF_SCHEMA].off, "http", 4) == 0) ||
                  (u.field_data[UF_SCHEMA].len == 5 &&
                   strncasecmp(url + u.field_data[UF_SCHEMA].off, "https", 5) == 0)))
                return exchange_fail(ex, 400, "invalid request target");
            abs_host = url + u.field_data[UF_HOST].off;
            abs_host_len = u.field_data[UF_HOST].len;
            if (u.field_set & (1 << UF_PORT))
                abs_host_len = u.field_data[UF_PORT].off + u.field_data[UF_PORT].len -
                               u.field_data[UF_HOST].off;
            if (u.field_set & (1 << UF_PATH)) {
                target = url + u.field_data[UF_PATH].off;
                target_len = url_len - u.field_data[UF_PATH].off;
            } else {
                target = "/";
                target_len = 1;
            }
        }
    }
    if (abs_host) {
        host_len = 0;
        for (size_t i = 0; i < abs_host_len && host_len + 1 < sizeof host; i++) {
            if (abs_host[i] == ':')
                break;
            char ch = abs_host[i];
            host[host_len++] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
        }
        host[host_len] = '\0';
    } else {
        host_len = request_host(ex, host, sizeof host);
    }
    const char *q = memchr(target, '?', target_len);
    size_t path_len = q ? (size_t)(q - target) : target_len;

    ex->pool = px_route_match(rt, host, host_len, target, path_len);
    if (!ex->pool)
        return exchange_fail(ex, 404, "no route");

    if (build_request_head(ex, target, target_len, abs_host, abs_host_len) < 0)
        return exchange_fail(ex, 500, "out of memory");
    ex->phase = PX_PHASE_CONNECT;
    return start_backend(ex, -1);
}

enum { PICK_NONE = -1, PICK_FULL = -2 };

/*
 * Pick a server and take one of its slots (inflight). The slot is taken by
 * an atomic increment that is undone if it overshot max_conns, so the limit
 * holds exactly across workers. Returns the server index, PICK_FULL when
 * every usable server is at max_conns (the request may wait), or PICK_NONE
 * when no server is up at all.
 */
static int reserve_server(struct px_pool *pool, void *lb_state,
                          struct lb_request *req)
{
    for (size_t attempt = 0; attempt <= pool->n_servers; attempt++) {
        int idx = lb_pick(&pool->lb, lb_state, req);
        if (idx < 0 && req->exclude >= 0) {
            req->exclude = -1;
            idx = lb_pick(&pool->lb, lb_state, req);
        }
        if (idx < 0 && req->now_ms != UINT64_MAX) {
            /* Every up server is ejected: trying one beats refusing them
             * all (nginx does the same when all peers have failed). */
            uint64_t now = req->now_ms;
            req->now_ms = UINT64_MAX;
            idx = lb_pick(&pool->lb, lb_state, req);
            req->now_ms = now;
        }
        if (idx < 0) {
            req->ignore_full = true;
            bool full = lb_pick(&pool->lb, lb_state, req) >= 0;
            req->ignore_full = false;
            return full ? PICK_FULL : PICK_NONE;
        }
        struct lb_server *s = &pool->lb_servers[idx];
        unsigned before = atomic_fetch_add_explicit(&s->inflight, 1,
                                                    memory_order_relaxed);
        if (!s->max_conns || before < s->max_conns)
            return idx;
        atomic_fetch_sub_explicit(&s->inflight, 1, memory_order_relaxed);
    }
    return PICK_FULL;
}

static size_t pool_index_of(const struct px_exchange *ex)
{
    return (size_t)(ex->pool - ex->gen->rt->pools);
}

/* Wait for a slot, at the end of this worker's queue for the pool (the
 * bound counts every worker's waiters). Returns -1 if the client is gone. */
static int enqueue(struct px_exchange *ex)
{
    struct px_pool *pool = ex->pool;
    unsigned before = atomic_fetch_add_explicit(&pool->queued, 1, memory_order_relaxed);
    if (before >= pool->queue.size) {
        atomic_fetch_sub_explicit(&pool->queued, 1, memory_order_relaxed);
        return exchange_fail(ex, 503, "queue full");
    }
    /* A request that already waited and still finds no slot goes back to
     * the head, keeping its place and its waiting time. */
    if (ex->queued_ns) {
        TAILQ_INSERT_HEAD(&ex->gen->waitq[pool_index_of(ex)], ex, wait_link);
    } else {
        TAILQ_INSERT_TAIL(&ex->gen->waitq[pool_index_of(ex)], ex, wait_link);
        ex->queued_ns = px_turn_now_ns(ex->client->worker);
    }
    ex->queued = true;
    ex->phase = PX_PHASE_CONNECT;
    struct px_worker *w = ex->client->worker;
    if (!evtimer_pending(&w->queue_ev, NULL)) {
        struct timeval tick = { 0, 5000 };
        evtimer_add(&w->queue_ev, &tick);
    }
    return 0;
}

static void dequeue(struct px_exchange *ex)
{
    TAILQ_REMOVE(&ex->gen->waitq[pool_index_of(ex)], ex, wait_link);
    atomic_fetch_sub_explicit(&ex->pool->queued, 1, memory_order_relaxed);
    ex->queued = false;
}

/* Pick a server (avoiding `exclude`), get a connection to it and queue the
 * request head. Returns -1 if the client is gone. */
static int start_backend(struct px_exchange *ex, int exclude)
{
    struct px_pool *pool = ex->pool;
    struct px_gen *gen = ex->gen;
    size_t pool_index = (size_t)(pool - gen->rt->pools);
    struct lb_request req = { .key = NULL, .key_len = 0, .exclude = exclude };
    switch (pool->hash_key) {
    case CONF_HASH_SOURCE:
        req.key = ex->client_addr;
        req.key_len = strlen(ex->client_addr);
        break;
    case CONF_HASH_URI:
        req.key = ex->req.buf + ex->req.url_off;
        req.key_len = ex->req.url_len;
        break;
    case CONF_HASH_HEADER: {
        uint32_t len;
        const char *v = px_head_get(&ex->req, pool->hash_name, &len);
        req.key = v;
        req.key_len = len;
        break;
    }
    case CONF_HASH_COOKIE: {
        uint32_t len;
        const char *v = px_head_find(&ex->req, PX_HDR_COOKIE, &len);
        size_t vlen = 0;
        if (v)
            req.key = cookie_value(v, len, pool->hash_name, pool->hash_name_len, &vlen);
        req.key_len = vlen;
        break;
    }
    }
    struct px_worker *w = ex->client->worker;
    req.now_ms = px_turn_now_ns(w) / 1000000u;
    w->rng ^= w->rng << 13;
    w->rng ^= w->rng >> 7;
    w->rng ^= w->rng << 17;
    req.random = (uint32_t)(w->rng >> 32);
    if (exclude < 0 && !ex->retries && !ex->queued_ns) {
        double *tokens = &gen->retry_tokens[pool_index];
        *tokens += pool->retry_budget / 100.0;
        if (*tokens > 1000)
            *tokens = 1000;
    }
    int idx = reserve_server(pool, gen->lb_state[pool_index], &req);
    if (idx == PICK_NONE)
        return exchange_fail(ex, 503, "no server available");
    if (idx == PICK_FULL)
        return enqueue(ex);
    ex->server = &pool->servers[idx];
    bool reused;
    struct px_upstream *up = px_upstream_get(ex->client->worker, gen, ex->server, &reused);
    if (!up) {
        atomic_fetch_sub_explicit(&pool->lb_servers[idx].inflight, 1,
                                  memory_order_relaxed);
        return exchange_fail(ex, 502, "cannot create backend socket");
    }
    up->ex = ex;
    ex->up = up;
    if (!reused) {
        struct event_base *base = ex->client->worker->base;
        px_conn_events(&up->conn, base, upstream_read_cb, upstream_write_cb, up);
    }
    up->reused = reused;
    evbuffer_add(up->conn.out, ex->req_out, ex->req_out_len);
    ex->phase = PX_PHASE_RESP_HEAD;
    if (up->connect_error)
        return upstream_failed(ex, 502, up->connect_error == ECONNREFUSED
                               ? "connection refused" : "connect failed");
    if (!reused)
        ex->t_connect_start_ns = px_turn_now_ns(w);
    if (up->connected && !ex->t_connect_ns)
        ex->t_connect_ns = px_turn_now_ns(w);
    return 0;
}

/*
 * Passive outlier detection. Every worker updates the server's shared
 * counters; a success only writes when there is something to reset, so the
 * common path just reads them. The worker whose failure reaches the
 * threshold ejects the server: base_ejection_time, doubled for each ejection
 * in a row, up to max_ejection_time.
 */
static void note_failure(struct px_exchange *ex, const char *reason)
{
    const struct conf_outlier *o = &ex->pool->outlier;
    if (!ex->server || o->consecutive_failures == 0)
        return;
    struct lb_server *s = &ex->pool->lb_servers[ex->server->index];
    unsigned n = atomic_fetch_add_explicit(&s->consecutive_failures, 1,
                                           memory_order_relaxed) + 1;
    if (n != o->consecutive_failures)
        return;
    unsigned times = atomic_fetch_add_explicit(&s->ejections, 1,
                                               memory_order_relaxed);
    uint64_t ms = o->base_ejection_time;
    for (unsigned i = 0; i < times && ms < o->max_ejection_time; i++)
        ms *= 2;
    if (ms > o->max_ejection_time)
        ms = o->max_ejection_time;
    uint64_t until = px_turn_now_ns(ex->client->worker) / 1000000u + ms;
    atomic_store_explicit(&s->ejected_until_ms, until, memory_order_relaxed);
    atomic_store_explicit(&s->ramp_start_ms, until, memory_order_relaxed);
    atomic_store_explicit(&s->consecutive_failures, 0, memory_order_relaxed);
    sb_log(SB_LOG_WARN, "pool %s server %s ejected for %llu ms after %u "
           "consecutive failures (last: %s)", ex->pool->name,
           ex->server->addr.text, (unsigned long long)ms, n, reason);
}

static void note_success(struct px_exchange *ex)
{
    struct lb_server *s = &ex->pool->lb_servers[ex->server->index];
    if (atomic_load_explicit(&s->consecutive_failures, memory_order_relaxed))
        atomic_store_explicit(&s->consecutive_failures, 0, memory_order_relaxed);
    if (atomic_load_explicit(&s->ejections, memory_order_relaxed))
        atomic_store_explicit(&s->ejections, 0, memory_order_relaxed);
}

/* The backend connection failed before a byte of the answer reached the
 * client. A stale keep-alive connection, or a refused connect, is retried
 * once on a fresh connection as long as no body byte has been forwarded. */
static int upstream_failed(struct px_exchange *ex, int status, const char *reason)
{
    struct px_upstream *up = ex->up;
    bool body_touched = ex->req_body != PX_BODY_NONE &&
                        (ex->req_body != PX_BODY_LENGTH ||
                         ex->req_remaining != ex->req_parser.content_length);
    /* Stale: the kept-alive connection died before a byte of an answer
     * came; a server that began to answer has seen the request. */
    bool stale = up && up->reused && evbuffer_get_length(up->conn.in) == 0 &&
                 ex->resp.head_bytes == 0 && !ex->t_first_byte_ns;
    /* A request the server may have acted on is sent again only when its
     * method is idempotent (a proxy must not retry others, RFC 7230 6.3.1);
     * a failed connect reached no server. */
    unsigned m = ex->req_parser.method;
    bool idempotent = m == HTTP_GET || m == HTTP_HEAD || m == HTTP_OPTIONS ||
                      m == HTTP_TRACE || m == HTTP_PUT || m == HTTP_DELETE;
    bool unsent = up && !up->connected;
    if (!stale)
        note_failure(ex, reason);
    /* A retry spends a token of the pool's budget (stale keep-alive
     * connections excepted: resending on them is not a new attempt). */
    double *tokens = &ex->gen->retry_tokens[pool_index_of(ex)];
    bool budget = stale || *tokens >= 1;
    bool can_retry = !ex->resp_started && !body_touched && budget &&
                     ex->retries < (stale ? 2 : ex->pool->retries) &&
                     !ex->upgrade &&
                     (stale || (status == 502 && (idempotent || unsent)));
    if (!can_retry)
        return exchange_fail(ex, status, reason);
    int exclude = stale ? -1 : (int)ex->server->index;
    if (!stale)
        *tokens -= 1;
    ex->retries++;
    detach_upstream(ex, false);
    if (!stale)
        sb_log(SB_LOG_WARN, "pool %s server %s: %s, retrying",
               ex->pool->name, ex->server->addr.text, reason);
    return start_backend(ex, exclude);
}

/* ---- the response head --------------------------------------------------- */

static int response_head_done(struct px_exchange *ex)
{
    struct px_client *c = ex->client;
    http_parser *p = &ex->resp_parser;
    const struct px_head *h = &ex->resp;
    int status = p->status_code;
    /* The same framing rules as for requests: an answer the proxy could
     * read differently from the server gets 502, and the connection goes. */
    const char *bad = check_framing(h);
    if (bad)
        return upstream_failed(ex, 502, bad);
    if (p->http_major != 1 || status < 100 || status > 999)
        return upstream_failed(ex, 502, "invalid response");
    if (!ex->t_first_byte_ns)
        ex->t_first_byte_ns = px_turn_now_ns(ex->client->worker);
    if (status >= 500)
        note_failure(ex, "5xx answer");
    else if (status >= 200)
        note_success(ex);

    if (status == 101 && !ex->upgrade)
        return upstream_failed(ex, 502, "unexpected 101 response");
    bool interim = status >= 100 && status < 200 && status != 101;

    uint32_t conn_len, cl_len;
    bool has_conn = px_head_find(h, PX_HDR_CONNECTION, &conn_len) != NULL;
    bool has_cl = px_head_find(h, PX_HDR_CONTENT_LENGTH, &cl_len) != NULL;
    if (!interim && status != 101) {
        if (ex->head_request || status == 204 || status == 304)
            ex->resp_body = PX_BODY_NONE;
        else if (p->flags & F_CHUNKED)
            ex->resp_body = PX_BODY_CHUNKED;
        else if (has_cl)
            ex->resp_body = p->content_length ? PX_BODY_LENGTH : PX_BODY_NONE;
        else
            ex->resp_body = PX_BODY_UNTIL_CLOSE;
        ex->resp_remaining = p->content_length;
        if (ex->resp_body == PX_BODY_UNTIL_CLOSE && ex->client_http10)
            ex->client_keepalive = false;
        if (!ex->req_done || c->worker->draining)
            ex->client_keepalive = false;
        ex->resp_chunked_out = !ex->client_http10 &&
            (ex->resp_body == PX_BODY_CHUNKED ||
             ex->resp_body == PX_BODY_UNTIL_CLOSE);
        ex->status = status;
    }
    if (ex->resp_body != PX_BODY_CHUNKED || interim || status == 101)
        drop_head_lf(ex->up->conn.in);
    else
        px_wire_chunked(&ex->resp.wire);    /* chunk framing is checked too */
    if (interim && ex->client_http10) {
        /* HTTP/1.0 clients do not expect interim answers. */
        px_head_reset(&ex->resp);
        http_parser_init(p, HTTP_RESPONSE);
        p->data = ex;
        return 0;
    }

    struct evbuffer_iovec vec;
    size_t bound = head_bound(h);
    if (evbuffer_reserve_space(c->conn.out, (ev_ssize_t)bound, &vec, 1) != 1) {
        client_abort(c, "out of memory");
        return -1;
    }
    char *o = vec.iov_base;
    PUT_LIT(&o, "HTTP/1.1 ");
    put_u64(&o, (uint64_t)status);
    PUT_LIT(&o, " ");
    if (h->reason_len)
        put(&o, h->buf + h->reason_off, h->reason_len);
    else
        put_str(&o, px_status_reason(status));
    PUT_LIT(&o, "\r\n");
    for (unsigned i = 0; i < h->n_hdr; i++) {
        const struct px_header *hd = &h->hdr[i];
        if (!is_hop_by_hop(h, hd, has_conn))
            put_header(&o, h, hd);
    }
    if (status == 101) {
        uint32_t ul;
        const char *u = px_head_find(h, PX_HDR_UPGRADE, &ul);
        PUT_LIT(&o, "Connection: upgrade\r\n");
        if (u) {
            PUT_LIT(&o, "Upgrade: ");
            put(&o, u, ul);
            PUT_LIT(&o, "\r\n");
        }
    } else if (!interim) {
        if (ex->resp_body == PX_BODY_LENGTH ||
            (has_cl && (ex->head_request || status == 304))) {
            PUT_LIT(&o, "Content-Length: ");
            put_u64(&o, p->content_length);
            PUT_LIT(&o, "\r\n");
        } else if (ex->resp_body == PX_BODY_NONE && status != 204 && status != 304 &&
                   !ex->head_request) {
            PUT_LIT(&o, "Content-Length: 0\r\n");
        }
        if (ex->resp_chunked_out)
            PUT_LIT(&o, "Transfer-Encoding: chunked\r\n");
        if (!ex->client_keepalive)
            PUT_LIT(&o, "Connection: close\r\n");
        else if (ex->client_http10)
            PUT_LIT(&o, "Connection: keep-alive\r\n");
    }
    PUT_LIT(&o, "\r\n");
    size_t head_len = (size_t)(o - (char *)vec.iov_base);
    assert(head_len <= bound);
    vec.iov_len = head_len;
    evbuffer_commit_space(c->conn.out, &vec, 1);
    ex->bytes_out += head_len;
    ex->resp_head_bytes += head_len;

    if (interim) {
        px_head_reset(&ex->resp);
        http_parser_init(p, HTTP_RESPONSE);
        p->data = ex;
        return 0;
    }
    ex->resp_started = true;
    if (status == 101) {
        ex->phase = PX_PHASE_TUNNEL;
        ex->status = 101;
        ex->tunnel_last_ns = px_turn_now_ns(c->worker);
        atomic_fetch_add_explicit(&c->worker->proxy->gauges.tunnels, 1,
                                  memory_order_relaxed);
        if (c->worker->ring)
            px_tap_emit(c->worker, ex, TM_TUNNEL_OPEN);
        return 0;
    }
    ex->phase = PX_PHASE_RESP_BODY;
    if (ex->resp_body == PX_BODY_NONE)
        ex->resp_done = true;
    return 0;
}

/* ---- the engine ---------------------------------------------------------- */

/* Move up to `max` bytes from `in` to `out`, without copying. */
static size_t move_bytes(struct evbuffer *in, struct evbuffer *out, uint64_t max)
{
    size_t avail = evbuffer_get_length(in);
    size_t n = max < avail ? (size_t)max : avail;
    if (n)
        evbuffer_remove_buffer(in, out, n);
    return n;
}

static bool below_watermark(struct evbuffer *b)
{
    return evbuffer_get_length(b) < PX_HIGH_WATERMARK;
}

/* Request body toward the backend. Returns -1 when the client is gone. */
static int pump_request_body(struct px_exchange *ex)
{
    struct px_client *c = ex->client;
    struct px_upstream *up = ex->up;
    if (ex->req_done || !up)
        return 0;
    if (ex->req_body == PX_BODY_LENGTH) {
        if (below_watermark(up->conn.out)) {
            size_t n = move_bytes(c->conn.in, up->conn.out, ex->req_remaining);
            ex->req_remaining -= n;
            ex->bytes_in += n;
            if (ex->req_remaining == 0)
                ex->req_done = true;
        }
    } else if (ex->req_body == PX_BODY_CHUNKED) {
        if (below_watermark(up->conn.out) &&
            feed(&ex->req_parser, &px_request_settings, c->conn.in, NULL)
                == FEED_ERROR)
            return exchange_fail(ex, 400, feed_error(&ex->req_parser));
    }
    return 0;
}

/* Response from the backend toward the client. Returns -1 when the client
 * is gone. */
static int pump_response(struct px_exchange *ex)
{
    struct px_client *c = ex->client;
    struct px_upstream *up = ex->up;
    if (!up)
        return 0;
    while (ex->phase == PX_PHASE_RESP_HEAD && evbuffer_get_length(up->conn.in)) {
        size_t used = 0;
        enum feed_result r = feed(&ex->resp_parser, &px_response_settings,
                                  up->conn.in, &used);
        ex->resp.head_bytes += (uint32_t)used;
        if (r == FEED_ERROR)
            return upstream_failed(ex, 502, ex->resp.too_big
                                   ? "response head too large"
                                   : feed_error(&ex->resp_parser));
        if (r == FEED_MORE)
            break;
        if (response_head_done(ex) < 0)
            return -1;
        if (!c->ex)
            return 0;
        /* A refused answer may have been retried on a new connection, and
         * this one freed: go on with the exchange's current one. */
        if (!(up = ex->up))
            return 0;
    }
    if (ex->phase != PX_PHASE_RESP_BODY || ex->resp_done)
        return 0;
    if (!below_watermark(c->conn.out))
        return 0;
    size_t before = evbuffer_get_length(c->conn.out);
    switch (ex->resp_body) {
    case PX_BODY_LENGTH:
        ex->resp_remaining -= move_bytes(up->conn.in, c->conn.out, ex->resp_remaining);
        if (ex->pipe)
            break;              /* done when the pipe is empty too */
        if (ex->resp_remaining == 0)
            ex->resp_done = true;
        else if (ex->resp_remaining >= PX_SPLICE_MIN && !ex->no_splice &&
                 ex->gen->rt->limits.pipe_size > 0)   /* 0: copy every body */
            ex->pipe = px_pipe_get(c->worker, ex->gen->rt->limits.pipe_size);
        break;
    case PX_BODY_CHUNKED:
        if (feed(&ex->resp_parser, &px_response_settings, up->conn.in, NULL)
                == FEED_ERROR) {
            ex->bytes_out += evbuffer_get_length(c->conn.out) - before;
            client_abort(c, feed_error(&ex->resp_parser));
            return -1;
        }
        break;
    case PX_BODY_UNTIL_CLOSE: {
        size_t n = evbuffer_get_length(up->conn.in);
        if (n) {
            if (ex->resp_chunked_out)
                add_chunk_size(c->conn.out, n);
            move_bytes(up->conn.in, c->conn.out, n);
            if (ex->resp_chunked_out)
                evbuffer_add(c->conn.out, "\r\n", 2);
        }
        if (up->conn.eof) {
            if (ex->resp_chunked_out)
                evbuffer_add(c->conn.out, "0\r\n\r\n", 5);
            ex->resp_done = true;
        }
        break;
    }
    case PX_BODY_NONE:
        ex->resp_done = true;
        break;
    }
    ex->bytes_out += evbuffer_get_length(c->conn.out) - before;
    return 0;
}

/* The spliced body: from the backend socket into the pipe. Returns as
 * px_conn_read(). Sockets splice(2) refuses are read the ordinary way. */
static int fill_pipe(struct px_exchange *ex)
{
    struct px_upstream *up = ex->up;
    struct px_pipe *pp = ex->pipe;
    size_t before = pp->len;
    int r = px_pipe_fill(pp, up->conn.fd, ex->resp_remaining);
    if (r < 0 && errno == EINVAL && pp->len == 0) {
        px_pipe_put(ex->client->worker, pp);
        ex->pipe = NULL;
        ex->no_splice = true;
        return px_conn_read(&up->conn);
    }
    if (r == 0)
        up->conn.eof = true;
    size_t n = pp->len - before;
    ex->resp_remaining -= n;
    ex->bytes_out += n;
    return r;
}

/* The pipe to the client, after what the client's evbuffer holds (the
 * head, the first body bytes). -1 when the client is gone. */
static int drain_pipe(struct px_exchange *ex)
{
    struct px_client *c = ex->client;
    struct px_pipe *pp = ex->pipe;
    if (evbuffer_get_length(c->conn.out) > 0)
        return 0;
    if (px_pipe_drain(pp, c->conn.fd) < 0) {
        if (errno != EINVAL) {
            client_abort(c, "client write error");
            return -1;
        }
        /* splice(2) refuses this socket: take the bytes back out. */
        while (pp->len > 0) {
            int n = evbuffer_read(c->conn.out, pp->rd, (int)pp->len);
            if (n <= 0) {
                client_abort(c, "pipe read error");
                return -1;
            }
            pp->len -= (size_t)n;
        }
        ex->no_splice = true;
    }
    if (pp->len == 0 && (ex->resp_remaining == 0 || ex->no_splice)) {
        px_pipe_put(c->worker, pp);
        ex->pipe = NULL;
        if (ex->resp_remaining == 0)
            ex->resp_done = true;
    }
    return 0;
}

/* Write pending output on both sides, at the end of the event-loop turn
 * (struct px_flushq) where nothing else waits on it, else now. -1 when the
 * client is gone. */
static int flush_client(struct px_client *c)
{
    size_t len = evbuffer_get_length(c->conn.out);
    if (len == 0)
        return 0;
    /* Once written, step_closing() sends FIN (close or shutdown). */
    c->conn.fin_follows = c->state == PX_CLIENT_CLOSING;
    struct px_exchange *ex = c->ex;
    /* Splicing must follow the head, and a tunnel passes half-closes on
     * after its output: both write now. */
    if (!(ex && (ex->pipe || ex->phase == PX_PHASE_TUNNEL))) {
        /* Closing waits for empty output; a full buffer stopped the reader
         * that feeds it: the flush must step the session again. */
        bool notify = c->state != PX_CLIENT_ACTIVE && c->state != PX_CLIENT_IDLE;
        notify |= len >= PX_HIGH_WATERMARK;
        if (px_flushq_add(&c->worker->flushq, &c->conn, notify))
            return 0;
    }
    if (px_conn_write(&c->conn) < 0) {
        client_abort(c, "client write error");
        return -1;
    }
    return 0;
}

static int flush_upstream(struct px_exchange *ex)
{
    struct px_upstream *up = ex->up;
    size_t len;
    if (!up || !up->connected || (len = evbuffer_get_length(up->conn.out)) == 0)
        return 0;
    if (ex->phase != PX_PHASE_TUNNEL &&
        px_flushq_add(&up->worker->flushq, &up->conn, len >= PX_HIGH_WATERMARK))
        return 0;
    if (px_conn_write(&up->conn) < 0)
        return upstream_failed(ex, 502, "backend write error");
    return 0;
}

static void set_timer_ms(struct event *ev, uint64_t ms)
{
    struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };
    evtimer_add(ev, &tv);
}

/* The client of `ex` gets its read event (and so an abort is seen) only once
 * the answer takes PX_ABORT_WATCH_MS. */
static void watch_later(struct px_exchange *ex)
{
    struct px_worker *w = ex->client->worker;
    if (ex->watch_pending)
        return;
    TAILQ_INSERT_TAIL(&w->unwatched, ex, watch_link);
    ex->watch_pending = true;
    if (!evtimer_pending(&w->watch_ev, NULL))
        set_timer_ms(&w->watch_ev, PX_ABORT_WATCH_MS);
}

static void arm_exchange(struct px_exchange *ex);

void px_abort_watch_due(struct px_worker *w)
{
    uint64_t now = px_turn_now_ns(w);
    struct px_exchange *ex;
    while ((ex = TAILQ_FIRST(&w->unwatched))) {
        uint64_t age_ms = (now - ex->t_start_ns) / 1000000u;
        if (age_ms < PX_ABORT_WATCH_MS) {
            set_timer_ms(&w->watch_ev, PX_ABORT_WATCH_MS - age_ms);
            return;
        }
        TAILQ_REMOVE(&w->unwatched, ex, watch_link);
        ex->watch_pending = false;
        ex->watch_due = true;
        arm_exchange(ex);
    }
}

/* Arm the events the exchange now needs. */
static void arm_exchange(struct px_exchange *ex)
{
    struct px_client *c = ex->client;
    struct px_upstream *up = ex->up;
    const struct conf_timeouts *t = &ex->gen->rt->timeouts;
    if (ex->phase == PX_PHASE_TUNNEL) {
        px_conn_want_read(&c->conn, !c->conn.eof && below_watermark(up->conn.out),
                          t->tunnel, false);
        px_conn_want_read(&up->conn, !up->conn.eof && below_watermark(c->conn.out),
                          t->tunnel, false);
        px_conn_want_write(&c->conn, evbuffer_get_length(c->conn.out) > 0, t->server);
        px_conn_want_write(&up->conn, evbuffer_get_length(up->conn.out) > 0, t->server);
        return;
    }
    /* Client: read the request body while the backend takes it; otherwise
     * keep an ear open for an abort, up to a bounded amount of pipelining. */
    bool client_read;
    if (!ex->req_done) {        /* not after EOF: epoll would fire forever */
        client_read = up && below_watermark(up->conn.out) && !c->conn.eof;
    } else {
        client_read = !c->conn.eof &&
                      evbuffer_get_length(c->conn.in) < PX_PIPELINE_MAX;
        /* An event still armed from before costs nothing to keep. */
        if (client_read && !c->conn.reading && !ex->watch_due) {
            watch_later(ex);
            client_read = false;
        }
    }
    px_conn_want_read(&c->conn, client_read, ex->req_done ? 0 : t->client_idle, false);
    px_conn_want_write(&c->conn, evbuffer_get_length(c->conn.out) > 0 ||
                                 (ex->pipe && ex->pipe->len > 0), t->server);
    if (!up)
        return;
    if (!up->connected) {
        px_conn_want_write(&up->conn, true, t->connect);
        return;
    }
    bool up_read = !up->conn.eof && !ex->resp_done && below_watermark(c->conn.out);
    if (ex->pipe)
        up_read = !up->conn.eof && ex->resp_remaining > 0 && !ex->pipe->full;
    px_conn_want_read(&up->conn, up_read, t->server, false);
    px_conn_want_write(&up->conn, evbuffer_get_length(up->conn.out) > 0, t->server);
}

/* Tunnel: bytes both ways until both sides are done. -1 when gone. */
static int pump_tunnel(struct px_exchange *ex)
{
    struct px_client *c = ex->client;
    struct px_upstream *up = ex->up;
    if (below_watermark(up->conn.out))
        ex->bytes_in += move_bytes(c->conn.in, up->conn.out, UINT64_MAX);
    if (below_watermark(c->conn.out))
        ex->bytes_out += move_bytes(up->conn.in, c->conn.out, UINT64_MAX);
    if (flush_client(c) < 0)
        return -1;
    if (px_conn_write(&up->conn) < 0) {
        client_abort(c, "backend write error");
        return -1;
    }
    /* Pass a half-close on once everything before it went through. */
    if (c->conn.eof && !up->conn.shut_wr && !evbuffer_get_length(c->conn.in) &&
        !evbuffer_get_length(up->conn.out)) {
        shutdown(up->conn.fd, SHUT_WR);
        up->conn.shut_wr = true;
    }
    if (up->conn.eof && !c->conn.shut_wr && !evbuffer_get_length(up->conn.in) &&
        !evbuffer_get_length(c->conn.out)) {
        shutdown(c->conn.fd, SHUT_WR);
        c->conn.shut_wr = true;
    }
    if (c->conn.shut_wr && up->conn.shut_wr) {
        ex->resp_done = ex->req_done = true;
        client_abort(c, NULL);
        return -1;
    }
    arm_exchange(ex);
    return 0;
}

static void arm_idle_client(struct px_client *c)
{
    const struct conf_timeouts *t = &client_rt(c)->timeouts;
    px_conn_want_write(&c->conn, evbuffer_get_length(c->conn.out) > 0, t->server);
    px_conn_drop_wev(&c->conn);        /* unless output is still pending */
    px_conn_want_read(&c->conn, true, t->client_idle, true);
    /* The buffers go once the answer is out: now, or after the flush
     * (client_write_cb). */
    if (client_drained(c))
        release_buffers(c);
    else if (c->conn.flush_slot && evbuffer_get_length(c->conn.in) == 0)
        px_flushq_add(&c->worker->flushq, &c->conn, true);
}

/* Closing: flush, then (after an error answer) linger to drain input. */
static void step_closing(struct px_client *c)
{
    if (flush_client(c) < 0)
        return;
    if (c->conn.flush_slot)
        return;                 /* the flush steps it again */
    const struct conf_timeouts *t = &client_rt(c)->timeouts;
    if (evbuffer_get_length(c->conn.out) > 0) {
        px_conn_want_read(&c->conn, false, 0, false);
        px_conn_want_write(&c->conn, true, t->server);
        return;
    }
    if (c->conn.eof || !c->linger) {
        client_free(c);
        return;
    }
    /* Send FIN, then read and discard what the client still sends, so the
     * kernel does not answer it with a reset that would destroy our answer. */
    shutdown(c->conn.fd, SHUT_WR);
    c->conn.shut_wr = true;
    c->state = PX_CLIENT_LINGERING;
    evbuffer_drain(c->conn.in, evbuffer_get_length(c->conn.in));
    px_conn_want_write(&c->conn, false, 0);
    px_conn_want_read(&c->conn, true, PX_LINGER_MS, true);
}

static void session_step(struct px_client *c)
{
    for (;;) {
        if (c->state == PX_CLIENT_CLOSING) {
            step_closing(c);
            return;
        }
        if (c->state == PX_CLIENT_LINGERING) {
            evbuffer_drain(c->conn.in, evbuffer_get_length(c->conn.in));
            if (c->conn.eof)
                client_free(c);
            return;
        }
        struct px_exchange *ex = c->ex;
        if (!ex) {
            if (evbuffer_get_length(c->conn.in) == 0) {
                if (flush_client(c) < 0)
                    return;
                if (c->conn.eof || c->worker->draining) {
                    c->state = PX_CLIENT_CLOSING;
                    continue;
                }
                arm_idle_client(c);
                return;
            }
            if (!(ex = exchange_new(c))) {
                client_abort(c, "out of memory");
                return;
            }
        }
        if (ex->phase == PX_PHASE_REQ_HEAD) {
            size_t used = 0;
            enum feed_result r = feed(&ex->req_parser, &px_request_settings,
                                      c->conn.in, &used);
            ex->req.head_bytes += (uint32_t)used;
            ex->bytes_in += used;
            if (r == FEED_ERROR) {
                enum http_errno e = HTTP_PARSER_ERRNO(&ex->req_parser);
                bool big = ex->req.too_big || e == HPE_HEADER_OVERFLOW;
                /* A well-formed method http-parser does not know: 501. */
                if (!big && e == HPE_INVALID_METHOD && !ex->req.wire.error &&
                    px_wire_past_method(&ex->req.wire)) {
                    if (exchange_fail(ex, 501, "method not implemented") < 0)
                        return;
                    continue;
                }
                if (exchange_fail(ex, big ? 431 : 400,
                                  big ? "request head too large"
                                      : feed_error(&ex->req_parser)) < 0)
                    return;
                continue;
            }
            if (r == FEED_MORE) {
                if (c->conn.eof) {
                    client_abort(c, "client closed during request head");
                    return;
                }
                if (flush_client(c) < 0)
                    return;
                /* Slow clients get client_header in all, from the first byte. */
                uint64_t elapsed_ms = (px_turn_now_ns(c->worker) - ex->t_start_ns) / 1000000u;
                uint32_t limit = ex->gen->rt->timeouts.client_header;
                uint32_t left = elapsed_ms >= limit ? 1 : limit - (uint32_t)elapsed_ms;
                px_conn_want_read(&c->conn, true, left, true);
                return;
            }
            if (!(ex->req_parser.flags & F_CHUNKED)) {
                drop_head_lf(c->conn.in);
                ex->bytes_in++;
            }
            if (request_head_done(ex) < 0)
                return;
            if (c->ex != ex)
                continue;       /* answered by the proxy itself */
        }
        if (ex->phase == PX_PHASE_TUNNEL) {
            pump_tunnel(ex);
            return;
        }
        if (pump_request_body(ex) < 0)
            return;
        if (c->ex != ex)
            continue;           /* answered by the proxy (400, 502): send it */
        /* The client closed before its body was complete: the request can
         * never end. Unless an answer is on its way already, give up now
         * instead of holding the backend until timeouts.server. */
        if (!ex->req_done && c->conn.eof && !ex->resp_started &&
            evbuffer_get_length(c->conn.in) == 0) {
            client_abort(c, "client closed during request body");
            return;
        }
        if (flush_upstream(ex) < 0)
            return;
        if (c->ex != ex)
            continue;
        if (pump_response(ex) < 0)
            return;
        if (c->ex != ex)
            continue;
        if (ex->phase == PX_PHASE_TUNNEL) {
            pump_tunnel(ex);
            return;
        }
        if (flush_client(c) < 0)
            return;
        if (ex->pipe && drain_pipe(ex) < 0)
            return;
        if (ex->resp_done) {
            exchange_finish(ex);
            continue;
        }
        /* A backend that closes after the last body byte entered the pipe
         * has said all it had to. */
        if (ex->up && ex->up->conn.eof && ex->phase != PX_PHASE_TUNNEL &&
            !(ex->pipe && ex->resp_remaining == 0)) {
            if (upstream_failed(ex, 502, "backend closed connection") < 0)
                return;
            continue;
        }
        arm_exchange(ex);
        return;
    }
}

/* ---- event callbacks ----------------------------------------------------- */

static void client_timeout(struct px_client *c)
{
    struct px_exchange *ex = c->ex;
    if (c->state == PX_CLIENT_LINGERING || c->state == PX_CLIENT_CLOSING) {
        client_free(c);
        return;
    }
    if (!ex) {
        client_free(c);                 /* keep-alive idle timeout */
        return;
    }
    if (ex->phase == PX_PHASE_TUNNEL) {
        uint64_t idle_ms = (px_turn_now_ns(c->worker) - ex->tunnel_last_ns) / 1000000u;
        uint32_t limit = ex->gen->rt->timeouts.tunnel;
        if (idle_ms < limit) {
            px_conn_want_read(&c->conn, true, limit - (uint32_t)idle_ms, true);
            return;
        }
        client_abort(c, "tunnel timeout");
        return;
    }
    if (ex->phase == PX_PHASE_REQ_HEAD) {
        if (ex->req.head_bytes == 0 && evbuffer_get_length(c->conn.in) == 0) {
            client_abort(c, NULL);
            return;
        }
        if (exchange_fail(ex, 408, "client header timeout") == 0)
            session_step(c);
        return;
    }
    client_abort(c, "client timeout");
}

static void client_read_cb(evutil_socket_t fd, short what, void *arg)
{
    struct px_client *c = arg;
    if (what & EV_TIMEOUT) {
        client_timeout(c);
        return;
    }
    /* An idle client gave its buffers back (release_buffers). */
    if (!c->conn.in && client_buffers(c) < 0) {
        client_abort(c, "out of memory");
        return;
    }
    int r = px_conn_read(&c->conn);
    if (r == -2)
        return;
    if (r == -1) {
        client_abort(c, "client read error");
        return;
    }
    if (r == 0)
        px_conn_want_read(&c->conn, false, 0, false);
    if (c->ex && c->ex->phase == PX_PHASE_TUNNEL)
        c->ex->tunnel_last_ns = px_turn_now_ns(c->worker);
    session_step(c);
}

static void client_write_cb(evutil_socket_t fd, short what, void *arg)
{
    struct px_client *c = arg;
    if (what & EV_TIMEOUT) {
        client_abort(c, "client send timeout");
        return;
    }
    if (flush_client(c) < 0)
        return;
    if (evbuffer_get_length(c->conn.out) == 0 &&
        !(c->ex && c->ex->pipe && c->ex->pipe->len > 0))
        px_conn_want_write(&c->conn, false, 0);
    /* An idle keep-alive client whose answer just went out: its read
     * event is armed already (arm_idle_client); only the buffers go. */
    if (c->state == PX_CLIENT_IDLE && !c->ex && client_drained(c)) {
        px_conn_drop_wev(&c->conn);
        release_buffers(c);
        return;
    }
    session_step(c);
}

static void upstream_read_cb(evutil_socket_t fd, short what, void *arg)
{
    struct px_upstream *up = arg;
    struct px_exchange *ex = up->ex;
    if (!ex) {
        /* Idle: the server spoke, closed, or it stayed unused too long. */
        px_upstream_close(up);
        return;
    }
    struct px_client *c = ex->client;
    if (what & EV_TIMEOUT) {
        if (ex->phase == PX_PHASE_TUNNEL) {
            uint64_t idle_ms = (px_turn_now_ns(up->worker) - ex->tunnel_last_ns) / 1000000u;
            uint32_t limit = ex->gen->rt->timeouts.tunnel;
            if (idle_ms < limit) {
                px_conn_want_read(&up->conn, true, limit - (uint32_t)idle_ms, true);
                return;
            }
            client_abort(c, "tunnel timeout");
            return;
        }
        note_failure(ex, "server timeout");
        if (exchange_fail(ex, 504, "server timeout") == 0)
            session_step(c);
        return;
    }
    /* A head comes in a small read: what follows it may be a body worth
     * splicing, which should not have been copied in already. */
    if (ex->phase == PX_PHASE_RESP_HEAD)
        up->conn.read_size = 0;
    int r = ex->pipe ? fill_pipe(ex) : px_conn_read(&up->conn);
    if (r == -2)
        return;
    if (r == -1) {
        up->conn.eof = true;            /* reset: same handling as a close */
        errno = 0;
    }
    if (r <= 0)
        px_conn_want_read(&up->conn, false, 0, false);
    if (ex->phase == PX_PHASE_TUNNEL)
        ex->tunnel_last_ns = px_turn_now_ns(up->worker);
    session_step(c);
}

static void upstream_write_cb(evutil_socket_t fd, short what, void *arg)
{
    struct px_upstream *up = arg;
    struct px_exchange *ex = up->ex;
    struct px_client *c = ex->client;
    if (!up->connected) {
        if (what & EV_TIMEOUT) {
            if (upstream_failed(ex, 504, "connect timeout") == 0)
                session_step(c);
            return;
        }
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(up->conn.fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            px_conn_want_write(&up->conn, false, 0);
            if (upstream_failed(ex, 502, err == ECONNREFUSED
                                ? "connection refused" : "connect failed") == 0)
                session_step(c);
            return;
        }
        up->connected = true;
        ex->t_connect_ns = px_turn_now_ns(up->worker);
        px_conn_want_write(&up->conn, false, 0);
    } else if (what & EV_TIMEOUT) {
        if (exchange_fail(ex, 504, "server send timeout") == 0)
            session_step(c);
        return;
    }
    if (flush_upstream(ex) < 0)
        return;
    if (c->ex == ex && ex->up == up && evbuffer_get_length(up->conn.out) == 0)
        px_conn_want_write(&up->conn, false, 0);
    session_step(c);
}

/* ---- waiting for a slot ------------------------------------------------- */

static bool dispatch_waitq(struct px_gen *gen, size_t p, uint64_t now)
{
    struct px_waitq *q = &gen->waitq[p];
    struct px_exchange *ex;
    while ((ex = TAILQ_FIRST(q))) {
        struct px_client *c = ex->client;
        struct px_pool *pool = ex->pool;
        if (now - ex->queued_ns >= (uint64_t)pool->queue.timeout * 1000000u) {
            dequeue(ex);
            if (exchange_fail(ex, 503, "queue timeout") == 0)
                session_step(c);
            continue;
        }
        /* Slots free anywhere (any worker) are visible through the atomics;
         * strict order: only the head may take one. */
        dequeue(ex);
        if (start_backend(ex, -1) < 0)
            continue;
        if (c->ex != ex)
            continue;
        if (ex->queued)
            return true;        /* still full: it is back at the head */
        session_step(c);
    }
    return false;
}

void px_dispatch_queues(struct px_worker *w)
{
    uint64_t now = px_turn_now_ns(w);
    bool waiting = false;
    struct px_gen *gen = w->gen;
    for (size_t p = 0; p < gen->rt->n_pools; p++)
        waiting |= dispatch_waitq(gen, p, now);
    LIST_FOREACH(gen, &w->old_gens, link)
        for (size_t p = 0; p < gen->rt->n_pools; p++)
            waiting |= dispatch_waitq(gen, p, now);
    if (waiting && !evtimer_pending(&w->queue_ev, NULL)) {
        struct timeval tick = { 0, 5000 };
        evtimer_add(&w->queue_ev, &tick);
    }
}

/* ---- worker-wide ---------------------------------------------------------- */

/* Draining: idle keep-alive connections close now, busy ones after their
 * current answer (which says Connection: close). */
void px_client_shutdown_idle(struct px_worker *w)
{
    struct px_client *c, *next;
    for (c = TAILQ_FIRST(&w->clients); c; c = next) {
        next = TAILQ_NEXT(c, link);
        if (c->state != PX_CLIENT_IDLE || c->ex ||
            (c->conn.in && evbuffer_get_length(c->conn.in) > 0))
            continue;
        if (c->conn.out && evbuffer_get_length(c->conn.out) > 0) {
            /* An answer still queued for this turn's end goes out first. */
            c->state = PX_CLIENT_CLOSING;
            session_step(c);
            continue;
        }
        client_free(c);
    }
}

void px_client_close_all(struct px_worker *w)
{
    struct px_client *c;
    while ((c = TAILQ_FIRST(&w->clients)))
        client_abort(c, "shutdown");
}
