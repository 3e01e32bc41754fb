/*
 * proxy.c - the proxy as the main thread sees it: listening sockets, worker
 * threads, reload and shutdown.
 *
 * Listening sockets are opened here, on the main thread, so that a bind
 * error stops start-up (or rejects a reload) with a clear message instead of
 * surfacing inside a worker. Each listen address gets one SO_REUSEPORT socket
 * per worker; the worker owns it from the moment it is handed over.
 *
 * Reload builds the new runtime and any new listeners first; only when all
 * of that worked is anything sent to the workers, so a failed reload changes
 * nothing.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <http_parser.h>

#include "proxy/proxy-internal.h"


/* How long the kernel holds a silent connection back from accept(): after
 * that (at its next SYN-ACK retransmission) it is accepted anyway, and
 * timeouts.client_header takes over. Seconds, as nginx and HAProxy use. */
#define PX_DEFER_ACCEPT_S   1

/* A connection is accepted with its request already readable, so the first
 * read needs no trip through epoll (and often no epoll_ctl at all). */
static void set_defer_accept(int fd, bool on)
{
    int secs = on ? PX_DEFER_ACCEPT_S : 0;
    setsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &secs, sizeof secs);
}

static int open_listener(const struct conf_addr *addr, bool defer_accept,
                         char *err, size_t errlen)
{
    int fd = socket(addr->u.sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "listen %s: socket: %s", addr->text, strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (addr->u.sa.sa_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    /* Accepted sockets inherit it on Linux, which saves a setsockopt() per
     * connection (worker.c checks that on the first one). */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    set_defer_accept(fd, defer_accept);
    if (bind(fd, &addr->u.sa, addr->len) < 0) {
        snprintf(err, errlen, "listen %s: bind: %s", addr->text, strerror(errno));
        close(fd);
        return -1;
    }
    if (listen(fd, 4096) < 0) {
        snprintf(err, errlen, "listen %s: listen: %s", addr->text, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* Free the set; its sockets are closed only if no worker owns them yet. */
static void listen_set_close(struct px_listen_set *set, unsigned n_workers)
{
    if (!set->fds)
        return;
    if (!set->handed)
        for (unsigned i = 0; i < n_workers; i++)
            if (set->fds[i] >= 0)
                close(set->fds[i]);
    free(set->fds);
    set->fds = NULL;
}

static int listen_set_open(struct px_listen_set *set, const struct conf_addr *addr,
                           bool defer_accept, unsigned n_workers, char *err,
                           size_t errlen)
{
    set->addr = *addr;
    set->fds = malloc(n_workers * sizeof *set->fds);
    if (!set->fds) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (unsigned i = 0; i < n_workers; i++)
        set->fds[i] = -1;
    for (unsigned i = 0; i < n_workers; i++)
        if ((set->fds[i] = open_listener(addr, defer_accept, err, errlen)) < 0) {
            listen_set_close(set, n_workers);
            return -1;
        }
    return 0;
}

static bool same_addr(const struct conf_addr *a, const struct conf_addr *b)
{
    return a->len == b->len && memcmp(&a->u, &b->u, a->len) == 0;
}

/* The access log keeps one descriptor number for its whole life; reopening
 * and reloading dup2() a new file onto it, so workers never see it change. */
static int open_access_log(struct proxy *proxy, const char *path, char *err,
                           size_t errlen)
{
    int fd;
    if (!path || strcmp(path, "stderr") == 0)
        fd = dup(STDERR_FILENO);
    else
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        snprintf(err, errlen, "access_log %s: %s", path, strerror(errno));
        return -1;
    }
    if (proxy->access_log_fd < 0) {
        proxy->access_log_fd = fd;
    } else {
        dup2(fd, proxy->access_log_fd);
        close(fd);
    }
    free(proxy->access_log_path);
    proxy->access_log_path = path ? strdup(path) : NULL;
    return 0;
}

/* http-parser checks header size itself, process-wide: let it allow what
 * the largest configured limit allows, and check the real limit per head. */
/* http-parser's header limit is one global that every worker's parsers
 * read, so it is set once, before any worker runs, to what the largest
 * allowed limits.max_header_bytes (1m) needs; the wire scanner enforces the
 * configured limit itself. */
static void set_parser_limit(void)
{
    http_parser_set_max_header_size((1u << 20) + 1024);
}

struct proxy *proxy_new(const struct conf *conf, char *err, size_t errlen)
{
    struct proxy *proxy = calloc(1, sizeof *proxy);
    if (!proxy) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    proxy->access_log_fd = -1;
    pthread_mutex_init(&proxy->rt_lock, NULL);
    proxy->n_workers = conf->workers ? conf->workers : 1;
    atomic_store(&proxy->max_connections, conf->limits.max_connections);
    atomic_init(&proxy->connections, 0);
    set_parser_limit();
    proxy->rt = px_runtime_new(conf, ++proxy->generation, NULL, err, errlen);
    if (!proxy->rt)
        goto fail;
    if (open_access_log(proxy, conf->access_log.path, err, errlen) < 0)
        goto fail;
    proxy->listens = calloc(conf->n_listen, sizeof *proxy->listens);
    if (!proxy->listens && conf->n_listen)
        goto nomem;
    for (size_t i = 0; i < conf->n_listen; i++) {
        if (listen_set_open(&proxy->listens[i], &conf->listen[i], conf->defer_accept,
                            proxy->n_workers, err, errlen) < 0)
            goto fail;
        proxy->n_listens++;
    }
    proxy->workers = calloc(proxy->n_workers, sizeof *proxy->workers);
    if (!proxy->workers)
        goto nomem;
    for (unsigned i = 0; i < proxy->n_workers; i++)
        if (px_worker_init(&proxy->workers[i], proxy, i) < 0) {
            snprintf(err, errlen, "worker %u: cannot create its event loop", i);
            goto fail;
        }
    /* Telemetry rings are sized once: a reload cannot resize a ring a worker
     * is writing into. */
    if (conf->telemetry.enabled) {
        proxy->rings = calloc(proxy->n_workers, sizeof *proxy->rings);
        if (!proxy->rings)
            goto nomem;
        for (unsigned i = 0; i < proxy->n_workers; i++) {
            if (!(proxy->rings[i] = tm_ring_new(conf->telemetry.ring_size)))
                goto nomem;
            proxy->workers[i].ring = proxy->rings[i];
        }
    }
    return proxy;
nomem:
    snprintf(err, errlen, "out of memory");
fail:
    proxy_free(proxy);
    return NULL;
}

int proxy_start(struct proxy *proxy, char *err, size_t errlen)
{
    /* Signals belong to the main thread: workers start with them blocked. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = 0;
    for (unsigned i = 0; i < proxy->n_workers; i++) {
        struct px_worker *w = &proxy->workers[i];
        px_runtime_ref(proxy->rt);
        px_worker_give(w, proxy->rt);
        for (size_t l = 0; l < proxy->n_listens; l++)
            px_worker_add_listener(w, proxy->listens[l].fds[i],
                                   proxy->listens[l].addr.text);
        int e = pthread_create(&w->thread, NULL, px_worker_main, w);
        if (e) {
            snprintf(err, errlen, "worker %u: pthread_create: %s", i, strerror(e));
            rc = -1;
            break;
        }
        proxy->started = true;
    }
    if (rc == 0 && !(proxy->health = px_health_start(proxy->rt))) {
        snprintf(err, errlen, "cannot start the health-check thread");
        rc = -1;
    }
    /* From here the workers own the sockets (even those of a worker that
     * failed to start: its loop cleanup is not run, proxy_free closes). */
    for (size_t l = 0; l < proxy->n_listens; l++)
        proxy->listens[l].handed = rc == 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

static struct px_msg *msg_new(enum px_msg_type type)
{
    struct px_msg *m = calloc(1, sizeof *m);
    if (m)
        m->type = type;
    return m;
}

int proxy_reload(struct proxy *proxy, const struct conf *conf, char *err,
                 size_t errlen)
{
    if (conf->workers != proxy->n_workers)
        sb_log(SB_LOG_WARN, "reload: workers changed from %u to %u; this takes "
               "a restart, keeping %u", proxy->n_workers, conf->workers,
               proxy->n_workers);

    struct px_runtime *rt = px_runtime_new(conf, proxy->generation + 1, proxy->rt,
                                           err, errlen);
    if (!rt)
        return -1;

    /* New listen addresses first: a bind failure must leave all as it was. */
    size_t cap = conf->n_listen + proxy->n_listens + 1;
    struct px_listen_set *table = calloc(cap, sizeof *table);
    bool *kept = calloc(proxy->n_listens + 1, sizeof *kept);
    size_t n_table = 0;
    if (!table || !kept) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < conf->n_listen; i++) {
        size_t j;
        for (j = 0; j < proxy->n_listens; j++)
            if (same_addr(&proxy->listens[j].addr, &conf->listen[i]))
                break;
        if (j < proxy->n_listens) {
            kept[j] = true;
            /* The kernel takes the change on a listening socket. */
            for (unsigned w = 0; w < proxy->n_workers; w++)
                set_defer_accept(proxy->listens[j].fds[w], conf->defer_accept);
            table[n_table++] = proxy->listens[j];
            continue;
        }
        if (listen_set_open(&table[n_table], &conf->listen[i], conf->defer_accept,
                            proxy->n_workers, err, errlen) < 0)
            goto fail;
        n_table++;
    }
    if (conf->access_log.path && (!proxy->access_log_path ||
        strcmp(proxy->access_log_path, conf->access_log.path) != 0) &&
        open_access_log(proxy, conf->access_log.path, err, errlen) < 0)
        goto fail;

    /* Nothing can fail from here on: publish. */
    proxy->generation++;
    atomic_store(&proxy->max_connections, conf->limits.max_connections);
    for (unsigned w = 0; w < proxy->n_workers; w++) {
        struct px_worker *worker = &proxy->workers[w];
        for (size_t i = 0; i < n_table; i++) {
            if (table[i].handed)
                continue;
            struct px_msg *m = msg_new(PX_MSG_LISTEN_ADD);
            if (!m) {
                close(table[i].fds[w]);
                continue;
            }
            m->fd = table[i].fds[w];
            snprintf(m->addr, sizeof m->addr, "%s", table[i].addr.text);
            px_worker_post(worker, m);
        }
        for (size_t j = 0; j < proxy->n_listens; j++) {
            if (kept[j])
                continue;
            struct px_msg *m = msg_new(PX_MSG_LISTEN_DEL);
            if (m) {
                m->fd = proxy->listens[j].fds[w];
                px_worker_post(worker, m);
            }
        }
        struct px_msg *m = msg_new(PX_MSG_RUNTIME);
        if (m) {
            px_runtime_ref(rt);
            m->rt = rt;
            px_worker_post(worker, m);
        }
    }
    for (size_t i = 0; i < n_table; i++)
        table[i].handed = true;
    for (size_t j = 0; j < proxy->n_listens; j++)
        if (!kept[j])
            free(proxy->listens[j].fds);        /* the workers close them */
    free(proxy->listens);
    proxy->listens = table;
    proxy->n_listens = n_table;
    free(kept);
    pthread_mutex_lock(&proxy->rt_lock);
    struct px_runtime *old = proxy->rt;
    proxy->rt = rt;
    pthread_mutex_unlock(&proxy->rt_lock);
    px_runtime_unref(old);
    if (proxy->health)
        px_health_update(proxy->health, rt);
    if (conf->telemetry.enabled != (proxy->rings != NULL))
        sb_log(SB_LOG_WARN, "reload: telemetry.enabled changed; this takes a restart");
    return 0;

fail:
    if (table)
        for (size_t i = 0; i < n_table; i++)
            if (!table[i].handed)
                listen_set_close(&table[i], proxy->n_workers);
    free(table);
    free(kept);
    px_runtime_unref(rt);
    return -1;
}

void proxy_reopen_logs(struct proxy *proxy)
{
    char err[256];
    if (proxy->access_log_path && strcmp(proxy->access_log_path, "stderr") != 0) {
        char *path = strdup(proxy->access_log_path);
        if (path && open_access_log(proxy, path, err, sizeof err) < 0)
            sb_log(SB_LOG_ERROR, "reopen: %s", err);
        free(path);
    }
}

void proxy_stop_begin(struct proxy *proxy)
{
    px_health_stop(proxy->health);
    proxy->health = NULL;
    if (!proxy->started || proxy->stopping)
        return;
    proxy->stopping = true;
    for (unsigned i = 0; i < proxy->n_workers; i++) {
        struct px_msg *m = msg_new(PX_MSG_SHUTDOWN);
        if (m)
            px_worker_post(&proxy->workers[i], m);
    }
}

bool proxy_stop_poll(struct proxy *proxy)
{
    if (!proxy->started)
        return true;
    bool all = true;
    for (unsigned i = 0; i < proxy->n_workers; i++) {
        struct px_worker *w = &proxy->workers[i];
        if (!w->joined && pthread_tryjoin_np(w->thread, NULL) == 0)
            w->joined = true;
        all = all && w->joined;
    }
    if (all)
        proxy->started = false;
    return all;
}

void proxy_stop_now(struct proxy *proxy)
{
    if (!proxy->started || proxy->hard_stopping)
        return;
    proxy->hard_stopping = true;
    for (unsigned i = 0; i < proxy->n_workers; i++) {
        struct px_worker *w = &proxy->workers[i];
        if (w->joined)
            continue;
        struct px_msg *m = msg_new(PX_MSG_HARD_STOP);
        if (m)
            px_worker_post(w, m);
    }
}

/* Blocking form, for paths that have no event loop to wait in. */
void proxy_shutdown(struct proxy *proxy, uint32_t grace_ms)
{
    proxy_stop_begin(proxy);
    uint64_t deadline = px_now_ns() + (uint64_t)grace_ms * 1000000u;
    while (!proxy_stop_poll(proxy)) {
        if (px_now_ns() >= deadline)
            proxy_stop_now(proxy);
        struct timespec nap = { 0, 10 * 1000 * 1000 };
        nanosleep(&nap, NULL);
    }
}

void proxy_free(struct proxy *proxy)
{
    if (!proxy)
        return;
    if (proxy->workers) {
        for (unsigned i = 0; i < proxy->n_workers; i++)
            px_worker_destroy(&proxy->workers[i]);
        free(proxy->workers);
    }
    for (size_t i = 0; i < proxy->n_listens; i++)
        listen_set_close(&proxy->listens[i], proxy->n_workers);
    free(proxy->listens);
    if (proxy->access_log_fd >= 0)
        close(proxy->access_log_fd);
    free(proxy->access_log_path);
    if (proxy->rings) {
        for (unsigned i = 0; i < proxy->n_workers; i++)
            tm_ring_free(proxy->rings[i]);
        free(proxy->rings);
    }
    px_runtime_unref(proxy->rt);
    pthread_mutex_destroy(&proxy->rt_lock);
    free(proxy);
}

struct tm_ring **proxy_rings(struct proxy *proxy, size_t *n)
{
    *n = proxy->rings ? proxy->n_workers : 0;
    return proxy->rings;
}

struct tm_gauges *proxy_gauges(struct proxy *proxy)
{
    return &proxy->gauges;
}

void proxy_set_geo(struct proxy *proxy, const struct geo_db *geo)
{
    proxy->geo = geo;
}

size_t proxy_servers(void *arg, struct tm_server_info *out, size_t max)
{
    struct proxy *proxy = arg;
    pthread_mutex_lock(&proxy->rt_lock);
    struct px_runtime *rt = proxy->rt;
    if (rt)
        px_runtime_ref(rt);
    pthread_mutex_unlock(&proxy->rt_lock);
    if (!rt)
        return 0;
    size_t n = 0;
    for (size_t p = 0; p < rt->n_pools; p++) {
        const struct px_pool *pool = &rt->pools[p];
        for (size_t i = 0; i < pool->n_servers && n < max; i++, n++) {
            const struct lb_server *lb = &pool->lb_servers[i];
            struct tm_server_info *info = &out[n];
            memset(info, 0, sizeof *info);
            snprintf(info->pool, sizeof info->pool, "%.*s",
                     (int)sizeof info->pool - 1, pool->name);
            /* Cut to what a record carries, so the two match. */
            snprintf(info->server, sizeof info->server, "%.*s",
                     (int)sizeof info->server - 1, pool->servers[i].addr.text);
            info->state = (uint8_t)atomic_load_explicit(&lb->state, memory_order_relaxed);
            info->backup = lb->backup;
            info->weight = lb->weight;
            info->inflight = atomic_load_explicit(&lb->inflight, memory_order_relaxed);
        }
    }
    px_runtime_unref(rt);
    return n;
}
