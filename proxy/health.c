/*
 * health.c - active health checks.
 *
 * One thread, with an event_base of its own, probes every server of every
 * pool that has a health_check: each `interval` it opens a connection of its
 * own, sends "GET <path> HTTP/1.1" and reads the status line. `fall` failures
 * in a row take an up server down; `rise` successes in a row bring it back.
 *
 * The only thing this thread writes that others read is lb_server.state, an
 * atomic the workers' balancers load on every pick: a state change needs no
 * lock and no message to the workers. Everything else here (targets, sockets,
 * timers) belongs to this thread.
 *
 * The main thread hands over each new config generation with
 * px_health_update() (mailbox + eventfd, as for workers); the thread then
 * drops its probes and starts over with the new servers. Their states were
 * already carried over by px_runtime_new(), so a down server stays down
 * across a reload until it passes `rise` checks.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proxy/proxy-internal.h"

struct health_target {
    struct px_health *health;
    struct px_pool *pool;
    struct px_server *server;
    struct lb_server *lb;
    int fd;                     /* -1 between probes */
    struct event io;
    struct event timer;
    uint64_t probe_start_ns;
    unsigned ok_streak, fail_streak;
    char head[256];             /* the start of the answer */
    size_t head_len;
    bool sent;
};

struct px_health {
    pthread_t thread;
    struct event_base *base;
    struct event notify;
    int notify_fd;
    pthread_mutex_t lock;
    struct px_runtime *pending;         /* protected by lock */
    bool stopping;                      /* protected by lock */
    struct px_runtime *rt;              /* health thread only */
    struct health_target *targets;
    size_t n_targets;
};

static void probe_start(evutil_socket_t fd, short what, void *arg);

/* Up <-> down only: a server the operator drains or disables stays so. */
static void set_state(struct health_target *t, int state, const char *why)
{
    int expected = state == LB_SERVER_UP ? LB_SERVER_DOWN : LB_SERVER_UP;
    if (!atomic_compare_exchange_strong_explicit(&t->lb->state, &expected, state,
                                                 memory_order_relaxed,
                                                 memory_order_relaxed))
        return;
    if (state == LB_SERVER_UP)
        atomic_store_explicit(&t->lb->ramp_start_ms, px_now_ns() / 1000000u,
                              memory_order_relaxed);
    sb_log(state == LB_SERVER_UP ? SB_LOG_INFO : SB_LOG_WARN,
           "pool %s server %s is %s (%s)", t->pool->name, t->server->addr.text,
           state == LB_SERVER_UP ? "UP" : "DOWN", why);
    atomic_fetch_add_explicit(&t->server->state_changes, 1, memory_order_relaxed);
}

static void probe_close(struct health_target *t)
{
    if (t->fd >= 0) {
        event_del(&t->io);
        close(t->fd);
        t->fd = -1;
    }
}

static void probe_done(struct health_target *t, bool ok, const char *why)
{
    const struct conf_health_check *hc = &t->pool->health_check;
    probe_close(t);
    int state = atomic_load_explicit(&t->lb->state, memory_order_relaxed);
    if (ok) {
        t->fail_streak = 0;
        if (++t->ok_streak >= hc->rise && state == LB_SERVER_DOWN)
            set_state(t, LB_SERVER_UP, why);
    } else {
        t->ok_streak = 0;
        if (++t->fail_streak >= hc->fall && state == LB_SERVER_UP)
            set_state(t, LB_SERVER_DOWN, why);
    }
}

static bool status_ok(const struct conf_health_check *hc, int status)
{
    if (hc->expect_status)
        return status == (int)hc->expect_status;
    return status >= 200 && status < 400;
}

/* Judge the answer as soon as its status line is in. */
static void probe_read(struct health_target *t)
{
    ssize_t n = read(t->fd, t->head + t->head_len, sizeof t->head - 1 - t->head_len);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        probe_done(t, false, n == 0 ? "closed before answering" : strerror(errno));
        return;
    }
    t->head_len += (size_t)n;
    t->head[t->head_len] = '\0';
    char *eol = strstr(t->head, "\r\n");
    if (!eol) {
        if (t->head_len == sizeof t->head - 1)
            probe_done(t, false, "invalid answer");
        return;
    }
    int minor, status;
    char why[64];
    if (sscanf(t->head, "HTTP/1.%d %3d", &minor, &status) != 2) {
        probe_done(t, false, "invalid answer");
        return;
    }
    snprintf(why, sizeof why, "health check answered %d", status);
    probe_done(t, status_ok(&t->pool->health_check, status), why);
}

static void probe_io(evutil_socket_t fd, short what, void *arg)
{
    struct health_target *t = arg;
    if (what & EV_TIMEOUT) {
        probe_done(t, false, t->sent ? "health check timed out" : "connect timed out");
        return;
    }
    if (!t->sent) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(t->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            probe_done(t, false, strerror(err));
            return;
        }
        char req[512];
        int n = snprintf(req, sizeof req,
                         "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: switchboard-health\r\n"
                         "Connection: close\r\n\r\n",
                         t->pool->health_check.path, t->server->addr.text);
        if (n < 0 || (size_t)n >= sizeof req || write(t->fd, req, (size_t)n) != n) {
            probe_done(t, false, "cannot send the health check");
            return;
        }
        t->sent = true;
        /* Same event, now for reading; the timeout keeps counting from the
         * probe's start. */
        event_del(&t->io);
        event_assign(&t->io, t->health->base, t->fd, EV_READ | EV_PERSIST, probe_io, t);
        uint64_t spent_ms = (px_now_ns() - t->probe_start_ns) / 1000000u;
        uint32_t limit = t->pool->health_check.timeout;
        uint32_t left = spent_ms >= limit ? 1 : limit - (uint32_t)spent_ms;
        struct timeval tv = { left / 1000, (left % 1000) * 1000 };
        event_add(&t->io, &tv);
        return;
    }
    probe_read(t);
}

static void probe_start(evutil_socket_t unused, short what, void *arg)
{
    struct health_target *t = arg;
    const struct conf_health_check *hc = &t->pool->health_check;
    struct timeval every = { hc->interval / 1000, (hc->interval % 1000) * 1000 };
    evtimer_add(&t->timer, &every);
    if (t->fd >= 0)
        probe_done(t, false, "health check timed out");
    t->sent = false;
    t->head_len = 0;
    t->probe_start_ns = px_now_ns();
    int fd = socket(t->server->addr.u.sa.sa_family,
                    SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        probe_done(t, false, strerror(errno));
        return;
    }
    t->fd = fd;
    if (connect(fd, &t->server->addr.u.sa, t->server->addr.len) < 0 &&
        errno != EINPROGRESS) {
        probe_done(t, false, strerror(errno));
        return;
    }
    event_assign(&t->io, t->health->base, fd, EV_WRITE, probe_io, t);
    struct timeval tv = { hc->timeout / 1000, (hc->timeout % 1000) * 1000 };
    event_add(&t->io, &tv);
}

static void targets_clear(struct px_health *h)
{
    for (size_t i = 0; i < h->n_targets; i++) {
        probe_close(&h->targets[i]);
        event_del(&h->targets[i].timer);
    }
    free(h->targets);
    h->targets = NULL;
    h->n_targets = 0;
    px_runtime_unref(h->rt);
    h->rt = NULL;
}

/* Health thread: start probing the servers of `rt` (whose reference we take
 * over). Probes of one pool are spread over its interval. */
static void targets_build(struct px_health *h, struct px_runtime *rt)
{
    targets_clear(h);
    h->rt = rt;
    size_t n = 0;
    for (size_t p = 0; p < rt->n_pools; p++)
        if (rt->pools[p].health_check.path)
            n += rt->pools[p].n_servers;
    if (n == 0)
        return;
    h->targets = calloc(n, sizeof *h->targets);
    if (!h->targets) {
        sb_log(SB_LOG_ERROR, "health checks: out of memory; checks are off");
        return;
    }
    for (size_t p = 0; p < rt->n_pools; p++) {
        struct px_pool *pool = &rt->pools[p];
        if (!pool->health_check.path)
            continue;
        for (size_t i = 0; i < pool->n_servers; i++) {
            struct health_target *t = &h->targets[h->n_targets++];
            t->health = h;
            t->pool = pool;
            t->server = &pool->servers[i];
            t->lb = &pool->lb_servers[i];
            t->fd = -1;
            evtimer_assign(&t->timer, h->base, probe_start, t);
            uint32_t offset = (uint32_t)(pool->health_check.interval * i /
                                         pool->n_servers);
            struct timeval tv = { offset / 1000, (offset % 1000) * 1000 };
            evtimer_add(&t->timer, &tv);
        }
    }
}

static void notify_cb(evutil_socket_t fd, short what, void *arg)
{
    struct px_health *h = arg;
    uint64_t count;
    ssize_t rc = read(fd, &count, sizeof count);
    (void)rc;
    pthread_mutex_lock(&h->lock);
    struct px_runtime *rt = h->pending;
    bool stopping = h->stopping;
    h->pending = NULL;
    pthread_mutex_unlock(&h->lock);
    if (rt)
        targets_build(h, rt);
    if (stopping)
        event_base_loopexit(h->base, NULL);
}

static void *health_main(void *arg)
{
    struct px_health *h = arg;
    event_base_dispatch(h->base);
    targets_clear(h);
    return NULL;
}

static void wake(struct px_health *h)
{
    uint64_t one = 1;
    ssize_t rc = write(h->notify_fd, &one, sizeof one);
    (void)rc;
}

struct px_health *px_health_start(struct px_runtime *rt)
{
    struct px_health *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->notify_fd = -1;
    pthread_mutex_init(&h->lock, NULL);
    struct event_config *cfg = event_config_new();
    if (cfg) {
        event_config_set_flag(cfg, EVENT_BASE_FLAG_NOLOCK);
        h->base = event_base_new_with_config(cfg);
        event_config_free(cfg);
    }
    if (!h->base || (h->notify_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0)
        goto fail;
    event_assign(&h->notify, h->base, h->notify_fd, EV_READ | EV_PERSIST, notify_cb, h);
    event_add(&h->notify, NULL);
    px_runtime_ref(rt);
    h->pending = rt;
    wake(h);
    if (pthread_create(&h->thread, NULL, health_main, h) != 0) {
        px_runtime_unref(rt);
        h->pending = NULL;
        goto fail;
    }
    return h;
fail:
    if (h->notify_fd >= 0)
        close(h->notify_fd);
    if (h->base)
        event_base_free(h->base);
    pthread_mutex_destroy(&h->lock);
    free(h);
    return NULL;
}

void px_health_update(struct px_health *h, struct px_runtime *rt)
{
    px_runtime_ref(rt);
    pthread_mutex_lock(&h->lock);
    struct px_runtime *old = h->pending;
    h->pending = rt;
    pthread_mutex_unlock(&h->lock);
    px_runtime_unref(old);              /* superseded before it was seen */
    wake(h);
}

void px_health_stop(struct px_health *h)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->lock);
    h->stopping = true;
    pthread_mutex_unlock(&h->lock);
    wake(h);
    pthread_join(h->thread, NULL);
    px_runtime_unref(h->pending);
    event_del(&h->notify);
    close(h->notify_fd);
    event_base_free(h->base);
    pthread_mutex_destroy(&h->lock);
    free(h);
}
