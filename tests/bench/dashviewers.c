/*
 * dashviewers - N live-dashboard viewers and a request probe, for
 * tests/bench/dashboard_viewers.py.
 *
 *     dashviewers --port DASH --probe-port PROXY [--host 127.0.0.1]
 *                 [--viewers 1000] [--duration 20] [--settle 1.5]
 *                 [--probe-interval 0.05] [--grace 1] [--concurrency 64]
 *                 [--timeout 30]
 *
 * 1. Opens --viewers WebSocket connections to the dashboard (subprotocol
 *    switchboard.telemetry, at most --concurrency handshakes at a time),
 *    waits --settle seconds for the snapshots, prints {"ready":...} on
 *    stdout and waits for a line on stdin: the driver starts its load and
 *    its CPU clocks, then says go.
 * 2. For --duration seconds every viewer counts frames, messages and
 *    payload bytes by message type, and looks in every "events" message for
 *    `"path":"/probe/N"`, noting when it read the frame that carries probe N
 *    (its first sight only). Meanwhile a second thread, on a blocking
 *    keep-alive connection to the proxy, sends GET /probe/N every
 *    --probe-interval seconds and notes when the whole answer was read: the
 *    moment the proxy answered. It has a thread of its own so that a busy
 *    viewer loop cannot make that moment late (which would hide delay).
 * 3. Reads --grace seconds more for the late probes (frames read then are
 *    not counted), then prints one JSON line with the figures.
 *
 * Request-to-frame delay: for each probe answered and each viewer, the
 * time from the answer to that viewer's read of the frame carrying it.
 * "all" is over every (probe, viewer) pair seen; "first"/"last" per probe
 * are the quickest and slowest viewer, so "last" p99 is what the slowest
 * of N viewers sees. Probes the server left out of its events (it sends at
 * most a sample when requests come faster) are counted, never timed.
 *
 * --probe-log writes one line per answered probe: its number, then the
 * answer, the first and the last viewer's read (CLOCK_MONOTONIC ms; 0: not
 * seen), to line up with timestamps taken elsewhere.
 *
 * Both sides use CLOCK_MONOTONIC, as the driver's time.monotonic() does.
 * One thread, non-blocking sockets, level-triggered epoll; per frame it
 * parses a header and, for events only, runs memmem over the payload, so
 * a thousand viewers at 10-20 frames a second each cost it a few percent
 * of a core. Exit status 0, or 1 when some viewer never connected, 2 on a
 * usage error.
 */
#include <arpa/inet.h>
#include <errno.h>
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
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PROTO "switchboard.telemetry"
#define WS_KEY "dGhlIHNhbXBsZSBub25jZQ=="          /* RFC 6455 section 1.3 */
#define WS_ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
#define BUF_MIN (16 * 1024)
#define PROBE_NEEDLE "\"path\":\"/probe/"

enum state { ST_IDLE, ST_CONNECTING, ST_HANDSHAKE_SENT, ST_OPEN, ST_DEAD };
enum msg_type { T_SNAPSHOT, T_DELTA, T_EVENTS, T_PING, T_OTHER, T_COUNT };
static const char *const type_names[T_COUNT] = { "snapshot", "delta", "events", "ping",
                                                  "other" };

struct viewer {
    int fd;
    enum state st;
    enum msg_type cur;          /* type of the message in progress */
    unsigned char *buf;         /* unparsed bytes, [0, len) */
    size_t len, cap;
};

static struct {
    const char *host, *probe_log;
    int port, probe_port, viewers, concurrency;
    double duration, settle, probe_interval, grace, timeout;
} opt = { "127.0.0.1", NULL, 0, 0, 1000, 64, 20.0, 1.5, 0.05, 1.0, 30.0 };

static char handshake[512];
static size_t handshake_len;
static struct sockaddr_in dash_addr, probe_addr;

/* Counted while `counting`. */
static bool counting;
static uint64_t frames, messages, payload_bytes, wire_bytes, snapshots_during;
static uint64_t type_msgs[T_COUNT], type_bytes[T_COUNT];
static uint64_t disconnects, closes, control_pings;

/* seen[probe * viewers + viewer]: when that viewer read probe's frame (ns,
 * 0 = not yet). done[probe]: when the proxy's answer was read (0 = none). */
static size_t max_probes;
static uint64_t *seen, *done;
static atomic_bool probe_stop;
static uint64_t probe_sent, probe_errors;
static uint64_t *probe_rtt;     /* ns, per answered probe */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void usage(void)
{
    fprintf(stderr, "usage: dashviewers --port DASH --probe-port PROXY [--host H] "
            "[--viewers N] [--duration S] [--settle S] [--probe-interval S] [--grace S] "
            "[--concurrency N] [--timeout S]\n");
    exit(2);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted `v` in ms. */
static double pct_ms(const uint64_t *v, size_t n, double p)
{
    if (!n)
        return -1;
    size_t k = (size_t)(p / 100.0 * (double)n + 0.999999);
    k = k < 1 ? 1 : k > n ? n : k;
    return (double)v[k - 1] / 1e6;
}

/* ---- viewers ------------------------------------------------------------- */

static void viewer_kill(int ep, struct viewer *v)
{
    if (v->st == ST_DEAD)
        return;
    if (v->st == ST_OPEN)
        disconnects++;
    if (v->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, v->fd, NULL);
        close(v->fd);
    }
    v->fd = -1;
    v->st = ST_DEAD;
}

static bool viewer_connect(int ep, struct viewer *v)
{
    v->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (v->fd < 0)
        return false;
    v->st = ST_CONNECTING;
    if (connect(v->fd, (struct sockaddr *)&dash_addr, sizeof dash_addr) < 0 &&
        errno != EINPROGRESS) {
        close(v->fd);
        v->fd = -1;
        v->st = ST_DEAD;
        return false;
    }
    struct epoll_event ev = { .events = EPOLLOUT, .data.ptr = v };
    epoll_ctl(ep, EPOLL_CTL_ADD, v->fd, &ev);
    return true;
}

/* Small writes (the handshake, a pong) to a socket with room: all or kill. */
static void viewer_send(int ep, struct viewer *v, const void *p, size_t n)
{
    while (n) {
        ssize_t w = write(v->fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            viewer_kill(ep, v);
            return;
        }
        p = (const char *)p + w;
        n -= (size_t)w;
    }
}

static enum msg_type peek_type(const unsigned char *p, size_t n)
{
    const unsigned char *t = memmem(p, n < 32 ? n : 32, "\"type\":\"", 8);
    if (!t)
        return T_OTHER;
    t += 8;
    size_t rest = n - (size_t)(t - p);
    for (int i = 0; i < T_OTHER; i++) {
        size_t l = strlen(type_names[i]);
        if (rest > l && memcmp(t, type_names[i], l) == 0 && t[l] == '"')
            return (enum msg_type)i;
    }
    return T_OTHER;
}

static void note_probes(size_t idx, const unsigned char *p, size_t n, uint64_t t)
{
    const unsigned char *end = p + n;
    const size_t nl = sizeof PROBE_NEEDLE - 1;
    while ((p = memmem(p, (size_t)(end - p), PROBE_NEEDLE, nl))) {
        p += nl;
        size_t id = 0;
        while (p < end && *p >= '0' && *p <= '9')
            id = id * 10 + (size_t)(*p++ - '0');
        if (p < end && *p == '"' && id < max_probes) {
            uint64_t *s = &seen[id * (size_t)opt.viewers + idx];
            if (!*s)
                *s = t;
        }
    }
}

/* Parse the complete frames in v->buf, read at time t. */
static void viewer_frames(int ep, struct viewer *v, size_t idx, uint64_t t)
{
    size_t pos = 0;
    while (v->len - pos >= 2) {
        const unsigned char *h = v->buf + pos;
        unsigned op = h[0] & 0x0F;
        uint64_t n = h[1] & 0x7F;
        size_t hl = 2;
        if (n == 126) {
            if (v->len - pos < 4)
                break;
            n = (uint64_t)h[2] << 8 | h[3];
            hl = 4;
        } else if (n == 127) {
            if (v->len - pos < 10)
                break;
            n = 0;
            for (int i = 0; i < 8; i++)
                n = n << 8 | h[2 + i];
            hl = 10;
        }
        if (h[1] & 0x80 || n > (64u << 20)) {      /* masked, or absurd: broken */
            viewer_kill(ep, v);
            return;
        }
        if (v->len - pos < hl + n) {
            size_t need = hl + (size_t)n;
            if (need > v->cap) {
                size_t cap = v->cap;
                while (cap < need)
                    cap *= 2;
                memmove(v->buf, v->buf + pos, v->len - pos);
                v->len -= pos;
                pos = 0;
                unsigned char *b = realloc(v->buf, cap);
                if (!b) {
                    viewer_kill(ep, v);
                    return;
                }
                v->buf = b;
                v->cap = cap;
            }
            break;
        }
        const unsigned char *payload = h + hl;
        pos += hl + (size_t)n;
        if (op >= 0x8) {
            if (op == 0x9) {                        /* ping: a masked pong */
                unsigned char pong[2 + 4 + 125] = { 0x8A, (unsigned char)(0x80 | n) };
                if (n <= 125) {
                    memcpy(pong + 6, payload, (size_t)n);  /* mask key 0: same bytes */
                    viewer_send(ep, v, pong, 6 + (size_t)n);
                }
                control_pings++;
            } else if (op == 0x8) {
                closes++;
                viewer_kill(ep, v);
                return;
            }
            continue;
        }
        if (op != 0)
            v->cur = peek_type(payload, (size_t)n);
        if (v->cur == T_EVENTS)
            note_probes(idx, payload, (size_t)n, t);
        if (counting) {
            frames++;
            payload_bytes += n;
            type_bytes[v->cur] += n;
            if (h[0] & 0x80) {
                messages++;
                type_msgs[v->cur]++;
                if (v->cur == T_SNAPSHOT)
                    snapshots_during++;
            }
        }
        if (v->st == ST_DEAD)
            return;
    }
    memmove(v->buf, v->buf + pos, v->len - pos);
    v->len -= pos;
}

/* One readiness event; returns true when a handshake ended (well or not). */
static bool viewer_event(int ep, struct viewer *v, size_t idx, uint32_t events)
{
    if (v->st == ST_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(v->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err) {
            viewer_kill(ep, v);
            return true;
        }
        v->st = ST_HANDSHAKE_SENT;
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = v };
        epoll_ctl(ep, EPOLL_CTL_MOD, v->fd, &ev);
        viewer_send(ep, v, handshake, handshake_len);
        return v->st == ST_DEAD;
    }
    if (!(events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
        return false;
    if (v->cap - v->len < 4096) {
        unsigned char *b = realloc(v->buf, v->cap * 2);
        if (!b) {
            viewer_kill(ep, v);
            return true;
        }
        v->buf = b;
        v->cap *= 2;
    }
    ssize_t n = read(v->fd, v->buf + v->len, v->cap - v->len);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return false;
    if (n <= 0) {
        bool was_handshake = v->st == ST_HANDSHAKE_SENT;
        viewer_kill(ep, v);
        return was_handshake;
    }
    uint64_t t = now_ns();
    v->len += (size_t)n;
    if (v->st == ST_HANDSHAKE_SENT) {
        unsigned char *end = memmem(v->buf, v->len, "\r\n\r\n", 4);
        if (!end)
            return false;
        size_t head = (size_t)(end - v->buf) + 4;
        if (v->len < 12 || memcmp(v->buf, "HTTP/1.1 101", 12) != 0 ||
            !memmem(v->buf, head, WS_ACCEPT, strlen(WS_ACCEPT))) {
            viewer_kill(ep, v);
            return true;
        }
        memmove(v->buf, v->buf + head, v->len - head);
        v->len -= head;
        v->st = ST_OPEN;
        viewer_frames(ep, v, idx, t);
        return true;
    }
    if (counting)
        wire_bytes += (uint64_t)n;
    viewer_frames(ep, v, idx, t);
    return false;
}

/* ---- the probe ----------------------------------------------------------- */

static int probe_connect(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = { .tv_sec = 10 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&probe_addr, sizeof probe_addr) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* One GET /probe/id on fd; true when a 2xx answer was read whole. */
static bool probe_once(int fd, size_t id)
{
    char req[160];
    int rl = snprintf(req, sizeof req, "GET /probe/%zu HTTP/1.1\r\nHost: %s:%d\r\n\r\n", id,
                      opt.host, opt.probe_port);
    if (write(fd, req, (size_t)rl) != rl)
        return false;
    char buf[8192];
    size_t len = 0, head = 0;
    long body = -1;
    for (;;) {
        if (len == sizeof buf)
            return false;
        ssize_t n = read(fd, buf + len, sizeof buf - len);
        if (n <= 0)
            return false;
        len += (size_t)n;
        if (!head) {
            char *e = memmem(buf, len, "\r\n\r\n", 4);
            if (!e)
                continue;
            head = (size_t)(e - buf) + 4;
            if (len < 12 || buf[9] != '2')
                return false;
            for (char *l = memmem(buf, head, "\r\n", 2); l && l < e;
                 l = memmem(l + 2, (size_t)(e - l), "\r\n", 2))
                if (strncasecmp(l + 2, "Content-Length:", 15) == 0)
                    body = strtol(l + 17, NULL, 10);
            if (body < 0)
                return false;       /* sb-backend always sends a length */
        }
        if (len >= head + (size_t)body)
            return true;
    }
}

static void *probe_main(void *arg)
{
    (void)arg;
    int fd = -1;
    uint64_t next = now_ns(), step = (uint64_t)(opt.probe_interval * 1e9);
    for (size_t id = 1; id < max_probes && !atomic_load(&probe_stop); id++) {
        if (fd < 0)
            fd = probe_connect();
        uint64_t t0 = now_ns();
        probe_sent++;
        if (fd >= 0 && probe_once(fd, id)) {
            uint64_t t1 = now_ns();
            done[id] = t1;
            probe_rtt[id] = t1 - t0;
        } else {
            probe_errors++;
            if (fd >= 0)
                close(fd);
            fd = -1;
        }
        next += step;
        uint64_t now = now_ns();
        if (next > now) {
            struct timespec ts = { .tv_sec = (time_t)((next - now) / 1000000000u),
                                   .tv_nsec = (long)((next - now) % 1000000000u) };
            nanosleep(&ts, NULL);
        } else {
            next = now;
        }
    }
    if (fd >= 0)
        close(fd);
    return NULL;
}

/* ---- main ----------------------------------------------------------------- */

static void run_loop(int ep, struct viewer *vs, struct epoll_event *evs, uint64_t until,
                     size_t *pending)
{
    do {
        int n = epoll_wait(ep, evs, 1024, 5);
        for (int i = 0; i < n; i++) {
            struct viewer *v = evs[i].data.ptr;
            if (viewer_event(ep, v, (size_t)(v - vs), evs[i].events) && pending)
                (*pending)--;
        }
    } while (now_ns() < until);
}

static void print_delays(const char *name, uint64_t *v, size_t n, bool comma)
{
    qsort(v, n, sizeof *v, cmp_u64);
    printf("\"%s\":{\"n\":%zu,\"p50_ms\":%.1f,\"p99_ms\":%.1f,\"max_ms\":%.1f}%s", name, n,
           pct_ms(v, n, 50), pct_ms(v, n, 99), n ? (double)v[n - 1] / 1e6 : -1.0,
           comma ? "," : "");
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
        else if (!strcmp(a, "--probe-port")) opt.probe_port = atoi(v);
        else if (!strcmp(a, "--viewers")) opt.viewers = atoi(v);
        else if (!strcmp(a, "--duration")) opt.duration = atof(v);
        else if (!strcmp(a, "--settle")) opt.settle = atof(v);
        else if (!strcmp(a, "--probe-interval")) opt.probe_interval = atof(v);
        else if (!strcmp(a, "--grace")) opt.grace = atof(v);
        else if (!strcmp(a, "--concurrency")) opt.concurrency = atoi(v);
        else if (!strcmp(a, "--timeout")) opt.timeout = atof(v);
        else if (!strcmp(a, "--probe-log")) opt.probe_log = v;
        else usage();
    }
    if (opt.port <= 0 || opt.port > 65535 || opt.probe_port <= 0 || opt.probe_port > 65535 ||
        opt.viewers <= 0 || opt.viewers > 100000 || opt.duration <= 0 ||
        opt.probe_interval < 0.001 || opt.concurrency <= 0 || opt.timeout <= 0 ||
        opt.settle < 0 || opt.grace < 0)
        usage();
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)opt.viewers + 64) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    dash_addr = (struct sockaddr_in){ .sin_family = AF_INET,
                                      .sin_port = htons((uint16_t)opt.port) };
    probe_addr = (struct sockaddr_in){ .sin_family = AF_INET,
                                       .sin_port = htons((uint16_t)opt.probe_port) };
    if (inet_pton(AF_INET, opt.host, &dash_addr.sin_addr) != 1 ||
        inet_pton(AF_INET, opt.host, &probe_addr.sin_addr) != 1) {
        fprintf(stderr, "dashviewers: --host must be an IPv4 address\n");
        return 2;
    }
    int hl = snprintf(handshake, sizeof handshake,
                      "GET /ws HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Key: " WS_KEY "\r\n"
                      "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: " PROTO "\r\n\r\n",
                      opt.host, opt.port);
    handshake_len = (size_t)hl;

    max_probes = (size_t)((opt.duration + opt.grace) / opt.probe_interval) + 16;
    size_t nv = (size_t)opt.viewers;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct viewer *vs = calloc(nv, sizeof *vs);
    struct epoll_event *evs = calloc(1024, sizeof *evs);
    seen = calloc(max_probes * nv, sizeof *seen);
    done = calloc(max_probes, sizeof *done);
    probe_rtt = calloc(max_probes, sizeof *probe_rtt);
    if (ep < 0 || !vs || !evs || !seen || !done || !probe_rtt) {
        perror("dashviewers");
        return 1;
    }
    for (size_t i = 0; i < nv; i++) {
        vs[i].fd = -1;
        vs[i].cap = BUF_MIN;
        vs[i].buf = malloc(BUF_MIN);
        if (!vs[i].buf) {
            perror("dashviewers");
            return 1;
        }
    }

    /* 1. Connect, at most --concurrency handshakes in flight. */
    uint64_t t0 = now_ns(), deadline = t0 + (uint64_t)(opt.timeout * 1e9);
    size_t next = 0, pending = 0;
    while (now_ns() < deadline) {
        while (next < nv && pending < (size_t)opt.concurrency) {
            if (viewer_connect(ep, &vs[next]))
                pending++;
            next++;
        }
        if (next == nv && pending == 0)
            break;
        run_loop(ep, vs, evs, now_ns() + 1, &pending);
    }
    double connect_s = (double)(now_ns() - t0) / 1e9;
    size_t connected = 0;
    for (size_t i = 0; i < nv; i++) {
        if (vs[i].st != ST_OPEN && vs[i].st != ST_DEAD)
            viewer_kill(ep, &vs[i]);
        connected += vs[i].st == ST_OPEN;
    }
    disconnects = 0;
    run_loop(ep, vs, evs, now_ns() + (uint64_t)(opt.settle * 1e9), NULL);
    printf("{\"ready\":true,\"connected\":%zu,\"connect_s\":%.3f}\n", connected, connect_s);
    fflush(stdout);

    /* 2. Wait for the driver's go, reading meanwhile. */
    struct epoll_event sev = { .events = EPOLLIN, .data.ptr = NULL };
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &sev);
    for (bool go = false; !go;) {
        int n = epoll_wait(ep, evs, 1024, 100);
        for (int i = 0; i < n; i++) {
            if (!evs[i].data.ptr) {
                char line[64];
                if (read(0, line, sizeof line) <= 0 || line[0] == 'g')
                    go = true;
                continue;
            }
            struct viewer *v = evs[i].data.ptr;
            viewer_event(ep, v, (size_t)(v - vs), evs[i].events);
        }
    }
    epoll_ctl(ep, EPOLL_CTL_DEL, 0, NULL);

    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    pthread_t probe;
    uint64_t w0 = now_ns();
    counting = true;
    if (pthread_create(&probe, NULL, probe_main, NULL) != 0) {
        perror("dashviewers: pthread_create");
        return 1;
    }
    run_loop(ep, vs, evs, w0 + (uint64_t)(opt.duration * 1e9), NULL);
    counting = false;
    uint64_t w1 = now_ns();
    getrusage(RUSAGE_SELF, &ru1);
    atomic_store(&probe_stop, true);
    pthread_join(probe, NULL);
    /* 3. Late frames may still carry the last probes. */
    run_loop(ep, vs, evs, now_ns() + (uint64_t)(opt.grace * 1e9), NULL);

    double wall = (double)(w1 - w0) / 1e9;
    double cpu = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) +
                 (double)(ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) +
                 (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) / 1e6 +
                 (double)(ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
    size_t open_now = 0;
    for (size_t i = 0; i < nv; i++)
        open_now += vs[i].st == ST_OPEN;

    /* Delays. */
    uint64_t *all = malloc(max_probes * nv * sizeof *all);
    uint64_t *first = malloc(max_probes * sizeof *first);
    uint64_t *last = malloc(max_probes * sizeof *last);
    uint64_t *rtt = malloc(max_probes * sizeof *rtt);
    if (!all || !first || !last || !rtt) {
        perror("dashviewers");
        return 1;
    }
    size_t n_all = 0, n_probe = 0, n_answered = 0, n_rtt = 0, pairs_missing = 0;
    FILE *log = opt.probe_log ? fopen(opt.probe_log, "w") : NULL;
    for (size_t p = 0; p < max_probes; p++) {
        if (!done[p])
            continue;
        n_answered++;
        rtt[n_rtt++] = probe_rtt[p];
        uint64_t lo = UINT64_MAX, hi = 0;
        size_t got = 0, missing = 0;
        for (size_t i = 0; i < nv; i++) {
            uint64_t s = seen[p * nv + i];
            if (!s) {
                missing += vs[i].st == ST_OPEN;
                continue;
            }
            uint64_t d = s > done[p] ? s - done[p] : 0;
            all[n_all++] = d;
            lo = d < lo ? d : lo;
            hi = d > hi ? d : hi;
            got++;
        }
        /* A probe no viewer saw was left out by the server (sampling), not
         * lost by the viewers: only partial sightings count as missing. */
        if (log)
            fprintf(log, "%zu %.3f %.3f %.3f\n", p, (double)done[p] / 1e6,
                    got ? (double)(done[p] + lo) / 1e6 : 0.0,
                    got ? (double)(done[p] + hi) / 1e6 : 0.0);
        if (got) {
            first[n_probe] = lo;
            last[n_probe++] = hi;
            pairs_missing += missing;
        }
    }
    if (log)
        fclose(log);

    printf("{\"viewers\":%d,\"connected\":%zu,\"open_at_end\":%zu,\"connect_s\":%.3f,"
           "\"interval_s\":%.3f,\"frames\":%llu,\"messages\":%llu,\"payload_bytes\":%llu,"
           "\"wire_bytes\":%llu,\"snapshots_during\":%llu,\"disconnects\":%llu,"
           "\"closes\":%llu,\"control_pings\":%llu,\"client_cpu_s\":%.3f,\"by_type\":{",
           opt.viewers, connected, open_now, connect_s, wall, (unsigned long long)frames,
           (unsigned long long)messages, (unsigned long long)payload_bytes,
           (unsigned long long)wire_bytes, (unsigned long long)snapshots_during,
           (unsigned long long)disconnects, (unsigned long long)closes,
           (unsigned long long)control_pings, cpu);
    bool comma = false;
    for (int t = 0; t < T_COUNT; t++) {
        if (!type_msgs[t] && !type_bytes[t])
            continue;
        printf("%s\"%s\":[%llu,%llu]", comma ? "," : "", type_names[t],
               (unsigned long long)type_msgs[t], (unsigned long long)type_bytes[t]);
        comma = true;
    }
    printf("},\"probe\":{\"sent\":%llu,\"answered\":%zu,\"errors\":%llu,"
           "\"in_events\":%zu,\"pairs_missing\":%zu,",
           (unsigned long long)probe_sent, n_answered, (unsigned long long)probe_errors,
           n_probe, pairs_missing);
    print_delays("http", rtt, n_rtt, true);
    print_delays("all", all, n_all, true);
    print_delays("first", first, n_probe, true);
    print_delays("last", last, n_probe, false);
    printf("}}\n");
    fflush(stdout);

    for (size_t i = 0; i < nv; i++) {
        if (vs[i].fd >= 0)
            close(vs[i].fd);
        free(vs[i].buf);
    }
    free(all);
    free(first);
    free(last);
    free(rtt);
    free(seen);
    free(done);
    free(probe_rtt);
    free(vs);
    free(evs);
    close(ep);
    return connected == nv ? 0 : 1;
}
