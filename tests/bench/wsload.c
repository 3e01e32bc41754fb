/*
 * wsload - WebSocket echo load generator for `make bench` (scenario 5).
 *
 *     wsload --port P [--host 127.0.0.1] [--path /ws] [--conns 50]
 *            [--duration 5] [--warmup 0.5] [--size 32] [--timeout 10]
 *
 * Opens --conns connections, does the RFC 6455 handshake on each, then
 * every connection sends one small masked text frame and waits for the
 * echo before sending the next (one message in flight per connection).
 * Messages echoed during --warmup seconds are not counted; then it counts
 * for --duration seconds. The result is one JSON line on stdout:
 *
 *   {"conns":50,"conns_ok":50,"messages":N,"messages_total":M,"duration_s":5.0,
 *    "msgs_per_s":...,"p50_us":...,"p99_us":...,"max_us":...,"errors":0}
 *
 * messages: echoes counted (after the warm-up); messages_total: every echo
 * received, warm-up included (what the proxy's CPU over the run paid for).
 *
 * Exit status: 0 if every connection was upgraded and no error happened,
 * 1 otherwise (the JSON line is still printed), 2 on a usage error.
 *
 * One thread, non-blocking sockets, level-triggered epoll; per message it
 * costs one write(2) and usually one read(2), far less than the proxy in
 * the middle spends (two reads, two writes, framing bookkeeping), so the
 * proxy and not this client is what saturates.
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
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_PAYLOAD 125         /* one-byte length form only */
#define RBUF 4096

/* Sec-WebSocket-Key "dGhlIHNhbXBsZSBub25jZQ==" from RFC 6455 section 1.3,
 * and the accept value it gives. */
#define WS_KEY "dGhlIHNhbXBsZSBub25jZQ=="
#define WS_ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

enum state { ST_CONNECTING, ST_HANDSHAKE_SENT, ST_OPEN, ST_DEAD };

struct conn {
    int fd;
    enum state st;
    size_t rlen;                /* bytes in rbuf */
    size_t wsent;               /* bytes of the pending write already sent */
    bool waiting;               /* a message is in flight */
    uint64_t sent_at;           /* ns */
    char rbuf[RBUF];
};

static struct {
    const char *host, *path;
    int port, conns, size;
    double duration, warmup, timeout;
} opt = { "127.0.0.1", "/ws", 0, 50, 32, 5.0, 0.5, 10.0 };

static char handshake[1024];
static size_t handshake_len;
static unsigned char frame[2 + 4 + MAX_PAYLOAD];
static size_t frame_len;

static uint32_t *samples;
static size_t n_samples, cap_samples;
static uint64_t counted, echoed, errors;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void usage(void)
{
    fprintf(stderr, "usage: wsload --port P [--host H] [--path /ws] [--conns N] "
            "[--duration S] [--warmup S] [--size B] [--timeout S]\n");
    exit(2);
}

static void add_sample(uint64_t ns)
{
    if (n_samples == cap_samples) {
        size_t cap = cap_samples ? cap_samples * 2 : 65536;
        if (cap > (size_t)1 << 26)
            return;             /* enough for percentiles */
        uint32_t *p = realloc(samples, cap * sizeof *p);
        if (!p)
            return;
        samples = p;
        cap_samples = cap;
    }
    uint64_t us = ns / 1000;
    samples[n_samples++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void kill_conn(int ep, struct conn *c)
{
    if (c->st == ST_DEAD)
        return;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->st = ST_DEAD;
    errors++;
}

/* Write what is left of buf; true when all of it is out. */
static bool write_rest(int ep, struct conn *c, const void *buf, size_t len)
{
    while (c->wsent < len) {
        ssize_t n = write(c->fd, (const char *)buf + c->wsent, len - c->wsent);
        if (n > 0) {
            c->wsent += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT, .data.ptr = c };
            epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
            return false;
        }
        kill_conn(ep, c);
        return false;
    }
    return true;
}

static void send_message(int ep, struct conn *c)
{
    c->wsent = 0;
    c->waiting = true;
    c->sent_at = now_ns();
    write_rest(ep, c, frame, frame_len);
}

static void on_event(int ep, struct conn *c, uint32_t events, bool running,
                     uint64_t count_from, uint64_t count_to)
{
    if (c->st == ST_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err) {
            kill_conn(ep, c);
            return;
        }
        c->st = ST_HANDSHAKE_SENT;
        c->wsent = 0;
        if (write_rest(ep, c, handshake, handshake_len)) {
            struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
            epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        }
        return;
    }
    if (events & EPOLLOUT) {
        const void *buf = c->st == ST_OPEN ? (const void *)frame : (const void *)handshake;
        size_t len = c->st == ST_OPEN ? frame_len : handshake_len;
        if (write_rest(ep, c, buf, len)) {
            struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
            epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        }
        if (c->st == ST_DEAD)
            return;
    }
    if (!(events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
        return;
    ssize_t n = read(c->fd, c->rbuf + c->rlen, RBUF - c->rlen);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        kill_conn(ep, c);
        return;
    }
    c->rlen += (size_t)n;
    if (c->st == ST_HANDSHAKE_SENT) {
        char *end = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4);
        if (!end) {
            if (c->rlen == RBUF)
                kill_conn(ep, c);
            return;
        }
        size_t head = (size_t)(end - c->rbuf) + 4;
        if (c->rlen < 12 || memcmp(c->rbuf, "HTTP/1.1 101", 12) != 0 ||
            !memmem(c->rbuf, head, WS_ACCEPT, strlen(WS_ACCEPT))) {
            kill_conn(ep, c);
            return;
        }
        memmove(c->rbuf, c->rbuf + head, c->rlen - head);
        c->rlen -= head;
        c->st = ST_OPEN;
        if (running)
            send_message(ep, c);
        return;
    }
    /* ST_OPEN: the echo is an unmasked text frame with the same payload. */
    size_t want = 2 + (size_t)opt.size;
    if (c->rlen < want)
        return;
    if (!c->waiting || (unsigned char)c->rbuf[0] != 0x81 ||
        (unsigned char)c->rbuf[1] != (unsigned)opt.size || c->rlen > want) {
        kill_conn(ep, c);
        return;
    }
    c->rlen = 0;
    c->waiting = false;
    echoed++;
    uint64_t t = now_ns();
    if (t >= count_from && t < count_to) {
        counted++;
        add_sample(t - c->sent_at);
    }
    if (running)
        send_message(ep, c);
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
        else if (!strcmp(a, "--conns")) opt.conns = atoi(v);
        else if (!strcmp(a, "--duration")) opt.duration = atof(v);
        else if (!strcmp(a, "--warmup")) opt.warmup = atof(v);
        else if (!strcmp(a, "--size")) opt.size = atoi(v);
        else if (!strcmp(a, "--timeout")) opt.timeout = atof(v);
        else usage();
    }
    if (opt.port <= 0 || opt.port > 65535 || opt.conns <= 0 || opt.conns > 100000 ||
        opt.size < 1 || opt.size > MAX_PAYLOAD || opt.duration <= 0 || opt.warmup < 0 ||
        opt.timeout <= 0)
        usage();
    signal(SIGPIPE, SIG_IGN);

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)opt.conns + 64) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    int hl = snprintf(handshake, sizeof handshake,
                      "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Key: " WS_KEY "\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n", opt.path, opt.host, opt.port);
    if (hl <= 0 || (size_t)hl >= sizeof handshake)
        usage();
    handshake_len = (size_t)hl;

    /* A masked text frame; the mask key is fixed, so the frame is built once. */
    static const unsigned char key[4] = { 0x37, 0xfa, 0x21, 0x3d };
    frame[0] = 0x81;
    frame[1] = 0x80 | (unsigned char)opt.size;
    memcpy(frame + 2, key, 4);
    for (int i = 0; i < opt.size; i++)
        frame[6 + i] = (unsigned char)('a' + i % 26) ^ key[i % 4];
    frame_len = 6 + (size_t)opt.size;

    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)opt.port) };
    if (inet_pton(AF_INET, opt.host, &sa.sin_addr) != 1) {
        fprintf(stderr, "wsload: --host must be an IPv4 address\n");
        return 2;
    }

    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct conn *conns = calloc((size_t)opt.conns, sizeof *conns);
    struct epoll_event *evs = calloc(1024, sizeof *evs);
    if (ep < 0 || !conns || !evs) {
        perror("wsload");
        return 1;
    }
    for (int i = 0; i < opt.conns; i++) {
        struct conn *c = &conns[i];
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c->fd < 0) {
            c->st = ST_DEAD;
            errors++;
            continue;
        }
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        c->st = ST_CONNECTING;
        if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) {
            close(c->fd);
            c->st = ST_DEAD;
            errors++;
            continue;
        }
        struct epoll_event ev = { .events = EPOLLOUT, .data.ptr = c };
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    }

    /* Phase 1: every connection upgraded (or dead), bounded by --timeout. */
    uint64_t deadline = now_ns() + (uint64_t)(opt.timeout * 1e9);
    for (;;) {
        int pending = 0;
        for (int i = 0; i < opt.conns; i++)
            pending += conns[i].st == ST_CONNECTING || conns[i].st == ST_HANDSHAKE_SENT;
        if (!pending || now_ns() > deadline)
            break;
        int n = epoll_wait(ep, evs, 1024, 10);
        for (int i = 0; i < n; i++)
            on_event(ep, evs[i].data.ptr, evs[i].events, false, 0, 0);
    }
    int ok = 0;
    for (int i = 0; i < opt.conns; i++) {
        if (conns[i].st == ST_OPEN)
            ok++;
        else if (conns[i].st != ST_DEAD)
            kill_conn(ep, &conns[i]);
    }

    /* Phase 2: ping-pong; count between warmup end and duration end. */
    uint64_t start = now_ns();
    uint64_t count_from = start + (uint64_t)(opt.warmup * 1e9);
    uint64_t count_to = count_from + (uint64_t)(opt.duration * 1e9);
    for (int i = 0; i < opt.conns; i++)
        if (conns[i].st == ST_OPEN)
            send_message(ep, &conns[i]);
    while (ok > 0 && now_ns() < count_to) {
        int n = epoll_wait(ep, evs, 1024, 10);
        for (int i = 0; i < n; i++)
            on_event(ep, evs[i].data.ptr, evs[i].events, true, count_from, count_to);
    }
    /* A message still unanswered after --timeout is an error. */
    uint64_t end = now_ns();
    for (int i = 0; i < opt.conns; i++) {
        struct conn *c = &conns[i];
        if (c->st == ST_OPEN && c->waiting && end - c->sent_at > (uint64_t)(opt.timeout * 1e9))
            errors++;
        if (c->st != ST_DEAD)
            close(c->fd);
    }

    double p50 = 0, p99 = 0, mx = 0;
    if (n_samples) {
        qsort(samples, n_samples, sizeof *samples, cmp_u32);
        p50 = samples[(n_samples - 1) * 50 / 100];
        p99 = samples[(n_samples - 1) * 99 / 100];
        mx = samples[n_samples - 1];
    }
    double secs = opt.duration;
    printf("{\"conns\":%d,\"conns_ok\":%d,\"messages\":%llu,\"messages_total\":%llu,"
           "\"duration_s\":%.3f,"
           "\"msgs_per_s\":%.1f,\"p50_us\":%.0f,\"p99_us\":%.0f,\"max_us\":%.0f,"
           "\"errors\":%llu}\n", opt.conns, ok, (unsigned long long)counted,
           (unsigned long long)echoed, secs,
           counted / secs, p50, p99, mx, (unsigned long long)errors);
    fflush(stdout);
    free(samples);
    free(conns);
    free(evs);
    close(ep);
    return ok == opt.conns && errors == 0 ? 0 : 1;
}
