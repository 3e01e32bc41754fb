/*
 * upstream.c - connections to backend servers and the per-worker idle pools.
 *
 * A backend connection belongs to exactly one worker. While it serves an
 * exchange, the exchange drives it (session.c). Afterwards, if the response
 * ended cleanly and the server did not ask to close, it goes back into its
 * worker's idle list for that server. Its read event stays armed the whole
 * time (session.c's callback sees up->ex == NULL): a byte or an EOF from an
 * idle server means the connection is useless, so it is closed. Idle
 * connections also close after PX_BACKEND_IDLE_MS.
 *
 * The idle lists hang off the worker's px_gen (one per config generation), so
 * they need no lock. A reload moves them to the server with the same address
 * in the new generation: a config change does not cost reconnections.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proxy/proxy-internal.h"


void px_upstream_close(struct px_upstream *up)
{
    if (!up->ex && up->gen) {
        TAILQ_REMOVE(&up->gen->idle[up->server->global_index], up, idle_link);
        up->gen->idle_count[up->server->global_index]--;
    }
    px_flushq_remove(&up->worker->flushq, &up->conn);
    px_conn_close(&up->conn);
    free(up);
}

static struct px_upstream *upstream_connect(struct px_worker *w,
                                            struct px_server *server)
{
    struct px_upstream *up = calloc(1, sizeof *up);
    if (!up)
        return NULL;
    up->worker = w;
    up->server = server;
    int fd = socket(server->addr.u.sa.sa_family,
                    SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        free(up);
        return NULL;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    up->conn.fd = fd;
    up->conn.in = evbuffer_new();
    up->conn.out = evbuffer_new();
    if (!up->conn.in || !up->conn.out) {
        px_conn_close(&up->conn);
        free(up);
        errno = ENOMEM;
        return NULL;
    }
    int rc;
    do {
        rc = connect(fd, &server->addr.u.sa, server->addr.len);
    } while (rc < 0 && errno == EINTR);
    if (rc == 0)
        up->connected = true;
    else if (errno != EINPROGRESS)
        up->connect_error = errno;      /* loopback refuses at once */
    return up;
}

struct px_upstream *px_upstream_get(struct px_worker *w, struct px_gen *gen,
                                    struct px_server *server, bool *reused)
{
    size_t gi = server->global_index;
    struct px_upstream *up = TAILQ_FIRST(&gen->idle[gi]);
    if (up) {
        TAILQ_REMOVE(&gen->idle[gi], up, idle_link);
        gen->idle_count[gi]--;
        up->gen = NULL;
        *reused = true;
        return up;             /* its read event stays armed: no epoll_ctl */
    }
    *reused = false;
    return upstream_connect(w, server);
}

/* The server of generation `gen` standing for `server` of another
 * generation: same pool name, same address. NULL when it is gone. */
static struct px_server *find_twin(struct px_gen *gen,
                                   const struct px_server *server)
{
    for (size_t p = 0; p < gen->rt->n_pools; p++) {
        struct px_pool *pool = &gen->rt->pools[p];
        if (strcmp(pool->name, server->pool->name) != 0)
            continue;
        for (size_t i = 0; i < pool->n_servers; i++)
            if (strcmp(pool->servers[i].addr.text, server->addr.text) == 0)
                return &pool->servers[i];
    }
    return NULL;
}

static bool park(struct px_gen *gen, struct px_upstream *up,
                 struct px_server *server)
{
    size_t gi = server->global_index;
    if (gen->idle_count[gi] >= PX_IDLE_PER_SERVER)
        return false;
    up->server = server;
    up->gen = gen;
    TAILQ_INSERT_HEAD(&gen->idle[gi], up, idle_link);
    gen->idle_count[gi]++;
    return true;
}

void px_upstream_release(struct px_upstream *up, struct px_gen *from,
                         bool reusable)
{
    struct px_worker *w = up->worker;
    struct px_gen *gen = w->gen;
    up->ex = NULL;
    up->gen = NULL;
    if (!reusable || w->draining || !gen ||
        evbuffer_get_length(up->conn.in) > 0 ||
        evbuffer_get_length(up->conn.out) > 0) {
        px_upstream_close(up);
        return;
    }
    /* A connection opened under an older generation is parked under the
     * current generation's twin of its server, if there is one. */
    struct px_server *server = from == gen ? up->server : find_twin(gen, up->server);
    if (!server || !park(gen, up, server)) {
        px_upstream_close(up);
        return;
    }
    up->reused = true;
    px_conn_want_write(&up->conn, false, 0);
    /* The read event stays armed across idle and busy periods (its callback
     * looks at up->ex), so parking costs a timer update, not a syscall. */
    px_conn_want_read(&up->conn, true, PX_BACKEND_IDLE_MS, false);
}

void px_gen_close_idle(struct px_gen *gen)
{
    for (size_t i = 0; i < gen->rt->n_servers_total; i++) {
        struct px_upstream *up;
        while ((up = TAILQ_FIRST(&gen->idle[i])))
            px_upstream_close(up);
    }
}

void px_gen_migrate_idle(struct px_gen *from, struct px_gen *to)
{
    const struct px_runtime *old = from->rt;
    for (size_t p = 0; p < old->n_pools; p++) {
        const struct px_pool *op = &old->pools[p];
        for (size_t i = 0; i < op->n_servers; i++) {
            size_t gi = op->servers[i].global_index;
            struct px_server *twin = find_twin(to, &op->servers[i]);
            struct px_upstream *up;
            while ((up = TAILQ_FIRST(&from->idle[gi]))) {
                TAILQ_REMOVE(&from->idle[gi], up, idle_link);
                from->idle_count[gi]--;
                up->gen = NULL;
                if (!twin || !park(to, up, twin))
                    px_upstream_close(up);
            }
        }
    }
}
