/*
 * fuzz_proxy.c - libFuzzer target: arbitrary bytes as what a client sends
 * and as what a backend answers, through the real proxy code (session.c's
 * parsing, checks, routing, header rewriting and body framing, with
 * http.c's strict wire scanner, on a real worker event loop).
 *
 * Input: REQUEST "\n~~~~\n" RESPONSE. Without the separator the whole input
 * is the request and the backend answers nothing (it closes once it got
 * something). Corpus files are plain text in that form (tests/fuzz/corpus/,
 * written by make_corpus.py).
 *
 * One run:
 *   1. a worker (built once, in LLVMFuzzerInitialize) gets one end of a
 *      socketpair as an accepted client; the other end is ours and sends
 *      the request bytes;
 *   2. the worker's only backend address is a listening socket we own on
 *      127.0.0.1: each connection the proxy opens is accepted here and
 *      answered with the response bytes once it has sent something (again
 *      after each later request on it, at most 3 times);
 *   3. the worker's event_base is run without blocking, interleaved with
 *      our side's I/O, until nothing moves any more (a few idle rounds) or
 *      MAX_ROUNDS; then both our ends half-close (the proxy sees EOF from
 *      the client and from the backend) and it runs to rest again.
 *      event_base_loop(EVLOOP_NONBLOCK) returns only once a pass finds no
 *      event ready, so a worker that spins (an event that fires forever
 *      without progress) never returns and libFuzzer reports a timeout:
 *      that is how a busy loop on a client's EOF mid-body was found;
 *   4. everything is torn down: every client connection (and its exchange
 *      and backend connection) and every idle backend connection is
 *      closed, our sockets too, so the next input starts from nothing and
 *      LeakSanitizer sees no leak.
 *
 * Built by `make fuzz` (clang, -fsanitize=fuzzer,address,undefined, linked
 * with the objects of proxy/ conf/ telemetry/ geo/ built into build/fuzz
 * with the same sanitizers). FUZZ_PROXY_VERBOSE=1 in the environment prints
 * what the client got back and how many backend connections each input
 * opened (build/fuzz/fuzz_proxy FILE... replays files).
 */
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proxy/proxy-internal.h"

#define SEP             "\n~~~~\n"
#define MAX_BACKENDS    8       /* backend connections answered per input */
#define MAX_ANSWERS     3       /* answers per backend connection */
#define MAX_ROUNDS      2000    /* loop rounds per phase */
#define IDLE_ROUNDS     4       /* rounds without progress that mean "at rest" */

struct fake_conn {
    int fd;
    const uint8_t *resp;
    size_t resp_len;
    size_t sent;                /* bytes of the current answer sent */
    unsigned answers;           /* answers started */
    bool want_answer;           /* got bytes since the last answer began */
    bool eof;
};

static struct proxy *proxy;
static struct px_worker *worker;
static int listen_fd = -1;
static bool verbose;            /* FUZZ_PROXY_VERBOSE set: say what happened */

static void die(const char *what)
{
    fprintf(stderr, "fuzz_proxy: %s: %s\n", what, strerror(errno));
    abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    signal(SIGPIPE, SIG_IGN);
    verbose = getenv("FUZZ_PROXY_VERBOSE") != NULL;
    sb_log_set_level(verbose ? SB_LOG_DEBUG : SB_LOG_ERROR);     /* 5xx and retries are routine here */

    listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listen_fd < 0)
        die("socket");
    struct sockaddr_in sin = { .sin_family = AF_INET };
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sin;
    if (bind(listen_fd, (struct sockaddr *)&sin, sizeof sin) < 0 ||
        listen(listen_fd, 64) < 0 ||
        getsockname(listen_fd, (struct sockaddr *)&sin, &len) < 0)
        die("backend listener");
    unsigned port = ntohs(sin.sin_port);

    /* Two pools (round robin; hash on a cookie) and routes by host and
     * path, so routing and balancing run too; trusted proxies, so
     * X-Forwarded-For is parsed; a small head limit, so 431 is reachable. */
    char yaml[2048];
    snprintf(yaml, sizeof yaml,
             "listen: [\"127.0.0.1:1\"]\n"
             "workers: 1\n"
             "pools:\n"
             "  web:\n"
             "    outlier_detection: {consecutive_failures: 0}\n"
             "    servers: [\"127.0.0.1:%u\"]\n"
             "  api:\n"
             "    balance: hash\n"
             "    hash_key: \"cookie:sid\"\n"
             "    outlier_detection: {consecutive_failures: 0}\n"
             "    servers: [\"127.0.0.1:%u\"]\n"
             "routes:\n"
             "  - {host: \"*.example.com\", path_prefix: /api, pool: api}\n"
             "  - {path_prefix: /nowhere, pool: api, host: none.invalid}\n"
             "  - {pool: web}\n"
             "trusted_proxies: [\"127.0.0.0/8\", \"10.0.0.0/8\"]\n"
             "limits: {max_header_bytes: 8k}\n"
             "access_log: \"off\"\n"
             "telemetry: {enabled: false}\n"
             "dashboard: {enabled: false}\n", port, port);
    char err[512];
    struct conf *conf = conf_load_string("fuzz", yaml, err, sizeof err);
    if (!conf) {
        fprintf(stderr, "fuzz_proxy: config: %s\n", err);
        abort();
    }
    http_parser_set_max_header_size(65536 + 1024);      /* as proxy.c does */

    proxy = calloc(1, sizeof *proxy);
    worker = calloc(1, sizeof *worker);
    if (!proxy || !worker)
        die("calloc");
    proxy->workers = worker;
    proxy->n_workers = 1;
    proxy->access_log_fd = -1;
    proxy->max_connections = conf->limits.max_connections;
    atomic_init(&proxy->connections, 0);
    proxy->rt = px_runtime_new(conf, 1, NULL, err, sizeof err);
    conf_free(conf);
    if (!proxy->rt) {
        fprintf(stderr, "fuzz_proxy: runtime: %s\n", err);
        abort();
    }
    if (px_worker_init(worker, proxy, 0) < 0)
        die("px_worker_init");
    px_runtime_ref(proxy->rt);
    px_worker_give(worker, proxy->rt);
    return 0;
}

/* Our side's I/O; true when anything moved. */
struct run {
    int client_fd;
    const uint8_t *req;
    size_t req_len, req_sent;
    bool client_eof;
    const uint8_t *resp;
    size_t resp_len;
    struct fake_conn backends[MAX_BACKENDS];
    unsigned n_backends;
};

static bool drain_fd(int fd, bool *eof)
{
    char buf[16384];
    bool moved = false;
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) {
            moved = true;
            if (verbose)
                fprintf(stderr, "client got: %.*s\n", (int)n, buf);
            continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            if (!*eof)
                moved = true;
            *eof = true;
        }
        return moved;
    }
}

static bool our_io(struct run *r)
{
    bool moved = false;
    if (r->req_sent < r->req_len) {
        ssize_t n = send(r->client_fd, r->req + r->req_sent, r->req_len - r->req_sent,
                         MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0) {
            r->req_sent += (size_t)n;
            moved = true;
        } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            r->req_sent = r->req_len;   /* the proxy closed: nothing more goes */
        }
    }
    if (!r->client_eof)
        moved |= drain_fd(r->client_fd, &r->client_eof);

    for (;;) {                          /* connections the proxy opened */
        int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            break;
        moved = true;
        if (r->n_backends == MAX_BACKENDS) {
            close(fd);
            continue;
        }
        struct fake_conn *b = &r->backends[r->n_backends++];
        memset(b, 0, sizeof *b);
        b->fd = fd;
        b->resp = r->resp;
        b->resp_len = r->resp_len;
    }
    for (unsigned i = 0; i < r->n_backends; i++) {
        struct fake_conn *b = &r->backends[i];
        if (b->fd < 0)
            continue;
        bool was_eof = b->eof;
        char buf[16384];
        for (;;) {
            ssize_t n = recv(b->fd, buf, sizeof buf, MSG_DONTWAIT);
            if (n > 0) {
                moved = true;
                b->want_answer = true;
                continue;
            }
            if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
                b->eof = true;
            break;
        }
        if (b->eof != was_eof)
            moved = true;
        /* No answer at all: close once the proxy sent something. */
        if (b->resp_len == 0 && b->want_answer) {
            close(b->fd);
            b->fd = -1;
            moved = true;
            continue;
        }
        if ((b->answers == 0 || b->sent == b->resp_len) && b->want_answer &&
            b->answers < MAX_ANSWERS) {
            b->sent = 0;                /* a (next) answer */
            b->answers++;
            b->want_answer = false;
        }
        if (b->answers && b->sent < b->resp_len) {
            ssize_t n = send(b->fd, b->resp + b->sent, b->resp_len - b->sent,
                             MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n > 0) {
                b->sent += (size_t)n;
                moved = true;
            } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
                b->sent = b->resp_len;
            }
        }
    }
    return moved;
}

/* What the proxy holds, in a number: unchanged while it is at rest. */
static uint64_t proxy_state(void)
{
    uint64_t h = 1469598103934665603u;
#define MIX(x) (h = (h ^ (uint64_t)(x)) * 1099511628211u)
    MIX(worker->n_clients);
    const struct px_client *c;
    TAILQ_FOREACH(c, &worker->clients, link) {
        MIX(c->state);
        /* An idle client has given its buffers back. */
        MIX(c->conn.in ? evbuffer_get_length(c->conn.in) : 0);
        MIX(c->conn.out ? evbuffer_get_length(c->conn.out) : 0);
        MIX(c->conn.eof);
        MIX(c->requests);
        const struct px_exchange *ex = c->ex;
        if (!ex)
            continue;
        MIX(ex->phase);
        MIX(ex->bytes_in);
        MIX(ex->bytes_out);
        MIX(ex->retries);
        if (ex->up) {
            MIX(ex->up->connected);
            MIX(evbuffer_get_length(ex->up->conn.in));
            MIX(evbuffer_get_length(ex->up->conn.out));
            MIX(ex->up->conn.eof);
        }
    }
#undef MIX
    return h;
}

static void run_to_rest(struct run *r)
{
    uint64_t last = 0;
    int idle = 0;
    for (int i = 0; i < MAX_ROUNDS && idle < IDLE_ROUNDS; i++) {
        px_worker_turn(worker, EVLOOP_NONBLOCK);
        bool moved = our_io(r);
        uint64_t now = proxy_state();
        idle = (!moved && now == last) ? idle + 1 : 0;
        last = now;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct run r;
    memset(&r, 0, sizeof r);
    r.req = data;
    r.req_len = size;
    const uint8_t *sep = size >= sizeof SEP - 1
        ? memmem(data, size, SEP, sizeof SEP - 1) : NULL;
    if (sep) {
        r.req_len = (size_t)(sep - data);
        r.resp = sep + sizeof SEP - 1;
        r.resp_len = size - r.req_len - (sizeof SEP - 1);
    }

    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
        die("socketpair");
    r.client_fd = sv[1];
    our_io(&r);                         /* the first bytes are there at accept */
    struct sockaddr_in peer = { .sin_family = AF_INET, .sin_port = htons(40000) };
    peer.sin_addr.s_addr = htonl(0x7f000001);
    atomic_fetch_add_explicit(&proxy->connections, 1, memory_order_relaxed);
    px_client_accept(worker, sv[0], (struct sockaddr *)&peer, sizeof peer);

    run_to_rest(&r);
    /* Then both peers half-close: EOF paths (close-delimited bodies,
     * clients leaving mid-request, backends closing idle connections). */
    shutdown(r.client_fd, SHUT_WR);
    r.req_sent = r.req_len;
    for (unsigned i = 0; i < r.n_backends; i++)
        if (r.backends[i].fd >= 0)
            shutdown(r.backends[i].fd, SHUT_WR);
    run_to_rest(&r);

    if (verbose)
        fprintf(stderr, "backend connections: %u, client closed: %d\n",
                r.n_backends, r.client_eof);
    /* Back to nothing for the next input. */
    px_client_close_all(worker);
    px_gen_close_idle(worker->gen);
    px_worker_turn(worker, EVLOOP_NONBLOCK);
    close(r.client_fd);
    for (unsigned i = 0; i < r.n_backends; i++)
        if (r.backends[i].fd >= 0)
            close(r.backends[i].fd);
    for (;;) {                          /* connects not accepted yet */
        int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            break;
        close(fd);
    }
    if (worker->n_clients != 0 ||
        atomic_load_explicit(&proxy->connections, memory_order_relaxed) != 0) {
        fprintf(stderr, "fuzz_proxy: %u clients, %u connections left after teardown\n",
                worker->n_clients, atomic_load(&proxy->connections));
        abort();
    }
    return 0;
}
