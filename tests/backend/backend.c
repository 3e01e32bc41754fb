/*
 * sb-backend - the HTTP/1.1 origin server that Switchboard's integration
 * tests, `make run` demo and benchmarks put behind the proxy.
 *
 *     sb-backend --listen HOST:PORT [--listen ...] [--id NAME] [--threads N]
 *
 * It prints "ready" on stdout once every socket listens, and exits 0 on
 * SIGTERM or SIGINT after freeing everything (the ASan build checks that).
 *
 * Every response carries `X-Backend-Id: <id>`. Routes (query parameters):
 *
 *   /  and anything unmatched   200 text/plain, body "<id>\n"
 *   /echo                       200, body: "<METHOD> <target> HTTP/x.y\r\n",
 *                               each received header "Name: value\r\n" in
 *                               order, "\r\n", then the request body (held
 *                               in memory, at most 16 MiB, else 413; use
 *                               /sha256 for big bodies). Trailers are dropped.
 *   /sha256                     200, body "<hex sha256> <byte count>\n" of the
 *                               request body, hashed as it streams in
 *   /bytes?n=N[&chunked=1][&chunk=S]
 *                               N bytes of the pattern below, generated as the
 *                               socket drains (never N bytes in memory);
 *                               chunked=1: chunks of S bytes (default 16384;
 *                               an HTTP/1.0 request gets Content-Length)
 *   /delay?ms=N[&then=TARGET]   waits N ms after the request was read, then
 *                               answers as TARGET would (default "/"). `then`
 *                               must come last: it takes the rest of the
 *                               query, percent-decoded once, so both
 *                               then=/bytes?n=5&chunked=1 and
 *                               then=%2Fbytes%3Fn%3D5 work
 *   /status?code=N              status N, body "N Reason\n"; 204 and 304 have
 *                               no body; a 1xx (not 101) is sent as an interim
 *                               response followed by the answer for "/"
 *   /close-mid?n=N              Content-Length: N, then N/2 bytes, then close
 *   /close-before               closes without answering
 *   /garbage                    "HTTP/1.1 ???\r\nthis is not http\r\n\r\n", close
 *   /stats                      {"id":..,"connections":..,"requests":..}:
 *                               TCP connections accepted and requests received
 *                               (this one included) since start, all threads
 *   /reject-expect              with Expect: 100-continue, 417 and close
 *                               without reading the body; without it, 417
 *                               after reading the body
 *   /ws                         WebSocket (RFC 6455) echo, see below; a bad
 *                               handshake gets 400, a version other than 13
 *                               gets 426 with Sec-WebSocket-Version: 13; the
 *                               first offered subprotocol is accepted
 *
 * Byte pattern (for /bytes, /close-mid, and the tests' uploads): byte i of a
 * body is (i * 31 + 7) & 0xff. It has period 256, so one table of 64 KiB +
 * 256 bytes holds every slice. The pattern also fills a 1 MiB memory file,
 * and generated bodies are sent from it with sendfile(2), as nginx sends a
 * static file: a 1 MiB answer then costs the backend no copy and is made of
 * distinct pages, as a file's would be, whichever of the two the benchmarks
 * choose as backend. Without memfd_create the table is sent by reference
 * through writev.
 *
 * HTTP: keep-alive by default for 1.1, for 1.0 only with Connection:
 * keep-alive; pipelined requests are answered in order (the parser pauses at
 * the end of each request until its answer is queued); HEAD gets the headers
 * the GET would get; Expect: 100-continue gets "HTTP/1.1 100 Continue" before
 * the body is read, when there is a body; anything unparsable gets 400 and a
 * close. Closing is graceful: shut down our side, then read and discard what
 * the client still sends for up to 2 s, so an unread request tail does not
 * turn into a reset that destroys the answer in flight.
 *
 * WebSocket: each frame is echoed as it arrives, as the same frame (same FIN
 * bit and opcode, unmasked), so a fragmented message comes back fragmented
 * the same way; its payload is unmasked and forwarded while it streams in, so
 * frames up to 16 MiB (larger: close 1009) cost no buffer of that size. Ping
 * is answered with pong of the same payload, a client's pong is swallowed, a
 * close frame is echoed and then the connection is closed. Protocol errors
 * get close 1002. Text payloads are not checked for UTF-8.
 *
 * The backend never times out a connection: idle keep-alive connections stay
 * open until the client closes them, so pool and idle timeouts are entirely
 * the proxy's. Only a closing connection's drain is bounded (2 s).
 *
 * Structure: the main thread parses arguments, opens the listening sockets,
 * starts N worker threads and waits in sigwait(). Each worker owns one
 * event_base, its own listening sockets (SO_REUSEPORT when N > 1) and every
 * connection it accepted; nothing is shared between workers but the id, the
 * read-only response templates and two atomic counters. A connection owns a
 * fixed input buffer (the parser streams, so only bytes left over by a pause
 * stay there), an output evbuffer, and the state of the one request it is
 * answering. Back-pressure: input is not parsed while more than 1 MiB waits to
 * be sent, and generated bodies are refilled only below 256 KiB.
 */
#include "sha.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <http_parser.h>

#define IN_BUF_SIZE       (32 * 1024)
#define OUT_HIGH_WATER    (1024 * 1024)   /* stop parsing above this */
#define STREAM_LOW_WATER  (256 * 1024)    /* refill generated bodies below */
#define PATTERN_SPAN      65536           /* largest slice served at once */
#define PATTERN_FILE_SIZE (1024 * 1024)   /* a multiple of PATTERN_SPAN */
#define HEAD_MAX          (64 * 1024)     /* target + header names/values */
#define URL_MAX           (16 * 1024)
#define HEADERS_MAX       128
#define ECHO_BODY_MAX     (16u * 1024 * 1024)
#define WS_FRAME_MAX      (16ull * 1024 * 1024)
#define BYTES_MAX         (1ull << 40)
#define DELAY_MAX_MS      3600000ull
#define LINGER_MS         2000
#define ACCEPT_BATCH      64
#define MAX_THREADS       64
#define MAX_LISTEN        16
#define ID_MAX            128

enum route {
    R_ROOT, R_ECHO, R_SHA256, R_BYTES, R_DELAY, R_STATUS, R_CLOSE_MID,
    R_CLOSE_BEFORE, R_GARBAGE, R_STATS, R_WS, R_REJECT_EXPECT,
};

static const struct { const char *path; enum route route; } route_table[] = {
    { "/echo", R_ECHO },             { "/sha256", R_SHA256 },
    { "/bytes", R_BYTES },           { "/delay", R_DELAY },
    { "/status", R_STATUS },         { "/close-mid", R_CLOSE_MID },
    { "/close-before", R_CLOSE_BEFORE }, { "/garbage", R_GARBAGE },
    { "/stats", R_STATS },           { "/ws", R_WS },
    { "/reject-expect", R_REJECT_EXPECT },
};

/* What stops the parser from moving on to the next pipelined request. */
enum busy { BUSY_NONE, BUSY_DELAY, BUSY_STREAM };

/* How the response ends the exchange, which picks the Connection header. */
enum conn_kind { KIND_KEEP_11, KIND_KEEP_10, KIND_CLOSE };

#define LEN_NONE    (-1)    /* no Content-Length (204, 304) */
#define LEN_CHUNKED (-2)

/* Offsets into conn->head, which may move when it grows. */
struct header {
    uint32_t name, name_len;
    uint32_t value, value_len;
};

/* A generated body (/bytes, /close-mid) being written as the socket drains. */
struct stream {
    uint64_t left;          /* pattern bytes still to generate */
    uint64_t offset;        /* position in the pattern */
    uint64_t chunk_size;    /* 0: not chunked */
    uint64_t chunk_left;    /* bytes left in the current chunk */
    bool close_at_end;
};

struct ws_state {
    uint8_t  hdr[14];
    uint8_t  hdr_len;
    bool     in_payload;
    bool     discard;       /* a client pong: read, not echoed */
    uint8_t  opcode;
    uint8_t  mask[4];
    uint8_t  mask_pos;
    uint64_t left;
};

struct worker;

struct conn {
    struct worker *w;
    struct conn *prev, *next;
    int fd;
    struct event ev_read, ev_write, ev_timer;
    bool reading, writing;
    struct evbuffer *out;
    http_parser parser;

    bool ws;                /* upgraded: the input is WebSocket frames */
    bool closing;           /* answer nothing more, close once out drains */
    bool peer_eof;
    bool lingering;         /* our side shut down, discarding input */
    enum busy busy;

    /* The request being parsed or answered. */
    char *head;             /* target, then header names and values */
    uint32_t head_len, head_cap;
    uint32_t url_len;
    uint32_t nheaders;
    bool in_field;          /* the last header callback was a name */
    bool headers_done;      /* later header callbacks are trailers */
    bool keep_alive;
    bool is_head;
    unsigned short http_major, http_minor;
    enum route route;
    uint32_t path_off, path_len, query_off, query_len;
    uint64_t delay_ms;
    int error_status;       /* set by a callback that stops the parser */
    uint64_t body_len;
    struct sha256 sha;
    struct evbuffer *echo_body;
    struct header headers[HEADERS_MAX];

    struct stream stream;
    struct ws_state wsf;

    size_t in_start, in_end;
    char in[IN_BUF_SIZE];
};

struct listener {
    struct worker *w;
    int fd;
    struct event ev;
};

struct worker {
    pthread_t thread;
    struct event_base *base;
    struct listener listeners[MAX_LISTEN];
    int nlisteners;
    int wake_fds[2];        /* the main thread writes here to stop us */
    struct event ev_wake;
    struct conn *conns;
    /* This worker's handle on pattern_fd: libevent counts a segment's
     * references without a lock here, so every worker has its own. */
    struct evbuffer_file_segment *pattern_segment;
};

static const char *backend_id = "backend";
static size_t backend_id_len = 7;
static atomic_ullong stat_connections;
static atomic_ullong stat_requests;

static uint8_t pattern[PATTERN_SPAN + 256];
static int pattern_fd = -1;     /* memory file: the pattern's first 1 MiB, or -1 */

/* Precomputed answers to "/" — the benchmark path: [HEAD?][conn_kind]. */
static struct { char *data; size_t len; } root_response[2][3];

static http_parser_settings parser_settings;

static void conn_drive(struct conn *c);
static void respond(struct conn *c);

/* ---- small helpers ----------------------------------------------------- */

static const char *reason_phrase(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 102: return "Processing";
    case 103: return "Early Hints";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 421: return "Misdirected Request";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default:  return "Status";
    }
}

static bool parse_u64(const char *s, size_t len, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    if (len == 0 || len > 20)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(s[i] - '0');
        if (v > max)
            return false;
    }
    *out = v;
    return true;
}

/* Finds `name` in a query string "a=1&b=2"; a bare "a" has an empty value. */
static bool query_get(const char *q, size_t qlen, const char *name,
                      const char **val, size_t *vlen)
{
    size_t nlen = strlen(name);
    const char *end = q + qlen;
    while (q < end) {
        const char *amp = memchr(q, '&', (size_t)(end - q));
        const char *stop = amp ? amp : end;
        const char *eq = memchr(q, '=', (size_t)(stop - q));
        const char *kend = eq ? eq : stop;
        if ((size_t)(kend - q) == nlen && memcmp(q, name, nlen) == 0) {
            *val = eq ? eq + 1 : stop;
            *vlen = (size_t)(stop - *val);
            return true;
        }
        if (!amp)
            break;
        q = amp + 1;
    }
    return false;
}

static int hex_value(char ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

static bool token_list_has(const char *v, size_t len, const char *token)
{
    size_t tlen = strlen(token);
    const char *end = v + len;
    while (v < end) {
        const char *comma = memchr(v, ',', (size_t)(end - v));
        const char *stop = comma ? comma : end;
        const char *a = v, *b = stop;
        while (a < b && (*a == ' ' || *a == '\t')) a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t')) b--;
        if ((size_t)(b - a) == tlen && strncasecmp(a, token, tlen) == 0)
            return true;
        if (!comma)
            break;
        v = comma + 1;
    }
    return false;
}

/* ---- response heads ---------------------------------------------------- */

static size_t format_head(char *buf, size_t cap, int status, const char *ctype,
                          int64_t clen, enum conn_kind kind)
{
    int n = snprintf(buf, cap, "HTTP/1.1 %d %s\r\n", status, reason_phrase(status));
    if (ctype)
        n += snprintf(buf + n, cap - (size_t)n, "Content-Type: %s\r\n", ctype);
    if (clen == LEN_CHUNKED)
        n += snprintf(buf + n, cap - (size_t)n, "Transfer-Encoding: chunked\r\n");
    else if (clen >= 0)
        n += snprintf(buf + n, cap - (size_t)n, "Content-Length: %" PRId64 "\r\n", clen);
    n += snprintf(buf + n, cap - (size_t)n, "X-Backend-Id: %s\r\n", backend_id);
    if (kind == KIND_CLOSE)
        n += snprintf(buf + n, cap - (size_t)n, "Connection: close\r\n");
    else if (kind == KIND_KEEP_10)
        n += snprintf(buf + n, cap - (size_t)n, "Connection: keep-alive\r\n");
    n += snprintf(buf + n, cap - (size_t)n, "\r\n");
    return (size_t)n;
}

static enum conn_kind conn_kind_of(const struct conn *c)
{
    if (!c->keep_alive)
        return KIND_CLOSE;
    return c->http_major == 1 && c->http_minor == 0 ? KIND_KEEP_10 : KIND_KEEP_11;
}

static void put_head(struct conn *c, int status, const char *ctype, int64_t clen)
{
    char buf[512 + ID_MAX];
    size_t n = format_head(buf, sizeof buf, status, ctype, clen, conn_kind_of(c));
    evbuffer_add(c->out, buf, n);
}

/* The response is queued whole: go on with the next request, or close. */
static void finish_response(struct conn *c)
{
    if (!c->keep_alive)
        c->closing = true;
}

static void respond_body(struct conn *c, int status, const char *ctype,
                         const char *body, size_t len)
{
    put_head(c, status, ctype, (int64_t)len);
    if (!c->is_head)
        evbuffer_add(c->out, body, len);
    finish_response(c);
}

static void respond_status_text(struct conn *c, int status)
{
    char body[64];
    int n = snprintf(body, sizeof body, "%d %s\n", status, reason_phrase(status));
    respond_body(c, status, "text/plain", body, (size_t)n);
}

/* For a request we cannot (or will not) finish reading. */
static void respond_error_close(struct conn *c, int status)
{
    c->keep_alive = false;
    c->is_head = false;
    respond_status_text(c, status);
    c->closing = true;
}

static void build_root_responses(void)
{
    static const enum conn_kind kinds[3] = { KIND_KEEP_11, KIND_KEEP_10, KIND_CLOSE };
    for (int head = 0; head < 2; head++) {
        for (int k = 0; k < 3; k++) {
            size_t cap = 512 + 2 * ID_MAX;
            char *buf = malloc(cap);
            if (!buf)
                abort();
            size_t n = format_head(buf, cap, 200, "text/plain",
                                   (int64_t)backend_id_len + 1, kinds[k]);
            if (!head) {
                memcpy(buf + n, backend_id, backend_id_len);
                n += backend_id_len;
                buf[n++] = '\n';
            }
            root_response[head][kinds[k]].data = buf;
            root_response[head][kinds[k]].len = n;
        }
    }
}

static void free_root_responses(void)
{
    for (int head = 0; head < 2; head++)
        for (int k = 0; k < 3; k++)
            free(root_response[head][k].data);
}

/* ---- parsing ----------------------------------------------------------- */

static int head_append(struct conn *c, const char *at, size_t len)
{
    if ((size_t)c->head_len + len > HEAD_MAX)
        return -1;
    if (c->head_len + len > c->head_cap) {
        size_t cap = c->head_cap ? c->head_cap : 2048;
        while (cap < c->head_len + len)
            cap *= 2;
        if (cap > HEAD_MAX)
            cap = HEAD_MAX;
        char *p = realloc(c->head, cap);
        if (!p)
            return -1;
        c->head = p;
        c->head_cap = (uint32_t)cap;
    }
    memcpy(c->head + c->head_len, at, len);
    c->head_len += (uint32_t)len;
    return 0;
}

static const struct header *find_header(const struct conn *c, const char *name)
{
    size_t nlen = strlen(name);
    for (uint32_t i = 0; i < c->nheaders; i++) {
        const struct header *h = &c->headers[i];
        if (h->name_len == nlen && strncasecmp(c->head + h->name, name, nlen) == 0)
            return h;
    }
    return NULL;
}

/* Splits the target at head[off, off+len) into path and query, and routes it.
 * An absolute-form target ("http://host/p") is reduced to its path. */
static void resolve_target(struct conn *c, uint32_t off, uint32_t len)
{
    const char *t = c->head + off;
    const char *end = t + len;

    size_t scheme = 0;
    if (len >= 7 && strncasecmp(t, "http://", 7) == 0)
        scheme = 7;
    else if (len >= 8 && strncasecmp(t, "https://", 8) == 0)
        scheme = 8;
    if (scheme) {
        const char *slash = memchr(t + scheme, '/', len - scheme);
        t = slash ? slash : end;
    }
    const char *hash = memchr(t, '#', (size_t)(end - t));
    if (hash)
        end = hash;
    const char *qmark = memchr(t, '?', (size_t)(end - t));
    const char *pend = qmark ? qmark : end;

    c->path_off = (uint32_t)(t - c->head);
    c->path_len = (uint32_t)(pend - t);
    c->query_off = qmark ? (uint32_t)(qmark + 1 - c->head) : (uint32_t)(end - c->head);
    c->query_len = qmark ? (uint32_t)(end - qmark - 1) : 0;

    c->route = R_ROOT;
    for (size_t i = 0; i < sizeof route_table / sizeof route_table[0]; i++) {
        size_t plen = strlen(route_table[i].path);
        if (plen == c->path_len && memcmp(t, route_table[i].path, plen) == 0) {
            c->route = route_table[i].route;
            break;
        }
    }
}

static bool query_param(const struct conn *c, const char *name, const char **val, size_t *vlen)
{
    return query_get(c->head + c->query_off, c->query_len, name, val, vlen);
}

static bool query_u64(const struct conn *c, const char *name, uint64_t max, uint64_t *out)
{
    const char *v;
    size_t vlen;
    return query_param(c, name, &v, &vlen) && parse_u64(v, vlen, max, out);
}

/* /delay?ms=N&then=TARGET: remembers the delay and routes to TARGET. */
static int resolve_delay(struct conn *c)
{
    const char *q = c->head + c->query_off;
    uint32_t qlen = c->query_len;
    uint64_t ms = 0;
    const char *v;
    size_t vlen;

    if (query_param(c, "ms", &v, &vlen) && !parse_u64(v, vlen, DELAY_MAX_MS, &ms))
        return 400;
    c->delay_ms = ms;

    /* `then` runs to the end of the query: find it at a parameter start. */
    const char *then = NULL;
    for (uint32_t i = 0; i + 5 <= qlen; i++) {
        if ((i == 0 || q[i - 1] == '&') && memcmp(q + i, "then=", 5) == 0) {
            then = q + i + 5;
            break;
        }
    }
    if (!then) {
        c->route = R_ROOT;
        return 0;
    }

    /* Decode at the end of head; `then` points into head, so copy by index. */
    uint32_t src = (uint32_t)(then - c->head);
    uint32_t src_end = c->query_off + qlen;
    uint32_t dst = c->head_len;
    for (uint32_t i = src; i < src_end; i++) {
        char ch = c->head[i];
        if (ch == '%' && i + 2 < src_end && hex_value(c->head[i + 1]) >= 0 &&
            hex_value(c->head[i + 2]) >= 0) {
            ch = (char)(hex_value(c->head[i + 1]) * 16 + hex_value(c->head[i + 2]));
            i += 2;
        }
        if (head_append(c, &ch, 1) < 0)
            return 431;
    }
    uint32_t dlen = c->head_len - dst;
    if (dlen == 0 || c->head[dst] != '/')
        return 400;
    resolve_target(c, dst, dlen);
    if (c->route == R_DELAY)    /* no nested delays: answer as "/" */
        c->route = R_ROOT;
    return 0;
}

static int on_message_begin(http_parser *p)
{
    struct conn *c = p->data;
    c->head_len = 0;
    c->url_len = 0;
    c->nheaders = 0;
    c->in_field = false;
    c->headers_done = false;
    c->route = R_ROOT;
    c->delay_ms = 0;
    c->error_status = 0;
    c->body_len = 0;
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    if (c->url_len + len > URL_MAX || head_append(c, at, len) < 0) {
        c->error_status = 414;
        return -1;
    }
    c->url_len += (uint32_t)len;
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    if (c->headers_done)
        return 0;
    if (!c->in_field) {
        if (c->nheaders == HEADERS_MAX) {
            c->error_status = 431;
            return -1;
        }
        struct header *h = &c->headers[c->nheaders++];
        h->name = h->value = c->head_len;
        h->name_len = h->value_len = 0;
        c->in_field = true;
    }
    if (head_append(c, at, len) < 0) {
        c->error_status = 431;
        return -1;
    }
    c->headers[c->nheaders - 1].name_len += (uint32_t)len;
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    if (c->headers_done || c->nheaders == 0)
        return 0;
    struct header *h = &c->headers[c->nheaders - 1];
    if (c->in_field) {
        c->in_field = false;
        h->value = c->head_len;
    }
    if (head_append(c, at, len) < 0) {
        c->error_status = 431;
        return -1;
    }
    h->value_len += (uint32_t)len;
    return 0;
}

static bool request_has_body(const http_parser *p)
{
    return (p->flags & F_CHUNKED) ||
           (p->content_length > 0 && p->content_length != ULLONG_MAX);
}

static int on_headers_complete(http_parser *p)
{
    static const char continue_100[] = "HTTP/1.1 100 Continue\r\n\r\n";
    struct conn *c = p->data;
    c->headers_done = true;
    atomic_fetch_add_explicit(&stat_requests, 1, memory_order_relaxed);
    c->keep_alive = http_should_keep_alive(p);
    c->is_head = p->method == HTTP_HEAD;
    c->http_major = p->http_major;
    c->http_minor = p->http_minor;

    if (p->method == HTTP_CONNECT) {
        c->error_status = 405;
        return -1;
    }
    resolve_target(c, 0, c->url_len);
    if (c->route == R_DELAY) {
        int status = resolve_delay(c);
        if (status) {
            c->error_status = status;
            return -1;
        }
    }

    const struct header *expect = find_header(c, "expect");
    if (expect && p->http_major == 1 && p->http_minor >= 1 &&
        expect->value_len == 12 && strncasecmp(c->head + expect->value, "100-continue", 12) == 0) {
        if (c->route == R_REJECT_EXPECT) {
            c->error_status = 417;
            return -1;
        }
        if (request_has_body(p))
            evbuffer_add(c->out, continue_100, sizeof continue_100 - 1);
    }

    if (c->route == R_SHA256)
        sha256_init(&c->sha);
    if (c->route == R_ECHO) {
        if (!c->echo_body && !(c->echo_body = evbuffer_new()))
            abort();
        evbuffer_drain(c->echo_body, evbuffer_get_length(c->echo_body));
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    c->body_len += len;
    if (c->route == R_SHA256) {
        sha256_update(&c->sha, at, len);
    } else if (c->route == R_ECHO) {
        if (c->body_len > ECHO_BODY_MAX) {
            c->error_status = 413;
            return -1;
        }
        evbuffer_add(c->echo_body, at, len);
    }
    return 0;
}

static int on_message_complete(http_parser *p)
{
    /* Stop here: the next pipelined request waits until this one's answer
     * is queued, which keeps answers in order without a queue. */
    http_parser_pause(p, 1);
    return 0;
}

/* Parses what is buffered. Returns true if it got somewhere: a request
 * answered (or started), or an error answered. */
static bool http_consume(struct conn *c)
{
    size_t avail = c->in_end - c->in_start;
    size_t n = http_parser_execute(&c->parser, &parser_settings, c->in + c->in_start, avail);
    c->in_start += n;

    enum http_errno err = HTTP_PARSER_ERRNO(&c->parser);
    if (err == HPE_PAUSED) {
        if (c->delay_ms) {
            c->busy = BUSY_DELAY;
            struct timeval tv = { (time_t)(c->delay_ms / 1000),
                                  (suseconds_t)(c->delay_ms % 1000) * 1000 };
            /* From now, not from the loop's cached time, which is as old as
             * this turn of the loop: on a slow build that is milliseconds,
             * and the delay would end that much early. */
            event_base_update_cache_time(event_get_base(&c->ev_timer));
            evtimer_add(&c->ev_timer, &tv);
        } else {
            respond(c);
        }
        http_parser_pause(&c->parser, 0);
        return true;
    }
    if (err != HPE_OK) {
        respond_error_close(c, c->error_status ? c->error_status : 400);
        return true;
    }
    return false;
}

/* ---- generated bodies -------------------------------------------------- */

/* The most body bytes from `offset` on that add_pattern takes at once: a
 * file slice runs to the file's end, so a 1 MiB answer is one sendfile(2)
 * call's worth, as when nginx sends a file. */
static size_t pattern_slice_max(const struct conn *c, uint64_t offset)
{
    if (!c->w->pattern_segment)
        return PATTERN_SPAN;
    return PATTERN_FILE_SIZE - (size_t)(offset % PATTERN_FILE_SIZE);
}

/* Queues body bytes [offset, offset + len), len <= pattern_slice_max(). */
static void add_pattern(struct conn *c, uint64_t offset, size_t len)
{
    if (c->w->pattern_segment)
        evbuffer_add_file_segment(c->out, c->w->pattern_segment,
                                  (ev_off_t)(offset % PATTERN_FILE_SIZE), (ev_off_t)len);
    else
        evbuffer_add_reference(c->out, pattern + (offset & 255), len, NULL, NULL);
}

static void stream_refill(struct conn *c)
{
    struct stream *s = &c->stream;
    while (evbuffer_get_length(c->out) < STREAM_LOW_WATER) {
        if (s->left == 0) {
            if (s->chunk_size)
                evbuffer_add(c->out, "0\r\n\r\n", 5);
            c->busy = BUSY_NONE;
            if (s->close_at_end)
                c->closing = true;
            else
                finish_response(c);
            return;
        }
        if (s->chunk_size && s->chunk_left == 0) {
            s->chunk_left = s->chunk_size < s->left ? s->chunk_size : s->left;
            evbuffer_add_printf(c->out, "%" PRIx64 "\r\n", s->chunk_left);
        }
        uint64_t piece = pattern_slice_max(c, s->offset);
        if (piece > s->left)
            piece = s->left;
        if (s->chunk_size && piece > s->chunk_left)
            piece = s->chunk_left;
        add_pattern(c, s->offset, (size_t)piece);
        s->offset += piece;
        s->left -= piece;
        if (s->chunk_size) {
            s->chunk_left -= piece;
            if (s->chunk_left == 0)
                evbuffer_add(c->out, "\r\n", 2);
        }
    }
}

static void stream_start(struct conn *c, uint64_t len, uint64_t chunk_size, bool close_at_end)
{
    c->stream.left = len;
    c->stream.offset = 0;
    c->stream.chunk_size = chunk_size;
    c->stream.chunk_left = 0;
    c->stream.close_at_end = close_at_end;
    c->busy = BUSY_STREAM;
    stream_refill(c);
}

/* ---- routes ------------------------------------------------------------ */

static void respond_root(struct conn *c)
{
    enum conn_kind kind = conn_kind_of(c);
    evbuffer_add(c->out, root_response[c->is_head][kind].data,
                 root_response[c->is_head][kind].len);
    finish_response(c);
}

static void respond_echo(struct conn *c)
{
    struct evbuffer *dump = evbuffer_new();
    if (!dump)
        abort();
    evbuffer_add_printf(dump, "%s ", http_method_str(c->parser.method));
    evbuffer_add(dump, c->head, c->url_len);
    evbuffer_add_printf(dump, " HTTP/%u.%u\r\n", c->http_major, c->http_minor);
    for (uint32_t i = 0; i < c->nheaders; i++) {
        const struct header *h = &c->headers[i];
        evbuffer_add(dump, c->head + h->name, h->name_len);
        evbuffer_add(dump, ": ", 2);
        evbuffer_add(dump, c->head + h->value, h->value_len);
        evbuffer_add(dump, "\r\n", 2);
    }
    evbuffer_add(dump, "\r\n", 2);

    size_t body = evbuffer_get_length(c->echo_body);
    put_head(c, 200, "text/plain", (int64_t)(evbuffer_get_length(dump) + body));
    if (!c->is_head) {
        evbuffer_add_buffer(c->out, dump);
        evbuffer_add_buffer(c->out, c->echo_body);
    }
    evbuffer_drain(c->echo_body, evbuffer_get_length(c->echo_body));
    evbuffer_free(dump);
    finish_response(c);
}

static void respond_sha256(struct conn *c)
{
    uint8_t digest[SHA256_DIGEST_LEN];
    char hex[2 * SHA256_DIGEST_LEN + 1];
    char body[128];
    sha256_final(&c->sha, digest);
    hex_encode(digest, sizeof digest, hex);
    int n = snprintf(body, sizeof body, "%s %" PRIu64 "\n", hex, c->body_len);
    respond_body(c, 200, "text/plain", body, (size_t)n);
}

static void respond_bytes(struct conn *c)
{
    uint64_t n, chunk = 16384;
    const char *v;
    size_t vlen;
    bool chunked = query_param(c, "chunked", &v, &vlen) && vlen == 1 && v[0] == '1';

    if (!query_u64(c, "n", BYTES_MAX, &n) ||
        (query_param(c, "chunk", &v, &vlen) &&
         (!parse_u64(v, vlen, 1u << 30, &chunk) || chunk == 0))) {
        respond_status_text(c, 400);
        return;
    }
    if (c->http_major == 1 && c->http_minor == 0)
        chunked = false;    /* an HTTP/1.0 client cannot read chunks */

    put_head(c, 200, "application/octet-stream", chunked ? LEN_CHUNKED : (int64_t)n);
    if (c->is_head)
        finish_response(c);
    else
        stream_start(c, n, chunked ? chunk : 0, false);
}

static void respond_close_mid(struct conn *c)
{
    uint64_t n;
    if (!query_u64(c, "n", BYTES_MAX, &n)) {
        respond_status_text(c, 400);
        return;
    }
    c->keep_alive = false;
    put_head(c, 200, "application/octet-stream", (int64_t)n);
    if (c->is_head)
        c->closing = true;
    else
        stream_start(c, n / 2, 0, true);
}

static void respond_status(struct conn *c)
{
    uint64_t code;
    if (!query_u64(c, "code", 599, &code) || code < 100 || code == 101) {
        respond_status_text(c, 400);
        return;
    }
    int status = (int)code;
    if (status < 200) {
        evbuffer_add_printf(c->out, "HTTP/1.1 %d %s\r\nX-Backend-Id: %s\r\n\r\n",
                            status, reason_phrase(status), backend_id);
        respond_root(c);
    } else if (status == 204 || status == 304) {
        put_head(c, status, NULL, LEN_NONE);
        finish_response(c);
    } else {
        respond_status_text(c, status);
    }
}

static void respond_stats(struct conn *c)
{
    char body[256 + 2 * ID_MAX];
    char id[2 * ID_MAX + 1];
    size_t j = 0;
    for (size_t i = 0; i < backend_id_len; i++) {
        if (backend_id[i] == '"' || backend_id[i] == '\\')
            id[j++] = '\\';
        id[j++] = backend_id[i];
    }
    id[j] = '\0';
    int n = snprintf(body, sizeof body,
                     "{\"id\":\"%s\",\"connections\":%llu,\"requests\":%llu}\n", id,
                     (unsigned long long)atomic_load_explicit(&stat_connections, memory_order_relaxed),
                     (unsigned long long)atomic_load_explicit(&stat_requests, memory_order_relaxed));
    respond_body(c, 200, "application/json", body, (size_t)n);
}

static void respond_ws_upgrade(struct conn *c)
{
    const struct header *upgrade = find_header(c, "upgrade");
    const struct header *connection = find_header(c, "connection");
    const struct header *key = find_header(c, "sec-websocket-key");
    const struct header *version = find_header(c, "sec-websocket-version");
    const struct header *proto = find_header(c, "sec-websocket-protocol");

    if (c->parser.method != HTTP_GET || !c->parser.upgrade || c->http_major != 1 ||
        c->http_minor < 1 || !upgrade ||
        !token_list_has(c->head + upgrade->value, upgrade->value_len, "websocket") ||
        !connection ||
        !token_list_has(c->head + connection->value, connection->value_len, "upgrade") ||
        !key || key->value_len != 24) {
        respond_error_close(c, 400);
        return;
    }
    if (!version || version->value_len != 2 || memcmp(c->head + version->value, "13", 2) != 0) {
        /* RFC 6455 4.4: name the version we speak. */
        evbuffer_add_printf(c->out,
                            "HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\n"
                            "Content-Length: 0\r\nX-Backend-Id: %s\r\nConnection: close\r\n\r\n",
                            backend_id);
        c->closing = true;
        return;
    }

    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    struct sha1 sha;
    uint8_t digest[SHA1_DIGEST_LEN];
    char accept[32];
    sha1_init(&sha);
    sha1_update(&sha, c->head + key->value, key->value_len);
    sha1_update(&sha, guid, sizeof guid - 1);
    sha1_final(&sha, digest);
    base64_encode(digest, sizeof digest, accept);

    evbuffer_add_printf(c->out,
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n", accept);
    if (proto) {
        /* Pick the client's first choice. */
        const char *v = c->head + proto->value, *end = v + proto->value_len;
        const char *comma = memchr(v, ',', proto->value_len);
        const char *stop = comma ? comma : end;
        while (stop > v && (stop[-1] == ' ' || stop[-1] == '\t'))
            stop--;
        evbuffer_add(c->out, "Sec-WebSocket-Protocol: ", 24);
        evbuffer_add(c->out, v, (size_t)(stop - v));
        evbuffer_add(c->out, "\r\n", 2);
    }
    evbuffer_add_printf(c->out, "X-Backend-Id: %s\r\n\r\n", backend_id);
    c->ws = true;
    memset(&c->wsf, 0, sizeof c->wsf);
}

/* Answers the request that just finished parsing (or whose delay expired). */
static void respond(struct conn *c)
{
    static const char garbage[] = "HTTP/1.1 ???\r\nthis is not http\r\n\r\n";

    switch (c->route) {
    case R_ROOT:
    case R_DELAY:
        respond_root(c);
        break;
    case R_ECHO:
        respond_echo(c);
        break;
    case R_SHA256:
        respond_sha256(c);
        break;
    case R_BYTES:
        respond_bytes(c);
        break;
    case R_STATUS:
        respond_status(c);
        break;
    case R_CLOSE_MID:
        respond_close_mid(c);
        break;
    case R_CLOSE_BEFORE:
        c->closing = true;
        break;
    case R_GARBAGE:
        evbuffer_add(c->out, garbage, sizeof garbage - 1);
        c->closing = true;
        break;
    case R_STATS:
        respond_stats(c);
        break;
    case R_WS:
        respond_ws_upgrade(c);
        break;
    case R_REJECT_EXPECT:
        respond_status_text(c, 417);
        break;
    }
}

/* ---- WebSocket --------------------------------------------------------- */

static size_t ws_header_need(const uint8_t *h, size_t have)
{
    if (have < 2)
        return 2;
    size_t len7 = h[1] & 0x7f;
    return 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + ((h[1] & 0x80) ? 4 : 0);
}

static void ws_fail(struct conn *c, uint16_t code)
{
    uint8_t frame[4] = { 0x88, 2, (uint8_t)(code >> 8), (uint8_t)code };
    evbuffer_add(c->out, frame, sizeof frame);
    c->closing = true;
}

static void ws_end_frame(struct conn *c)
{
    c->wsf.in_payload = false;
    if (c->wsf.opcode == 0x8)
        c->closing = true;
}

static void ws_begin_frame(struct conn *c)
{
    struct ws_state *s = &c->wsf;
    const uint8_t *h = s->hdr;
    bool fin = h[0] & 0x80;
    uint8_t opcode = h[0] & 0x0f;
    uint64_t len = h[1] & 0x7f;
    size_t pos = 2;

    s->hdr_len = 0;
    if (h[0] & 0x70) {
        ws_fail(c, 1002);
        return;
    }
    if (opcode > 2 && (opcode < 8 || opcode > 10)) {
        ws_fail(c, 1002);
        return;
    }
    if (!(h[1] & 0x80)) {           /* clients must mask */
        ws_fail(c, 1002);
        return;
    }
    if (len == 126) {
        len = (uint64_t)h[2] << 8 | h[3];
        pos = 4;
    } else if (len == 127) {
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | h[2 + i];
        pos = 10;
        if (len >> 63) {
            ws_fail(c, 1002);
            return;
        }
    }
    if ((opcode & 0x8) && (!fin || len > 125)) {
        ws_fail(c, 1002);
        return;
    }
    if (len > WS_FRAME_MAX) {
        ws_fail(c, 1009);
        return;
    }
    memcpy(s->mask, h + pos, 4);
    s->mask_pos = 0;
    s->opcode = opcode;
    s->left = len;
    s->discard = opcode == 0xA;
    s->in_payload = true;

    if (!s->discard) {
        uint8_t out[10];
        size_t n = 0;
        out[n++] = (uint8_t)((fin ? 0x80 : 0) | (opcode == 0x9 ? 0xA : opcode));
        if (len < 126) {
            out[n++] = (uint8_t)len;
        } else if (len <= 0xffff) {
            out[n++] = 126;
            out[n++] = (uint8_t)(len >> 8);
            out[n++] = (uint8_t)len;
        } else {
            out[n++] = 127;
            for (int i = 7; i >= 0; i--)
                out[n++] = (uint8_t)(len >> (8 * i));
        }
        evbuffer_add(c->out, out, n);
    }
    if (len == 0)
        ws_end_frame(c);
}

static void ws_unmask_out(struct conn *c, const uint8_t *p, size_t n)
{
    struct ws_state *s = &c->wsf;
    struct evbuffer_iovec v;
    if (evbuffer_reserve_space(c->out, (ev_ssize_t)n, &v, 1) < 1)
        abort();
    uint8_t *d = v.iov_base;
    for (size_t i = 0; i < n; i++)
        d[i] = p[i] ^ s->mask[(s->mask_pos + i) & 3];
    s->mask_pos = (uint8_t)((s->mask_pos + n) & 3);
    v.iov_len = n;
    evbuffer_commit_space(c->out, &v, 1);
}

static bool ws_consume(struct conn *c)
{
    struct ws_state *s = &c->wsf;
    const uint8_t *start = (const uint8_t *)c->in + c->in_start;
    const uint8_t *p = start, *end = (const uint8_t *)c->in + c->in_end;

    while (p < end && !c->closing && evbuffer_get_length(c->out) < OUT_HIGH_WATER) {
        if (!s->in_payload) {
            size_t need = ws_header_need(s->hdr, s->hdr_len);
            while (s->hdr_len < need && p < end) {
                s->hdr[s->hdr_len++] = *p++;
                need = ws_header_need(s->hdr, s->hdr_len);
            }
            if (s->hdr_len < need)
                break;
            ws_begin_frame(c);
            continue;
        }
        size_t take = (size_t)(end - p) < s->left ? (size_t)(end - p) : (size_t)s->left;
        if (s->discard)
            s->mask_pos = (uint8_t)((s->mask_pos + take) & 3);
        else
            ws_unmask_out(c, p, take);
        p += take;
        s->left -= take;
        if (s->left == 0)
            ws_end_frame(c);
    }
    c->in_start += (size_t)(p - start);
    return p != start;
}

/* ---- connections ------------------------------------------------------- */

static void conn_free(struct conn *c)
{
    struct worker *w = c->w;
    event_del(&c->ev_read);
    event_del(&c->ev_write);
    event_del(&c->ev_timer);
    close(c->fd);
    evbuffer_free(c->out);
    if (c->echo_body)
        evbuffer_free(c->echo_body);
    free(c->head);
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    free(c);
}

static void conn_set_reading(struct conn *c, bool on)
{
    if (on == c->reading)
        return;
    c->reading = on;
    if (on)
        event_add(&c->ev_read, NULL);
    else
        event_del(&c->ev_read);
}

static void conn_set_writing(struct conn *c, bool on)
{
    if (on == c->writing)
        return;
    c->writing = on;
    if (on)
        event_add(&c->ev_write, NULL);
    else
        event_del(&c->ev_write);
}

/* Our answer is complete: shut our side, then drain the client's. */
static void conn_start_close(struct conn *c)
{
    if (c->peer_eof) {
        conn_free(c);
        return;
    }
    shutdown(c->fd, SHUT_WR);
    c->lingering = true;
    conn_set_writing(c, false);
    conn_set_reading(c, true);
    struct timeval tv = { LINGER_MS / 1000, (LINGER_MS % 1000) * 1000 };
    evtimer_add(&c->ev_timer, &tv);
}

/* Writes what it can, then decides what to wait for. May free c. */
static void conn_flush(struct conn *c)
{
    while (evbuffer_get_length(c->out) > 0) {
        int n = evbuffer_write(c->out, c->fd);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                break;
            conn_free(c);
            return;
        }
        if (n == 0)
            break;
    }
    size_t pending = evbuffer_get_length(c->out);
    if (pending == 0 && c->closing) {
        conn_start_close(c);
        return;
    }
    conn_set_writing(c, pending > 0 || c->busy == BUSY_STREAM);
    conn_set_reading(c, !c->peer_eof && !c->closing && pending < OUT_HIGH_WATER &&
                        c->in_end - c->in_start < IN_BUF_SIZE);
}

/* Moves the connection forward as far as it can go without waiting. */
static void conn_drive(struct conn *c)
{
    for (;;) {
        if (c->busy == BUSY_STREAM) {
            stream_refill(c);
            if (c->busy == BUSY_STREAM)
                break;
        }
        if (c->busy != BUSY_NONE || c->closing)
            break;
        if (evbuffer_get_length(c->out) >= OUT_HIGH_WATER)
            break;
        if (c->in_start == c->in_end)
            break;
        if (!(c->ws ? ws_consume(c) : http_consume(c)))
            break;
    }
    if (c->in_start == c->in_end)
        c->in_start = c->in_end = 0;
    /* The client is done sending: once nothing is in progress, neither are we. */
    if (c->peer_eof && c->busy == BUSY_NONE)
        c->closing = true;
    conn_flush(c);
}

static void linger_drain(struct conn *c)
{
    char sink[16384];
    for (int i = 0; i < 16; i++) {
        ssize_t n = recv(c->fd, sink, sizeof sink, 0);
        if (n > 0)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        conn_free(c);
        return;
    }
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    if (c->lingering) {
        linger_drain(c);
        return;
    }
    if (c->in_start > 0) {
        memmove(c->in, c->in + c->in_start, c->in_end - c->in_start);
        c->in_end -= c->in_start;
        c->in_start = 0;
    }
    if (c->in_end == IN_BUF_SIZE) {
        conn_set_reading(c, false);
        return;
    }
    ssize_t n = recv(fd, c->in + c->in_end, IN_BUF_SIZE - c->in_end, 0);
    if (n > 0) {
        c->in_end += (size_t)n;
    } else if (n == 0) {
        c->peer_eof = true;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
        return;
    } else {
        conn_free(c);
        return;
    }
    conn_drive(c);
}

static void on_writable(evutil_socket_t fd, short what, void *arg)
{
    conn_drive(arg);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    if (c->lingering) {
        conn_free(c);
        return;
    }
    if (c->busy == BUSY_DELAY) {
        c->busy = BUSY_NONE;
        respond(c);
        conn_drive(c);
    }
}

static void conn_new(struct worker *w, int fd)
{
    struct conn *c = malloc(sizeof *c);
    if (!c) {
        close(fd);
        return;
    }
    /* The input buffer needs no zeroing. */
    memset(c, 0, offsetof(struct conn, in));
    c->w = w;
    c->fd = fd;
    if (!(c->out = evbuffer_new())) {
        free(c);
        close(fd);
        return;
    }
    /* Nothing reads c->out but the socket writes: lets file segments use sendfile. */
    evbuffer_set_flags(c->out, EVBUFFER_FLAG_DRAINS_TO_FD);
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    event_assign(&c->ev_read, w->base, fd, EV_READ | EV_PERSIST, on_readable, c);
    event_assign(&c->ev_write, w->base, fd, EV_WRITE | EV_PERSIST, on_writable, c);
    evtimer_assign(&c->ev_timer, w->base, on_timer, c);
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    conn_set_reading(c, true);
}

static void on_accept(evutil_socket_t lfd, short what, void *arg)
{
    struct listener *l = arg;
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                fprintf(stderr, "sb-backend: accept: %s\n", strerror(errno));
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        atomic_fetch_add_explicit(&stat_connections, 1, memory_order_relaxed);
        conn_new(l->w, fd);
    }
}

/* ---- workers and start-up ---------------------------------------------- */

struct listen_addr {
    const char *text;
    struct sockaddr_storage ss;
    socklen_t len;
};

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    event_base_loopbreak(w->base);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    event_base_dispatch(w->base);
    return NULL;
}

static void worker_destroy(struct worker *w)
{
    while (w->conns)
        conn_free(w->conns);
    for (int i = 0; i < w->nlisteners; i++) {
        event_del(&w->listeners[i].ev);
        close(w->listeners[i].fd);
    }
    event_del(&w->ev_wake);
    close(w->wake_fds[0]);
    close(w->wake_fds[1]);
    if (w->pattern_segment)
        evbuffer_file_segment_free(w->pattern_segment);
    event_base_free(w->base);
}

static int open_listener(struct listen_addr *a, bool reuseport)
{
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fprintf(stderr, "sb-backend: socket: %s\n", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (reuseport)
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (a->ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&a->ss, a->len) < 0 || listen(fd, 4096) < 0) {
        fprintf(stderr, "sb-backend: listen %s: %s\n", a->text, strerror(errno));
        close(fd);
        return -1;
    }
    /* A port of 0 becomes the kernel's choice, shared by the other workers. */
    struct sockaddr_storage bound;
    socklen_t blen = sizeof bound;
    if (getsockname(fd, (struct sockaddr *)&bound, &blen) == 0) {
        a->ss = bound;
        a->len = blen;
    }
    return fd;
}

static bool parse_listen(const char *text, struct listen_addr *a)
{
    char host[256], port[16];
    const char *colon;

    if (text[0] == '[') {
        const char *close_br = strchr(text, ']');
        if (!close_br || close_br[1] != ':' || (size_t)(close_br - text - 1) >= sizeof host)
            return false;
        memcpy(host, text + 1, (size_t)(close_br - text - 1));
        host[close_br - text - 1] = '\0';
        colon = close_br + 1;
    } else {
        colon = strrchr(text, ':');
        if (!colon || (size_t)(colon - text) >= sizeof host)
            return false;
        memcpy(host, text, (size_t)(colon - text));
        host[colon - text] = '\0';
    }
    if (strlen(colon + 1) == 0 || strlen(colon + 1) >= sizeof port)
        return false;
    strcpy(port, colon + 1);

    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
    struct addrinfo *res;
    const char *node = (host[0] == '\0' || strcmp(host, "*") == 0) ? NULL : host;
    if (!node)
        hints.ai_family = AF_INET;
    if (getaddrinfo(node, port, &hints, &res) != 0)
        return false;
    memcpy(&a->ss, res->ai_addr, res->ai_addrlen);
    a->len = res->ai_addrlen;
    a->text = text;
    freeaddrinfo(res);
    return true;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: sb-backend --listen HOST:PORT [--listen HOST:PORT ...] "
               "[--id NAME] [--threads N]\n");
}

static const char *option_value(int argc, char **argv, int *i, const char *name)
{
    size_t nlen = strlen(name);
    if (strncmp(argv[*i], name, nlen) != 0)
        return NULL;
    if (argv[*i][nlen] == '=')
        return argv[*i] + nlen + 1;
    if (argv[*i][nlen] == '\0' && *i + 1 < argc)
        return argv[++*i];
    return NULL;
}

/* The pattern's first PATTERN_FILE_SIZE bytes as a memory file, for
 * sendfile; -1 where that fails. PATTERN_SPAN is a multiple of the period,
 * so copies of the table's first PATTERN_SPAN bytes continue each other. */
static int pattern_file_open(void)
{
    int fd = memfd_create("sb-backend-pattern", MFD_CLOEXEC);
    if (fd < 0)
        return -1;
    for (size_t done = 0; done < PATTERN_FILE_SIZE;) {
        size_t at = done % PATTERN_SPAN;
        ssize_t n = write(fd, pattern + at, PATTERN_SPAN - at);
        if (n <= 0) {
            close(fd);
            return -1;
        }
        done += (size_t)n;
    }
    return fd;
}

int main(int argc, char **argv)
{
    struct listen_addr addrs[MAX_LISTEN];
    int naddrs = 0, nthreads = 1;

    for (int i = 1; i < argc; i++) {
        const char *v;
        if ((v = option_value(argc, argv, &i, "--listen"))) {
            if (naddrs == MAX_LISTEN || !parse_listen(v, &addrs[naddrs])) {
                fprintf(stderr, "sb-backend: bad --listen %s (HOST:PORT or [V6]:PORT)\n", v);
                return 2;
            }
            naddrs++;
        } else if ((v = option_value(argc, argv, &i, "--id"))) {
            size_t len = strlen(v);
            if (len == 0 || len > ID_MAX || strpbrk(v, "\r\n")) {
                fprintf(stderr, "sb-backend: --id must be 1 to %d characters on one line\n", ID_MAX);
                return 2;
            }
            backend_id = v;
            backend_id_len = len;
        } else if ((v = option_value(argc, argv, &i, "--threads"))) {
            uint64_t n;
            if (!parse_u64(v, strlen(v), MAX_THREADS, &n) || n == 0) {
                fprintf(stderr, "sb-backend: --threads must be 1 to %d\n", MAX_THREADS);
                return 2;
            }
            nthreads = (int)n;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (naddrs == 0) {
        usage(stderr);
        return 2;
    }

    signal(SIGPIPE, SIG_IGN);
    for (size_t i = 0; i < sizeof pattern; i++)
        pattern[i] = (uint8_t)(i * 31 + 7);
    pattern_fd = pattern_file_open();
    build_root_responses();
    parser_settings.on_message_begin = on_message_begin;
    parser_settings.on_url = on_url;
    parser_settings.on_header_field = on_header_field;
    parser_settings.on_header_value = on_header_value;
    parser_settings.on_headers_complete = on_headers_complete;
    parser_settings.on_body = on_body;
    parser_settings.on_message_complete = on_message_complete;

    /* Workers inherit this mask, so the signals reach only sigwait() below. */
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);

    /* Without SO_REUSEPORT a port already taken fails loudly; with it (only
     * needed for several threads) a probe bind catches the same mistake. */
    bool reuseport = nthreads > 1;
    if (reuseport) {
        for (int a = 0; a < naddrs; a++) {
            int fd = open_listener(&addrs[a], false);
            if (fd < 0)
                return 1;
            close(fd);
        }
    }

    struct worker *workers = calloc((size_t)nthreads, sizeof *workers);
    if (!workers)
        return 1;
    int exit_code = 0, started = 0;
    for (int t = 0; t < nthreads; t++) {
        struct worker *w = &workers[t];
        struct event_config *cfg = event_config_new();
        event_config_set_flag(cfg, EVENT_BASE_FLAG_NOLOCK);
        w->base = event_base_new_with_config(cfg);
        event_config_free(cfg);
        if (!w->base || pipe2(w->wake_fds, O_NONBLOCK | O_CLOEXEC) < 0) {
            fprintf(stderr, "sb-backend: cannot create event loop\n");
            return 1;
        }
        event_assign(&w->ev_wake, w->base, w->wake_fds[0], EV_READ | EV_PERSIST, on_wake, w);
        event_add(&w->ev_wake, NULL);
        if (pattern_fd >= 0)
            w->pattern_segment = evbuffer_file_segment_new(pattern_fd, 0, PATTERN_FILE_SIZE, 0);
        for (int a = 0; a < naddrs; a++) {
            struct listener *l = &w->listeners[w->nlisteners];
            l->w = w;
            l->fd = open_listener(&addrs[a], reuseport);
            if (l->fd < 0) {
                exit_code = 1;
                break;
            }
            w->nlisteners++;
            event_assign(&l->ev, w->base, l->fd, EV_READ | EV_PERSIST, on_accept, l);
            event_add(&l->ev, NULL);
        }
        if (exit_code)
            break;
    }

    if (exit_code == 0) {
        for (; started < nthreads; started++) {
            if (pthread_create(&workers[started].thread, NULL, worker_main, &workers[started]) != 0) {
                fprintf(stderr, "sb-backend: cannot start thread\n");
                exit_code = 1;
                break;
            }
        }
    }
    if (exit_code == 0) {
        for (int a = 0; a < naddrs; a++) {
            char host[INET6_ADDRSTRLEN + 2], port[8];
            getnameinfo((struct sockaddr *)&addrs[a].ss, addrs[a].len, host, sizeof host,
                        port, sizeof port, NI_NUMERICHOST | NI_NUMERICSERV);
            fprintf(stderr, "sb-backend %s: listening on %s%s%s:%s (%d thread%s)\n", backend_id,
                    addrs[a].ss.ss_family == AF_INET6 ? "[" : "", host,
                    addrs[a].ss.ss_family == AF_INET6 ? "]" : "", port, nthreads,
                    nthreads == 1 ? "" : "s");
        }
        printf("ready\n");
        fflush(stdout);
        int sig;
        sigwait(&stop_signals, &sig);
    }

    for (int t = 0; t < started; t++) {
        if (write(workers[t].wake_fds[1], "x", 1) < 0)
            fprintf(stderr, "sb-backend: cannot wake worker %d\n", t);
        pthread_join(workers[t].thread, NULL);
    }
    for (int t = 0; t < nthreads; t++)
        if (workers[t].base)
            worker_destroy(&workers[t]);
    free(workers);
    if (pattern_fd >= 0)
        close(pattern_fd);
    free_root_responses();
    libevent_global_shutdown();
    return exit_code;
}
