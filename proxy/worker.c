/*
 * worker.c - worker threads, their listeners, and how the main thread talks
 * to them.
 *
 * Each worker runs one event_base created without internal locks: nothing
 * but its own thread ever touches it. The main thread reaches a worker only
 * through its mailbox: it appends a message under mailbox_lock and writes to
 * the worker's eventfd; the worker drains the mailbox in its own loop. So
 * reloads, listener changes and shutdown all happen at a point where the
 * worker is between events.
 *
 * Config generations: a worker's px_gen wraps the px_runtime it uses for new
 * requests, plus the state that belongs to this worker alone for that
 * runtime (balancer state per pool, idle backend connections per server).
 * A reload gives the worker a new px_gen; the old one lives on while
 * exchanges that started under it are in flight, then is freed, dropping the
 * worker's reference to the old runtime.
 *
 * Listeners: every worker has its own socket for every listen address
 * (SO_REUSEPORT), so the kernel spreads connections and accept() takes no
 * lock. When max_connections is reached, or accept() runs out of file
 * descriptors, the worker stops accepting and looks again 100 ms later.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "geo/geo.h"
#include "proxy/proxy-internal.h"

#define ACCEPT_BATCH 64
#define ACCEPT_RETRY_MS 100

static struct px_gen *gen_new(struct px_worker *w, struct px_runtime *rt)
{
    struct px_gen *gen = calloc(1, sizeof *gen);
    if (!gen)
        return NULL;
    gen->rt = rt;
    size_t n_servers = rt->n_servers_total ? rt->n_servers_total : 1;
    gen->lb_state = calloc(rt->n_pools ? rt->n_pools : 1, sizeof *gen->lb_state);
    gen->idle = calloc(n_servers, sizeof *gen->idle);
    gen->idle_count = calloc(n_servers, sizeof *gen->idle_count);
    gen->waitq = calloc(rt->n_pools ? rt->n_pools : 1, sizeof *gen->waitq);
    gen->retry_tokens = calloc(rt->n_pools ? rt->n_pools : 1, sizeof *gen->retry_tokens);
    if (!gen->lb_state || !gen->idle || !gen->idle_count || !gen->waitq ||
        !gen->retry_tokens)
        goto fail;
    /* A quiet pool may still retry a few times before its budget builds. */
    for (size_t p = 0; p < rt->n_pools; p++)
        gen->retry_tokens[p] = 10;
    for (size_t p = 0; p < rt->n_pools; p++)
        TAILQ_INIT(&gen->waitq[p]);
    for (size_t i = 0; i < n_servers; i++)
        TAILQ_INIT(&gen->idle[i]);
    for (size_t p = 0; p < rt->n_pools; p++) {
        struct lb_pool *lb = &rt->pools[p].lb;
        uint64_t seed = w->rng_seed ^ ((uint64_t)p * 0x9e3779b97f4a7c15u);
        gen->lb_state[p] = lb->ops->worker_new ? lb->ops->worker_new(lb, seed) : NULL;
    }
    return gen;
fail:
    free(gen->lb_state);
    free(gen->idle);
    free(gen->idle_count);
    free(gen->waitq);
    free(gen->retry_tokens);
    free(gen);
    return NULL;
}

static void gen_free(struct px_gen *gen)
{
    px_gen_close_idle(gen);
    for (size_t p = 0; p < gen->rt->n_pools; p++) {
        const struct lb_ops *ops = gen->rt->pools[p].lb.ops;
        if (gen->lb_state[p] && ops->worker_free)
            ops->worker_free(gen->lb_state[p]);
    }
    free(gen->lb_state);
    free(gen->idle);
    free(gen->idle_count);
    free(gen->waitq);
    free(gen->retry_tokens);
    px_runtime_unref(gen->rt);
    free(gen);
}

struct px_gen *px_worker_gen(struct px_worker *w)
{
    return w->gen;
}

/* An exchange under `gen` ended. An old generation goes once idle. */
void px_gen_release(struct px_worker *w, struct px_gen *gen)
{
    gen->inflight--;
    if (gen != w->gen && gen->inflight == 0) {
        LIST_REMOVE(gen, link);
        gen_free(gen);
    }
}

static void adopt_runtime(struct px_worker *w, struct px_runtime *rt)
{
    struct px_gen *gen = gen_new(w, rt);
    if (!gen) {
        sb_log(SB_LOG_ERROR, "worker %u: out of memory adopting configuration "
               "generation %u; keeping the previous one", w->id, rt->generation);
        px_runtime_unref(rt);
        return;
    }
    struct px_gen *old = w->gen;
    w->gen = gen;
    if (old) {
        px_gen_migrate_idle(old, gen);
        if (old->inflight == 0)
            gen_free(old);
        else
            LIST_INSERT_HEAD(&w->old_gens, old, link);
    }
}

/* ---- listeners ---------------------------------------------------------- */

static void listener_pause(struct px_listener *l)
{
    if (!l->paused) {
        event_del(&l->ev);
        l->paused = true;
    }
    struct timeval tv = { 0, ACCEPT_RETRY_MS * 1000 };
    if (!evtimer_pending(&l->worker->retry_accept, NULL))
        evtimer_add(&l->worker->retry_accept, &tv);
}

static void accept_cb(evutil_socket_t fd, short what, void *arg)
{
    struct px_listener *l = arg;
    struct px_worker *w = l->worker;
    struct proxy *proxy = w->proxy;
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        unsigned now = atomic_load_explicit(&proxy->connections, memory_order_relaxed);
        if (now >= atomic_load_explicit(&proxy->max_connections, memory_order_relaxed)) {
            listener_pause(l);
            return;
        }
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        int cfd = accept4(fd, (struct sockaddr *)&ss, &len,
                          SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
                errno == ENOMEM) {
                sb_log(SB_LOG_WARN, "listen %s: accept: %s; pausing %d ms",
                       l->addr, strerror(errno), ACCEPT_RETRY_MS);
                listener_pause(l);
                return;
            }
            sb_log(SB_LOG_ERROR, "listen %s: accept: %s", l->addr, strerror(errno));
            return;
        }
        atomic_fetch_add_explicit(&proxy->connections, 1, memory_order_relaxed);
        if (l->nodelay_inherited < 0) {
            int on = 0;
            socklen_t on_len = sizeof on;
            l->nodelay_inherited =
                getsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &on, &on_len) == 0 && on;
        }
        px_client_start(w, cfd, (struct sockaddr *)&ss, len, l->nodelay_inherited);
    }
}

static void retry_accept_cb(evutil_socket_t fd, short what, void *arg)
{
    struct px_worker *w = arg;
    if (w->draining)
        return;
    unsigned now = atomic_load_explicit(&w->proxy->connections, memory_order_relaxed);
    bool room = now < atomic_load_explicit(&w->proxy->max_connections,
                                           memory_order_relaxed);
    struct px_listener *l;
    LIST_FOREACH(l, &w->listeners, link) {
        if (!l->paused)
            continue;
        if (room) {
            event_add(&l->ev, NULL);
            l->paused = false;
        }
    }
    if (!room) {
        struct timeval tv = { 0, ACCEPT_RETRY_MS * 1000 };
        evtimer_add(&w->retry_accept, &tv);
    }
}

static void listener_add(struct px_worker *w, int fd, const char *addr)
{
    struct px_listener *l = calloc(1, sizeof *l);
    if (!l) {
        close(fd);
        return;
    }
    l->fd = fd;
    l->worker = w;
    l->nodelay_inherited = -1;
    snprintf(l->addr, sizeof l->addr, "%s", addr);
    event_assign(&l->ev, w->base, fd, EV_READ | EV_PERSIST, accept_cb, l);
    event_add(&l->ev, NULL);
    LIST_INSERT_HEAD(&w->listeners, l, link);
}

static void listener_free(struct px_listener *l)
{
    event_del(&l->ev);
    close(l->fd);
    LIST_REMOVE(l, link);
    free(l);
}

/* ---- mailbox ------------------------------------------------------------ */

void px_worker_post(struct px_worker *w, struct px_msg *msg)
{
    pthread_mutex_lock(&w->mailbox_lock);
    STAILQ_INSERT_TAIL(&w->mailbox, msg, link);
    pthread_mutex_unlock(&w->mailbox_lock);
    uint64_t one = 1;
    ssize_t rc = write(event_get_fd(&w->notify), &one, sizeof one);
    (void)rc;                   /* a full eventfd still wakes the worker */
}

static void worker_maybe_exit(struct px_worker *w)
{
    if (w->draining && w->n_clients == 0)
        event_base_loopexit(w->base, NULL);
}

void px_worker_client_closed(struct px_worker *w)
{
    if (w->draining && w->n_clients == 0)
        worker_maybe_exit(w);
}

static void start_draining(struct px_worker *w)
{
    w->draining = true;
    struct px_listener *l;
    while ((l = LIST_FIRST(&w->listeners)))
        listener_free(l);
    px_gen_close_idle(w->gen);
    px_client_shutdown_idle(w);
    worker_maybe_exit(w);
}

static void notify_cb(evutil_socket_t fd, short what, void *arg)
{
    struct px_worker *w = arg;
    uint64_t count;
    ssize_t rc = read(fd, &count, sizeof count);
    (void)rc;
    for (;;) {
        pthread_mutex_lock(&w->mailbox_lock);
        struct px_msg *msg = STAILQ_FIRST(&w->mailbox);
        if (msg)
            STAILQ_REMOVE_HEAD(&w->mailbox, link);
        pthread_mutex_unlock(&w->mailbox_lock);
        if (!msg)
            return;
        switch (msg->type) {
        case PX_MSG_RUNTIME:
            adopt_runtime(w, msg->rt);
            break;
        case PX_MSG_LISTEN_ADD:
            if (w->draining)
                close(msg->fd);
            else
                listener_add(w, msg->fd, msg->addr);
            break;
        case PX_MSG_LISTEN_DEL: {
            struct px_listener *l;
            LIST_FOREACH(l, &w->listeners, link)
                if (l->fd == msg->fd)
                    break;
            if (l)
                listener_free(l);
            break;
        }
        case PX_MSG_SHUTDOWN:
            start_draining(w);
            break;
        case PX_MSG_HARD_STOP:
            w->draining = true;
            px_client_close_all(w);
            event_base_loopexit(w->base, NULL);
            break;
        }
        free(msg);
    }
}

/* ---- the thread ---------------------------------------------------------- */

static void queue_cb(evutil_socket_t fd, short what, void *arg)
{
    px_dispatch_queues(arg);
}

static void watch_cb(evutil_socket_t fd, short what, void *arg)
{
    px_abort_watch_due(arg);
}

/* Called on the main thread before the thread starts. */
int px_worker_init(struct px_worker *w, struct proxy *proxy, unsigned id)
{
    w->id = id;
    w->proxy = proxy;
    pthread_mutex_init(&w->mailbox_lock, NULL);
    STAILQ_INIT(&w->mailbox);
    LIST_INIT(&w->old_gens);
    LIST_INIT(&w->listeners);
    TAILQ_INIT(&w->clients);
    w->rng_seed = ((uint64_t)getpid() << 32) ^ ((uint64_t)id * 0x9e3779b97f4a7c15u) ^
                  px_now_ns();
    w->rng = w->rng_seed | 1;
    struct event_config *cfg = event_config_new();
    if (!cfg)
        return -1;
    event_config_set_flag(cfg, EVENT_BASE_FLAG_NOLOCK);
    w->base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    if (!w->base)
        return -1;
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd < 0)
        return -1;
    event_assign(&w->notify, w->base, efd, EV_READ | EV_PERSIST, notify_cb, w);
    event_add(&w->notify, NULL);
    evtimer_assign(&w->retry_accept, w->base, retry_accept_cb, w);
    evtimer_assign(&w->queue_ev, w->base, queue_cb, w);
    TAILQ_INIT(&w->unwatched);
    evtimer_assign(&w->watch_ev, w->base, watch_cb, w);
    return 0;
}

void px_worker_give(struct px_worker *w, struct px_runtime *rt)
{
    adopt_runtime(w, rt);
}

uint64_t px_turn_now_ns(struct px_worker *w)
{
    if (!w->turn_now_ns)
        w->turn_now_ns = px_now_ns();
    return w->turn_now_ns;
}

void px_worker_add_listener(struct px_worker *w, int fd, const char *addr)
{
    listener_add(w, fd, addr);
}

/* One turn at a time, so that output queued during a turn goes out
 * together at its end (struct px_flushq). */
int px_worker_turn(struct px_worker *w, int loop_flags)
{
    w->turn_now_ns = 0;
    int rc = event_base_loop(w->base, loop_flags);
    px_flushq_run(&w->flushq);
    return rc;
}

void *px_worker_main(void *arg)
{
    struct px_worker *w = arg;
    while (!event_base_got_exit(w->base) && !event_base_got_break(w->base))
        if (px_worker_turn(w, EVLOOP_ONCE) < 0)
            break;

    /* Out of the loop: everything this worker owns goes. */
    struct px_listener *l;
    while ((l = LIST_FIRST(&w->listeners)))
        listener_free(l);
    px_client_close_all(w);
    px_exchange_spares_free(w);
    px_pipe_pool_free(w);
    struct px_gen *gen;
    while ((gen = LIST_FIRST(&w->old_gens))) {
        LIST_REMOVE(gen, link);
        gen_free(gen);
    }
    if (w->gen) {
        gen_free(w->gen);
        w->gen = NULL;
    }
    geo_cache_free(w->geo_cache);
    w->geo_cache = NULL;
    px_flushq_free(&w->flushq);
    px_spare_bufs_free(w);
    return NULL;
}

void px_worker_destroy(struct px_worker *w)
{
    struct px_msg *msg;
    while ((msg = STAILQ_FIRST(&w->mailbox))) {
        STAILQ_REMOVE_HEAD(&w->mailbox, link);
        if (msg->type == PX_MSG_RUNTIME)
            px_runtime_unref(msg->rt);
        if (msg->type == PX_MSG_LISTEN_ADD)
            close(msg->fd);
        free(msg);
    }
    if (w->base) {
        int efd = event_get_fd(&w->notify);
        event_del(&w->notify);
        event_del(&w->retry_accept);
        event_del(&w->queue_ev);
        event_del(&w->watch_ev);
        close(efd);
        event_base_free(w->base);
        w->base = NULL;
    }
    px_exchange_spares_free(w);
    px_pipe_pool_free(w);
    pthread_mutex_destroy(&w->mailbox_lock);
}
