/*
 * balance_leastconn.c - weighted least connections.
 *
 * The server with the lowest (inflight + 1) / weight gets the request, the
 * "+ 1" counting the request being placed: it is the load the server would
 * have after taking it. Under sustained traffic this keeps every server's
 * in-flight count proportional to its weight, which is the point of the
 * algorithm: a slow server accumulates requests and is given fewer new ones,
 * without anyone measuring its speed. With no load at all, the heaviest
 * server wins every pick (1/4 beats 1/1); that is intended, an idle pool
 * needs no spreading.
 *
 * Loads are compared by cross-multiplication in 64 bits, so no floating point
 * and no rounding: (a + 1) * wb < (b + 1) * wa.
 *
 * Equal loads are broken round robin: the scan starts just after the server
 * this worker picked last, and the first of the equals found wins. Without
 * this, the lowest index would take every tie, and at low concurrency - when
 * everything is tied at zero - it would take all the traffic.
 *
 * Thread context: no shared state. The in-flight counts are the atomics in
 * `struct lb_server`, incremented and decremented by whichever worker serves
 * the request; they are read here without ordering, a count that is off by
 * one for a moment only makes one pick slightly less than perfect. The scan
 * position belongs to one worker.
 */
#include "proxy/balance.h"

#include <stdlib.h>

struct lc_worker {
    size_t next;                /* where the next scan starts */
};

static int lc_init(struct lb_pool *pool)
{
    return 0;
}

static void lc_fini(struct lb_pool *pool)
{
}

static void *lc_worker_new(const struct lb_pool *pool, uint64_t seed)
{
    struct lc_worker *w = calloc(1, sizeof *w);
    if (w == NULL)
        return NULL;
    /* Workers start their tie rotation at different servers, so that after a
     * reload they do not all send their first request to server 0. */
    w->next = pool->n_servers > 0 ? (size_t)(seed % pool->n_servers) : 0;
    return w;
}

static void lc_worker_free(void *worker_state)
{
    free(worker_state);
}

static int lc_pick(const struct lb_pool *pool, void *worker_state,
                   const struct lb_request *req, bool backup)
{
    struct lc_worker *w = worker_state;
    size_t n = pool->n_servers;
    uint64_t best_load = 0, best_weight = 1;
    int best = -1;

    if (n == 0)
        return -1;

    size_t i = w->next < n ? w->next : 0;
    for (size_t scanned = 0; scanned < n; scanned++, i = i + 1 < n ? i + 1 : 0) {
        const struct lb_server *s = &pool->servers[i];

        if (s->backup != backup || !lb_server_usable(pool, i, req))
            continue;
        uint64_t load = (uint64_t)atomic_load_explicit(&s->inflight,
                                                       memory_order_relaxed) + 1;
        /* load / weight < best_load / best_weight, without dividing. */
        if (best < 0 || load * best_weight < best_load * s->weight) {
            best = (int)i;
            best_load = load;
            best_weight = s->weight;
        }
    }
    if (best >= 0)
        w->next = (size_t)best + 1 < n ? (size_t)best + 1 : 0;
    return best;
}

const struct lb_ops lb_least_conn_ops = {
    .name        = "least_conn",
    .init        = lc_init,
    .fini        = lc_fini,
    .worker_new  = lc_worker_new,
    .worker_free = lc_worker_free,
    .pick        = lc_pick,
};
