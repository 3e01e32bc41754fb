/*
 * chatload - load generator for the chat (WebSocket subprotocol
 * "switchboard.chat", dashboard/chat.h), for tests/bench/chat_load.py.
 *
 *     chatload --port P [--host 127.0.0.1] [--path /chat/ws] [--conns 5000]
 *              [--room-size 100] [--room-prefix load-] [--interval 10]
 *              [--duration 60] [--ramp-rate 500] [--max-pending 200]
 *              [--timeout 30] [--drain 10] [--pad 0]
 *
 * One thread, one epoll loop, non-blocking sockets. Three phases:
 *
 *   ramp    --conns connections are opened, at most --ramp-rate a second
 *           and --max-pending not yet in their room at once. Each does the
 *           RFC 6455 handshake (Sec-WebSocket-Protocol: switchboard.chat,
 *           Origin: http://HOST:PORT as the Host), waits for "welcome" and
 *           sends {"type":"join","room":"<prefix>K","name":"uN"}: user N is
 *           in room K = N / --room-size (the rooms must exist: configure
 *           them under chat.rooms). A connection not in its room within
 *           --timeout seconds of its start is failed. The phase ends when
 *           every connection is in its room or failed.
 *   steady  for --duration seconds every joined user sends one "say" every
 *           --interval seconds. The phases are spread: a room's members
 *           are evenly spaced over the interval, and rooms are offset from
 *           each other, so the load is smooth. The text is
 *           "t=<CLOCK_MONOTONIC ns> u=<user> s=<seq> w=<CLOCK_REALTIME ms>"
 *           (plus --pad 'x's).
 *   drain   no more sending; reading goes on until every expected delivery
 *           is in, or --drain seconds.
 *
 * Every "message" frame carrying such a text is one delivery: its delay
 * (receive time - send time, same machine, same clock) goes into a
 * log-linear histogram (0.8 % resolution): all deliveries, the sender's own
 * echo alone, and per message the delay of its last recipient. Expected
 * deliveries: per message sent, the number of users of the sender's room
 * that were in the room (as far as this client knows) at the time, the
 * sender included. The server's "ts" (wall clock, ms, stamped when it
 * publishes) splits the delay in two legs: in (send -> ts, from the
 * sender's own copy) and out (ts -> receipt, every copy); and a timeline
 * gives, per second of the steady phase (by receive time), messages sent,
 * deliveries, mean and max delay.
 *
 * Pings are answered; fragmented messages and 16/64-bit lengths are
 * handled; every frame sent is masked with a fresh key. A close frame from
 * the server is counted by its code and answered.
 *
 * stdout: one JSON line per phase boundary, {"event":"ramped",...} and
 * {"event":"steady_end",...} (for a harness sampling the server between
 * them), then the result as the last line:
 *
 *   {"conns_attempted":N,"conns_established":N,"conns_joined":N,
 *    "conns_failed":N,"failures":{"connect":0,"handshake":0,...},
 *    "messages_sent":N,"deliveries":N,"deliveries_expected":N,
 *    "delay_ms":{"count":N,"p50":..,"p90":..,"p99":..,"max":..,"mean":..},
 *    "echo_delay_ms":{...},"last_recipient_ms":{...},"in_ms":{...},
 *    "out_ms":{...},
 *    "timeline":[[second,sent,deliveries,mean_ms,max_ms,pings],...],
 *    "errors":{"rate_limited":N,...},"frames":{"presence":N,...},...}
 *
 * Exit status: 0 when every connection joined, none was lost, no error
 * frame came and deliveries == expected; 1 otherwise (the JSON is still
 * printed); 2 on a usage error. Bounded: the ramp ends after at most
 * --conns/--ramp-rate + --timeout seconds (what is not in its room by then
 * has failed), then --duration + --drain; SIGINT/SIGTERM end the run early
 * with the figures so far.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Sec-WebSocket-Key from RFC 6455 section 1.3 and the accept value it
 * gives: a fixed key is enough for a load client on loopback. */
#define WS_KEY "dGhlIHNhbXBsZSBub25jZQ=="
#define WS_ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
#define PROTO "switchboard.chat"

#define READ_CHUNK (256 * 1024)
#define MAX_HEAD 16384
#define MAX_MESSAGE (16u << 20)     /* a longer message is a protocol error */
#define SLOTS 16                    /* messages per sender tracked for "last recipient" */
#define MAX_CODES 32

enum state { ST_IDLE, ST_CONNECTING, ST_HANDSHAKE, ST_WELCOME, ST_JOINING, ST_JOINED, ST_DEAD };

struct slot {
    uint32_t seq;                   /* +1; 0 = unused */
    uint32_t expected, got;
    uint64_t max_delay_ns;
};

struct conn {
    int fd;
    int user, room;
    enum state st;
    bool was_joined, last_frag;
    uint64_t started_ns;
    uint32_t seq;                   /* messages sent */
    unsigned char *in;              /* bytes read, not yet parsed */
    size_t in_len, in_cap;
    unsigned char *msg;             /* a fragmented message being gathered */
    size_t msg_len, msg_cap;
    int msg_op;                     /* -1: none */
    unsigned char *out;             /* bytes to write */
    size_t out_len, out_off, out_cap;
    struct slot slots[SLOTS];
};

static struct {
    const char *host, *path, *prefix;
    int port, conns, room_size, pad, max_pending;
    double interval, duration, ramp_rate, timeout, drain;
} opt = { "127.0.0.1", "/chat/ws", "load-", 0, 5000, 100, 0, 200,
          10.0, 60.0, 500.0, 30.0, 10.0 };

/* ---- histogram ------------------------------------------------------------ */

#define SUB_BITS 7
#define SUB (1u << SUB_BITS)
#define NBUCKETS (SUB + 58 * SUB)

struct hist {
    uint64_t count, max, sum;       /* µs */
    uint64_t b[NBUCKETS];
};

static unsigned bucket_of(uint64_t v)
{
    if (v < SUB)
        return (unsigned)v;
    unsigned e = 63 - (unsigned)__builtin_clzll(v);            /* >= SUB_BITS */
    unsigned sub = (unsigned)(v >> (e - SUB_BITS)) & (SUB - 1);
    unsigned i = SUB + (e - SUB_BITS) * SUB + sub;
    return i < NBUCKETS ? i : NBUCKETS - 1;
}

/* The middle of bucket i, in µs. */
static double bucket_value(unsigned i)
{
    if (i < SUB)
        return i;
    unsigned e = (i - SUB) / SUB + SUB_BITS, sub = (i - SUB) % SUB;
    double width = (double)(1ull << (e - SUB_BITS));
    double lo = (double)(SUB + sub) * width;
    return lo + width / 2;
}

static void hist_add(struct hist *h, uint64_t ns)
{
    uint64_t us = ns / 1000;
    h->b[bucket_of(us)]++;
    h->count++;
    h->sum += us;
    if (us > h->max)
        h->max = us;
}

static double hist_pct(const struct hist *h, double p)
{
    if (!h->count)
        return 0;
    double want = p * (double)h->count;
    uint64_t rank = (uint64_t)want;
    if ((double)rank < want)
        rank++;
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < NBUCKETS; i++) {
        seen += h->b[i];
        if (seen >= rank) {
            double v = bucket_value(i);
            return v > (double)h->max ? (double)h->max : v;
        }
    }
    return (double)h->max;
}

static void hist_print(const char *name, const struct hist *h)
{
    printf("\"%s\":{\"count\":%llu,\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"p999\":%.3f,"
           "\"max\":%.3f,\"mean\":%.3f}", name, (unsigned long long)h->count,
           hist_pct(h, 0.50) / 1000, hist_pct(h, 0.90) / 1000, hist_pct(h, 0.99) / 1000,
           hist_pct(h, 0.999) / 1000, (double)h->max / 1000,
           h->count ? (double)h->sum / (double)h->count / 1000 : 0.0);
}

/* ---- counters ------------------------------------------------------------- */

struct counter {
    char name[24];
    uint64_t n;
};

struct counters {
    struct counter c[MAX_CODES];
    unsigned n;
};

static void count_name(struct counters *cs, const char *name, size_t len)
{
    if (len >= sizeof cs->c[0].name)
        len = sizeof cs->c[0].name - 1;
    for (unsigned i = 0; i < cs->n; i++)
        if (strlen(cs->c[i].name) == len && memcmp(cs->c[i].name, name, len) == 0) {
            cs->c[i].n++;
            return;
        }
    unsigned i = cs->n < MAX_CODES ? cs->n++ : MAX_CODES - 1;
    if (i == MAX_CODES - 1 && cs->n == MAX_CODES) {
        name = "other";
        len = 5;
    }
    memcpy(cs->c[i].name, name, len);
    cs->c[i].name[len] = '\0';
    cs->c[i].n++;
}

static void counters_print(const char *name, const struct counters *cs)
{
    printf("\"%s\":{", name);
    for (unsigned i = 0; i < cs->n; i++) {
        printf("%s\"", i ? "," : "");
        for (const char *p = cs->c[i].name; *p; p++)
            if ((unsigned char)*p >= 0x20 && *p != '"' && *p != '\\')
                putchar(*p);
        printf("\":%llu", (unsigned long long)cs->c[i].n);
    }
    printf("}");
}

/* ---- state ------------------------------------------------------------------ */

static struct conn *conns;
static int ep = -1;
static int n_rooms;
static int *room_joined;            /* users of each room currently joined */
static struct sockaddr_in addr;
static char handshake[1024];
static size_t handshake_len;
static unsigned char *rbuf;
static uint64_t rng = 0x9e3779b97f4a7c15ull;
static volatile sig_atomic_t stop_flag;

static uint64_t n_established, n_joined, n_failed, n_pending, n_lost;
static uint64_t sent, expected, deliveries, echoes, foreign, complete_msgs;
static uint64_t tx_bytes, rx_bytes, pings;
static bool steady;                 /* counting: the steady phase and the drain */
static struct hist h_all, h_echo, h_last, h_in, h_out;
static uint64_t t_steady0;          /* ns: the steady phase's start */

/* Per second of the steady phase and the drain, by receive time. */
#define TIMELINE_MAX 3600
struct second {
    uint64_t sent, deliveries, sum_us, max_us, pings;
};
static struct second *timeline;
static size_t timeline_len;
static struct counters failures, errors, frames, closes, hs_status;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* "2026-11-24T07:40:00.123Z" -> ms since the epoch, or -1. */
static int64_t parse_iso_ms(const char *p, size_t len)
{
    if (len != 24 || p[4] != '-' || p[10] != 'T' || p[19] != '.' || p[23] != 'Z')
        return -1;
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    int ms = 0;
    if (sscanf(p, "%4d-%2d-%2dT%2d:%2d:%2d.%3d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
               &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms) != 7)
        return -1;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (int64_t)timegm(&tm) * 1000 + ms;
}

static struct second *second_at(uint64_t t)
{
    if (!timeline || t < t_steady0)
        return NULL;
    size_t i = (size_t)((t - t_steady0) / 1000000000u);
    if (i >= TIMELINE_MAX)
        return NULL;
    if (i >= timeline_len)
        timeline_len = i + 1;
    return &timeline[i];
}

static uint32_t rnd32(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

static void usage(void)
{
    fprintf(stderr, "usage: chatload --port P [--host H] [--path /chat/ws] [--conns N] "
            "[--room-size N] [--room-prefix S] [--interval S] [--duration S] "
            "[--ramp-rate N] [--max-pending N] [--timeout S] [--drain S] [--pad N]\n");
    exit(2);
}

static bool grow(unsigned char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return true;
    size_t c = *cap ? *cap : 1024;
    while (c < need)
        c *= 2;
    unsigned char *p = realloc(*buf, c);
    if (!p)
        return false;
    *buf = p;
    *cap = c;
    return true;
}

static bool pending_state(enum state st)
{
    return st == ST_CONNECTING || st == ST_HANDSHAKE || st == ST_WELCOME || st == ST_JOINING;
}

static void set_events(struct conn *c)
{
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
    if (c->st == ST_CONNECTING || c->out_off < c->out_len)
        ev.events |= EPOLLOUT;
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* The connection ends; `why` names the failure (NULL: a normal close). */
static void conn_end(struct conn *c, const char *why)
{
    if (c->st == ST_DEAD || c->st == ST_IDLE)
        return;
    if (pending_state(c->st)) {
        n_pending--;
        n_failed++;
    } else if (c->st == ST_JOINED) {
        room_joined[c->room]--;
        if (why)
            n_lost++;
    }
    if (why)
        count_name(&failures, why, strlen(why));
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->st = ST_DEAD;
    free(c->in);
    free(c->msg);
    free(c->out);
    c->in = c->msg = c->out = NULL;
    c->in_len = c->in_cap = c->msg_len = c->msg_cap = c->out_len = c->out_off = c->out_cap = 0;
}

static void flush_out(struct conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (n > 0) {
            c->out_off += (size_t)n;
            tx_bytes += (uint64_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            set_events(c);
            return;
        }
        conn_end(c, "write");
        return;
    }
    bool had = c->out_len > 0;
    c->out_off = c->out_len = 0;
    if (c->out_cap > 65536) {
        free(c->out);
        c->out = NULL;
        c->out_cap = 0;
    }
    if (had)
        set_events(c);
}

/* Queue one masked frame and try to write it. */
static void send_frame(struct conn *c, int op, const void *data, size_t len)
{
    if (c->st == ST_DEAD)
        return;
    size_t head = 2 + (len < 126 ? 0 : len < 65536 ? 2 : 8) + 4;
    if (!grow(&c->out, &c->out_cap, c->out_len + head + len)) {
        conn_end(c, "oom");
        return;
    }
    unsigned char *p = c->out + c->out_len;
    *p++ = (unsigned char)(0x80 | op);
    if (len < 126) {
        *p++ = (unsigned char)(0x80 | len);
    } else if (len < 65536) {
        *p++ = 0x80 | 126;
        *p++ = (unsigned char)(len >> 8);
        *p++ = (unsigned char)len;
    } else {
        *p++ = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            *p++ = (unsigned char)((uint64_t)len >> (8 * i));
    }
    uint32_t k = rnd32();
    unsigned char key[4] = { (unsigned char)k, (unsigned char)(k >> 8),
                             (unsigned char)(k >> 16), (unsigned char)(k >> 24) };
    memcpy(p, key, 4);
    p += 4;
    const unsigned char *d = data;
    for (size_t i = 0; i < len; i++)
        p[i] = d[i] ^ key[i & 3];
    c->out_len += head + len;
    bool was_empty = c->out_off == 0 && c->out_len == head + len;
    if (was_empty)
        flush_out(c);
}

static void send_text(struct conn *c, const char *s)
{
    send_frame(c, 1, s, strlen(s));
}

/* ---- JSON, minimally -------------------------------------------------------- */

/* The string value of "key" in data (no unescaping: the values looked at
 * here are plain), or NULL. Whitespace around the colon is allowed. */
static const char *json_str(const unsigned char *data, size_t len, const char *key,
                            size_t *out_len)
{
    char pat[40];
    int pl = snprintf(pat, sizeof pat, "\"%s\"", key);
    const unsigned char *end = data + len, *at = data;
    while (at < end) {
        const unsigned char *p = memmem(at, (size_t)(end - at), pat, (size_t)pl);
        if (!p)
            return NULL;
        at = p + 1;
        p += pl;
        while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
            p++;
        if (p == end || *p++ != ':')
            continue;
        while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
            p++;
        if (p == end || *p++ != '"')
            continue;
        const unsigned char *q = memchr(p, '"', (size_t)(end - p));
        if (!q)
            return NULL;
        *out_len = (size_t)(q - p);
        return (const char *)p;
    }
    return NULL;
}

static uint64_t parse_u64(const char **p, const char *end, bool *ok)
{
    uint64_t v = 0;
    const char *s = *p;
    while (s < end && *s >= '0' && *s <= '9')
        v = v * 10 + (uint64_t)(*s++ - '0');
    *ok = s > *p;
    *p = s;
    return v;
}

static void on_delivery(struct conn *c, const char *text, size_t tlen, int64_t server_ms)
{
    const char *p = text, *end = text + tlen;
    bool ok1, ok2, ok3;
    if (tlen < 2 || memcmp(p, "t=", 2) != 0) {
        foreign++;
        return;
    }
    p += 2;
    uint64_t t = parse_u64(&p, end, &ok1);
    if (end - p < 3 || memcmp(p, " u=", 3) != 0) {
        foreign++;
        return;
    }
    p += 3;
    uint64_t u = parse_u64(&p, end, &ok2);
    if (end - p < 3 || memcmp(p, " s=", 3) != 0) {
        foreign++;
        return;
    }
    p += 3;
    uint64_t s = parse_u64(&p, end, &ok3);
    bool ok4 = false;
    uint64_t w = 0;
    if (end - p >= 3 && memcmp(p, " w=", 3) == 0) {
        p += 3;
        w = parse_u64(&p, end, &ok4);
    }
    if (!ok1 || !ok2 || !ok3 || u >= (uint64_t)opt.conns) {
        foreign++;
        return;
    }
    uint64_t now = now_ns();
    uint64_t d = now > t ? now - t : 0;
    deliveries++;
    hist_add(&h_all, d);
    /* The two legs, by the wall clock (ms): the server stamps "ts" when
     * it publishes the message. Only the sender's copy measures the way
     * in; every copy measures the way out. */
    if (server_ms >= 0) {
        int64_t out_ms = wall_ms() - server_ms;
        hist_add(&h_out, out_ms > 0 ? (uint64_t)out_ms * 1000000u : 0);
        if (ok4 && (int)u == c->user) {
            int64_t in_ms = server_ms - (int64_t)w;
            hist_add(&h_in, in_ms > 0 ? (uint64_t)in_ms * 1000000u : 0);
        }
    }
    struct second *sec = second_at(now);
    if (sec) {
        sec->deliveries++;
        sec->sum_us += d / 1000;
        if (d / 1000 > sec->max_us)
            sec->max_us = d / 1000;
    }
    if ((int)u == c->user) {
        echoes++;
        hist_add(&h_echo, d);
    }
    struct slot *sl = &conns[u].slots[s % SLOTS];
    if (sl->seq == s + 1) {
        sl->got++;
        if (d > sl->max_delay_ns)
            sl->max_delay_ns = d;
        if (sl->got == sl->expected) {
            hist_add(&h_last, sl->max_delay_ns);
            complete_msgs++;
        }
    }
}

static void on_message(struct conn *c, const unsigned char *data, size_t len)
{
    size_t tl = 0;
    const char *type = json_str(data, len, "type", &tl);
    if (!type) {
        count_name(&frames, "untyped", 7);
        return;
    }
    count_name(&frames, type, tl);
    if (tl == 7 && memcmp(type, "message", 7) == 0) {
        size_t xl;
        const char *text = json_str(data, len, "text", &xl);
        size_t tsl = 0;
        const char *ts = json_str(data, len, "ts", &tsl);
        if (text)
            on_delivery(c, text, xl, ts ? parse_iso_ms(ts, tsl) : -1);
    } else if (tl == 7 && memcmp(type, "welcome", 7) == 0) {
        if (c->st == ST_WELCOME) {
            char req[160];
            snprintf(req, sizeof req, "{\"type\":\"join\",\"room\":\"%s%d\",\"name\":\"u%d\"}",
                     opt.prefix, c->room, c->user);
            c->st = ST_JOINING;
            send_text(c, req);
        }
    } else if (tl == 6 && memcmp(type, "joined", 6) == 0) {
        if (c->st == ST_JOINING) {
            c->st = ST_JOINED;
            c->was_joined = true;
            n_pending--;
            n_joined++;
            room_joined[c->room]++;
        }
    } else if (tl == 5 && memcmp(type, "error", 5) == 0) {
        size_t cl;
        const char *code = json_str(data, len, "code", &cl);
        if (code)
            count_name(&errors, code, cl);
        else
            count_name(&errors, "?", 1);
        if (c->st == ST_JOINING)
            conn_end(c, "join_refused");
    }
}

/* Parse the frames in buf; returns the bytes consumed (a partial frame is
 * left), or -1 after the connection ended. */
static long parse_frames(struct conn *c, const unsigned char *buf, size_t len)
{
    size_t off = 0;
    while (len - off >= 2) {
        const unsigned char *p = buf + off;
        size_t avail = len - off;
        bool fin = p[0] & 0x80;
        int op = p[0] & 0x0f;
        bool masked = p[1] & 0x80;
        uint64_t plen = p[1] & 0x7f;
        size_t hl = 2;
        if (plen == 126) {
            if (avail < 4)
                break;
            plen = ((uint64_t)p[2] << 8) | p[3];
            hl = 4;
        } else if (plen == 127) {
            if (avail < 10)
                break;
            plen = 0;
            for (int i = 0; i < 8; i++)
                plen = (plen << 8) | p[2 + i];
            hl = 10;
        }
        if (masked)
            hl += 4;
        if (plen > MAX_MESSAGE || (op >= 8 && (plen > 125 || !fin))) {
            conn_end(c, "bad_frame");
            return -1;
        }
        if (avail < hl + plen)
            break;
        unsigned char *payload = (unsigned char *)p + hl;
        if (masked)
            for (uint64_t i = 0; i < plen; i++)
                payload[i] ^= p[hl - 4 + (i & 3)];
        off += hl + (size_t)plen;
        switch (op) {
        case 0x9: {                                     /* ping */
            pings++;
            struct second *sec = second_at(now_ns());
            if (sec)
                sec->pings++;
            send_frame(c, 0xA, payload, (size_t)plen);
            break;
        }
        case 0xA:                                       /* pong */
            break;
        case 0x8: {                                     /* close */
            char code[8] = "none";
            if (plen >= 2)
                snprintf(code, sizeof code, "%u", (unsigned)payload[0] << 8 | payload[1]);
            count_name(&closes, code, strlen(code));
            send_frame(c, 0x8, payload, plen >= 2 ? 2 : 0);
            char why[24];
            snprintf(why, sizeof why, "server_close_%s", code);
            conn_end(c, why);
            return -1;
        }
        case 0x0:                                       /* continuation */
            if (c->msg_op < 0) {
                conn_end(c, "bad_frame");
                return -1;
            }
            if (!grow(&c->msg, &c->msg_cap, c->msg_len + plen) ||
                c->msg_len + plen > MAX_MESSAGE) {
                conn_end(c, "bad_frame");
                return -1;
            }
            memcpy(c->msg + c->msg_len, payload, (size_t)plen);
            c->msg_len += (size_t)plen;
            if (fin) {
                if (c->msg_op == 1)
                    on_message(c, c->msg, c->msg_len);
                c->msg_op = -1;
                c->msg_len = 0;
                if (c->msg_cap > 65536) {
                    free(c->msg);
                    c->msg = NULL;
                    c->msg_cap = 0;
                }
            }
            break;
        case 0x1:
        case 0x2:
            if (c->msg_op >= 0) {
                conn_end(c, "bad_frame");
                return -1;
            }
            if (fin) {
                if (op == 1)
                    on_message(c, payload, (size_t)plen);
                else
                    count_name(&frames, "binary", 6);
            } else {
                if (!grow(&c->msg, &c->msg_cap, plen)) {
                    conn_end(c, "oom");
                    return -1;
                }
                memcpy(c->msg, payload, (size_t)plen);
                c->msg_len = (size_t)plen;
                c->msg_op = op;
            }
            break;
        default:
            conn_end(c, "bad_frame");
            return -1;
        }
        if (c->st == ST_DEAD)
            return -1;
    }
    return (long)off;
}

/* The 101 answer in c->in; returns bytes of the head, 0 if incomplete, -1
 * after the connection ended. */
static long parse_head(struct conn *c)
{
    unsigned char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
    if (!end) {
        if (c->in_len > MAX_HEAD) {
            conn_end(c, "handshake");
            return -1;
        }
        return 0;
    }
    size_t head = (size_t)(end - c->in) + 4;
    char status[4] = "???";
    if (c->in_len >= 12 && memcmp(c->in, "HTTP/1.1 ", 9) == 0)
        memcpy(status, c->in + 9, 3);
    count_name(&hs_status, status, 3);
    c->in[head - 1] = '\0';
    bool ok = memcmp(status, "101", 3) == 0 && strstr((char *)c->in, WS_ACCEPT) &&
              strcasestr((char *)c->in, "\nSec-WebSocket-Protocol: " PROTO "\r");
    if (!ok) {
        conn_end(c, "handshake");
        return -1;
    }
    n_established++;
    c->st = ST_WELCOME;
    return (long)head;
}

static void on_readable(struct conn *c)
{
    for (int rounds = 0; rounds < 4; rounds++) {
        ssize_t n = read(c->fd, rbuf, READ_CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            conn_end(c, n == 0 ? "eof" : "read");
            return;
        }
        rx_bytes += (uint64_t)n;
        const unsigned char *buf = rbuf;
        size_t len = (size_t)n;
        /* Leftover bytes from before: append and parse from the
         * connection's own buffer. */
        if (c->in_len || c->st == ST_HANDSHAKE) {
            if (!grow(&c->in, &c->in_cap, c->in_len + len)) {
                conn_end(c, "oom");
                return;
            }
            memcpy(c->in + c->in_len, rbuf, len);
            c->in_len += len;
            buf = c->in;
            len = c->in_len;
        }
        size_t off = 0;
        if (c->st == ST_HANDSHAKE) {
            long h = parse_head(c);
            if (h < 0)
                return;
            if (h == 0)
                continue;
            off = (size_t)h;
        }
        long used = parse_frames(c, buf + off, len - off);
        if (used < 0)
            return;
        off += (size_t)used;
        size_t left = len - off;
        if (buf == c->in) {
            memmove(c->in, c->in + off, left);
            c->in_len = left;
        } else if (left) {
            if (!grow(&c->in, &c->in_cap, left)) {
                conn_end(c, "oom");
                return;
            }
            memcpy(c->in, buf + off, left);
            c->in_len = left;
        }
        if (!c->in_len && c->in_cap > 65536) {
            free(c->in);
            c->in = NULL;
            c->in_cap = 0;
        }
        if ((size_t)n < READ_CHUNK)
            return;
    }
}

static void on_event(struct conn *c, uint32_t events)
{
    if (c->st == ST_CONNECTING) {
        int err = 0;
        socklen_t l = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l) < 0 || err) {
            conn_end(c, "connect");
            return;
        }
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
            return;
        c->st = ST_HANDSHAKE;
        if (!grow(&c->out, &c->out_cap, handshake_len)) {
            conn_end(c, "oom");
            return;
        }
        memcpy(c->out, handshake, handshake_len);
        c->out_len = handshake_len;
        c->out_off = 0;
        flush_out(c);
        if (c->st != ST_DEAD)
            set_events(c);
        return;
    }
    if (events & EPOLLOUT) {
        flush_out(c);
        if (c->st == ST_DEAD)
            return;
    }
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP))
        on_readable(c);
}

static void start_conn(struct conn *c)
{
    c->started_ns = now_ns();
    c->msg_op = -1;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        c->st = ST_DEAD;
        n_failed++;
        count_name(&failures, errno == EMFILE || errno == ENFILE ? "socket_emfile" : "socket",
                   errno == EMFILE || errno == ENFILE ? 13 : 6);
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->st = ST_CONNECTING;
    n_pending++;
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
        conn_end(c, "connect");
        return;
    }
    struct epoll_event ev = { .events = EPOLLOUT | EPOLLIN, .data.ptr = c };
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
        close(c->fd);
        c->fd = -1;
        c->st = ST_DEAD;
        n_pending--;
        n_failed++;
        count_name(&failures, "epoll", 5);
    }
}

/* ---- the phases --------------------------------------------------------------- */

static struct epoll_event evs[1024];

static void poll_once(int timeout_ms)
{
    int n = epoll_wait(ep, evs, (int)(sizeof evs / sizeof evs[0]), timeout_ms);
    for (int i = 0; i < n; i++)
        on_event(evs[i].data.ptr, evs[i].events);
}

/* The say schedule: a user's offset into each interval. */
struct sched {
    double phase;
    int user;
};

static int cmp_sched(const void *a, const void *b)
{
    double x = ((const struct sched *)a)->phase, y = ((const struct sched *)b)->phase;
    return x < y ? -1 : x > y;
}

static void say(struct conn *c)
{
    if (c->st != ST_JOINED)
        return;
    uint32_t s = c->seq++;
    char text[96];
    uint64_t t = now_ns();
    int tl = snprintf(text, sizeof text, "t=%llu u=%d s=%u w=%lld", (unsigned long long)t,
                      c->user, s, (long long)wall_ms());
    size_t len = (size_t)tl + (size_t)opt.pad + 40;
    char *req = malloc(len);
    if (!req)
        return;
    int n = snprintf(req, len, "{\"type\":\"say\",\"text\":\"%s", text);
    memset(req + n, 'x', (size_t)opt.pad);
    n += opt.pad;
    n += snprintf(req + n, len - (size_t)n, "\"}");
    struct slot *sl = &c->slots[s % SLOTS];
    sl->seq = s + 1;
    sl->expected = (uint32_t)room_joined[c->room];
    sl->got = 0;
    sl->max_delay_ns = 0;
    sent++;
    expected += (uint64_t)room_joined[c->room];
    struct second *sec = second_at(t);
    if (sec)
        sec->sent++;
    send_frame(c, 1, req, (size_t)n);
    free(req);
}

static void print_event(const char *name, double t)
{
    printf("{\"event\":\"%s\",\"t_s\":%.3f,\"established\":%llu,\"joined\":%llu,"
           "\"failed\":%llu,\"lost\":%llu,\"sent\":%llu,\"deliveries\":%llu,"
           "\"expected\":%llu}\n", name, t, (unsigned long long)n_established,
           (unsigned long long)n_joined, (unsigned long long)n_failed,
           (unsigned long long)n_lost, (unsigned long long)sent,
           (unsigned long long)deliveries, (unsigned long long)expected);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc)
            usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--host")) opt.host = v;
        else if (!strcmp(a, "--port")) opt.port = atoi(v);
        else if (!strcmp(a, "--path")) opt.path = v;
        else if (!strcmp(a, "--room-prefix")) opt.prefix = v;
        else if (!strcmp(a, "--conns")) opt.conns = atoi(v);
        else if (!strcmp(a, "--room-size")) opt.room_size = atoi(v);
        else if (!strcmp(a, "--interval")) opt.interval = atof(v);
        else if (!strcmp(a, "--duration")) opt.duration = atof(v);
        else if (!strcmp(a, "--ramp-rate")) opt.ramp_rate = atof(v);
        else if (!strcmp(a, "--max-pending")) opt.max_pending = atoi(v);
        else if (!strcmp(a, "--timeout")) opt.timeout = atof(v);
        else if (!strcmp(a, "--drain")) opt.drain = atof(v);
        else if (!strcmp(a, "--pad")) opt.pad = atoi(v);
        else usage();
    }
    if (opt.port <= 0 || opt.port > 65535 || opt.conns <= 0 || opt.conns > 1000000 ||
        opt.room_size <= 0 || opt.interval <= 0 || opt.duration < 0 || opt.ramp_rate <= 0 ||
        opt.max_pending <= 0 || opt.timeout <= 0 || opt.drain < 0 || opt.pad < 0 ||
        opt.pad > 60000 || strlen(opt.prefix) > 30)
        usage();

    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = { .sa_handler = on_signal };
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)opt.conns + 64) {
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > (rlim_t)opt.conns + 64
                          ? (rlim_t)opt.conns + 64 : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
        if (rl.rlim_cur < (rlim_t)opt.conns + 16)
            fprintf(stderr, "chatload: RLIMIT_NOFILE %llu is below --conns %d: some "
                    "connections will fail\n", (unsigned long long)rl.rlim_cur, opt.conns);
    }

    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)opt.port);
    if (inet_pton(AF_INET, opt.host, &addr.sin_addr) != 1) {
        fprintf(stderr, "chatload: --host must be an IPv4 address\n");
        return 2;
    }
    int hl = snprintf(handshake, sizeof handshake,
                      "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Key: " WS_KEY "\r\n"
                      "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: " PROTO "\r\n"
                      "Origin: http://%s:%d\r\n\r\n", opt.path, opt.host, opt.port,
                      opt.host, opt.port);
    if (hl <= 0 || (size_t)hl >= sizeof handshake)
        usage();
    handshake_len = (size_t)hl;

    n_rooms = (opt.conns + opt.room_size - 1) / opt.room_size;
    conns = calloc((size_t)opt.conns, sizeof *conns);
    room_joined = calloc((size_t)n_rooms, sizeof *room_joined);
    rbuf = malloc(READ_CHUNK);
    struct sched *order = calloc((size_t)opt.conns, sizeof *order);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (!conns || !room_joined || !rbuf || !order || ep < 0) {
        perror("chatload");
        return 1;
    }
    rng ^= (uint64_t)getpid() << 32 ^ now_ns();
    for (int i = 0; i < opt.conns; i++) {
        conns[i].fd = -1;
        conns[i].user = i;
        conns[i].room = i / opt.room_size;
        conns[i].msg_op = -1;
        /* A room's members evenly over the interval, rooms offset within
         * one member's step: every user's slot is distinct. */
        int pos = i % opt.room_size, room = i / opt.room_size;
        order[i].phase = opt.interval * ((double)pos / opt.room_size +
                                         (double)room / ((double)opt.room_size * n_rooms));
        order[i].user = i;
    }
    qsort(order, (size_t)opt.conns, sizeof *order, cmp_sched);

    /* ---- ramp ---- */
    uint64_t t_begin = now_ns();
    uint64_t step_ns = (uint64_t)(1e9 / opt.ramp_rate);
    uint64_t timeout_ns = (uint64_t)(opt.timeout * 1e9);
    int next = 0;
    uint64_t next_at = t_begin;
    /* However the server behaves, the ramp ends by then. */
    uint64_t ramp_deadline = t_begin + (uint64_t)(opt.conns / opt.ramp_rate * 1e9) + timeout_ns;
    while (!stop_flag) {
        uint64_t now = now_ns();
        if (now > ramp_deadline)
            break;
        while (next < opt.conns && now >= next_at && n_pending < (uint64_t)opt.max_pending) {
            start_conn(&conns[next++]);
            next_at += step_ns;
            if (next_at + step_ns < now)        /* held back by max_pending: no burst */
                next_at = now;
        }
        if (next == opt.conns && n_pending == 0)
            break;
        /* Connections pending longer than --timeout fail. */
        static uint64_t last_scan;
        if (now - last_scan > 100000000u) {
            last_scan = now;
            for (int i = 0; i < next; i++)
                if (pending_state(conns[i].st) && now > conns[i].started_ns &&
                    now - conns[i].started_ns > timeout_ns)
                    conn_end(&conns[i], conns[i].st == ST_CONNECTING ? "connect_timeout"
                                        : conns[i].st == ST_HANDSHAKE ? "handshake_timeout"
                                        : conns[i].st == ST_WELCOME ? "welcome_timeout"
                                        : "join_timeout");
        }
        int wait_ms = 10;
        if (next < opt.conns && n_pending < (uint64_t)opt.max_pending) {
            uint64_t d = next_at > now ? (next_at - now) / 1000000 : 0;
            wait_ms = d < 10 ? (int)d : 10;
        }
        poll_once(wait_ms);
    }
    for (int i = 0; i < next; i++)              /* past the ramp's deadline */
        if (pending_state(conns[i].st))
            conn_end(&conns[i], "ramp_deadline");
    for (; next < opt.conns; next++) {          /* interrupted: never started */
        conns[next].st = ST_DEAD;
        n_failed++;
        count_name(&failures, "not_started", 11);
    }
    uint64_t t_ramped = now_ns();
    double ramp_s = (double)(t_ramped - t_begin) / 1e9;
    print_event("ramped", ramp_s);

    /* ---- steady ---- */
    steady = true;
    struct rusage ru0;
    getrusage(RUSAGE_SELF, &ru0);
    uint64_t t0 = now_ns() + 50000000u;
    t_steady0 = t0;
    timeline = calloc(TIMELINE_MAX, sizeof *timeline);
    uint64_t t_end = t0 + (uint64_t)(opt.duration * 1e9);
    uint64_t interval_ns = (uint64_t)(opt.interval * 1e9);
    uint64_t round = 0;
    int k = 0;
    while (!stop_flag) {
        uint64_t now = now_ns();
        if (now >= t_end)
            break;
        for (;;) {
            uint64_t due = t0 + round * interval_ns + (uint64_t)(order[k].phase * 1e9);
            if (due > now || due >= t_end)
                break;
            say(&conns[order[k].user]);
            if (++k == opt.conns) {
                k = 0;
                round++;
            }
        }
        uint64_t due = t0 + round * interval_ns + (uint64_t)(order[k].phase * 1e9);
        uint64_t until = due < t_end ? due : t_end;
        int wait_ms = until > now ? (int)((until - now) / 1000000) : 0;
        poll_once(wait_ms > 10 ? 10 : wait_ms);
    }
    uint64_t t_steady_end = now_ns();
    struct rusage ru1;
    getrusage(RUSAGE_SELF, &ru1);
    uint64_t deliveries_at_end = deliveries;
    print_event("steady_end", (double)(t_steady_end - t_begin) / 1e9);

    /* ---- drain ---- */
    uint64_t t_drain_end = t_steady_end + (uint64_t)(opt.drain * 1e9);
    while (!stop_flag && deliveries < expected && now_ns() < t_drain_end)
        poll_once(10);
    double drain_s = (double)(now_ns() - t_steady_end) / 1e9;

    uint64_t open_at_end = 0;
    for (int i = 0; i < opt.conns; i++)
        if (conns[i].st == ST_JOINED)
            open_at_end++;
    uint64_t incomplete = 0;
    for (int i = 0; i < opt.conns; i++)
        for (int s = 0; s < SLOTS; s++) {
            const struct slot *sl = &conns[i].slots[s];
            if (sl->seq && sl->got < sl->expected)
                incomplete++;
        }
    for (int i = 0; i < opt.conns; i++)
        if (conns[i].st != ST_DEAD && conns[i].st != ST_IDLE)
            conn_end(&conns[i], NULL);

    double steady_s = (double)(t_steady_end - t0) / 1e9;
    double cpu_s = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec +
                            ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) +
                   (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec +
                            ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
    struct rusage ru2;
    getrusage(RUSAGE_SELF, &ru2);

    printf("{\"conns_attempted\":%d,\"conns_established\":%llu,\"conns_joined\":%llu,"
           "\"conns_failed\":%llu,\"conns_lost_during_run\":%llu,\"conns_open_at_end\":%llu,",
           opt.conns, (unsigned long long)n_established, (unsigned long long)n_joined,
           (unsigned long long)n_failed, (unsigned long long)n_lost,
           (unsigned long long)open_at_end);
    counters_print("failures", &failures);
    printf(",");
    counters_print("handshake_status", &hs_status);
    printf(",");
    counters_print("server_closes", &closes);
    printf(",\"rooms\":%d,\"room_size\":%d,\"interval_s\":%.3f,\"ramp_s\":%.3f,"
           "\"steady_s\":%.3f,\"drain_s\":%.3f,", n_rooms, opt.room_size, opt.interval, ramp_s,
           steady_s, drain_s);
    printf("\"messages_sent\":%llu,\"messages_per_s\":%.1f,\"deliveries\":%llu,"
           "\"deliveries_expected\":%llu,\"deliveries_at_steady_end\":%llu,"
           "\"deliveries_per_s\":%.1f,\"echoes\":%llu,\"messages_complete\":%llu,"
           "\"messages_incomplete_tracked\":%llu,\"foreign_messages\":%llu,",
           (unsigned long long)sent, steady_s > 0 ? (double)sent / steady_s : 0.0,
           (unsigned long long)deliveries, (unsigned long long)expected,
           (unsigned long long)deliveries_at_end,
           steady_s > 0 ? (double)deliveries_at_end / steady_s : 0.0,
           (unsigned long long)echoes, (unsigned long long)complete_msgs,
           (unsigned long long)incomplete, (unsigned long long)foreign);
    hist_print("delay_ms", &h_all);
    printf(",");
    hist_print("echo_delay_ms", &h_echo);
    printf(",");
    hist_print("last_recipient_ms", &h_last);
    printf(",");
    hist_print("in_ms", &h_in);
    printf(",");
    hist_print("out_ms", &h_out);
    printf(",\"timeline\":[");
    for (size_t i = 0; i < timeline_len; i++) {
        const struct second *sec = &timeline[i];
        printf("%s[%zu,%llu,%llu,%.1f,%.1f,%llu]", i ? "," : "", i,
               (unsigned long long)sec->sent, (unsigned long long)sec->deliveries,
               sec->deliveries ? (double)sec->sum_us / (double)sec->deliveries / 1000 : 0.0,
               (double)sec->max_us / 1000, (unsigned long long)sec->pings);
    }
    printf("],");
    counters_print("errors", &errors);
    printf(",");
    counters_print("frames", &frames);
    printf(",\"pings_received\":%llu,\"rx_bytes\":%llu,\"tx_bytes\":%llu,\"client_cpu_steady_s\":%.3f,"
           "\"client_cpu_total_s\":%.3f,\"client_maxrss_kib\":%ld,\"interrupted\":%s}\n",
           (unsigned long long)pings, (unsigned long long)rx_bytes,
           (unsigned long long)tx_bytes, cpu_s,
           (double)(ru2.ru_utime.tv_sec + ru2.ru_stime.tv_sec) +
               (double)(ru2.ru_utime.tv_usec + ru2.ru_stime.tv_usec) / 1e6,
           ru2.ru_maxrss, stop_flag ? "true" : "false");
    fflush(stdout);

    uint64_t n_errors = 0;
    for (unsigned i = 0; i < errors.n; i++)
        n_errors += errors.c[i].n;
    bool ok = n_joined == (uint64_t)opt.conns && n_lost == 0 && n_errors == 0 &&
              deliveries == expected && !stop_flag;
    free(timeline);
    free(order);
    free(conns);
    free(room_joined);
    free(rbuf);
    close(ep);
    return ok ? 0 : 1;
}
